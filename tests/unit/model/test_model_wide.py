"""The wide part's pieces: rate tables, the Laplace logistic regression, rate inputs, heads."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import (
    RATE_COLUMNS,
    ExampleBatch,
    ModelConfig,
    OnlineLogistic,
    RateRegression,
    RateTable,
    p_negative,
)
from model.id_rates import label_columns, smoothed
from model.objective import heads_of

NEGATIVE = RATE_COLUMNS.index("negative")
CONFIG = ModelConfig(buckets=2**8, cross_buckets=2**8, features=("impressions_long",))


def example(user: str, item: str, label: str, creator: str = "c", category: str = "k") -> Any:
    return {
        "user_id": user,
        "item_id": item,
        "creator_id": creator,
        "category": category,
        "label": label,
        "kinds": [] if label == "none" else [label],
        "features": {"impressions_long": 4.0},
    }


def test_label_columns_are_heads_then_any_negative() -> None:
    targets = torch.tensor([[1.0, 0, 0], [0, 1.0, 1.0], [0, 0, 1.0], [0, 0, 0]])
    assert label_columns(targets)[:, NEGATIVE].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert torch.equal(label_columns(targets)[:, :3], targets)


def test_rate_table_counts_each_row_once_per_example() -> None:
    table = RateTable(rows=4, half_life=0.0)
    rows = torch.tensor([[1, 2], [1, 3], [1, 2]])
    labels = label_columns(torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]))
    table.add(rows, labels)
    counts = table.read(torch.tensor([[1], [2], [3], [0]]))[:, 0]
    # impressions, explicit, implicit, engagement, negative
    assert counts.tolist() == [
        [3, 1, 1, 1, 2],
        [2, 1, 1, 0, 2],
        [1, 0, 0, 1, 0],
        [0, 0, 0, 0, 0],
    ]
    assert table.seen == 3
    # Three examples, two with a negative: Beta(1, 1) posterior mean 3/5.
    assert table.prior()[NEGATIVE].item() == pytest.approx(3 / 5)


def test_smoothing_shrinks_towards_the_prior_by_the_prior_strength() -> None:
    counts = torch.tensor([[0.0, 0, 0, 0, 0], [10.0, 0, 0, 0, 10], [1000.0, 0, 0, 0, 1000]])
    prior = torch.full((len(RATE_COLUMNS),), 0.2)
    rates = smoothed(counts, prior, strength=10.0)[:, NEGATIVE].tolist()
    assert rates == pytest.approx([0.2, 0.6, (1000 + 2) / 1010])


def test_counts_halve_every_half_life_examples() -> None:
    table = RateTable(rows=4, half_life=100.0)
    table.add(torch.tensor([[1]] * 100), label_columns(torch.ones(100, 3)))
    table.add(torch.tensor([[2]] * 100), label_columns(torch.zeros(100, 3)))
    # Row 1 was last written 100 examples ago: half its count is left.
    assert table.read(torch.tensor([[1]]))[0, 0, 0].item() == pytest.approx(50.0, rel=1e-5)
    assert table.read(torch.tensor([[2]]))[0, 0, 0].item() == pytest.approx(100.0)


def test_rate_table_state_round_trips_and_is_a_copy() -> None:
    table = RateTable(rows=4, half_life=10.0)
    table.add(torch.tensor([[1], [2]]), label_columns(torch.eye(3)[:2]))
    state = table.state_dict()
    restored = RateTable(rows=4, half_life=10.0)
    restored.load_state_dict(state)
    probe = torch.tensor([[0], [1], [2]])
    assert torch.equal(restored.read(probe), table.read(probe))
    restored.add(torch.tensor([[1]]), label_columns(torch.ones(1, 3)))
    assert state["counts"][1, 0].item() == 1.0
    with pytest.raises(ValueError, match="counts"):
        RateTable(rows=8, half_life=10.0).load_state_dict(state)


def _logistic_stream(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    logit = 1.5 * x[:, 0] - 2.0 * x[:, 1] + 0.5
    y = (torch.rand(n, generator=generator, dtype=torch.float64) < torch.sigmoid(logit)).double()
    return x, y.unsqueeze(1)


def test_online_logistic_reaches_the_generating_weights() -> None:
    x, y = _logistic_stream(40_960, seed=0)
    model = OnlineLogistic(inputs=3, outputs=1)
    for start in range(0, len(x), 1024):
        model.learn(x[start : start + 1024], y[start : start + 1024])
    # 40k examples: the MLE is within ~0.05 of the truth; one pass must be close to it.
    assert model.weights[:, 0].tolist() == pytest.approx([1.5, -2.0, 0.0, 0.5], abs=0.1)


def test_online_logistic_is_near_the_batch_fit_after_one_batch() -> None:
    x, y = _logistic_stream(4096, seed=1)
    model = OnlineLogistic(inputs=3, outputs=1, ridge=1e-3, iterations=20)
    model.learn(x, y)
    # At the optimum the gradient of the batch's log loss is ~0.
    p = torch.sigmoid(model.logits(x).double())
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    gradient = design.T @ (p - y) / len(x)
    assert gradient.abs().max().item() < 1e-3


def test_online_logistic_fits_around_an_offset_and_ignores_zero_weights() -> None:
    x, y = _logistic_stream(8192, seed=2)
    truth = (1.5 * x[:, 0] - 2.0 * x[:, 1] + 0.5).unsqueeze(1)
    model = OnlineLogistic(inputs=3, outputs=1)
    for start in range(0, len(x), 1024):
        rows = slice(start, start + 1024)
        model.learn(x[rows], y[rows], offset=truth[rows])
    # The offset already explains the labels: nothing is left for the regression.
    assert model.weights.abs().max().item() < 0.15
    idle = OnlineLogistic(inputs=3, outputs=1)
    idle.learn(x[:1024], y[:1024], weights=torch.zeros(1024))
    assert torch.equal(idle.weights, torch.zeros_like(idle.weights))


def test_online_logistic_state_round_trips() -> None:
    x, y = _logistic_stream(2048, seed=3)
    model = OnlineLogistic(inputs=3, outputs=1)
    model.learn(x[:1024], y[:1024])
    restored = OnlineLogistic(inputs=3, outputs=1)
    restored.load_state_dict(model.state_dict())
    for learner in (model, restored):
        learner.learn(x[1024:], y[1024:])
    assert torch.equal(model.weights, restored.weights)
    with pytest.raises(ValueError):
        OnlineLogistic(inputs=2, outputs=1).load_state_dict(model.state_dict())


def test_rate_inputs_come_from_earlier_batches_only() -> None:
    part = RateRegression(CONFIG, columns=RATE_COLUMNS, crosses=("user*creator",), counts=True)
    batch = ExampleBatch.from_examples([example("u", "i", "hide")] * 4, CONFIG)
    rows = part.rows(batch)
    before = part.inputs(batch, rows)
    # Nothing counted yet: every rate is the (uniform) prior, every count 0.
    rates = before[:, : 5 * len(RATE_COLUMNS)]
    assert torch.allclose(rates, torch.zeros_like(rates))
    part.count(rows, batch)
    after = part.inputs(batch, rows)
    assert (after[:, : 5 * len(RATE_COLUMNS)] != 0).any()
    assert after.shape == (4, part.width) == (4, 5 * len(RATE_COLUMNS) + 5 + 1)


def test_nested_pair_rates_start_at_the_users_own_rate() -> None:
    part = RateRegression(CONFIG, columns=("negative",), crosses=("user*creator",), nested=True)
    rows = [example("u", f"i{k}", "hide" if k % 2 else "none") for k in range(10)]
    rows += [example("v", f"i{k}", "none") for k in range(10)]
    seen = ExampleBatch.from_examples(rows, CONFIG)
    part.count(part.rows(seen), seen)
    fresh = ExampleBatch.from_examples([example("u", "new", "none", creator="other")], CONFIG)
    inputs = part.inputs(fresh, part.rows(fresh))[0]
    user, pair, nested = inputs[0].item(), inputs[4].item(), inputs[5].item()
    # A pair never seen: shrunk all the way to the user's rate, not to the overall one.
    assert nested == pytest.approx(user)
    assert pair != pytest.approx(user)


@pytest.mark.parametrize("seed", range(3))
def test_heads_compose_back_into_p_negative(seed: int) -> None:
    # Inside the clip of heads_of (15), where the composition is exact.
    logits = 3.0 * torch.randn(1000, 3, generator=torch.Generator().manual_seed(seed))
    heads = heads_of(logits).to(torch.float32).numpy()
    assert ((heads > 0) & (heads < 1)).all()
    expected = torch.sigmoid(logits[:, 0].double()).numpy()
    np.testing.assert_allclose(p_negative(heads.astype(np.float64)), expected, rtol=1e-5)
    # Explicit given negative is the share of p(negative) that is explicit.
    share = torch.sigmoid(logits[:, 1].double()).numpy()
    np.testing.assert_allclose(heads[:, 0], expected * share, rtol=1e-5, atol=1e-7)


def test_heads_of_extreme_logits_stay_inside_zero_and_one() -> None:
    heads = heads_of(torch.tensor([[40.0, 40.0, 40.0], [-40.0, -40.0, -40.0]]))
    values = heads.to(torch.float32)
    assert bool(((values > 0) & (values < 1)).all())
    assert math.isfinite(float(p_negative(values.numpy()).sum()))


def test_a_newton_step_never_raises_the_batch_objective() -> None:
    """An input far outside what was seen saturates the start point (no curvature there):
    the step is shortened until the batch's objective falls, instead of overshooting."""
    x, y = _logistic_stream(4096, seed=4)
    model = OnlineLogistic(inputs=3, outputs=1)
    for start in range(0, len(x), 1024):
        model.learn(x[start : start + 1024], y[start : start + 1024])
    outliers = torch.zeros(1024, 3, dtype=torch.float64)
    outliers[:, 0] = 40.0
    labels = torch.zeros(1024, 1, dtype=torch.float64)
    before, prior = model.weights.clone(), model.curvature[0] + model.ridge * torch.eye(4)

    def objective(weights: torch.Tensor) -> float:
        design = torch.cat([outliers, torch.ones(1024, 1, dtype=torch.float64)], 1)
        logits = design @ weights[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, labels[:, 0], reduction="sum")
        delta = weights[:, 0] - before[:, 0]
        return float(loss + 0.5 * delta @ prior @ delta)

    model.learn(outliers, labels)
    assert objective(model.weights) < objective(before)
    assert model.weights.abs().max().item() < 10.0
