"""LazyAdam: the same updates as torch's SparseAdam, only the touched rows move."""

from __future__ import annotations

import copy

import pytest
import torch

from model.lazy_adam import LazyAdam


def test_matches_sparse_adam_over_several_steps_with_repeated_ids() -> None:
    torch.manual_seed(0)
    ours = torch.nn.Embedding(50, 4, sparse=True)
    reference = torch.nn.Embedding(50, 4, sparse=True)
    reference.load_state_dict(ours.state_dict())
    lazy = LazyAdam(ours.parameters(), lr=0.05)
    sparse = torch.optim.SparseAdam(reference.parameters(), lr=0.05)
    for step in range(6):
        rows = torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(step))
        for table, optimizer in ((ours, lazy), (reference, sparse)):
            optimizer.zero_grad()
            (table(rows).sum(1) ** 2).mean().backward()
            optimizer.step()
    torch.testing.assert_close(ours.weight, reference.weight, rtol=1e-4, atol=1e-5)


def test_untouched_rows_and_their_moments_stay_put() -> None:
    table = torch.nn.Embedding(8, 3, sparse=True)
    before = table.weight.detach().clone()
    optimizer = LazyAdam(table.parameters(), lr=0.1)
    table(torch.tensor([1, 1, 5])).sum().backward()
    optimizer.step()
    moved = (table.weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert moved == [1, 5]
    state = optimizer.state[table.weight]
    assert state["exp_avg"][[0, 2, 3, 4, 6, 7]].abs().sum() == 0


def test_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(1)
    first = torch.nn.Embedding(20, 2, sparse=True)
    second = torch.nn.Embedding(20, 2, sparse=True)
    second.load_state_dict(first.state_dict())
    opt_first = LazyAdam(first.parameters(), lr=0.1)
    rows = torch.tensor([0, 3, 3, 9])
    first(rows).sum().backward()
    opt_first.step()
    second.load_state_dict(first.state_dict())
    opt_second = LazyAdam(second.parameters(), lr=0.1)
    # torch optimisers alias the tensors of a loaded state; copy, as OnlineModel does.
    opt_second.load_state_dict(copy.deepcopy(opt_first.state_dict()))
    for table, optimizer in ((first, opt_first), (second, opt_second)):
        optimizer.zero_grad()
        table(rows).pow(2).sum().backward()
        optimizer.step()
    assert torch.equal(first.weight, second.weight)


def test_rejects_dense_gradients_and_bad_hyper_parameters() -> None:
    layer = torch.nn.Linear(2, 1)
    optimizer = LazyAdam(layer.parameters())
    layer(torch.ones(1, 2)).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()
    with pytest.raises(ValueError):
        LazyAdam(layer.parameters(), lr=0.0)
