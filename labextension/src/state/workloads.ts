/**
 * The workloads installed on the server, in the sidebar's state: asked for when the run form
 * opens (not polled); a failure is kept apart from the last good list.
 */
import type { IWorkload } from '../models/apiTypes';
import { IModelAPI, IModelHost, errorMessage } from './host';

export class WorkloadsState {
  constructor(api: Pick<IModelAPI, 'listWorkloads'>, host: IModelHost) {
    this._api = api;
    this._host = host;
  }

  /** Workloads installed on the server; null until `load` got an answer. */
  get workloads(): readonly IWorkload[] | null {
    return this._workloads;
  }
  /** Why the workloads could not be read, or null. */
  get error(): string | null {
    return this._error;
  }

  /** Fetch the installed workloads; an older answer never replaces a newer one. */
  async load(): Promise<void> {
    const seq = ++this._seq;
    let workloads = this._workloads;
    let error: string | null = null;
    try {
      workloads = await this._api.listWorkloads();
    } catch (err) {
      error = errorMessage(err);
    }
    if (this._host.isDisposed || seq !== this._seq) {
      return;
    }
    if (error !== this._error || JSON.stringify(workloads) !== JSON.stringify(this._workloads)) {
      this._workloads = workloads;
      this._error = error;
      this._host.emitChanged();
    }
  }

  private readonly _api: Pick<IModelAPI, 'listWorkloads'>;
  private readonly _host: IModelHost;
  private _workloads: IWorkload[] | null = null;
  private _error: string | null = null;
  private _seq = 0;
}
