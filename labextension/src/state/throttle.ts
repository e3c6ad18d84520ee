/**
 * At most one run of a read per interval: calls in between are merged into one run at the end of
 * the interval, and a call while a run is in flight runs it once more after it. The jobs list
 * (job-progress events come as fast as a job reports) and each open job Output share it.
 */
export class Throttle {
  /**
   * @param intervalMs  the least time between the starts of two runs
   * @param run  the read; never rejects
   * @param alive  false once the owner is gone: nothing more runs
   */
  constructor(intervalMs: number, run: () => Promise<void>, alive: () => boolean) {
    this._intervalMs = intervalMs;
    this._run = run;
    this._alive = alive;
  }

  /** A run started now by other means (a direct read) counts for the interval. */
  markRun(): void {
    this._lastRun = Date.now();
  }

  /** Ask for a run: now if the interval has passed, else at its end. */
  request(): void {
    if (!this._alive() || this._timer !== null) {
      return;
    }
    if (this._inflight) {
      this._again = true;
      return;
    }
    const wait = Math.max(0, this._lastRun + this._intervalMs - Date.now());
    this._timer = setTimeout(() => {
      this._timer = null;
      if (!this._alive()) {
        return;
      }
      this._inflight = true;
      this.markRun();
      void this._run().finally(() => {
        this._inflight = false;
        if (this._again) {
          this._again = false;
          this.request();
        }
      });
    }, wait);
  }

  /** Drop a run that is waiting for its time. */
  cancel(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    this._again = false;
  }

  private readonly _intervalMs: number;
  private readonly _run: () => Promise<void>;
  private readonly _alive: () => boolean;
  private _lastRun = 0;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _inflight = false;
  private _again = false;
}
