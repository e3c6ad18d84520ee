"""The notebook-side control loop of one training job: attempts, monitoring, restarts.

One attempt = probe the usable workers (versions, responsiveness), scatter the job once, submit
one pinned rank task per worker (after a rendezvous task that opens rank 0's TCPStore), then
pump metrics and rank 0's shipped checkpoints (Dask events) until the ranks finish,
the user cancels, or something fails. Failures are settled and classified by
:mod:`.recovery`; infrastructure failures re-form the group from the survivors (plus any worker
that joined meanwhile) and resume from the newest checkpoint, at most ``max_restarts`` times.

Everything here runs in the job's background thread with the synchronous Dask client, so the
notebook's event loop is never blocked.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from distributed import Client, Future, wait

from ..wire import from_wire
from .checkpoint import CheckpointStore
from .errors import (
    NotEnoughWorkersError,
    RestartsExhaustedError,
    TrainingCancelledError,
)
from .launcher import (
    RankSpec,
    choose_backend,
    close_rendezvous,
    host_of,
    open_rendezvous,
    order_workers,
    ship_to_each,
    submit_ranks,
)
from .metrics import ProgressAggregator, ProgressHub
from .options import RecoveryOptions
from .preflight import PreflightReport, check_versions, probe_environment, probe_task
from .rank import run_rank
from .recovery import AttemptOutcome, WorkerWatch, classify, settle
from .spec import AttemptPayload, JobSpec

logger = logging.getLogger(__name__)


class Driver:
    """Runs a job to completion; ``run()`` returns the final checkpoint bytes."""

    def __init__(
        self,
        client: Client,
        job: JobSpec,
        *,
        store: CheckpointStore,
        hub: ProgressHub,
        cancel: threading.Event,
        recovery: RecoveryOptions | None = None,
        workers: Sequence[str] | None = None,
    ) -> None:
        self.client = client
        self.job = job
        self.store = store
        self.hub = hub
        self.cancel_event = cancel
        recovery = recovery or RecoveryOptions()
        self.min_workers = recovery.min_workers
        self.max_restarts = recovery.max_restarts
        self.group_timeout = float(recovery.group_timeout)
        self.settle_timeout = float(recovery.settle_timeout)
        self.probe_timeout = float(recovery.probe_timeout)
        self.only_workers = set(workers) if workers else None
        self.watch = WorkerWatch(client, stale_after_s=float(recovery.heartbeat_timeout))
        #: wall-clock times of the phases of an attempt (merged with rank 0's: ``timeline``)
        self.marks: dict[str, float] = {}
        self.aggregator = ProgressAggregator(job.job_id, total_steps=0)
        self.excluded: set[str] = set()
        self.preflight: PreflightReport | None = None
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._shipped: queue.Queue[dict[str, Any]] = queue.Queue()
        self._chunks: dict[tuple[Any, Any], dict[int, bytes]] = {}
        self._final: dict[str, Any] | None = None
        self._cleanup: list[Future] = []

    # ------------------------------------------------------------------ plumbing
    def _emit(self, kind: str, **fields: Any) -> None:
        self.hub.emit({"kind": kind, "job_id": self.job.job_id, "time": time.time(), **fields})

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        # Runs on the client's event loop: only hand over, never block.
        self._events.put(event[1])

    def _on_ship(self, event: tuple[float, dict[str, Any]]) -> None:
        self._shipped.put(event[1])

    def _pump(self, force: bool = False) -> None:
        """Process metric events and rank 0's shipped messages received so far.

        ``force`` is kept for callers that want everything delivered so far: events are pushed
        by the scheduler, so there is nothing to poll and it changes nothing.
        """
        while True:
            try:
                msg = self._events.get_nowait()
            except queue.Empty:
                break
            if msg.get("total_steps"):
                self.aggregator.total_steps = int(msg["total_steps"])
            record = self.aggregator.ingest(msg)
            if record is not None:
                self.hub.emit(record)
        while True:
            try:
                msg = self._shipped.get_nowait()
            except queue.Empty:
                break
            self._handle_ship(msg)

    def _handle_ship(self, msg: dict[str, Any]) -> None:
        """Reassemble chunked checkpoints (``rank.ship_messages``) and handle complete ones."""
        if msg.get("kind") != "chunk":
            self._handle_control(msg)
            return
        key = (msg.get("attempt"), msg.get("seq"))
        parts = self._chunks.setdefault(key, {})
        parts[int(msg["index"])] = bytes(msg["data"])
        if len(parts) < int(msg["count"]):
            return
        del self._chunks[key]
        whole = {k: v for k, v in msg.items() if k not in ("seq", "index", "count", "of")}
        whole["kind"] = msg["of"]
        whole["data"] = b"".join(parts[i] for i in range(int(msg["count"])))
        self._handle_control(whole)
        self._drop_topics(delete=False)

    def _handle_control(self, msg: dict[str, Any]) -> None:
        kind = msg.get("kind")
        if kind == "preflight":
            self.preflight = PreflightReport.from_dict(msg["report"])
            self._emit(
                "preflight",
                attempt=msg.get("attempt"),
                report=msg["report"],
                text=str(self.preflight),
            )
        elif kind == "timeline":
            marks = {**self.marks, **msg.get("marks", {})}
            self._emit("timeline", attempt=msg.get("attempt"), marks=marks)
        elif kind in ("checkpoint", "final"):
            path = self.store.put(msg["data"], int(msg["global_step"]))
            if kind == "final":
                self._final = msg
                # the end of the run joins the timeline: last step, state packed, received
                marks = {**self.marks, **msg.get("marks", {}), "final_received": time.time()}
                self._emit("timeline", attempt=msg.get("attempt"), marks=marks)
            error = self.store.write_error if path is None else None
            if error:
                logger.warning("checkpoint kept in memory only, not written: %s", error)
            self._emit(
                "checkpoint",
                attempt=msg.get("attempt"),
                global_step=int(msg["global_step"]),
                final=kind == "final",
                path=str(path) if path else None,
                **({"write_error": error} if error else {}),
            )

    # ------------------------------------------------------------------ phases
    def _candidates(self) -> list[str]:
        alive = self.watch.alive()
        if self.only_workers is not None:
            alive &= self.only_workers
        return sorted(alive - self.excluded)

    def _require(self, usable: Sequence[str], stage: str) -> None:
        if len(usable) < self.min_workers:
            lost = f"; lost during this job: {sorted(self.excluded)}" if self.excluded else ""
            raise NotEnoughWorkersError(
                f"need at least {self.min_workers} worker(s) to train, {len(usable)} usable "
                f"{stage}: {sorted(usable)}{lost}"
            )

    def _probe(self, candidates: Sequence[str], attempt: int) -> dict[str, dict[str, Any]]:
        """Versions and responsiveness of each candidate (non-responders are excluded)."""
        futs = {
            w: self.client.submit(
                probe_task,
                key=f"parallalx-probe-{self.job.job_id}-{attempt}-{i}",
                workers=[w],
                allow_other_workers=False,
                pure=False,
            )
            for i, w in enumerate(candidates)
        }
        deadline = time.monotonic() + self.probe_timeout
        while time.monotonic() < deadline:
            pending = [w for w, f in futs.items() if f.status == "pending"]
            # A fresh worker importing torch can miss heartbeats for seconds: only the long
            # heartbeat timeout (or leaving the cluster) ends the wait early.
            if not pending or set(pending) <= self.watch.unreachable(pending):
                break
            if self.cancel_event.is_set():
                break
            time.sleep(0.05)
        envs = {}
        for w, f in futs.items():
            if f.status == "finished":
                try:
                    envs[w] = from_wire(f.result())
                except Exception as exc:  # a device that answers with something else
                    logger.warning("worker %s answered the probe unusably (%s); excluded", w, exc)
                    self.excluded.add(w)
            else:
                logger.warning("worker %s did not answer the probe (%s); excluded", w, f.status)
                self.excluded.add(w)
        with contextlib.suppress(Exception):
            self.client.cancel(list(futs.values()), force=True)
        return envs

    def _device_for(self, env: dict[str, Any], backend: str, mixed: bool) -> str:
        if not env.get("cuda_available"):
            return "cpu"
        if backend == "nccl":
            return "cuda:0"
        wants_fsdp = (self.job.strategy == "fsdp") or (
            self.preflight is not None and self.preflight.strategy == "fsdp"
        )
        return "cpu" if (mixed and wants_fsdp) else "cuda:0"

    # ------------------------------------------------------------------ main loop
    def run(self) -> bytes:
        self.client.subscribe_topic(self.job.metrics_topic, self._on_event)
        self.client.subscribe_topic(self.job.ship_topic, self._on_ship)
        try:
            return self._loop()
        finally:
            for topic in (self.job.metrics_topic, self.job.ship_topic):
                with contextlib.suppress(Exception):
                    self.client.unsubscribe_topic(topic)
            self._drop_topics(delete=True)
            self._finish_cleanup()

    def _drop_topics(self, delete: bool) -> None:
        """Free the scheduler's stored copies of this job's events (delivery is unaffected).

        After each complete checkpoint the ship topic is truncated; at the end both topics are
        removed. Needs ``run_on_scheduler``; where a cluster forbids it, the scheduler's own
        bounded event log applies.
        """
        topics = [self.job.ship_topic] + ([self.job.metrics_topic] if delete else [])
        try:
            self.client.run_on_scheduler(_drop_topics, topics=topics, delete=delete)
        except Exception:
            logger.debug("could not drop event topics on the scheduler", exc_info=True)

    def _finish_cleanup(self, timeout: float = 5.0) -> None:
        """Wait briefly for the rendezvous cleanup tasks, then forget them."""
        if not self._cleanup:
            return
        with contextlib.suppress(Exception):
            wait(self._cleanup, timeout=timeout)
        with contextlib.suppress(Exception):
            self.client.cancel([f for f in self._cleanup if f.status == "pending"], force=True)
        self._cleanup.clear()

    def _mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def _loop(self) -> bytes:
        self._mark("driver_start")
        driver_env = probe_environment()
        attempt = 0
        fixed: tuple[str, int] | None = None
        while True:
            if self.cancel_event.is_set():
                raise TrainingCancelledError("cancelled before training started")
            candidates = self._candidates()
            self._require(candidates, "on the cluster")
            envs = self._probe(candidates, attempt)
            self._mark("probed")
            self._require(list(envs), "after probing the workers")
            check_versions(envs, driver_env)
            workers = order_workers(list(envs), prefer_host=host_of(self.client.scheduler.address))
            if len(workers) > self.job.global_batch:  # every rank needs >= 1 sample per step
                logger.warning(
                    "batch size %d < %d workers: training on the first %d",
                    self.job.global_batch,
                    len(workers),
                    self.job.global_batch,
                )
                workers = workers[: self.job.global_batch]
                self._require(workers, f"with a global batch of {self.job.global_batch}")
            shares = explicit_shares(self.job.shares, workers, attempt)
            backend = choose_backend([_gpu_of(envs[w]) for w in workers])
            mixed = len({bool(envs[w].get("cuda_available")) for w in workers}) > 1
            resume = self.store.latest()
            self._final = None
            self._emit(
                "state",
                state="running" if attempt == 0 else "restarting",
                attempt=attempt,
                workers=workers,
                resume_step=self.store.global_step if resume else 0,
            )
            outcome = self._attempt(
                attempt, workers, envs, backend, mixed, resume, fixed, shares
            )
            if self.preflight is not None and fixed is None:
                fixed = (self.preflight.strategy, self.preflight.local_sgd_every)
            if outcome.status == "finished":
                assert self._final is not None
                return bytes(self._final["data"])
            if outcome.status == "cancelled":
                raise TrainingCancelledError(
                    "training was cancelled"
                    + (f" at step {self._final['global_step']}" if self._final else "")
                )
            if outcome.status == "user_error":
                assert outcome.error is not None
                raise outcome.error
            self.excluded |= outcome.lost
            attempt += 1
            if attempt > self.max_restarts:
                raise RestartsExhaustedError(
                    f"giving up after {self.max_restarts} restart(s): {outcome.detail}"
                ) from outcome.error
            failed_at = self.aggregator.max_step
            resume_step = max(self.store.global_step, 0)
            self._emit(
                "restart",
                attempt=attempt,
                reason=outcome.detail,
                lost_workers=sorted(outcome.lost),
                failed_at_step=failed_at,
                resume_step=resume_step,
                repeated_steps=max(failed_at - resume_step, 0),
            )
            logger.warning("training attempt %d failed (%s); re-forming", attempt, outcome.detail)

    def _attempt(
        self,
        attempt: int,
        workers: list[str],
        envs: dict[str, dict[str, Any]],
        backend: str,
        mixed: bool,
        resume: bytes | None,
        fixed: tuple[str, int] | None,
        shares: list[float] | None = None,
    ) -> AttemptOutcome:
        payload = AttemptPayload(
            job=self.job,
            resume=resume,
            strategy=fixed[0] if fixed else None,
            local_sgd_every=(fixed[1] or None) if fixed else None,
            shares=shares,
        )
        master = host_of(workers[0])
        world = len(workers)
        port = 0  # set by the rendezvous task before any spec is made

        def make_spec(rank: int, addr: str) -> RankSpec:
            return RankSpec(
                job_id=self.job.job_id,
                attempt=attempt,
                rank=rank,
                world_size=world,
                worker=addr,
                master_host=master,
                backend=backend,
                timeout_s=self.group_timeout,
                device=self._device_for(envs[addr], backend, mixed),
                master_port=port,
                gloo_tls=bool(envs[addr].get("gloo_tls")),
            )

        self.aggregator.new_attempt(attempt)
        payload_futures: dict[str, Future] = {}
        futures: list[Future] = []
        try:
            try:
                # One copy per worker, each sent from here: never replicated between workers,
                # so no device ever decodes data that another device handed it.
                payload_futures = ship_to_each(self.client, payload, workers)
            except Exception as exc:  # a worker vanished between probe and scatter
                return AttemptOutcome(
                    "infra",
                    lost=self.watch.gone(workers),
                    error=exc,
                    detail=f"could not ship the job: {exc!r}",
                )
            self._mark("shipped")
            port, failure = self._open_rendezvous(attempt, workers)
            if failure is not None:
                return failure
            self._mark("rendezvous")
            futures = submit_ranks(
                self.client, run_rank, workers, make_spec, per_worker=payload_futures
            )
            self._mark("submitted")
            return self._monitor(futures, workers)
        finally:
            if futures:
                with contextlib.suppress(Exception):
                    self.client.cancel([f for f in futures if f.status == "pending"], force=True)
            for fut in payload_futures.values():
                fut.release()
            self._close_rendezvous(attempt, workers[0])

    def _open_rendezvous(
        self, attempt: int, workers: list[str]
    ) -> tuple[int, AttemptOutcome | None]:
        """Open rank 0's TCPStore with a pinned task on its worker; (port, failure)."""
        fut = self.client.submit(
            open_rendezvous,
            self.job.job_id,
            attempt,
            host_of(workers[0]),
            self.group_timeout,
            # unclaimed stores close themselves: rank 0's task should start long before this
            self.probe_timeout + 2 * self.group_timeout,
            key=f"parallalx-rdzv-{self.job.job_id}-{attempt}",
            workers=[workers[0]],
            allow_other_workers=False,
            pure=False,
            retries=0,
        )
        deadline = time.monotonic() + self.probe_timeout + self.group_timeout
        while fut.status == "pending":
            gone = self.watch.gone(workers[:1])
            if gone or time.monotonic() > deadline or self.cancel_event.is_set():
                with contextlib.suppress(Exception):
                    self.client.cancel([fut], force=True)
                if self.cancel_event.is_set():
                    return 0, AttemptOutcome("cancelled")
                return 0, AttemptOutcome(
                    "infra",
                    lost=gone or self.watch.unreachable(workers[:1]) or set(workers[:1]),
                    detail=f"rank 0's worker {workers[0]} did not open the rendezvous store",
                )
            self._pump()
            time.sleep(0.02)
        try:
            return int(fut.result()), None
        except Exception as exc:
            return 0, AttemptOutcome(
                "infra",
                lost=self.watch.gone(workers),
                error=exc,
                detail=f"could not open the rendezvous store on {workers[0]}: {exc!r}",
            )
        finally:
            fut.release()

    def _close_rendezvous(self, attempt: int, worker: str) -> None:
        """Close the attempt's store if rank 0 never claimed it (its worker died: nothing to do)."""
        if worker in self.watch.gone([worker]):
            return
        with contextlib.suppress(Exception):
            self._cleanup.append(
                self.client.submit(
                    close_rendezvous,
                    self.job.job_id,
                    attempt,
                    key=f"parallalx-rdzv-close-{self.job.job_id}-{attempt}",
                    workers=[worker],
                    allow_other_workers=False,
                    pure=False,
                    retries=0,
                )
            )

    def _monitor(self, futures: list[Future], workers: list[str]) -> AttemptOutcome:
        hang_limit = self.group_timeout + self.settle_timeout
        cancel_deadline: float | None = None
        unreachable_since: float | None = None
        while True:
            self._pump()
            if self.cancel_event.is_set() and cancel_deadline is None:
                self.client.cancel(futures)
                # ranks notice within control_every steps; allow a collective timeout on top
                cancel_deadline = time.monotonic() + self.group_timeout + self.settle_timeout
            if cancel_deadline is not None:
                if self._final is not None or time.monotonic() > cancel_deadline:
                    return AttemptOutcome("cancelled")
                self._wait_ranks(futures, 0.1)
                continue
            statuses = [f.status for f in futures]
            if all(s == "finished" for s in statuses):
                return self._finish(futures, workers)
            if statuses[0] == "finished" and self._final is not None:
                # The final state is gathered collectively: every rank reached the end. A rank
                # whose task cannot report (e.g. its worker froze just now) changes nothing.
                return self._finish(futures, workers)
            errored = any(s in ("error", "lost", "cancelled") for s in statuses)
            pending = [w for f, w in zip(futures, workers, strict=True) if f.status == "pending"]
            bad = self.watch.unreachable(pending)
            if bad and unreachable_since is None:
                unreachable_since = time.monotonic()
            elif not bad:
                unreachable_since = None
            gone = self.watch.gone(pending)
            hung = unreachable_since is not None and (
                time.monotonic() - unreachable_since > hang_limit
            )
            if errored or gone or hung:
                trigger = (
                    f"rank states {statuses}" if errored else
                    f"worker(s) left the cluster: {sorted(gone)}" if gone else
                    f"no heartbeat from {sorted(bad)} for {hang_limit:.0f}s"
                )  # fmt: skip
                logger.info("attempt failing (%s); settling", trigger)
                lost = settle(
                    futures,
                    workers,
                    self.watch,
                    stale_s=min(self.watch.stale_after_s, max(2.0, self.group_timeout / 2)),
                    max_wait_s=self.group_timeout + self.settle_timeout,
                    pump=self._pump,
                )
                self._pump(force=True)
                outcome = classify(futures, workers, lost)
                outcome.detail = f"{outcome.detail} [{trigger}]"
                return outcome
            self._wait_ranks(futures, 0.1)

    def _wait_ranks(self, futures: list[Future], timeout: float) -> None:
        # Plain sleep: a Dask wait() returns at once as soon as any rank has finished.
        time.sleep(timeout)

    def _finish(self, futures: list[Future], workers: list[str]) -> AttemptOutcome:
        deadline = time.monotonic() + 30.0
        while self._final is None and time.monotonic() < deadline:
            self._pump(force=True)
            if self._final is None:
                time.sleep(0.05)
        if self._final is None:
            return AttemptOutcome(
                "infra",
                error=RuntimeError("rank 0 finished without shipping its final state"),
                detail="final state never arrived",
            )
        if self._final.get("cancelled"):
            return AttemptOutcome("cancelled")
        # The final state is the last word on progress: the ranks' last metrics may still be
        # on their way when it arrives (they travel as separate events).
        self._pump(force=True)
        final_step = int(self._final.get("global_step", 0))
        if final_step > self.aggregator.max_step and self.aggregator.ranks:
            self.aggregator.max_step = final_step
            self.hub.emit(self.aggregator.snapshot())
        return AttemptOutcome("finished")


def explicit_shares(
    shares: Sequence[float] | None, workers: Sequence[str], attempt: int
) -> list[float] | None:
    """The job's explicit batch shares for this attempt's ranks, checked before anything runs.

    A wrong count is the caller's mistake and fails at once (the ranks would only discover it
    after the preflight, and the driver would retry it as a lost device). After a device is
    lost the shares no longer name the ranks, so the survivors' measured speeds decide.
    """
    if shares is None:
        return None
    if len(shares) == len(workers):
        if not sum(shares) > 0:
            raise ValueError("shares must not all be zero")
        return list(shares)
    if attempt == 0:
        raise ValueError(
            f"shares has {len(shares)} entries for {len(workers)} workers; give one per "
            f"worker in rank order ({', '.join(workers)}) or leave shares out"
        )
    logger.warning(
        "shares were given for %d workers, %d remain: splitting by measured speed",
        len(shares), len(workers),
    )
    return None


def _drop_topics(dask_scheduler: Any, topics: list[str], delete: bool) -> None:
    """On the scheduler: forget stored events of ``topics`` (subscribers are not affected)."""
    broker = getattr(dask_scheduler, "_broker", None)
    if broker is None:
        return
    for topic in topics:
        broker.truncate(topic)
        known = broker._topics  # noqa: SLF001 - no public way to drop a topic
        if delete and topic in known and not known[topic].subscribers:
            del known[topic]


def _gpu_of(env: dict[str, Any]) -> str | None:
    """The GPU a worker's rank would use, or None (older probes carry no UUID: use the worker)."""
    if not env.get("cuda_available"):
        return None
    return str(env.get("gpu_uuid") or env.get("worker") or id(env))
