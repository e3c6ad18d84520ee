/**
 * Connection requests as the panel and the toasts show them: which are pending, the
 * verification code and countdown, what a request asks for, and the kernel choices offered when
 * accepting one. Pure functions (no DOM); peer text stays text.
 */

import type { IAsksView, IKernelChoice, IRequest } from './apiTypes';
import { isObject } from './guards';

/** Incoming requests waiting for this user's decision, soonest expiry first. */
export function pendingIncoming(requests: readonly IRequest[]): IRequest[] {
  return requests
    .filter(r => r.direction === 'incoming' && r.state === 'pending')
    .sort((a, b) => a.expires_at - b.expires_at);
}

/** Outgoing requests waiting for the peer's decision, newest first. */
export function pendingOutgoing(requests: readonly IRequest[]): IRequest[] {
  return requests
    .filter(r => r.direction === 'outgoing' && r.state === 'pending')
    .sort((a, b) => b.created_at - a.created_at);
}

/** Requests in `current` whose ID is not in `known` (new arrivals since the last look). */
export function newRequests(
  known: ReadonlySet<string>,
  current: readonly IRequest[]
): IRequest[] {
  return current.filter(r => !known.has(r.id));
}

/** `123456` -> `123 456` (easier to read aloud); anything else is returned as is. */
export function formatCode(code: string | null | undefined): string {
  if (!code) {
    return '';
  }
  return /^\d{6}$/.test(code) ? `${code.slice(0, 3)} ${code.slice(3)}` : code;
}

/** Seconds left as `9:05`, `1:02:03`; `expired` at or below zero. */
export function formatCountdown(secondsLeft: number): string {
  if (!Number.isFinite(secondsLeft) || secondsLeft <= 0) {
    return 'expired';
  }
  const total = Math.ceil(secondsLeft);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const ss = String(s).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** Seconds until `expiresAt` (unix seconds, server clock) given the server's `now`. */
export function secondsLeft(expiresAt: number, serverNow: number): number {
  return expiresAt - serverNow;
}

/** Human lines for what a request asks; an empty array when it asks for nothing specific. */
export function describeAsks(asks: Partial<IAsksView> | null | undefined): string[] {
  if (!asks) {
    return [];
  }
  const lines: string[] = [];
  if (typeof asks.nthreads === 'number') {
    lines.push(`${asks.nthreads} CPU thread${asks.nthreads === 1 ? '' : 's'}`);
  }
  if (typeof asks.memory_limit_gb === 'number') {
    lines.push(`${asks.memory_limit_gb} GB memory`);
  }
  if (typeof asks.gpus === 'number') {
    lines.push(`${asks.gpus} GPU${asks.gpus === 1 ? '' : 's'}`);
  }
  if (typeof asks.duration_hours === 'number') {
    lines.push(`for ${asks.duration_hours} h`);
  }
  return lines;
}

/**
 * The line shown under the incoming requests when some were opened but never completed, or
 * null when there are none (or the server does not report them).
 */
export function describeIncomplete(count: number | undefined): string | null {
  if (typeof count !== 'number' || !Number.isFinite(count) || count < 1) {
    return null;
  }
  const what = count === 1 ? '1 incomplete request' : `${Math.floor(count)} incomplete requests`;
  return `${what}: opened by another device but never completed (a failed pairing, or someone probing this device).`;
}

/** What the request means for this device, in words. */
export function describeKind(request: Pick<IRequest, 'kind' | 'direction'>): string {
  if (request.direction === 'incoming') {
    return request.kind === 'invite'
      ? 'asks this device to run training workers'
      : 'offers to run training workers for this device';
  }
  return request.kind === 'invite'
    ? 'invited to run training workers for this device'
    : 'offered this device as a worker';
}

/**
 * Defensive parsing of the (future) kernels endpoint: keeps entries with a string `name` and
 * drops everything else, so a shape change on the server cannot break the panel.
 */
export function parseKernelChoices(data: unknown): IKernelChoice[] {
  const items = Array.isArray(data)
    ? data
    : isObject(data) && Array.isArray(data['kernels'])
      ? (data['kernels'] as unknown[])
      : [];
  const out: IKernelChoice[] = [];
  for (const item of items) {
    if (!isObject(item) || typeof item['name'] !== 'string') {
      continue;
    }
    const display = item['display_name'];
    const selectable = item['selectable'];
    const reason = item['reason'];
    out.push({
      name: item['name'],
      display_name: typeof display === 'string' && display ? display : item['name'],
      selectable: selectable !== false,
      ...(typeof reason === 'string' ? { reason } : {})
    });
  }
  return out;
}

/** The toast text for a new incoming request: the code first (toasts cut at 140 characters). */
export function toastMessage(request: IRequest): string {
  const what =
    request.kind === 'invite' ? 'asks to run workers here' : 'offers to work for this device';
  return `Parallalx code ${formatCode(request.code)}: “${request.peer.name}” ${what}. Compare codes before accepting.`;
}

/**
 * The one notification about incoming requests: the request itself (its code first) when one
 * waits, the count when several do; null when none does.
 */
export function pendingMessage(pending: readonly IRequest[]): string | null {
  if (pending.length === 0) {
    return null;
  }
  if (pending.length === 1) {
    return toastMessage(pending[0]);
  }
  return `Parallalx: ${pending.length} connection requests waiting. Compare each code in the panel before accepting.`;
}

/** The notification for the sender when the other device decided (or let it expire). */
export function decidedMessage(request: Pick<IRequest, 'state' | 'peer'>): string {
  const name = `“${request.peer.name}”`;
  switch (request.state) {
    case 'accepted':
      return `Parallalx: ${name} accepted your request.`;
    case 'rejected':
      return `Parallalx: ${name} rejected your request.`;
    case 'expired':
      return `Parallalx: your request to ${name} expired without an answer.`;
    default:
      return `Parallalx: your request to ${name} is ${request.state}.`;
  }
}
