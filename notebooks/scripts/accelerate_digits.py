"""The digits MLP written for Hugging Face Accelerate: `Accelerator()` finds torchrun's
environment by itself (under torchrun, `accelerate launch` or parallalx), shards the loader,
wraps the model in DDP and gathers the evaluation. Nothing in it knows about parallalx.

    torchrun --nproc-per-node 2 accelerate_digits.py --epochs 8
    parallalx launch accelerate_digits.py --epochs 8
"""

from __future__ import annotations

import argparse

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from ddp_digits import digits


def main(epochs: int = 8, batch_size: int = 32, lr: float = 0.1) -> dict:
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(0)
    train, test = digits()
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True)
    test_loader = DataLoader(test, batch_size=256)
    model, opt, loader, test_loader = accelerator.prepare(model, opt, loader, test_loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs,
                                                steps_per_epoch=len(loader))
    history = []
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in test_loader:
                pred, y = accelerator.gather_for_metrics((model(x).argmax(1), y))
                correct += int((pred == y).sum())
                total += len(y)
        history.append({"epoch": epoch, "loss": loss.item(), "accuracy": correct / total})
        accelerator.print(history[-1])
    accelerator.end_training()
    return {"world_size": accelerator.num_processes, "history": history}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, default=32, help="per-rank batch size")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    args = parser.parse_args()
    main(args.epochs, args.batch_size, args.lr)
