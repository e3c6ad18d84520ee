import { describe, expect, it } from 'vitest';

import {
  describeServedState,
  describeWorker,
  groupWorkers,
  joinRetryable,
  safeLink
} from '../src/models/clusterViews';
import {
  describeResources,
  deviceLabel,
  deviceNames,
  shortId,
  sortDevices
} from '../src/models/deviceViews';
import { SCHEMA_PREFIX, parseEvent } from '../src/models/events';
import { formatBytes, formatEta, formatLoss, formatRate } from '../src/models/format';
import {
  describeJobProgress,
  jobEtaText,
  jobSpeedText,
  jobWorkersText,
  describeJobState,
  describeOwner,
  formatOutputLine,
  jobCancellable,
  jobEnded,
  jobFraction,
  jobOutputLines,
  sortJobs,
  sparklinePoints
} from '../src/models/jobViews';
import {
  describeAsks,
  describeKind,
  formatCode,
  formatCountdown,
  newRequests,
  parseKernelChoices,
  pendingIncoming,
  pendingOutgoing
} from '../src/models/requestViews';
import {
  buildRunBody,
  defaultParams,
  defaultParamsText,
  describeWorkloadParams,
  pickWorkload,
  workloadRunnable
} from '../src/models/workloadForm';
import { maxPollDelay, nextPollDelay } from '../src/state/polling';
import { makeDevice, makeJob, makePaired, makeRequest, makeWorkload } from './fixtures';

describe('parseEvent', () => {
  it('keeps our events and strips the envelope', () => {
    const event = parseEvent({
      schema_id: `${SCHEMA_PREFIX}request-received/v1`,
      version: '1',
      request_id: 'r1',
      peer_name: '<img src=x>'
    });
    expect(event).toEqual({
      name: 'request-received',
      version: '1',
      payload: { request_id: 'r1', peer_name: '<img src=x>' }
    });
  });

  it('ignores other schemas, unknown names and junk', () => {
    expect(parseEvent({ schema_id: 'https://events.jupyter.org/jupyter_server/kernel_actions/v1' })).toBeNull();
    expect(parseEvent({ schema_id: `${SCHEMA_PREFIX}cluster-exploded/v1` })).toBeNull();
    expect(parseEvent({ schema_id: `${SCHEMA_PREFIX}request-received` })).toBeNull();
    expect(parseEvent({ schema_id: `${SCHEMA_PREFIX}../request-received/v1` })).toBeNull();
    expect(parseEvent(null)).toBeNull();
    expect(parseEvent('request-received')).toBeNull();
    expect(parseEvent([])).toBeNull();
  });

  it('knows all our event names, the cluster ones included', () => {
    for (const name of [
      'request-received',
      'request-decided',
      'device-added',
      'device-revoked',
      'cluster-state',
      'worker-state',
      'job-progress'
    ]) {
      expect(parseEvent({ schema_id: `${SCHEMA_PREFIX}${name}/v1` })?.name).toBe(name);
    }
  });
});

describe('request views', () => {
  const requests = [
    makeRequest({ id: 'a', expires_at: 900 }),
    makeRequest({ id: 'b', expires_at: 500 }),
    makeRequest({ id: 'c', state: 'accepted' }),
    makeRequest({ id: 'd', direction: 'outgoing', created_at: 1 }),
    makeRequest({ id: 'e', direction: 'outgoing', created_at: 2 }),
    makeRequest({ id: 'f', direction: 'outgoing', state: 'expired' })
  ];

  it('pending incoming, soonest expiry first', () => {
    expect(pendingIncoming(requests).map(r => r.id)).toEqual(['b', 'a']);
  });

  it('pending outgoing, newest first', () => {
    expect(pendingOutgoing(requests).map(r => r.id)).toEqual(['e', 'd']);
  });

  it('new requests are those not seen before', () => {
    expect(newRequests(new Set(['a', 'c']), requests).map(r => r.id)).toEqual(['b', 'd', 'e', 'f']);
  });

  it('sorts paired devices first, then by name', () => {
    const sorted = sortDevices([
      makePaired({ id: '1', name: 'zed', state: 'revoked' }),
      makePaired({ id: '2', name: 'bob' }),
      makePaired({ id: '3', name: 'amy' })
    ]);
    expect(sorted.map(d => d.id)).toEqual(['3', '2', '1']);
  });
});

describe('formatting', () => {
  it('formats codes in two groups', () => {
    expect(formatCode('012345')).toBe('012 345');
    expect(formatCode(null)).toBe('');
    expect(formatCode('12')).toBe('12');
  });

  it('formats bytes', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(16 * 1024 ** 3)).toBe('16.0 GiB');
    expect(formatBytes(-1)).toBe('?');
    expect(formatBytes(undefined)).toBe('?');
  });

  it('formats countdowns', () => {
    expect(formatCountdown(600)).toBe('10:00');
    expect(formatCountdown(59.2)).toBe('1:00');
    expect(formatCountdown(5)).toBe('0:05');
    expect(formatCountdown(3723)).toBe('1:02:03');
    expect(formatCountdown(0)).toBe('expired');
    expect(formatCountdown(-3)).toBe('expired');
    expect(formatCountdown(NaN)).toBe('expired');
  });

  it('describes asks and kinds', () => {
    expect(describeAsks({ nthreads: 1, memory_limit_gb: 2.5, gpus: 0, duration_hours: 3 })).toEqual([
      '1 CPU thread',
      '2.5 GB memory',
      '0 GPUs',
      'for 3 h'
    ]);
    expect(describeAsks(null)).toEqual([]);
    expect(describeKind({ kind: 'invite', direction: 'incoming' })).toMatch(/run training workers/);
    expect(describeKind({ kind: 'offer', direction: 'incoming' })).toMatch(/offers/);
  });

  it('describes resources from the profile', () => {
    const device = makeDevice();
    expect(describeResources(device.profile)).toEqual({
      cores: '8 cores, 16 threads',
      memory: '32.0 GiB (20.0 GiB available)',
      gpus: ['none (CPU only)']
    });
    const gpu = makeDevice({
      profile: {
        ...device.profile,
        accelerators: {
          torch: '2.13.0',
          cuda: [{ index: 0, name: 'H100', memory_bytes: 80 * 1024 ** 3 }],
          mps: false
        }
      }
    });
    expect(describeResources(gpu.profile).gpus).toEqual(['cuda:0 H100 (80.0 GiB)']);
    const unprobed = makeDevice({ profile: { ...device.profile, accelerators: null } });
    expect(describeResources(unprobed.profile).gpus).toEqual(['not probed yet']);
  });
});

describe('kernel choices hook', () => {
  it('keeps well-formed entries only', () => {
    expect(
      parseKernelChoices([
        { name: 'python3', display_name: 'Python 3', selectable: true, reason: null },
        { name: 'ir', display_name: 'R', selectable: false, reason: 'not Python' },
        { display_name: 'no name' },
        'junk'
      ])
    ).toEqual([
      { name: 'python3', display_name: 'Python 3', selectable: true },
      { name: 'ir', display_name: 'R', selectable: false, reason: 'not Python' }
    ]);
    expect(parseKernelChoices({ kernels: [{ name: 'k' }] })).toEqual([
      { name: 'k', display_name: 'k', selectable: true }
    ]);
    expect(parseKernelChoices(null)).toEqual([]);
  });
});

describe('poll back-off', () => {
  it('doubles while idle up to the cap and resets on change', () => {
    const base = 5000;
    const max = maxPollDelay(base);
    expect(max).toBe(60_000);
    let delay = base;
    const seen: number[] = [];
    for (let i = 0; i < 6; i++) {
      delay = nextPollDelay(delay, false, base, max);
      seen.push(delay);
    }
    expect(seen).toEqual([10_000, 20_000, 40_000, 60_000, 60_000, 60_000]);
    expect(nextPollDelay(delay, true, base, max)).toBe(base);
  });

  it('is off when the interval is 0 and never below the base', () => {
    expect(nextPollDelay(1000, false, 0, 0)).toBe(0);
    expect(maxPollDelay(0)).toBe(0);
    expect(maxPollDelay(120_000)).toBe(120_000);
    expect(nextPollDelay(0, false, 1000, maxPollDelay(1000))).toBe(1000);
  });
});

describe('cluster views', () => {
  const names = deviceNames(
    [makePaired({ id: 'PEER1', name: 'alice-laptop' }), makePaired({ id: 'PEER2', name: 'bob-box' })],
    makeDevice({ id: 'SELFID', name: 'main-desktop' })
  );

  it('names devices from the Devices data and this device, else a short ID', () => {
    expect(deviceLabel('PEER1', names)).toBe('alice-laptop');
    expect(deviceLabel('SELFID', names)).toBe('main-desktop');
    expect(deviceLabel('ABCDEFGHIJKLMNOPQRSTUVWXYZ', names)).toBe('ABCDEFGHIJKL…');
    expect(shortId('SHORT')).toBe('SHORT');
    expect(deviceNames([], null).size).toBe(0);
  });

  it('groups workers per device, this device first', () => {
    const groups = groupWorkers(
      [
        { device_id: 'PEER2', address: 'tls://b:1' },
        { device_id: 'PEER1', address: 'tls://a:1' },
        { device_id: 'SELFID', address: 'tls://s:1' },
        { device_id: 'PEER2', address: 'tls://b:2' },
        { device_id: 'UNKNOWNDEVICEID1234', address: 'tls://u:1' }
      ],
      names,
      'SELFID'
    );
    expect(groups.map(g => [g.label, g.isSelf, g.workers.length])).toEqual([
      ['main-desktop', true, 1],
      ['alice-laptop', false, 1],
      ['bob-box', false, 2],
      ['UNKNOWNDEVIC…', false, 1]
    ]);
    expect(groupWorkers([], names, 'SELFID')).toEqual([]);
  });

  it("takes the server's device name and this-device mark where the panel knows neither", () => {
    const groups = groupWorkers(
      [
        { device_id: 'NEWPEER', device_name: 'carol-pc', this_device: false },
        { device_id: 'OWNID', device_name: 'main-desktop', this_device: true },
        { device_id: 'PEER1', device_name: 'stale-name' }
      ],
      names,
      null
    );
    expect(groups.map(g => [g.label, g.isSelf])).toEqual([
      ['main-desktop', true],
      ['alice-laptop', false],
      ['carol-pc', false]
    ]);
  });

  it('describes a worker and a served state', () => {
    expect(
      describeWorker({ device_id: 'x', nthreads: 4, memory_limit: 2 * 1024 ** 3, resources: { GPU: 1 } })
    ).toBe('4 threads, 2.0 GiB, GPU 1');
    expect(describeWorker({ device_id: 'x', nthreads: 1, memory_limit: 0 })).toBe('1 thread');
    expect(describeWorker({ device_id: 'x' })).toBe('');
    expect(describeServedState('waiting-for-scheduler')).toBe('waiting for scheduler');
  });

  it('only links http(s) dashboards', () => {
    expect(safeLink('http://127.0.0.1:8787/status')).toBe('http://127.0.0.1:8787/status');
    expect(safeLink('/proxy/8787/status')).toBe('/proxy/8787/status');
    expect(safeLink('javascript:alert(1)')).toBeNull();
    expect(safeLink('  ')).toBeNull();
    expect(safeLink(null)).toBeNull();
  });
});

describe('jobs', () => {
  it('knows ended and cancellable jobs', () => {
    for (const state of ['finished', 'failed', 'cancelled', 'lost'] as const) {
      expect(jobEnded({ state })).toBe(true);
      expect(jobCancellable({ state, cancel_requested: false })).toBe(false);
    }
    for (const state of ['pending', 'running', 'recovering'] as const) {
      expect(jobEnded({ state })).toBe(false);
      expect(jobCancellable({ state, cancel_requested: false })).toBe(true);
      expect(jobCancellable({ state, cancel_requested: true })).toBe(false);
    }
    expect(jobEnded({ state: 'cancelling' })).toBe(false);
    expect(jobCancellable({ state: 'cancelling', cancel_requested: true })).toBe(false);
  });

  it('sorts newest first', () => {
    const jobs = [
      makeJob({ id: 'a', created_at: 1 }),
      makeJob({ id: 'c', created_at: 3 }),
      makeJob({ id: 'b', created_at: 3 })
    ];
    expect(sortJobs(jobs).map(j => j.id)).toEqual(['b', 'c', 'a']);
  });

  it('progress: the fraction, else step / total, clamped', () => {
    const p = makeJob().progress;
    expect(jobFraction(p)).toBeCloseTo(0.3);
    expect(jobFraction({ ...p, fraction: 0.75 })).toBe(0.75);
    expect(jobFraction({ ...p, fraction: 1.4 })).toBe(1);
    expect(jobFraction({ ...p, step: 150 })).toBe(1);
    expect(jobFraction({ ...p, total: 0 })).toBeNull();
    expect(jobFraction({ ...p, total: null })).toBeNull();
    expect(jobFraction({ step: 3, total: 4, fraction: NaN })).toBe(0.75);
    expect(jobFraction(null)).toBeNull();
    expect(describeJobProgress(p)).toBe('step 30 / 100 · 30%');
    expect(describeJobProgress({ step: 7, total: null })).toBe('step 7');
    expect(describeJobProgress({ fraction: 0.999 })).toBe('99%');
    expect(describeJobProgress({})).toBe('');
    expect(describeJobProgress(undefined)).toBe('');
  });

  it('describes state and owner', () => {
    expect(describeJobState('running')).toBe('running');
    expect(describeJobState('lost')).toBe('lost (stopped reporting)');
    expect(describeJobState('recovering')).toBe('recovering (lost a device, re-forming)');
    expect(describeOwner({ kind: 'kernel', pid: 4242, host: 'main' })).toBe('kernel 4242 on main');
    expect(describeOwner({ kind: 'cli', pid: 1, host: '' })).toBe('cli 1');
    expect(describeOwner(null)).toBe('');
  });
});

describe('sparkline', () => {
  it('scales into the box, higher values higher up', () => {
    expect(sparklinePoints([4, 2, 0], 100, 20, 0)).toBe('0,0 50,10 100,20');
    expect(sparklinePoints([0, 1], 10, 10, 1)).toBe('1,9 9,1');
    expect(sparklinePoints([1, 2, 3, 4], 30, 10, 0)).toBe('0,10 10,6.67 20,3.33 30,0');
  });

  it('keeps numbers only: attribute text is numbers, commas and spaces', () => {
    const hostile: unknown[] = [3, '1" onload="alert(1)', null, NaN, Infinity, { x: 1 }, 1];
    const points = sparklinePoints(hostile, 100, 20, 0);
    expect(points).toBe('0,0 100,20');
    expect(points).toMatch(/^[\d., -]*$/);
  });

  it('a single point or a flat series is a flat line in the middle; nothing gives ""', () => {
    expect(sparklinePoints([0.7], 100, 20, 2)).toBe('2,10 98,10');
    expect(sparklinePoints([1, 1, 1], 100, 20, 2)).toBe('2,10 98,10');
    expect(sparklinePoints([], 100, 20)).toBe('');
    expect(sparklinePoints(null, 100, 20)).toBe('');
    expect(sparklinePoints([1, 2], 0, 20)).toBe('');
  });

  it('handles 200 points', () => {
    const values = Array.from({ length: 200 }, (_, i) => Math.exp(-i / 50));
    const pairs = sparklinePoints(values, 120, 24, 2).split(' ');
    expect(pairs).toHaveLength(200);
    expect(pairs[0]).toBe('2,2');
    expect(pairs[199]).toBe('118,22');
  });
});

describe('job formatting', () => {
  it('formats ETAs and durations', () => {
    expect(formatEta(0)).toBe('0s');
    expect(formatEta(45.4)).toBe('45s');
    expect(formatEta(59.6)).toBe('1m 00s');
    expect(formatEta(65)).toBe('1m 05s');
    expect(formatEta(3599)).toBe('59m 59s');
    expect(formatEta(3600 + 180)).toBe('1h 03m');
    expect(formatEta(86400 + 4 * 3600 + 59)).toBe('1d 04h');
    expect(formatEta(null)).toBe('');
    expect(formatEta(-1)).toBe('');
    expect(formatEta(Infinity)).toBe('');
  });

  it('formats throughput', () => {
    expect(formatRate(0.5234)).toBe('0.52 samples/s');
    expect(formatRate(12.34)).toBe('12.3 samples/s');
    expect(formatRate(812.5)).toBe('813 samples/s');
    expect(formatRate(1234)).toBe('1.2k samples/s');
    expect(formatRate(56_789)).toBe('57k samples/s');
    expect(formatRate(2_500_000)).toBe('2.5M samples/s');
    expect(formatRate(3, 'steps/s')).toBe('3.00 steps/s');
    expect(formatRate(null)).toBe('');
    expect(formatRate(NaN)).toBe('');
  });

  it('formats losses', () => {
    expect(formatLoss(2.302585)).toBe('2.303');
    expect(formatLoss(0.5)).toBe('0.5000');
    expect(formatLoss(0)).toBe('0.000');
    expect(formatLoss(0.000123)).toBe('1.23e-4');
    expect(formatLoss(123456)).toBe('1.23e+5');
    expect(formatLoss(null)).toBe('');
    expect(formatLoss(NaN)).toBe('');
  });
});

describe('run a workload', () => {
  const broken = makeWorkload({ id: 'broken', name: 'broken', error: "ModuleNotFoundError: No module named 'torch'" });
  const model = makeWorkload({
    id: 'train',
    name: 'train',
    description: 'Train a model',
    parameters: {
      type: 'object',
      required: ['model'],
      properties: {
        model: { 'x-python': true, description: 'the network' },
        optimizer: { type: 'string', enum: ['sgd', 'adam'], default: 'adam' },
        lr: { type: ['number', 'null'], default: null },
        epochs: { type: 'integer', minimum: 1 }
      }
    }
  });

  it('defaults: the parameters that have one, in order, as pretty JSON', () => {
    expect(defaultParams(makeWorkload())).toEqual({ samples: 1_000_000, chunk: 100_000, seed: 0 });
    expect(Object.keys(defaultParams(makeWorkload()))).toEqual(['samples', 'chunk', 'seed']);
    expect(defaultParamsText(makeWorkload())).toBe(
      '{\n  "samples": 1000000,\n  "chunk": 100000,\n  "seed": 0\n}'
    );
    // a null default is a default; no default (model, epochs) is left out
    expect(defaultParams(model)).toEqual({ optimizer: 'adam', lr: null });
    expect(defaultParamsText(null)).toBe('{}');
    expect(defaultParams(makeWorkload({ parameters: {} }))).toEqual({});
    expect(defaultParams(makeWorkload({ parameters: { properties: [] as never } }))).toEqual({});
  });

  it('the default text is a valid request as it stands', () => {
    const built = buildRunBody(defaultParamsText(makeWorkload()));
    expect(built).toEqual({ body: { params: { samples: 1_000_000, chunk: 100_000, seed: 0 } } });
  });

  it('builds the body: params object, trimmed name and scheduler, blanks left out', () => {
    expect(buildRunBody('{"samples": 200000, "chunk": 20000}', '  my pi ', ' tcp://127.0.0.1:8786 ')).toEqual({
      body: {
        params: { samples: 200000, chunk: 20000 },
        name: 'my pi',
        scheduler: 'tcp://127.0.0.1:8786'
      }
    });
    expect(buildRunBody('{}', '', '   ')).toEqual({ body: { params: {} } });
    expect(buildRunBody('   ')).toEqual({ body: { params: {} } });
    expect(buildRunBody('{"model": "pkg.mod:Net"}', null, undefined)).toEqual({
      body: { params: { model: 'pkg.mod:Net' } }
    });
  });

  it('refuses what is not a JSON object, without a body', () => {
    const invalid = buildRunBody('{"samples": 200000,', 'x');
    expect(invalid.body).toBeUndefined();
    expect(invalid.error).toMatch(/^Parameters are not valid JSON: /);
    for (const text of ['[1]', '5', 'null', '"samples"']) {
      const built = buildRunBody(text);
      expect(built.body).toBeUndefined();
      expect(built.error).toMatch(/^Parameters must be a JSON object/);
    }
  });

  it('picks the current workload while it can run, else the first that can', () => {
    const pi = makeWorkload();
    expect(workloadRunnable(pi)).toBe(true);
    expect(workloadRunnable(broken)).toBe(false);
    expect(pickWorkload([broken, pi, model], null)?.name).toBe('pi');
    expect(pickWorkload([broken, pi, model], 'train')?.name).toBe('train');
    expect(pickWorkload([broken, pi, model], 'broken')?.name).toBe('pi');
    expect(pickWorkload([pi], 'gone')?.name).toBe('pi');
    expect(pickWorkload([broken], null)).toBeNull();
    expect(pickWorkload([], 'pi')).toBeNull();
  });

  it('describes the parameters, Python objects included', () => {
    expect(describeWorkloadParams(makeWorkload())).toEqual([
      'samples: integer, ≥ 1000, ≤ 10000000000 (default 1000000)',
      'chunk: integer, ≥ 100 (default 100000) — points per task',
      'seed: integer (default 0)'
    ]);
    expect(describeWorkloadParams(model)).toEqual([
      'model: Python object as package.module:attribute, required — the network',
      'optimizer: string, one of "sgd", "adam" (default "adam")',
      'lr: number | null (default null)',
      'epochs: integer, ≥ 1'
    ]);
    expect(describeWorkloadParams(null)).toEqual([]);
  });
});

describe('job speed and ETA', () => {
  // the same cases as tests/test_text.py (SPEED_CASES, ETA_CASES): the panel writes the job's own
  // smoothed numbers exactly as the CLI and the notebook do, and never computes its own
  it('writes the payload numbers as text.py does', () => {
    const speeds: [number | null, string][] = [
      [0.523, '0.52 samples/s'],
      [12.5, '13 samples/s'],
      [845.2, '845 samples/s'],
      [1234.5, '1,235 samples/s'],
      [1234567, '1,234,567 samples/s'],
      [null, '']
    ];
    for (const [value, shown] of speeds) {
      expect(jobSpeedText({ samples_per_s: value })).toBe(shown);
    }
    const etas: [number | null, string][] = [
      [42.9, '42s'],
      [65, '1m 05s'],
      [7380, '2h 03m'],
      [null, ''],
      [-1, '']
    ];
    for (const [value, shown] of etas) {
      expect(jobEtaText({ eta_s: value })).toBe(shown);
    }
    expect(jobSpeedText(null)).toBe('');
  });
});

describe('job workers', () => {
  it('names the devices of the ranks, never addresses, each device once', () => {
    expect(jobWorkersText({ devices: ['laptop', 'desktop', 'desktop'], workers: 3 })).toBe(
      'laptop, desktop ×2'
    );
    expect(jobWorkersText({ devices: null, workers: 2 })).toBe('2');
    expect(jobWorkersText({ devices: [], workers: null })).toBe('');
    expect(jobWorkersText(undefined)).toBe('');
  });
});

describe('joins this device serves', () => {
  it('says a refused join in words and offers Retry where it helps', () => {
    expect(describeServedState('refused')).toBe('refused by the main device');
    expect(describeServedState('waiting-for-scheduler')).toBe('waiting for scheduler');
    expect(['refused', 'failed', 'waiting-for-scheduler'].every(joinRetryable)).toBe(true);
    expect(['running', 'starting-worker', 'requesting-certificate'].some(joinRetryable)).toBe(false);
  });
});

describe('job output', () => {
  it('prefixes each line with its rank and device', () => {
    expect(formatOutputLine({ rank: 1, device: 'bravo', line: 'epoch 2 loss 0.31' })).toBe(
      '[rank 1 bravo] epoch 2 loss 0.31'
    );
    expect(formatOutputLine({ rank: 0, device: '', line: 'hello' })).toBe('[rank 0] hello');
    expect(formatOutputLine({ rank: NaN, device: 'x', line: 'done\n' })).toBe('[rank ? x] done');
  });

  it('keeps only well-formed lines of the output', () => {
    expect(jobOutputLines(undefined)).toEqual([]);
    expect(jobOutputLines('nope')).toEqual([]);
    expect(
      jobOutputLines([
        { rank: 0, device: 'alpha', stream: 'stdout', line: 'a' },
        { rank: 1, device: null, stream: 'stderr', line: '<b>warn</b>' },
        { rank: 2, device: 'c', stream: 'weird', line: 3 },
        null,
        { rank: 'x', stream: 'other', line: 'b' }
      ])
    ).toEqual([
      { rank: 0, device: 'alpha', stream: 'stdout', line: 'a' },
      { rank: 1, device: '', stream: 'stderr', line: '<b>warn</b>' },
      { rank: NaN, device: '', stream: 'stdout', line: 'b' }
    ]);
  });
});
