"""Data-parallel learning: two processes, one model (gloo on cpu)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from model import ModelConfig, OnlineModel
from model.distributed import LOCAL
from model.touched import TouchedRows
from tests.ranks import learn_steps, run_ranks

Stream = Callable[..., list[dict[str, Any]]]

SMALL = {"buckets": 2**10, "cross_buckets": 2**11, "device": "cpu", "deep_warmup": 0.0}
CONFIGS = {
    "default": ModelConfig(**SMALL),
    "pair_biases_decay": ModelConfig(
        **SMALL, crosses=("user*creator", "user*category"), rate_half_life=500.0
    ),
    "adagrad_warmup": ModelConfig(**{**SMALL, "deep_warmup": 1000.0}, optimizer="adagrad", lr=0.03),
}


Steps = list[tuple[list[Any], list[Any]]]


def _steps(stream: Stream) -> Steps:
    """Each step's examples of rank 0 and rank 1: uneven, one rank or both empty at times."""
    examples = iter(stream(2000, seed=7))
    sizes = [(64, 64), (100, 28), (0, 64), (64, 0), (0, 0), (1, 90)] * 4
    return [
        ([next(examples) for _ in range(left)], [next(examples) for _ in range(right)])
        for left, right in sizes
    ]


def _leaves(state: Any, path: str = "") -> dict[str, Any]:
    """Every tensor and number of a nested state, by its path."""
    if isinstance(state, dict):
        items: Any = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return {path: state}
    found: dict[str, Any] = {}
    for key, value in items:
        found.update(_leaves(value, f"{path}/{key}"))
    return found


def _differing(first: Any, second: Any) -> list[str]:
    """The paths where two nested states differ (tensors compared bit for bit)."""
    left, right = _leaves(first), _leaves(second)
    if left.keys() != right.keys():
        return sorted(left.keys() ^ right.keys())
    return [
        key
        for key, value in left.items()
        if not (
            torch.equal(value, right[key])
            if isinstance(value, torch.Tensor)
            else value == right[key]
        )
    ]


def test_two_ranks_hold_one_model_the_one_a_single_process_learns_from_both_ranks_examples(
    make_toy_stream: Stream, tmp_path: Path
) -> None:
    steps = _steps(make_toy_stream)
    configs = [config.to_dict() for config in CONFIGS.values()]
    ranks = run_ranks(learn_steps, 2, tmp_path, configs, steps)
    for name, first, second in zip(CONFIGS, *ranks, strict=True):
        # Weights, optimiser state and counters: equal bit for bit, so the ranks take the
        # same steps from here on. (The RNG is each rank's own: it samples extra negatives.)
        for part in ("network", "wide", "optimizers", "version", "examples_seen"):
            differing = _differing(first["state"][part], second["state"][part])
            assert differing == [], f"{name}: {part} differs between the ranks at {differing}"
        _check_against_one_process(CONFIGS[name], steps, first, make_toy_stream)


def _check_against_one_process(
    config: ModelConfig, steps: Steps, first: Any, stream: Stream
) -> None:
    single = OnlineModel(config, changes=TouchedRows())
    for left, right in steps:
        single.learn_many(left + right)
    assert first["state"]["version"] == single.version == sum(1 for step in steps if any(step))
    learned = sum(len(left) + len(right) for left, right in steps)
    assert first["state"]["examples_seen"] == single.examples_seen == learned
    shared = OnlineModel.from_state_dict(first["state"])
    candidates = stream(300, seed=99) + stream(50, seed=98, users=60)
    torch.testing.assert_close(
        torch.from_numpy(shared.predict_many(candidates)),
        torch.from_numpy(single.predict_many(candidates)),
        atol=2e-4,
        rtol=0,
    )
    # Rank 0 marks every rank's rows: its published deltas carry the whole model's changes.
    _, touched = single.changes.take(single.version)  # type: ignore[union-attr]
    assert first["touched"].keys() == touched.keys()
    for table, rows in touched.items():
        assert torch.equal(first["touched"][table], rows), table


def test_one_process_exchanges_nothing() -> None:
    values = torch.tensor([1.0, 2.0])
    assert LOCAL.gather_values([3, 4.5]) == [[3, 4.5]]
    (mine,) = LOCAL.gather_tensors([values])
    assert mine[0] is values
    assert LOCAL.any(False, True) == [False, True]
    assert LOCAL.gather_objects("x") == ["x"]
    assert LOCAL.broadcast({"a": 1}) == {"a": 1}
