/**
 * Devices nearby (`GET nearby`) in the sidebar's state: polled with the rest, never failing the
 * refresh (a server without discovery answers an empty list; an older one a 404, kept apart).
 */
import type { INearbyDevice } from '../models/apiTypes';
import { IModelAPI, errorMessage } from './host';

/** One GET nearby: the devices, or why they could not be read. */
export interface INearbyAnswer {
  devices: INearbyDevice[];
  error: string | null;
}

export class NearbyState {
  constructor(api: Pick<IModelAPI, 'listNearby'>) {
    this._api = api;
  }

  /** Devices heard on the local network, by name (the server's order). */
  get devices(): readonly INearbyDevice[] {
    return this._devices;
  }
  /** Why the list could not be read, or null. */
  get error(): string | null {
    return this._error;
  }

  /** GET nearby; never rejects. */
  fetch(): Promise<INearbyAnswer> {
    return this._api.listNearby().then(
      devices => ({ devices, error: null }),
      (error: unknown) => ({ devices: [], error: errorMessage(error) })
    );
  }

  /**
   * Take an answer; true when it changed what the panel shows. `last_seen` alone is no change:
   * it moves with every re-announcement and would keep the poll at its base rate.
   */
  apply(answer: INearbyAnswer): boolean {
    const shown = (devices: readonly INearbyDevice[]) =>
      JSON.stringify(devices.map(({ last_seen: _seen, ...rest }) => rest));
    if (answer.error === this._error && shown(answer.devices) === shown(this._devices)) {
      return false;
    }
    this._devices = answer.devices;
    this._error = answer.error;
    return true;
  }

  private readonly _api: Pick<IModelAPI, 'listNearby'>;
  private _devices: INearbyDevice[] = [];
  private _error: string | null = null;
}
