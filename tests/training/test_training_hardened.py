"""The training engine on parallalx's own hardened cluster (the one the devices really form).

Scheduler with the admission layer, workers started by ``WorkerSupervisor`` with device
certificates signed by the cluster CA: a device's certificate may not open a Dask client, so
this proves the engine needs none inside its tasks. The main client is the main device's.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from parallalx_jupyter.workloads.train import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
from cluster_helpers import Harness  # noqa: E402
from test_training_digits import digits_split  # noqa: E402

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT_EVERY = 20


@pytest.fixture
async def hardened(tmp_path):
    """Hardened scheduler + two device workers (each its own device certificate)."""
    h = Harness(tmp_path)
    try:
        sp = await h.scheduler(host="127.0.0.1")
        workers = {}
        for dev in ("DEVA", "DEVB"):
            creds = h.device_credentials(dev)
            workers[dev] = await h.worker(
                sp,
                creds,
                memory_limit="4GiB",
                # worker_main runs by path with a clean environment: make the package
                # importable even where it is not installed
                extra_pythonpath=[str(REPO)],
                env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            )
        yield sp, workers
    finally:
        await h.close()


def _digits_job(sp, **kw):
    from distributed import Client

    client = Client(sp.address, security=sp.security(), timeout="30s")
    client.wait_for_workers(2, timeout=60)
    x_tr, y_tr, x_te, y_te = digits_split()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    job = train(
        model,
        (x_tr, y_tr),
        nn.CrossEntropyLoss(),
        functools.partial(torch.optim.Adam, lr=3e-3),
        epochs=15,
        batch_size=64,
        client=client,
        torch_threads=1,
        **kw,
    )
    return client, job, (x_te, y_te)


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.e2e  # a TLS scheduler and a device worker, started here
def test_device_certificate_cannot_open_a_client(tmp_path) -> None:
    """The premise: inside a task on a device worker, ``get_client()`` is refused."""

    async def main():
        h = Harness(tmp_path)
        try:
            sp = await h.scheduler(host="127.0.0.1")
            await h.worker(sp, h.device_credentials("DEVA"), extra_pythonpath=[str(REPO)])
            client = await sp.client()
            try:

                def try_client():
                    from distributed import get_client

                    try:
                        get_client(timeout=5)
                    except Exception as exc:  # noqa: BLE001
                        return type(exc).__name__
                    return "connected"

                return await client.submit(try_client, pure=False)
            finally:
                await client.close()
        finally:
            await h.close()

    assert asyncio.run(main()) != "connected"


async def test_digits_on_two_devices_reaches_95_percent(hardened) -> None:
    sp, _ = hardened

    def run():
        # both devices train (auto would keep this small MLP on one)
        client, job, (x_te, y_te) = _digits_job(sp, strategy="ddp")
        try:
            t0 = time.perf_counter()
            trained = job.result(timeout=150)
            elapsed = time.perf_counter() - t0
            # the finished job holds nothing on this scheduler (its admission layer lets the
            # main client close topics) or on the client
            assert not [t for t in client._event_handlers if t.startswith("parallalx-")]
            assert client.run_on_scheduler(
                lambda dask_scheduler: [t for t in dask_scheduler._broker._topics
                                        if t.startswith("parallalx-")]) == []
            return job, _accuracy(trained, x_te, y_te), elapsed
        finally:
            client.close()

    job, acc, elapsed = await asyncio.to_thread(run)
    print(f"\n{job.preflight}\nhardened digits: accuracy {acc:.3f} in {elapsed:.1f}s")
    assert acc >= 0.95
    assert job.restarts == 0
    assert job.progress["global_step"] == job.progress["total_steps"] == 15 * 23
    assert {r["rank"] for r in job.progress["ranks"]} == {0, 1}
    # said in the report, not only in the docs (PyPI's torch has no gloo TLS transport)
    assert "rank traffic: not encrypted: this torch build has no gloo TLS transport" in str(
        job.preflight
    )
    names = {d.worker for d in job.preflight.devices}
    assert len(names) == 2


async def test_sigkill_device_worker_finishes_with_survivor(hardened, tmp_path) -> None:
    sp, workers = hardened
    pids = {ws.status()["address"]: ws.pid for ws in workers.values()}

    def run():
        client, job, (x_te, y_te) = _digits_job(
            sp,
            checkpoint_dir=tmp_path / "ckpt",
            checkpoint_every=CHECKPOINT_EVERY,
            min_workers=1,
            group_timeout=20.0,
            metrics_interval=0.05,
            strategy="ddp",  # both devices train (auto would keep this tiny model on one)
        )
        try:
            deadline = time.monotonic() + 90
            while job.progress.get("global_step", 0) < 60:
                assert not job.done(), job.exception()
                assert time.monotonic() < deadline, f"no progress: {job.progress}"
                time.sleep(0.02)
            victim = job.preflight.devices[1].worker
            killed_at = time.time()
            os.kill(pids[victim], signal.SIGKILL)
            trained = job.result(timeout=150)
            return job, victim, killed_at, _accuracy(trained, x_te, y_te)
        finally:
            client.close()

    job, victim, killed_at, acc = await asyncio.to_thread(run)
    [restart] = [e for e in job.events if e["kind"] == "restart"]
    print(
        f"\nhardened SIGKILL: restarted after {restart['time'] - killed_at:.2f}s at step "
        f"{restart['resume_step']} (failed at {restart['failed_at_step']}), accuracy {acc:.3f}"
    )
    assert restart["lost_workers"] == [victim]
    assert restart["repeated_steps"] <= CHECKPOINT_EVERY
    assert victim not in {d.worker for d in job.preflight.devices}
    assert job.progress["global_step"] == job.progress["total_steps"] == 15 * 23
    assert acc >= 0.95


class _Explodes(nn.Module):
    """A model whose forward fails on purpose, the user's bug on a device."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):  # noqa: ANN001, ANN201
        raise ValueError("shape bug in the user's forward")


async def test_a_devices_user_error_comes_back_as_text_with_its_class(hardened) -> None:
    """A device's error is rebuilt from its text on the scheduler (never unpickled), and keeps
    its class, so it is still reported once as the user's bug, not retried as a lost device."""
    from parallalx_jupyter.training import UserCodeError

    sp, _ = hardened

    def run():
        import cloudpickle
        from distributed import Client

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # _Explodes travels by value
        client = Client(sp.address, security=sp.security(), timeout="30s")
        client.wait_for_workers(2, timeout=60)
        x_tr, y_tr, _, _ = digits_split()
        try:
            job = train(_Explodes(), (x_tr, y_tr), nn.CrossEntropyLoss(),
                        functools.partial(torch.optim.SGD, lr=0.1), epochs=1, batch_size=64,
                        client=client, torch_threads=1, strategy="ddp")
            with pytest.raises(UserCodeError) as info:
                job.result(timeout=120)
            return job, info.value
        finally:
            client.close()

    job, err = await asyncio.to_thread(run)
    assert "shape bug in the user's forward" in str(err)
    assert "Traceback" in err.remote_traceback and err.rank in (0, 1)
    assert job.restarts == 0
