/** Numbers in words for the panel: durations, throughput, loss values and byte sizes. */

import { isFiniteNumber } from './guards';

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
