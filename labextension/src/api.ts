import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** URL namespace of the parallalx server extension. */
export const API_NAMESPACE = ['parallalx', 'api'];

/** Subset of `GET /parallalx/api/device` used by the sidebar. */
export interface IDeviceInfo {
  id: string;
  id_display: string;
  name: string;
  [key: string]: unknown;
}

/**
 * Call the parallalx server extension REST API.
 *
 * @param endpoint - path below `<baseUrl>/parallalx/api/`, e.g. `device`
 * @param init - fetch options (method, body, ...)
 * @param settings - server connection settings (defaults to the page settings)
 * @returns the decoded JSON body
 * @throws Error carrying the server's `{"error": ...}` message when the request fails
 */
export async function requestAPI<T>(
  endpoint = '',
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, ...API_NAMESPACE, endpoint);

  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }

  const text = await response.text();
  let data: unknown = undefined;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      if (response.ok) {
        throw new Error(`Invalid JSON from ${url}`);
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
    throw new ServerConnection.ResponseError(response, message);
  }

  return data as T;
}

/** Fetch this computer's identity from the server. */
export function getDevice(
  settings?: ServerConnection.ISettings
): Promise<IDeviceInfo> {
  return requestAPI<IDeviceInfo>('device', { method: 'GET' }, settings);
}
