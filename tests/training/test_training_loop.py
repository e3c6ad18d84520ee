"""train()'s step pieces for ported programs (issue #19): dict batches and ``outputs.loss``,
``collate_fn``, LR schedules, clipping, autocast, gradient accumulation, per-epoch evaluation,
and the messages checked before any worker starts. Fast tier: one process, or two real gloo
ranks for what DDP changes; the whole of it on a real cluster is the last test."""

from __future__ import annotations

import datetime as dt
import functools
import math
import socket
import sys
import threading
from types import SimpleNamespace

import cloudpickle
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from parallalx_jupyter.training import options
from parallalx_jupyter.training.batches import call_model, collate, loss_of, target_of
from parallalx_jupyter.training.checkpoint import make_checkpoint, pack, unpack
from parallalx_jupyter.training.loop import (
    Precision,
    StepRunner,
    build_scheduler,
    evaluate,
    micro_batches,
    scheduler_problem,
)
from parallalx_jupyter.training.spec import pack_user_objects, unpack_user_objects, zero_loss
from parallalx_jupyter.training.strategies import make_strategy
from parallalx_jupyter.workloads.base import WorkloadError
from parallalx_jupyter.workloads.train import TrainWorkload, train

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the models below travel by value

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- models and data
class Output(dict):
    """What a Hugging Face model returns: a dict whose entries are also attributes."""

    __getattr__ = dict.__getitem__


class TokenClassifier(nn.Module):
    """A Hugging Face-style classifier: ``forward(input_ids, attention_mask, labels=None)``,
    the loss in its output when labels come with the batch."""

    def __init__(self, vocab: int = 16, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.head = nn.Linear(16, classes)

    def forward(self, input_ids, attention_mask, labels=None):  # noqa: ANN001, ANN201
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        logits = self.head(pooled)
        out = Output(logits=logits)
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.float(), labels)
        return out


def token_items(n: int, seed: int = 0, length: int = 6) -> list[dict]:
    """Tokenised items as ``datasets`` gives them without ``set_format``: lists and ints.
    The label is whether token 1 occurs: learnable from the pooled embeddings."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        ids = torch.randint(2, 16, (length,), generator=g)
        label = int(torch.rand((), generator=g) < 0.5)
        if label:
            ids[torch.randint(0, length, (1,), generator=g)] = 1
        items.append({"input_ids": ids.tolist(), "attention_mask": [1] * length,
                      "labels": label})
    return items


class Positional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.lin(x)


class KeywordsOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, *, input_ids, attention_mask):  # noqa: ANN001, ANN201
        return self.lin(input_ids)


# --------------------------------------------------------------------------- collation
def test_dict_items_become_a_dict_of_tensors_and_the_model_is_called_with_keywords():
    batch = collate(token_items(3))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == (3, 6) and batch["labels"].dtype == torch.long
    model = TokenClassifier()
    out = call_model(model, batch, None)  # no loss_fn: the labels go in, the loss comes out
    assert loss_of(out, target_of(batch), None) is out["loss"]
    # with a loss_fn the labels are its target and stay out of the call
    assert "loss" not in call_model(model, batch, nn.CrossEntropyLoss())


def test_collate_fn_builds_the_batch_and_a_mapping_counts_as_a_dict():
    class Encoding(dict):  # transformers' BatchEncoding is a Mapping
        pass

    def pad(items):
        width = max(len(it["input_ids"]) for it in items)
        return Encoding(
            input_ids=torch.tensor([it["input_ids"] + [0] * (width - len(it["input_ids"]))
                                    for it in items]),
            labels=torch.tensor([it["labels"] for it in items]))

    batch = collate([{"input_ids": [1, 2], "labels": 0}, {"input_ids": [3], "labels": 1}], pad)
    assert type(batch) is dict and batch["input_ids"].tolist() == [[1, 2], [3, 0]]
    assert collate([(torch.ones(2), 1), (torch.zeros(2), 0)])[1].tolist() == [1, 0]


def test_items_of_unequal_sizes_name_the_key_and_collate_fn():
    items = [{"input_ids": [1, 2, 3], "labels": 0}, {"input_ids": [4, 5], "labels": 1}]
    with pytest.raises(ValueError, match=r"'input_ids' differs in size.*collate_fn="):
        collate(items)
    with pytest.raises(ValueError, match=r"element 0 .*collate_fn="):
        collate([(torch.ones(3), 0), (torch.ones(2), 1)])


# --------------------------------------------------------------------------- the model call
def test_a_forward_without_keyword_arguments_given_dict_items_says_so():
    batch = collate(token_items(2))
    with pytest.raises(TypeError) as caught:
        call_model(Positional(), batch, None)
    text = str(caught.value)
    assert "items are dicts" in text and "model(**batch)" in text and "'input_ids'" in text
    assert "collate_fn=" in text


def test_a_forward_taking_keywords_given_positional_tensors_says_so():
    batch = (torch.ones(2, 3), torch.ones(2, 3), torch.tensor([0, 1]))
    with pytest.raises(TypeError) as caught:
        call_model(KeywordsOnly(), batch, nn.CrossEntropyLoss())
    text = str(caught.value)
    assert "2 positional tensor(s)" in text and "takes keyword arguments" in text
    assert "make the dataset items dicts" in text
    assert "positional argument" not in text.split(":")[0]


def test_the_loss_is_found_in_the_output_or_its_absence_explained():
    loss = torch.tensor(0.5)
    assert loss_of(SimpleNamespace(loss=loss), None, None) is loss
    assert loss_of({"loss": loss}, None, None) is loss
    assert loss_of(loss, None, None) is loss
    with pytest.raises(TypeError, match=r"loss_fn is None.*Tensor without one.*'labels'"):
        loss_of(torch.ones(2, 3), None, None)


# --------------------------------------------------------------------------- before the job
def _params(**given):
    params = {name: p.default for name, p in options.PARAMETERS.items()}
    return {"model": Positional(), "dataset": None, "loss_fn": nn.CrossEntropyLoss(),
            "optimizer": functools.partial(torch.optim.SGD, lr=0.1), **params, **given}


def test_mismatches_are_refused_before_any_worker_starts():
    """train() with no cluster at all: the check runs before one is looked for."""
    cases = [
        ({"dataset": token_items(4)}, r"items are dicts.*forward\(x\).*collate_fn="),
        ({"dataset": [{"input_ids": [1, 2], "labels": 0}, {"input_ids": [3], "labels": 1}],
          "model": TokenClassifier(), "loss_fn": None}, r"dataset: .*'input_ids' differs"),
        ({"dataset": (torch.ones(4, 3), torch.ones(4, 3), torch.zeros(4).long()),
          "model": KeywordsOnly()}, r"2 positional tensor\(s\).*keyword arguments"),
        ({"dataset": (torch.ones(4, 3), torch.zeros(4).long()),
          "eval_dataset": token_items(2)}, r"items are dicts"),
        ({"dataset": (torch.ones(4, 3), torch.zeros(4).long()),
          "lr_scheduler": functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau)},
         r"ReduceLROnPlateau.*eval_dataset=.*'epoch'"),
        ({"dataset": (torch.ones(4, 3), torch.zeros(4).long()), "collate_fn": 3},
         r"collate_fn must be callable"),
    ]
    for given, message in cases:
        params = _params(**given)
        with pytest.raises(WorkloadError, match=message):
            train(params.pop("model"), params.pop("dataset"), params.pop("loss_fn"),
                  params.pop("optimizer"), client="tls://127.0.0.1:1", report=False,
                  **{k: v for k, v in params.items() if k in given})
    # what fits passes, factories are left to the ranks
    ok = TrainWorkload().validate(_params(dataset=token_items(4), model=TokenClassifier(),
                                          loss_fn=None))
    assert ok["grad_accumulation"] == 1 and ok["autocast"] is None
    TrainWorkload().validate(_params(dataset=lambda: token_items(4)))


def test_a_collate_fn_that_cannot_travel_is_named_with_the_way_out():
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"collate_fn cannot be sent.*inside the function"):
        pack_user_objects(Positional(), None, None, None, collate_fn=lambda items: lock)
    objects = unpack_user_objects(pack_user_objects(1, 2, 3, 4, eval_metric=len))
    assert objects["eval_metric"] is len and objects["collate_fn"] is None


# --------------------------------------------------------------------------- one step
def _runner(model, accumulation=1, clip=None, scheduler=None, interval="step", precision=None,
            no_sync=None, lr=0.1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    sched = build_scheduler(scheduler, optimizer, 10) if scheduler else None
    return StepRunner(model, optimizer, nn.CrossEntropyLoss(),
                      precision=precision or Precision(None, CPU),
                      no_sync=no_sync or make_strategy("ddp").no_sync, zero_loss=zero_loss,
                      accumulation=accumulation, clip_grad_norm=clip, scheduler=sched,
                      interval=interval)


def _data(n=10):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_accumulation_gives_the_gradient_of_the_whole_part_holding_back_all_but_the_last():
    x, y = _data(10)
    fetch = lambda ix: (x[ix], y[ix])  # noqa: E731
    held = []

    def no_sync(model):
        held.append(1)
        return make_strategy("ddp").no_sync(model)

    assert [len(p) for p in micro_batches(torch.arange(10), 3)] == [4, 3, 3]
    assert [len(p) for p in micro_batches(torch.arange(2), 3)] == [1, 1]
    results = []
    for n in (1, 3):
        torch.manual_seed(0)
        model = Positional()
        runner = _runner(model, accumulation=n, no_sync=no_sync)
        loss, _ = runner.step(torch.arange(10), fetch, scale=1.0)
        results.append((loss, [p.detach().clone() for p in model.parameters()]))
    assert held == [1, 1]  # three micro-batches: two backward passes held back
    assert torch.allclose(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_clipping_bounds_the_update_and_a_schedule_steps_per_step_or_epoch():
    x, y = _data(8)
    fetch = lambda ix: (x[ix] * 100, y[ix])  # noqa: E731 - huge gradients
    model = Positional()
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    _runner(model, clip=0.5, lr=1.0).step(torch.arange(8), fetch, 1.0)
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    assert moved.norm() == pytest.approx(0.5, rel=1e-4)  # SGD lr 1: the clipped gradient

    one_cycle = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1.0)
    runner = _runner(Positional(), scheduler=one_cycle)  # total_steps filled in: 10
    assert runner.scheduler.total_steps == 10
    lrs = [runner.optimizer.param_groups[0]["lr"]]
    for _ in range(3):
        runner.step(torch.arange(8), fetch, 1.0)
        lrs.append(runner.optimizer.param_groups[0]["lr"])
    assert lrs[0] < lrs[1] < lrs[2] and runner.scheduler.last_epoch == 3
    by_epoch = _runner(Positional(), scheduler=functools.partial(
        torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5), interval="epoch")
    by_epoch.step(torch.arange(8), fetch, 1.0)
    assert by_epoch.optimizer.param_groups[0]["lr"] == 0.1
    by_epoch.end_epoch()
    assert by_epoch.optimizer.param_groups[0]["lr"] == 0.05
    # its state survives a checkpoint (weights_only load) and carries on where it was
    state = unpack(pack(make_checkpoint(
        model_state={}, optimizer_state={}, epoch=0, step=3, global_step=3, rng=[], meta={},
        extra={"lr_scheduler": runner.scheduler.state_dict()})))
    again = _runner(Positional(), scheduler=one_cycle)
    again.scheduler.load_state_dict(state["lr_scheduler"])
    runner.step(torch.arange(8), fetch, 1.0)
    again.step(torch.arange(8), fetch, 1.0)
    assert again.scheduler.get_last_lr() == runner.scheduler.get_last_lr()
    assert scheduler_problem(torch.optim.lr_scheduler.ReduceLROnPlateau, "epoch", True) is None
    assert "eval_dataset=" in scheduler_problem(torch.optim.lr_scheduler.ReduceLROnPlateau,
                                                "step", True)


def test_a_resumed_schedule_keeps_the_checkpoints_lr_and_the_settings_it_does_not_own():
    from parallalx_jupyter.training.resume import asked_hyperparameters, unscheduled

    optimizer = torch.optim.AdamW(Positional().parameters(), lr=0.1, weight_decay=0.3)
    asked = asked_hyperparameters(optimizer)
    build_scheduler(functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1),
                    optimizer, 10)
    kept = unscheduled(asked, optimizer)[0]
    assert kept["weight_decay"] == 0.3
    assert not {"lr", "initial_lr", "betas"} & set(kept)  # OneCycleLR cycles beta1 too


def test_bf16_autocast_on_cpu_and_fp16_refused_there():
    with pytest.raises(ValueError, match=r"autocast='fp16' needs a CUDA device.*'bf16'"):
        Precision("fp16", CPU)
    precision = Precision("bf16", CPU)
    assert precision.scaler is None
    model = TokenClassifier()
    runner = StepRunner(model, torch.optim.SGD(model.parameters(), lr=0.1), None,
                        precision=precision, no_sync=make_strategy("ddp").no_sync,
                        zero_loss=zero_loss)
    batch = collate(token_items(4))
    with precision.autocast():
        assert call_model(model, batch, None)["logits"].dtype == torch.bfloat16
    loss, _ = runner.step(torch.arange(4), lambda ix: {k: v[ix] for k, v in batch.items()}, 1.0)
    assert math.isfinite(float(loss)) and model.head.weight.dtype == torch.float32


def test_evaluate_gives_loss_accuracy_and_the_metric_over_the_samples():
    x, y = _data(10)
    model = Positional()
    figures = evaluate(model, torch.utils.data.TensorDataset(x, y), nn.CrossEntropyLoss(),
                       lambda out, t: float((out[:, 1] > 0).float().mean()),
                       lambda ix: (x[ix], y[ix]), rank=0, world=1, batch_size=3,
                       precision=Precision(None, CPU), device=CPU)
    with torch.no_grad():
        out = model(x)
    assert figures["loss"] == pytest.approx(float(nn.functional.cross_entropy(out, y)), 1e-5)
    assert figures["accuracy"] == pytest.approx(float((out.argmax(1) == y).float().mean()))
    assert figures["metric"] == pytest.approx(float((out[:, 1] > 0).float().mean()))
    assert figures["samples"] == 10 and model.training


# --------------------------------------------------------------------------- two real ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, port: int, accumulation: int, out: dict) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=dt.timedelta(seconds=30))
    try:
        torch.manual_seed(0)
        model = DDP(Positional())
        x, y = _data(16)
        runner = _runner(model, accumulation=accumulation, clip=0.05, lr=0.5)
        for step in range(3):
            idx = torch.arange(step * 4, step * 4 + 4)
            mine = idx[:3] if rank == 0 else idx[3:]  # unequal parts: 3 and 1 samples
            runner.step(mine, lambda ix: (x[ix] * 10, y[ix]), scale=2 * len(mine) / 4)
        out[rank] = [p.detach().clone() for p in model.module.parameters()]
    finally:
        dist.destroy_process_group()


def _run_ddp(accumulation: int) -> dict:
    out = mp.Manager().dict()
    mp.spawn(_ddp_rank, args=(_free_port(), accumulation, out), nprocs=2)
    return dict(out)


@pytest.mark.e2e  # two real gloo rank processes
def test_under_ddp_accumulation_and_clipping_equal_one_big_batch():
    """Two gloo ranks with unequal parts, micro-batches and clipping: both end on the
    parameters of clipped big-batch SGD on one process."""
    torch.manual_seed(0)
    reference = Positional()
    x, y = _data(16)
    ref = _runner(reference, clip=0.05, lr=0.5)
    for step in range(3):
        ref.step(torch.arange(step * 4, step * 4 + 4), lambda ix: (x[ix] * 10, y[ix]), 1.0)
    ranks = _run_ddp(accumulation=2)
    for mine in ranks.values():
        for a, b in zip(mine, reference.parameters(), strict=True):
            assert torch.allclose(a, b.detach(), atol=1e-5)


# --------------------------------------------------------------------------- the whole of it
@pytest.mark.timeout(180)
def test_a_ported_hugging_face_style_program_trains_on_two_workers(cluster2) -> None:
    """Dict items, the loss from the model's output, OneCycleLR, clipping, bf16 autocast,
    two micro-batches per step and a per-epoch evaluation, on two TLS workers under DDP."""
    from parallalx_jupyter.training.checkpoint import unpack as load

    seen: list[dict] = []
    epochs, steps_per_epoch = 4, 8
    job = train(
        TokenClassifier(), token_items(256), None,
        functools.partial(torch.optim.AdamW, lr=0.01),
        epochs=epochs, batch_size=32, strategy="ddp", torch_threads=1,
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.05),
        clip_grad_norm=1.0, autocast="bf16", grad_accumulation=2,
        eval_dataset=token_items(64, seed=1),
        client=cluster2.client, report=False, on_progress=seen.append,
    )
    trained = job.result(timeout=150)
    assert job.preflight.world_size == 2
    evaluations = job.evaluations
    print("\n" + "\n".join(f"epoch {e['epoch']}: eval loss {e['loss']:.3f}, "
                           f"accuracy {e['accuracy']:.3f}" for e in evaluations))
    assert [e["epoch"] for e in evaluations] == list(range(epochs))
    assert all(e["samples"] == 64 and 0 <= e["accuracy"] <= 1 for e in evaluations)
    assert evaluations[-1]["loss"] < evaluations[0]["loss"]
    assert evaluations[-1]["accuracy"] > 0.8
    assert [r["eval"] for r in seen if "eval" in r] == evaluations  # in the progress events
    losses = [h["loss"] for h in job.history if "eval" not in h and math.isfinite(h["loss"])]
    assert losses[-1] < 0.75 * math.log(2)  # training loss well below chance (ln 2)
    final = load(job._store.latest())
    assert final["lr_scheduler"]["last_epoch"] == epochs * steps_per_epoch
    batch = collate(token_items(64, seed=1))
    with torch.no_grad():
        logits = trained(batch["input_ids"], batch["attention_mask"])["logits"]
    accuracy = float((logits.argmax(1) == batch["labels"]).float().mean())
    assert accuracy == pytest.approx(evaluations[-1]["accuracy"], abs=0.05)  # bf16 vs fp32
