/**
 * Typed models of the parallalx REST API JSON (see parallalx_jupyter/openapi.json): what the
 * server answers and the bodies the panel sends. Types only, no code.
 *
 * Every string that comes from a peer (names, purpose, URLs) is untrusted text: the widgets put
 * it into the page with `textContent` only.
 */

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
  /** the peer is paired already (another request): accepting renews that pairing */
  already_paired?: boolean;
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
/**
 * `GET nearby`: a device announcing itself on the local network (mDNS). Unverified: where to
 * send an invitation, never whom to trust (the verification code is the check).
 */
export interface INearbyDevice {
  id: string;
  id_display: string;
  name: string;
  addresses: string[];
  port: number;
  /** Peer URLs to invite, one per address. */
  urls: string[];
  last_seen: number;
  /** A device with this ID is paired here. */
  paired: boolean;
}

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
  /** The device's name (this device's own, or the paired device's). */
  device_name?: string | null;
  /** The worker is this device's own (it trains too). */
  this_device?: boolean;
}

/** A main device this device runs a worker for. */
export interface IServedMain {
  main_id: string;
  /** requesting-certificate, preparing-environment, starting-worker, waiting-for-scheduler, running, refused, failed */
  state: string;
  message?: string | null;
  /** the main device's name as it was paired */
  main_name?: string | null;
  /** a refused worker joins again then (unix seconds); Retry does it now */
  next_retry_at?: number | null;
  scheduler?: string;
  process?: string | null;
}

/** A worker registration this scheduler refused. */
export interface IRefusedJoin {
  device_id: string;
  device_name?: string | null;
  reason: string;
  at: number;
}

/** `GET cluster` (and the result of the cluster actions). */
export interface IClusterState {
  running: boolean;
  scheduler_address: string | null;
  dashboard_link: string | null;
  ca_fingerprint: string | null;
  workers: IClusterWorker[];
  serving: IServedMain[];
  /** Devices whose last worker registration this scheduler refused, and why. */
  refused_joins?: IRefusedJoin[];
  /** How this device's own worker's start went (main_id: this device); null when it has none. */
  own_worker?: IServedMain | null;
}

/** `POST cluster/add-self` body. */
export interface IAddSelfBody {
  nthreads?: number;
}

export type ClusterAction = 'start' | 'stop' | 'add-self' | 'retry';

export type JobState =
  | 'pending'
  | 'running'
  /** A device was lost; the job re-forms with the others (`progress.message` says which). */
  | 'recovering'
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
  /** the ranks' devices by name, one entry per rank */
  devices?: string[] | null;
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
  /**
   * What the job's ranks printed, oldest first (at most the last 500 lines). Only in `GET
   * jobs/{id}`: the list leaves it out.
   */
  output?: IJobOutputLine[];
}

/** One line a rank of a job printed (`output` of `GET jobs/{id}`). */
export interface IJobOutputLine {
  rank: number;
  /** The rank's device by name; '' when unknown. Untrusted text. */
  device: string;
  stream: 'stdout' | 'stderr';
  /** Untrusted text. */
  line: string;
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
