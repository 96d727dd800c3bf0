"""Conformance of the baseline learners: pure steps, determinism, state, learning, exact rates."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from model import ExampleBatch, ModelConfig, RateLogistic, RollingAUC, RunningRate
from model.config import ID_FIELDS

CONFIG = ModelConfig(buckets=2**10, cross_buckets=2**10, features=("impressions_long",))
Baseline = RunningRate | RateLogistic
FACTORIES: dict[str, Callable[[], Baseline]] = {
    **{f"rate:{name}": (lambda name=name: RunningRate(name, CONFIG)) for name in ID_FIELDS},
    "logistic": lambda: RateLogistic(CONFIG),
}
KEYS = {"user": "user_id", "item": "item_id", "creator": "creator_id", "category": "category"}


@pytest.fixture(params=sorted(FACTORIES), ids=sorted(FACTORIES))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def stream(n: int, seed: int, driver: str = "item") -> list[dict[str, Any]]:
    """Odd values of the ``driver`` field are always hidden, even ones never."""
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        values = {field: rng.randrange(20) for field in ID_FIELDS}
        label = "hide" if values[driver] % 2 else "click"
        rows.append(
            {
                **{KEYS[field]: f"{field}-{value}" for field, value in values.items()},
                "label": label,
                "kinds": [label],
                "weight": 1.0,
                "features": {"impressions_long": float(index % 5)},
            }
        )
    return rows


def _driver(name: str) -> str:
    return name.split(":")[1] if ":" in name else "item"


def test_learning_never_mutates_the_batch(name: str) -> None:
    batch = ExampleBatch.from_examples(stream(256, seed=1), CONFIG)
    arrays = {field: getattr(batch, field).copy() for field in batch.__dataclass_fields__}
    learner = FACTORIES[name]()
    learner.learn_many(batch)
    learner.p_negative(batch)
    for field, before in arrays.items():
        np.testing.assert_array_equal(getattr(batch, field), before, err_msg=field)


def test_runs_are_deterministic_and_state_round_trips(name: str) -> None:
    batches = [ExampleBatch.from_examples(stream(128, seed=seed), CONFIG) for seed in range(4)]
    first, second = FACTORIES[name](), FACTORIES[name]()
    for batch in batches[:2]:
        first.learn_many(batch)
        second.learn_many(batch)
    probe = batches[3]
    np.testing.assert_array_equal(first.p_negative(probe), second.p_negative(probe))
    state = first.state_dict()
    pristine = copy.deepcopy(state)
    restored = FACTORIES[name]()
    restored.load_state_dict(state)
    np.testing.assert_array_equal(first.p_negative(probe), restored.p_negative(probe))
    first.learn_many(batches[2])
    restored.learn_many(batches[2])
    np.testing.assert_array_equal(first.p_negative(probe), restored.p_negative(probe))
    # Learning after a load never writes into the snapshot it came from.
    restored.learn_many(batches[3])
    np.testing.assert_array_equal(
        pristine["table"]["counts"].numpy(), state["table"]["counts"].numpy()
    )


def test_a_fresh_learner_knows_nothing(name: str) -> None:
    p = FACTORIES[name]().p_negative(ExampleBatch.from_examples(stream(16, seed=2), CONFIG))
    np.testing.assert_allclose(p, 0.5)


def test_learns_the_field_that_drives_the_label(name: str) -> None:
    driver = _driver(name)
    learner = FACTORIES[name]()
    train = stream(4096, seed=3, driver=driver)
    for start in range(0, len(train), 512):
        learner.learn_many(ExampleBatch.from_examples(train[start : start + 512], CONFIG))
    held_out = stream(1000, seed=4, driver=driver)
    scores = learner.p_negative(ExampleBatch.from_examples(held_out, CONFIG))
    labels = [row["label"] == "hide" for row in held_out]
    assert RollingAUC(window=len(held_out)).update(labels, scores).get() > 0.99


def test_running_rate_is_the_smoothed_count() -> None:
    rate = RunningRate("item", ModelConfig(buckets=2**8, features=(), rate_prior=4.0))
    rows = [
        {"user_id": "u", "item_id": "a", "label": "hide", "kinds": ["hide"], "features": {}},
        {"user_id": "u", "item_id": "a", "label": "none", "kinds": [], "features": {}},
        {"user_id": "u", "item_id": "b", "label": "none", "kinds": [], "features": {}},
    ]
    rate.learn_many(ExampleBatch.from_examples(rows, rate.config))
    # Overall (1 + 1) / (3 + 2) = 0.4; item a (1 + 4 * 0.4) / (2 + 4), item b 1.6 / 5.
    p = rate.p_negative(ExampleBatch.from_examples(rows, rate.config))
    assert p.tolist() == pytest.approx([2.6 / 6, 2.6 / 6, 1.6 / 5])


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(ValueError, match="field"):
        RunningRate("country", CONFIG)
