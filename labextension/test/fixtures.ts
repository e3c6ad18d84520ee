import type { IDevice, IJob, IPairedDevice, IRequest, IWorkload } from '../src/models/apiTypes';

export function makeRequest(overrides: Partial<IRequest> = {}): IRequest {
  return {
    id: 'req-1',
    direction: 'incoming',
    kind: 'invite',
    state: 'pending',
    peer: {
      id: 'PEERID',
      id_display: 'PEERIDX-XXXXXXX',
      name: 'alice-laptop',
      url: 'https://127.0.0.1:8476'
    },
    asks: {
      purpose: 'train',
      nthreads: 2,
      memory_limit_gb: null,
      gpus: null,
      duration_hours: null
    },
    code: '123456',
    created_at: 1000,
    expires_at: 1600,
    decided_at: null,
    ...overrides
  };
}

export function makeDevice(overrides: Partial<IDevice> = {}): IDevice {
  return {
    id: 'SELFID',
    id_display: 'SELFIDX-XXXXXXX',
    name: 'main-desktop',
    peer_urls: ['https://127.0.0.1:8476'],
    version: '0.1.0',
    profile: {
      hostname: 'main',
      os: 'Linux',
      machine: 'x86_64',
      python: '3.11.7',
      cpu_cores: 8,
      cpu_threads: 16,
      memory_bytes: 32 * 1024 ** 3,
      memory_available_bytes: 20 * 1024 ** 3,
      accelerators: { torch: '2.13.0', cuda: [], mps: false },
      probed_at: 1000
    },
    ...overrides
  };
}

export function makePaired(overrides: Partial<IPairedDevice> = {}): IPairedDevice {
  return {
    id: 'PEERID',
    id_display: 'PEERIDX-XXXXXXX',
    name: 'alice-laptop',
    role: 'worker',
    state: 'paired',
    peer_url: 'https://127.0.0.1:8476',
    request_id: 'req-1',
    paired_at: 1000,
    updated_at: 1000,
    last_seen: null,
    grant: null,
    ...overrides
  };
}

export function makeJob(overrides: Partial<IJob> = {}): IJob {
  return {
    id: 'job-1',
    workload: 'train',
    name: 'digits MLP',
    state: 'running',
    owner: { kind: 'kernel', pid: 4242, host: 'main' },
    created_at: 1000,
    updated_at: 1010,
    finished_at: null,
    progress: {
      step: 30,
      total: 100,
      fraction: null,
      loss: 0.5,
      samples_per_s: 812.5,
      eta_s: 65,
      workers: 2,
      message: null
    },
    loss_history: [2.3, 1.1, 0.5],
    error: null,
    cancel_requested: false,
    ...overrides
  };
}

/** The docs' example workload `pi`, as GET workloads lists it. */
export function makeWorkload(overrides: Partial<IWorkload> = {}): IWorkload {
  return {
    id: 'pi',
    name: 'pi',
    description: 'Estimate pi by Monte Carlo sampling, chunks spread over the devices',
    parameters: {
      type: 'object',
      additionalProperties: false,
      properties: {
        samples: { type: 'integer', minimum: 1000, maximum: 10 ** 10, default: 1_000_000 },
        chunk: { type: 'integer', minimum: 100, default: 100_000, description: 'points per task' },
        seed: { type: 'integer', default: 0 }
      }
    },
    error: null,
    ...overrides
  };
}
