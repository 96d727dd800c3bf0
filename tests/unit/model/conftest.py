"""Shared synthetic streams for the model tests."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

CATEGORIES = 8


def toy_example(user: int, item: int, index: int = 0) -> dict[str, Any]:
    """User ``u`` hides every item of category ``u % CATEGORIES`` and clicks the rest."""
    category = item % CATEGORIES
    label = "hide" if category == user % CATEGORIES else "click"
    return {
        "example_id": f"e{index}",
        "user_id": f"user-{user}",
        "item_id": f"item-{item}",
        "creator_id": f"creator-{item % 50}" if item % 7 else None,
        "category": f"category-{category}",
        "request_id": None,
        "timestamp": 1_700_000_000.0 + index,
        "label": label,
        "kinds": [label],
        "weight": 1.0,
        "features": {"impressions_long": float(index % 13)},
        "label_delay_s": 2.5,
    }


def toy_stream(
    n: int, seed: int, users: int = 40, items: range = range(400)
) -> list[dict[str, Any]]:
    """``n`` toy examples over ``users`` users and the given item ids."""
    rng = random.Random(seed)
    return [toy_example(rng.randrange(users), rng.choice(items), index) for index in range(n)]


@pytest.fixture
def make_toy_stream() -> Callable[..., list[dict[str, Any]]]:
    """The :func:`toy_stream` builder."""
    return toy_stream


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    # Tiny ops on a 2-vCPU VM: torch's second intra-op thread measured up to 30x slower steps
    # (spin contention), and these tests are about behaviour, not speed.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
