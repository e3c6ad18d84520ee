"""``train(...)``: the one call a notebook makes, and the ``TrainingJob`` handle it returns.

The job runs in a background thread (the Dask client is used synchronously there), so the
notebook stays responsive: ``job.progress`` / ``job.history`` update live, ``job.cancel()``
stops it, ``job.result()`` (or ``await job``) gives back the trained model as a CPU module in
this process. Works with any ``distributed`` cluster: pass a ``Client``, a scheduler address
(plus ``security=`` for TLS), or nothing to use the default client or, without one, this
device's own parallalx cluster as the main device.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import math
import threading
import uuid
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointStore, unpack
from .driver import Driver
from .errors import TrainingCancelledError, TrainingError
from .metrics import ProgressHub, Record
from .preflight import PreflightReport
from .spec import JobSpec, build_model, optimizer_factory, pack_user_objects
from .strategies import STRATEGIES

HISTORY_LIMIT = 100_000


class TrainingJob:
    """Handle on a running training job (thread-safe to read from the notebook).

    Attributes, updated live from the job's background thread:

    * ``state``: pending, running, restarting, finished, failed or cancelled;
    * ``progress``: the latest progress record (global step, loss, samples/s, communication
      share, stragglers, ETA, per-rank figures; see :mod:`.metrics`);
    * ``history``: every progress record so far, without the per-rank part;
    * ``events``: preflight, checkpoint, restart and state records;
    * ``preflight``: the latest :class:`PreflightReport` (one per attempt);
    * ``restarts``: how often the group was re-formed after losing a worker.
    """

    def __init__(self, job_id: str, hub: ProgressHub, store: CheckpointStore) -> None:
        self.id = job_id
        self._hub = hub
        self._store = store
        self._future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.state = "pending"
        self.progress: Record = {}
        self.history: list[Record] = []
        self.events: list[Record] = []
        self.preflight: PreflightReport | None = None
        self.restarts = 0
        hub.subscribe(self._record)

    def _record(self, rec: Record) -> None:
        with self._lock:
            kind = rec.get("kind")
            if kind == "progress":
                self.progress = rec
                if len(self.history) < HISTORY_LIMIT:
                    self.history.append({k: v for k, v in rec.items() if k != "ranks"})
                return
            self.events.append(rec)
            if kind == "preflight":
                self.preflight = PreflightReport.from_dict(rec["report"])
            elif kind == "restart":
                self.restarts += 1
            elif kind == "state":
                self.state = str(rec["state"])

    # ------------------------------------------------------------------ control
    def cancel(self) -> bool:
        """Ask the ranks to stop at their next control step; False if already done."""
        if self._future.done():
            return False
        self._cancel.set()
        return True

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> Any:
        """The trained model (CPU, in this process); re-raises the job's error."""
        return self._future.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(timeout)

    def subscribe(
        self, callback: Callable[[Record], Any], kinds: set[str] | None = None
    ) -> Callable[[], None]:
        """Receive every record (progress, preflight, checkpoint, restart, state)."""
        return self._hub.subscribe(callback, kinds)

    @property
    def checkpoint_path(self) -> Path | None:
        """Newest checkpoint file written for this job (None without ``checkpoint_dir``)."""
        return self._store.last_path

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self._future).__await__()

    def __repr__(self) -> str:
        p = self.progress
        step = f" step {p.get('global_step')}/{p.get('total_steps')}" if p else ""
        return f"<TrainingJob {self.id} {self.state}{step}>"


def _resolve_client(client: Any, security: Any) -> tuple[Any, bool]:
    """``(client, owned)``: the given one, a new one for an address, or this device's cluster.

    Without ``client``: the process's default Dask client if one exists, otherwise this
    device's own parallalx cluster as the main device (``cluster.connect.main_client``), which
    the job closes when it ends.
    """
    from distributed import Client, default_client

    if client is None:
        with contextlib.suppress(ValueError):
            return default_client(), False
        from ..cluster.connect import NoClusterError, main_client

        try:
            return main_client(), True
        except NoClusterError as exc:
            raise TrainingError(
                f"no Dask client given and no parallalx cluster on this device: {exc}. Pass "
                "client= (a Client or a scheduler address), or pair a device first"
            ) from None
    if isinstance(client, str):
        return Client(client, security=security, set_as_default=False), True
    return client, False


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
) -> TrainingJob:
    """Train ``model`` data-parallel on every worker of a Dask cluster; returns at once.

    ``model``/``dataset``/``loss_fn`` are objects or zero-argument factories; ``optimizer`` is
    a factory taking the parameters (e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``) or an
    optimizer instance whose class and defaults are reused. ``loss_fn(output, target)`` must
    return the mean over the batch. ``batch_size`` is the *global* batch, split between ranks
    in proportion to measured throughput (or ``shares``). ``strategy`` is ``auto`` or one of
    ``ddp``, ``ddp_fp16``, ``local_sgd``, ``fsdp``.

    Checkpoints are shipped to this process every ``checkpoint_every`` steps and at the end,
    kept in memory for recovery and written to ``checkpoint_dir`` if given (from which the job
    resumes when ``resume`` is true). A lost worker makes the job re-form with the rest (at most
    ``max_restarts`` times, never below ``min_workers``). A frozen worker is detected after
    ``group_timeout`` seconds. ``on_progress`` receives progress records.
    """
    if strategy != "auto" and strategy not in STRATEGIES:
        raise ValueError(f"strategy must be 'auto' or one of {STRATEGIES}, not {strategy!r}")
    for name, value in (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("min_workers", min_workers),
    ):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1")
    if max_restarts < 0 or checkpoint_every < 0:
        raise ValueError("max_restarts and checkpoint_every must be >= 0")
    if not (group_timeout > 0 and math.isfinite(group_timeout)):
        raise ValueError("group_timeout must be a positive number of seconds")

    job_id = uuid.uuid4().hex[:12]
    ship_model = copy.deepcopy(model) if _is_module(model) else model
    spec = JobSpec(
        job_id=job_id,
        user_objects=pack_user_objects(ship_model, dataset, loss_fn, optimizer_factory(optimizer)),
        epochs=int(epochs),
        global_batch=int(batch_size),
        strategy=strategy,
        seed=int(seed),
        shuffle=bool(shuffle),
        checkpoint_every=int(checkpoint_every),
        max_steps=max_steps,
        metrics_interval=float(metrics_interval),
        torch_threads=torch_threads,
        shares=list(shares) if shares is not None else None,
        local_sgd_every=local_sgd_every,
    )
    store = CheckpointStore(checkpoint_dir)
    if store.files():
        if not resume:
            raise ValueError(
                f"{checkpoint_dir} already holds checkpoints; pass resume=True to continue "
                "from them or choose another checkpoint_dir"
            )
        store.latest()  # load the newest checkpoint on disk
    hub = ProgressHub()
    job = TrainingJob(job_id, hub, store)
    if on_progress is not None:
        hub.subscribe(on_progress, {"progress"})
    dask_client, owned = _resolve_client(client, security)
    driver = Driver(
        dask_client,
        spec,
        store=store,
        hub=hub,
        cancel=job._cancel,
        min_workers=int(min_workers),
        max_restarts=int(max_restarts),
        group_timeout=float(group_timeout),
        settle_timeout=float(settle_timeout),
        heartbeat_timeout=float(heartbeat_timeout),
        probe_timeout=float(probe_timeout),
        workers=workers,
    )

    def run() -> None:
        try:
            final = driver.run()
            trained = _load_result(model, ship_model, final)
        except BaseException as exc:
            state = "cancelled" if isinstance(exc, TrainingCancelledError) else "failed"
            hub.emit({"kind": "state", "job_id": job_id, "state": state, "error": str(exc)})
            job._future.set_exception(exc)
        else:
            hub.emit({"kind": "state", "job_id": job_id, "state": "finished"})
            job._future.set_result(trained)
        finally:
            if owned:
                dask_client.close()

    threading.Thread(target=run, name=f"parallalx-train-{job_id}", daemon=True).start()
    return job


def _is_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _load_result(model: Any, shipped: Any, final: bytes) -> Any:
    """A CPU model in this process with the final weights (the caller's object is untouched)."""
    state = unpack(final)
    local = copy.deepcopy(shipped) if _is_module(model) else build_model(model)
    local = local.to("cpu")
    local.load_state_dict(state["model"])
    return local
