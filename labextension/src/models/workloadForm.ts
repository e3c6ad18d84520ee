/**
 * The "Run a workload" form's logic: which workloads can run and which is selected, the
 * parameters' defaults and hints from the workload's JSON Schema, and the request body built from
 * what the user typed (or why it cannot be sent). Pure functions (no DOM).
 */

import type { IWorkload, IWorkloadRunBody } from './apiTypes';
import { isFiniteNumber, isObject } from './guards';

/** True when the workload can be run (it loaded on the server). */
export function workloadRunnable(workload: Pick<IWorkload, 'error'>): boolean {
  return workload.error === null || workload.error === undefined;
}

/**
 * The workload to select: `current` while it is still listed and runnable, else the first
 * runnable one; null when none can run.
 */
export function pickWorkload(
  workloads: readonly IWorkload[],
  current: string | null | undefined
): IWorkload | null {
  const runnable = workloads.filter(workloadRunnable);
  return runnable.find(w => w.name === current) ?? runnable[0] ?? null;
}

/** The workload's parameters that have a `default`, with it (in the schema's order). */
export function defaultParams(
  workload: Pick<IWorkload, 'parameters'> | null | undefined
): { [name: string]: unknown } {
  const properties = workload?.parameters?.properties;
  const params: { [name: string]: unknown } = {};
  if (!isObject(properties)) {
    return params;
  }
  for (const [name, schema] of Object.entries(properties)) {
    if (isObject(schema) && Object.prototype.hasOwnProperty.call(schema, 'default')) {
      params[name] = schema['default'];
    }
  }
  return params;
}

/** The parameters text the form starts with: the defaults as a pretty-printed JSON object. */
export function defaultParamsText(workload: Pick<IWorkload, 'parameters'> | null | undefined): string {
  return JSON.stringify(defaultParams(workload), null, 2);
}

/**
 * One line per parameter for the form's hint: `samples: integer, ≥ 1000 (default 1000000)`,
 * `model: Python object as package.module:attribute — the network`.
 */
export function describeWorkloadParams(
  workload: Pick<IWorkload, 'parameters'> | null | undefined
): string[] {
  const properties = workload?.parameters?.properties;
  if (!isObject(properties)) {
    return [];
  }
  const required = Array.isArray(workload?.parameters?.required) ? workload.parameters.required : [];
  const lines: string[] = [];
  for (const [name, schema] of Object.entries(properties)) {
    if (!isObject(schema)) {
      continue;
    }
    const parts: string[] = [];
    if (schema['x-python'] === true) {
      parts.push('Python object as package.module:attribute');
    } else if (typeof schema.type === 'string' || Array.isArray(schema.type)) {
      parts.push(Array.isArray(schema.type) ? schema.type.join(' | ') : schema.type);
    }
    if (isFiniteNumber(schema.minimum)) {
      parts.push(`≥ ${schema.minimum}`);
    }
    if (isFiniteNumber(schema.maximum)) {
      parts.push(`≤ ${schema.maximum}`);
    }
    if (Array.isArray(schema.enum)) {
      parts.push(`one of ${schema.enum.map(v => JSON.stringify(v)).join(', ')}`);
    }
    if (required.includes(name)) {
      parts.push('required');
    }
    let line = parts.length > 0 ? `${name}: ${parts.join(', ')}` : name;
    if (Object.prototype.hasOwnProperty.call(schema, 'default')) {
      line += ` (default ${JSON.stringify(schema['default'])})`;
    }
    if (typeof schema.description === 'string' && schema.description) {
      line += ` — ${schema.description}`;
    }
    lines.push(line);
  }
  return lines;
}

/** The run form's request body, or why it cannot be sent (then no request is made). */
export type RunBodyResult = { body: IWorkloadRunBody; error?: undefined } | { body?: undefined; error: string };

/**
 * Build `POST workloads/{name}/run`'s body from the form: the parameters text must be a JSON
 * object (blank means `{}`); the job name and the scheduler address are trimmed and left out
 * when blank (the server then names the job and uses this device's cluster).
 */
export function buildRunBody(
  paramsText: string,
  name: string | null | undefined = '',
  scheduler: string | null | undefined = ''
): RunBodyResult {
  let params: unknown = {};
  if (paramsText.trim()) {
    try {
      params = JSON.parse(paramsText);
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      return { error: `Parameters are not valid JSON: ${why}` };
    }
  }
  if (!isObject(params)) {
    return { error: 'Parameters must be a JSON object, e.g. {"samples": 100000}' };
  }
  const body: IWorkloadRunBody = { params };
  const jobName = (name ?? '').trim();
  if (jobName) {
    body.name = jobName;
  }
  const address = (scheduler ?? '').trim();
  if (address) {
    body.scheduler = address;
  }
  return { body };
}
