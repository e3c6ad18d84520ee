/**
 * Typed models of the parallalx REST API JSON (see parallalx_jupyter/openapi.json) and the
 * pure helpers the sidebar needs. Nothing in this module touches the DOM, so it is unit-tested
 * in node (src/__tests__).
 *
 * Every string that comes from a peer (names, purpose, URLs) is untrusted text: the widgets put
 * it into the page with `textContent` only.
 */

/* ------------------------------------------------------------------ REST API models */

export type RequestDirection = 'incoming' | 'outgoing';
export type RequestKind = 'invite' | 'offer';
export type RequestState =
  | 'pending'
  | 'accepted'
  | 'rejected'
  | 'expired'
  | 'superseded';
export type DeviceRole = 'main' | 'worker';
export type PairedState = 'paired' | 'revoked' | 'revoked_by_peer';

/** One CUDA device from the torch probe. */
export interface ICudaDevice {
  index: number;
  name: string;
  memory_bytes: number;
}

/** Accelerators from a torch probe in a subprocess; null until the first probe. */
export interface IAccelerators {
  torch: string | null;
  cuda: ICudaDevice[];
  mps: boolean;
  error?: string;
}

/** This device's capability profile. */
export interface IProfile {
  hostname: string;
  os: string;
  machine: string;
  python: string;
  cpu_cores: number;
  cpu_threads: number;
  memory_bytes: number;
  memory_available_bytes: number;
  accelerators: IAccelerators | null;
  probed_at: number | null;
}

/** `GET device`: this device. */
export interface IDevice {
  id: string;
  id_display: string;
  name: string;
  peer_urls: string[];
  version: string;
  profile: IProfile;
  /**
   * Incoming requests opened in the last `request_ttl` seconds but never revealed within the
   * server's `reveal_window`: a failed pairing, or someone holding this device's request caps.
   * They are not in the requests list; the panel shows their number. Absent from older servers.
   */
  incomplete_requests?: number;
}

/** What a request asks for, as the server stored it (every field present, null if not asked). */
export interface IAsksView {
  purpose: string;
  nthreads: number | null;
  memory_limit_gb: number | null;
  gpus: number | null;
  duration_hours: number | null;
}

/** What an invitation asks for (every field optional). */
export interface IAsks {
  purpose?: string;
  nthreads?: number | null;
  memory_limit_gb?: number | null;
  gpus?: number | null;
  duration_hours?: number | null;
}

/** The other side of a request. */
export interface IPeerRef {
  id: string;
  id_display: string;
  name: string;
  url: string | null;
}

/** `GET requests`, `GET requests/{id}`: a connection request. */
export interface IRequest {
  id: string;
  direction: RequestDirection;
  kind: RequestKind;
  state: RequestState;
  peer: IPeerRef;
  asks: IAsksView;
  /** 6 digits; only while pending or once accepted. */
  code: string | null;
  created_at: number;
  expires_at: number;
  decided_at: number | null;
}

/** What the receiving user picked when accepting. */
export interface ISelection {
  kernel?: string;
  ide?: string;
  auto_accepted?: boolean;
}

/** What a current pairing grants; null once revoked. */
export interface IGrant {
  asks: IAsksView;
  selection: ISelection;
}

/** `GET devices`: a paired device. */
export interface IPairedDevice {
  id: string;
  id_display: string;
  name: string;
  /** The role the peer has for this device. */
  role: DeviceRole;
  state: PairedState;
  peer_url: string | null;
  request_id: string | null;
  paired_at: number;
  updated_at: number;
  last_seen: number | null;
  grant: IGrant | null;
}

/** `POST requests/{id}/accept` body. */
export interface IAcceptBody {
  kernel?: string | null;
  ide?: string | null;
  note?: string | null;
}

/** `POST requests/{id}/reject` body. */
export interface IRejectBody {
  reason?: string | null;
}

/** `POST invitations` body. */
export interface IInvitationBody {
  url: string;
  kind?: RequestKind;
  asks?: IAsks;
}

/**
 * A kernel/environment the accepting user can pick for the worker.
 *
 * HOOK: the kernels API (`GET <base>/parallalx/api/kernels`) comes with a later issue; until the
 * server serves it the list is empty and the selector only offers the default environment.
 */
export interface IKernelChoice {
  name: string;
  display_name: string;
  /** false for kernels that cannot run a worker (e.g. non-Python), with the reason. */
  selectable: boolean;
  reason?: string;
}

/** A worker connected to this device's scheduler (as the scheduler reports it). */
export interface IClusterWorker {
  device_id: string;
  address?: string;
  name?: string;
  nthreads?: number;
  memory_limit?: number | null;
  resources?: { [key: string]: unknown };
}

/** A main device this device runs a worker for. */
export interface IServedMain {
  main_id: string;
  /** requesting-certificate, preparing-environment, starting-worker, waiting-for-scheduler, running, failed */
  state: string;
  message?: string | null;
  scheduler?: string;
  process?: string | null;
}

/** `GET cluster` (and the result of the cluster actions). */
export interface IClusterState {
  running: boolean;
  scheduler_address: string | null;
  dashboard_link: string | null;
  ca_fingerprint: string | null;
  workers: IClusterWorker[];
  serving: IServedMain[];
}

/** `POST cluster/add-self` body. */
export interface IAddSelfBody {
  nthreads?: number;
}

export type ClusterAction = 'start' | 'stop' | 'add-self';

export type JobState =
  | 'pending'
  | 'running'
  | 'restarting'
  | 'cancelling'
  | 'finished'
  | 'failed'
  | 'cancelled'
  | 'lost';

/** The process that runs a job and reports its progress. */
export interface IJobOwner {
  kind: 'kernel' | 'cli' | 'server' | 'python';
  pid: number;
  host: string;
}

/** A job's latest progress report (each field null until reported). */
export interface IJobProgress {
  step: number | null;
  total: number | null;
  /** 0..1 */
  fraction: number | null;
  loss: number | null;
  samples_per_s: number | null;
  eta_s: number | null;
  workers: number | null;
  message: string | null;
}

/** `GET jobs` (newest first), `GET jobs/{id}`, `POST jobs/{id}/cancel`: a training job. */
export interface IJob {
  id: string;
  /** `train`, `sweep`, `inference`, ... */
  workload: string;
  /** Untrusted text. */
  name: string;
  /** `lost`: the owner stopped reporting (its kernel died). */
  state: JobState;
  owner: IJobOwner;
  created_at: number;
  updated_at: number;
  finished_at: number | null;
  progress: IJobProgress;
  /** At most 200 points. */
  loss_history: number[];
  error: string | null;
  cancel_requested: boolean;
}

/** One parameter in a workload's JSON Schema (only the keywords the panel reads are typed). */
export interface IWorkloadParameter {
  type?: string | string[];
  default?: unknown;
  description?: string;
  minimum?: number;
  maximum?: number;
  enum?: unknown[];
  /** A Python object, given as a `package.module:attribute` string outside Python. */
  'x-python'?: boolean;
  [keyword: string]: unknown;
}

/** A workload's parameters: a JSON Schema object. */
export interface IWorkloadParameters {
  type?: string;
  properties?: { [name: string]: IWorkloadParameter };
  required?: string[];
  additionalProperties?: boolean;
  [keyword: string]: unknown;
}

/** `GET workloads`: a workload installed on the server. */
export interface IWorkload {
  id: string;
  name: string;
  /** Untrusted text (from an installed package). */
  description: string;
  parameters: IWorkloadParameters;
  /** Why the installed workload cannot be loaded; null when it can run. */
  error: string | null;
}

/** `POST workloads/{name}/run` body. */
export interface IWorkloadRunBody {
  params: { [name: string]: unknown };
  name?: string | null;
  /** A Dask scheduler address; default: this device's cluster. */
  scheduler?: string | null;
}

/* ------------------------------------------------------------------ events */

/** Our event schema IDs are `${SCHEMA_PREFIX}<name>/v1`. */
export const SCHEMA_PREFIX = 'https://events.parallalx.dev/parallalx_jupyter/';

export const EVENT_NAMES = [
  'request-received',
  'request-decided',
  'device-added',
  'device-revoked',
  'cluster-state',
  'worker-state',
  'job-progress'
] as const;

export type ParallalxEventName = (typeof EVENT_NAMES)[number];

/** One of our events, as it comes out of `serviceManager.events.stream`. */
export interface IParallalxEvent {
  name: ParallalxEventName;
  version: string;
  /** The payload fields (IDs, names, states only). */
  payload: { [key: string]: unknown };
}

/**
 * Pick our events out of the server's event stream. Returns null for anything else (other
 * extensions' events, unknown versions of ours, malformed emissions).
 */
export function parseEvent(emission: unknown): IParallalxEvent | null {
  if (!isObject(emission)) {
    return null;
  }
  const schemaId = emission['schema_id'];
  if (typeof schemaId !== 'string' || !schemaId.startsWith(SCHEMA_PREFIX)) {
    return null;
  }
  const rest = schemaId.slice(SCHEMA_PREFIX.length);
  const match = /^([a-z-]+)\/v(\d+)$/.exec(rest);
  if (!match) {
    return null;
  }
  const name = match[1] as ParallalxEventName;
  if (!EVENT_NAMES.includes(name)) {
    return null;
  }
  const payload: { [key: string]: unknown } = {};
  for (const [key, value] of Object.entries(emission)) {
    if (key !== 'schema_id' && key !== 'version' && key !== '__timestamp__') {
      payload[key] = value;
    }
  }
  return { name, version: match[2], payload };
}

/* ------------------------------------------------------------------ derived views */

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

/** Devices shown in the Devices section: current pairings first, then by name. */
export function sortDevices(devices: readonly IPairedDevice[]): IPairedDevice[] {
  const rank = (d: IPairedDevice) => (d.state === 'paired' ? 0 : 1);
  return [...devices].sort(
    (a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name) || a.id.localeCompare(b.id)
  );
}

/** A device ID shortened for display (the full ID goes into the title). */
export function shortId(id: string): string {
  return id.length > 12 ? `${id.slice(0, 12)}…` : id;
}

/** Known device names by ID: paired devices and this device. */
export function deviceNames(
  devices: readonly Pick<IPairedDevice, 'id' | 'name'>[],
  self: Pick<IDevice, 'id' | 'name'> | null
): Map<string, string> {
  const names = new Map<string, string>();
  for (const d of devices) {
    names.set(d.id, d.name);
  }
  if (self) {
    names.set(self.id, self.name);
  }
  return names;
}

/** The label of a device: its name when known, else its short ID. */
export function deviceLabel(id: string, names: ReadonlyMap<string, string>): string {
  return names.get(id) || shortId(id);
}

/** Cluster workers grouped by device: this device first, then by label. */
export interface IWorkerGroup {
  deviceId: string;
  label: string;
  isSelf: boolean;
  workers: IClusterWorker[];
}

export function groupWorkers(
  workers: readonly IClusterWorker[],
  names: ReadonlyMap<string, string>,
  selfId: string | null
): IWorkerGroup[] {
  const groups = new Map<string, IWorkerGroup>();
  for (const w of workers) {
    const id = typeof w.device_id === 'string' ? w.device_id : '';
    let group = groups.get(id);
    if (!group) {
      group = { deviceId: id, label: deviceLabel(id, names), isSelf: id === selfId, workers: [] };
      groups.set(id, group);
    }
    group.workers.push(w);
  }
  return [...groups.values()].sort(
    (a, b) =>
      Number(b.isSelf) - Number(a.isSelf) ||
      a.label.localeCompare(b.label) ||
      a.deviceId.localeCompare(b.deviceId)
  );
}

/** One worker in words: `4 threads, 2.0 GiB` (and its non-empty resources). */
export function describeWorker(worker: IClusterWorker): string {
  const parts: string[] = [];
  if (typeof worker.nthreads === 'number') {
    parts.push(`${worker.nthreads} thread${worker.nthreads === 1 ? '' : 's'}`);
  }
  if (typeof worker.memory_limit === 'number' && worker.memory_limit > 0) {
    parts.push(formatBytes(worker.memory_limit));
  }
  for (const [key, value] of Object.entries(worker.resources ?? {})) {
    if (typeof value === 'number' || typeof value === 'string') {
      parts.push(`${key} ${value}`);
    }
  }
  return parts.join(', ');
}

/** The URL if it is http(s) (absolute or relative to the page), else null: never `javascript:`. */
export function safeLink(url: string | null | undefined, base = 'http://localhost/'): string | null {
  if (typeof url !== 'string' || !url.trim()) {
    return null;
  }
  try {
    const parsed = new URL(url, base);
    return parsed.protocol === 'http:' || parsed.protocol === 'https:' ? url : null;
  } catch {
    return null;
  }
}

/** A served main device's state in words. */
export function describeServedState(state: string): string {
  return state.replace(/-/g, ' ');
}

/** States a job does not leave any more. */
export const JOB_ENDED_STATES: readonly JobState[] = ['finished', 'failed', 'cancelled', 'lost'];

/** True once the job finished, failed, was cancelled or lost (it can be removed then). */
export function jobEnded(job: Pick<IJob, 'state'>): boolean {
  return JOB_ENDED_STATES.includes(job.state);
}

/** True while a cancel can still be asked for (not ended, not asked already). */
export function jobCancellable(job: Pick<IJob, 'state' | 'cancel_requested'>): boolean {
  return !jobEnded(job) && job.state !== 'cancelling' && !job.cancel_requested;
}

/** Jobs newest first (the server's order; kept stable by ID). */
export function sortJobs(jobs: readonly IJob[]): IJob[] {
  return [...jobs].sort((a, b) => b.created_at - a.created_at || a.id.localeCompare(b.id));
}

/** A job's state in words. */
export function describeJobState(state: string): string {
  return state === 'lost' ? 'lost (stopped reporting)' : state;
}

/** Who runs the job: `kernel 1234 on host`. */
export function describeOwner(owner: Partial<IJobOwner> | null | undefined): string {
  if (!owner || typeof owner.kind !== 'string') {
    return '';
  }
  const pid = isFiniteNumber(owner.pid) ? ` ${owner.pid}` : '';
  const host = typeof owner.host === 'string' && owner.host ? ` on ${owner.host}` : '';
  return `${owner.kind}${pid}${host}`;
}

/**
 * How far the job is, 0..1: the reported fraction, else step / total; null when unknown (the bar
 * is then indeterminate).
 */
export function jobFraction(progress: Partial<IJobProgress> | null | undefined): number | null {
  if (!progress) {
    return null;
  }
  if (isFiniteNumber(progress.fraction)) {
    return clamp01(progress.fraction);
  }
  if (isFiniteNumber(progress.step) && isFiniteNumber(progress.total) && progress.total > 0) {
    return clamp01(progress.step / progress.total);
  }
  return null;
}

/** The progress bar's text: `step 30 / 100 · 30%`, `step 30`, `30%` or ''. */
export function describeJobProgress(progress: Partial<IJobProgress> | null | undefined): string {
  if (!progress) {
    return '';
  }
  const parts: string[] = [];
  if (isFiniteNumber(progress.step)) {
    parts.push(
      isFiniteNumber(progress.total) && progress.total > 0
        ? `step ${progress.step} / ${progress.total}`
        : `step ${progress.step}`
    );
  }
  const fraction = jobFraction(progress);
  if (fraction !== null) {
    parts.push(`${Math.floor(fraction * 100)}%`);
  }
  return parts.join(' · ');
}

/**
 * The `points` of a sparkline polyline through `values` in a `width` x `height` box (`pad` from
 * the edges; higher values are higher up). Only finite numbers are used, so the attribute is
 * always numbers, commas and spaces. One point or a flat series gives a flat line in the middle;
 * no points gives ''.
 */
export function sparklinePoints(
  values: readonly unknown[] | null | undefined,
  width: number,
  height: number,
  pad = 1
): string {
  const ys = (Array.isArray(values) ? values : []).filter(isFiniteNumber);
  if (ys.length === 0 || !(width > 0) || !(height > 0)) {
    return '';
  }
  const round = (v: number) => String(Math.round(v * 100) / 100);
  const innerW = Math.max(0, width - 2 * pad);
  const innerH = Math.max(0, height - 2 * pad);
  const min = Math.min(...ys);
  const max = Math.max(...ys);
  if (ys.length === 1 || max === min) {
    const y = round(height / 2);
    return `${round(pad)},${y} ${round(pad + innerW)},${y}`;
  }
  const step = innerW / (ys.length - 1);
  return ys
    .map((v, i) => `${round(pad + i * step)},${round(pad + ((max - v) / (max - min)) * innerH)}`)
    .join(' ');
}

/** True when the workload can be run (it loaded on the server). */
export function workloadRunnable(workload: Pick<IWorkload, 'error'>): boolean {
  return workload.error === null || workload.error === undefined;
}

/**
 * The workload to select: `current` while it is still listed and runnable, else the first
 * runnable one; null when none can run.
 */
export function pickWorkload(
  workloads: readonly IWorkload[],
  current: string | null | undefined
): IWorkload | null {
  const runnable = workloads.filter(workloadRunnable);
  return runnable.find(w => w.name === current) ?? runnable[0] ?? null;
}

/** The workload's parameters that have a `default`, with it (in the schema's order). */
export function defaultParams(
  workload: Pick<IWorkload, 'parameters'> | null | undefined
): { [name: string]: unknown } {
  const properties = workload?.parameters?.properties;
  const params: { [name: string]: unknown } = {};
  if (!isObject(properties)) {
    return params;
  }
  for (const [name, schema] of Object.entries(properties)) {
    if (isObject(schema) && Object.prototype.hasOwnProperty.call(schema, 'default')) {
      params[name] = schema['default'];
    }
  }
  return params;
}

/** The parameters text the form starts with: the defaults as a pretty-printed JSON object. */
export function defaultParamsText(workload: Pick<IWorkload, 'parameters'> | null | undefined): string {
  return JSON.stringify(defaultParams(workload), null, 2);
}

/**
 * One line per parameter for the form's hint: `samples: integer, ≥ 1000 (default 1000000)`,
 * `model: Python object as package.module:attribute — the network`.
 */
export function describeWorkloadParams(
  workload: Pick<IWorkload, 'parameters'> | null | undefined
): string[] {
  const properties = workload?.parameters?.properties;
  if (!isObject(properties)) {
    return [];
  }
  const required = Array.isArray(workload?.parameters?.required) ? workload.parameters.required : [];
  const lines: string[] = [];
  for (const [name, schema] of Object.entries(properties)) {
    if (!isObject(schema)) {
      continue;
    }
    const parts: string[] = [];
    if (schema['x-python'] === true) {
      parts.push('Python object as package.module:attribute');
    } else if (typeof schema.type === 'string' || Array.isArray(schema.type)) {
      parts.push(Array.isArray(schema.type) ? schema.type.join(' | ') : schema.type);
    }
    if (isFiniteNumber(schema.minimum)) {
      parts.push(`≥ ${schema.minimum}`);
    }
    if (isFiniteNumber(schema.maximum)) {
      parts.push(`≤ ${schema.maximum}`);
    }
    if (Array.isArray(schema.enum)) {
      parts.push(`one of ${schema.enum.map(v => JSON.stringify(v)).join(', ')}`);
    }
    if (required.includes(name)) {
      parts.push('required');
    }
    let line = parts.length > 0 ? `${name}: ${parts.join(', ')}` : name;
    if (Object.prototype.hasOwnProperty.call(schema, 'default')) {
      line += ` (default ${JSON.stringify(schema['default'])})`;
    }
    if (typeof schema.description === 'string' && schema.description) {
      line += ` — ${schema.description}`;
    }
    lines.push(line);
  }
  return lines;
}

/** The run form's request body, or why it cannot be sent (then no request is made). */
export type RunBodyResult = { body: IWorkloadRunBody; error?: undefined } | { body?: undefined; error: string };

/**
 * Build `POST workloads/{name}/run`'s body from the form: the parameters text must be a JSON
 * object (blank means `{}`); the job name and the scheduler address are trimmed and left out
 * when blank (the server then names the job and uses this device's cluster).
 */
export function buildRunBody(
  paramsText: string,
  name: string | null | undefined = '',
  scheduler: string | null | undefined = ''
): RunBodyResult {
  let params: unknown = {};
  if (paramsText.trim()) {
    try {
      params = JSON.parse(paramsText);
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      return { error: `Parameters are not valid JSON: ${why}` };
    }
  }
  if (!isObject(params)) {
    return { error: 'Parameters must be a JSON object, e.g. {"samples": 100000}' };
  }
  const body: IWorkloadRunBody = { params };
  const jobName = (name ?? '').trim();
  if (jobName) {
    body.name = jobName;
  }
  const address = (scheduler ?? '').trim();
  if (address) {
    body.scheduler = address;
  }
  return { body };
}

/* ------------------------------------------------------------------ formatting */

/** A duration or ETA in seconds: `45s`, `1m 05s`, `2h 03m`, `1d 04h`; '' when unknown. */
export function formatEta(seconds: number | null | undefined): string {
  if (!isFiniteNumber(seconds) || seconds < 0) {
    return '';
  }
  const total = Math.round(seconds);
  const pad = (n: number) => String(n).padStart(2, '0');
  if (total < 60) {
    return `${total}s`;
  }
  if (total < 3600) {
    return `${Math.floor(total / 60)}m ${pad(total % 60)}s`;
  }
  if (total < 86400) {
    return `${Math.floor(total / 3600)}h ${pad(Math.floor((total % 3600) / 60))}m`;
  }
  return `${Math.floor(total / 86400)}d ${pad(Math.floor((total % 86400) / 3600))}h`;
}

/** Throughput: `0.52 samples/s`, `12.3 samples/s`, `845 samples/s`, `1.2k samples/s`; '' if unknown. */
export function formatRate(perSecond: number | null | undefined, unit = 'samples/s'): string {
  if (!isFiniteNumber(perSecond) || perSecond < 0) {
    return '';
  }
  let text: string;
  if (perSecond >= 1e6) {
    text = `${(perSecond / 1e6).toFixed(1)}M`;
  } else if (perSecond >= 1e4) {
    text = `${Math.round(perSecond / 1e3)}k`;
  } else if (perSecond >= 1e3) {
    text = `${(perSecond / 1e3).toFixed(1)}k`;
  } else if (perSecond >= 100) {
    text = String(Math.round(perSecond));
  } else if (perSecond >= 10) {
    text = perSecond.toFixed(1);
  } else {
    text = perSecond.toFixed(2);
  }
  return `${text} ${unit}`;
}

/** A loss value with 4 significant digits (exponent form when very large or small); '' if none. */
export function formatLoss(loss: number | null | undefined): string {
  if (!isFiniteNumber(loss)) {
    return '';
  }
  const abs = Math.abs(loss);
  if (abs !== 0 && (abs >= 1e4 || abs < 1e-3)) {
    return loss.toExponential(2);
  }
  return loss.toPrecision(4);
}

/** `123456` -> `123 456` (easier to read aloud); anything else is returned as is. */
export function formatCode(code: string | null | undefined): string {
  if (!code) {
    return '';
  }
  return /^\d{6}$/.test(code) ? `${code.slice(0, 3)} ${code.slice(3)}` : code;
}

/** Bytes as a short binary size: `16.0 GiB`. */
export function formatBytes(bytes: number | null | undefined): string {
  if (typeof bytes !== 'number' || !Number.isFinite(bytes) || bytes < 0) {
    return '?';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
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

/** Resource lines for the This device section. */
export function describeResources(profile: IProfile | null | undefined): {
  cores: string;
  memory: string;
  gpus: string[];
} {
  if (!profile) {
    return { cores: '?', memory: '?', gpus: [] };
  }
  const cores =
    profile.cpu_threads && profile.cpu_threads !== profile.cpu_cores
      ? `${profile.cpu_cores} cores, ${profile.cpu_threads} threads`
      : `${profile.cpu_cores} cores`;
  const memory = `${formatBytes(profile.memory_bytes)} (${formatBytes(
    profile.memory_available_bytes
  )} available)`;
  const acc = profile.accelerators;
  let gpus: string[];
  if (!acc) {
    gpus = ['not probed yet'];
  } else if (acc.error) {
    gpus = [`probe failed: ${acc.error}`];
  } else {
    gpus = (acc.cuda ?? []).map(
      g => `cuda:${g.index} ${g.name} (${formatBytes(g.memory_bytes)})`
    );
    if (acc.mps) {
      gpus.push('Apple MPS');
    }
    if (gpus.length === 0) {
      gpus = [acc.torch ? 'none (CPU only)' : 'none (torch not installed)'];
    }
  }
  return { cores, memory, gpus };
}

/** Role of a paired device, from this device's point of view. */
export function describeRole(role: DeviceRole): string {
  return role === 'worker' ? 'worker for this device' : 'main device (this device works for it)';
}

export function describePairedState(state: PairedState): string {
  switch (state) {
    case 'paired':
      return 'paired';
    case 'revoked':
      return 'revoked';
    case 'revoked_by_peer':
      return 'revoked by the other device';
  }
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

/* ------------------------------------------------------------------ polling */

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

/* ------------------------------------------------------------------ utils */

export function isObject(value: unknown): value is { [key: string]: unknown } {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function isFiniteNumber(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value);
}

function clamp01(value: number): number {
  return Math.min(1, Math.max(0, value));
}
