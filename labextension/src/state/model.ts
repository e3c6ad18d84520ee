/**
 * The sidebar's state: this device, open requests, paired devices, the cluster and jobs, kept
 * fresh from the event stream with a polling fallback that slows down while nothing changes. No
 * DOM in here: the widgets, the toasts and the status bar item all render from this one model
 * (unit-tested in node with a fake API).
 *
 * This module holds the refresh loop and the device / requests / devices data; the cluster, the
 * jobs, the workloads, the incoming-request tracking and the poll timer are parts of their own.
 */
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import type {
  ClusterAction,
  IClusterState,
  IDevice,
  IInvitationBody,
  IJob,
  IKernelChoice,
  INearbyDevice,
  IPairedDevice,
  IRequest,
  IWorkload,
  IWorkloadRunBody
} from '../models/apiTypes';
import { sortDevices } from '../models/deviceViews';
import { IParallalxEvent, parseEvent } from '../models/events';
import { pendingIncoming, pendingOutgoing } from '../models/requestViews';
import { ClusterState } from './cluster';
import { IModelAPI, IModelHost, errorMessage } from './host';
import { IncomingTracker, KernelChoices, OutgoingTracker } from './incoming';
import { IJobOutputView, JobOutputState } from './jobOutput';
import { JobsState } from './jobs';
import { NearbyState } from './nearby';
import { PollTimer } from './polling';
import { WorkloadsState } from './workloads';

/** Re-read the device (its memory figures change) at most this often, unless forced. */
const DEVICE_MAX_AGE_MS = 60_000;

export class ParallalxModel implements IDisposable {
  constructor(api: IModelAPI, options: { pollInterval?: number } = {}) {
    this.api = api;
    this._poll = new PollTimer(Math.max(0, options.pollInterval ?? 5000), () => {
      void this.refresh();
    });
    const isDisposed = () => this._isDisposed;
    const host: IModelHost = {
      get isDisposed() {
        return isDisposed();
      },
      emitChanged: () => this._emitChanged(),
      markActivity: () => {
        this._activity = true;
      },
      refresh: () => {
        void this.refresh();
      }
    };
    this._cluster = new ClusterState(api, host);
    this._jobs = new JobsState(api, host);
    this._outputs = new JobOutputState(api, host);
    this._workloads = new WorkloadsState(api, host);
    this._nearby = new NearbyState(api);
    this._kernels = new KernelChoices(api);
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

  /** Outgoing requests the other device decided (or that expired) since the last refresh. */
  get outgoingDecided(): ISignal<this, IRequest[]> {
    return this._outgoingDecided;
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
    return this._kernels.choices;
  }
  /** This device's cluster state; null until loaded (or while the cluster API fails). */
  get cluster(): IClusterState | null {
    return this._cluster.cluster;
  }
  /** Why the cluster state could not be read (e.g. 503: no cluster on this server), or null. */
  get clusterError(): string | null {
    return this._cluster.error;
  }
  /** The cluster action running now, or null. */
  get clusterBusy(): ClusterAction | null {
    return this._cluster.busy;
  }
  /** The last cluster action's error message, null when it worked. */
  get clusterActionError(): string | null {
    return this._cluster.actionError;
  }
  /** Devices announcing themselves on the local network (unverified), this one excluded. */
  get nearby(): readonly INearbyDevice[] {
    return this._nearby.devices;
  }
  /** Why the nearby devices could not be read, or null. */
  get nearbyError(): string | null {
    return this._nearby.error;
  }
  /** Jobs, newest first (empty until loaded, or while the jobs API fails). */
  get jobs(): readonly IJob[] {
    return this._jobs.jobs;
  }
  /** Why the jobs could not be read, or null. */
  get jobsError(): string | null {
    return this._jobs.error;
  }
  /** True while a cancel or remove of this job is on its way to the server. */
  jobBusy(id: string): boolean {
    return this._jobs.busy(id);
  }
  /** True while the Output of this job is open. */
  jobOutputOpen(id: string): boolean {
    return this._outputs.isOpen(id);
  }
  /** The lines the ranks of this job printed, while its Output is open; else null. */
  jobOutput(id: string): IJobOutputView | null {
    return this._outputs.view(id);
  }
  /** Workloads installed on the server; null until `loadWorkloads` got an answer. */
  get workloads(): readonly IWorkload[] | null {
    return this._workloads.workloads;
  }
  /** Why the workloads could not be read, or null. */
  get workloadsError(): string | null {
    return this._workloads.error;
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
    return this._poll.interval;
  }
  set pollInterval(value: number) {
    const next = Math.max(0, Number.isFinite(value) ? value : 0);
    if (next === this._poll.interval) {
      return;
    }
    this._poll.interval = next;
    if (this._started) {
      this._poll.schedule();
    }
  }

  /** The delay before the next poll (grows while idle). */
  get currentPollDelay(): number {
    return this._poll.delay;
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
      const jobId = event.payload['job_id'];
      if (typeof jobId === 'string') {
        this._outputs.refresh(jobId);
      }
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
    this._jobs.refresh();
  }

  /**
   * Open or close the Output of a job: while open, its lines are read at once, then again
   * (throttled) on each job-progress event of the job and whenever the jobs list shows it changed.
   */
  setJobOutputOpen(id: string, open: boolean): void {
    if (open) {
      this._outputs.open(id);
    } else {
      this._outputs.close(id);
    }
  }

  /** Ask a job's owner to cancel it; the job shows `cancelling` from the server's answer. */
  cancelJob(id: string): Promise<IJob> {
    return this._jobs.cancel(id);
  }

  /** Remove an ended job from the history. */
  removeJob(id: string): Promise<void> {
    return this._jobs.remove(id);
  }

  /**
   * Fetch the installed workloads (the run form asks when it opens; they are not polled). A
   * failure is kept in `workloadsError`; an older answer never replaces a newer one.
   */
  loadWorkloads(): Promise<void> {
    return this._workloads.load();
  }

  /**
   * Start a workload as a job of the server. The job shows at once (`pending`, from the
   * server's answer), then the lists refresh and polling goes back to its base rate. Throws the
   * server's refusal (APIError with its one-line message: unknown workload, bad parameters).
   */
  runWorkload(name: string, body: IWorkloadRunBody): Promise<IJob> {
    return this._jobs.run(name, body);
  }

  /** Accept an incoming request; `kernel` is the chosen kernelspec name or null (default). */
  accept(id: string, kernel: string | null = null): Promise<IRequest> {
    return this._act(() => this.api.accept(id, kernel ? { kernel } : {}));
  }

  reject(id: string): Promise<IRequest> {
    return this._act(() => this.api.reject(id, {}));
  }

  /**
   * Reject several incoming requests, one after the other, then refresh once. Resolves to the
   * IDs rejected and the errors of those that could not be (decided meanwhile, expired).
   */
  async rejectMany(ids: readonly string[]): Promise<{ rejected: string[]; failed: string[] }> {
    this._activity = true;
    const rejected: string[] = [];
    const failed: string[] = [];
    try {
      for (const id of ids) {
        try {
          await this.api.reject(id, {});
          rejected.push(id);
        } catch (error) {
          failed.push(errorMessage(error));
        }
      }
    } finally {
      void this.refresh();
    }
    return { rejected, failed };
  }

  revoke(deviceId: string): Promise<IPairedDevice> {
    return this._act(() => this.api.revoke(deviceId));
  }

  /** Send a request to a peer; resolves to the outgoing request with its code. */
  invite(body: IInvitationBody): Promise<IRequest> {
    return this._act(async () => {
      const request = await this.api.invite(body);
      this._outgoing.watch(request.id);
      return request;
    });
  }

  /**
   * Start or stop this device's scheduler, or add a worker of this device (`nthreads` for
   * add-self only). One action at a time; the error, if any, is kept in `clusterActionError`.
   */
  clusterAction(action: ClusterAction, nthreads?: number): Promise<IClusterState | null> {
    return this._cluster.run(action, nthreads);
  }

  /** Join the main device `mainId` again now (the Retry of a refused or failed join). */
  retryJoin(mainId: string): Promise<IClusterState | null> {
    return this._cluster.run('retry', mainId);
  }

  /** Re-run the accelerator probe on the server and show the result. */
  async probe(): Promise<void> {
    const device = await this.api.getDevice(true);
    this._device = device;
    this._deviceFetchedAt = Date.now();
    this._emitChanged();
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
    this._poll.dispose();
    this._jobs.dispose();
    this._outputs.dispose();
    Signal.clearData(this);
  }

  /** Emit `changed`; open Outputs first catch up with the jobs list. */
  private _emitChanged(): void {
    this._outputs.sync(this._jobs.jobs);
    this._changed.emit();
  }

  /** A request or device action: the API call, then a refresh (whether it worked or not). */
  private async _act<T>(call: () => Promise<T>): Promise<T> {
    this._activity = true;
    try {
      return await call();
    } finally {
      void this.refresh();
    }
  }

  private async _fetch(): Promise<void> {
    const wantDevice =
      this._deviceStale ||
      this._device === null ||
      this._device.profile?.accelerators === null ||
      Date.now() - this._deviceFetchedAt > DEVICE_MAX_AGE_MS;
    let changed = false;
    try {
      // The cluster and the jobs are optional: their failures are their own.
      const clusterCall = this._cluster.fetch();
      const jobsCall = this._jobs.fetch();
      const nearbyCall = this._nearby.fetch();
      const [device, requests, devices, cluster, jobs, nearby] = await Promise.all([
        wantDevice ? this.api.getDevice() : Promise.resolve(null),
        this.api.listRequests(),
        this.api.listDevices(),
        clusterCall,
        jobsCall,
        nearbyCall
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
      if (this._cluster.apply(cluster)) {
        changed = true;
      }
      if (this._jobs.apply(jobs)) {
        changed = true;
      }
      if (this._nearby.apply(nearby)) {
        changed = true;
      }
      if (this._error !== null) {
        this._error = null;
        changed = true;
      }
      if (await this._kernels.load(this.pendingIncoming.length > 0)) {
        this._uiChanged = true;
      }
    } catch (error) {
      if (this._isDisposed) {
        return;
      }
      const message = errorMessage(error);
      if (message !== this._error) {
        this._error = message;
        this._uiChanged = true;
      }
    }
    // Keep polling at the base rate until the server's accelerator probe has finished, and while
    // a job runs (a job whose kernel died turns `lost` without an event).
    const probing =
      (this._device !== null && this._device.profile?.accelerators === null) ||
      this._cluster.settling ||
      this._jobs.anyRunning;
    const firstLoad = !this._loaded;
    this._loaded = true;
    this._diffIncoming(firstLoad);
    if (changed || this._uiChanged || firstLoad) {
      this._uiChanged = false;
      this._emitChanged();
    }
    this._poll.settle(changed || this._activity || probing);
    this._activity = false;
    if (this._started) {
      this._poll.schedule();
    }
  }

  /** Emit newIncoming / incomingClosed from the difference with the previous refresh. */
  private _diffIncoming(firstLoad: boolean): void {
    const { fresh, closed } = this._incoming.update(this.pendingIncoming);
    if (!firstLoad && fresh.length > 0) {
      this._newIncoming.emit(fresh);
    }
    if (closed.length > 0) {
      this._incomingClosed.emit(closed);
    }
    const left = this._outgoing.update(this._requests);
    if (left.length > 0) {
      void this._readOutcomes(left);
    }
  }

  /** Read how outgoing requests that left the open list ended; emit `outgoingDecided`. */
  private async _readOutcomes(ids: string[]): Promise<void> {
    const decided: IRequest[] = [];
    for (const id of ids) {
      try {
        const request = await this.api.getRequest(id);
        if (request.state !== 'pending') {
          decided.push(request);
        }
      } catch {
        // gone (removed, or the server restarted without it): nothing to tell
      }
    }
    if (decided.length > 0 && !this._isDisposed) {
      this._outgoingDecided.emit(decided);
    }
  }

  private readonly _poll: PollTimer;
  private readonly _cluster: ClusterState;
  private readonly _jobs: JobsState;
  private readonly _outputs: JobOutputState;
  private readonly _workloads: WorkloadsState;
  private readonly _nearby: NearbyState;
  private readonly _kernels: KernelChoices;
  private readonly _incoming = new IncomingTracker();
  private readonly _outgoing = new OutgoingTracker();
  private _device: IDevice | null = null;
  private _deviceFetchedAt = 0;
  private _deviceStale = true;
  private _requests: IRequest[] = [];
  private _devices: IPairedDevice[] = [];
  private _error: string | null = null;
  private _loaded = false;
  private _uiChanged = false;
  private _activity = false;
  private _inflight: Promise<void> | null = null;
  private _again = false;
  private _started = false;
  private _isDisposed = false;
  private _changed = new Signal<this, void>(this);
  private _newIncoming = new Signal<this, IRequest[]>(this);
  private _incomingClosed = new Signal<this, string[]>(this);
  private _outgoingDecided = new Signal<this, IRequest[]>(this);
  private _eventReceived = new Signal<this, IParallalxEvent>(this);
}
