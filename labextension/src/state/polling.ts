/**
 * The polling fallback behind the event stream: one timer whose delay starts at the configured
 * interval after a change (or an event, or a user action) and grows while polls find nothing new.
 */
import { IDisposable } from '@lumino/disposable';

/**
 * The polling fallback's next delay: `base` after a change (or an event, or a user action),
 * growing by `factor` after every poll that found nothing new, capped at `max`.
 */
export function nextPollDelay(
  current: number,
  changed: boolean,
  base: number,
  max: number,
  factor = 2
): number {
  if (base <= 0) {
    return 0;
  }
  const cap = Math.max(base, max);
  if (changed || current <= 0) {
    return base;
  }
  return Math.min(cap, Math.round(current * factor));
}

/** The cap of the idle back-off for a configured interval: 12x, at most a minute (but >= base). */
export function maxPollDelay(base: number): number {
  return base <= 0 ? 0 : Math.max(base, Math.min(base * 12, 60_000));
}

/**
 * The poll timer: `schedule` arms it with the current delay, `settle` sets the next delay from a
 * poll's outcome. Interval 0 disables it; once disposed it never fires again.
 */
export class PollTimer implements IDisposable {
  constructor(interval: number, poll: () => void) {
    this._interval = interval;
    this._poll = poll;
  }

  /** Base interval in ms (0: no polling). Setting it restarts the back-off from it. */
  get interval(): number {
    return this._interval;
  }
  set interval(value: number) {
    this._interval = value;
    this._delay = value;
  }

  /** The delay before the next poll (grows while idle). */
  get delay(): number {
    return this._delay;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** After a poll: back to the base interval when `changed`, else a longer wait (capped). */
  settle(changed: boolean): void {
    this._delay = nextPollDelay(this._delay, changed, this._interval, maxPollDelay(this._interval));
  }

  /** (Re-)arm the timer with the current delay. */
  schedule(): void {
    this._clear();
    if (this._isDisposed || this._interval <= 0) {
      return;
    }
    if (this._delay <= 0) {
      this._delay = this._interval;
    }
    this._timer = setTimeout(() => {
      this._timer = null;
      this._poll();
    }, this._delay);
  }

  dispose(): void {
    this._isDisposed = true;
    this._clear();
  }

  private _clear(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _interval: number;
  private _delay = 0;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _isDisposed = false;
  private readonly _poll: () => void;
}
