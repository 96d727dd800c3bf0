"""LazyAdagrad against torch's Adagrad; hashed id crosses; the cross knobs of ModelConfig."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import ModelConfig
from model.hashing import cross_buckets
from model.lazy_adagrad import LazyAdagrad


@pytest.mark.parametrize("initial", [0.0, 0.5])
def test_lazy_adagrad_matches_torch_adagrad_on_sparse_gradients(initial: float) -> None:
    torch.manual_seed(0)
    lazy_table = torch.nn.Embedding(50, 3, sparse=True)
    torch_table = torch.nn.Embedding(50, 3, sparse=True)
    torch_table.load_state_dict(lazy_table.state_dict())
    lazy, reference = (
        LazyAdagrad(lazy_table.parameters(), lr=0.3),
        torch.optim.Adagrad(torch_table.parameters(), lr=0.3),
    )
    for step in range(5):
        # Repeated rows within a batch: their gradients must be summed before the update.
        rows = torch.tensor([step, 7, 7, 11 + step, 49])
        target = torch.randn(5, 3)
        for table, optimizer in ((lazy_table, lazy), (torch_table, reference)):
            optimizer.zero_grad()
            ((table(rows) - target) ** 2).sum().backward()
            optimizer.step()
    torch.testing.assert_close(lazy_table.weight, torch_table.weight)


def test_lazy_adagrad_rejects_dense_gradients() -> None:
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = LazyAdagrad([weight], lr=0.1)
    weight.sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()


def test_cross_buckets_are_order_sensitive_in_range_and_zero_when_a_side_is_missing() -> None:
    left = np.arange(1, 2001, dtype=np.int64)
    right = np.full(2000, 5, dtype=np.int64)
    pairs = cross_buckets(left, right, "user*creator", 2**16)
    assert pairs.min() >= 1 and pairs.max() < 2**16
    # 2000 pairs in 65k buckets: a uniform hash leaves ~1.5 % of them sharing a bucket.
    assert len(np.unique(pairs)) > 0.95 * len(pairs)
    swapped = cross_buckets(right, left, "user*creator", 2**16)
    assert (pairs != swapped).mean() > 0.95
    other_salt = cross_buckets(left, right, "user*category", 2**16)
    assert (pairs != other_salt).mean() > 0.95
    missing = cross_buckets(np.array([0, 3]), np.array([4, 0]), "user*creator", 2**16)
    assert missing.tolist() == [0, 0]


def test_config_checks_crosses_and_round_trips_them() -> None:
    with pytest.raises(ValueError, match="cross"):
        ModelConfig(crosses=("user*nobody",))
    with pytest.raises(ValueError, match="cross"):
        ModelConfig(crosses=("user",))
    config = ModelConfig(crosses=("user*item",), cross_buckets=2**10)
    assert ModelConfig.from_dict(config.to_dict()) == config
