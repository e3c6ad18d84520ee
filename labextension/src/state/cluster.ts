/**
 * This device's cluster in the sidebar's state: the last `GET cluster` answer (or why it failed)
 * and the Start / Stop / Add this device actions, one at a time.
 */
import type { ClusterAction, IClusterState } from '../models/apiTypes';
import { IModelAPI, IModelHost, errorMessage } from './host';

/** After a cluster action, poll at the base rate this long (workers join without an event). */
const CLUSTER_SETTLE_MS = 30_000;

/** One GET cluster: the state, or why it could not be read. */
export interface IClusterAnswer {
  cluster: IClusterState | null;
  error: string | null;
}

export class ClusterState {
  constructor(
    api: Pick<
      IModelAPI,
      'getCluster' | 'startCluster' | 'stopCluster' | 'addSelfToCluster' | 'retryJoin'
    >,
    host: IModelHost
  ) {
    this._api = api;
    this._host = host;
  }

  /** This device's cluster state; null until loaded (or while the cluster API fails). */
  get cluster(): IClusterState | null {
    return this._cluster;
  }
  /** Why the cluster state could not be read (e.g. 503: no cluster on this server), or null. */
  get error(): string | null {
    return this._error;
  }
  /** The cluster action running now, or null. */
  get busy(): ClusterAction | null {
    return this._busy;
  }
  /** The last cluster action's error message, null when it worked. */
  get actionError(): string | null {
    return this._actionError;
  }
  /** True for a while after a cluster action (workers join without an event). */
  get settling(): boolean {
    return Date.now() < this._settleUntil;
  }

  /** GET cluster; never rejects (the cluster is optional: 503 where the server has none). */
  fetch(): Promise<IClusterAnswer> {
    return this._api.getCluster().then(
      cluster => ({ cluster, error: null }),
      (error: unknown) => ({ cluster: null, error: errorMessage(error) })
    );
  }

  /** Take a GET cluster answer; true when it changed what the panel shows. */
  apply(answer: IClusterAnswer): boolean {
    if (
      answer.error === this._error &&
      JSON.stringify(answer.cluster) === JSON.stringify(this._cluster)
    ) {
      return false;
    }
    this._cluster = answer.cluster;
    this._error = answer.error;
    return true;
  }

  /**
   * Start or stop this device's scheduler, or add a worker of this device (`nthreads` for
   * add-self only). One action at a time; the error, if any, is kept in `actionError`.
   */
  async run(action: ClusterAction, option?: number | string): Promise<IClusterState | null> {
    const host = this._host;
    if (this._busy !== null || host.isDisposed) {
      return null;
    }
    this._busy = action;
    this._actionError = null;
    host.markActivity();
    this._settleUntil = Date.now() + CLUSTER_SETTLE_MS;
    host.emitChanged();
    try {
      const result =
        action === 'start'
          ? await this._api.startCluster()
          : action === 'stop'
            ? await this._api.stopCluster()
            : action === 'retry'
              ? await this._api.retryJoin(String(option))
              : await this._api.addSelfToCluster(typeof option === 'number' ? { nthreads: option } : {});
      this._cluster = result;
      this._error = null;
      return result;
    } catch (error) {
      this._actionError = errorMessage(error);
      return null;
    } finally {
      this._busy = null;
      this._settleUntil = Date.now() + CLUSTER_SETTLE_MS;
      if (!host.isDisposed) {
        host.emitChanged();
        host.refresh();
      }
    }
  }

  private readonly _api: Pick<
    IModelAPI,
    'getCluster' | 'startCluster' | 'stopCluster' | 'addSelfToCluster' | 'retryJoin'
  >;
  private readonly _host: IModelHost;
  private _cluster: IClusterState | null = null;
  private _error: string | null = null;
  private _busy: ClusterAction | null = null;
  private _actionError: string | null = null;
  private _settleUntil = 0;
}
