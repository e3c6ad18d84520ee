/**
 * Our events on the server's event bus (`serviceManager.events.stream`): their schema IDs and
 * the parser that picks them out of everything else on the stream.
 */

import { isObject } from './guards';

/** Our event schema IDs are `${SCHEMA_PREFIX}<name>/v1`. */
export const SCHEMA_PREFIX = 'https://events.parallalx.dev/parallalx_jupyter/';

export const EVENT_NAMES = [
  'request-received',
  'request-decided',
  'device-added',
  'device-revoked',
  'cluster-state',
  'worker-state',
  'job-progress'
] as const;

export type ParallalxEventName = (typeof EVENT_NAMES)[number];

/** One of our events, as it comes out of `serviceManager.events.stream`. */
export interface IParallalxEvent {
  name: ParallalxEventName;
  version: string;
  /** The payload fields (IDs, names, states only). */
  payload: { [key: string]: unknown };
}

/**
 * Pick our events out of the server's event stream. Returns null for anything else (other
 * extensions' events, unknown versions of ours, malformed emissions).
 */
export function parseEvent(emission: unknown): IParallalxEvent | null {
  if (!isObject(emission)) {
    return null;
  }
  const schemaId = emission['schema_id'];
  if (typeof schemaId !== 'string' || !schemaId.startsWith(SCHEMA_PREFIX)) {
    return null;
  }
  const rest = schemaId.slice(SCHEMA_PREFIX.length);
  const match = /^([a-z-]+)\/v(\d+)$/.exec(rest);
  if (!match) {
    return null;
  }
  const name = match[1] as ParallalxEventName;
  if (!EVENT_NAMES.includes(name)) {
    return null;
  }
  const payload: { [key: string]: unknown } = {};
  for (const [key, value] of Object.entries(emission)) {
    if (key !== 'schema_id' && key !== 'version' && key !== '__timestamp__') {
      payload[key] = value;
    }
  }
  return { name, version: match[2], payload };
}
