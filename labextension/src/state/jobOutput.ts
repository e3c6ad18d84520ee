/**
 * What the ranks of a job printed, for the jobs whose Output the user opened: read with `GET
 * jobs/{id}` (the list leaves the lines out) when it opens, again on each job-progress event of
 * that job, throttled, and when the jobs list shows the job changed since (the polling fallback).
 * Answers are numbered so that an older one never replaces a newer one.
 */
import type { IJob, IJobOutputLine } from '../models/apiTypes';
import { jobOutputLines } from '../models/jobViews';
import { IModelAPI, IModelHost, errorMessage } from './host';
import { Throttle } from './throttle';

/** An open Output re-reads its job at most once per this many ms. */
export const OUTPUT_MIN_INTERVAL_MS = 500;

/** An open Output as the panel shows it. */
export interface IJobOutputView {
  /** The lines, oldest first; null until the first answer came. */
  readonly lines: readonly IJobOutputLine[] | null;
  /** Why the last read failed, or null. */
  readonly error: string | null;
}

interface IEntry {
  lines: IJobOutputLine[] | null;
  error: string | null;
  /** `updated_at` of the job as last read (null before the first answer). */
  updatedAt: number | null;
  seq: number;
  applied: number;
  throttle: Throttle;
}

type OutputAPI = Pick<IModelAPI, 'getJob'>;

export class JobOutputState {
  constructor(api: OutputAPI, host: IModelHost) {
    this._api = api;
    this._host = host;
  }

  /** True while the job's Output is open. */
  isOpen(id: string): boolean {
    return this._entries.has(id);
  }

  /** The job's output while its Output is open, else null. */
  view(id: string): IJobOutputView | null {
    const entry = this._entries.get(id);
    return entry ? { lines: entry.lines, error: entry.error } : null;
  }

  /** Open a job's Output: read its lines at once (it shows "Loading…" meanwhile). */
  open(id: string): void {
    if (this._host.isDisposed || this._entries.has(id)) {
      return;
    }
    const entry: IEntry = {
      lines: null,
      error: null,
      updatedAt: null,
      seq: 0,
      applied: 0,
      throttle: new Throttle(
        OUTPUT_MIN_INTERVAL_MS,
        () => this._load(id, entry),
        () => !this._host.isDisposed && this._entries.get(id) === entry
      )
    };
    this._entries.set(id, entry);
    this._host.markActivity();
    this._host.emitChanged();
    this.refresh(id);
  }

  /** Close a job's Output: its lines are dropped, nothing more is read. */
  close(id: string): void {
    if (this._drop(id)) {
      this._host.emitChanged();
    }
  }

  /**
   * Re-read an open Output (a job-progress event of its job), at most once per
   * OUTPUT_MIN_INTERVAL_MS: calls in between are merged into one read at the end of the interval.
   * Does nothing for a job whose Output is closed.
   */
  refresh(id: string): void {
    this._entries.get(id)?.throttle.request();
  }

  /**
   * Bring the open Outputs in line with the jobs list: a job no longer listed closes its Output,
   * one the list shows changed since it was read is read again (events may not come through:
   * the list is also polled). Emits nothing itself.
   */
  sync(jobs: readonly IJob[]): void {
    if (this._entries.size === 0) {
      return;
    }
    const byId = new Map(jobs.map(job => [job.id, job]));
    for (const [id, entry] of [...this._entries]) {
      const job = byId.get(id);
      if (!job) {
        this._drop(id);
      } else if (entry.updatedAt !== null && job.updated_at > entry.updatedAt) {
        this.refresh(id);
      }
    }
  }

  /** Stop all timers and drop every Output. */
  dispose(): void {
    for (const id of [...this._entries.keys()]) {
      this._drop(id);
    }
  }

  private _drop(id: string): boolean {
    const entry = this._entries.get(id);
    if (!entry) {
      return false;
    }
    entry.throttle.cancel();
    this._entries.delete(id);
    return true;
  }

  /** One GET jobs/{id}; the answer is kept unless a newer one came first or the Output closed. */
  private async _load(id: string, entry: IEntry): Promise<void> {
    const seq = ++entry.seq;
    let job: IJob | null = null;
    let error: string | null = null;
    try {
      job = await this._api.getJob(id);
    } catch (caught) {
      error = errorMessage(caught);
    }
    if (this._host.isDisposed || this._entries.get(id) !== entry || seq < entry.applied) {
      return;
    }
    entry.applied = seq;
    const lines = job ? jobOutputLines(job.output) : entry.lines;
    if (job) {
      entry.updatedAt = job.updated_at;
    }
    if (error === entry.error && JSON.stringify(lines) === JSON.stringify(entry.lines)) {
      return;
    }
    entry.lines = lines;
    entry.error = error;
    this._host.emitChanged();
  }

  private readonly _api: OutputAPI;
  private readonly _host: IModelHost;
  private readonly _entries = new Map<string, IEntry>();
}
