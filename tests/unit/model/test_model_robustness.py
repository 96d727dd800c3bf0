"""The two off-by-default robustness options: extra negatives and adversarial (APR) training."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from model import (
    HEADS,
    ExampleBatch,
    ModelConfig,
    OnlineModel,
    sample_extra_negatives,
)
from model.objective import internal_targets, internal_weights, weighted_loss

# The deep part whole from the first step: these tests are about its options.
CONFIG = ModelConfig(buckets=2**10, cross_buckets=2**10, features=(), deep_warmup=0.0)
EXPLICIT = HEADS.index("explicit_negative")


def row(
    item: str, creator: str | None, category: str | None, label: str = "none"
) -> dict[str, Any]:
    return {
        "user_id": "u",
        "item_id": item,
        "creator_id": creator,
        "category": category,
        "label": label,
        "kinds": [],
        "weight": 2.0,
        "features": {},
    }


def sample(
    rows: list[dict[str, Any]], k: int = 4, seed: int = 0
) -> tuple[ExampleBatch, ExampleBatch]:
    batch = ExampleBatch.from_examples(rows, CONFIG)
    return batch, sample_extra_negatives(batch, k, np.random.default_rng(seed), weight=0.5)


def test_prefers_same_creator_and_category_then_category_then_creator() -> None:
    batch, extra = sample(
        [
            row("hidden", "c1", "news", label="hide"),
            row("same-both", "c1", "news"),
            row("same-category", "c2", "news"),
            row("same-creator", "c1", "sport"),
        ]
    )
    assert set(extra.item.tolist()) == {batch.item[1]}

    batch, extra = sample(
        [row("hidden", "c1", "news", "hide"), row("cat", "c2", "news"), row("cre", "c1", "x")]
    )
    assert set(extra.item.tolist()) == {batch.item[1]}

    batch, extra = sample([row("hidden", "c1", None, "hide"), row("cre", "c1", "x")])
    assert set(extra.item.tolist()) == {batch.item[1]}


def test_sampled_rows_carry_the_users_features_and_a_reduced_weight() -> None:
    batch, extra = sample([row("hidden", "c1", "news", "report"), row("other", "c1", "news")], k=3)
    assert len(extra) == 3
    assert (extra.user == batch.user[0]).all()
    assert (extra.creator == batch.creator[1]).all()
    assert extra.targets.tolist() == [[1.0, 0.0, 0.0]] * 3
    # source weight 2.0 (severity is the join's, applied once) * extra_negative_weight 0.5
    assert extra.weights.tolist() == [1.0] * 3


def test_no_extra_rows_without_explicit_negatives_or_related_items() -> None:
    _, extra = sample([row("a", "c1", "news", "skip"), row("b", "c1", "news")])
    assert len(extra) == 0
    _, extra = sample([row("a", "c1", "news", "hide"), row("b", "c2", "sport")])
    assert len(extra) == 0
    _, extra = sample([row("a", "c1", "news", "hide"), row("a", "c1", "news")])
    assert len(extra) == 0  # the rejected item itself is never its own extra negative


def test_sampling_is_seeded() -> None:
    rows = [row("hidden", "c1", "news", "hide")] + [row(f"i{i}", "c1", "news") for i in range(20)]
    _, first = sample(rows, seed=5)
    _, again = sample(rows, seed=5)
    _, other = sample(rows, seed=6)
    np.testing.assert_array_equal(first.item, again.item)
    assert not np.array_equal(first.item, other.item)


def test_extra_negatives_change_training_and_do_not_count_as_seen() -> None:
    rows = [row("hidden", "c1", "news", "hide")] + [row(f"i{i}", "c1", "news") for i in range(5)]
    plain = OnlineModel(CONFIG)
    boosted = OnlineModel(
        ModelConfig(
            buckets=2**10, cross_buckets=2**10, features=(), deep_warmup=0.0, extra_negatives=3
        )
    )
    plain.learn_many(rows)
    boosted.learn_many(rows)
    assert boosted.examples_seen == plain.examples_seen == 6
    # The sampled rows teach the deep part (the wide part learns the real rows, around it):
    # after a few steps the same creator's items, seen or not, look likelier to be rejected.
    for _ in range(2):
        plain.learn_many(rows)
        boosted.learn_many(rows)
    probe = [row("i1", "c1", "news"), row("unseen", "c1", "news")]
    assert (boosted.predict_many(probe)[:, EXPLICIT] > plain.predict_many(probe)[:, EXPLICIT]).all()


def test_adversarial_perturbation_raises_the_loss() -> None:
    """The APR term evaluates the loss at a worst-case point: never below the clean loss here."""
    model = OnlineModel(
        ModelConfig(
            buckets=2**10, cross_buckets=2**10, features=(), deep_warmup=0.0, adversarial_eps=0.5
        )
    )
    batch = ExampleBatch.from_examples(
        [row(f"i{i}", "c1", "news", "hide" if i % 2 else "click") for i in range(32)], CONFIG
    )
    ids, bias_rows = model._tensors(batch)
    wide = model._wide.inputs(batch, model._wide.rows(batch))
    base = model._wide.logits(wide)
    # On the model's device (cuda when present), as learn_many puts them.
    targets = internal_targets(torch.from_numpy(batch.targets).to(model.device))
    weights = internal_weights(targets, torch.from_numpy(batch.weights).to(model.device))
    embedded = model._net.embed(ids)
    clean = weighted_loss(base + model._net(embedded, wide, bias_rows), targets, weights)
    adversarial = model._adversarial_loss(
        clean, ids, embedded, wide, bias_rows, base, targets, weights
    )
    assert adversarial.item() > clean.item()


def test_adversarial_training_differs_from_plain() -> None:
    rows = [row(f"i{i}", "c1", "news", "hide" if i % 2 else "click") for i in range(32)]
    plain = OnlineModel(CONFIG)
    robust = OnlineModel(
        ModelConfig(
            buckets=2**10, cross_buckets=2**10, features=(), deep_warmup=0.0, adversarial_eps=0.1
        )
    )
    for _ in range(3):
        plain.learn_many(rows)
        robust.learn_many(rows)
    assert not np.array_equal(plain.predict_many(rows), robust.predict_many(rows))


@pytest.mark.parametrize(
    "bad", [{"adversarial_eps": -0.1}, {"extra_negatives": -1}, {"buckets": 1}]
)
def test_invalid_config_is_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**bad)


def test_severity_reweights_explicit_negatives_without_inflating_them() -> None:
    """Severity ranks explicit negatives among themselves; their total pull stays unweighted,
    and p(negative) and engagement are never weighted by it."""
    heads = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    targets = internal_targets(heads)
    assert targets.tolist() == [[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1]]
    # Same severity on every explicit negative (and any on the others): the plain weights.
    plain = internal_weights(targets, torch.ones(4))
    assert plain.tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 1]]
    same = internal_weights(targets, torch.tensor([5.0, 5.0, 1.0, 0.5]))
    assert torch.equal(same, plain)
    # A report next to a dislike: the report's row counts more, their mean weight stays 1.
    mixed = internal_weights(targets, torch.tensor([5.0, 3.0, 1.0, 1.0]))
    assert mixed[:, 1].tolist() == pytest.approx([1.25, 0.75, 1.0, 0.0])
    assert mixed[:, 0].tolist() == mixed[:, 2].tolist() == [1.0] * 4


def test_loss_is_the_weighted_mean_of_each_logits_log_loss() -> None:
    logits = torch.zeros(2, 3)
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    weights = torch.tensor([[1.0, 2.0, 1.0], [1.0, 0.0, 1.0]])
    # log 2 per weighted logit, 1 + 2 + 1 + 1 + 0 + 1 weights over 2 rows.
    assert weighted_loss(logits, targets, weights).item() == pytest.approx(6 * math.log(2) / 2)
