/**
 * This device's cluster as the panel shows it: workers grouped by device, a worker in words,
 * the served main devices' states and the dashboard link (http(s) only). Pure functions (no DOM).
 */

import type { IClusterWorker } from './apiTypes';
import { deviceLabel } from './deviceViews';
import { formatBytes } from './format';

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
      // The panel's own lists name the device first; the server's name covers the rest.
      const known = names.has(id) || typeof w.device_name !== 'string' || !w.device_name;
      const label = known ? deviceLabel(id, names) : (w.device_name as string);
      group = { deviceId: id, label, isSelf: id === selfId || w.this_device === true, workers: [] };
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

/**
 * The workers of one device as the panel lists them: `laptop-2` for its only worker, `laptop-2
 * (worker 1)`, `laptop-2 (worker 2)` for several. Never a worker's address.
 */
export function workerLabels(label: string, count: number): string[] {
  return Array.from({ length: count }, (_, i) => (count === 1 ? label : `${label} (worker ${i + 1})`));
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
  return state === 'refused' ? 'refused by the main device' : state.replace(/-/g, ' ');
}

/** States of a join the user may ask to try again now. */
export function joinRetryable(state: string): boolean {
  return state === 'refused' || state === 'failed' || state === 'waiting-for-scheduler';
}
