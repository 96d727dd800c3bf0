"""Conformance suite run against every model class and robustness option (river ``checks``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model import (
    HEADS,
    ExampleBatch,
    ModelConfig,
    OnlineModel,
    RollingAUC,
    load_latest,
    save_checkpoint,
)

# Robustness variants use smaller tables only to keep the suite fast; "default" is untouched.
CONFIGS = {
    "default": ModelConfig(),
    "adversarial": ModelConfig(buckets=2**16, adversarial_eps=0.05, adversarial_weight=0.5),
    "extra_negatives": ModelConfig(buckets=2**16, extra_negatives=2),
    # One Adagrad over everything needs the larger shared lr it was tuned with.
    "adagrad": ModelConfig(buckets=2**16, optimizer="adagrad", lr=0.03),
    # Per-example id-pair biases in the deep part, off by default.
    "pair_biases": ModelConfig(buckets=2**16, crosses=("user*creator", "user*category")),
    # Rate counts that fade (lazy decay state in the rate table).
    "decay": ModelConfig(buckets=2**16, rate_half_life=5_000.0),
}
Factory = Callable[[], OnlineModel]
MODELS: dict[str, Factory] = {
    name: (lambda config=config: OnlineModel(config)) for name, config in CONFIGS.items()
}
EXPLICIT = HEADS.index("explicit_negative")


@pytest.fixture(params=sorted(MODELS), ids=sorted(MODELS))
def factory(request: pytest.FixtureRequest) -> Factory:
    return MODELS[request.param]


def _stream(make_toy_stream: Callable[..., list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    examples = make_toy_stream(4 * 128, seed=1)
    return [examples[start : start + 128] for start in range(0, len(examples), 128)]


def test_learn_many_never_mutates_input(factory: Factory, make_toy_stream: Any) -> None:
    model = factory()
    examples = make_toy_stream(256, seed=2)
    snapshot = copy.deepcopy(examples)
    model.learn_many(examples)
    assert examples == snapshot

    batch = ExampleBatch.from_examples(examples, model.config)
    arrays = {name: getattr(batch, name).copy() for name in batch.__dataclass_fields__}
    model.learn_many(batch)
    model.predict_many(batch)
    model.p_negative(batch)
    for name, before in arrays.items():
        np.testing.assert_array_equal(getattr(batch, name), before, err_msg=name)
    assert examples == snapshot


def test_seeded_runs_are_identical(factory: Factory, make_toy_stream: Any) -> None:
    first, second = factory(), factory()
    for batch in _stream(make_toy_stream):
        first.learn_many(batch)
        second.learn_many(batch)
    probe = make_toy_stream(64, seed=3)
    np.testing.assert_array_equal(first.predict_many(probe), second.predict_many(probe))


def test_predict_then_learn_is_predict_many_then_learn_many(
    factory: Factory, make_toy_stream: Any
) -> None:
    fused, apart = factory(), factory()
    for batch in [*_stream(make_toy_stream), []]:
        examples = ExampleBatch.from_examples(batch, fused.config)
        predicted = fused.predict_then_learn(examples)
        expected = apart.predict_many(examples)
        apart.learn_many(examples)
        assert predicted.dtype == expected.dtype and predicted.shape == expected.shape
        assert predicted.tobytes() == expected.tobytes(), "predictions differ in some bit"
    assert (fused.version, fused.examples_seen) == (apart.version, apart.examples_seen) == (4, 512)
    fused_state, apart_state = fused.state_dict(), apart.state_dict()
    assert fused_state["rng"] == apart_state["rng"]
    pairs = zip(_tensors(fused_state), _tensors(apart_state), strict=True)
    assert all(torch.equal(left, right) for left, right in pairs), "learned state differs"


def test_different_seeds_differ(make_toy_stream: Any) -> None:
    # A fresh model is its (seedless) wide part alone; the seed shows once the deep part,
    # initialised from it, has a share of the logits.
    probe = make_toy_stream(16, seed=3)
    left, right = OnlineModel(ModelConfig(seed=0)), OnlineModel(ModelConfig(seed=1))
    for model in (left, right):
        model.learn_many(probe)
    assert not np.array_equal(left.predict_many(probe), right.predict_many(probe))


def test_state_dict_round_trip(factory: Factory, make_toy_stream: Any) -> None:
    trained = factory()
    stream = _stream(make_toy_stream)
    for batch in stream[:2]:
        trained.learn_many(batch)
    state = trained.state_dict()
    assert state["version"] == 2
    assert state["examples_seen"] == 256

    restored = factory()
    restored.load_state_dict(state)
    pristine = copy.deepcopy(state)
    probe = make_toy_stream(64, seed=4)
    np.testing.assert_array_equal(trained.predict_many(probe), restored.predict_many(probe))
    # Optimiser moments and the sampling RNG came back too: training continues identically.
    for batch in stream[2:]:
        trained.learn_many(batch)
        restored.learn_many(batch)
    np.testing.assert_array_equal(trained.predict_many(probe), restored.predict_many(probe))
    assert (restored.version, restored.examples_seen) == (4, 512)
    # Training after a load never writes into the snapshot it was loaded from.
    for before, after in zip(_tensors(pristine), _tensors(state), strict=True):
        assert torch.equal(before, after)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for key in sorted(value, key=str) for t in _tensors(value[key])]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def test_state_dict_is_a_snapshot(make_toy_stream: Any) -> None:
    model = OnlineModel(ModelConfig())
    model.learn_many(make_toy_stream(64, seed=5))
    state = model.state_dict()
    before = state["network"]["table.weight"].clone()
    model.learn_many(make_toy_stream(64, seed=6))
    assert torch.equal(state["network"]["table.weight"], before)


def test_state_dict_without_copies_saves_the_same_checkpoint(
    factory: Factory, make_toy_stream: Any, tmp_path: Path
) -> None:
    model = factory()
    for batch in _stream(make_toy_stream)[:2]:
        model.learn_many(batch)
    copied, shared = model.state_dict(), model.state_dict(copy=False)
    pairs = list(zip(_tensors(copied), _tensors(shared), strict=True))
    assert all(torch.equal(left, right) for left, right in pairs)
    live = {t.data_ptr() for t in _tensors(shared) if t.numel()}
    assert not live & {t.data_ptr() for t in _tensors(copied) if t.numel()}, "not copied"
    assert model.network.table.weight.data_ptr() in live, "the table was copied anyway"
    save_checkpoint(tmp_path / "copied", {"model": copied})
    save_checkpoint(tmp_path / "shared", {"model": shared})
    (left,), (right,) = (list((tmp_path / name).iterdir()) for name in ("copied", "shared"))
    assert left.read_bytes() == right.read_bytes()


def test_checkpoint_round_trip(factory: Factory, make_toy_stream: Any, tmp_path: Path) -> None:
    trained = factory()
    stream = _stream(make_toy_stream)
    trained.learn_many(stream[0])
    offsets = {"training-examples": {"0": 128}}
    save_checkpoint(tmp_path, {"model": trained.state_dict(), "offsets": offsets})
    loaded = load_latest(tmp_path)
    assert loaded is not None
    assert loaded["offsets"] == offsets
    restored = OnlineModel.from_state_dict(loaded["model"])
    probe = make_toy_stream(64, seed=7)
    np.testing.assert_array_equal(trained.predict_many(probe), restored.predict_many(probe))
    trained.learn_many(stream[1])
    restored.learn_many(stream[1])
    np.testing.assert_array_equal(trained.predict_many(probe), restored.predict_many(probe))


def test_load_rejects_another_config(make_toy_stream: Any) -> None:
    state = OnlineModel(ModelConfig(embedding_dim=8)).state_dict()
    with pytest.raises(ValueError, match="embedding_dim"):
        OnlineModel(ModelConfig()).load_state_dict(state)


def test_learns_separable_toy_stream(factory: Factory, make_toy_stream: Any) -> None:
    """Each user hides one category; held-out items (never trained on) must rank by it."""
    model = factory()
    train = make_toy_stream(12_000, seed=8, items=range(400))
    for start in range(0, len(train), 256):
        model.learn_many(train[start : start + 256])
    held_out = make_toy_stream(2_000, seed=9, items=range(400, 480))
    scores = model.predict_many(held_out)[:, EXPLICIT]
    labels = [example["label"] == "hide" for example in held_out]
    auc = RollingAUC(window=len(held_out)).update(labels, scores).get()
    assert auc > 0.9, auc


def test_predictions_shape_and_range(factory: Factory, make_toy_stream: Any) -> None:
    model = factory()
    probe = make_toy_stream(10, seed=10)
    p = model.predict_many(probe)
    assert p.shape == (10, len(HEADS))
    assert p.dtype == np.float32
    assert ((p > 0) & (p < 1)).all()
    expected = 1 - (1 - p[:, 0]) * (1 - p[:, 1])
    np.testing.assert_allclose(model.p_negative(probe), expected, rtol=1e-6)
    assert model.predict_many([]).shape == (0, len(HEADS))


def test_empty_batch_is_a_no_op() -> None:
    model = OnlineModel(ModelConfig())
    model.learn_many([])
    assert (model.version, model.examples_seen) == (0, 0)


def test_auto_device_resolves() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert OnlineModel(ModelConfig(buckets=64)).device.type == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_round_trips_to_cpu(make_toy_stream: Any) -> None:
    model = OnlineModel(ModelConfig(device="cuda"))
    for batch in _stream(make_toy_stream):
        model.learn_many(batch)
    on_cpu = OnlineModel.from_state_dict(model.state_dict(), device="cpu")
    probe = make_toy_stream(64, seed=11)
    np.testing.assert_allclose(model.predict_many(probe), on_cpu.predict_many(probe), atol=1e-5)
