"""The main side: probing, handing out shards, noticing lost workers, assembling the output."""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...jobs.failures import classify_failure
from ...wire import from_wire
from ..base import JobContext, Workload, WorkloadError, validate_params
from .common import (
    _PY,
    CLEANUP_WAIT_S,
    FETCH_TIMEOUT_S,
    IN_FLIGHT,
    POLL_S,
    PROGRESS_S,
    SPEED_EMA,
    InferenceError,
    InferenceUserError,
    log,
)
from .data import RowSource, _is_factory, _is_module, _Queue, shard_rows
from .tasks import _drop, probe_task, shard_task


@dataclass
class _WorkerState:
    address: str
    speed: float = 0.0
    device: str = "?"
    rows: int = 0  # completed rows
    shards: int = 0
    in_flight: int = 0
    lost: bool = False


@dataclass
class _Shard:
    lo: int
    hi: int
    tries: int
    worker: str
    future: Any
    data: Any  # the scattered rows' future (None for worker-built data sets)



class InferenceWorkload(Workload):
    name = "inference"
    description = (
        "Batch inference of a PyTorch model over a large data set on every worker, shards "
        "sized to each device's speed, lost workers' rows redone, outputs in input order"
    )
    parameters = {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "dataset"],
        "properties": {
            "model": {**_PY, "description": "torch.nn.Module or a zero-argument factory"},
            "dataset": {
                **_PY,
                "description": "inputs: a tensor, an (x, y) tuple (x is used), a map-style data "
                "set of inputs or (inputs, target) items, or a zero-argument factory of one "
                "(built on each worker: only row ranges travel)",
            },
            "batch_size": {"type": "integer", "minimum": 1, "default": 256},
            "postprocess": {
                **_PY,
                "description": "applied to each batch's output on the worker (e.g. argmax)",
            },
            "target_shard_seconds": {
                "type": "number",
                "exclusiveMinimum": 0,
                "default": 1.0,
                "description": "one shard takes about this long on its device",
            },
            "max_retries": {
                "type": "integer",
                "minimum": 0,
                "default": 3,
                "description": "how often one row range may be redone after its worker is lost",
            },
            "workers": {"type": ["array", "null"], "items": {"type": "string"}, "default": None},
        },
    }

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        out = validate_params(self.name, self.parameters, params)
        if not math.isfinite(out["target_shard_seconds"]):
            raise WorkloadError("inference: parameter 'target_shard_seconds' must be finite")
        model = out["model"]
        if not (_is_module(model) or callable(model)):
            raise WorkloadError(
                "inference: parameter 'model' must be a torch.nn.Module or a zero-argument "
                f"factory returning one, got {type(model).__name__}"
            )
        post = out.get("postprocess")
        if post is not None and not callable(post):
            raise WorkloadError(
                f"inference: parameter 'postprocess' must be callable, got {type(post).__name__}"
            )
        out.setdefault("postprocess", None)
        dataset = out["dataset"]
        if not _is_factory(dataset):
            try:
                source = RowSource(dataset)
            except TypeError as err:
                raise WorkloadError(f"inference: parameter 'dataset': {err}") from None
            if len(source) == 0:
                raise WorkloadError("inference: the data set is empty")
        return out

    def job_name(self, params: dict[str, Any]) -> str:
        model = params["model"]
        label = type(model).__name__ if _is_module(model) else getattr(model, "__name__", "")
        return f"inference {label}".strip()

    def summarize(self, result: Any) -> dict[str, Any]:
        """Shape and type, not the predictions: the CLI prints this for a job of any size."""
        import torch

        if isinstance(result, torch.Tensor):
            return {"rows": int(result.shape[0]), "shape": list(result.shape),
                    "dtype": str(result.dtype).removeprefix("torch.")}
        return {"rows": len(result), "first": repr(result[:3])[:200]}

    def run(self, ctx: JobContext, params: dict[str, Any]) -> Any:
        return _Run(ctx, params).run()


class _Run:
    """One job's dispatch loop, in the job's thread in the notebook process."""

    def __init__(self, ctx: JobContext, params: dict[str, Any]) -> None:
        self.ctx = ctx
        self.client = ctx.client
        self.job_id = ctx.job.id
        self.batch_size: int = params["batch_size"]
        self.target_s = float(params["target_shard_seconds"])
        self.max_retries: int = params["max_retries"]
        self.only: set[str] | None = (
            set(params["workers"]) if params["workers"] is not None else None
        )
        dataset = params["dataset"]
        self.factory = dataset if _is_factory(dataset) else None
        self.source = None if self.factory is not None else RowSource(dataset)
        self.model = params["model"]
        self.postprocess = params["postprocess"]
        self.n: int | None = len(self.source) if self.source is not None else None
        self.queue: _Queue | None = _Queue(self.n) if self.n is not None else None
        self.states: dict[str, _WorkerState] = {}  # every worker that joined, lost ones too
        self.probes: dict[str, Any] = {}  # address -> probe future
        self.seen: set[str] = set()  # every worker probed: each gets the cleanup task
        self.lost: list[str] = []
        self.shards: dict[Any, _Shard] = {}  # future key -> shard in flight
        self.results: dict[int, dict[str, Any]] = {}
        self.done = 0
        self.alive: set[str] = set()
        self.polled = 0.0
        self.reported = 0.0
        self.started: float | None = None
        self.payload: Any = None  # what each worker gets, shipped from here (_payload_on)
        self.shipped: dict[str, Any] = {}  # worker -> its own copy's future
        self.seq = 0

    # ------------------------------------------------------------------ main
    def run(self) -> Any:
        from ...training.spec import dumps_for_workers

        self._poll(force=True)
        if self.only is not None and self.only - self.alive:
            missing = ", ".join(sorted(self.only - self.alive))
            raise InferenceError(f"inference: worker(s) not in the cluster: {missing}")
        self.ctx.progress(step=0, total=self.n, workers=0,
                          message="inference: measuring each worker's speed")
        probe_rows = min(self.batch_size, self.n) if self.source is not None else 0
        payload = {
            "blob": dumps_for_workers(
                {"model": self.model, "postprocess": self.postprocess, "dataset": self.factory}
            ),
            "probe": self.source.rows(0, probe_rows) if self.source is not None else None,
            "probe_rows": probe_rows,
        }
        try:
            self._ship(payload)
            self._loop()
            return self._assemble()
        finally:
            self._finish()

    def _ship(self, payload: dict[str, Any]) -> None:
        """Probe every worker; each gets its own copy of the job's objects from here."""
        self.payload = payload
        first = sorted(self._eligible())
        if not first:
            raise InferenceError("inference: the cluster has no workers")
        for w in first:
            self._probe(w)

    def _payload_on(self, w: str) -> Any:
        """Worker ``w``'s copy of the job's objects (sent once, from this process): never
        replicated between workers, so no device decodes what another device handed it."""
        fut = self.shipped.get(w)
        if fut is None:
            [fut] = self.client.scatter([self.payload], workers=[w], hash=False, timeout=30)
            self.shipped[w] = fut
        return fut

    def _active(self) -> list[_WorkerState]:
        return [s for s in self.states.values() if not s.lost]

    def _eligible(self) -> set[str]:
        pool = self.alive if self.only is None else self.alive & self.only
        return pool - set(self.lost)

    def _key(self, what: str) -> str:
        self.seq += 1  # never reuse a key: a cancelled task may linger on the scheduler
        return f"parallalx-infer-{what}-{self.job_id}-{self.seq}"

    def _loop(self) -> None:
        while True:
            self.ctx.check_cancelled()
            self._poll()
            self._check_probes()
            self._check_shards()
            if self.queue is not None and not self.queue.ranges and not self.shards:
                self._report(force=True)
                return
            if not self._active() and not self.probes:
                self._fail_no_workers()
            self._dispatch()
            self._report()
            time.sleep(0.02)

    # ------------------------------------------------------------------ workers
    def _poll(self, force: bool = False) -> None:
        """Read the scheduler's worker list; shards of workers that left are put back, and
        (unless ``workers`` was given) newcomers are probed and join in."""
        now = time.monotonic()
        if not force and now - self.polled < POLL_S:
            return
        self.polled = now
        self.alive = set(self.ctx.workers())
        joined = [s.address for s in self._active()]
        for w in sorted({*joined, *self.probes} - self.alive):
            self._lose(w, "left the cluster")
        if self.payload is not None:
            for w in sorted(self._eligible() - self.seen):
                self._probe(w)

    def _probe(self, w: str) -> None:
        self.seen.add(w)
        try:
            payload = self._payload_on(w)
        except Exception as exc:  # the worker left between listing and shipping
            self._lose(w, f"could not be sent the job ({exc!r})")
            return
        self.probes[w] = self.client.submit(
            probe_task,
            self.job_id,
            payload,
            self.batch_size,
            key=self._key("probe"),
            workers=[w],
            allow_other_workers=False,
            pure=False,
        )

    def _lose(self, w: str, why: str) -> None:
        """The worker is gone (or unusable) for this job: its shards go back on the queue."""
        if w in self.lost:
            return
        self.lost.append(w)
        probe = self.probes.pop(w, None)
        if probe is not None:
            with contextlib.suppress(Exception):
                self.client.cancel([probe], force=True)
        state = self.states.get(w)
        if state is not None:
            state.lost = True
        ranges = [s for s in self.shards.values() if s.worker == w]
        log.warning("inference %s: worker %s %s; %d shard(s) put back", self.job_id, w, why,
                    len(ranges))
        self.ctx.record(
            "worker_lost",
            worker=w,
            reason=why,
            rows_done=state.rows if state else 0,
            requeued=[[s.lo, s.hi] for s in ranges],
        )
        for shard in ranges:
            self._requeue(shard, why)

    def _requeue(self, shard: _Shard, why: str) -> None:
        self._drop_shard(shard)
        tries = shard.tries + 1
        if tries > self.max_retries:
            raise InferenceError(
                f"inference: rows {shard.lo:,}-{shard.hi:,} were lost {tries} time(s) (last: "
                f"worker {shard.worker} {why}); max_retries is {self.max_retries}"
            )
        assert self.queue is not None
        self.queue.put_back(shard.lo, shard.hi, tries)

    def _drop_shard(self, shard: _Shard) -> None:
        if self.shards.pop(shard.future.key, None) is None:
            return
        state = self.states.get(shard.worker)
        if state is not None:
            state.in_flight -= 1
        if shard.future.status == "pending":
            with contextlib.suppress(Exception):
                self.client.cancel([shard.future], force=True)
        shard.future.release()
        if shard.data is not None:
            with contextlib.suppress(Exception):
                shard.data.release()

    def _fail_no_workers(self) -> None:
        done = f"{self.done:,} of {self.n:,} rows done" if self.n is not None else "nothing done"
        lost = f"; lost: {', '.join(self.lost)}" if self.lost else ""
        raise InferenceError(f"inference: no worker left to run on ({done}{lost})")

    # ------------------------------------------------------------------ futures
    def _check_probes(self) -> None:
        for w, fut in list(self.probes.items()):
            if fut.status == "pending" or self.probes.get(w) is not fut:
                continue
            if fut.status != "finished":
                self._failed(fut, w, f"speed probe on {w}", lambda w=w: self._lose(w, "failed"))
                continue
            try:
                info = from_wire(fut.result(timeout=FETCH_TIMEOUT_S))
            except Exception as exc:
                self._lose(w, f"did not deliver its speed probe ({exc!r})")
                continue
            del self.probes[w]
            fut.release()
            self._joined(w, info)

    def _joined(self, w: str, info: dict[str, Any]) -> None:
        n_rows = info["n_rows"]
        if n_rows is not None:  # the data set was built on the worker: it says how long it is
            if self.n is None:
                if n_rows == 0:
                    raise InferenceError("inference: the data set factory built an empty set")
                self.n, self.queue = n_rows, _Queue(n_rows)
            elif n_rows != self.n:
                raise InferenceError(
                    f"inference: the data set factory built {n_rows:,} rows on {w} but "
                    f"{self.n:,} elsewhere; it must build the same data on every worker"
                )
        self.states[w] = _WorkerState(w, float(info["rows_per_s"]), str(info["device"]))
        active = sorted(self._active(), key=lambda s: s.address)
        self.ctx.record(
            "speeds",
            speeds={s.address: s.speed for s in active},
            devices={s.address: s.device for s in active},
        )

    def _check_shards(self) -> None:
        for shard in list(self.shards.values()):
            fut = shard.future
            if fut.status == "pending" or fut.key not in self.shards:
                continue
            if fut.status != "finished":
                self._failed(
                    fut, shard.worker, f"rows {shard.lo:,}-{shard.hi:,} on {shard.worker}",
                    lambda shard=shard: self._requeue(shard, "lost the shard"),
                )
                continue
            try:
                res = from_wire(fut.result(timeout=FETCH_TIMEOUT_S))
            except Exception as exc:
                self._poll(force=True)
                if fut.key in self.shards:  # not put back already because its worker left
                    self._requeue(shard, f"did not deliver its result ({exc!r})")
                continue
            self._drop_shard(shard)
            if res is None:  # the worker saw it cancelled (not by us): run it again
                assert self.queue is not None
                self.queue.put_back(shard.lo, shard.hi, shard.tries)
                continue
            self._store(shard, res)

    def _failed(self, fut: Any, w: str, what: str, retry: Callable[[], None]) -> None:
        """An errored/lost/cancelled future: redo the work if the worker or network is to
        blame, fail the job if the user's code (or anything unexplained) is."""
        exc: BaseException | None = None
        if fut.status == "error":
            with contextlib.suppress(Exception):
                exc = fut.exception(timeout=5)
        kind = classify_failure(exc, fut.status)
        if kind == "user":
            raise InferenceUserError(f"inference failed: {what}: {exc}") from None
        self._poll(force=True)  # a dying worker often fails its tasks before it is removed
        if w in self.lost:
            return  # _lose already put its work back
        if kind == "device":
            retry()
            return
        tb = ""
        with contextlib.suppress(Exception):
            tb = "".join(traceback.format_tb(fut.traceback(timeout=5)))
        raise InferenceError(
            f"inference failed: {what}: {type(exc).__name__}: {exc}"
            + (f"\n\nTraceback on the worker:\n{tb}" if tb else "")
        ) from None

    def _store(self, shard: _Shard, res: dict[str, Any]) -> None:
        if shard.lo in self.results:  # completed twice: the first one counts
            return
        rows = shard.hi - shard.lo
        self.results[shard.lo] = res
        self.done += rows
        state = self.states.get(shard.worker)
        if state is not None:
            state.rows += rows
            state.shards += 1
            measured = rows / max(float(res["seconds"]), 1e-9)
            state.speed = (1 - SPEED_EMA) * state.speed + SPEED_EMA * measured

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self) -> None:
        if self.queue is None:
            return
        active = self._active()
        if not active:
            return
        # Workers still being probed will want their share of the end too: count them at
        # the mean speed until they report their own.
        known = sum(s.speed for s in active)
        total_speed = known + len(self.probes) * known / len(active)
        for state in sorted(active, key=lambda s: (s.in_flight, -s.speed)):
            while state.in_flight < IN_FLIGHT and self.queue.ranges and not state.lost:
                size = shard_rows(
                    state.speed, total_speed, self.queue.remaining(), self.batch_size,
                    self.target_s, self._rows_in_flight(state.address),
                    self._rows_in_flight(None),
                )
                if size == 0:
                    break
                lo, hi, tries = self.queue.take(size)
                if not self._submit(state, lo, hi, tries):
                    self.queue.put_back(lo, hi, tries)
                    self._lose(state.address, "could not be sent its rows")

    def _rows_in_flight(self, worker: str | None) -> int:
        return sum(s.hi - s.lo for s in self.shards.values() if worker in (None, s.worker))

    def _submit(self, state: _WorkerState, lo: int, hi: int, tries: int) -> bool:
        w = state.address
        data = None
        if self.source is not None:
            try:
                [data] = self.client.scatter(
                    [self.source.rows(lo, hi)], workers=[w], hash=False, timeout=30
                )
            except Exception as exc:
                log.warning("inference %s: sending rows to %s failed: %r", self.job_id, w, exc)
                return False
        fut = self.client.submit(
            shard_task,
            self.job_id,
            self._payload_on(w),
            lo,
            hi,
            data,
            self.batch_size,
            key=self._key("shard"),
            workers=[w],
            allow_other_workers=False,
            pure=False,
        )
        self.shards[fut.key] = _Shard(lo, hi, tries, w, fut, data)
        state.in_flight += 1
        if self.started is None:
            self.started = time.monotonic()
        return True

    # ------------------------------------------------------------------ report, result
    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.reported < PROGRESS_S:
            return
        self.reported = now
        elapsed = now - self.started if self.started is not None else 0.0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.n or 0) - self.done
        total = f"{self.n:,}" if self.n is not None else "?"
        self.ctx.progress(
            step=self.done,
            total=self.n,
            samples_per_s=rate,
            eta_s=left / rate if rate > 0 else None,
            workers=len(self._active()),
            message=f"inference: {self.done:,} / {total} rows",
            workers_detail=[
                {"worker": s.address, "rows": s.rows, "rows_per_s": s.speed,
                 "device": s.device, "shards": s.shards, "lost": s.lost}
                for s in sorted(self.states.values(), key=lambda s: s.address)
            ],
        )

    def _assemble(self) -> Any:
        import torch

        assert self.n is not None
        parts, cursor = [], 0
        while cursor < self.n:
            res = self.results.get(cursor)
            if res is None:  # cannot happen: every range is stored once before the loop ends
                raise InferenceError(f"inference: internal error, rows from {cursor} missing")
            parts.append(res)
            cursor = int(res["hi"])
        self.ctx.record(
            "summary",
            rows=self.n,
            shards=len(parts),
            workers={s.address: s.rows for s in self.states.values()},
            lost=list(self.lost),
        )
        if all(p["kind"] == "cat" for p in parts):
            return torch.cat([p["out"] for p in parts])
        items: list[Any] = []
        for p in parts:
            items.extend(p["out"].unbind(0) if p["kind"] == "cat" else p["out"])
        return items

    def _finish(self) -> None:
        """Stop what is still running and drop the cached model on every worker that has it."""
        futures = [s.future for s in self.shards.values()] + list(self.probes.values())
        if futures:
            with contextlib.suppress(Exception):
                self.client.cancel(futures, force=True)
        for shard in list(self.shards.values()):
            self._drop_shard(shard)
        for fut in self.probes.values():
            fut.release()
        self.probes.clear()
        if self.payload is None:
            return
        cleanup = []
        with contextlib.suppress(Exception):
            alive = set(self.ctx.workers())
            for w in sorted(self.seen & alive):
                cleanup.append(
                    self.client.submit(
                        _drop, self.job_id, key=self._key("drop"),
                        workers=[w], allow_other_workers=False, pure=False,
                    )
                )
        if cleanup:
            from distributed import wait

            with contextlib.suppress(Exception):
                wait(cleanup, timeout=CLEANUP_WAIT_S)
            with contextlib.suppress(Exception):
                self.client.cancel([f for f in cleanup if f.status == "pending"], force=True)
            for fut in cleanup:
                fut.release()
        for fut in self.shipped.values():
            with contextlib.suppress(Exception):
                fut.release()
        self.shipped.clear()
        self.payload = None

