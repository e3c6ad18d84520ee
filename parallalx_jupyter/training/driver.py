"""The notebook-side control loop of one training job: attempts, monitoring, restarts.

One attempt = probe the usable workers (versions, responsiveness), scatter the job once, submit
one pinned rank task per worker (after a rendezvous task that opens rank 0's TCPStore), then
pump metrics and rank 0's shipped checkpoints (Dask events) until the ranks finish,
the user cancels, or something fails. Failures are settled and classified by
:mod:`.recovery`; infrastructure failures re-form the group from the survivors (plus any worker
that joined meanwhile) and resume from the newest checkpoint, at most ``max_restarts`` times.

What the job shows meanwhile (``state`` records): ``running``, then ``recovering`` from the
moment a loss is settled (naming the lost devices and why, so nobody watches a stale ETA),
and ``running`` again once the re-formed group's preflight or first step arrives. A caller who
asked for ``auto`` gets the strategy decided again for the devices that remain (the preflight
report's reason says so); an explicit strategy is kept.

Everything here runs in the job's background thread with the synchronous Dask client, so the
notebook's event loop is never blocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from distributed import Client, Future, wait

from ..jobs.speed import StreamRates, eta_s
from ..jobs.topics import JobTopics
from ..text import printable
from ..wire import from_wire
from .checkpoint import CheckpointStore
from .errors import (
    NotEnoughWorkersError,
    RestartsExhaustedError,
    TrainingCancelledError,
    UnknownWorkersError,
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
from .preflight import PreflightReport, check_versions, driver_environment, probe_task
from .rank import abort_key, run_rank
from .recovery import (
    QUICK_STALE_S,
    AttemptOutcome,
    WorkerWatch,
    classify,
    device_label,
    settle,
    silent_losses,
)
from .spec import AttemptPayload, JobSpec

logger = logging.getLogger(__name__)

NAMES_WAIT_S = 1.0  # how long the ranks' payload waits for a device-name lookup under way

#: what a job does before its first step, in the order it happens: (phase, text people see)
PHASES = {
    "starting": "starting workers…",
    "installing": "installing requirements on the devices…",
    "preflight": "preflight: timing devices…",
    "placing": "placing shards…",
    "training": "training",
}

#: placement decisions of this session: (job digest, settings, workers) -> (chosen workers,
#: strategy, local-SGD period, report line, reason); the same job gets the same devices
_PLACEMENTS: dict[tuple[Any, ...], tuple[tuple[str, ...], str, int, str, str]] = {}


class Driver:
    """Runs a job to completion; ``run()`` returns the final checkpoint bytes."""

    #: the Dask task of one rank (``launch_driver.LaunchDriver`` runs the user's function)
    rank_task: Callable[..., Any] = staticmethod(run_rank)

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
        device_names: Callable[[], Mapping[str, str]] | None = None,
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
        #: ``workers=`` as asked (addresses or names), resolved to addresses when the job starts
        self._asked_workers = list(workers) if workers else None
        self.only_workers: set[str] | None = None
        self.watch = WorkerWatch(client, stale_after_s=float(recovery.heartbeat_timeout))
        # a stale heartbeat while every rank is silent: lost before the group timeout
        self.quick_stale_s = min(QUICK_STALE_S, float(recovery.heartbeat_timeout))
        self._device_names = device_names
        self._known_names: dict[str, str] = {}
        self._names_lookup: threading.Thread | None = None
        #: the loss being recovered from (lost devices, reason, message), None while running
        self._recovery: dict[str, Any] | None = None
        # when a rank of the current attempt last reported (None: not yet; starting is quiet)
        self._heard: float | None = None
        self._aborts: list[Future] = []
        self._workers: list[str] = []  # the current attempt's, in rank order
        #: "re-decided for N device(s) after losing X": prefixed to the next preflight's reason
        self._redecided: str | None = None
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
        #: the job (model, data) on each worker, shipped once per job: attempts reuse it
        self._job_on: dict[str, Future] = {}
        self.topics = JobTopics(client)
        # ``auto`` may leave devices idle (placement.py): measured on every device, the ranks
        # re-form their group on the chosen ones before the first step
        self.choose_devices = job.strategy == "auto" and not workers and not job.shares
        self._placed: list[str] | None = None
        self._placement_note = ""
        self._strategy_reason: str | None = None
        self._start_step = 0  # the global step the current attempt started from
        # speed and ETA, smoothed once here for every surface (jobs/speed.py): per rank, on
        # the rank's own clock; the first window (slow first steps) is only a baseline
        span = min(max(2 * float(job.metrics_interval), 0.2), 1.0)
        self.sample_rates = StreamRates(min_span_s=span)
        self.step_rates = StreamRates(min_span_s=span)
        #: the current phase before the first step (``PHASES``), "training" after it
        self.phase: str | None = None

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
                self._heard = time.monotonic()
                self._measure(msg)
                self._running_again()
                self._phase("training")
                self.hub.emit(self._shown(record))
        while True:
            try:
                msg = self._shipped.get_nowait()
            except queue.Empty:
                break
            if msg.get("attempt") == self.aggregator.attempt:
                self._heard = time.monotonic()
            self._handle_ship(msg)

    def _measure(self, msg: dict[str, Any]) -> None:
        """Feed one rank message to the speed smoothers (its own time stamp, not arrival)."""
        at = msg.get("time")
        at = float(at) if isinstance(at, (int, float)) else time.time()
        rank = int(msg["rank"])
        self.sample_rates.add(rank, float(msg.get("samples") or 0), at)
        self.step_rates.observe(rank, float(msg.get("global_step") or 0), at)

    def _shown(self, record: dict[str, Any], final: bool = False) -> dict[str, Any]:
        """A progress record as every surface shows it: the smoothed speed and ETA (not the
        ranks' last windows), and each rank labelled by its device's name (``_label``).
        ``final``: the attempt's last record, with a speed even if it never settled."""
        steps_per_s = self.step_rates.median(final)
        total = self.aggregator.total_steps
        remaining = max(total - int(record.get("global_step") or 0), 0) if total else None
        record["samples_per_s"] = self.sample_rates.total(final)
        record["steps_per_s"] = steps_per_s
        record["eta_s"] = eta_s(remaining, steps_per_s)
        for r in record.get("ranks") or []:
            r["device"] = self._label(str(r.get("worker", "")))
            r["samples_per_s"] = self.sample_rates.rate(int(r["rank"]))
        record["samples_by_device"] = {
            self._label(w): n for w, n in (record.get("samples_by_worker") or {}).items() if w
        }
        record["devices"] = [r["device"] for r in record.get("ranks") or []]
        return record

    def _phase(self, phase: str) -> None:
        """Say what the job is doing before its first step (a ``state`` record whose message
        is the phase: the job list, the panel, the CLI and the dashboards show it)."""
        if phase == self.phase:
            return
        self.phase = phase
        text = PHASES[phase]
        if self._recovery is not None:  # the loss stays the headline while re-forming
            self._emit("state", state="recovering", attempt=self.aggregator.attempt,
                       phase=phase, **{**self._recovery,
                                       "message": f"{self._recovery['message']} ({text})"})
        else:
            self._emit("state", state="running", attempt=self.aggregator.attempt,
                       phase=phase, message=text)

    def _recovering(self, attempt: int, outcome: AttemptOutcome) -> None:
        """Say that the job lost devices and is re-forming: which ones (by name) and why."""
        self._refresh_names()
        lost = sorted(outcome.lost)
        devices = [self._label(w) for w in lost]
        reason = outcome.reason or "a rank failed"
        head = f"lost {', '.join(devices)}" if devices else "the group failed"
        self._recovery = {
            "lost_workers": lost,
            "lost_devices": devices,
            "reason": reason,
            "message": f"{head}: {reason}; re-forming with the remaining devices",
            "detected_at": outcome.detected_at,
        }
        self._emit("state", state="recovering", attempt=attempt, **self._recovery)

    def _running_again(self) -> None:
        """The re-formed group answers (preflight or a step): the job is running again."""
        if self._recovery is None:
            return
        self._recovery = None
        self._emit("state", state="running", attempt=self.aggregator.attempt,
                   workers=self._workers, devices=[self._label(w) for w in self._workers])

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
        if kind == "output":  # any attempt's: what a failed attempt printed tells why
            worker = str(msg.get("worker", ""))
            self.hub.emit({"kind": "output", "job_id": self.job.job_id, "time": time.time(),
                           "rank": int(msg.get("rank", 0)), "attempt": msg.get("attempt"),
                           "device": self._label(worker) if worker else "",
                           "stream": str(msg.get("stream", "stdout")),
                           # another device's text: no terminal sequences reach a terminal here
                           "text": printable(msg.get("text", ""))})
        elif kind == "phase":  # rank 0 says where it is before the first step
            if msg.get("attempt") == self.aggregator.attempt and msg.get("phase") in PHASES:
                self._phase(str(msg["phase"]))
        elif kind == "preflight":
            current = msg.get("attempt") == self.aggregator.attempt
            reason = str(msg["report"].get("reason", ""))
            if current and self._redecided and self._redecided not in reason:
                msg["report"] = {**msg["report"], "reason": f"{self._redecided}: {reason}"}
            self.preflight = PreflightReport.from_dict(msg["report"])
            self._emit(
                "preflight",
                attempt=msg.get("attempt"),
                report=msg["report"],
                text=str(self.preflight),
            )
            if current:
                self._running_again()
                if self.phase != "training":
                    self._phase("placing")
        elif kind == "rebalance":
            who = [self._label(w) for w in msg.get("workers") or []]
            text = "shares follow measured speed at step {}: {}".format(
                msg.get("global_step"),
                ", ".join(f"{w} {a}->{b}" for w, a, b in
                          zip(who, msg.get("before") or [], msg.get("after") or [], strict=False)),
            )
            logger.info("training job %s: %s", self.job.job_id, text)
            self._emit("rebalance", attempt=msg.get("attempt"), step=msg.get("global_step"),
                       devices=who, before=msg.get("before"), after=msg.get("after"), text=text)
        elif kind == "eval":
            self._evaluated(msg)
        elif kind == "timeline":
            marks = {**self.marks, **msg.get("marks", {})}
            self._emit("timeline", attempt=msg.get("attempt"), marks=marks)
        elif kind == "resumed":  # another job's checkpoint loaded: the asked settings won
            notes = [str(n) for n in msg.get("hyperparameters") or []]
            for note in notes:
                logger.info("training job %s: %s", self.job.job_id, note)
            self._emit("resume", action="loaded", attempt=msg.get("attempt"),
                       step=int(msg["global_step"]), hyperparameters=notes)
        elif kind in ("checkpoint", "final"):
            path = self.store.put(msg["data"], int(msg["global_step"]))
            if kind == "final":
                self._final = msg
                # the end of the run joins the timeline: last step, state packed, received
                marks = {**self.marks, **msg.get("marks", {}), "final_received": time.time()}
                self._emit("timeline", attempt=msg.get("attempt"), marks=marks)
                self._report_speed(marks, int(msg["global_step"]))
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

    def _evaluated(self, msg: dict[str, Any]) -> None:
        """An epoch's evaluation (rank 0's, summed over the ranks) as a progress record with
        an ``eval`` entry: it lands in ``job.history`` next to the training loss it follows."""
        figures = {k: msg[k] for k in ("epoch", "global_step", "loss", "accuracy", "metric",
                                       "samples") if k in msg}
        text = ", ".join(f"{k} {msg[k]:.4g}" for k in ("loss", "accuracy", "metric") if k in msg)
        logger.info("training job %s: epoch %s evaluation: %s", self.job.job_id,
                    msg.get("epoch"), text)
        record = self._shown(self.aggregator.snapshot())
        record["eval"] = figures
        self.hub.emit(record)

    # ------------------------------------------------------------------ phases
    def _resolve_asked_workers(self) -> None:
        """``workers=`` to addresses: each entry is a worker's address, its Dask name or its
        device's name (what the preflight report shows). An entry matching none is refused
        with the workers there are, before anything starts: training on the others would
        drop a device the caller asked for without a word."""
        if self._asked_workers is None:
            return
        listed = sorted(self.watch.poll(force=True))
        known = {address: address for address in listed}
        for address in listed:
            known.setdefault(str(self.watch.name_of(address) or address), address)
        unknown = [w for w in self._asked_workers if w not in known]
        labels = {a: a for a in listed}
        if unknown:  # device names: only then wait for their lookup
            labels = self._names_for(listed)
            for address in listed:
                known.setdefault(labels[address], address)
            unknown = [w for w in self._asked_workers if w not in known]
        if unknown:
            there = ", ".join(labels[a] if a in labels[a] else f"{labels[a]} ({a})"
                              for a in listed)
            raise UnknownWorkersError(
                f"workers= names {', '.join(map(repr, unknown))}, which the cluster does not "
                f"have; its workers: {there or 'none'} (give addresses or names)"
            )
        self.only_workers = {known[w] for w in self._asked_workers}

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

    def _prepare_workers(self, workers: list[str], attempt: int) -> None:
        """What must be on the probed workers before ranks start there (``launch``: the job's
        requirements); nothing for ``train()``."""

    def _device_for(self, env: dict[str, Any], backend: str, mixed: bool) -> str:
        if not env.get("cuda_available"):
            return "cpu"
        if backend == "nccl":
            return "cuda:0"
        wants_fsdp = (self.job.strategy == "fsdp") or (
            self.preflight is not None and self.preflight.strategy == "fsdp"
        )
        return "cpu" if (mixed and wants_fsdp) else "cuda:0"

    def _label(self, address: str) -> str:
        """The name people know a worker's device by (``recovery.device_label``)."""
        return device_label(address, self.watch.name_of(address), self._known_names)

    def _refresh_names(self) -> None:
        """Ask for the devices' names again (a device may have been paired since), in the
        background: a slow or absent server must not delay training or recovery."""
        lookup = self._device_names
        if lookup is None:
            return

        def refresh() -> None:
            try:
                self._known_names = dict(lookup())
            except Exception:  # names are a nicety: the workers' own names stand in
                logger.debug("could not look up device names", exc_info=True)

        self._names_lookup = threading.Thread(target=refresh, name="parallalx-device-names",
                                              daemon=True)
        self._names_lookup.start()

    def _names_for(self, workers: Sequence[str]) -> dict[str, str]:
        """The workers' device names for the ranks' report: waits a moment for a lookup still
        under way (the first attempt's usually is, and a report naming device IDs stays so)."""
        lookup = self._names_lookup
        if lookup is not None and lookup.is_alive():
            lookup.join(NAMES_WAIT_S)
        return {w: self._label(w) for w in workers}

    # ------------------------------------------------------------------ main loop
    def run(self) -> bytes:
        self.topics.subscribe(self.job.metrics_topic, self._on_event)
        self.topics.subscribe(self.job.ship_topic, self._on_ship)
        try:
            return self._loop()
        finally:
            self._drop_topics(delete=True)
            self._finish_cleanup()
            self._release_job(keep=())

    def _drop_topics(self, delete: bool) -> None:
        """Free the scheduler's stored copies of this job's events (delivery is unaffected).

        After each complete checkpoint the ship topic is truncated; at the end both topics are
        closed on the scheduler and their handlers leave the client (``JobTopics.release``):
        a finished job holds nothing there. Needs ``run_on_scheduler``; where a cluster
        forbids it, the topics are unsubscribed and the scheduler's bounded event log applies.
        """
        if delete:
            self.topics.release()
        else:
            self.topics.truncate([self.job.ship_topic])

    def _ship_job(self, workers: Sequence[str]) -> dict[str, Future]:
        """The job on each of ``workers``: shipped to those that do not hold it yet.

        A copy is gone when its worker left (its future is no longer ``finished``): that
        worker, back under the same address, gets it again. Copies on workers the attempt no
        longer uses are released.
        """
        self._release_job(keep=workers)
        missing = [w for w in workers
                   if w not in self._job_on or self._job_on[w].status != "finished"]
        if missing:
            self._job_on.update(ship_to_each(self.client, self.job, missing))
        return {w: self._job_on[w] for w in workers}

    def _release_job(self, keep: Sequence[str]) -> None:
        for w in [w for w in self._job_on if w not in keep]:
            with contextlib.suppress(Exception):
                self._job_on.pop(w).release()

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
        driver_env = driver_environment()
        self._refresh_names()
        self._resolve_asked_workers()
        attempt = 0
        fixed: tuple[str, int] | None = None
        while True:
            if self.cancel_event.is_set():
                raise TrainingCancelledError("cancelled by the user before training started")
            self.phase = None  # each attempt goes through the phases again
            self._phase("starting")
            candidates = self._candidates()
            self._require(candidates, "on the cluster")
            envs = self._probe(candidates, attempt)
            self._mark("probed")
            if self.cancel_event.is_set():  # the probe stops waiting: that is not a lost worker
                raise TrainingCancelledError("cancelled by the user before training started")
            self._require(list(envs), "after probing the workers")
            check_versions(envs, driver_env)
            self._prepare_workers(list(envs), attempt)
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
            workers, fixed = self._apply_placement(workers, fixed, attempt)
            shares = explicit_shares(self.job.shares, workers, attempt)
            backend = choose_backend([_gpu_of(envs[w]) for w in workers])
            mixed = len({bool(envs[w].get("cuda_available")) for w in workers}) > 1
            resume = self.store.latest()
            self._final = None
            self._start_step = self.store.global_step if resume else 0
            self._workers = workers
            self._redecided = None if self._recovery is None or fixed is not None else (
                f"auto re-decided for {len(workers)} device(s) after losing "
                f"{', '.join(self._recovery['lost_devices']) or 'a device'}"
            )
            self._emit(
                "state",
                state="running" if self._recovery is None else "recovering",
                attempt=attempt,
                workers=workers,
                devices=[self._label(w) for w in workers],
                resume_step=self.store.global_step if resume else 0,
                phase=self.phase,
                **(self._recovery or {"message": PHASES["starting"]}),
            )
            outcome = self._attempt(
                attempt, workers, envs, backend, mixed, resume, fixed, shares
            )
            if self.preflight is not None and fixed is None:
                fixed = (self.preflight.strategy, self.preflight.local_sgd_every)
                if outcome.status == "finished":
                    self._remember(self.preflight, workers)
            if outcome.status == "finished":
                assert self._final is not None
                return bytes(self._final["data"])
            if outcome.status == "cancelled":
                step = self._final["global_step"] if self._final else self.aggregator.max_step
                raise TrainingCancelledError(
                    "cancelled by the user" + (f" at step {step}" if step else
                                               " before training started")
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
            if self.job.strategy == "auto":
                fixed = None  # decided again for the devices that remain
            self._recovering(attempt, outcome)
            failed_at = self.aggregator.max_step
            resume_step = max(self.store.global_step, 0)
            self._emit(
                "restart",
                attempt=attempt,
                reason=outcome.detail,
                lost_workers=sorted(outcome.lost),
                lost_devices=self._recovery["lost_devices"] if self._recovery else [],
                detected_at=outcome.detected_at,
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
            job=None,  # on each worker already, or shipped beside it (``_ship_job``)
            resume=resume,
            strategy=fixed[0] if fixed else None,
            local_sgd_every=(fixed[1] or None) if fixed else None,
            shares=shares,
            choose_devices=self.choose_devices and fixed is None and len(workers) > 1,
            strategy_reason=self._strategy_reason if fixed else None,
            placement=self._placement_note,
            names=self._names_for(workers),
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
        self.sample_rates.reset()  # another group: other speeds
        self.step_rates.reset()
        payload_futures: dict[str, Future] = {}
        futures: list[Future] = []
        try:
            try:
                # One copy per worker, each sent from here: never replicated between workers,
                # so no device ever decodes data that another device handed it.
                job_futures = self._ship_job(workers)
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
                self.client, self.rank_task, workers, make_spec,
                per_worker={w: (payload_futures[w], job_futures[w]) for w in workers},
            )
            self._mark("submitted")
            return self._monitor(futures, workers)
        finally:
            if futures:
                with contextlib.suppress(Exception):
                    self.client.cancel([f for f in futures if f.status == "pending"], force=True)
            for fut in [*payload_futures.values(), *self._aborts]:
                fut.release()
            self._aborts.clear()
            self._close_rendezvous(attempt, workers[0])

    def _report_speed(self, marks: dict[str, float], global_step: int) -> None:
        """Predicted vs measured steps/s of the attempt that finished (first to last step)."""
        report = self.preflight
        steps = global_step - self._start_step - 1  # "first_step" is marked after step one
        span = marks.get("last_step", 0.0) - marks.get("first_step", 0.0)
        if report is None or steps < 1 or span <= 0:
            return
        report.measured_steps_per_s = steps / span
        self._emit("speed", predicted_steps_per_s=report.predicted_steps_per_s,
                   measured_steps_per_s=report.measured_steps_per_s, text=str(report))

    # ------------------------------------------------------------------ placement
    def _placement_key(self, workers: Sequence[str]) -> tuple[Any, ...]:
        """Same job (its objects and settings) on the same workers: the same decision."""
        job = self.job
        same = job.same_job or hashlib.blake2b(job.user_objects, digest_size=16).hexdigest()
        return (same, job.epochs, job.global_batch, job.max_steps, job.torch_threads,
                tuple(sorted(workers)))

    def _apply_placement(
        self, workers: list[str], fixed: tuple[str, int] | None, attempt: int
    ) -> tuple[list[str], tuple[str, int] | None]:
        """The same job on the same devices keeps its earlier placement (this session's)."""
        if not self.choose_devices or len(workers) < 2:
            return workers, fixed
        if attempt > 0:  # a device was lost: decide again among those left
            self._placed, self._placement_note, self._strategy_reason = None, "", None
            return workers, fixed
        if self._placed is None:
            known = _PLACEMENTS.get(self._placement_key(workers))
            if known is not None:
                placed, strategy, every, note, reason = known
                self._placed = list(placed)
                self._placement_note = f"{note} (decided for this job on these devices earlier)"
                self._strategy_reason = reason
                fixed = (strategy, every)
        if self._placed is None:
            return workers, fixed
        kept = [w for w in workers if w in self._placed]
        if not kept:  # every chosen device is gone: decide again among the others
            self._placed, self._placement_note, self._strategy_reason = None, "", None
            return workers, None
        return kept, fixed

    def _remember(self, report: PreflightReport, workers: list[str]) -> None:
        """Keep ``auto``'s decision for this job on these devices (measurements are noisy:
        near a threshold the same job flipped between local SGD and DDP from run to run)."""
        if not self.choose_devices or self._placed is not None or len(workers) < 2:
            return
        if self.excluded:  # decided after a loss: not what this job gets on a healthy cluster
            return
        chosen = [w for w in workers if w not in set(report.idle)]
        _PLACEMENTS[self._placement_key(workers)] = (
            tuple(chosen), report.strategy, report.local_sgd_every, report.placement,
            report.reason if report.reason.startswith("auto") else f"auto: {report.reason}",
        )
        while len(_PLACEMENTS) > 64:  # a bounded memory of decisions
            _PLACEMENTS.pop(next(iter(_PLACEMENTS)))

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
        self._heard = None
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
            silent: set[str] = set()
            ages: dict[str, float] = {}
            if not (errored or gone or hung) and self._heard is not None:
                ages = self.watch.stale_for()
                silent = silent_losses(
                    pending, ages, time.monotonic() - self._heard,
                    stale_s=self.quick_stale_s, quiet_s=self._quiet_limit(),
                )
            if errored or gone or hung or silent:
                detected_at = time.time()
                quiet = max((ages.get(w, 0.0) for w in silent), default=0.0)
                trigger, reason = (
                    (f"rank states {statuses}", "") if errored else
                    (f"worker(s) left the cluster: {sorted(gone)}", "left the cluster")
                    if gone else
                    (f"no heartbeat from {sorted(silent)} for {quiet:.1f}s and no progress "
                     "from any rank", f"no heartbeat for {quiet:.0f} s and no rank made "
                     "progress") if silent else
                    (f"no heartbeat from {sorted(bad)} for {hang_limit:.0f}s",
                     f"no heartbeat for {self.watch.stale_after_s + hang_limit:.0f} s")
                )  # fmt: skip
                logger.info("attempt failing (%s); settling", trigger)
                given_up = gone | silent | (bad if hung else set())
                self._abort(futures, workers, given_up | self.watch.unreachable(
                    pending, self.quick_stale_s))
                lost = settle(
                    futures,
                    workers,
                    self.watch,
                    stale_s=min(self.watch.stale_after_s, max(2.0, self.group_timeout / 2)),
                    max_wait_s=self.group_timeout + self.settle_timeout,
                    pump=self._pump,
                    given_up=given_up,
                )
                self._pump(force=True)
                outcome = classify(futures, workers, lost)
                outcome.detail = f"{outcome.detail} [{trigger}]"
                outcome.reason = reason or self._failure_reason(outcome)
                outcome.detected_at = detected_at
                return outcome
            self._wait_ranks(futures, 0.1)

    def _quiet_limit(self) -> float:
        """How long every rank may stay silent before a stale heartbeat counts as a loss:
        longer than a metrics interval and than a few of the steps the preflight predicted."""
        limit = max(self.quick_stale_s, 2 * float(self.job.metrics_interval))
        report = self.preflight
        if report is not None:
            step = report.compute_s_per_step + report.comm_s_per_step.get(report.strategy, 0.0)
            limit = max(limit, 3 * step)
        return limit

    def _abort(self, futures: list[Future], workers: list[str], lost: set[str]) -> None:
        """Make the pending ranks on reachable workers kill their processes (``rank.abort_key``):
        they wait in a collective for a rank that will not come, and hold their workers."""
        for rank, (fut, worker) in enumerate(zip(futures, workers, strict=True)):
            if fut.status != "pending" or worker in lost:
                continue
            key = abort_key(self.job.job_id, self.aggregator.attempt, rank)
            try:
                self._aborts.append(
                    self.client.scatter({key: True}, workers=[worker], hash=False)[key]
                )
            except Exception:  # it ends at the group timeout instead
                logger.debug("could not stop rank %d on %s", rank, worker, exc_info=True)

    def _failure_reason(self, outcome: AttemptOutcome) -> str:
        """A few words for the job's status line when a rank's failure came first."""
        if outcome.lost and outcome.lost <= self.watch.gone(outcome.lost):
            return "left the cluster"
        if outcome.lost:
            return "stopped answering when the group failed"
        # "<worker address>: <error>": the address says nothing to people
        first = re.sub(r"^\S+://[^\s:]+(:\d+)?:\s*", "", outcome.detail.strip())
        first = (first.splitlines() or [""])[0]
        return f"a rank failed: {first[:200]}" if first else "a rank failed"

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
        if self.aggregator.ranks and (final_step > self.aggregator.max_step
                                      or self.sample_rates.total() is None):
            # the last word on progress, with a speed even for a job too short to settle one
            self.aggregator.max_step = max(final_step, self.aggregator.max_step)
            self.hub.emit(self._shown(self.aggregator.snapshot(), final=True))
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


def _gpu_of(env: dict[str, Any]) -> str | None:
    """The GPU a worker's rank would use, or None (older probes carry no UUID: use the worker)."""
    if not env.get("cuda_available"):
        return None
    return str(env.get("gpu_uuid") or env.get("worker") or id(env))
