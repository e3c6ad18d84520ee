"""A two-layer BERT built from its config (no download) trained with the `transformers`
Trainer on generated sequences: is token 7 in the sequence? The Trainer finds torchrun's
environment by itself and trains with DDP over gloo on CPUs. Nothing in it knows about
parallalx.

    torchrun --nproc-per-node 2 hf_trainer_tiny_bert.py --epochs 2
    parallalx launch hf_trainer_tiny_bert.py --epochs 2
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

VOCAB, LENGTH, MARK = 64, 16, 7


class Sequences(torch.utils.data.Dataset):
    """Dict items, as tokenised text datasets give them."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(8, VOCAB, (n, LENGTH), generator=g)
        marked = torch.rand(n, generator=g) < 0.5
        where = torch.randint(0, LENGTH, (n,), generator=g)
        self.ids[marked, where[marked]] = MARK
        self.labels = marked.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long),
                "labels": self.labels[i]}


def accuracy(pred) -> dict[str, float]:
    return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}


def main(epochs: float = 2, output_dir: str | None = None) -> dict:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=LENGTH, num_labels=2)
    model = BertForSequenceClassification(config)
    args = TrainingArguments(
        output_dir=output_dir or tempfile.mkdtemp(prefix="tiny-bert-"),
        num_train_epochs=epochs, per_device_train_batch_size=32, per_device_eval_batch_size=128,
        learning_rate=1e-3, warmup_steps=20, lr_scheduler_type="linear", max_grad_norm=1.0,
        eval_strategy="epoch", save_strategy="no", logging_steps=20, report_to=[],
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(), ddp_backend=None, seed=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Sequences(4000, 0),
                      eval_dataset=Sequences(500, 1), compute_metrics=accuracy)
    trainer.train()
    metrics = trainer.evaluate()
    return {"world_size": args.world_size, "eval_accuracy": metrics["eval_accuracy"],
            "eval_loss": metrics["eval_loss"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2, help="passes over the training set")
    parser.add_argument("--output-dir", help="the Trainer's output directory (default: a temp dir)")
    args = parser.parse_args()
    result = main(args.epochs, args.output_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        print(result)
