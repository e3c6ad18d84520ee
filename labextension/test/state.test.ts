import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { APIError } from '../src/api';
import type {
  IClusterState,
  IDevice,
  IJob,
  INearbyDevice,
  IPairedDevice,
  IRequest,
  IWorkload,
  IWorkloadRunBody
} from '../src/models/apiTypes';
import { SCHEMA_PREFIX } from '../src/models/events';
import type { IModelAPI } from '../src/state/host';
import { OUTPUT_MIN_INTERVAL_MS } from '../src/state/jobOutput';
import { JOBS_MIN_INTERVAL_MS } from '../src/state/jobs';
import { ParallalxModel } from '../src/state/model';
import { makeDevice, makeJob, makePaired, makeRequest, makeWorkload } from './fixtures';

/** An in-memory server behind the model. */
class FakeAPI implements IModelAPI {
  device: IDevice = makeDevice();
  requests: IRequest[] = [];
  devices: IPairedDevice[] = [];
  fail: Error | null = null;
  calls: string[] = [];

  private _check(call: string): void {
    this.calls.push(call);
    if (this.fail) {
      throw this.fail;
    }
  }

  getDevice = async (refresh = false) => {
    this._check(refresh ? 'device?refresh' : 'device');
    return structuredClone(this.device);
  };
  listRequests = async () => {
    this._check('requests');
    return structuredClone(this.requests);
  };
  getRequest = async (id: string) => {
    this._check(`request ${id}`);
    const r = this.requests.find(x => x.id === id);
    if (!r) {
      throw new Error('no such request');
    }
    return structuredClone(r);
  };
  listDevices = async () => {
    this._check('devices');
    return structuredClone(this.devices);
  };
  accept = async (id: string, body = {}) => {
    this._check(`accept ${id} ${JSON.stringify(body)}`);
    const r = this.requests.find(x => x.id === id)!;
    r.state = 'accepted';
    this.devices.push(makePaired({ id: r.peer.id, name: r.peer.name }));
    return structuredClone(r);
  };
  reject = async (id: string) => {
    this._check(`reject ${id}`);
    const r = this.requests.find(x => x.id === id)!;
    r.state = 'rejected';
    return structuredClone(r);
  };
  revoke = async (id: string) => {
    this._check(`revoke ${id}`);
    const d = this.devices.find(x => x.id === id)!;
    d.state = 'revoked';
    return structuredClone(d);
  };
  invite = async () => {
    this._check('invite');
    const r = makeRequest({ id: 'out-1', direction: 'outgoing' });
    this.requests.push(r);
    return structuredClone(r);
  };
  nearby: INearbyDevice[] = [];
  nearbyFail: Error | null = null;
  listNearby = async () => {
    this.calls.push('nearby');
    if (this.nearbyFail) {
      throw this.nearbyFail;
    }
    return structuredClone(this.nearby);
  };
  listKernelChoices = async () => {
    this.calls.push('kernels');
    return [];
  };
  serverNow = () => 1234;
  cluster: IClusterState = {
    running: false,
    scheduler_address: null,
    dashboard_link: null,
    ca_fingerprint: null,
    workers: [],
    serving: []
  };
  clusterFail: Error | null = null;
  getCluster = async () => {
    this._check('cluster');
    if (this.clusterFail) {
      throw this.clusterFail;
    }
    return structuredClone(this.cluster);
  };
  startCluster = async () => {
    this._check('cluster/start');
    this.cluster = { ...this.cluster, running: true, scheduler_address: 'tls://127.0.0.1:9000' };
    return structuredClone(this.cluster);
  };
  stopCluster = async () => {
    this._check('cluster/stop');
    this.cluster = { ...this.cluster, running: false, scheduler_address: null, workers: [] };
    return structuredClone(this.cluster);
  };
  retryJoin = async (mainId: string) => {
    this._check(`cluster/serving/${mainId}/retry`);
    this.cluster = {
      ...this.cluster,
      serving: this.cluster.serving.map(s =>
        s.main_id === mainId ? { ...s, state: 'starting-worker', message: null } : s
      )
    };
    return structuredClone(this.cluster);
  };
  addSelfToCluster = async (body: { nthreads?: number } = {}) => {
    this._check(`cluster/add-self ${JSON.stringify(body)}`);
    if (this.clusterFail) {
      throw this.clusterFail;
    }
    this.cluster = {
      ...this.cluster,
      running: true,
      scheduler_address: 'tls://127.0.0.1:9000',
      workers: [{ device_id: 'SELFID', address: 'tls://127.0.0.1:9100', nthreads: body.nthreads ?? 1 }]
    };
    return structuredClone(this.cluster);
  };
  jobs: IJob[] = [];
  jobsFail: Error | null = null;
  /** When set, GET jobs waits for it (to hold an answer in flight). */
  jobsGate: Promise<void> | null = null;
  listJobs = async () => {
    this._check('jobs');
    const answer = structuredClone(this.jobs);
    if (this.jobsGate) {
      await this.jobsGate;
    }
    if (this.jobsFail) {
      throw this.jobsFail;
    }
    return answer;
  };
  getJob = async (id: string) => {
    this._check(`jobs/${id}`);
    const job = this.jobs.find(j => j.id === id);
    if (!job) {
      throw new APIError(`no job '${id}'`, 404);
    }
    return structuredClone(job);
  };
  cancelJob = async (id: string) => {
    this._check(`jobs/${id}/cancel`);
    const job = this.jobs.find(j => j.id === id);
    if (!job) {
      throw new APIError('no such job', 404);
    }
    if (['finished', 'failed', 'cancelled', 'lost'].includes(job.state)) {
      throw new APIError('the job already ended', 409);
    }
    job.state = 'cancelling';
    job.cancel_requested = true;
    return structuredClone(job);
  };
  deleteJob = async (id: string) => {
    this._check(`DELETE jobs/${id}`);
    const job = this.jobs.find(j => j.id === id);
    if (job?.state === 'running') {
      throw new APIError('the job still runs', 409);
    }
    this.jobs = this.jobs.filter(j => j.id !== id);
  };
  workloads: IWorkload[] = [makeWorkload()];
  workloadsFail: Error | null = null;
  listWorkloads = async () => {
    this._check('workloads');
    if (this.workloadsFail) {
      throw this.workloadsFail;
    }
    return structuredClone(this.workloads);
  };
  runWorkload = async (name: string, body: IWorkloadRunBody) => {
    this._check(`workloads/${name}/run ${JSON.stringify(body)}`);
    if (!this.workloads.some(w => w.name === name)) {
      throw new APIError(`unknown workload '${name}'`, 404);
    }
    if (typeof body.params.samples === 'number' && body.params.samples < 1000) {
      throw new APIError(`pi: parameter 'samples': ${body.params.samples} is less than the minimum of 1000`, 400);
    }
    const job = makeJob({
      id: `run-${this.jobs.length + 1}`,
      workload: name,
      name: body.name ?? `${name} job`,
      state: 'pending',
      owner: { kind: 'server', pid: 77, host: 'main' },
      created_at: 2000 + this.jobs.length,
      progress: { step: null, total: null, fraction: null, loss: null, samples_per_s: null, eta_s: null, workers: null, message: null },
      loss_history: []
    });
    this.jobs.push(job);
    return structuredClone(job);
  };
}

function jobEvent(jobId: string, step: number): { [key: string]: unknown } {
  return {
    schema_id: `${SCHEMA_PREFIX}job-progress/v1`,
    job_id: jobId,
    workload: 'train',
    name: 'digits MLP',
    state: 'running',
    step,
    total: 100
  };
}

function countCalls(api: FakeAPI, name: string): number {
  return api.calls.filter(c => c === name).length;
}

describe('ParallalxModel', () => {
  let api: FakeAPI;
  let model: ParallalxModel;

  beforeEach(() => {
    vi.useFakeTimers();
    api = new FakeAPI();
    model = new ParallalxModel(api, { pollInterval: 1000 });
  });

  afterEach(() => {
    model.dispose();
    vi.useRealTimers();
  });

  it('loads device, requests and devices and emits changed', async () => {
    api.requests = [makeRequest()];
    let changes = 0;
    model.changed.connect(() => changes++);
    await model.start();
    expect(model.loaded).toBe(true);
    expect(model.device?.name).toBe('main-desktop');
    expect(model.pendingCount).toBe(1);
    expect(changes).toBe(1);
    expect(model.error).toBeNull();
  });

  it('does not toast requests that were already there, only new arrivals', async () => {
    api.requests = [makeRequest({ id: 'old' })];
    const fresh: string[][] = [];
    model.newIncoming.connect((_, rs) => fresh.push(rs.map(r => r.id)));
    await model.start();
    expect(fresh).toEqual([]);
    api.requests.push(makeRequest({ id: 'new1' }), makeRequest({ id: 'out', direction: 'outgoing' }));
    await model.refresh();
    await model.refresh();
    expect(fresh).toEqual([['new1']]);
  });

  it('tells the sender how an outgoing request ended once it leaves the open list', async () => {
    api.requests = [makeRequest({ id: 'out', direction: 'outgoing' })];
    const decided: string[] = [];
    model.outgoingDecided.connect((_, rs) => decided.push(...rs.map(r => `${r.id}:${r.state}`)));
    await model.start();
    api.requests[0].state = 'accepted';
    await model.refresh();
    await vi.waitFor(() => expect(decided).toEqual(['out:accepted']));
    await model.refresh();
    expect(decided).toEqual(['out:accepted']);
  });

  it('reports incoming requests that stopped being pending', async () => {
    api.requests = [makeRequest({ id: 'a' }), makeRequest({ id: 'b' })];
    const closed: string[][] = [];
    model.incomingClosed.connect((_, ids) => closed.push(ids));
    await model.start();
    api.requests[0].state = 'expired';
    await model.refresh();
    expect(closed).toEqual([['a']]);
  });

  it('refreshes at once on one of our events and ignores others', async () => {
    await model.start();
    const before = countCalls(api, 'requests');
    expect(model.handleEmission({ schema_id: 'https://events.jupyter.org/jupyter_server/contents_service/v1' })).toBe(false);
    expect(countCalls(api, 'requests')).toBe(before);
    api.requests = [makeRequest({ id: 'evt' })];
    const fresh: string[] = [];
    model.newIncoming.connect((_, rs) => fresh.push(...rs.map(r => r.id)));
    expect(
      model.handleEmission({ schema_id: `${SCHEMA_PREFIX}request-received/v1`, request_id: 'evt' })
    ).toBe(true);
    await vi.waitFor(() => expect(fresh).toEqual(['evt']));
  });

  it('coalesces refreshes that arrive while one runs', async () => {
    await model.start();
    const before = countCalls(api, 'requests');
    const runs = [model.refresh(), model.refresh(), model.refresh(), model.refresh()];
    await Promise.all(runs);
    // the first run plus one more for everything that came in meanwhile
    expect(countCalls(api, 'requests') - before).toBe(2);
  });

  it('polls, slowing down while nothing changes, and speeds up on a change', async () => {
    await model.start();
    expect(model.currentPollDelay).toBe(1000);
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      await vi.advanceTimersByTimeAsync(model.currentPollDelay);
      delays.push(model.currentPollDelay);
    }
    expect(delays).toEqual([2000, 4000, 8000, 12000, 12000]);
    api.requests = [makeRequest({ id: 'x' })];
    await vi.advanceTimersByTimeAsync(model.currentPollDelay);
    expect(model.pendingCount).toBe(1);
    expect(model.currentPollDelay).toBe(1000);
  });

  it('keeps the base rate while the accelerator probe is running', async () => {
    api.device = makeDevice({ profile: { ...makeDevice().profile, accelerators: null } });
    await model.start();
    await vi.advanceTimersByTimeAsync(1000);
    await vi.advanceTimersByTimeAsync(1000);
    expect(model.currentPollDelay).toBe(1000);
    expect(countCalls(api, 'device')).toBe(3);
  });

  it('stops polling with interval 0 and resumes when set again', async () => {
    await model.start();
    model.pollInterval = 0;
    const before = api.calls.length;
    await vi.advanceTimersByTimeAsync(120_000);
    expect(api.calls.length).toBe(before);
    model.pollInterval = 500;
    await vi.advanceTimersByTimeAsync(500);
    expect(api.calls.length).toBeGreaterThan(before);
  });

  it('keeps the last state and shows the error when the server is unreachable', async () => {
    api.requests = [makeRequest()];
    await model.start();
    api.fail = new Error('Failed to fetch');
    await model.refresh();
    expect(model.error).toBe('Failed to fetch');
    expect(model.pendingCount).toBe(1);
    api.fail = null;
    await model.refresh();
    expect(model.error).toBeNull();
  });

  it('accept / reject / revoke / invite call the API and refresh', async () => {
    api.requests = [makeRequest({ id: 'a' }), makeRequest({ id: 'b', peer: { ...makeRequest().peer, id: 'P2' } })];
    await model.start();
    await model.accept('a', 'python3');
    await model.reject('b');
    await vi.waitFor(() => expect(model.pendingCount).toBe(0));
    expect(api.calls).toContain('accept a {"kernel":"python3"}');
    expect(api.calls).toContain('reject b');
    await vi.waitFor(() => expect(model.devices.length).toBe(1));
    await model.revoke('PEERID');
    await vi.waitFor(() => expect(model.devices[0].state).toBe('revoked'));
    const sent = await model.invite({ url: 'https://x' });
    expect(sent.code).toBe('123456');
    await vi.waitFor(() => expect(model.pendingOutgoing.map(r => r.id)).toEqual(['out-1']));
  });

  it('accept without a kernel sends an empty body (default environment)', async () => {
    api.requests = [makeRequest({ id: 'a' })];
    await model.start();
    await model.accept('a');
    expect(api.calls).toContain('accept a {}');
  });

  it('asks the kernels hook only when a request waits', async () => {
    await model.start();
    expect(api.calls).not.toContain('kernels');
    api.requests = [makeRequest()];
    await model.refresh();
    expect(countCalls(api, 'kernels')).toBe(1);
    await model.refresh();
    expect(countCalls(api, 'kernels')).toBe(1);
  });

  it('loads nearby devices; a failure is kept apart; last_seen alone is no change', async () => {
    const bravo: INearbyDevice = {
      id: 'BRAVO', id_display: 'BRAVOXX-XXXXXXX', name: 'bravo', addresses: ['10.0.0.7'],
      port: 8476, urls: ['https://10.0.0.7:8476'], last_seen: 1, paired: false
    };
    api.nearby = [bravo];
    await model.start();
    expect(model.nearby.map(d => d.name)).toEqual(['bravo']);
    const changed = vi.fn();
    model.changed.connect(changed);
    api.nearby = [{ ...bravo, last_seen: 2 }];
    await model.refresh();
    expect(changed).not.toHaveBeenCalled();
    api.nearbyFail = new APIError('no such API route: /parallalx/api/nearby', 404);
    await model.refresh();
    expect(model.error).toBeNull();
    expect(model.nearby).toEqual([]);
    expect(model.nearbyError).toContain('no such API route');
  });

  it('loads the cluster state; a cluster failure does not fail the refresh', async () => {
    api.clusterFail = new Error('the cluster is not available on this server');
    await model.start();
    expect(model.error).toBeNull();
    expect(model.cluster).toBeNull();
    expect(model.clusterError).toBe('the cluster is not available on this server');
    api.clusterFail = null;
    await model.refresh();
    expect(model.clusterError).toBeNull();
    expect(model.cluster?.running).toBe(false);
  });

  it('cluster actions: busy while running, result shown, errors kept', async () => {
    await model.start();
    const busy: (string | null)[] = [];
    model.changed.connect(() => busy.push(model.clusterBusy));
    const result = await model.clusterAction('add-self', 2);
    expect(result?.workers.map(w => w.device_id)).toEqual(['SELFID']);
    expect(api.calls).toContain('cluster/add-self {"nthreads":2}');
    expect(busy[0]).toBe('add-self');
    expect(model.clusterBusy).toBeNull();
    expect(model.cluster?.scheduler_address).toBe('tls://127.0.0.1:9000');
    // one action at a time
    const [a, b] = [model.clusterAction('stop'), model.clusterAction('start')];
    expect(await b).toBeNull();
    expect((await a)?.running).toBe(false);
    expect(api.calls.filter(c => c === 'cluster/start')).toEqual([]);
    api.clusterFail = new Error('dask is not installed');
    expect(await model.clusterAction('add-self')).toBeNull();
    expect(api.calls).toContain('cluster/add-self {}');
    expect(model.clusterActionError).toBe('dask is not installed');
    api.clusterFail = null;
    await model.clusterAction('start');
    expect(model.clusterActionError).toBeNull();
  });

  it('keeps the base poll rate for a while after a cluster action', async () => {
    await model.start();
    await model.clusterAction('start');
    for (let i = 0; i < 5; i++) {
      await vi.advanceTimersByTimeAsync(model.currentPollDelay);
    }
    expect(model.currentPollDelay).toBe(1000);
    await vi.advanceTimersByTimeAsync(40_000);
    await vi.advanceTimersByTimeAsync(model.currentPollDelay);
    expect(model.currentPollDelay).toBeGreaterThan(1000);
  });

  it('refreshes on cluster and worker events', async () => {
    await model.start();
    const before = countCalls(api, 'cluster');
    expect(model.handleEmission({ schema_id: `${SCHEMA_PREFIX}cluster-state/v1`, state: 'started' })).toBe(true);
    expect(model.handleEmission({ schema_id: `${SCHEMA_PREFIX}worker-state/v1`, peer_id: 'M', state: 'running' })).toBe(true);
    await vi.waitFor(() => expect(countCalls(api, 'cluster')).toBeGreaterThan(before));
  });

  it('loads the jobs; a jobs failure does not fail the refresh', async () => {
    api.jobs = [makeJob({ id: 'old', created_at: 1 }), makeJob({ id: 'new', created_at: 2 })];
    await model.start();
    expect(model.jobs.map(j => j.id)).toEqual(['new', 'old']);
    expect(model.jobsError).toBeNull();
    api.jobsFail = new APIError('Not Found', 404);
    await model.refresh();
    expect(model.error).toBeNull();
    expect(model.jobsError).toBe('Not Found');
    expect(model.pendingCount).toBe(0);
    api.jobsFail = null;
    await model.refresh();
    expect(model.jobsError).toBeNull();
    expect(model.jobs).toHaveLength(2);
  });

  it('job-progress events refresh the jobs only, at most twice a second', async () => {
    api.jobs = [makeJob()];
    await model.start();
    model.pollInterval = 0; // events only
    const before = api.calls.length;
    let changes = 0;
    model.changed.connect(() => changes++);
    // 50 events over 2.5 s (one every 50 ms)
    for (let step = 1; step <= 50; step++) {
      api.jobs[0].progress = { ...api.jobs[0].progress, step };
      expect(model.handleEmission(jobEvent('job-1', step))).toBe(true);
      await vi.advanceTimersByTimeAsync(50);
    }
    await vi.advanceTimersByTimeAsync(JOBS_MIN_INTERVAL_MS);
    const calls = api.calls.slice(before);
    expect(calls.every(c => c === 'jobs')).toBe(true);
    // ~2 per second: 2.5 s of events plus the trailing fetch
    expect(calls.length).toBeGreaterThanOrEqual(5);
    expect(calls.length).toBeLessThanOrEqual(7);
    expect(changes).toBe(calls.length);
    // the last report is shown (a trailing fetch after the burst)
    expect(model.jobs[0].progress.step).toBe(50);
  });

  it('a single job-progress event fetches at once', async () => {
    await model.start();
    await vi.advanceTimersByTimeAsync(JOBS_MIN_INTERVAL_MS);
    const before = countCalls(api, 'jobs');
    api.jobs = [makeJob()];
    model.handleEmission(jobEvent('job-1', 1));
    await vi.advanceTimersByTimeAsync(0);
    expect(countCalls(api, 'jobs')).toBe(before + 1);
    expect(model.jobs.map(j => j.id)).toEqual(['job-1']);
  });

  it('cancel: busy meanwhile, the answer shows at once, an ended job is refused', async () => {
    api.jobs = [makeJob(), makeJob({ id: 'done', state: 'finished', finished_at: 1100 })];
    await model.start();
    const busy: boolean[] = [];
    model.changed.connect(() => busy.push(model.jobBusy('job-1')));
    const job = await model.cancelJob('job-1');
    expect(job.state).toBe('cancelling');
    expect(api.calls).toContain('jobs/job-1/cancel');
    expect(busy[0]).toBe(true);
    expect(model.jobBusy('job-1')).toBe(false);
    expect(model.jobs.find(j => j.id === 'job-1')?.cancel_requested).toBe(true);
    const error = await model.cancelJob('done').catch(e => e);
    expect(error).toBeInstanceOf(APIError);
    expect(error.status).toBe(409);
    expect(model.jobBusy('done')).toBe(false);
  });

  it('an answer that left before a cancel does not undo it', async () => {
    api.jobs = [makeJob()];
    await model.start();
    let open!: () => void;
    api.jobsGate = new Promise(resolve => (open = resolve));
    const stale = model.refresh(); // GET jobs in flight, answering "running"
    await vi.advanceTimersByTimeAsync(0);
    api.jobsGate = null;
    await model.cancelJob('job-1');
    open();
    await stale;
    expect(model.jobs[0].state).toBe('cancelling');
  });

  it('remove: gone from the list; refused while the job runs', async () => {
    api.jobs = [makeJob({ id: 'done', state: 'cancelled', finished_at: 1100 }), makeJob()];
    await model.start();
    await model.removeJob('done');
    expect(model.jobs.map(j => j.id)).toEqual(['job-1']);
    await expect(model.removeJob('job-1')).rejects.toThrow('the job still runs');
    await vi.advanceTimersByTimeAsync(JOBS_MIN_INTERVAL_MS);
    expect(model.jobs.map(j => j.id)).toEqual(['job-1']);
    expect(api.jobs.map(j => j.id)).toEqual(['job-1']);
  });

  it('keeps the base poll rate while a job runs, backs off once it ended', async () => {
    api.jobs = [makeJob()];
    await model.start();
    for (let i = 0; i < 4; i++) {
      await vi.advanceTimersByTimeAsync(model.currentPollDelay);
    }
    expect(model.currentPollDelay).toBe(1000);
    api.jobs[0].state = 'finished';
    for (let i = 0; i < 3; i++) {
      await vi.advanceTimersByTimeAsync(model.currentPollDelay);
    }
    expect(model.currentPollDelay).toBeGreaterThan(1000);
  });
  it('workloads: loaded on demand (not polled), a failure kept apart', async () => {
    await model.start();
    expect(model.workloads).toBeNull();
    expect(api.calls).not.toContain('workloads');
    let changes = 0;
    model.changed.connect(() => changes++);
    await model.loadWorkloads();
    expect(model.workloads?.map(w => w.name)).toEqual(['pi']);
    expect(model.workloadsError).toBeNull();
    expect(changes).toBe(1);
    await model.loadWorkloads(); // the same answer: no re-render
    expect(changes).toBe(1);
    api.workloadsFail = new APIError('Forbidden', 403);
    await model.loadWorkloads();
    expect(model.workloadsError).toBe('Forbidden');
    expect(model.workloads?.map(w => w.name)).toEqual(['pi']); // the last good list stays
    expect(model.error).toBeNull();
    await vi.advanceTimersByTimeAsync(model.currentPollDelay);
    expect(countCalls(api, 'workloads')).toBe(3);
  });

  it('run a workload: the pending job shows at once and the lists refresh', async () => {
    await model.start();
    const before = countCalls(api, 'requests');
    const job = await model.runWorkload('pi', { params: { samples: 200000 }, name: 'my pi' });
    expect(job.state).toBe('pending');
    expect(job.owner.kind).toBe('server');
    expect(model.jobs.map(j => j.id)).toEqual([job.id]);
    expect(model.jobs[0].name).toBe('my pi');
    await vi.advanceTimersByTimeAsync(0);
    expect(countCalls(api, 'requests')).toBe(before + 1);
    expect(model.currentPollDelay).toBe(1000);
  });

  it("run a workload: the server's refusal is thrown and nothing is added", async () => {
    await model.start();
    const error = await model.runWorkload('pi', { params: { samples: 5 } }).catch(e => e);
    expect(error).toBeInstanceOf(APIError);
    expect(error.status).toBe(400);
    expect(error.message).toBe("pi: parameter 'samples': 5 is less than the minimum of 1000");
    await expect(model.runWorkload('nosuch', { params: {} })).rejects.toThrow("unknown workload 'nosuch'");
    expect(model.jobs).toEqual([]);
  });

  it("a job's Output: read when opened, on its events (throttled), closed on request", async () => {
    api.jobs = [makeJob({ output: [] }), makeJob({ id: 'other', created_at: 900 })];
    await model.start();
    model.pollInterval = 0; // events only
    expect(model.jobOutputOpen('job-1')).toBe(false);
    expect(model.jobOutput('job-1')).toBeNull();
    // the list leaves the lines out: nothing is read while the Output is closed
    model.handleEmission(jobEvent('job-1', 1));
    await vi.advanceTimersByTimeAsync(OUTPUT_MIN_INTERVAL_MS);
    expect(countCalls(api, 'jobs/job-1')).toBe(0);

    model.setJobOutputOpen('job-1', true);
    expect(model.jobOutputOpen('job-1')).toBe(true);
    expect(model.jobOutput('job-1')).toEqual({ lines: null, error: null });
    await vi.advanceTimersByTimeAsync(0);
    expect(countCalls(api, 'jobs/job-1')).toBe(1);
    expect(model.jobOutput('job-1')).toEqual({ lines: [], error: null });

    // 40 events over 2 s: ~2 reads a second, the last lines shown
    const before = countCalls(api, 'jobs/job-1');
    for (let i = 1; i <= 40; i++) {
      api.jobs[0].output = [...(api.jobs[0].output ?? []), { rank: i % 2, device: 'd', stream: 'stdout', line: `l${i}` }];
      api.jobs[0].updated_at += 1;
      model.handleEmission(jobEvent('job-1', i));
      model.handleEmission(jobEvent('other', i)); // another job's events read nothing here
      await vi.advanceTimersByTimeAsync(50);
    }
    await vi.advanceTimersByTimeAsync(OUTPUT_MIN_INTERVAL_MS);
    const reads = countCalls(api, 'jobs/job-1') - before;
    expect(reads).toBeGreaterThanOrEqual(4);
    expect(reads).toBeLessThanOrEqual(6);
    expect(countCalls(api, 'jobs/other')).toBe(0);
    expect(model.jobOutput('job-1')?.lines).toHaveLength(40);
    expect(model.jobOutput('job-1')?.lines?.[39].line).toBe('l40');

    model.setJobOutputOpen('job-1', false);
    expect(model.jobOutput('job-1')).toBeNull();
    const closed = countCalls(api, 'jobs/job-1');
    model.handleEmission(jobEvent('job-1', 41));
    await vi.advanceTimersByTimeAsync(OUTPUT_MIN_INTERVAL_MS * 2);
    expect(countCalls(api, 'jobs/job-1')).toBe(closed);
  });

  it("an open Output follows the polled list without events, and goes with its job", async () => {
    api.jobs = [makeJob({ output: [{ rank: 0, device: 'a', stream: 'stdout', line: 'one' }] })];
    await model.start();
    model.setJobOutputOpen('job-1', true);
    await vi.advanceTimersByTimeAsync(0);
    expect(model.jobOutput('job-1')?.lines?.map(l => l.line)).toEqual(['one']);
    // the next poll shows the job changed: its Output is read again
    api.jobs[0].output!.push({ rank: 1, device: 'b', stream: 'stderr', line: 'two' });
    api.jobs[0].updated_at += 5;
    await vi.advanceTimersByTimeAsync(model.currentPollDelay);
    await vi.advanceTimersByTimeAsync(OUTPUT_MIN_INTERVAL_MS);
    expect(model.jobOutput('job-1')?.lines?.map(l => l.line)).toEqual(['one', 'two']);
    // a failed read keeps the lines and says why
    api.fail = new APIError('Bad Gateway', 502);
    model.handleEmission(jobEvent('job-1', 2));
    await vi.advanceTimersByTimeAsync(OUTPUT_MIN_INTERVAL_MS);
    expect(model.jobOutput('job-1')).toMatchObject({ error: 'Bad Gateway' });
    expect(model.jobOutput('job-1')?.lines).toHaveLength(2);
    api.fail = null;
    // the job is removed: its Output closes
    api.jobs[0].state = 'finished';
    await model.removeJob('job-1');
    expect(model.jobOutputOpen('job-1')).toBe(false);
  });
});
