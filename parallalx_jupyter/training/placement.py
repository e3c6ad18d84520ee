"""Which devices train: ``auto`` picks the subset of ranks that finishes soonest.

Adding a device is not free: every step then waits for the slowest rank and for the gradients
to cross the link, and a tiny model's step is mostly that wait (the demo's MLP ran at 0.5x of
one device on two). So the preflight's measurements, all taken with every rank running at the
same time (devices that share a machine share it), are turned into a predicted time to finish
for the k fastest devices, k = 1..N, and the fastest prediction wins:

* k = N uses the measured step of the real group (DDP-wrapped, planned shares), which includes
  what no formula sees: per-collective latency of the stack, hooks, CPU contention;
* k = 1 needs no communication: the fastest device's own measured step;
* 1 < k < N: its planned compute plus the link model, plus the group's unexplained per-step
  excess measured at N (for every strategy: local SGD's steps of a small model measured no
  faster than DDP's).

Leaving devices idle costs re-forming the group on the chosen ranks (``launcher.regroup``).
More devices must be predicted at least :data:`MIN_GAIN` faster than fewer, and to save at
least :data:`MIN_SAVING_S`: near a tie the job trains on fewer devices (the same time, less
to go wrong, devices left free), and small measurement noise does not flip the choice (the
driver also keeps the decision for the same job on the same devices).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .strategies import choose_strategy, comm_seconds

MIN_GAIN = 0.15
#: ... and save at least this much: predictions of millisecond steps are noisy (the demo's MLP
#: flipped between one device and two, and two ran 2.3x slower), and a job one device ends
#: in seconds gains nothing worth the risk from more
MIN_SAVING_S = 1.0


@dataclass(frozen=True)
class Candidate:
    """The prediction for training on the ``ranks`` (indices into the preflight's devices)."""

    ranks: tuple[int, ...]
    strategy: str
    reason: str
    local_sgd_every: int
    step_s: float
    total_s: float  # steps * step_s, plus the cost of re-forming when ranks stay idle


@dataclass(frozen=True)
class Placement:
    chosen: Candidate
    every: Candidate  # the all-devices prediction, for the report's comparison
    #: decided before the link was measured: the job is too short for more devices to pay
    #: (``every`` is then compute alone, a lower bound, and ``gain`` is not a prediction)
    short: bool = False

    @property
    def is_subset(self) -> bool:
        return len(self.chosen.ranks) < len(self.every.ranks)

    @property
    def gain(self) -> float:
        """How many times faster the chosen devices are predicted to finish than all of them."""
        return self.every.total_s / max(self.chosen.total_s, 1e-12)


def _compute_s(
    ranks: Sequence[int], total: int, over: Sequence[float], per: Sequence[float]
) -> float:
    from .preflight import plan_shares
    from .sharding import proportional_split

    a = [over[i] for i in ranks]
    b = [per[i] for i in ranks]
    split = proportional_split(total, plan_shares(total, a, b), min_each=1)
    return max(x + y * n for x, y, n in zip(a, b, split, strict=True))


@dataclass(frozen=True)
class StepCosts:
    """What the preflight gathered from every rank, with the job's size: the inputs of every
    placement decision. Each rank holds the same one, so each decides alike."""

    overhead: Sequence[float]  # per rank: seconds of a step whatever its batch
    per_sample: Sequence[float]  # per rank: seconds per sample of a step
    memory_bytes: Sequence[int]
    global_batch: int
    steps: int  # the steps left to train
    param_bytes: int
    replan_s: float  # what re-forming the group on fewer ranks costs
    homogeneous: bool = True

    @property
    def single(self) -> list[float]:
        """Each device's step on the whole global batch alone."""
        return [a + b * self.global_batch
                for a, b in zip(self.overhead, self.per_sample, strict=True)]

    def compute_s(self, ranks: Sequence[int]) -> float:
        """The slowest share's compute when ``ranks`` split the global batch."""
        return _compute_s(ranks, self.global_batch, self.overhead, self.per_sample)

    def modelled_group_step(self, latency_s: float, bandwidth_Bps: float) -> float:
        """One synchronous DDP step of every device by the link model: the slowest share's
        compute plus the ring all-reduce."""
        n = len(self.overhead)
        return self.compute_s(range(n)) + comm_seconds(
            "ddp", self.param_bytes, n, latency_s, bandwidth_Bps)


#: A group step the link model puts under this is timed for the prediction alone: a few
#: steps cost milliseconds, and there the stack's per-step cost is most of the step (bench
#: (a)'s MLP: 0.96 ms modelled, 2.7 ms measured; predicted 3x faster than it ran)
CHEAP_GROUP_STEP_S = 0.01


def link_bound(costs: StepCosts, latency_s: float, bandwidth_Bps: float) -> bool:
    """True when the link model alone says exact DDP cannot pay (its all-reduce takes more
    than twice the compute of a step): timing a real DDP step would then cost seconds of a
    slow link (a 17M-parameter model: ~0.6 s a step at 1 Gbit/s) to learn nothing.
    Deterministic from numbers every rank holds, so all ranks agree to skip."""
    n = len(costs.overhead)
    compute = max(a + b * costs.global_batch / n
                  for a, b in zip(costs.overhead, costs.per_sample, strict=True))
    return comm_seconds("ddp", costs.param_bytes, n, latency_s, bandwidth_Bps) > 2 * compute


#: What a measured group step may exceed the link model by before a decision taken without
#: it would be wrong: the demo's MLP measured 4.5 ms a step where 1 ms was modelled (the
#: stack's per-collective latency on busy cores), a 66k-parameter CNN 70 ms where 68 ms was
#: modelled (benchmark (c), 1 Gbit/s)
EXCESS_ALLOWANCE_S = 0.005
EXCESS_ALLOWANCE_FRACTION = 0.5


def excess_allowance(modelled_step_s: float) -> float:
    """The unexplained per-step time :func:`group_step_matters` allows for."""
    return max(EXCESS_ALLOWANCE_S, EXCESS_ALLOWANCE_FRACTION * modelled_step_s)


def group_step_matters(plan: Callable[..., Placement]) -> bool:
    """Whether timing real DDP steps of the whole group could change ``plan``'s choice.

    ``plan`` is :func:`plan_placement` with the costs and the link bound. Timing
    the group costs a few of its steps (0.45 s of a CNN's 4.6 s job: a tenth of what two
    devices are there to save) and is only worth it where the choice depends on it: when
    the link model alone and the link model plus :func:`excess_allowance` per step choose
    the same devices and strategy, no measurement within that allowance would choose
    otherwise. Deterministic from numbers every rank holds, so all ranks agree.
    """
    model, worst = plan(group_step_s=None), plan(group_step_s=None, assume_excess=True)
    return (model.chosen.ranks, model.chosen.strategy) != (
        worst.chosen.ranks, worst.chosen.strategy)


def times_group_step(
    costs: StepCosts, latency_s: float, bandwidth_Bps: float, *, choose_devices: bool,
    strategy: str, plan: Callable[..., Placement],
) -> bool:
    """Whether the preflight times real DDP steps of the whole group.

    Where ``auto`` chooses the devices (``choose_devices``): where its choice depends on
    them (:func:`group_step_matters`), or where they are cheap (:data:`CHEAP_GROUP_STEP_S`)
    and make the prediction honest; never where the link model already rules DDP out
    (:func:`link_bound`), which timing could only confirm. For an explicit ``ddp`` the
    caller chose the devices and the strategy, and the steps serve the prediction alone:
    timed wherever they are cheap, link-bound or not (a loaded machine's 2.4 ms collective
    made a 0.6 ms step link-bound, and the prediction then said 330 steps/s for a run of
    138). Deterministic from numbers every rank holds,
    so all ranks agree on the collectives that follow.
    """
    if len(costs.overhead) < 2:
        return False
    cheap = costs.modelled_group_step(latency_s, bandwidth_Bps) <= CHEAP_GROUP_STEP_S
    if not choose_devices:
        return cheap and strategy == "ddp"
    if link_bound(costs, latency_s, bandwidth_Bps):
        return False
    return cheap or group_step_matters(plan)


def short_job_placement(costs: StepCosts) -> Placement | None:
    """The fastest device alone, when it finishes the whole job in under :data:`MIN_SAVING_S`.

    :func:`plan_placement` would choose it whatever the link measures (more devices must save
    at least that much, and cannot save more than the whole job), so measuring the link and a
    group step would only add their cost: on the demo's 0.4 s job they were 55 ms of the
    0.1 s that two devices cost over one. Deterministic from the gathered step costs, so every
    rank skips the same collectives. None: the job is long enough to measure everything.
    """
    n = len(costs.overhead)
    if n < 2:
        return None
    single = costs.single
    fastest = min(range(n), key=lambda i: (single[i], i))
    total = costs.steps * single[fastest] + costs.replan_s
    if total > MIN_SAVING_S:
        return None
    name, reason, h = choose_strategy(
        param_bytes=costs.param_bytes, world=1, compute_s=single[fastest],
        single_s=single[fastest], latency_s=0.0, bandwidth_Bps=float("inf"),
        min_memory_bytes=int(costs.memory_bytes[fastest]),
        homogeneous_devices=costs.homogeneous,
    )
    compute_all = costs.compute_s(range(n))
    return Placement(
        chosen=Candidate((fastest,), name, reason, h, single[fastest], total),
        every=Candidate(tuple(range(n)), "ddp", "not measured", 0, compute_all,
                        costs.steps * compute_all),
        short=True,
    )


def plan_placement(
    costs: StepCosts,
    *,
    latency_s: float,
    bandwidth_Bps: float,
    group_step_s: float | None,
    assume_excess: bool = False,
) -> Placement:
    """Predict each prefix of the fastest devices and return the best and the all-device one.

    ``group_step_s`` is the measured synchronous step of all N ranks (None: not measured, the
    model alone predicts, or with ``assume_excess`` the model plus :func:`excess_allowance`).
    """
    n = len(costs.overhead)
    global_batch, param_bytes = costs.global_batch, costs.param_bytes
    single = costs.single
    order = sorted(range(n), key=lambda i: (single[i], i))
    fastest_single = min(single)
    excess = 0.0
    if n > 1 and (group_step_s is not None or assume_excess):
        modelled = costs.modelled_group_step(latency_s, bandwidth_Bps)
        excess = (max(group_step_s - modelled, 0.0) if group_step_s is not None
                  else excess_allowance(modelled))
    candidates = []
    for k in range(1, n + 1):
        # A group of two or more keeps rank 0: it holds the rendezvous store their new group
        # forms through (``launcher.regroup``). One device alone needs no store.
        ranks = tuple(sorted(order[:k] if k == 1 else [0, *[i for i in order if i][: k - 1]]))
        if k > global_batch:  # every rank needs at least one sample per step
            break
        compute = costs.compute_s(ranks)
        name, reason, h = choose_strategy(
            param_bytes=param_bytes,
            world=k,
            compute_s=compute,
            single_s=fastest_single,
            latency_s=latency_s,
            bandwidth_Bps=bandwidth_Bps,
            min_memory_bytes=min(int(costs.memory_bytes[i]) for i in ranks),
            homogeneous_devices=costs.homogeneous,
        )
        comm = comm_seconds(name, param_bytes, k, latency_s, bandwidth_Bps, h or 8, compute)
        # Every strategy pays the excess each step: measured, local SGD's steps of a small
        # model ran no faster than DDP's (1.27 vs 1.24 ms; two ranks' helper threads and
        # per-step work on shared cores, not the averages it skips).
        step = compute + comm + (excess if k > 1 else 0.0)
        if k == n and group_step_s is not None and name in ("ddp", "ddp_fp16"):
            step = max(step, group_step_s) if name == "ddp" else step
        total = costs.steps * step + (costs.replan_s if k < n else 0.0)
        candidates.append(Candidate(ranks, name, reason, h, step, total))
    every = candidates[-1]
    fastest = min(c.total_s for c in candidates)
    # Near a tie, fewer devices: the same time with less to go wrong and devices left free.
    best = next(c for c in candidates
                if c.total_s <= max((1 + MIN_GAIN) * fastest, fastest + MIN_SAVING_S))
    return Placement(chosen=best, every=every)
