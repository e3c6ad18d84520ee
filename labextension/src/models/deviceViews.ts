/**
 * This device and the paired devices as the panel shows them: order, names and labels by ID,
 * resources, roles and pairing states. Pure functions (no DOM).
 */

import type { DeviceRole, IDevice, IPairedDevice, IProfile, PairedState } from './apiTypes';
import { formatBytes } from './format';

/** Devices shown in the Devices section: current pairings first, then by name. */
export function sortDevices(devices: readonly IPairedDevice[]): IPairedDevice[] {
  const rank = (d: IPairedDevice) => (d.state === 'paired' ? 0 : 1);
  return [...devices].sort(
    (a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name) || a.id.localeCompare(b.id)
  );
}

/** A device ID shortened for display (the full ID goes into the title). */
export function shortId(id: string): string {
  return id.length > 12 ? `${id.slice(0, 12)}…` : id;
}

/** Known device names by ID: paired devices and this device. */
export function deviceNames(
  devices: readonly Pick<IPairedDevice, 'id' | 'name'>[],
  self: Pick<IDevice, 'id' | 'name'> | null
): Map<string, string> {
  const names = new Map<string, string>();
  for (const d of devices) {
    names.set(d.id, d.name);
  }
  if (self) {
    names.set(self.id, self.name);
  }
  return names;
}

/** The label of a device: its name when known, else its short ID. */
export function deviceLabel(id: string, names: ReadonlyMap<string, string>): string {
  return names.get(id) || shortId(id);
}

/** Resource lines for the This device section. */
export function describeResources(profile: IProfile | null | undefined): {
  cores: string;
  memory: string;
  gpus: string[];
} {
  if (!profile) {
    return { cores: '?', memory: '?', gpus: [] };
  }
  const cores =
    profile.cpu_threads && profile.cpu_threads !== profile.cpu_cores
      ? `${profile.cpu_cores} cores, ${profile.cpu_threads} threads`
      : `${profile.cpu_cores} cores`;
  const memory = `${formatBytes(profile.memory_bytes)} (${formatBytes(
    profile.memory_available_bytes
  )} available)`;
  const acc = profile.accelerators;
  let gpus: string[];
  if (!acc) {
    gpus = ['not probed yet'];
  } else if (acc.error) {
    gpus = [`probe failed: ${acc.error}`];
  } else {
    gpus = (acc.cuda ?? []).map(
      g => `cuda:${g.index} ${g.name} (${formatBytes(g.memory_bytes)})`
    );
    if (acc.mps) {
      gpus.push('Apple MPS');
    }
    if (gpus.length === 0) {
      gpus = [acc.torch ? 'none (CPU only)' : 'none (torch not installed)'];
    }
  }
  return { cores, memory, gpus };
}

/** Role of a paired device, from this device's point of view. */
export function describeRole(role: DeviceRole): string {
  return role === 'worker' ? 'worker for this device' : 'main device (this device works for it)';
}

export function describePairedState(state: PairedState): string {
  switch (state) {
    case 'paired':
      return 'paired';
    case 'revoked':
      return 'revoked';
    case 'revoked_by_peer':
      return 'revoked by the other device';
  }
}
