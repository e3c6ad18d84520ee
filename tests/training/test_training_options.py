"""train()'s option groups: the flat keywords and the groups give the same workload parameters,
the schema is built from the groups' fields, and a setting given twice is one TypeError."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

import parallalx_jupyter as px
from parallalx_jupyter.training import options
from parallalx_jupyter.workloads import train as train_module
from parallalx_jupyter.workloads.train import TrainWorkload, train

REQUIRED = ("model", "dataset", "loss_fn", "optimizer")


class Started(Exception):
    def __init__(self, params, kwargs):
        super().__init__("started")
        self.params = params
        self.kwargs = kwargs


@pytest.fixture
def started(monkeypatch):
    """Call train() and get the (validated) parameters it would start the workload with."""

    def fake_start(workload, params, **kwargs):
        raise Started(workload.validate(params), kwargs)

    monkeypatch.setattr(train_module, "start", fake_start)

    objects = [object() for _ in REQUIRED]

    def call(**kwargs):
        with pytest.raises(Started) as caught:
            train(*objects, **kwargs)
        return caught.value.params

    return call


def test_option_classes_are_exported_and_frozen():
    for name, cls in options.GROUPS.items():
        assert getattr(px, cls.__name__) is cls
        assert cls.__name__ in px.__all__
        assert dataclasses.is_dataclass(cls) and cls.__doc__
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cls(), dataclasses.fields(cls)[0].name, None)
        assert inspect.signature(train).parameters[name].default is None


def test_every_old_keyword_is_a_setting_of_one_group():
    sig = inspect.signature(train).parameters
    flat = set(sig) - set(REQUIRED) - set(options.GROUPS) - {"client", "security", "name",
                                                              "report"}
    assert flat == set(options.PARAMETERS)
    assert len(flat) == 29  # 21 before issue #19 (collate_fn ... eval_metric) added 8


def test_schema_is_built_from_the_groups():
    props = TrainWorkload.parameters["properties"]
    assert list(props)[:4] == list(REQUIRED)
    for name, p in options.PARAMETERS.items():
        group_default = getattr(options.GROUPS[p.group], p.field)
        assert group_default == p.default
        if not props[name].get("x-python"):
            assert props[name]["default"] == group_default, name
    assert props["checkpoint_every"] == {"type": "integer", "minimum": 0, "default": 50}
    assert props["strategy"]["enum"][0] == "auto"


def test_defaults_are_the_groups_defaults(started):
    params = started()
    for name, p in options.PARAMETERS.items():
        want = list(p.default) if isinstance(p.default, tuple) else p.default
        assert params[name] == want, name


def test_flat_keywords_and_groups_give_the_same_parameters(started, tmp_path):
    flat = started(epochs=3, batch_size=32, max_steps=7, shuffle=False, seed=5,
                   workers=("tcp://a:1", "tcp://b:2"), shares=[2, 1], torch_threads=2,
                   strategy="local_sgd", local_sgd_every=4, checkpoint_dir=tmp_path,
                   checkpoint_every=10, resume=False, min_workers=2, max_restarts=1,
                   group_timeout=9.0, heartbeat_timeout=8.0, settle_timeout=2.0,
                   probe_timeout=30.0, metrics_interval=1.0, on_progress=print)
    grouped = started(
        data=px.DataOptions(epochs=3, batch_size=32, max_steps=7, shuffle=False, seed=5),
        placement=px.PlacementOptions(workers=["tcp://a:1", "tcp://b:2"], shares=(2, 1),
                                      torch_threads=2),
        communication=px.CommunicationOptions(strategy="local_sgd", local_sgd_every=4),
        checkpoint=px.CheckpointOptions(dir=tmp_path, every=10, resume=False),
        recovery=px.RecoveryOptions(min_workers=2, max_restarts=1, group_timeout=9.0,
                                    heartbeat_timeout=8.0, settle_timeout=2.0,
                                    probe_timeout=30.0),
        metrics=px.MetricsOptions(interval=1.0, on_progress=print),
    )
    assert flat == grouped
    assert flat["checkpoint_dir"] == str(tmp_path) and isinstance(flat["checkpoint_dir"], str)
    assert flat["workers"] == ["tcp://a:1", "tcp://b:2"] and flat["shares"] == [2, 1]
    # a group and the flat keywords of other groups mix
    mixed = started(checkpoint=px.CheckpointOptions(every=5), epochs=2)
    assert (mixed["checkpoint_every"], mixed["epochs"], mixed["batch_size"]) == (5, 2, 64)


def test_a_setting_given_as_keyword_and_in_its_group_is_one_type_error(started):
    with pytest.raises(TypeError) as err:
        started(checkpoint=px.CheckpointOptions(dir="a"), checkpoint_dir="b",
                checkpoint_every=3, data=px.DataOptions(), epochs=2)
    text = str(err.value)
    assert "checkpoint_dir= and checkpoint= both set CheckpointOptions.dir" in text
    assert "checkpoint_every= and checkpoint= both set CheckpointOptions.every" in text
    assert "epochs= and data= both set DataOptions.epochs" in text
    assert "dataclasses.replace" in text
    # the same value both ways is still two sources for one setting
    with pytest.raises(TypeError, match="max_restarts= and recovery="):
        started(recovery=px.RecoveryOptions(max_restarts=3), max_restarts=3)


def test_a_group_of_the_wrong_type_is_a_type_error(started):
    with pytest.raises(TypeError, match="checkpoint= takes a CheckpointOptions, not str"):
        started(checkpoint="ckpt")
    with pytest.raises(TypeError, match="recovery= takes a RecoveryOptions, not DataOptions"):
        started(recovery=px.DataOptions())


def test_values_in_groups_are_checked_like_keywords(started):
    with pytest.raises(ValueError, match="checkpoint_every"):
        started(checkpoint=px.CheckpointOptions(every=-1))
    with pytest.raises(ValueError, match="strategy"):
        started(communication=px.CommunicationOptions(strategy="nope"))
    with pytest.raises(ValueError, match="workers"):
        started(workers="tcp://a:1")  # one string, not a list of them


def test_groups_round_trip_through_the_parameters(started):
    params = started(recovery=px.RecoveryOptions(max_restarts=7),
                     checkpoint=px.CheckpointOptions(dir=Path("x")))
    assert options.from_params(px.RecoveryOptions, params) == px.RecoveryOptions(max_restarts=7)
    assert options.from_params(px.CheckpointOptions, params).dir == "x"
    # what the REST API and the CLI validate leaves out (an optional Python object): default
    assert options.from_params(px.MetricsOptions, {"metrics_interval": 1.0}) == \
        px.MetricsOptions(interval=1.0)


def _validated(**params):
    """The train workload's parameters as the job would start with them (real objects: the
    first batch runs through the model here, as at every call)."""
    import torch
    from torch import nn

    x, y = torch.randn(8, 4), torch.arange(8) % 2
    base = {"model": nn.Linear(4, 2), "dataset": (x, y), "loss_fn": nn.CrossEntropyLoss(),
            "optimizer": lambda p: torch.optim.SGD(p, lr=0.1)}
    return TrainWorkload().validate({**base, **params})


def test_numpy_columns_train_as_tensors_and_columns_of_different_lengths_are_named():
    """QA: scikit-learn's (X, y) passed for a data set of two items (with advice about padding
    tokenizer output), and (x, y[:100]) failed with TensorDataset's bare 'Size mismatch'."""
    import numpy as np
    import torch

    x, y = np.random.rand(8, 4).astype("float32"), np.arange(8) % 2
    data = _validated(dataset=(x, y))["dataset"]
    assert all(isinstance(t, torch.Tensor) for t in data) and data[0].shape == (8, 4)
    with pytest.raises(ValueError, match=r"one row per sample each; their lengths are 8, 5"):
        _validated(dataset=(torch.randn(8, 4), torch.arange(5)))
    with pytest.raises(ValueError, match=r"eval_dataset: .*lengths are 8, 3"):
        _validated(eval_dataset=(x, y[:3]))
    with pytest.raises(ValueError, match=r"dataset is None"):
        _validated(dataset=None)


def test_empty_workers_and_an_empty_checkpoint_dir_are_refused():
    """QA: workers=[] quietly meant every worker; checkpoint_dir='' wrote checkpoints into the
    working directory."""
    with pytest.raises(ValueError, match=r"'workers': \[\] should be non-empty"):
        _validated(workers=[])
    with pytest.raises(ValueError, match=r"'checkpoint_dir': '' should be non-empty"):
        _validated(checkpoint_dir="")


def test_whole_floats_become_integers_and_nan_or_infinite_settings_are_refused():
    """QA: epochs=2.0 passed the schema (JSON Schema counts 2.0 as an integer), then every
    rank's range() refused it and the job was retried as a lost device until it gave up;
    probe_timeout=nan excluded every worker; clip_grad_norm=nan trained NaN weights."""
    params = _validated(epochs=2.0, batch_size=64.0, grad_accumulation=2.0)
    assert (params["epochs"], params["batch_size"], params["grad_accumulation"]) == (2, 64, 2)
    assert all(type(params[k]) is int for k in ("epochs", "batch_size", "grad_accumulation"))
    for key, value in (("probe_timeout", float("nan")), ("heartbeat_timeout", float("nan")),
                       ("settle_timeout", float("inf")), ("clip_grad_norm", float("nan")),
                       ("shares", [float("nan"), 1.0])):
        with pytest.raises(ValueError, match=rf"parameter '{key}' must be a finite number"):
            _validated(**{key: value})
    with pytest.raises(ValueError, match=r"'epochs': 2.5 is not of type 'integer'"):
        _validated(epochs=2.5)
