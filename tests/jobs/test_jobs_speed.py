"""The speed and ETA every surface shows are smoothed once, where the job runs (jobs/speed.py).

The rank messages these tests feed are shaped like ``training.metrics.RankMetrics.flush``'s:
each covers the rank's own last window, which may be a few milliseconds (a flush at a
checkpoint) or include the slow first steps; their raw rates jump by 10-50x.
"""

from __future__ import annotations

import random

import pytest

from parallalx_jupyter.jobs.speed import RateSmoother, StreamRates, eta_s

TRUE_RATE = 400.0  # samples/s of the steady part


def _bursty_windows(seed: int = 0) -> list[tuple[float, int, float]]:
    """(time stamp of the window's end, samples in it, its raw rate): steps of 32 samples
    every 0.08 s after a slow first window (warm-up), reported after 1-10 steps with a time
    stamp taken up to 75 ms late (a busy sender thread), as the ranks' flushes are."""
    rng = random.Random(seed)
    step_s, batch = 32 / TRUE_RATE, 32
    start = 103.0  # the first 20 samples took 3 s
    out = [(start, 20, 20 / 3.0)]
    last, steps = start, 0
    while steps < 600:
        n = rng.choice([1, 1, 2, 5, 10])
        steps += n
        stamp = start + steps * step_s + rng.uniform(0.0, 0.075)
        out.append((stamp, n * batch, n * batch / max(stamp - last, 1e-6)))
        last = stamp
    return out


def test_bursty_windows_give_a_stable_rate() -> None:
    windows = _bursty_windows()
    raw = [r for _, _, r in windows]
    assert max(raw) / min(raw) > 10  # what the surfaces used to show (warm-up, short windows)
    assert max(raw[1:]) / min(raw[1:]) > 5

    rates = StreamRates()
    shown = [rates.add("rank0", n, at) for at, n, _ in windows]
    settled = [r for r in shown[20:] if r is not None]
    assert len(settled) == len(shown) - 20
    assert all(abs(r - TRUE_RATE) / TRUE_RATE < 0.1 for r in settled), (
        min(settled), max(settled))
    # consecutive values never jump
    assert max(abs(b - a) / a for a, b in zip(settled, settled[1:], strict=False)) < 0.05


def test_the_slow_first_steps_are_only_a_baseline() -> None:
    smoother = RateSmoother(min_span_s=1.0)
    assert smoother.update(20, 10.0) is None  # 20 samples after a 10 s start: no rate yet
    assert smoother.update(220, 10.5) is None  # not a second of work seen yet
    assert smoother.update(420, 11.0) == pytest.approx(400.0)  # the warm-up is not in it


def test_arrival_bursts_do_not_matter_only_work_time_does() -> None:
    """Messages arrive in bursts (the driver reads them late, together); the producer's time
    stamps say when the work was done, so the same windows in any grouping give one rate."""
    windows = _bursty_windows(1)
    one = StreamRates()
    for at, n, _ in windows:
        one.add(0, n, at)
    grouped = StreamRates()
    for i in range(0, len(windows), 9):  # nine at a time, as after a pause
        for at, n, _ in windows[i:i + 9]:
            grouped.add(0, n, at)
    assert grouped.total() == pytest.approx(one.total())


def test_ranks_add_up_each_on_its_own_clock() -> None:
    rates = StreamRates(min_span_s=1.0)
    for k in range(30):
        rates.add("fast", 300, 1000.0 + k * 0.5)  # 600/s
        rates.add("slow", 100, 5.0 + k * 0.5)  # 200/s, its clock 995 s behind
    assert rates.total() == pytest.approx(800.0)
    assert rates.rate("fast") == pytest.approx(600.0)


def test_a_count_that_goes_back_starts_over_and_eta_needs_both_numbers() -> None:
    smoother = RateSmoother(min_span_s=1.0)
    for k in range(5):
        smoother.update(100 * k, float(k))
    assert smoother.rate == pytest.approx(100.0)
    assert smoother.update(50, 5.0) is None  # resumed from an earlier checkpoint
    assert eta_s(100, 50.0) == pytest.approx(2.0)
    assert eta_s(100, None) is None and eta_s(None, 5.0) is None and eta_s(10, 0.0) is None


def test_a_job_shorter_than_the_settling_span_still_ends_with_a_speed() -> None:
    """A job of half a second never settles a smoothed rate; its last record (``final``)
    carries the plain rate it had, so a notebook printing it has a number."""
    rates = StreamRates(min_span_s=1.0)
    for rank in (0, 1):
        rates.add(rank, 0, 100.0)
        rates.add(rank, 64, 100.25)
        rates.add(rank, 64, 100.5)
    assert rates.total() is None and rates.median() is None  # nothing shown while running
    assert rates.total(final=True) == 512.0
    assert rates.median(final=True) == 256.0
