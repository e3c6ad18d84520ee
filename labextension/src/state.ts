/**
 * The sidebar's state: this device, open requests, paired devices, the cluster and jobs, kept
 * fresh from the event stream with a polling fallback that slows down while nothing changes. No DOM in here: the
 * widgets, the toasts and the status bar item all render from this one model (unit-tested in
 * node with a fake API).
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import type { ParallalxAPI } from './api';
import {
  ClusterAction,
  IClusterState,
  IDevice,
  IInvitationBody,
  IJob,
  IKernelChoice,
  IPairedDevice,
  IRequest,
  IParallalxEvent,
  IWorkload,
  IWorkloadRunBody,
  jobEnded,
  maxPollDelay,
  nextPollDelay,
  parseEvent,
  pendingIncoming,
  pendingOutgoing,
  sortDevices,
  sortJobs
} from './models';

/** The part of ParallalxAPI the model uses (a fake in the unit tests). */
export type IModelAPI = Pick<
  ParallalxAPI,
  | 'getDevice'
  | 'listRequests'
  | 'listDevices'
  | 'accept'
  | 'reject'
  | 'revoke'
  | 'invite'
  | 'listKernelChoices'
  | 'serverNow'
  | 'getCluster'
  | 'startCluster'
  | 'stopCluster'
  | 'addSelfToCluster'
  | 'listJobs'
  | 'cancelJob'
  | 'deleteJob'
  | 'listWorkloads'
  | 'runWorkload'
>;

/** Re-read the device (its memory figures change) at most this often, unless forced. */
const DEVICE_MAX_AGE_MS = 60_000;
/** Re-ask the (future) kernels API at most this often. */
const KERNELS_MAX_AGE_MS = 60_000;
/** After a cluster action, poll at the base rate this long (workers join without an event). */
const CLUSTER_SETTLE_MS = 30_000;
/**
 * Job-progress events come as fast as a job reports: they refresh the jobs list (GET jobs only)
 * at most once per this many ms.
 */
export const JOBS_MIN_INTERVAL_MS = 500;

/** One GET jobs: the jobs, or why they could not be read. */
interface IJobsAnswer {
  seq: number;
  jobs: IJob[] | null;
  error: string | null;
}

export class ParallalxModel implements IDisposable {
  constructor(api: IModelAPI, options: { pollInterval?: number } = {}) {
    this.api = api;
    this._pollInterval = Math.max(0, options.pollInterval ?? 5000);
  }

  readonly api: IModelAPI;

  /** Any state change (device, requests, devices, error). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Pending incoming requests that arrived after the first load (each is emitted once). */
  get newIncoming(): ISignal<this, IRequest[]> {
    return this._newIncoming;
  }

  /** IDs of incoming requests that stopped being pending (decided here or elsewhere, expired). */
  get incomingClosed(): ISignal<this, string[]> {
    return this._incomingClosed;
  }

  /** Each of our events from the server's event stream. */
  get eventReceived(): ISignal<this, IParallalxEvent> {
    return this._eventReceived;
  }

  get device(): IDevice | null {
    return this._device;
  }
  get requests(): readonly IRequest[] {
    return this._requests;
  }
  get devices(): readonly IPairedDevice[] {
    return this._devices;
  }
  get kernelChoices(): readonly IKernelChoice[] {
    return this._kernelChoices;
  }
  /** This device's cluster state; null until loaded (or while the cluster API fails). */
  get cluster(): IClusterState | null {
    return this._cluster;
  }
  /** Why the cluster state could not be read (e.g. 503: no cluster on this server), or null. */
  get clusterError(): string | null {
    return this._clusterError;
  }
  /** The cluster action running now, or null. */
  get clusterBusy(): ClusterAction | null {
    return this._clusterBusy;
  }
  /** The last cluster action's error message, null when it worked. */
  get clusterActionError(): string | null {
    return this._clusterActionError;
  }
  /** Jobs, newest first (empty until loaded, or while the jobs API fails). */
  get jobs(): readonly IJob[] {
    return this._jobs;
  }
  /** Why the jobs could not be read, or null. */
  get jobsError(): string | null {
    return this._jobsError;
  }
  /** True while a cancel or remove of this job is on its way to the server. */
  jobBusy(id: string): boolean {
    return this._jobsBusy.has(id);
  }
  /** Workloads installed on the server; null until `loadWorkloads` got an answer. */
  get workloads(): readonly IWorkload[] | null {
    return this._workloads;
  }
  /** Why the workloads could not be read, or null. */
  get workloadsError(): string | null {
    return this._workloadsError;
  }
  /** The last refresh's error message, null when it worked. */
  get error(): string | null {
    return this._error;
  }
  /** True once the first refresh completed (successfully or not). */
  get loaded(): boolean {
    return this._loaded;
  }

  get pendingIncoming(): IRequest[] {
    return pendingIncoming(this._requests);
  }
  get pendingOutgoing(): IRequest[] {
    return pendingOutgoing(this._requests);
  }
  /** Pending incoming requests: the status bar count. */
  get pendingCount(): number {
    return this.pendingIncoming.length;
  }
  get sortedDevices(): IPairedDevice[] {
    return sortDevices(this._devices);
  }

  /** Base polling interval in ms (0 disables the polling fallback). */
  get pollInterval(): number {
    return this._pollInterval;
  }
  set pollInterval(value: number) {
    const next = Math.max(0, Number.isFinite(value) ? value : 0);
    if (next === this._pollInterval) {
      return;
    }
    this._pollInterval = next;
    this._delay = next;
    if (this._started) {
      this._schedule();
    }
  }

  /** The delay before the next poll (grows while idle). */
  get currentPollDelay(): number {
    return this._delay;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** First load, then keep polling. */
  start(): Promise<void> {
    this._started = true;
    return this.refresh({ device: true });
  }

  /**
   * Fetch requests and devices (and the device when stale or `device: true`). Calls made while
   * one runs are coalesced into one more run after it.
   */
  refresh(options: { device?: boolean } = {}): Promise<void> {
    if (options.device) {
      this._deviceStale = true;
    }
    if (this._inflight) {
      this._again = true;
      return this._inflight;
    }
    const run = async () => {
      do {
        this._again = false;
        await this._fetch();
      } while (this._again && !this._isDisposed);
    };
    this._inflight = run().finally(() => {
      this._inflight = null;
    });
    return this._inflight;
  }

  /**
   * Feed one emission of `serviceManager.events.stream`. Returns true when it was one of ours
   * (then the model refreshes at once and polling goes back to its base interval). Job progress
   * only refreshes the jobs, throttled (a job may report many times a second).
   */
  handleEmission(emission: unknown): boolean {
    const event = parseEvent(emission);
    if (!event || this._isDisposed) {
      return false;
    }
    this._eventReceived.emit(event);
    this._activity = true;
    if (event.name === 'job-progress') {
      this.refreshJobs();
    } else {
      void this.refresh();
    }
    return true;
  }

  /**
   * Fetch the jobs (only), at most once per JOBS_MIN_INTERVAL_MS: calls in between are merged
   * into one fetch at the end of the interval.
   */
  refreshJobs(): void {
    if (this._isDisposed || this._jobsTimer !== null) {
      return;
    }
    if (this._jobsInflight) {
      this._jobsAgain = true;
      return;
    }
    const wait = Math.max(0, this._jobsFetchedAt + JOBS_MIN_INTERVAL_MS - Date.now());
    this._jobsTimer = setTimeout(() => {
      this._jobsTimer = null;
      if (this._isDisposed) {
        return;
      }
      this._jobsInflight = this._loadJobs().finally(() => {
        this._jobsInflight = null;
        if (this._jobsAgain) {
          this._jobsAgain = false;
          this.refreshJobs();
        }
      });
    }, wait);
  }

  /** Ask a job's owner to cancel it; the job shows `cancelling` from the server's answer. */
  async cancelJob(id: string): Promise<IJob> {
    return this._jobAction(id, async () => {
      const job = await this.api.cancelJob(id);
      this._putJob(job);
      return job;
    });
  }

  /** Remove an ended job from the history. */
  async removeJob(id: string): Promise<void> {
    return this._jobAction(id, async () => {
      await this.api.deleteJob(id);
      this._setJobs(this._jobs.filter(j => j.id !== id));
    });
  }

  /**
   * Fetch the installed workloads (the run form asks when it opens; they are not polled). A
   * failure is kept in `workloadsError`; an older answer never replaces a newer one.
   */
  async loadWorkloads(): Promise<void> {
    const seq = ++this._workloadsSeq;
    let workloads = this._workloads;
    let error: string | null = null;
    try {
      workloads = await this.api.listWorkloads();
    } catch (err) {
      error = err instanceof Error ? err.message : String(err);
    }
    if (this._isDisposed || seq !== this._workloadsSeq) {
      return;
    }
    if (
      error !== this._workloadsError ||
      JSON.stringify(workloads) !== JSON.stringify(this._workloads)
    ) {
      this._workloads = workloads;
      this._workloadsError = error;
      this._changed.emit();
    }
  }

  /**
   * Start a workload as a job of the server. The job shows at once (`pending`, from the
   * server's answer), then the lists refresh and polling goes back to its base rate. Throws the
   * server's refusal (APIError with its one-line message: unknown workload, bad parameters).
   */
  async runWorkload(name: string, body: IWorkloadRunBody): Promise<IJob> {
    this._activity = true;
    const job = await this.api.runWorkload(name, body);
    if (!this._isDisposed) {
      this._putJob(job);
      this._changed.emit();
      void this.refresh();
    }
    return job;
  }

  /** Accept an incoming request; `kernel` is the chosen kernelspec name or null (default). */
  async accept(id: string, kernel: string | null = null): Promise<IRequest> {
    this._activity = true;
    try {
      return await this.api.accept(id, kernel ? { kernel } : {});
    } finally {
      void this.refresh();
    }
  }

  async reject(id: string): Promise<IRequest> {
    this._activity = true;
    try {
      return await this.api.reject(id, {});
    } finally {
      void this.refresh();
    }
  }

  async revoke(deviceId: string): Promise<IPairedDevice> {
    this._activity = true;
    try {
      return await this.api.revoke(deviceId);
    } finally {
      void this.refresh();
    }
  }

  /** Send a request to a peer; resolves to the outgoing request with its code. */
  async invite(body: IInvitationBody): Promise<IRequest> {
    this._activity = true;
    try {
      return await this.api.invite(body);
    } finally {
      void this.refresh();
    }
  }

  /**
   * Start or stop this device's scheduler, or add a worker of this device (`nthreads` for
   * add-self only). One action at a time; the error, if any, is kept in `clusterActionError`.
   */
  async clusterAction(action: ClusterAction, nthreads?: number): Promise<IClusterState | null> {
    if (this._clusterBusy !== null || this._isDisposed) {
      return null;
    }
    this._clusterBusy = action;
    this._clusterActionError = null;
    this._activity = true;
    this._clusterSettleUntil = Date.now() + CLUSTER_SETTLE_MS;
    this._changed.emit();
    try {
      const result =
        action === 'start'
          ? await this.api.startCluster()
          : action === 'stop'
            ? await this.api.stopCluster()
            : await this.api.addSelfToCluster(nthreads !== undefined ? { nthreads } : {});
      this._cluster = result;
      this._clusterError = null;
      return result;
    } catch (error) {
      this._clusterActionError = error instanceof Error ? error.message : String(error);
      return null;
    } finally {
      this._clusterBusy = null;
      this._clusterSettleUntil = Date.now() + CLUSTER_SETTLE_MS;
      if (!this._isDisposed) {
        this._changed.emit();
        void this.refresh();
      }
    }
  }

  /** Re-run the accelerator probe on the server and show the result. */
  async probe(): Promise<void> {
    const device = await this.api.getDevice(true);
    this._device = device;
    this._deviceFetchedAt = Date.now();
    this._changed.emit();
  }

  /** The server's clock in unix seconds (for countdowns). */
  serverNow(): number {
    return this.api.serverNow();
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    this._clearTimer();
    if (this._jobsTimer !== null) {
      clearTimeout(this._jobsTimer);
      this._jobsTimer = null;
    }
    Signal.clearData(this);
  }

  private async _fetch(): Promise<void> {
    const wantDevice =
      this._deviceStale ||
      this._device === null ||
      this._device.profile?.accelerators === null ||
      Date.now() - this._deviceFetchedAt > DEVICE_MAX_AGE_MS;
    let changed = false;
    try {
      // The cluster is optional (503 where the server has none): its failure is its own.
      const clusterCall = this.api.getCluster().then(
        cluster => ({ cluster, error: null }),
        (error: unknown) => ({
          cluster: null,
          error: error instanceof Error ? error.message : String(error)
        })
      );
      const jobsCall = this._fetchJobs();
      const [device, requests, devices, cluster, jobs] = await Promise.all([
        wantDevice ? this.api.getDevice() : Promise.resolve(null),
        this.api.listRequests(),
        this.api.listDevices(),
        clusterCall,
        jobsCall
      ]);
      if (this._isDisposed) {
        return;
      }
      if (device) {
        this._deviceStale = false;
        this._deviceFetchedAt = Date.now();
        if (JSON.stringify(device) !== JSON.stringify(this._device)) {
          this._device = device;
          this._uiChanged = true;
        }
      }
      // Only requests and devices count as activity for the idle back-off: the device's
      // memory figures change all the time.
      if (JSON.stringify(requests) !== JSON.stringify(this._requests)) {
        this._requests = requests;
        changed = true;
      }
      if (JSON.stringify(devices) !== JSON.stringify(this._devices)) {
        this._devices = devices;
        changed = true;
      }
      if (
        cluster.error !== this._clusterError ||
        JSON.stringify(cluster.cluster) !== JSON.stringify(this._cluster)
      ) {
        this._cluster = cluster.cluster;
        this._clusterError = cluster.error;
        changed = true;
      }
      if (this._applyJobs(jobs)) {
        changed = true;
      }
      if (this._error !== null) {
        this._error = null;
        changed = true;
      }
      await this._maybeLoadKernels();
    } catch (error) {
      if (this._isDisposed) {
        return;
      }
      const message = error instanceof Error ? error.message : String(error);
      if (message !== this._error) {
        this._error = message;
        this._uiChanged = true;
      }
    }
    // Keep polling at the base rate until the server's accelerator probe has finished, and while
    // a job runs (a job whose kernel died turns `lost` without an event).
    const probing =
      (this._device !== null && this._device.profile?.accelerators === null) ||
      Date.now() < this._clusterSettleUntil ||
      this._jobs.some(j => !jobEnded(j));
    const firstLoad = !this._loaded;
    this._loaded = true;
    this._diffIncoming(firstLoad);
    if (changed || this._uiChanged || firstLoad) {
      this._uiChanged = false;
      this._changed.emit();
    }
    this._delay = nextPollDelay(
      this._delay,
      changed || this._activity || probing,
      this._pollInterval,
      maxPollDelay(this._pollInterval)
    );
    this._activity = false;
    if (this._started) {
      this._schedule();
    }
  }

  /**
   * GET jobs; the failure is the jobs' own (a server without the jobs API still shows the rest).
   * Answers are numbered so that an older answer never replaces a newer one.
   */
  private async _fetchJobs(): Promise<IJobsAnswer> {
    const seq = ++this._jobsSeq;
    this._jobsFetchedAt = Date.now();
    try {
      return { seq, jobs: await this.api.listJobs(), error: null };
    } catch (error) {
      return { seq, jobs: null, error: error instanceof Error ? error.message : String(error) };
    }
  }

  /** Take a jobs answer; true when it changed what the panel shows. */
  private _applyJobs(answer: IJobsAnswer): boolean {
    if (answer.seq < this._jobsApplied) {
      return false;
    }
    this._jobsApplied = answer.seq;
    const jobs = answer.jobs === null ? this._jobs : sortJobs(answer.jobs);
    if (answer.error === this._jobsError && JSON.stringify(jobs) === JSON.stringify(this._jobs)) {
      return false;
    }
    this._jobs = jobs;
    this._jobsError = answer.error;
    return true;
  }

  /** The throttled jobs-only refresh. */
  private async _loadJobs(): Promise<void> {
    const answer = await this._fetchJobs();
    if (!this._isDisposed && this._applyJobs(answer)) {
      this._changed.emit();
    }
  }

  /** Put one job as the server just returned it into the list. */
  private _putJob(job: IJob): void {
    this._setJobs(sortJobs([...this._jobs.filter(j => j.id !== job.id), job]));
  }

  /** Set the jobs after an action of ours; answers already on their way predate it. */
  private _setJobs(jobs: IJob[]): void {
    this._jobs = jobs;
    this._jobsApplied = this._jobsSeq + 1;
  }

  /** Run a cancel or remove: the job is busy meanwhile, the list refreshes after. */
  private async _jobAction<T>(id: string, action: () => Promise<T>): Promise<T> {
    this._activity = true;
    this._jobsBusy.add(id);
    this._changed.emit();
    try {
      return await action();
    } finally {
      this._jobsBusy.delete(id);
      if (!this._isDisposed) {
        this._changed.emit();
        this.refreshJobs();
      }
    }
  }

  private async _maybeLoadKernels(): Promise<void> {
    if (this.pendingIncoming.length === 0) {
      return;
    }
    if (Date.now() - this._kernelsFetchedAt < KERNELS_MAX_AGE_MS) {
      return;
    }
    this._kernelsFetchedAt = Date.now();
    try {
      const choices = await this.api.listKernelChoices();
      if (JSON.stringify(choices) !== JSON.stringify(this._kernelChoices)) {
        this._kernelChoices = choices;
        this._uiChanged = true;
      }
    } catch {
      // The selector then offers the default environment only.
    }
  }

  /** Emit newIncoming / incomingClosed from the difference with the previous refresh. */
  private _diffIncoming(firstLoad: boolean): void {
    const pending = this.pendingIncoming;
    const pendingIds = new Set(pending.map(r => r.id));
    const fresh = pending.filter(r => !this._seenIncoming.has(r.id));
    const closed = [...this._pendingIds].filter(id => !pendingIds.has(id));
    for (const r of pending) {
      this._seenIncoming.add(r.id);
    }
    this._pendingIds = pendingIds;
    if (!firstLoad && fresh.length > 0) {
      this._newIncoming.emit(fresh);
    }
    if (closed.length > 0) {
      this._incomingClosed.emit(closed);
    }
  }

  private _schedule(): void {
    this._clearTimer();
    if (this._isDisposed || this._pollInterval <= 0) {
      return;
    }
    if (this._delay <= 0) {
      this._delay = this._pollInterval;
    }
    this._timer = setTimeout(() => {
      this._timer = null;
      void this.refresh();
    }, this._delay);
  }

  private _clearTimer(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _device: IDevice | null = null;
  private _deviceFetchedAt = 0;
  private _deviceStale = true;
  private _requests: IRequest[] = [];
  private _devices: IPairedDevice[] = [];
  private _kernelChoices: IKernelChoice[] = [];
  private _kernelsFetchedAt = 0;
  private _error: string | null = null;
  private _cluster: IClusterState | null = null;
  private _clusterError: string | null = null;
  private _clusterBusy: ClusterAction | null = null;
  private _clusterActionError: string | null = null;
  private _clusterSettleUntil = 0;
  private _jobs: IJob[] = [];
  private _jobsError: string | null = null;
  private _jobsBusy = new Set<string>();
  private _jobsFetchedAt = 0;
  private _jobsSeq = 0;
  private _jobsApplied = 0;
  private _jobsTimer: ReturnType<typeof setTimeout> | null = null;
  private _jobsInflight: Promise<void> | null = null;
  private _jobsAgain = false;
  private _workloads: IWorkload[] | null = null;
  private _workloadsError: string | null = null;
  private _workloadsSeq = 0;
  private _loaded = false;
  private _uiChanged = false;
  private _activity = false;
  private _seenIncoming = new Set<string>();
  private _pendingIds = new Set<string>();
  private _inflight: Promise<void> | null = null;
  private _again = false;
  private _started = false;
  private _pollInterval: number;
  private _delay = 0;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _isDisposed = false;
  private _changed = new Signal<this, void>(this);
  private _newIncoming = new Signal<this, IRequest[]>(this);
  private _incomingClosed = new Signal<this, string[]>(this);
  private _eventReceived = new Signal<this, IParallalxEvent>(this);
}
