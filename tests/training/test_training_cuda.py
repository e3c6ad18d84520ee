"""The CUDA/NCCL path of the training engine, on a real GPU (skipped without one).

Self-contained on purpose (plain-TCP Dask processes, no Jupyter, no ``cryptography``) so it
also runs with ``pytest --noconftest`` on a bare GPU machine that has only torch and the Dask
stack: ``python -m pytest --noconftest -p no:asyncio tests/training/test_training_cuda.py``.
What it pins down:

* every rank has its own GPU -> NCCL, the model and batches live on ``cuda:0``;
* a CPU worker next to a GPU worker -> gloo, both train together (mixed group);
* two workers that see the same card -> gloo (NCCL would abort: "Duplicate GPU detected");
* DDP on the GPU computes the same update as one process on the concatenated batch.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("distributed")

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from parallalx_jupyter.workloads.train import train  # noqa: E402

pytestmark = pytest.mark.timeout(240)


class PlainCluster:
    """A TCP scheduler and worker processes; ``gpu`` per worker says whether it sees the card."""

    def __init__(self, workdir: Path, gpus: list[bool]) -> None:
        self.workdir = workdir
        self.gpus = gpus
        self.procs: list[subprocess.Popen[bytes]] = []
        self.client = None

    def _spawn(self, args: list[str], log: str, **env: str) -> subprocess.Popen[bytes]:
        full = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            OMP_NUM_THREADS="1",
            **env,
        )
        out = open(self.workdir / log, "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen([sys.executable, "-m", *args], env=full, stdout=out, stderr=out)
        self.procs.append(p)
        return p

    def __enter__(self) -> PlainCluster:
        from distributed import Client

        sched_file = self.workdir / "scheduler.json"
        self._spawn(
            ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)],
            "scheduler.log",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, (self.workdir / "scheduler.log").read_text()
            time.sleep(0.1)
        time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        for i, gpu in enumerate(self.gpus):
            self._spawn(
                ["distributed.cli.dask_worker", address, "--no-nanny", "--nthreads", "1",
                 "--name", f"w{i}", "--host", "127.0.0.1", "--no-dashboard",
                 "--memory-limit", "0"],
                f"w{i}.log",
                **({} if gpu else {"CUDA_VISIBLE_DEVICES": ""}),
            )  # fmt: skip
        self.client = Client(address, timeout="60s")
        self.client.wait_for_workers(len(self.gpus), timeout=120)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator:
    opened: list[PlainCluster] = []

    def make(gpus: list[bool]) -> PlainCluster:
        c = PlainCluster(tmp_path, gpus).__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    f = functools.partial(torch.as_tensor, dtype=torch.float32)
    return f(x_tr) / 16.0, torch.as_tensor(y_tr), f(x_te) / 16.0, torch.as_tensor(y_te)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def _train_digits(client, strategy: str = "ddp", epochs: int = 10):  # noqa: ANN001, ANN202
    x_tr, y_tr, x_te, y_te = digits()
    job = train(
        mlp(),
        (x_tr, y_tr),
        nn.CrossEntropyLoss(),
        functools.partial(torch.optim.Adam, lr=3e-3),
        epochs=epochs,
        batch_size=64,
        strategy=strategy,
        client=client,
    )
    trained = job.result(timeout=180)
    with torch.no_grad():
        acc = (trained(x_te).argmax(1) == y_te).float().mean().item()
    print(f"\n{job.preflight}\n{strategy}: accuracy {acc:.3f}")
    return job, acc


@pytest.mark.parametrize("strategy", ["ddp", "ddp_fp16", "fsdp"])
def test_one_gpu_rank_uses_nccl_on_cuda(cluster_factory, strategy: str) -> None:
    c = cluster_factory([True])
    job, acc = _train_digits(c.client, strategy)
    assert job.preflight.backend == "nccl"
    assert [d.device for d in job.preflight.devices] == ["cuda:0"]
    assert acc >= 0.93


def test_gpu_and_cpu_workers_train_together_over_gloo(cluster_factory) -> None:
    c = cluster_factory([True, False])
    job, acc = _train_digits(c.client)
    assert job.preflight.backend == "gloo"
    assert sorted(d.device for d in job.preflight.devices) == ["cpu", "cuda:0"]
    assert acc >= 0.93


def test_two_workers_on_one_gpu_fall_back_to_gloo(cluster_factory) -> None:
    c = cluster_factory([True, True])
    job, acc = _train_digits(c.client, epochs=5)
    assert job.preflight.backend == "gloo"
    assert [d.device for d in job.preflight.devices] == ["cuda:0", "cuda:0"]
    assert acc >= 0.9


def test_gpu_ddp_step_equals_one_large_batch(cluster_factory) -> None:
    """Two ranks (one on the GPU, one on the CPU), one SGD step == one process, whole batch."""
    c = cluster_factory([True, False])
    x_tr, y_tr, _, _ = digits()
    n = 64
    x, y = x_tr[:n], y_tr[:n]
    job = train(
        mlp(),
        (x, y),
        nn.CrossEntropyLoss(),
        functools.partial(torch.optim.SGD, lr=0.5),
        epochs=1,
        batch_size=n,
        strategy="ddp",
        shuffle=False,
        shares=[0.25, 0.75],
        client=c.client,
    )
    trained = job.result(timeout=180)
    ref = mlp()
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    nn.CrossEntropyLoss()(ref(x), y).backward()
    opt.step()
    for a, b in zip(trained.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-4, atol=1e-5)
