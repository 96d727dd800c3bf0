"""Batch building: ids, missing features and ids, targets per head, severity weights."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest

from model import HEADS, CandidateBatch, ExampleBatch, ModelConfig, stable_hash

CONFIG = ModelConfig(buckets=2**12)
EXPLICIT, IMPLICIT, ENGAGEMENT = (HEADS.index(h) for h in HEADS)


def example(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "example_id": "e1",
        "user_id": "u1",
        "item_id": "i1",
        "creator_id": "c1",
        "category": "sports",
        "request_id": "r1",
        "timestamp": 1.7e9,
        "label": "none",
        "kinds": [],
        "weight": 1.0,
        "features": {},
        "label_delay_s": None,
    }
    base.update(overrides)
    return base


def test_ids_are_hashed_per_field() -> None:
    batch = ExampleBatch.from_examples([example()], CONFIG)
    assert batch.user[0] == stable_hash("u1", "user", CONFIG.buckets)
    assert batch.item[0] == stable_hash("i1", "item", CONFIG.buckets)
    assert batch.creator[0] == stable_hash("c1", "creator", CONFIG.buckets)
    assert batch.category[0] == stable_hash("sports", "category", CONFIG.buckets)
    assert all(getattr(batch, f).dtype == np.int64 for f in ("user", "item", "creator", "category"))


def test_none_and_absent_creator_and_category_map_to_row_zero() -> None:
    absent = example()
    del absent["creator_id"], absent["category"]
    batch = ExampleBatch.from_examples([example(creator_id=None, category=None), absent], CONFIG)
    assert batch.creator.tolist() == [0, 0]
    assert batch.category.tolist() == [0, 0]


def test_dense_features_missing_names_are_zero_and_counts_are_squashed() -> None:
    rows = [
        example(features={name: 1.0 for name in CONFIG.features}),
        example(features={"impressions_long": 1000.0, "unknown": 5.0}),
        example(features={}),
        example(features=None),
    ]
    dense = ExampleBatch.from_examples(rows, CONFIG).dense
    assert dense.shape == (4, len(CONFIG.features))
    assert dense.dtype == np.float32
    np.testing.assert_allclose(dense[0], math.log(2.0), rtol=1e-6)
    column = CONFIG.features.index("impressions_long")
    assert dense[1, column] == pytest.approx(math.log1p(1000.0), rel=1e-6)
    assert np.count_nonzero(dense[1]) == 1
    assert not dense[2:].any()


def test_custom_feature_names_set_the_columns() -> None:
    config = ModelConfig(buckets=64, features=("b", "a"))
    dense = CandidateBatch.from_rows(
        [{"user_id": "u", "item_id": "i", "features": {"a": 3.0}}], config
    ).dense
    np.testing.assert_allclose(dense, [[0.0, math.log1p(3.0)]], rtol=1e-6)


@pytest.mark.parametrize(
    ("label", "kinds", "targets", "severity"),
    [
        ("none", [], [0, 0, 0], 1.0),
        ("report", ["report"], [1, 0, 0], 5.0),
        ("block_creator", [], [1, 0, 0], 5.0),
        ("not_interested", ["not_interested"], [1, 0, 0], 4.0),
        ("skip", ["skip"], [0, 1, 0], 1.0),
        ("click_no_convert", ["click_no_convert"], [0, 1, 0], 0.5),
        ("click", ["click"], [0, 0, 1], 1.0),
        # Clicked, then hidden: both heads fire; the hide's severity wins.
        ("hide", ["click", "hide"], [1, 0, 1], 3.0),
        ("dislike", ["short_dwell", "dislike", "long_dwell"], [1, 1, 1], 3.0),
    ],
)
def test_targets_and_severity_weights(
    label: str, kinds: list[str], targets: list[int], severity: float
) -> None:
    unweighted = example(label=label, kinds=kinds)
    del unweighted["weight"]
    batch = ExampleBatch.from_examples([unweighted], CONFIG)
    assert batch.targets.tolist() == [[float(t) for t in targets]]
    assert batch.weights.tolist() == [severity], "no weight given: the worst kind's severity"
    assert batch.targets.dtype == batch.weights.dtype == np.float32
    # The join sets the weight to its label's severity; it is applied once, never again.
    weighted = ExampleBatch.from_examples([example(label=label, kinds=kinds, weight=2.0)], CONFIG)
    assert weighted.weights.tolist() == [2.0]


def test_severity_map_is_a_config_field() -> None:
    config = ModelConfig(buckets=64, severity={"skip": 7.0})
    skip, report = example(label="skip", kinds=["skip"]), example(label="report", kinds=["report"])
    del skip["weight"], report["weight"]
    assert ExampleBatch.from_examples([skip], config).weights.tolist() == [7.0]
    assert ExampleBatch.from_examples([report], config).weights.tolist() == [1.0]


def test_unknown_kinds_are_ignored() -> None:
    batch = ExampleBatch.from_examples([example(label="none", kinds=["teleport"])], CONFIG)
    assert batch.targets.tolist() == [[0.0, 0.0, 0.0]]
    assert batch.weights.tolist() == [1.0]


def test_building_does_not_mutate_examples() -> None:
    rows = [example(kinds=["hide"], label="hide", features={"neg_rate_long": 0.5}), example()]
    snapshot = copy.deepcopy(rows)
    ExampleBatch.from_examples(rows, CONFIG)
    CandidateBatch.from_rows(rows, CONFIG)
    assert rows == snapshot


def test_empty_batch() -> None:
    batch = ExampleBatch.from_examples([], CONFIG)
    assert len(batch) == 0
    assert batch.dense.shape == (0, len(CONFIG.features))
    assert batch.targets.shape == (0, len(HEADS))


def test_take_and_concat() -> None:
    batch = ExampleBatch.from_examples(
        [example(user_id=f"u{i}", label="skip", kinds=["skip"]) for i in range(4)], CONFIG
    )
    picked = batch.take(np.array([3, 1]))
    assert picked.user.tolist() == [batch.user[3], batch.user[1]]
    joined = ExampleBatch.concat([batch, picked])
    assert len(joined) == 6
    np.testing.assert_array_equal(joined.targets[4:], batch.targets[[3, 1]])


def test_shape_mismatch_is_rejected() -> None:
    ids = np.zeros(2, dtype=np.int64)
    with pytest.raises(ValueError, match="dense"):
        CandidateBatch(ids, ids, ids, ids, np.zeros((3, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="weights"):
        ExampleBatch(
            ids,
            ids,
            ids,
            ids,
            np.zeros((2, 1), dtype=np.float32),
            targets=np.zeros((2, len(HEADS)), dtype=np.float32),
            weights=np.zeros(3, dtype=np.float32),
        )
