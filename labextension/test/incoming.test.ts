import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { IncomingTracker, KernelChoices } from '../src/state/incoming';
import { makeRequest } from './fixtures';

describe('IncomingTracker', () => {
  it('reports each pending request once, and the ones that stopped being pending', () => {
    const tracker = new IncomingTracker();
    const a = makeRequest({ id: 'a' });
    const b = makeRequest({ id: 'b' });
    const ids = (changes: { fresh: { id: string }[]; closed: string[] }) => ({
      fresh: changes.fresh.map(r => r.id),
      closed: changes.closed
    });
    expect(ids(tracker.update([a]))).toEqual({ fresh: ['a'], closed: [] });
    expect(ids(tracker.update([a, b]))).toEqual({ fresh: ['b'], closed: [] });
    expect(ids(tracker.update([b]))).toEqual({ fresh: [], closed: ['a'] });
    // pending again (e.g. a flaky list): not new a second time
    expect(ids(tracker.update([a, b]))).toEqual({ fresh: [], closed: [] });
    expect(ids(tracker.update([]))).toEqual({ fresh: [], closed: ['a', 'b'] });
  });
});

describe('KernelChoices', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });

  afterEach(() => {
    vi.useRealTimers();
  });

  it('asks only when wanted, at most once a minute, and keeps the last choices on failure', async () => {
    let calls = 0;
    let fail = false;
    const kernels = new KernelChoices({
      listKernelChoices: async () => {
        calls++;
        if (fail) {
          throw new Error('nope');
        }
        return [{ name: 'python3', display_name: 'Python 3', selectable: true }];
      }
    });
    expect(await kernels.load(false)).toBe(false);
    expect(calls).toBe(0);
    expect(await kernels.load(true)).toBe(true);
    expect(kernels.choices.map(c => c.name)).toEqual(['python3']);
    expect(await kernels.load(true)).toBe(false);
    expect(calls).toBe(1);
    vi.advanceTimersByTime(60_001);
    expect(await kernels.load(true)).toBe(false); // the same answer
    expect(calls).toBe(2);
    fail = true;
    vi.advanceTimersByTime(60_001);
    expect(await kernels.load(true)).toBe(false);
    expect(calls).toBe(3);
    expect(kernels.choices.map(c => c.name)).toEqual(['python3']);
  });
});
