"""One rank's training, in its own process (started and watched by the Dask task in rank.py).

Why a separate process: when a rank fails or is cancelled it simply exits (``os._exit``), which
closes its gloo sockets so every peer fails within milliseconds; in-process teardown cannot do
that (gloo's in-flight work keeps the ProcessGroup alive until the group timeout). It also keeps
the Dask worker's event loop free of the training loop's GIL pressure, so heartbeats stay
punctual, and gives each job a clean CUDA context, thread settings and environment.

Error policy (what the driver relies on): failures of the user's code (factories, forward,
loss, optimizer) become :class:`UserCodeError` with the formatted traceback as text and are
never retried; failures of communication (gloo "Connection reset/closed by peer", group
timeouts, rendezvous) become :class:`RankInfraError` and make the driver re-form the group.

Cancellation is cooperative and collective: the Dask task forwards "stop" when its own task is
cancelled (or the notebook's client went away); about every quarter second (at least every
``control_every`` steps, see ``stop_vote.py``) the ranks all-reduce that flag (MAX), so all stop
at the same step, ship a last checkpoint, and exit.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import gc
import math
import os
import queue
import random
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from .batches import call_model, loss_of, target_of
from .checkpoint import (
    capture_rng,
    gather_state,
    load_state,
    make_checkpoint,
    pack,
    restore_rng,
    unpack,
)
from .errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_ORPHANED,
    CheckpointMismatchError,
    RankInfraError,
    TrainingError,
    UserCodeError,
    is_comm_error,
)
from .heap import keep_freed_memory
from .launcher import RankGroup, RankSpec, host_of, process_group, regroup, set_gloo_interface
from .loop import Precision, StepRunner, build_scheduler, evaluate, scheduler_problem
from .metrics import RankMetrics
from .placement import (
    StepCosts,
    plan_placement,
    short_job_placement,
    times_group_step,
)
from .preflight import (
    PreflightReport,
    build_report,
    check_connectivity,
    measure_link,
    measure_step_cost,
    probe_bytes,
)
from .rebalance import Rebalancer, period_steps
from .resume import (
    asked_hyperparameters,
    differences,
    fingerprint,
    keep_asked_hyperparameters,
    mismatch_message,
    model_params,
    saved_fingerprint,
    unscheduled,
)
from .sharding import ShardPlan
from .spec import (
    AttemptPayload,
    build_dataset,
    build_loss,
    build_model,
    empty_like_batch,
    fetch,
    to_device,
    unpack_user_objects,
    zero_loss,
)
from .stop_vote import StopVote, vote_every
from .strategies import EXACT, make_strategy

# What re-forming the group on fewer ranks costs (``launcher.regroup``; the timeline's
# "preflight" to "placed": 27 ms measured on a loaded 2-core machine)
REGROUP_S = 0.03



@contextlib.contextmanager
def user_code(what: str, rank: int, worker: str) -> Iterator[None]:
    """Classify exceptions raised by user code (communication errors stay infrastructure)."""
    try:
        yield
    except (UserCodeError, RankInfraError):
        raise
    except Exception as exc:
        if is_comm_error(exc):
            raise RankInfraError(f"rank {rank}: {exc}") from None
        raise UserCodeError(
            f"{what} raised {type(exc).__name__}: {exc}",
            traceback.format_exc(),
            rank,
            worker,
        ) from None


def portable_error(exc: BaseException, rank: int) -> TrainingError:
    """An exception that pickles cleanly to the Dask task and is classified correctly."""
    if isinstance(exc, (UserCodeError, RankInfraError)):
        return exc
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if is_comm_error(exc):
        return RankInfraError(f"rank {rank}: {exc}")
    return RankInfraError(f"rank {rank} failed unexpectedly:\n{text}")


def replicas_identical(tensors: list[Any]) -> bool:
    """True when every rank holds bit-identical ``tensors`` (collective: all ranks call).

    Every rank seeds torch the same before building the model, so replicas usually start equal
    and rank 0's weights need not cross the network: comparing a digest costs ~0.15 s of
    hashing for a 17M-parameter model where broadcasting its 68 MB takes 0.55 s at 1 Gbit/s.
    """
    import hashlib

    import torch
    import torch.distributed as dist

    if dist.get_world_size() == 1:
        return True
    digest = hashlib.blake2b(digest_size=16)
    for t in tensors:
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        flat = t.detach().reshape(-1)
        if flat.numel():
            digest.update(flat.cpu().contiguous().view(torch.uint8).numpy().data)
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest.hexdigest())
    return len(set(digests)) == 1


class ChildChannel:
    """The rank process's side of its two pipes to the Dask task.

    A sender thread drains an outbound queue so the training loop never blocks on the pipe; a
    watcher thread reads control messages ("stop") and exits the process when the
    pipe reaches EOF, i.e. when the Dask worker died: no orphaned rank keeps a group alive.
    """

    def __init__(self, control: Any, events: Any) -> None:
        self._control = control
        self._events = events
        self._out: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._output: Any = None  # the OutputForwarder while one runs
        self._sender = threading.Thread(target=self._send_loop, name="rank-send", daemon=True)
        self._watcher = threading.Thread(target=self._watch, name="rank-watch", daemon=True)
        self._sender.start()
        self._watcher.start()

    def _send_loop(self) -> None:
        while True:
            msg = self._out.get()
            if msg is None:
                return
            try:
                self._events.send(msg)
            except (OSError, EOFError):
                os._exit(EXIT_ORPHANED)

    def _watch(self) -> None:
        while True:
            try:
                msg = self._control.recv()
            except (EOFError, OSError):
                os._exit(EXIT_ORPHANED)
            if msg[0] == "stop":
                self._stop.set()

    # -- used by the trainer
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def metrics(self, msg: dict[str, Any]) -> None:
        self._out.put(("metrics", msg))

    def ship(self, msg: dict[str, Any]) -> None:
        self._out.put(("ship", msg))

    def forward_output(self, **fields: Any) -> None:
        """Send what this process prints home from now on (``rank_output.py``)."""
        from .rank_output import OutputForwarder

        self._output = OutputForwarder(self.ship, **fields).start()

    def end_output(self) -> None:
        """Stop forwarding and send the rest; call before the message that ends the run, so
        what was printed arrives first. Idempotent."""
        output, self._output = self._output, None
        if output is not None:
            output.close()

    def finish(self, msg: tuple[str, Any], timeout: float = 120.0) -> None:
        """Send the last message and wait until everything queued is in the pipe."""
        self._out.put(msg)
        self._out.put(None)
        self._sender.join(timeout)


#: what a rank process runs inside its process group: ``(spec, payload, channel, marks,
#: group) -> summary`` (a module-level function: it travels to the forkserver by reference)
RankBody = Callable[[RankSpec, AttemptPayload, "ChildChannel", dict[str, float], RankGroup],
                    dict[str, Any]]


def train_body(spec: RankSpec, payload: AttemptPayload, channel: ChildChannel,
               marks: dict[str, float], group: RankGroup) -> dict[str, Any]:
    """The default body: ``train()``'s training loop."""
    return RankTrainer(spec, payload, channel, marks, group).run()


def child_main(spec: RankSpec, payload: AttemptPayload, control: Any, events: Any,
               body: RankBody | None = None) -> None:
    """Entry point of a rank process: run ``body`` (training by default) in the process group,
    report, and leave without running destructors."""
    marks = {"rank_process": time.time()}
    channel = ChildChannel(control, events)
    code = EXIT_OK
    try:
        import torch

        keep_freed_memory()  # before the model and the first step allocate anything big
        if payload.job.torch_threads:
            torch.set_num_threads(payload.job.torch_threads)
        set_gloo_interface(spec.master_host)
        with process_group(spec) as group:
            marks["process_group"] = time.time()
            spec = dataclasses.replace(spec, rank_traffic=group.traffic)
            channel.forward_output(rank=spec.rank, attempt=spec.attempt, worker=spec.worker)
            summary = (body or train_body)(spec, payload, channel, marks, group)
        outcome: tuple[str, Any] = ("done", summary)
    except BaseException as exc:  # noqa: BLE001 - everything is reported, nothing re-raised
        outcome = ("error", portable_error(exc, spec.rank))
        code = EXIT_FAILED
    try:
        with contextlib.suppress(Exception):
            channel.end_output()
        channel.finish(outcome)
    finally:
        # os._exit: no atexit, no ProcessGroup destructor waiting on a dead peer; the kernel
        # closes our sockets now, which is what makes the other ranks fail fast.
        os._exit(code)


class RankTrainer:
    """The training loop of one rank (inside its rank process)."""

    def __init__(
        self,
        spec: RankSpec,
        payload: AttemptPayload,
        channel: ChildChannel,
        marks: dict[str, float] | None = None,
        group: RankGroup | None = None,
    ) -> None:
        self.spec = spec
        self.group = group
        self.payload = payload
        self.job = payload.job
        self.channel = channel
        self.rank = spec.rank
        self.world = spec.world_size
        self.marks: dict[str, float] = marks if marks is not None else {}

    # ------------------------------------------------------------------ helpers
    def _stop_if_diverged(self, metrics: RankMetrics) -> None:
        """Fail the job, as the user's, once a whole reported window had no finite loss: the
        parameters are NaN or inf from then on, and finishing would hand back (and checkpoint)
        a model that predicts nothing. Restarting from a checkpoint would diverge again."""
        if metrics.diverged is None:
            return
        first, last, loss = metrics.diverged
        steps = f"step {last}" if first == last else f"every step from {first} to {last}"
        raise UserCodeError(
            f"training diverged: the loss was {loss} in {steps}, so the job stops rather than "
            "return a model of NaN weights; lower the learning rate, set clip_grad_norm=, or "
            "check the data and the loss function (checkpoints written before stay)",
            "", self.rank, self.spec.worker,
        )

    def _user(self, what: str) -> contextlib.AbstractContextManager[None]:
        return user_code(what, self.rank, self.spec.worker)

    # ------------------------------------------------------------------ phases
    def _build(self, device: Any) -> tuple[Any, Any, Any]:
        import torch

        with self._user("unpickling the job's model/dataset/loss/optimizer on the worker"):
            objects = unpack_user_objects(self.job.user_objects)
        model_obj, dataset_obj, loss_obj = objects["model"], objects["dataset"], objects["loss_fn"]
        self._optimizer_factory = objects["optimizer"]
        self._collate = objects["collate_fn"]
        self._scheduler_factory = objects["lr_scheduler"]
        self._metric = objects["eval_metric"]
        self._eval_data = None
        with self._user("choosing the precision (autocast=)"):
            self._precision = Precision(self.job.autocast, device)
        torch.manual_seed(self.job.seed)
        random.seed(self.job.seed)
        with self._user("building the model"):
            model = build_model(model_obj).to(device)
        with self._user("building the dataset"):
            dataset = build_dataset(dataset_obj)
            if len(dataset) == 0:
                raise ValueError("the dataset is empty")
        with self._user("building the loss"):
            loss_fn = build_loss(loss_obj)
        if objects["eval_dataset"] is not None:
            with self._user("building eval_dataset"):
                self._eval_data = build_dataset(objects["eval_dataset"])
        return model, dataset, loss_fn

    def _fetch(self, dataset: Any, indices: Any, device: Any) -> Any:
        """The batch at ``indices`` on ``device`` (an empty one for no indices)."""
        with self._user("fetching a batch from the dataset"):
            batch = (fetch(dataset, indices, self._collate) if indices.numel()
                     else empty_like_batch(dataset, self._collate))
        return to_device(batch, device)

    def _preflight(self, model: Any, dataset: Any, loss_fn: Any, device: Any) -> PreflightReport:
        import psutil
        import torch
        import torch.distributed as dist

        check_connectivity(device)
        self.marks["pf_connected"] = time.time()
        memory = (
            torch.cuda.get_device_properties(device).total_memory
            if device.type == "cuda"
            else psutil.virtual_memory().available
        )
        # with grad_accumulation the device holds one micro-batch at a time: so do the probes
        # (a whole share may not fit, which is why accumulation was asked for)
        n1 = max(1, min(-(-self.job.global_batch // self.world // self.job.grad_accumulation),
                        len(dataset)))
        # A second batch size separates per-step overhead from per-sample cost, which only
        # matters for splitting the batch between ranks; one rank times its own batch alone.
        # Half the even share, not twice it: the line through both points is as good and its
        # steps cost half as much, time every rank waits for.
        if self.world == 1:
            n2 = n1
        else:
            n2 = n1 // 2 if n1 > 1 else min(2, len(dataset))
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        # Time whole steps (fetch, forward, backward, optimizer) on a throwaway copy when it is
        # cheap; for big models only forward/backward on the real one (buffers restored after).
        use_copy = 4 * param_bytes < 0.25 * memory
        probe_model, probe_opt = model, None
        if use_copy:
            try:
                probe_model = copy.deepcopy(model)
            except Exception:  # a lock or a file inside the model: time the real one instead
                probe_model = model
            else:
                with self._user("building the optimizer (preflight)"):
                    probe_opt = self._optimizer_factory(probe_model.parameters())
        buffers = [b.detach().clone() for b in model.buffers()]

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def step(n: int, net: Any = None) -> tuple[float, float]:
            sync()
            t0 = time.perf_counter()
            batch = self._fetch(dataset, torch.arange(n), device)
            with self._precision.autocast():
                out = call_model(net or probe_model, batch, loss_fn)
                sync()
                t1 = time.perf_counter()
                loss = loss_of(out, target_of(batch), loss_fn)
            loss.backward()
            if probe_opt is not None:
                probe_opt.step()
                probe_opt.zero_grad(set_to_none=True)
            else:
                probe_model.zero_grad(set_to_none=True)
            sync()
            return t1 - t0, time.perf_counter() - t0

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with self._user("the model's training step (preflight)"):
                cost = measure_step_cost(step, n1, n2, self.job.preflight_steps, dist.barrier)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)
        self.marks["pf_step_cost"] = time.time()
        mine = {
            "worker": self.spec.worker,
            "host": host_of(self.spec.worker),
            "device": str(device),
            "memory_bytes": int(memory),
            **cost,
        }
        devices: list[Any] = [None] * self.world
        dist.all_gather_object(devices, mine)
        self._measured = [str(d["worker"]) for d in devices]  # in rank order
        choose = self.payload.choose_devices and self.world > 1
        costs = StepCosts(
            overhead=[max(float(d["overhead_s"]), 0.0) for d in devices],
            per_sample=[max(float(d["per_sample_s"]), 1e-12) for d in devices],
            memory_bytes=[int(d.get("memory_bytes", 0)) for d in devices],
            global_batch=self.job.global_batch,
            steps=self._steps_left,
            param_bytes=param_bytes,
            replan_s=REGROUP_S,
            homogeneous=len({d["device"].split(":")[0] for d in devices}) == 1,
        )
        short = short_job_placement(costs) if choose else None
        if short is None:
            latency, bandwidth = measure_link(device, probe_bytes(param_bytes))
        else:  # one device alone, whatever the link: it is not measured (nor used)
            latency, bandwidth = 0.0, math.inf
        self.marks["pf_link"] = time.time()
        plan = functools.partial(plan_placement, costs, latency_s=latency,
                                 bandwidth_Bps=bandwidth)
        group_step: float | None = None
        if short is None and probe_opt is not None and times_group_step(
            costs, latency, bandwidth, plan=plan,
            choose_devices=choose, strategy=self.payload.strategy or self.job.strategy,
        ):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                with self._user("the model's training step (preflight)"):
                    group_step = self._measure_group_step(
                        devices, probe_model, step, len(dataset), device
                    )
            self.marks["pf_group_step"] = time.time()
        box: list[Any] = [None]
        if self.rank == 0:
            params = list(model.parameters())
            placement = short
            if choose and placement is None:
                placement = plan(group_step_s=group_step)
            box[0] = build_report(
                devices=devices,
                backend=self.spec.backend,
                latency_s=latency,
                bandwidth_Bps=bandwidth,
                param_count=sum(p.numel() for p in params),
                param_bytes=sum(p.numel() * p.element_size() for p in params),
                global_batch=self.job.global_batch,
                requested=self.payload.strategy or self.job.strategy,
                shares=self.payload.shares,
                local_sgd_every=self.payload.local_sgd_every or self.job.local_sgd_every,
                homogeneous=costs.homogeneous,
                rank_traffic=self.spec.rank_traffic,
                placement=placement,
                placement_note=self.payload.placement,
                strategy_reason=self.payload.strategy_reason,
                names=self.payload.names,
                group_step_s=group_step or 0.0,
            ).to_dict()
        dist.broadcast_object_list(box, src=0)
        return PreflightReport.from_dict(box[0])

    def _measure_group_step(
        self, devices: list[Any], net: Any, step: Any, dataset_len: int, device: Any
    ) -> float:
        """Seconds of one synchronous DDP step of the whole group at the planned shares.

        What the link model leaves out (the stack's latency per collective, DDP's hooks, two
        ranks contending for one machine) shows up here; every rank times the same steps at
        the same moments, and the slowest rank's median is the group's step.
        """
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        from .preflight import plan_shares
        from .sharding import proportional_split

        total = self.job.global_batch
        over = [max(float(d["overhead_s"]), 0.0) for d in devices]
        per = [max(float(d["per_sample_s"]), 1e-12) for d in devices]
        split = proportional_split(total, plan_shares(total, over, per), min_each=1)
        mine = max(1, min(-(-split[self.rank] // self.job.grad_accumulation), dataset_len))
        slowest = max(a + b * n for a, b, n in zip(over, per, split, strict=True))
        # the same count on every rank (from the same gathered numbers): each step is a collective
        reps = max(2, min(5, int(0.5 / max(slowest, 1e-9))))
        ids = [device.index or 0] if device.type == "cuda" else None
        ddp = DDP(net, device_ids=ids, init_sync=False)
        step(mine, ddp)  # DDP builds its buckets on the first backward
        dist.barrier()
        times = [step(mine, ddp)[1] for _ in range(reps)]
        worst = torch.tensor([statistics.median(times)], dtype=torch.float64, device=device)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        return float(worst.item())

    def _checkpoint(
        self,
        kind: str,
        wrapped: Any,
        optimizer: Any,
        strategy: Any,
        position: tuple[int, int],
        global_step: int,
        report: PreflightReport,
        cancelled: bool = False,
    ) -> None:
        import torch.distributed as dist

        strategy.synchronize(wrapped)
        if kind == "final":
            self.marks["final_synced"] = time.time()
        final_only = kind == "final" and not self.job.final_optimizer
        msd, osd = gather_state(wrapped, optimizer, with_optimizer=not final_only)
        # every rank's RNG state, and when its last step ended: the timeline shows how long
        # the end waited for the slowest rank (ranks of local SGD run free between averages)
        gathered: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object((capture_rng(), self.marks.get("last_step")), gathered, dst=0)
        if self.rank != 0:
            return
        rngs = [rng for rng, _ in gathered or []]
        if kind == "final":
            ends = [t for _, t in gathered or [] if t is not None]
            if ends:
                self.marks["last_step_slowest"] = max(ends)
        state = make_checkpoint(
            model_state=msd,
            optimizer_state=osd,
            epoch=position[0],
            step=position[1],
            global_step=global_step,
            rng=rngs,
            extra={
                "lr_scheduler": (self._scheduler.state_dict()
                                 if getattr(self, "_scheduler", None) is not None else None),
                "grad_scaler": self._precision.state_dict(),
            },
            meta={
                "job_id": self.job.job_id,
                "attempt": self.spec.attempt,
                "world_size": self.world,
                "strategy": report.strategy,
                "local_sgd_every": report.local_sgd_every,
                "per_rank_batch": report.per_rank_batch,
                "global_batch": self.job.global_batch,
                "dataset_len": self._dataset_len,
                "seed": self.job.seed,
                "fingerprint": self._fingerprint,
                "total_steps": self._total,
                "finished": kind == "final" and not cancelled and global_step >= self._total,
            },
        )
        data = pack(state)
        msg: dict[str, Any] = {
            "kind": kind,
            "attempt": self.spec.attempt,
            "global_step": global_step,
            "cancelled": cancelled,
            "data": data,
        }
        if kind == "final":
            self.marks["final_packed"] = time.time()
            msg["marks"] = dict(self.marks)
        self.channel.ship(msg)

    def _end_epoch(self, epoch: int, global_step: int, whole: bool, wrapped: Any,
                   strategy: Any, runner: StepRunner, loss_fn: Any, device: Any,
                   report: PreflightReport) -> None:
        """Evaluate (every epoch, and after a last partial one), ship the figures from rank 0,
        and step a per-epoch schedule (``whole``: the epoch ended, not just the run)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        eval_loss = None
        if self._eval_data is not None:
            strategy.synchronize(wrapped)  # local SGD: one model to evaluate, on every rank
            model = wrapped.module if isinstance(wrapped, DDP) else wrapped
            with self._user("evaluating on eval_dataset (eval_metric=)"):
                figures = evaluate(
                    model, self._eval_data, loss_fn, self._metric,
                    lambda ix: self._fetch(self._eval_data, ix, device),
                    rank=self.rank, world=self.world,
                    batch_size=-(-self.job.global_batch // self.world),
                    precision=self._precision, device=device,
                    lockstep=report.strategy == "fsdp",
                )
            eval_loss = figures.get("loss")
            if self.rank == 0:
                self.channel.ship({"kind": "eval", "attempt": self.spec.attempt,
                                   "epoch": epoch, "global_step": global_step, **figures})
        if whole:
            with self._user("stepping the LR scheduler"):
                runner.end_epoch(eval_loss)

    def _check_same_job(self, resume: dict[str, Any]) -> None:
        """Refuse another job's checkpoint as the user's error (never retried), with what differs.

        The notebook checks what it can before anything runs; factories are only known here.
        """
        saved, _ = saved_fingerprint(resume.get("meta") or {})
        diffs = differences(saved, self._fingerprint)
        if diffs:
            where = f"the checkpoint to resume from (step {resume.get('global_step')})"
            raise CheckpointMismatchError(
                mismatch_message(where, diffs), "", self.rank, self.spec.worker
            )

    # ------------------------------------------------------------------ main
    def run(self) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        job = self.job
        device = torch.device(self.spec.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        model, dataset, loss_fn = self._build(device)
        self.marks["built"] = time.time()
        self._dataset_len = len(dataset)
        self._fingerprint = fingerprint(params=model_params(model), optimizer=None,
                                        dataset_len=self._dataset_len,
                                        global_batch=job.global_batch)
        self._total = 0
        resume = unpack(self.payload.resume) if self.payload.resume else None
        if resume is None:
            # identical start on every rank, whatever the factory did
            state = list(model.parameters()) + list(model.buffers())
            if not replicas_identical(state):
                with torch.no_grad():
                    for t in state:
                        dist.broadcast(t.data, src=0)
            self.marks["replicas_equal"] = time.time()
        else:
            self._check_same_job(resume)  # before the preflight: a mismatch costs nothing

        per_epoch = -(-self._dataset_len // job.global_batch)
        planned = job.epochs * per_epoch if job.max_steps is None else min(
            job.epochs * per_epoch, job.max_steps)
        self._steps_left = max(planned - int(resume["global_step"] if resume else 0), 0)
        if self.rank == 0:  # the job shows this phase until the first step (driver.PHASES)
            self.channel.ship({"kind": "phase", "attempt": self.spec.attempt,
                               "phase": "preflight"})
        report = self._preflight(model, dataset, loss_fn, device)
        self.marks["preflight"] = time.time()
        if self.rank == 0:
            self.channel.ship(
                {"kind": "preflight", "attempt": self.spec.attempt, "report": report.to_dict()}
            )
        if report.idle and not self._take_place(report):
            return {"rank": self.rank, "global_step": 0, "cancelled": False, "idle": True}
        return self._train(model, dataset, loss_fn, device, report, resume)

    def _rebalance(self, balancer: Rebalancer, plan: ShardPlan, report: PreflightReport,
                   metrics: RankMetrics, global_step: int, device: Any) -> None:
        """Take the shares the ranks' own step times call for (``rebalance.py``)."""
        sizes = balancer.exchange(plan.per_rank, plan.global_batch, device)
        if sizes is None:
            return
        before = list(plan.per_rank)
        plan.per_rank = sizes
        metrics.local_batch = sizes[self.rank]
        for d, n in zip(report.devices, sizes, strict=True):
            d.batch = n  # checkpoints record the shares in use
        if self.rank == 0:
            self.channel.ship({"kind": "rebalance", "attempt": self.spec.attempt,
                               "global_step": global_step, "before": before, "after": sizes,
                               "workers": [d.worker for d in report.devices]})

    def _take_place(self, report: PreflightReport) -> bool:
        """Re-form the group on the devices ``auto`` chose; False: this rank stays idle."""
        if self.group is None:
            raise RankInfraError("cannot re-form the group: no rendezvous store")
        chosen = [d.worker for d in report.devices]
        ranks = [i for i, w in enumerate(self._measured) if w in chosen]
        spec = regroup(self.spec, self.group, ranks, f"placed-{self.spec.attempt}")
        self.marks["placed"] = time.time()
        if spec is None:
            return False
        self.spec, self.rank, self.world = spec, spec.rank, spec.world_size
        return True

    def _train(
        self,
        model: Any,
        dataset: Any,
        loss_fn: Any,
        device: Any,
        report: PreflightReport,
        resume: dict[str, Any] | None,
    ) -> dict[str, Any]:
        import torch

        job = self.job
        plan = ShardPlan(
            dataset_len=len(dataset),
            global_batch=job.global_batch,
            per_rank=report.per_rank_batch,
            seed=job.seed,
            shuffle=job.shuffle,
        )
        strategy = make_strategy(
            report.strategy, report.local_sgd_every or 8, timeout_s=self.spec.timeout_s
        )
        exact = EXACT[report.strategy]
        with self._user("wrapping the model"):
            wrapped = strategy.wrap(model, device)
        with self._user("building the optimizer"):
            optimizer = self._optimizer_factory(wrapped.parameters())
        self._fingerprint["optimizer"] = type(optimizer).__qualname__
        asked = asked_hyperparameters(optimizer)
        total = job.epochs * plan.steps_per_epoch
        if job.max_steps is not None:
            total = min(total, job.max_steps)
        by_epoch = job.lr_scheduler_interval == "epoch"
        with self._user("building the LR scheduler (lr_scheduler=)"):
            # before any checkpoint is loaded: building a schedule sets the lr of its step 0
            self._scheduler = build_scheduler(
                self._scheduler_factory, optimizer,
                -(-total // plan.steps_per_epoch) if by_epoch else total)
            problem = scheduler_problem(self._scheduler, job.lr_scheduler_interval,
                                        self._eval_data is not None, built=True)
            if problem:
                raise ValueError(problem)
        if self._scheduler is not None:
            asked = unscheduled(asked, optimizer)

        epoch, step, global_step = 0, 0, 0
        if resume is not None:
            self._check_same_job(resume)
            with self._user("loading the checkpoint into the model and optimizer"):
                load_state(wrapped, optimizer, resume)
                if self._scheduler is not None and resume.get("lr_scheduler"):
                    self._scheduler.load_state_dict(resume["lr_scheduler"])
                self._precision.load_state_dict(resume.get("grad_scaler"))
            epoch, step, global_step = resume["epoch"], resume["step"], resume["global_step"]
            if (resume.get("meta") or {}).get("job_id") != job.job_id:
                # another job's checkpoint (a checkpoint_dir): what is asked now wins
                notes = keep_asked_hyperparameters(optimizer, asked)
                if self.rank == 0:
                    self.channel.ship({"kind": "resumed", "attempt": self.spec.attempt,
                                       "global_step": global_step, "hyperparameters": notes})
            rngs = resume.get("rng") or []
            if len(rngs) == self.world:
                restore_rng(rngs[self.rank])
            else:
                torch.manual_seed(job.seed + 7919 * global_step + self.rank)
        else:
            torch.manual_seed(job.seed + self.rank)  # e.g. different dropout masks per rank

        self._total = total
        strategy.begin(wrapped, total)
        runner = StepRunner(
            wrapped, optimizer, loss_fn,
            precision=self._precision,
            no_sync=strategy.no_sync,
            zero_loss=zero_loss,
            accumulation=job.grad_accumulation,
            clip_grad_norm=job.clip_grad_norm,
            scheduler=self._scheduler,
            interval=job.lr_scheduler_interval,
        )
        metrics = RankMetrics(
            emit=self.channel.metrics,
            rank=self.rank,
            worker=self.spec.worker,
            attempt=self.spec.attempt,
            local_batch=report.per_rank_batch[self.rank],
            forward_fraction=report.devices[self.rank].forward_fraction,
            interval_s=job.metrics_interval,
        )
        position = (epoch, step)
        cancelled = False
        step_s = report.compute_s_per_step + report.comm_s_per_step.get(report.strategy, 0.0)
        # The rank process holds everything its forkserver preloaded plus the model and data:
        # each full collection walks all of it, a pause the other ranks wait out in their next
        # all-reduce. None of it becomes garbage while training, so move it out of the
        # collector's sight (docs/benchmarks.md, "Measurements behind code choices").
        gc.freeze()
        vote = StopVote(
            vote_every(step_s, job.control_every),
            self.channel.stop_requested,
            timeout_s=self.spec.timeout_s,
        )
        balancer = None
        if self.world > 1 and self.payload.shares is None and job.shares is None:
            balancer = Rebalancer(
                rank=self.rank, world=self.world, every=period_steps(step_s),
                overhead=[d.overhead_s for d in report.devices],
                forward_fraction=report.devices[self.rank].forward_fraction,
            )
        wrapped.train()
        for ep, st in plan.positions(epoch, step, job.epochs):
            if global_step >= total:
                break
            if vote.should_stop(global_step):
                cancelled = True
                break
            t0 = time.perf_counter()
            idx = plan.rank_indices(ep, st, self.rank)
            mine = int(idx.numel())
            sizes = plan.step_sizes(st)
            scale = plan.loss_scale(st, self.rank) if exact else (1.0 if mine else 0.0)
            with self._user("the training step (forward, loss, backward, optimizer)"):
                loss, forward_s = runner.step(
                    idx, lambda ix: self._fetch(dataset, ix, device), scale,
                    do_step=bool(exact or mine))
            t1 = t0 + forward_s
            comm = strategy.after_step(wrapped, global_step, mine, sum(sizes))
            if "first_step" not in self.marks:
                self.marks["first_step"] = time.time()
                if self.rank == 0:
                    self.channel.ship({"kind": "timeline", "attempt": self.spec.attempt,
                                       "marks": dict(self.marks)})
            global_step += 1
            position = (ep, st + 1) if st + 1 < plan.steps_per_epoch else (ep + 1, 0)
            metrics.record(
                epoch=ep,
                global_step=global_step,
                total_steps=total,
                samples=mine,
                loss=loss,
                step_s=time.perf_counter() - t0,
                forward_s=t1 - t0,
                comm_s=comm,
            )
            self._stop_if_diverged(metrics)
            if st + 1 == plan.steps_per_epoch or global_step >= total:
                self._end_epoch(ep, global_step, st + 1 == plan.steps_per_epoch, wrapped,
                                strategy, runner, loss_fn, device, report)
            if balancer is not None:
                balancer.record(mine, t1 - t0)
                if balancer.due(global_step) and global_step < total:
                    self._rebalance(balancer, plan, report, metrics, global_step, device)
            if job.checkpoint_every and global_step % job.checkpoint_every == 0:
                if global_step < total:
                    metrics.flush(epoch=ep, global_step=global_step, total_steps=total)
                    self._stop_if_diverged(metrics)
                    self._checkpoint(
                        "checkpoint",
                        wrapped,
                        optimizer,
                        strategy,
                        position,
                        global_step,
                        report,
                    )
        vote.close()
        self.marks["last_step"] = time.time()
        metrics.flush(epoch=position[0], global_step=global_step, total_steps=total)
        self._stop_if_diverged(metrics)
        self._checkpoint(
            "final",
            wrapped,
            optimizer,
            strategy,
            position,
            global_step,
            report,
            cancelled=cancelled,
        )
        return {"rank": self.rank, "global_step": global_step, "cancelled": cancelled}
