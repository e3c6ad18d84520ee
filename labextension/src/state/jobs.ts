/**
 * The jobs in the sidebar's state: the list (newest first) from `GET jobs`, its throttled
 * refresh on job-progress events, and the Cancel / Remove / Run actions. Answers are numbered so
 * that an older one never replaces a newer one or undoes an action.
 */
import type { IJob, IWorkloadRunBody } from '../models/apiTypes';
import { jobEnded, sortJobs } from '../models/jobViews';
import { IModelAPI, IModelHost, errorMessage } from './host';
import { Throttle } from './throttle';

/**
 * Job-progress events come as fast as a job reports: they refresh the jobs list (GET jobs only)
 * at most once per this many ms.
 */
export const JOBS_MIN_INTERVAL_MS = 500;

/** One GET jobs: the jobs, or why they could not be read. */
export interface IJobsAnswer {
  seq: number;
  jobs: IJob[] | null;
  error: string | null;
}

type JobsAPI = Pick<IModelAPI, 'listJobs' | 'cancelJob' | 'deleteJob' | 'runWorkload'>;

export class JobsState {
  constructor(api: JobsAPI, host: IModelHost) {
    this._api = api;
    this._host = host;
  }

  /** Jobs, newest first (empty until loaded, or while the jobs API fails). */
  get jobs(): readonly IJob[] {
    return this._jobs;
  }
  /** Why the jobs could not be read, or null. */
  get error(): string | null {
    return this._error;
  }
  /** True while a cancel or remove of this job is on its way to the server. */
  busy(id: string): boolean {
    return this._busy.has(id);
  }
  /** True while a job has not ended (a job whose kernel died turns `lost` without an event). */
  get anyRunning(): boolean {
    return this._jobs.some(j => !jobEnded(j));
  }

  /**
   * GET jobs; the failure is the jobs' own (a server without the jobs API still shows the rest).
   * Never rejects.
   */
  async fetch(): Promise<IJobsAnswer> {
    const seq = ++this._seq;
    this._throttle.markRun();
    try {
      return { seq, jobs: await this._api.listJobs(), error: null };
    } catch (error) {
      return { seq, jobs: null, error: errorMessage(error) };
    }
  }

  /** Take a jobs answer; true when it changed what the panel shows. */
  apply(answer: IJobsAnswer): boolean {
    if (answer.seq < this._applied) {
      return false;
    }
    this._applied = answer.seq;
    const jobs = answer.jobs === null ? this._jobs : sortJobs(answer.jobs);
    if (answer.error === this._error && JSON.stringify(jobs) === JSON.stringify(this._jobs)) {
      return false;
    }
    this._jobs = jobs;
    this._error = answer.error;
    return true;
  }

  /**
   * Fetch the jobs (only), at most once per JOBS_MIN_INTERVAL_MS: calls in between are merged
   * into one fetch at the end of the interval.
   */
  refresh(): void {
    this._throttle.request();
  }

  /** Ask a job's owner to cancel it; the job shows `cancelling` from the server's answer. */
  async cancel(id: string): Promise<IJob> {
    return this._action(id, async () => {
      const job = await this._api.cancelJob(id);
      this._put(job);
      return job;
    });
  }

  /** Remove an ended job from the history. */
  async remove(id: string): Promise<void> {
    return this._action(id, async () => {
      await this._api.deleteJob(id);
      this._set(this._jobs.filter(j => j.id !== id));
    });
  }

  /**
   * Start a workload as a job of the server. The job shows at once (`pending`, from the
   * server's answer), then the lists refresh and polling goes back to its base rate. Throws the
   * server's refusal (APIError with its one-line message: unknown workload, bad parameters).
   */
  async run(name: string, body: IWorkloadRunBody): Promise<IJob> {
    const host = this._host;
    host.markActivity();
    const job = await this._api.runWorkload(name, body);
    if (!host.isDisposed) {
      this._put(job);
      host.emitChanged();
      host.refresh();
    }
    return job;
  }

  /** Stop the throttled refresh's timer. */
  dispose(): void {
    this._throttle.cancel();
  }

  /** The throttled jobs-only refresh. */
  private async _load(): Promise<void> {
    const answer = await this.fetch();
    if (!this._host.isDisposed && this.apply(answer)) {
      this._host.emitChanged();
    }
  }

  /** Put one job as the server just returned it into the list. */
  private _put(job: IJob): void {
    this._set(sortJobs([...this._jobs.filter(j => j.id !== job.id), job]));
  }

  /** Set the jobs after an action of ours; answers already on their way predate it. */
  private _set(jobs: IJob[]): void {
    this._jobs = jobs;
    this._applied = this._seq + 1;
  }

  /** Run a cancel or remove: the job is busy meanwhile, the list refreshes after. */
  private async _action<T>(id: string, action: () => Promise<T>): Promise<T> {
    const host = this._host;
    host.markActivity();
    this._busy.add(id);
    host.emitChanged();
    try {
      return await action();
    } finally {
      this._busy.delete(id);
      if (!host.isDisposed) {
        host.emitChanged();
        this.refresh();
      }
    }
  }

  private readonly _api: JobsAPI;
  private readonly _host: IModelHost;
  private _jobs: IJob[] = [];
  private _error: string | null = null;
  private _busy = new Set<string>();
  private _seq = 0;
  private _applied = 0;
  private readonly _throttle = new Throttle(
    JOBS_MIN_INTERVAL_MS,
    () => this._load(),
    () => !this._host.isDisposed
  );
}
