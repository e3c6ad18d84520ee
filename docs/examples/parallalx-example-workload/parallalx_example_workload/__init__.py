"""Estimate pi by Monte Carlo across the cluster: the smallest complete parallalx workload.

It shows every part of the protocol (docs/workloads.md): a JSON-Schema for the parameters,
splitting the work into Dask tasks sized to each device, progress, cancel, and what happens
when a device drops out (its chunks are simply submitted again; every chunk is counted once).
"""

from __future__ import annotations

import random
from typing import Any

from parallalx_jupyter.workloads import JobContext, Workload


def count_inside(seed: int, n: int) -> int:
    """One chunk, run on a worker: how many of n random points fall in the unit circle."""
    rng = random.Random(seed)
    return sum(1 for _ in range(n) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)


class MonteCarloPi(Workload):
    name = "pi"
    description = "Estimate pi by Monte Carlo sampling, chunks spread over the devices"
    parameters = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "samples": {"type": "integer", "minimum": 1000, "maximum": 10**10,
                        "default": 1_000_000},
            "chunk": {"type": "integer", "minimum": 100, "default": 100_000,
                      "description": "points per task"},
            "seed": {"type": "integer", "default": 0},
        },
    }

    def job_name(self, params: dict[str, Any]) -> str:
        return f"pi from {params['samples']:,} samples"

    def run(self, ctx: JobContext, params: dict[str, Any]) -> float:
        from distributed import as_completed

        n, chunk = params["samples"], params["chunk"]
        sizes = [min(chunk, n - start) for start in range(0, n, chunk)]
        # chunk i always uses seed + i: a chunk redone after a lost device gives the same count
        futures = {ctx.client.submit(count_inside, params["seed"] + i, size, pure=False): size
                   for i, size in enumerate(sizes)}
        inside = done = 0
        for fut in as_completed(futures, loop=ctx.client.loop):
            if ctx.cancelled:
                ctx.client.cancel(list(futures))
                ctx.check_cancelled()
            inside += fut.result()  # Dask re-runs a chunk whose worker was lost
            done += futures[fut]
            estimate = 4.0 * inside / done
            ctx.progress(step=done, total=n, message=f"pi ~ {estimate:.6f} after {done:,} points",
                         workers=len(ctx.workers()))
        return 4.0 * inside / n

    def summarize(self, result: Any) -> dict[str, Any]:
        return {"pi": result}
