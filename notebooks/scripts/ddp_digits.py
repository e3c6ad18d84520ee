"""A plain DDP training script, written for torchrun: scikit-learn's digits, an MLP, SGD with
momentum, a OneCycleLR schedule stepped per batch, gradient clipping and an evaluation after
each epoch. Nothing in it knows about parallalx.

    torchrun --nproc-per-node 2 ddp_digits.py --epochs 8
    parallalx launch ddp_digits.py --epochs 8          # the same, across your devices
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def digits() -> tuple[TensorDataset, TensorDataset]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=g)
    train, test = order[:1500], order[1500:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def main(epochs: int = 8, batch_size: int = 32, lr: float = 0.1) -> dict:
    dist.init_process_group("gloo")  # torchrun's environment says where and who
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    train, test = digits()
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train, batch_size=batch_size, sampler=sampler)
    model = DDP(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs,
                                                steps_per_epoch=len(loader))
    history = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            correct = (model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean()
        history.append({"epoch": epoch, "loss": loss.item(), "accuracy": float(correct)})
        if rank == 0:
            print(json.dumps(history[-1]), flush=True)
    dist.destroy_process_group()
    return {"world_size": world, "history": history}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, default=32, help="per-rank batch size")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    args = parser.parse_args()
    result = main(args.epochs, args.batch_size, args.lr)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final accuracy {result['history'][-1]['accuracy']:.3f} "
              f"on {result['world_size']} ranks")
