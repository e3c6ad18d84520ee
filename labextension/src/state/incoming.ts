/**
 * Incoming requests in the sidebar's state: which pending ones are new since the last refresh
 * and which stopped being pending (the toasts come and go with them), and the kernel choices
 * offered to accept them.
 */
import type { IKernelChoice, IRequest } from '../models/apiTypes';
import { newRequests } from '../models/requestViews';
import type { IModelAPI } from './host';

/** Re-ask the (future) kernels API at most this often. */
const KERNELS_MAX_AGE_MS = 60_000;

/** The difference between two looks at the pending incoming requests. */
export interface IIncomingChanges {
  /** Pending now, never seen pending before (each request is reported once). */
  fresh: IRequest[];
  /** IDs pending at the last look and not any more (decided here or elsewhere, expired). */
  closed: string[];
}

/** Remembers the pending incoming requests from one refresh to the next. */
export class IncomingTracker {
  /** Take the pending incoming requests of this refresh; what changed since the last one. */
  update(pending: readonly IRequest[]): IIncomingChanges {
    const pendingIds = new Set(pending.map(r => r.id));
    const fresh = newRequests(this._seen, pending);
    const closed = [...this._pendingIds].filter(id => !pendingIds.has(id));
    for (const r of pending) {
      this._seen.add(r.id);
    }
    this._pendingIds = pendingIds;
    return { fresh, closed };
  }

  private readonly _seen = new Set<string>();
  private _pendingIds = new Set<string>();
}

/** The kernel choices for accepting a request, asked only while one waits, at most once a minute. */
export class KernelChoices {
  constructor(api: Pick<IModelAPI, 'listKernelChoices'>) {
    this._api = api;
  }

  get choices(): readonly IKernelChoice[] {
    return this._choices;
  }

  /**
   * Ask the kernels API when `wanted` (a request waits) and the last answer is old; true when
   * the choices changed. A failure keeps the last ones (the selector then offers the default
   * environment only, until the API exists).
   */
  async load(wanted: boolean): Promise<boolean> {
    if (!wanted) {
      return false;
    }
    if (Date.now() - this._fetchedAt < KERNELS_MAX_AGE_MS) {
      return false;
    }
    this._fetchedAt = Date.now();
    try {
      const choices = await this._api.listKernelChoices();
      if (JSON.stringify(choices) !== JSON.stringify(this._choices)) {
        this._choices = choices;
        return true;
      }
    } catch {
      // The selector then offers the default environment only.
    }
    return false;
  }

  private readonly _api: Pick<IModelAPI, 'listKernelChoices'>;
  private _choices: IKernelChoice[] = [];
  private _fetchedAt = 0;
}

/**
 * Outgoing requests that stopped being pending since the last look (the requests list holds the
 * open ones only, so a decided request just leaves it): their IDs, for the sender's
 * notification once the model has read their outcome. The first look reports nothing, except
 * requests this user sent from here (`watch`).
 */
export class OutgoingTracker {
  update(requests: readonly IRequest[]): string[] {
    const pending = new Set(
      requests.filter(r => r.direction === 'outgoing' && r.state === 'pending').map(r => r.id)
    );
    const left = [...this._pending].filter(
      id => !pending.has(id) && (!this._first || this._sent.has(id))
    );
    this._first = false;
    this._pending = pending;
    for (const id of left) {
      this._sent.delete(id);
    }
    return left;
  }

  /** A request this user just sent: its outcome is reported even if no look saw it pending. */
  watch(id: string): void {
    this._pending.add(id);
    this._sent.add(id);
  }

  private readonly _sent = new Set<string>();
  private _pending = new Set<string>();
  private _first = true;
}
