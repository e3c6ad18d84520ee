/**
 * What the parts of the sidebar's state (cluster, jobs, workloads) share: the API they call and
 * the model around them, which they tell about changes and user actions.
 */
import type { ParallalxAPI } from '../api';

/** The part of ParallalxAPI the model uses (a fake in the unit tests). */
export type IModelAPI = Pick<
  ParallalxAPI,
  | 'getDevice'
  | 'listRequests'
  | 'getRequest'
  | 'listDevices'
  | 'accept'
  | 'reject'
  | 'revoke'
  | 'invite'
  | 'listNearby'
  | 'listKernelChoices'
  | 'serverNow'
  | 'getCluster'
  | 'startCluster'
  | 'stopCluster'
  | 'addSelfToCluster'
  | 'retryJoin'
  | 'listJobs'
  | 'getJob'
  | 'cancelJob'
  | 'deleteJob'
  | 'listWorkloads'
  | 'runWorkload'
>;

/** The model as its parts see it. */
export interface IModelHost {
  /** True once the model is disposed: answers that come in later are dropped. */
  readonly isDisposed: boolean;
  /** Emit the model's `changed` (the widgets re-render). */
  emitChanged(): void;
  /** A user action: the next poll comes at the base interval. */
  markActivity(): void;
  /** Refresh everything (coalesced with a refresh already running). */
  refresh(): void;
}

/** An error's one-line message. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
