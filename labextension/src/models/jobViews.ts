/**
 * Jobs as the panel shows them: ended or cancellable, order, state and owner in words, the
 * progress bar's fraction and text, and the loss sparkline's points. Pure functions (no DOM).
 */

import type { IJob, IJobOutputLine, IJobOwner, IJobProgress, JobState } from './apiTypes';
import { isFiniteNumber, isObject } from './guards';

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

/** A job's state in words (`restarting`: what `recovering` was called before). */
export function describeJobState(state: string): string {
  if (state === 'lost') {
    return 'lost (stopped reporting)';
  }
  if (state === 'recovering' || state === 'restarting') {
    return 'recovering (lost a device, re-forming)';
  }
  return state;
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
 * Where a running job's ranks are, by device name (`devices` of its progress: one entry per
 * rank), e.g. `laptop, desktop ×2`; the worker count when the job reports no names.
 */
export function jobWorkersText(progress: Partial<IJobProgress> | null | undefined): string {
  const devices = progress?.devices;
  if (Array.isArray(devices) && devices.length > 0) {
    // one entry per rank: a device with several ranks is named once, with its count
    const counts = new Map<string, number>();
    for (const name of devices) {
      counts.set(name, (counts.get(name) ?? 0) + 1);
    }
    return [...counts].map(([name, n]) => (n > 1 ? `${name} ×${n}` : name)).join(', ');
  }
  const workers = progress?.workers;
  return isFiniteNumber(workers) ? String(workers) : '';
}

/**
 * The job's speed as the CLI and the notebook write it (`text.rate` in parallalx_jupyter/text.py):
 * `1,234 samples/s`, `0.52 samples/s`; '' when unknown. The number is the job's own, smoothed once
 * where it runs (`jobs/speed.py`) and stored by the server: every surface shows that same number,
 * so nothing here recomputes a rate.
 */
export function jobSpeedText(progress: Partial<IJobProgress> | null | undefined): string {
  const perSecond = progress?.samples_per_s;
  if (!isFiniteNumber(perSecond) || perSecond < 0) {
    return '';
  }
  const text =
    perSecond < 10 ? perSecond.toFixed(2) : Math.floor(perSecond + 0.5).toLocaleString('en-US');
  return `${text} samples/s`;
}

/**
 * The job's ETA as the CLI and the notebook write it (`text.eta`): `42s`, `3m 05s`, `2h 03m`; ''
 * when unknown. The job's own smoothed ETA (see `jobSpeedText`), not recomputed here.
 */
export function jobEtaText(progress: Partial<IJobProgress> | null | undefined): string {
  const seconds = progress?.eta_s;
  if (!isFiniteNumber(seconds) || seconds < 0) {
    return '';
  }
  const s = Math.floor(seconds);
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s >= 3600) {
    return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  }
  return s >= 60 ? `${Math.floor(s / 60)}m ${pad(s % 60)}s` : `${s}s`;
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

/**
 * The lines of a job's `output` the panel can show: entries that are objects with a string
 * `line` (anything else from the server is skipped); a missing or malformed `output` gives [].
 */
export function jobOutputLines(output: unknown): IJobOutputLine[] {
  if (!Array.isArray(output)) {
    return [];
  }
  const lines: IJobOutputLine[] = [];
  for (const entry of output) {
    if (!isObject(entry) || typeof entry.line !== 'string') {
      continue;
    }
    lines.push({
      rank: isFiniteNumber(entry.rank) ? entry.rank : NaN,
      device: typeof entry.device === 'string' ? entry.device : '',
      stream: entry.stream === 'stderr' ? 'stderr' : 'stdout',
      line: entry.line
    });
  }
  return lines;
}

/**
 * One output line as the panel shows it: `[rank 1 bravo] epoch 2 loss 0.31`, `[rank 0] hello`
 * without a device name, `[rank ?]` when the rank is unknown. The line's own end of line is
 * dropped (the panel puts each line on its own).
 */
export function formatOutputLine(line: Pick<IJobOutputLine, 'rank' | 'device' | 'line'>): string {
  const rank = isFiniteNumber(line.rank) ? String(line.rank) : '?';
  const device = typeof line.device === 'string' ? line.device.trim() : '';
  const text = typeof line.line === 'string' ? line.line.replace(/\r?\n$/, '') : '';
  return `[rank ${rank}${device ? ` ${device}` : ''}] ${text}`;
}

function clamp01(value: number): number {
  return Math.min(1, Math.max(0, value));
}
