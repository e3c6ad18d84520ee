"""A job's speed and ETA, computed once where its records are made, for every surface.

Why here: each rank reports its throughput over its own last metrics window, and a window can
be a few milliseconds (a flush at a checkpoint) or include the first, slow steps (allocation,
warm-up), so the raw numbers jumped 10-50x between updates, and each surface (notebook, panel,
CLI) showed a different one of them. The driver smooths them here and puts the result in the
progress record; the server stores it, and every surface only formats it
(``text.speed_eta``, the panel's ``jobSpeedText``/``jobEtaText``).

:class:`RateSmoother` is the rate of one cumulative count over wall time: a windowed rate
(work done between an observation at least ``window_s`` old and the newest one, divided by
the time between them), then an exponentially-weighted mean whose weight grows with the time
since the last update. Observations carry the time the work was done (the producer's clock),
not the time they arrived, so a burst of late deliveries changes nothing; and the first
observation is only a baseline, so whatever happened before it (the slow first steps) is not
in the rate.

:class:`StreamRates` keeps one smoother per stream (a rank: its own clock, its own count) and
adds them up, so devices with skewed clocks never mix their time stamps.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable


class RateSmoother:
    """Smoothed rate of a cumulative count (see the module docstring)."""

    def __init__(
        self, window_s: float = 10.0, min_span_s: float = 1.0, half_life_s: float = 3.0
    ) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self.half_life_s = half_life_s
        self._points: deque[tuple[float, float]] = deque()
        self._rate: float | None = None
        self._rated_at: float | None = None

    def reset(self) -> None:
        """Forget everything (a new attempt: another group, other speeds)."""
        self._points.clear()
        self._rate = None
        self._rated_at = None

    @property
    def rate(self) -> float | None:
        """The smoothed rate per second; None until ``min_span_s`` of work was seen."""
        return self._rate

    @property
    def so_far(self) -> float | None:
        """``rate``, or for a run shorter than ``min_span_s`` its plain rate over what was
        seen: the last word on a job that ended before its rate settled."""
        if self._rate is not None or len(self._points) < 2:
            return self._rate
        (t0, d0), (t1, d1) = self._points[0], self._points[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def update(self, done: float, at: float) -> float | None:
        """Observe the cumulative count ``done`` at time ``at`` (seconds); returns ``rate``."""
        if not (math.isfinite(done) and math.isfinite(at)):
            return self._rate
        points = self._points
        if points and (done < points[-1][1] or at < points[-1][0]):
            self.reset()  # the count or the clock went back: a new run of the stream
        points.append((at, done))
        # the window starts at the newest observation at least window_s old
        while len(points) > 2 and points[1][0] <= at - self.window_s:
            points.popleft()
        t0, d0 = points[0]
        span = at - t0
        if span < self.min_span_s:
            return self._rate
        raw = (done - d0) / span
        if self._rate is None or self._rated_at is None:
            self._rate = raw
        else:
            weight = 1.0 - 0.5 ** (max(at - self._rated_at, 0.0) / self.half_life_s)
            self._rate += weight * (raw - self._rate)
        self._rated_at = at
        return self._rate


class StreamRates:
    """One :class:`RateSmoother` per stream (e.g. per rank), and their sum."""

    def __init__(self, **smoother: float) -> None:
        self._settings = smoother
        self._streams: dict[Hashable, RateSmoother] = {}
        self._done: dict[Hashable, float] = {}

    def reset(self) -> None:
        self._streams.clear()
        self._done.clear()

    def add(self, stream: Hashable, amount: float, at: float) -> float | None:
        """``amount`` more work of ``stream`` done by time ``at``; returns its rate."""
        self._done[stream] = self._done.get(stream, 0.0) + amount
        return self.observe(stream, self._done[stream], at)

    def observe(self, stream: Hashable, done: float, at: float) -> float | None:
        """The cumulative count ``done`` of ``stream`` at time ``at``; returns its rate."""
        smoother = self._streams.get(stream)
        if smoother is None:
            smoother = self._streams[stream] = RateSmoother(**self._settings)
        return smoother.update(done, at)

    def rate(self, stream: Hashable) -> float | None:
        smoother = self._streams.get(stream)
        return None if smoother is None else smoother.rate

    def _rates(self, final: bool) -> list[float]:
        rates = (s.so_far if final else s.rate for s in self._streams.values())
        return [r for r in rates if r is not None]

    def total(self, final: bool = False) -> float | None:
        """The sum of the streams' rates; None until any stream has one (``final``: the job
        ended, so a stream that never settled counts with its rate so far)."""
        rates = self._rates(final)
        return sum(rates) if rates else None

    def median(self, final: bool = False) -> float | None:
        """The median of the streams' rates (steps: every rank takes the same ones)."""
        rates = sorted(self._rates(final))
        if not rates:
            return None
        mid = len(rates) // 2
        return rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2


def eta_s(remaining: float | None, per_s: float | None) -> float | None:
    """Seconds for ``remaining`` units at ``per_s``; None when either is unknown."""
    if remaining is None or per_s is None or not per_s > 0 or not math.isfinite(per_s):
        return None
    return max(remaining, 0.0) / per_s


__all__ = ["RateSmoother", "StreamRates", "eta_s"]
