import { ServerConnection } from '@jupyterlab/services';
import { describe, expect, it } from 'vitest';

import { APIError, ParallalxAPI, apiUrl } from '../src/api';

interface ICall {
  url: string;
  method: string;
  body: string | null;
  headers: Headers;
}

/** Server settings whose fetch records the calls and answers from `reply`. */
function fakeServer(
  baseUrl: string,
  reply: (call: ICall) => { status?: number; body?: unknown; headers?: Record<string, string> }
): { settings: ServerConnection.ISettings; calls: ICall[] } {
  const calls: ICall[] = [];
  const fetchImpl = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const request = input instanceof Request ? input : new Request(String(input), init);
    const call: ICall = {
      url: request.url,
      method: request.method,
      body: request.method === 'GET' ? null : await request.text(),
      headers: request.headers
    };
    calls.push(call);
    const { status = 200, body, headers = {} } = reply(call);
    // (a 204 has no body at all)
    return new Response(status === 204 ? null : body === undefined ? '' : JSON.stringify(body), {
      status,
      headers: { 'Content-Type': 'application/json', ...headers }
    });
  };
  const settings = ServerConnection.makeSettings({
    baseUrl,
    wsUrl: baseUrl.replace(/^http/, 'ws'),
    token: 'secret',
    fetch: fetchImpl as typeof fetch,
    Request,
    Headers
  });
  return { settings, calls };
}

describe('apiUrl', () => {
  it('joins under the base URL, including a base_url prefix', () => {
    expect(apiUrl({ baseUrl: 'http://h:8888/' }, 'device')).toBe('http://h:8888/parallalx/api/device');
    expect(apiUrl({ baseUrl: 'http://h:8888/user/someone/' }, 'requests', { state: 'open', direction: undefined })).toBe(
      'http://h:8888/user/someone/parallalx/api/requests?state=open'
    );
  });
});

describe('ParallalxAPI', () => {
  it('uses the base_url prefix, the token and JSON bodies', async () => {
    const { settings, calls } = fakeServer('http://h:8888/user/someone/', () => ({ body: {} }));
    const api = new ParallalxAPI(settings);
    await api.getDevice();
    await api.getDevice(true);
    await api.listRequests({ direction: 'incoming', state: 'pending' });
    await api.accept('r/1', { kernel: 'python3' });
    await api.reject('r1');
    await api.revoke('DEV1');
    await api.invite({ url: 'https://10.0.0.2:8476', kind: 'invite', asks: { nthreads: 2 } });
    // (JupyterLab may append a numeric cache-buster to the query)
    const seen = calls.map(c => `${c.method} ${c.url.replace(/[?&]\d{10,}$/, '')}`);
    expect(seen).toEqual([
      'GET http://h:8888/user/someone/parallalx/api/device',
      'GET http://h:8888/user/someone/parallalx/api/device?refresh=true',
      'GET http://h:8888/user/someone/parallalx/api/requests?direction=incoming&state=pending',
      'POST http://h:8888/user/someone/parallalx/api/requests/r%2F1/accept',
      'POST http://h:8888/user/someone/parallalx/api/requests/r1/reject',
      'POST http://h:8888/user/someone/parallalx/api/devices/DEV1/revoke',
      'POST http://h:8888/user/someone/parallalx/api/invitations'
    ]);
    expect(calls[0].headers.get('Authorization')).toBe('token secret');
    expect(JSON.parse(calls[3].body ?? '')).toEqual({ kernel: 'python3' });
    expect(calls[3].headers.get('Content-Type')).toBe('application/json');
    expect(JSON.parse(calls[4].body ?? '')).toEqual({});
    expect(JSON.parse(calls[6].body ?? '')).toEqual({
      url: 'https://10.0.0.2:8476',
      kind: 'invite',
      asks: { nthreads: 2 }
    });
  });

  it('jobs: list, get, cancel, delete (204)', async () => {
    const { settings, calls } = fakeServer('http://h:8888/user/someone/', call =>
      call.method === 'DELETE' ? { status: 204 } : { body: call.url.includes('/jobs/') ? { id: 'j 1' } : [] }
    );
    const api = new ParallalxAPI(settings);
    expect(await api.listJobs()).toEqual([]);
    expect(await api.getJob('j 1')).toEqual({ id: 'j 1' });
    expect(await api.cancelJob('j 1')).toEqual({ id: 'j 1' });
    expect(await api.deleteJob('j 1')).toBeUndefined();
    const seen = calls.map(c => `${c.method} ${c.url.replace(/[?&]\d{10,}$/, '')}`);
    expect(seen).toEqual([
      'GET http://h:8888/user/someone/parallalx/api/jobs',
      'GET http://h:8888/user/someone/parallalx/api/jobs/j%201',
      'POST http://h:8888/user/someone/parallalx/api/jobs/j%201/cancel',
      'DELETE http://h:8888/user/someone/parallalx/api/jobs/j%201'
    ]);
    expect(JSON.parse(calls[2].body ?? '')).toEqual({});
  });

  it('workloads: list and run (202 with the job)', async () => {
    const { settings, calls } = fakeServer('http://h:8888/user/someone/', call =>
      call.method === 'GET'
        ? { body: [{ id: 'pi', name: 'pi', description: 'Estimate pi', parameters: {}, error: null }] }
        : { status: 202, body: { id: 'job-1', state: 'pending', owner: { kind: 'server' } } }
    );
    const api = new ParallalxAPI(settings);
    const workloads = await api.listWorkloads();
    expect(workloads.map(w => w.name)).toEqual(['pi']);
    const job = await api.runWorkload('pi', {
      params: { samples: 200000 },
      name: 'my pi',
      scheduler: 'tcp://127.0.0.1:8786'
    });
    expect(job.state).toBe('pending');
    expect(job.owner.kind).toBe('server');
    await api.runWorkload('a b/c', { params: {} });
    const seen = calls.map(c => `${c.method} ${c.url.replace(/[?&]\d{10,}$/, '')}`);
    expect(seen).toEqual([
      'GET http://h:8888/user/someone/parallalx/api/workloads',
      'POST http://h:8888/user/someone/parallalx/api/workloads/pi/run',
      'POST http://h:8888/user/someone/parallalx/api/workloads/a%20b%2Fc/run'
    ]);
    expect(calls[1].headers.get('Content-Type')).toBe('application/json');
    expect(JSON.parse(calls[1].body ?? '')).toEqual({
      params: { samples: 200000 },
      name: 'my pi',
      scheduler: 'tcp://127.0.0.1:8786'
    });
    expect(JSON.parse(calls[2].body ?? '')).toEqual({ params: {} });
  });

  it("workloads: bad parameters and unknown workloads are refused with the server's line", async () => {
    const { settings } = fakeServer('http://h/', call =>
      call.url.includes('/nosuch/')
        ? { status: 404, body: { error: "unknown workload 'nosuch'; available: pi" } }
        : { status: 400, body: { error: "pi: parameter 'samples': 5 is less than the minimum of 1000" } }
    );
    const api = new ParallalxAPI(settings);
    const bad = await api.runWorkload('pi', { params: { samples: 5 } }).catch(e => e);
    expect(bad).toBeInstanceOf(APIError);
    expect(bad.status).toBe(400);
    expect(bad.message).toBe("pi: parameter 'samples': 5 is less than the minimum of 1000");
    const unknown = await api.runWorkload('nosuch', { params: {} }).catch(e => e);
    expect(unknown.status).toBe(404);
    expect(unknown.message).toBe("unknown workload 'nosuch'; available: pi");
  });

  it('jobs: a cancel of an ended job is refused with the server message', async () => {
    const { settings } = fakeServer('http://h/', () => ({ status: 409, body: { error: 'job job-1 already ended' } }));
    const error = await new ParallalxAPI(settings).cancelJob('job-1').catch(e => e);
    expect(error).toBeInstanceOf(APIError);
    expect(error.status).toBe(409);
    expect(error.message).toBe('job job-1 already ended');
  });

  it("raises the server's error message with the status", async () => {
    const { settings } = fakeServer('http://h/', () => ({ status: 409, body: { error: 'request is already accepted' } }));
    const api = new ParallalxAPI(settings);
    const error = await api.accept('r1').catch(e => e);
    expect(error).toBeInstanceOf(APIError);
    expect(error.message).toBe('request is already accepted');
    expect(error.status).toBe(409);
  });

  it('falls back to the status line when the body is not our JSON', async () => {
    const { settings } = fakeServer('http://h/', () => ({ status: 502 }));
    const error = await new ParallalxAPI(settings).listDevices().catch(e => e);
    expect(error).toBeInstanceOf(APIError);
    expect(error.message).toMatch(/^502/);
  });

  it('kernel choices hook: empty until the server has the kernels API', async () => {
    const missing = fakeServer('http://h/', () => ({ status: 404, body: { error: 'not found' } }));
    expect(await new ParallalxAPI(missing.settings).listKernelChoices()).toEqual([]);
    const present = fakeServer('http://h/', () => ({
      body: [{ name: 'python3', display_name: 'Python 3', selectable: true }]
    }));
    expect(await new ParallalxAPI(present.settings).listKernelChoices()).toEqual([
      { name: 'python3', display_name: 'Python 3', selectable: true }
    ]);
    const broken = fakeServer('http://h/', () => ({ status: 500, body: { error: 'boom' } }));
    await expect(new ParallalxAPI(broken.settings).listKernelChoices()).rejects.toThrow('boom');
  });

  it("estimates the server's clock from the Date header", async () => {
    const ahead = new Date(Date.now() + 120_000).toUTCString();
    const { settings } = fakeServer('http://h/', () => ({ body: [], headers: { Date: ahead } }));
    const api = new ParallalxAPI(settings);
    expect(api.clockOffsetMs).toBe(0);
    await api.listDevices();
    expect(api.clockOffsetMs).toBeGreaterThan(115_000);
    expect(api.clockOffsetMs).toBeLessThan(125_000);
    const now = Date.now();
    expect(api.serverNow(now)).toBeCloseTo((now + api.clockOffsetMs) / 1000, 5);
  });

  it('ignores clock differences below the Date header resolution', async () => {
    const { settings } = fakeServer('http://h/', () => ({
      body: [],
      headers: { Date: new Date().toUTCString() }
    }));
    const api = new ParallalxAPI(settings);
    await api.listDevices();
    expect(api.clockOffsetMs).toBe(0);
  });
});
