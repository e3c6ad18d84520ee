"""Preflight: prove the group works, measure it, and show the physical limit before training.

Three things are measured because each one changes a decision:

* versions (before the group forms): a torch/Python/CUDA mismatch is refused with a table of who
  runs what, since mismatched builds fail later in far more confusing ways;
* the link: a tiny all-reduce (latency) and one of up to 4 MB (bus bandwidth ``B``, from the
  ring formula), which bound what any data-parallel strategy can reach;
* each device: a few forward/backward passes of the *real* model on a real sample batch (no
  optimizer step, RNG and buffers restored afterwards), giving samples/s for the batch shares
  and the forward share of compute used later to estimate communication share per step.

The report then states compute time per step against the ring all-reduce time
``2(N-1)/N * S / B`` and the predicted speed-up, and names the strategy chosen from it.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import VersionMismatchError
from .launcher import gloo_tls_available
from .placement import MIN_GAIN, MIN_SAVING_S, Placement

PROBE_BYTES = 4_000_000
MIN_PROBE_BYTES = 256_000


def probe_bytes(param_bytes: int) -> int:
    """The bandwidth probe's size: four gradients' worth, between 256 kB and 4 MB. Four 10 MB
    all-reduces cost ~0.3 s at 1 Gbit/s, as long as a small model's whole training (for a
    model that small the link's latency, not its bandwidth, decides) and 0.36 s of the 17M
    MLP's 1.2 s preflight in benchmark (c); three of 4 MB take ~0.1 s there."""
    return int(min(PROBE_BYTES, max(MIN_PROBE_BYTES, 4 * param_bytes)))


# --------------------------------------------------------------------------- environment
def _gpu_uuid(torch: Any) -> str:
    """Identity of the GPU a rank would use (cuda:0 of this process): host + card UUID."""
    props = torch.cuda.get_device_properties(0)
    card = str(getattr(props, "uuid", "")) or f"{props.name}/{getattr(props, 'pci_bus_id', 0)}"
    return f"{socket.gethostname()}/{card}"


def probe_environment() -> dict[str, Any]:
    """Versions and capacity of this process (runs as a Dask task on each worker, and locally).

    Returns plain data (msgpack/pickle friendly) so it can also go into events.
    """
    import psutil
    import torch

    cuda = bool(torch.cuda.is_available())
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion would need torch to unpickle
        "cuda_version": torch.version.cuda,
        "cuda_available": cuda,
        "device_count": torch.cuda.device_count() if cuda else 0,
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "cpu_count": os.cpu_count() or 1,
        "memory_available": int(psutil.virtual_memory().available),
        "cuda_memory": int(torch.cuda.mem_get_info(0)[1]) if cuda else 0,
        "gpu_uuid": _gpu_uuid(torch) if cuda else None,
        "gloo_tls": gloo_tls_available(),
    }
    try:
        from distributed import get_worker

        info["worker"] = get_worker().address
    except ValueError:
        info["worker"] = "notebook"
    return info


def driver_environment() -> dict[str, Any]:
    """The notebook's row of the version check (:func:`check_versions`).

    Without importing torch where it is not loaded yet: a ``parallalx launch`` of a script
    never needs torch in its own process, and importing it there would put seconds in front
    of the first job's probe. The installed distribution's version is the one an import
    would report.
    """
    import importlib.metadata

    torch = sys.modules.get("torch")
    version = str(torch.__version__) if torch is not None else importlib.metadata.version("torch")
    return {"host": socket.gethostname(), "python": platform.python_version(), "torch": version,
            "worker": "notebook"}


# This worker process's versions and devices, probed once (they cannot change under a running
# process: its forkserver has the torch it preloaded).
_WORKER_ENVIRONMENT: dict[str, Any] = {}
PROBE_CHILD_TIMEOUT_S = 600.0  # the first probe waits for the forkserver's imports


def probe_task() -> bytes:
    """:func:`probe_environment` as a Dask task: its answer travels back as data (``wire``).

    Probed in a child of the worker's forkserver (``torch_processes.py``): the worker process
    itself never imports torch nor initialises CUDA, and the first probe starts the imports
    that every rank process then shares. Free memory is read here, fresh each time.
    """
    import psutil
    from distributed import get_worker

    from ..wire import to_wire
    from .torch_processes import call_in_child

    if not _WORKER_ENVIRONMENT:
        _WORKER_ENVIRONMENT.update(
            call_in_child(probe_environment, timeout_s=PROBE_CHILD_TIMEOUT_S)
        )
    info = dict(_WORKER_ENVIRONMENT)
    info.update(
        pid=os.getpid(),
        worker=get_worker().address,
        memory_available=int(psutil.virtual_memory().available),
    )
    return to_wire(info)


def _release(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: CPU and CUDA wheels of one release talk the same protocol."""
    return version.split("+", 1)[0]


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_versions(workers: Mapping[str, Mapping[str, Any]], driver: Mapping[str, Any]) -> None:
    """Refuse mismatched torch releases, Python minor versions, or CUDA versions among GPU ranks.

    The notebook process is included: it pickles the model and loads the results, so it must
    match too. Raises :class:`VersionMismatchError` with a per-process table.
    """
    rows = [("notebook", driver)] + sorted(workers.items())
    problems = []
    torch_versions = {_release(str(info["torch"])) for _, info in rows}
    if len(torch_versions) > 1:
        problems.append(f"torch releases differ: {sorted(torch_versions)}")
    py_versions = {_minor(str(info["python"])) for _, info in rows}
    if len(py_versions) > 1:
        problems.append(f"Python versions differ: {sorted(py_versions)}")
    cuda_versions = {
        str(info["cuda_version"]) for _, info in workers.items() if info.get("cuda_available")
    }
    if len(cuda_versions) > 1:
        problems.append(f"CUDA versions differ between GPU workers: {sorted(cuda_versions)}")
    if problems:
        table = "\n".join(
            f"  {name:<32} python {info['python']:<8} torch {info['torch']:<16} "
            f"cuda {info.get('cuda_version') or '-'}"
            for name, info in rows
        )
        raise VersionMismatchError(
            "refusing to train across mismatched environments: "
            + "; ".join(problems)
            + "\n"
            + table
            + "\nInstall the same versions on every device (the environment step does this)."
        )


# --------------------------------------------------------------------------- measurements
def check_connectivity(device: Any) -> None:
    """Every rank contributes 1; anything but world_size means a rank is not really connected."""
    import torch
    import torch.distributed as dist

    t = torch.ones(1, device=device)
    dist.all_reduce(t)
    if int(t.item()) != dist.get_world_size():
        raise RuntimeError(f"connectivity check summed to {t.item()}, not the world size")


def measure_link(device: Any, size_bytes: int = PROBE_BYTES, iters: int = 2) -> tuple[float, float]:
    """(latency s, ring bus bandwidth bytes/s) from a 4-byte and a ``size_bytes`` all-reduce.

    Bus bandwidth ``B = 2(N-1)/N * S / t`` is the figure the ring formula needs, so a prediction
    for any model size is ``latency + 2(N-1)/N * S_model / B``. Single rank: (0, inf).
    """
    import torch
    import torch.distributed as dist

    n = dist.get_world_size()
    if n == 1:
        return 0.0, math.inf

    def timed(t: torch.Tensor) -> float:
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(t)
        if t.is_cuda:
            torch.cuda.synchronize(t.device)
        return time.perf_counter() - start

    small = torch.zeros(1, device=device)
    timed(small)
    latency = statistics.median(timed(small) for _ in range(5))
    big = torch.zeros(max(1, size_bytes // 4), device=device)
    timed(big)
    t_big = statistics.median(timed(big) for _ in range(iters))
    bus = 2 * (n - 1) / n * big.numel() * 4 / max(t_big - latency, 1e-9)
    # Every rank must agree on the numbers (they feed a deterministic plan): use rank 0's.
    vals = torch.tensor([latency, bus], dtype=torch.float64, device=device)
    dist.broadcast(vals, src=0)
    return float(vals[0]), float(vals[1])


def measure_step_cost(
    step: Callable[[int], tuple[float, float]],
    n1: int,
    n2: int,
    steps: int = 3,
    barrier: Callable[[], None] | None = None,
    budget_s: float = 0.5,
) -> dict[str, float]:
    """Fit ``time(n) = overhead + n * per_sample`` from timed steps at two batch sizes.

    ``step(n)`` runs one training step on ``n`` samples and returns (forward_s, total_s);
    ``n2`` may be smaller or larger than ``n1`` (the size whose forward share is reported). A
    fixed per-step cost (Python, optimizer, kernel launches) dominates small models, so a single
    samples/s figure would predict speed-ups that never materialise. One warm-up call per size
    is discarded; medians of the rest are used. Returns ``overhead_s``, ``per_sample_s`` and
    ``forward_fraction`` (forward share of the step at ``n1``, used for the comm estimate).

    ``barrier`` (the process group's) is passed after the warm-ups, so no rank times its steps
    while another is still in its one-off start-up (cuBLAS handles, allocator growth): on a GPU
    shared by two ranks that made one rank look 75x slower than the other.
    """
    warm = step(n1)[1]
    if n2 != n1:
        warm = max(warm, step(n2)[1])
    if barrier is not None:
        barrier()
    # Time-boxed: a big model's step can take a second; about half a second per size is plenty
    # (each rank times on its own, nothing collective in between, so counts may differ).
    repeats = max(2, min(steps, int(budget_s / max(warm, 1e-9))))

    def timed(n: int) -> tuple[float, float]:
        runs = [step(n) for _ in range(repeats)]
        return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

    f1, t1 = timed(n1)
    if n2 != n1:
        _, t2 = timed(n2)
        per_sample = max((t2 - t1) / (n2 - n1), 0.05 * t1 / n1)
    else:
        per_sample = t1 / n1
    overhead = max(t1 - per_sample * n1, 0.0)
    return {
        "overhead_s": overhead,
        "per_sample_s": per_sample,
        "forward_fraction": min(max(f1 / max(t1, 1e-12), 0.05), 0.95),
    }


def balance(total: int, overhead: Sequence[float], per_sample: Sequence[float]) -> list[float]:
    """Real-valued shares that make every rank's step take equally long.

    With ``t_i(n) = a_i + b_i n`` and ``sum n_i = total``: ``T = (total + sum a_i/b_i) /
    sum 1/b_i`` and ``n_i = (T - a_i) / b_i`` (floored at a tiny positive weight).
    """
    inv = [1.0 / max(b, 1e-12) for b in per_sample]
    t = (total + sum(a * i for a, i in zip(overhead, inv, strict=True))) / sum(inv)
    return [max((t - a) * i, 1e-6) for a, i in zip(overhead, inv, strict=True)]


BALANCE_MIN_GAIN = 0.10


def plan_shares(total: int, overhead: Sequence[float], per_sample: Sequence[float]) -> list[float]:
    """Batch shares: step-time balancing where it clearly pays, else proportional to throughput.

    :func:`balance` trusts the fitted overheads; for a small model the per-sample slope is
    lost in timing noise, every device looks like "all overhead", and a 0.3 ms difference in
    overhead made it give one rank 63 samples of 64 (the demo, two equal CPU processes).
    Shares proportional to each device's samples/s at an even split are the robust default;
    balancing replaces them only when the model predicts a step at least
    :data:`BALANCE_MIN_GAIN` shorter (e.g. a GPU next to a CPU).
    """
    from .sharding import proportional_split

    n = len(overhead)

    def step_time(weights: Sequence[float]) -> float:
        split = proportional_split(total, weights, min_each=1)
        return max(a + b * k for a, b, k in zip(overhead, per_sample, split, strict=True))

    even = total / n
    proportional = [even / (a + b * even) for a, b in zip(overhead, per_sample, strict=True)]
    balanced = balance(total, overhead, per_sample)
    if step_time(balanced) <= (1 - BALANCE_MIN_GAIN) * step_time(proportional):
        return balanced
    return proportional


# --------------------------------------------------------------------------- report
@dataclass
class DeviceReport:
    """One rank's place in the group and its measured speed."""

    rank: int
    worker: str
    host: str
    device: str
    samples_per_s: float  # effective, at this rank's batch, fixed step cost included
    forward_fraction: float
    batch: int = 0
    memory_bytes: int = 0
    overhead_s: float = 0.0
    per_sample_s: float = 0.0
    name: str = ""  # the device's name, where the driver knows it

    @property
    def label(self) -> str:
        return self.name or self.worker


@dataclass
class PreflightReport:
    """What preflight measured and what it concluded (readable ``str``, ``to_dict`` for events)."""

    world_size: int
    backend: str
    devices: list[DeviceReport]
    latency_s: float
    bandwidth_Bps: float
    param_count: int
    param_bytes: int
    global_batch: int
    compute_s_per_step: float
    single_device_s_per_step: float
    comm_s_per_step: dict[str, float]
    strategy: str
    reason: str
    predicted_speedup: float
    ideal_speedup: float
    local_sgd_every: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    #: how gradients travel between ranks: encrypted or not, and why (``agree_on_rank_tls``)
    rank_traffic: str = ""
    #: size of the all-reduce that measured the bandwidth
    probe_bytes: int = PROBE_BYTES
    #: which devices train and why, in one line (``placement.py``)
    placement: str = ""
    #: workers measured here that ``auto`` leaves idle: the job re-forms without them
    idle: list[str] = field(default_factory=list)
    #: measured seconds of one synchronous step of this whole group (0: not measured)
    group_step_s: float = 0.0
    #: predicted seconds per step of the training that follows (chosen devices, strategy)
    predicted_step_s: float = 0.0
    #: steps/s the training then ran at (set after the run; 0 until then)
    measured_steps_per_s: float = 0.0

    @property
    def exact(self) -> bool:
        """False where the maths is not one big batch (local SGD averages parameters)."""
        return self.strategy != "local_sgd"

    @property
    def predicted_steps_per_s(self) -> float:
        return 1.0 / self.predicted_step_s if self.predicted_step_s > 0 else 0.0

    @property
    def per_rank_batch(self) -> list[int]:
        return [d.batch for d in self.devices]

    @property
    def allreduce_s_per_step(self) -> float:
        """Ring all-reduce time of one fp32 gradient, ``2(N-1)/N * S / B`` plus latency."""
        return self.comm_s_per_step.get("ddp", 0.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bandwidth_Bps"] = None if math.isinf(self.bandwidth_Bps) else self.bandwidth_Bps
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreflightReport:
        d = dict(d)
        d["devices"] = [DeviceReport(**x) for x in d["devices"]]
        if d.get("bandwidth_Bps") is None:
            d["bandwidth_Bps"] = math.inf
        return cls(**d)

    def __str__(self) -> str:
        lines = [
            f"Preflight: {self.world_size} rank(s) over {self.backend}, model "
            f"{_si(self.param_count)} parameters ({_si(self.param_bytes, 'B')} of gradients)",
            f"  {'rank':<5}{'worker':<28}{'device':<10}{'samples/s':>12}{'batch':>7}",
        ]
        for d in self.devices:
            lines.append(
                f"  {d.rank:<5}{d.label[-27:]:<28}{d.device:<10}"
                f"{d.samples_per_s:>12,.0f}{d.batch:>7}"
            )
        if self.world_size > 1:
            lines.append(
                f"  link: {_si(self.bandwidth_Bps * 8, 'bit/s')} all-reduce bus bandwidth, "
                f"{self.latency_s * 1e6:,.0f} us latency ({_si(self.probe_bytes, 'B')} probe)"
            )
        comm = self.allreduce_s_per_step
        ratio = comm / self.compute_s_per_step if self.compute_s_per_step > 0 else math.inf
        lines.append(
            f"  per step (global batch {self.global_batch}): compute "
            f"{_ms(self.compute_s_per_step)} vs ring all-reduce 2(N-1)/N*S/B "
            f"{_ms(comm)} (comm/compute {ratio:.0%})"
        )
        chosen = self.comm_s_per_step.get(self.strategy, comm)
        lines.append(
            f"  predicted speed-up vs the fastest single device: {self.predicted_speedup:.2f}x "
            f"(ideal {self.ideal_speedup:.2f}x; {self.strategy} moves {_ms(chosen)} per step)"
        )
        extra = f", average every {self.local_sgd_every} steps" if self.local_sgd_every else ""
        lines.append(f"  strategy: {self.strategy}{extra} - {self.reason}")
        if not self.exact and self.world_size > 1:
            lines.append(
                "  note: not exact data parallelism: each device trains on its own shard and "
                "parameters are averaged periodically, so results differ from one big batch"
            )
        if self.placement:
            lines.append(f"  devices: {self.placement}")
        if self.predicted_step_s > 0:
            speed = f"  speed: predicted {self.predicted_steps_per_s:,.1f} steps/s"
            if self.measured_steps_per_s > 0:
                ratio = self.measured_steps_per_s / self.predicted_steps_per_s
                speed += f", measured {self.measured_steps_per_s:,.1f} ({ratio:.2f}x predicted)"
            lines.append(speed)
        if self.rank_traffic and self.world_size > 1:
            lines.append(f"  rank traffic: {self.rank_traffic}")
        return "\n".join(lines)


def _si(x: float, unit: str = "") -> str:
    if math.isinf(x):
        return f"inf {unit}".strip()
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}".strip()
    return f"{x:.3g} {unit}".strip()


def _ms(s: float) -> str:
    return f"{s * 1e3:.3g} ms"


def build_report(
    *,
    devices: list[dict[str, Any]],
    backend: str,
    latency_s: float,
    bandwidth_Bps: float,
    param_count: int,
    param_bytes: int,
    global_batch: int,
    requested: str,
    shares: Sequence[float] | None = None,
    local_sgd_every: int | None = None,
    homogeneous: bool = True,
    rank_traffic: str = "",
    placement: Placement | None = None,
    placement_note: str = "",
    strategy_reason: str | None = None,
    names: Mapping[str, str] | None = None,
    group_step_s: float = 0.0,
) -> PreflightReport:
    """Turn the gathered measurements into batch shares, a strategy and a prediction.

    Runs on rank 0 only; the result is broadcast so every rank follows the same plan. Shares
    equalise per-rank step times (see :func:`balance`) unless ``shares`` overrides them; the
    slowest rank's step sets the compute time; the single-device baseline is the fastest
    device running the whole global batch.
    """
    from .sharding import proportional_split
    from .strategies import STRATEGIES, choose_strategy, comm_seconds

    labels = dict(names or {})
    idle: list[str] = []
    line = placement_note
    if placement is not None and placement.is_subset:
        # the report is the plan of the devices that train; the others leave the group
        chosen = placement.chosen
        idle = [str(devices[i]["worker"]) for i in range(len(devices)) if i not in chosen.ranks]
        devices = [devices[i] for i in chosen.ranks]
        line = _placement_line(
            [labels.get(str(d["worker"]), str(d["worker"])) for d in devices],
            len(devices) + len(idle), placement.gain,
            short_s=placement.chosen.total_s if placement.short else None,
        )
        requested, strategy_reason = chosen.strategy, f"auto: {chosen.reason}"
        local_sgd_every = chosen.local_sgd_every or local_sgd_every
    over = [max(float(d["overhead_s"]), 0.0) for d in devices]
    per = [max(float(d["per_sample_s"]), 1e-12) for d in devices]
    weights = list(shares) if shares is not None else plan_shares(global_batch, over, per)
    if len(weights) != len(devices):
        raise ValueError(f"shares has {len(weights)} entries for {len(devices)} ranks")
    per_rank = proportional_split(global_batch, weights, min_each=1)
    step_times = [a + b * n for a, b, n in zip(over, per, per_rank, strict=True)]
    compute_s = max(step_times)
    single_s = min(a + b * global_batch for a, b in zip(over, per, strict=True))
    balanced = balance(global_batch, over, per)
    ideal_s = max(a + b * n for a, b, n in zip(over, per, balanced, strict=True))
    world = len(devices)
    if requested == "auto":
        name, reason, h = choose_strategy(
            param_bytes=param_bytes,
            world=world,
            compute_s=compute_s,
            single_s=single_s,
            latency_s=latency_s,
            bandwidth_Bps=bandwidth_Bps,
            min_memory_bytes=min(int(d.get("memory_bytes", 0)) for d in devices),
            homogeneous_devices=homogeneous,
        )
    else:
        name, reason, h = requested, strategy_reason or "requested by the caller", 0
    if name == "local_sgd":
        h = int(local_sgd_every or h or 8)
    comm = {
        s: comm_seconds(s, param_bytes, world, latency_s, bandwidth_Bps, h or 8, compute_s)
        for s in STRATEGIES
    }
    predicted_step = compute_s + comm[name]
    if group_step_s > 0 and name == "ddp" and (placement is None or not placement.is_subset):
        # measured on these very ranks: what the model leaves out (the stack's per-step cost)
        predicted_step = max(predicted_step, group_step_s)
    if placement is not None:
        chosen = placement.chosen
        if chosen.strategy == name:  # it includes the measured group step, or is one device
            predicted_step = chosen.step_s
        if not placement.is_subset:
            line = (
                f"training on all {world}: predicted "
                f"{single_s / max(predicted_step, 1e-12):.2f}x the fastest device alone"
            )
    reports = [
        DeviceReport(
            rank=i,
            worker=str(d["worker"]),
            host=str(d["host"]),
            device=str(d["device"]),
            samples_per_s=per_rank[i] / max(step_times[i], 1e-12),
            forward_fraction=float(d["forward_fraction"]),
            batch=per_rank[i],
            memory_bytes=int(d.get("memory_bytes", 0)),
            overhead_s=over[i],
            per_sample_s=per[i],
            name=labels.get(str(d["worker"]), ""),
        )
        for i, d in enumerate(devices)
    ]
    return PreflightReport(
        world_size=world,
        backend=backend,
        devices=reports,
        latency_s=latency_s,
        bandwidth_Bps=bandwidth_Bps,
        param_count=param_count,
        param_bytes=param_bytes,
        global_batch=global_batch,
        compute_s_per_step=compute_s,
        single_device_s_per_step=single_s,
        comm_s_per_step=comm,
        strategy=name,
        reason=reason,
        predicted_speedup=single_s / (compute_s + comm[name]),
        ideal_speedup=single_s / max(ideal_s, 1e-12),
        local_sgd_every=h if name == "local_sgd" else 0,
        rank_traffic=rank_traffic,
        probe_bytes=probe_bytes(param_bytes),
        placement=line,
        idle=idle,
        group_step_s=group_step_s,
        predicted_step_s=predicted_step,
    )


def _placement_line(
    chosen: Sequence[str], world: int, gain: float, short_s: float | None = None
) -> str:
    """"training on gaming-pc alone: predicted 4.8x faster than all three; ..."; for a job
    decided as too short (``short_s``: its predicted seconds on that device), says so instead
    of a gain nothing measured."""
    who = f"{chosen[0]} alone" if len(chosen) == 1 else ", ".join(chosen)
    others = "the other stays idle" if world - len(chosen) == 1 else "the others stay idle"
    if short_s is not None:
        return (f"training on {who}: the whole job is predicted to take {short_s:.2g} s there, "
                f"too short for {world} devices to save {MIN_SAVING_S:g} s; {others}")
    if gain < 1:  # near a tie: more devices were a little faster, not enough to be worth it
        return (f"training on {who}: all {world} were predicted only {1 / gain:.2f}x faster, "
                f"less than the {MIN_GAIN:.0%} and {MIN_SAVING_S:g} s more devices must save; "
                f"{others}")
    return f"training on {who}: predicted {gain:.1f}x faster than all {world}; {others}"
