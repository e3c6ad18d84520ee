"""Torch runs in children of the worker's forkserver, never in the Dask worker process."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest
import torch

import parallalx_jupyter as px
from parallalx_jupyter.training.errors import RankInfraError
from parallalx_jupyter.training.torch_processes import call_in_child

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.timeout(300)


def all_reduce_ranks() -> float:
    import torch
    import torch.distributed as dist

    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    return float(total.item())


def torch_in_this_process() -> dict[str, bool]:
    with open("/proc/self/maps") as f:
        mapped = "libtorch_cpu" in f.read()
    return {"imported": "torch" in sys.modules, "mapped": mapped}


class Chatty(torch.nn.Module):
    """A model whose forward says something once per rank process."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)
        self.said = False

    def forward(self, x):  # noqa: ANN001, ANN201
        if not self.said and x.shape[0] > 1:
            import torch.distributed as dist

            print(f"forward on rank {dist.get_rank()} sees {tuple(x.shape)}")
            self.said = True
        return self.linear(x)


def test_launch_and_train_leave_the_worker_processes_without_torch(cluster2) -> None:
    client = cluster2.client
    assert px.launch(all_reduce_ranks, client=client, report=False).result(180) == 3.0
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    job = px.train(Chatty(), data, torch.nn.functional.cross_entropy,
                   lambda p: torch.optim.SGD(p, lr=0.1), epochs=1, batch_size=16,
                   client=client, report=False)
    job.result(180)
    assert job.state == "finished"
    # train()'s ranks forward what the model's code prints too, each line after its rank
    text = job.output_text()
    assert "] forward on rank 0 sees (8, 4)" in text and "] forward on rank 1 sees" in text
    # probe, rendezvous store and ranks ran in the forkserver's children: the workers (and so
    # their GPUs, on a GPU device) never loaded torch
    seen = client.run(torch_in_this_process)
    assert len(seen) == 2
    assert all(v == {"imported": False, "mapped": False} for v in seen.values()), seen


def raises() -> None:
    raise ValueError("broken on purpose")


def dies() -> None:
    os._exit(3)


def sleeps() -> None:
    import time

    time.sleep(30)


def test_a_child_s_failure_comes_back_as_infrastructure_error_with_its_traceback() -> None:
    assert call_in_child(os.getpid, timeout_s=120) != os.getpid()
    with pytest.raises(RankInfraError, match=r"(?s)raises failed in its torch process.*"
                       r"ValueError: broken on purpose"):
        call_in_child(raises, timeout_s=60)
    with pytest.raises(RankInfraError, match="exited with code 3 without answering"):
        call_in_child(dies, timeout_s=60)
    with pytest.raises(RankInfraError, match="did not answer within 1 s"):
        call_in_child(sleeps, timeout_s=1)
