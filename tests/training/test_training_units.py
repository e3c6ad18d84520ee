"""Fast tests of the pure parts: sharding maths, checkpoint files, strategy choice, metrics."""

from __future__ import annotations

import math
import os
import threading

import pytest
import torch

from parallalx_jupyter.training.checkpoint import (
    CheckpointStore,
    capture_rng,
    make_checkpoint,
    pack,
    restore_rng,
    unpack,
    write_atomic,
)
from parallalx_jupyter.training.errors import UserCodeError, VersionMismatchError
from parallalx_jupyter.training.launcher import choose_backend, interface_for, order_workers
from parallalx_jupyter.training.metrics import ProgressAggregator, ProgressHub
from parallalx_jupyter.training.preflight import (
    PreflightReport,
    balance,
    build_report,
    check_versions,
    measure_step_cost,
    plan_shares,
)
from parallalx_jupyter.training.recovery import QUICK_STALE_S, device_label, silent_losses
from parallalx_jupyter.training.sharding import ShardPlan, proportional_split
from parallalx_jupyter.training.stop_vote import MAX_VOTE_EVERY, vote_every
from parallalx_jupyter.training.strategies import (
    AVERAGE_EVERY_COMM_TIMES,
    choose_strategy,
    comm_seconds,
)


# --------------------------------------------------------------------------- sharding
@pytest.mark.parametrize(
    ("total", "weights"),
    [(64, [3, 1]), (64, [1, 1, 1]), (7, [100, 1, 1]), (5, [0.0, 2.0]), (3, [1, 1, 1])],
)
def test_proportional_split_sums_and_floors(total: int, weights: list[float]) -> None:
    out = proportional_split(total, weights, min_each=1)
    assert sum(out) == total
    assert all(x >= 1 for x in out)


def test_proportional_split_is_proportional() -> None:
    assert proportional_split(64, [3, 1]) == [48, 16]
    assert proportional_split(10, [1, 1, 1], min_each=0) in ([4, 3, 3],)
    with pytest.raises(ValueError):
        proportional_split(2, [1, 1, 1])


@pytest.mark.parametrize("per_rank", [[48, 16], [32, 32], [60, 3, 1]])
def test_every_sample_exactly_once_per_epoch(per_rank: list[int]) -> None:
    plan = ShardPlan(dataset_len=1000, global_batch=64, per_rank=per_rank, seed=3)
    for epoch in range(2):
        seen = torch.cat(
            [
                plan.rank_indices(epoch, step, r)
                for step in range(plan.steps_per_epoch)
                for r in range(plan.world_size)
            ]
        )
        assert sorted(seen.tolist()) == list(range(1000))
    assert not torch.equal(plan.permutation(0), plan.permutation(1))


def test_last_partial_batch_and_loss_weights() -> None:
    plan = ShardPlan(dataset_len=65, global_batch=64, per_rank=[48, 16])
    assert plan.steps_per_epoch == 2
    assert plan.step_sizes(1) == [1, 0]  # one sample left: rank 1 gets none
    assert plan.rank_indices(0, 1, 1).numel() == 0
    # DDP averages over W ranks: sum_i scale_i * mean_i / W == global mean weighting
    for step in range(2):
        sizes = plan.step_sizes(step)
        scales = [plan.loss_scale(step, r) for r in range(2)]
        weights = [s / plan.world_size for s in scales]
        assert sum(weights) == pytest.approx(1.0)
        assert weights == pytest.approx([n / sum(sizes) for n in sizes])


def test_resume_positions_cover_rest_of_training() -> None:
    plan = ShardPlan(dataset_len=100, global_batch=32, per_rank=[16, 16])
    full = list(plan.positions(0, 0, 2))
    assert len(full) == 8
    assert list(plan.positions(1, 1, 2)) == full[5:]


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_weights_only(tmp_path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = make_checkpoint(
        model_state=model.state_dict(),
        optimizer_state=opt.state_dict(),
        epoch=1,
        step=2,
        global_step=9,
        rng=[capture_rng()],
        meta={"global_batch": 8},
    )
    data = pack(state)
    path = tmp_path / "c.pt"
    write_atomic(path, data)
    loaded = torch.load(path, weights_only=True)  # peers' files are untrusted
    assert loaded["global_step"] == 9
    back = unpack(data)
    assert torch.equal(back["model"]["weight"], model.weight)
    a = torch.rand(3)
    restore_rng(back["rng"][0])
    b = torch.rand(3)
    restore_rng(back["rng"][0])
    assert torch.equal(b, torch.rand(3)) and a.shape == b.shape


def test_write_atomic_leaves_no_temp_files(tmp_path) -> None:
    target = tmp_path / "x.pt"
    threads = [
        threading.Thread(target=write_atomic, args=(target, bytes([i]) * 1000)) for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(target.read_bytes()) == 1000
    assert os.listdir(tmp_path) == ["x.pt"]


def test_store_keeps_newest_and_reloads_from_disk(tmp_path) -> None:
    def ckpt(step: int) -> bytes:
        return pack(
            make_checkpoint(
                model_state={},
                optimizer_state={},
                epoch=0,
                step=step,
                global_step=step,
                rng=[],
                meta={},
            )
        )

    store = CheckpointStore(tmp_path, keep=2)
    for step in (5, 10, 15):
        store.put(ckpt(step), step)
    assert store.put(ckpt(7), 7) is None  # a late, older checkpoint never wins
    assert [p.name for p in store.files()] == ["checkpoint-000000010.pt", "checkpoint-000000015.pt"]
    (tmp_path / "checkpoint-000000020.pt").write_bytes(b"garbage")  # torn/foreign: skipped
    fresh = CheckpointStore(tmp_path)
    assert unpack(fresh.latest())["global_step"] == 15


# --------------------------------------------------------------------------- strategy, report
def test_strategy_choice_follows_the_measurement() -> None:
    common = dict(world=2, latency_s=1e-4, min_memory_bytes=8 * 10**9)
    fast_link = choose_strategy(
        param_bytes=4 * 10**6, compute_s=0.1, single_s=0.2, bandwidth_Bps=10e9, **common
    )
    assert fast_link[0] == "ddp"
    # 16.8 M parameters over ~1 Gbit/s: DESIGN's measured case, compute 0.046 s
    slow = choose_strategy(
        param_bytes=67_200_000, compute_s=0.046, single_s=0.092, bandwidth_Bps=120e6, **common
    )
    assert slow[0] == "local_sgd" and slow[2] >= 2
    # the period: five fp32 all-reduce times of compute; what one average then sends is each
    # rank's progress in fp16 (ddp_fp16's bytes), once every H steps
    c_ddp = comm_seconds("ddp", 67_200_000, 2, 1e-4, 120e6)
    c_fp16 = comm_seconds("ddp_fp16", 67_200_000, 2, 1e-4, 120e6)
    assert slow[2] == math.ceil(AVERAGE_EVERY_COMM_TIMES * c_ddp / 0.046)
    assert comm_seconds("local_sgd", 67_200_000, 2, 1e-4, 120e6, slow[2]) == pytest.approx(
        c_fp16 / slow[2]
    )
    medium = choose_strategy(
        param_bytes=67_200_000, compute_s=0.6, single_s=1.2, bandwidth_Bps=120e6, **common
    )
    assert medium[0] == "ddp_fp16"
    huge = choose_strategy(
        param_bytes=4 * 10**9,
        compute_s=1.0,
        single_s=2.0,
        bandwidth_Bps=10e9,
        world=2,
        latency_s=1e-4,
        min_memory_bytes=8 * 10**9,
    )
    assert huge[0] == "fsdp"
    assert comm_seconds("ddp", 1000, 1, 0.1, 1.0) == 0.0


def test_report_is_readable_and_roundtrips() -> None:
    devices = [
        {"worker": f"tls://10.0.0.{i}:1", "host": f"10.0.0.{i}", "device": "cpu",
         "overhead_s": 0.0, "per_sample_s": b, "forward_fraction": 0.4,
         "memory_bytes": 8 * 10**9}
        for i, b in enumerate([1 / 3000, 1 / 1000])
    ]  # fmt: skip
    rep = build_report(
        devices=devices,
        backend="gloo",
        latency_s=1e-4,
        bandwidth_Bps=1.2e8,
        param_count=1_000_000,
        param_bytes=4_000_000,
        global_batch=64,
        requested="auto",
    )
    assert rep.per_rank_batch == [48, 16]
    text = str(rep)
    for needle in ("2(N-1)/N*S/B", "speed-up", "strategy:", "samples/s", "bit/s"):
        assert needle in text
    again = PreflightReport.from_dict(rep.to_dict())
    assert again.per_rank_batch == [48, 16] and again.strategy == rep.strategy


def test_version_mismatch_is_refused_with_a_table() -> None:
    base = {"python": "3.11.7", "torch": "2.13.0+cpu", "cuda_version": None}
    check_versions({"w1": dict(base, torch="2.13.0+cu126")}, base)  # same release: fine
    with pytest.raises(VersionMismatchError, match="torch releases differ") as err:
        check_versions({"w1": dict(base, torch="2.12.1")}, base)
    assert "w1" in str(err.value) and "notebook" in str(err.value)
    with pytest.raises(VersionMismatchError, match="Python"):
        check_versions({"w1": dict(base, python="3.12.1")}, base)


def test_backend_and_rank_order() -> None:
    assert choose_backend(["host/gpu-a", "host/gpu-b"]) == "nccl"
    assert choose_backend(["host/gpu-a", None]) == "gloo"
    assert choose_backend([None, None]) == "gloo"
    assert choose_backend(["host/gpu-a", "host/gpu-a"]) == "gloo"  # NCCL: duplicate GPU
    ws = ["tls://10.0.0.9:1", "tls://10.0.0.2:5", "tls://10.0.0.5:3"]
    assert order_workers(ws, prefer_host="10.0.0.5")[0] == "tls://10.0.0.5:3"
    assert interface_for("127.0.0.1") == "lo"


# --------------------------------------------------------------------------- metrics
def test_aggregator_eta_stragglers_and_hub_isolation() -> None:
    agg = ProgressAggregator("j", total_steps=100)
    agg.new_attempt(0)
    base = {"attempt": 0, "epoch": 0, "global_step": 50, "total_steps": 100, "steps": 10,
            "samples": 320, "samples_per_s": 1000.0, "steps_per_s": 10.0, "loss": 1.0,
            "step_time_s": 0.1, "comm_share": 0.2, "local_batch": 32, "worker": "w"}  # fmt: skip
    agg.ingest(dict(base, rank=0, compute_s=0.05))
    rec = agg.ingest(dict(base, rank=1, compute_s=0.09, loss=3.0))
    assert rec is not None
    assert rec["samples_per_s"] == 2000.0 and rec["loss"] == 2.0
    assert rec["eta_s"] == pytest.approx(5.0)
    assert rec["stragglers"] == [1]
    assert agg.ingest(dict(base, rank=0, compute_s=0.05, attempt=-5)) is None

    hub = ProgressHub()
    got = []
    hub.subscribe(lambda r: 1 / 0)
    unsub = hub.subscribe(got.append, {"progress"})
    hub.emit(rec)
    hub.emit({"kind": "state"})
    unsub()
    hub.emit(rec)
    assert got == [rec]


def test_explicit_shares_must_name_every_rank_until_a_device_is_lost() -> None:
    from parallalx_jupyter.training.driver import explicit_shares

    two = ["tcp://a:1", "tcp://b:1"]
    assert explicit_shares(None, two, 0) is None
    assert explicit_shares([3, 1], two, 0) == [3, 1]
    with pytest.raises(ValueError, match="shares has 3 entries for 2 workers"):
        explicit_shares([1, 1, 1], two, 0)
    with pytest.raises(ValueError, match="not all be zero"):
        explicit_shares([0, 0], two, 0)
    # re-formed without a device: the survivors' measured speeds decide instead of failing
    assert explicit_shares([1, 1, 1], two, 1) is None


def test_lost_peers_are_told_from_the_users_errors_by_whole_words() -> None:
    from parallalx_jupyter.training.errors import is_comm_error

    lost = [
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer",
        "ProcessGroupGloo::allreduce: Timed out waiting 8000ms",
        "Connection reset by peer", "Socket Timeout", "NCCL error: unhandled system error",
    ]
    assert all(is_comm_error(RuntimeError(text)) for text in lost)
    assert not is_comm_error(RuntimeError("TypeError: mat1 and mat2 shapes cannot be multiplied"))
    assert not is_comm_error(UserCodeError("forward raised TypeError: boom", "TypeError: boom"))
    assert not is_comm_error(TypeError("peer"))  # only runtime/OS errors come from the network


def test_user_code_error_pickles_with_traceback() -> None:
    import pickle

    err = UserCodeError("boom", "Traceback...\nValueError: boom", 1, "tls://x:1")
    back = pickle.loads(pickle.dumps(err))
    assert "Remote traceback" in str(back) and "rank 1" in str(back)


def test_balance_equalises_step_times_with_fixed_overheads() -> None:
    over, per = [0.002, 0.0005], [1e-4, 4e-4]
    shares = balance(64, over, per)
    assert sum(shares) == pytest.approx(64)
    times = [a + b * n for a, b, n in zip(over, per, shares, strict=True)]
    assert times[0] == pytest.approx(times[1])
    rep = build_report(
        devices=[
            {"worker": "a", "host": "a", "device": "cpu", "overhead_s": a, "per_sample_s": b,
             "forward_fraction": 0.3}
            for a, b in zip(over, per, strict=True)
        ],
        backend="gloo", latency_s=1e-4, bandwidth_Bps=1e9, param_count=10, param_bytes=40,
        global_batch=64, requested="ddp",
    )  # fmt: skip
    assert rep.ideal_speedup < 2.0  # a fixed step cost caps the gain
    assert sum(rep.per_rank_batch) == 64


@pytest.mark.parametrize("n2", [32, 128])
def test_step_cost_fit_works_from_a_smaller_or_a_larger_second_size(n2: int) -> None:
    # a step of n samples "takes" 0.07 s + n * 1.4 ms, its forward a third of that
    sizes: list[int] = []

    def step(n: int) -> tuple[float, float]:
        sizes.append(n)
        return (0.07 + 0.0014 * n) / 3, 0.07 + 0.0014 * n

    cost = measure_step_cost(step, 64, n2, steps=3, budget_s=1.0)
    assert cost["per_sample_s"] == pytest.approx(0.0014)
    assert cost["overhead_s"] == pytest.approx(0.07)
    assert cost["forward_fraction"] == pytest.approx(1 / 3)
    assert sorted(set(sizes)) == sorted({64, n2})  # one warm-up and the repeats at each size
    assert sizes.count(n2) == sizes.count(64) == 4


def test_rendezvous_store_is_registered_claimed_and_closed() -> None:
    import socket
    import time

    from parallalx_jupyter.training.launcher import (
        claim_rendezvous,
        close_rendezvous,
        open_rendezvous,
        open_rendezvous_stores,
    )

    port = open_rendezvous("jobx", 0, "127.0.0.1", 10.0, 60.0)
    assert open_rendezvous("jobx", 0, "127.0.0.1", 10.0, 60.0) == port  # idempotent
    assert ("jobx", 0) in open_rendezvous_stores()
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    store = claim_rendezvous("jobx", 0)
    assert store is not None and ("jobx", 0) not in open_rendezvous_stores()
    assert close_rendezvous("jobx", 0) is False  # already claimed
    store.close()
    port2 = open_rendezvous("jobx", 1, "127.0.0.1", 10.0, 60.0)
    assert close_rendezvous("jobx", 1) is True

    def refused() -> bool:  # the store's server thread shuts its listener down asynchronously
        try:
            socket.create_connection(("127.0.0.1", port2), timeout=1).close()
        except OSError:
            return True
        return False

    deadline = time.monotonic() + 10
    while not refused():
        assert time.monotonic() < deadline, "the rendezvous port stayed open"
        time.sleep(0.05)


def test_unclaimed_rendezvous_store_expires() -> None:
    import time

    from parallalx_jupyter.training.launcher import open_rendezvous, open_rendezvous_stores

    open_rendezvous("joby", 0, "127.0.0.1", 10.0, 0.2)
    time.sleep(0.5)
    assert ("joby", 0) not in open_rendezvous_stores()


def test_checkpoints_ship_in_chunks_and_reassemble() -> None:
    import threading

    from parallalx_jupyter.jobs.topics import JobTopics
    from parallalx_jupyter.training import rank
    from parallalx_jupyter.training.checkpoint import CheckpointStore
    from parallalx_jupyter.training.driver import Driver
    from parallalx_jupyter.training.metrics import ProgressHub
    from parallalx_jupyter.training.spec import JobSpec

    data = bytes(range(256)) * (3 * rank.CHUNK_BYTES // 256 + 7)
    msg = {"kind": "checkpoint", "attempt": 0, "global_step": 5, "cancelled": False, "data": data}
    events = list(rank.ship_messages(msg, seq=1))
    assert len(events) == 4 and all(len(e["data"]) <= rank.CHUNK_BYTES for e in events)
    assert list(rank.ship_messages({"kind": "preflight", "report": {}}, 2)) == [
        {"kind": "preflight", "report": {}}
    ]

    class FakeClient:
        def run_on_scheduler(self, *a, **k):
            raise RuntimeError("not here")

    driver = Driver.__new__(Driver)
    driver.client = FakeClient()
    driver.job = JobSpec(job_id="j", user_objects=b"", epochs=1, global_batch=8)
    driver.store = CheckpointStore(None)
    driver.hub = ProgressHub()
    driver.cancel_event = threading.Event()
    driver._chunks = {}
    driver._final = None
    driver.topics = JobTopics(driver.client)
    for e in reversed(events):  # order does not matter
        driver._handle_ship(e)
    assert driver.store.global_step == 5 and driver.store.latest() == data
    assert driver._chunks == {}


def test_train_without_client_or_cluster_is_a_clear_error(tmp_path, monkeypatch) -> None:
    import parallalx_jupyter
    from parallalx_jupyter.training.errors import TrainingError

    monkeypatch.setenv("PARALLALX_HOME", str(tmp_path))
    x = torch.randn(8, 2)
    with pytest.raises(TrainingError, match="no parallalx cluster on this device"):
        parallalx_jupyter.train(
            torch.nn.Linear(2, 2), (x, x), torch.nn.MSELoss(), torch.optim.SGD
        )


def test_stop_votes_come_about_every_quarter_second_whatever_the_step_time():
    assert vote_every(0.003, 10) == 83  # a small model: not every 30 ms
    assert vote_every(0.5, 10) == 10  # a big one: never fewer steps than the minimum
    assert vote_every(1e-7, 10) == MAX_VOTE_EVERY
    assert vote_every(0.0, 10) == 10  # no estimate (e.g. an old report)


def test_noise_in_tiny_models_overheads_does_not_skew_the_shares() -> None:
    # the demo's two equal CPU ranks as measured (ms): step at 32 and 64 samples 1.89/1.66 and
    # 1.62/1.20, so both slopes were clamped and the fit is "all overhead", 1.80 vs 1.54 ms;
    # balancing those gave one rank 63 samples of 64
    per = [0.05 * 1.89e-3 / 32, 0.05 * 1.62e-3 / 32]
    over = [1.89e-3 - per[0] * 32, 1.62e-3 - per[1] * 32]
    assert proportional_split(64, balance(64, over, per), min_each=1)[0] <= 2
    split = proportional_split(64, plan_shares(64, over, per), min_each=1)
    assert 26 <= split[0] <= 32 <= split[1] <= 38, split
    # a real difference in fixed cost (a GPU-like device with a large launch overhead and a
    # tiny per-sample cost next to a CPU) is still balanced: equal step times
    over, per = [0.004, 0.0002], [2e-6, 2e-4]
    shares = plan_shares(64, over, per)
    assert shares == balance(64, over, per)
    times = [a + b * n for a, b, n in zip(over, per, shares, strict=True)]
    assert times[0] == pytest.approx(times[1])


# --------------------------------------------------------------------------- recovery
def test_a_stale_heartbeat_while_every_rank_is_silent_is_a_loss() -> None:
    cut, survivor = "tls://10.77.0.2:4000", "tls://10.77.0.1:4000"
    ages = {cut: QUICK_STALE_S + 0.5, survivor: 0.3}
    assert silent_losses([cut, survivor], ages, quiet_for=QUICK_STALE_S + 0.5) == {cut}
    # the ranks still report: a late heartbeat is the scheduler's view lagging, not a loss
    assert silent_losses([cut, survivor], ages, quiet_for=1.0) == set()
    # a merely slow survivor: heartbeats late by a few seconds on a loaded machine
    assert silent_losses([cut, survivor], {cut: 3.0, survivor: 0.3}, quiet_for=30.0) == set()
    # every heartbeat stale at once: the scheduler (or our view of it) stalled, not the devices
    stalled = {cut: 9.0, survivor: 9.0}
    assert silent_losses([cut, survivor], stalled, quiet_for=30.0) == set()
    # a long step or checkpoint raises the bar for how long the ranks may be quiet
    assert silent_losses([cut, survivor], ages, quiet_for=5.0, quiet_s=12.0) == set()


def test_lost_devices_are_shown_by_name_never_by_address_when_a_name_is_known() -> None:
    addr = "tls://192.168.1.7:40331"
    names = {"a1b2c3": "Ada's laptop"}
    assert device_label(addr, "a1b2c3", names) == "Ada's laptop"
    assert device_label(addr, "a1b2c3/gpu1", names) == "Ada's laptop/gpu1"
    assert device_label(addr, "host2") == "host2"  # a plain Dask cluster's chosen name
    assert device_label(addr, "a1b2c3") == "a1b2c3"  # not paired (yet): its ID, still a name
    assert device_label(addr, "0") == f"worker 0 ({addr})"  # LocalCluster's numbers
    assert device_label(addr, addr) == addr
    assert device_label(addr) == addr


def test_what_cannot_travel_gets_the_way_out_that_fits_what_was_given() -> None:
    """QA: a factory closing over a lock was told to 'pass a zero-argument factory', and an
    optimizer factory to take no arguments (optimizer factories take the parameters)."""
    from torch import nn

    from parallalx_jupyter.training.spec import cannot_ship, dumps_for_workers

    lock = threading.Lock()
    err = TypeError("cannot pickle '_thread.lock' object")
    factory = cannot_ship("model", err, lambda: (lock, nn.Linear(2, 2))[1])
    assert "model is a factory already: create what cannot be copied" in str(factory)
    assert "=lambda: ..." not in str(factory)
    assert "model=lambda: ..." in str(cannot_ship("model", err, nn.Linear(2, 2)))
    optimizer = cannot_ship("optimizer", err, object())
    assert "optimizer=lambda params: torch.optim.SGD(params" in str(optimizer)
    with pytest.raises(TypeError, match="optimizer is a factory already"):
        dumps_for_workers({"model": nn.Linear(2, 2),
                           "optimizer": lambda p: (lock, torch.optim.SGD(p, lr=0.1))[1]})


def test_a_window_without_one_finite_loss_marks_the_rank_diverged() -> None:
    """One overflowing step (fp16, skipped by the grad scaler) is not divergence; a window in
    which every loss is NaN is (the parameters are NaN from then on)."""
    from parallalx_jupyter.training.metrics import RankMetrics

    sent: list[dict] = []
    metrics = RankMetrics(emit=sent.append, rank=0, worker="w", attempt=0, local_batch=4,
                          forward_fraction=0.5, interval_s=1e9)

    def window(*losses: float, end: int) -> None:
        for loss in losses:
            metrics.record(epoch=0, global_step=end, total_steps=99, samples=4,
                           loss=torch.tensor(loss), step_s=0.01, forward_s=0.005)
        metrics.flush(epoch=0, global_step=end, total_steps=99)

    window(1.0, math.inf, 0.9, end=3)
    assert metrics.diverged is None and math.isinf(sent[-1]["loss"])
    window(math.nan, math.nan, end=5)
    assert metrics.diverged is not None and metrics.diverged[:2] == (4, 5)
