import { describe, expect, it } from 'vitest';

import { workerLabels } from '../src/models/clusterViews';
import { inviteBody } from '../src/models/invitation';
import { decidedMessage, pendingMessage, toastMessage } from '../src/models/requestViews';
import { OutgoingTracker } from '../src/state/incoming';
import { makeRequest } from './fixtures';

describe('pendingMessage: one notification for all incoming requests', () => {
  it('is the request itself while one waits, the count while several do, null at zero', () => {
    const a = makeRequest({ id: 'a' });
    expect(pendingMessage([])).toBeNull();
    expect(pendingMessage([a])).toBe(toastMessage(a));
    const many = Array.from({ length: 100 }, (_, i) => makeRequest({ id: `r${i}` }));
    expect(pendingMessage(many)).toMatch(/^Parallalx: 100 connection requests waiting\./);
    expect(pendingMessage(many.slice(0, 3))).toContain('3 connection requests waiting');
  });
});

describe('decidedMessage: what the sender is told', () => {
  it('names the other device and the outcome', () => {
    const r = makeRequest({ direction: 'outgoing' });
    expect(decidedMessage({ ...r, state: 'accepted' })).toBe('Parallalx: “alice-laptop” accepted your request.');
    expect(decidedMessage({ ...r, state: 'rejected' })).toBe('Parallalx: “alice-laptop” rejected your request.');
    expect(decidedMessage({ ...r, state: 'expired' })).toContain('expired');
  });
});

describe('OutgoingTracker', () => {
  it('reports outgoing requests that left the open list, never at the first look', () => {
    const tracker = new OutgoingTracker();
    const out = (id: string) => makeRequest({ id, direction: 'outgoing', state: 'pending' });
    expect(tracker.update([out('a'), out('b')])).toEqual([]);
    expect(tracker.update([out('b')])).toEqual(['a']);
    expect(tracker.update([out('b')])).toEqual([]); // reported once
    expect(tracker.update([])).toEqual(['b']);
    // incoming requests are not the sender's business
    const t2 = new OutgoingTracker();
    t2.update([makeRequest({ id: 'i' })]);
    expect(t2.update([])).toEqual([]);
  });

  it('reports a request this user sent even when no look saw it pending', () => {
    const tracker = new OutgoingTracker();
    tracker.watch('sent');
    expect(tracker.update([])).toEqual(['sent']);
  });
});

describe('inviteBody', () => {
  it('sends the address, and purpose and threads as asks', () => {
    expect(inviteBody('invite', { url: ' https://h:1 ', purpose: ' train ', threads: '4' })).toEqual({
      body: { url: 'https://h:1', kind: 'invite', asks: { purpose: 'train', nthreads: 4 } }
    });
    expect(inviteBody('offer', { url: 'https://h:1', purpose: '', threads: '' })).toEqual({
      body: { url: 'https://h:1', kind: 'offer' }
    });
  });

  it('refuses a missing address and threads that are not 1-1024', () => {
    expect(inviteBody('invite', { url: ' ', purpose: '', threads: '' }).error).toContain('peer address');
    for (const threads of ['0', '1.5', '2000', 'many']) {
      expect(inviteBody('invite', { url: 'https://h:1', purpose: '', threads }).error).toContain('1 to 1024');
    }
  });
});

describe('workerLabels', () => {
  it('names workers by their device, numbered when there are several', () => {
    expect(workerLabels('laptop-2', 1)).toEqual(['laptop-2']);
    expect(workerLabels('laptop-2', 2)).toEqual(['laptop-2 (worker 1)', 'laptop-2 (worker 2)']);
  });
});

