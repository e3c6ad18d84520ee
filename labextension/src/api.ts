/**
 * The one module that talks to the parallalx REST API (`<baseUrl>/parallalx/api/`).
 *
 * Every call goes through `ServerConnection.makeRequest`, so the token/cookie, the XSRF header
 * and the page's `base_url` prefix are handled by JupyterLab exactly as for its own services.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import type {
  IAcceptBody,
  IAddSelfBody,
  IClusterState,
  IDevice,
  IInvitationBody,
  IJob,
  IKernelChoice,
  INearbyDevice,
  IPairedDevice,
  IRejectBody,
  IRequest,
  IWorkload,
  IWorkloadRunBody,
  RequestDirection
} from './models/apiTypes';
import { parseKernelChoices } from './models/requestViews';

/** URL namespace of the parallalx server extension. */
export const API_NAMESPACE = ['parallalx', 'api'];

/** The URL of an API endpoint under the connection's base URL. */
export function apiUrl(
  settings: Pick<ServerConnection.ISettings, 'baseUrl'>,
  endpoint: string,
  query?: { [key: string]: string | undefined }
): string {
  let url = URLExt.join(settings.baseUrl, ...API_NAMESPACE, endpoint);
  const params = Object.entries(query ?? {}).filter(
    (entry): entry is [string, string] => typeof entry[1] === 'string'
  );
  if (params.length > 0) {
    url += URLExt.objectToQueryString(Object.fromEntries(params));
  }
  return url;
}

/** An ID as one URL path segment. */
function seg(id: string): string {
  return encodeURIComponent(id);
}

/** A failed API call: the server's `{"error": ...}` message and the HTTP status. */
export class APIError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
    this.name = 'APIError';
  }
}

/** Listener for the server's clock, read from each response's `Date` header. */
export type ClockListener = (serverNowMs: number, localNowMs: number) => void;

/**
 * Call the parallalx server extension REST API.
 *
 * @param endpoint - path below `<baseUrl>/parallalx/api/`, e.g. `device`
 * @param init - fetch options (method, body, ...)
 * @param settings - server connection settings (defaults to the page settings)
 * @param onClock - gets the server's clock from the `Date` header, if there is one
 * @returns the decoded JSON body
 * @throws APIError carrying the server's `{"error": ...}` message when the server refuses;
 *   ServerConnection.NetworkError when it cannot be reached
 */
export async function requestAPI<T>(
  endpoint = '',
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings(),
  onClock?: ClockListener,
  query?: { [key: string]: string | undefined }
): Promise<T> {
  const url = apiUrl(settings, endpoint, query);
  if (init.body !== undefined) {
    init = {
      ...init,
      headers: { 'Content-Type': 'application/json', ...(init.headers ?? {}) }
    };
  }

  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }

  const date = response.headers?.get?.('Date');
  if (onClock && date) {
    const serverMs = Date.parse(date);
    if (Number.isFinite(serverMs)) {
      onClock(serverMs, Date.now());
    }
  }

  const text = await response.text();
  let data: unknown = undefined;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      if (response.ok) {
        throw new APIError(`Invalid JSON from ${url}`, response.status);
      }
    }
  }

  if (!response.ok) {
    const serverMessage =
      data !== null &&
      typeof data === 'object' &&
      typeof (data as { error?: unknown }).error === 'string'
        ? (data as { error: string }).error
        : '';
    const message =
      serverMessage ||
      `${response.status} ${response.statusText || 'request failed'}`.trim();
    throw new APIError(message, response.status);
  }

  return data as T;
}

/** Typed client of the parallalx REST API, bound to one server connection. */
export class ParallalxAPI {
  constructor(settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {
    this.serverSettings = settings;
  }

  readonly serverSettings: ServerConnection.ISettings;

  /**
   * Estimated server clock minus local clock, in ms (0 until a response with a `Date` header
   * was seen, and while the difference is within the header's 1 s resolution). Countdowns use
   * it so that a browser on another machine with a skewed clock still counts down correctly.
   */
  get clockOffsetMs(): number {
    return this._clockOffsetMs;
  }

  /** The server's current time in unix seconds. */
  serverNow(localNowMs = Date.now()): number {
    return (localNowMs + this._clockOffsetMs) / 1000;
  }

  private _call<T>(
    endpoint: string,
    init: RequestInit = {},
    query?: { [key: string]: string | undefined }
  ): Promise<T> {
    return requestAPI<T>(endpoint, init, this.serverSettings, this._onClock, query);
  }

  private _post<T>(endpoint: string, body: object = {}): Promise<T> {
    return this._call<T>(endpoint, { method: 'POST', body: JSON.stringify(body) });
  }

  /** This device. `refresh` re-runs the accelerator probe (slow). */
  getDevice(refresh = false): Promise<IDevice> {
    return this._call<IDevice>('device', { method: 'GET' }, refresh ? { refresh: 'true' } : {});
  }

  /** Requests; by default the open (pending) ones in both directions. */
  listRequests(
    options: { direction?: RequestDirection; state?: string } = {}
  ): Promise<IRequest[]> {
    return this._call<IRequest[]>('requests', { method: 'GET' }, {
      direction: options.direction,
      state: options.state
    });
  }

  getRequest(id: string): Promise<IRequest> {
    return this._call<IRequest>(`requests/${seg(id)}`, { method: 'GET' });
  }

  accept(id: string, body: IAcceptBody = {}): Promise<IRequest> {
    return this._post<IRequest>(`requests/${seg(id)}/accept`, body);
  }

  reject(id: string, body: IRejectBody = {}): Promise<IRequest> {
    return this._post<IRequest>(`requests/${seg(id)}/reject`, body);
  }

  listDevices(): Promise<IPairedDevice[]> {
    return this._call<IPairedDevice[]>('devices', { method: 'GET' });
  }

  revoke(id: string): Promise<IPairedDevice> {
    return this._post<IPairedDevice>(`devices/${seg(id)}/revoke`);
  }

  /** Send a connection request to a peer listener; resolves to the outgoing request (with code). */
  invite(body: IInvitationBody): Promise<IRequest> {
    return this._post<IRequest>('invitations', body);
  }

  /** Devices announcing themselves on the local network (unverified), this one excluded. */
  listNearby(): Promise<INearbyDevice[]> {
    return this._call<INearbyDevice[]>('nearby', { method: 'GET' });
  }

  /** This device's scheduler and workers, and the main devices it serves. */
  getCluster(): Promise<IClusterState> {
    return this._call<IClusterState>('cluster', { method: 'GET' });
  }

  /** Start this device's scheduler (idempotent). */
  startCluster(): Promise<IClusterState> {
    return this._post<IClusterState>('cluster/start');
  }

  /** Stop this device's scheduler and its own worker (idempotent). */
  stopCluster(): Promise<IClusterState> {
    return this._post<IClusterState>('cluster/stop');
  }

  /** Start the scheduler if needed and contribute a worker of this device. */
  addSelfToCluster(body: IAddSelfBody = {}): Promise<IClusterState> {
    return this._post<IClusterState>('cluster/add-self', body);
  }

  /** Join the main device `mainId` again now (a refused or failed join). */
  retryJoin(mainId: string): Promise<IClusterState> {
    return this._post<IClusterState>(`cluster/serving/${seg(mainId)}/retry`);
  }

  /** Jobs on this device (running and the kept history), newest first. */
  listJobs(): Promise<IJob[]> {
    return this._call<IJob[]>('jobs', { method: 'GET' });
  }

  getJob(id: string): Promise<IJob> {
    return this._call<IJob>(`jobs/${seg(id)}`, { method: 'GET' });
  }

  /** Ask the job's owner to stop it (the job becomes `cancelling`); 409 once it ended. */
  cancelJob(id: string): Promise<IJob> {
    return this._post<IJob>(`jobs/${seg(id)}/cancel`);
  }

  /** Remove an ended job from the history (409 while it still runs). */
  async deleteJob(id: string): Promise<void> {
    await this._call<unknown>(`jobs/${seg(id)}`, { method: 'DELETE' });
  }

  /** Workloads installed on the server (those that cannot be loaded carry their `error`). */
  listWorkloads(): Promise<IWorkload[]> {
    return this._call<IWorkload[]>('workloads', { method: 'GET' });
  }

  /**
   * Start a workload as a job of the server; resolves to the registered job (`pending`).
   * 404: unknown workload; 400: bad parameters (the server's one-line message).
   */
  runWorkload(name: string, body: IWorkloadRunBody): Promise<IJob> {
    return this._post<IJob>(`workloads/${seg(name)}/run`, body);
  }

  /**
   * HOOK for the kernel selector: kernels/environments a worker can run in. The server's kernels
   * API comes with a later issue; until then (404) this resolves to an empty list.
   */
  async listKernelChoices(): Promise<IKernelChoice[]> {
    try {
      return parseKernelChoices(await this._call<unknown>('kernels', { method: 'GET' }));
    } catch (error) {
      if (error instanceof APIError && error.status === 404) {
        return [];
      }
      throw error;
    }
  }

  private readonly _onClock: ClockListener = (serverMs, localMs) => {
    const offset = serverMs - localMs;
    // The Date header has 1 s resolution: ignore differences it cannot resolve.
    this._clockOffsetMs = Math.abs(offset) > 2000 ? offset : 0;
  };

  private _clockOffsetMs = 0;
}

/** Fetch this computer's identity from the server. */
export function getDevice(settings?: ServerConnection.ISettings): Promise<IDevice> {
  return new ParallalxAPI(settings).getDevice();
}
