import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { PollTimer } from '../src/state/polling';

describe('PollTimer', () => {
  let polls: number;
  let timer: PollTimer;

  beforeEach(() => {
    vi.useFakeTimers();
    polls = 0;
    timer = new PollTimer(1000, () => polls++);
  });

  afterEach(() => {
    timer.dispose();
    vi.useRealTimers();
  });

  it('fires once per schedule, after the current delay (the interval at first)', () => {
    timer.schedule();
    expect(timer.delay).toBe(1000);
    vi.advanceTimersByTime(999);
    expect(polls).toBe(0);
    vi.advanceTimersByTime(1);
    expect(polls).toBe(1);
    vi.advanceTimersByTime(10_000);
    expect(polls).toBe(1);
  });

  it('backs off while idle and goes back to the interval on a change', () => {
    timer.schedule();
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      timer.settle(false);
      delays.push(timer.delay);
    }
    expect(delays).toEqual([2000, 4000, 8000, 12000, 12000]);
    timer.settle(true);
    expect(timer.delay).toBe(1000);
  });

  it('re-scheduling replaces the armed timer', () => {
    timer.schedule();
    vi.advanceTimersByTime(600);
    timer.schedule();
    vi.advanceTimersByTime(600);
    expect(polls).toBe(0);
    vi.advanceTimersByTime(400);
    expect(polls).toBe(1);
  });

  it('interval 0 disables it; a new interval restarts the back-off from it', () => {
    timer.settle(false);
    timer.interval = 0;
    timer.schedule();
    vi.advanceTimersByTime(120_000);
    expect(polls).toBe(0);
    timer.interval = 500;
    expect(timer.delay).toBe(500);
    timer.schedule();
    vi.advanceTimersByTime(500);
    expect(polls).toBe(1);
  });

  it('never fires once disposed', () => {
    timer.schedule();
    timer.dispose();
    expect(timer.isDisposed).toBe(true);
    timer.schedule();
    vi.advanceTimersByTime(120_000);
    expect(polls).toBe(0);
  });
});
