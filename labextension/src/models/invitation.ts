/**
 * The Invite / Offer dialog's fields as an invitation body (`POST invitations`). Pure (no DOM).
 */

import type { IAsks, IInvitationBody, RequestKind } from './apiTypes';

/** What the form holds, checked: the invitation body, or why it cannot be sent. */
export type InviteFormValue = { body: IInvitationBody; error?: undefined } | { body?: undefined; error: string };

/**
 * Turn the form's fields into an invitation body (pure; unit-tested): the peer address, and
 * what the request asks for (purpose, CPU threads), as the invitations API takes them.
 */
export function inviteBody(
  kind: RequestKind,
  fields: { url: string; purpose: string; threads: string }
): InviteFormValue {
  const url = fields.url.trim();
  if (!url) {
    return { error: 'Enter the peer address of the other device (https://host:port).' };
  }
  const asks: IAsks = {};
  const purpose = fields.purpose.trim();
  if (purpose) {
    asks.purpose = purpose;
  }
  const threads = fields.threads.trim();
  if (threads) {
    const n = Number(threads);
    if (!Number.isInteger(n) || n < 1 || n > 1024) {
      return { error: 'CPU threads must be a whole number from 1 to 1024 (or empty).' };
    }
    asks.nthreads = n;
  }
  return { body: { url, kind, ...(Object.keys(asks).length > 0 ? { asks } : {}) } };
}
