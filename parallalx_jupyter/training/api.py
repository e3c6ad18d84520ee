"""``train(...)``: the one call a notebook makes, and the ``TrainingJob`` handle it returns.

The job runs in a background thread (the Dask client is used synchronously there), so the
notebook stays responsive: ``job.progress`` / ``job.history`` update live, ``job.cancel()``
stops it, ``job.result()`` (or ``await job``) gives back the trained model as a CPU module in
this process. Works with any ``distributed`` cluster: pass a ``Client``, a scheduler address
(plus ``security=`` for TLS), or nothing to use the default client or, without one, this
device's own parallalx cluster as the main device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..jobs.handle import Job
from .checkpoint import CheckpointStore
from .errors import TrainingError
from .metrics import ProgressHub, Record
from .preflight import PreflightReport


class TrainingJob(Job):
    """Handle on a running training job (thread-safe to read from the notebook).

    Besides :class:`~parallalx_jupyter.jobs.handle.Job`'s ``state``, ``progress`` (global step,
    loss, samples/s, communication share, stragglers, ETA, per-rank figures; see
    :mod:`.metrics`), ``history`` and ``events``:

    * ``preflight``: the latest :class:`PreflightReport` (one per attempt);
    * ``restarts``: how often the group was re-formed after losing a worker;
    * ``checkpoint_path``: the newest checkpoint written for this job;
    * ``timeline``: seconds from the ``train()`` call to each phase of the latest attempt
      (probe, ship, rendezvous, rank process, process group, build, preflight, first step;
      at the end also the last step, the final state packed on rank 0 and received here).

    ``result()`` is the trained model as a CPU module in this process.
    """

    def __init__(
        self, job_id: str, hub: ProgressHub, store: CheckpointStore, name: str = "training"
    ) -> None:
        self.preflight: PreflightReport | None = None
        self.restarts = 0
        self.timeline: dict[str, float] = {}
        self.created_at = time.time()
        self._store = store
        super().__init__(job_id, "train", name, hub)

    def _on_record(self, rec: Record) -> None:
        kind = rec.get("kind")
        if kind == "preflight":
            self.preflight = PreflightReport.from_dict(rec["report"])
        elif kind == "restart":
            self.restarts += 1
        elif kind == "timeline":
            marks = rec.get("marks") or {}
            self.timeline = {k: round(v - self.created_at, 4)
                             for k, v in sorted(marks.items(), key=lambda kv: kv[1])}

    @property
    def checkpoint_path(self) -> Path | None:
        """Newest checkpoint file written for this job (None without ``checkpoint_dir``)."""
        return self._store.last_path


def train(
    model: Any,
    dataset: Any,
    loss_fn: Any,
    optimizer: Any,
    *,
    epochs: int = 1,
    batch_size: int = 64,
    strategy: str = "auto",
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    client: Any = None,
    min_workers: int = 1,
    max_restarts: int = 3,
    group_timeout: float = 60.0,
    on_progress: Callable[[Record], Any] | None = None,
    security: Any = None,
    workers: Sequence[str] | None = None,
    seed: int = 0,
    shuffle: bool = True,
    max_steps: int | None = None,
    resume: bool = True,
    shares: Sequence[float] | None = None,
    local_sgd_every: int | None = None,
    torch_threads: int | None = None,
    metrics_interval: float = 0.5,
    settle_timeout: float = 5.0,
    heartbeat_timeout: float = 15.0,
    probe_timeout: float = 60.0,
    name: str | None = None,
    report: Any = True,
) -> TrainingJob:
    """Train ``model`` data-parallel on every worker of a Dask cluster; returns at once.

    ``model``/``dataset``/``loss_fn`` are objects or zero-argument factories; ``optimizer`` is
    a factory taking the parameters (e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``) or an
    optimizer instance whose class and defaults are reused. ``loss_fn(output, target)`` must
    return the mean over the batch. ``batch_size`` is the *global* batch, split between ranks
    in proportion to measured throughput (or ``shares``: one weight per worker, in rank order,
    i.e. the preflight report's; a wrong count is refused). ``strategy`` is ``auto`` or one of
    ``ddp``, ``ddp_fp16``, ``local_sgd``, ``fsdp``.

    Checkpoints are shipped to this process every ``checkpoint_every`` steps and at the end,
    kept in memory for recovery and written to ``checkpoint_dir`` if given (from which the job
    resumes when ``resume`` is true). A lost worker makes the job re-form with the rest (at most
    ``max_restarts`` times, never below ``min_workers``). A frozen worker is detected after
    ``group_timeout`` seconds. ``on_progress`` receives progress records.

    Training is the ``train`` workload (:mod:`parallalx_jupyter.workloads.train`): the job is
    listed by this device's server (``name`` shows there; ``report=False`` keeps it local), so
    the panel, the CLI and other kernels see its progress and can cancel it.
    """
    from ..jobs.client import NoClientError
    from ..workloads.runner import start
    from ..workloads.train import TrainWorkload

    params = {
        "model": model, "dataset": dataset, "loss_fn": loss_fn, "optimizer": optimizer,
        "epochs": epochs, "batch_size": batch_size, "strategy": strategy,
        "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir),
        "checkpoint_every": checkpoint_every, "min_workers": min_workers,
        "max_restarts": max_restarts, "group_timeout": group_timeout,
        "on_progress": on_progress, "workers": None if workers is None else list(workers),
        "seed": seed, "shuffle": shuffle, "max_steps": max_steps, "resume": resume,
        "shares": None if shares is None else list(shares),
        "local_sgd_every": local_sgd_every, "torch_threads": torch_threads,
        "metrics_interval": metrics_interval, "settle_timeout": settle_timeout,
        "heartbeat_timeout": heartbeat_timeout, "probe_timeout": probe_timeout,
    }
    try:
        job = start(TrainWorkload(), params, client=client, security=security, name=name,
                    report=report)
    except NoClientError as err:
        raise TrainingError(str(err)) from None
    assert isinstance(job, TrainingJob)
    return job
