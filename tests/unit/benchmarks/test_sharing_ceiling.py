"""Unit tests of the sharing ceiling of ``bench_scale_out --ceiling``."""

from __future__ import annotations

from typing import Any

import numpy as np

from simulator.world import SimulatorConfig, World, feedback_probabilities
from tests.benchmarks.bench_scale_out import auc
from tests.benchmarks.sharing_ceiling import batch_id_models, world_taste

WORKERS = 3


def _examples(item_rate: bool, seed: int = 0) -> tuple[list[dict[str, Any]], list[int]]:
    """Each worker's 40 users see 400 items, a few times each; the chance of a negative is
    the item's (``item_rate``) or the user's."""
    rng = np.random.default_rng(seed)
    items, users = 400, 40 * WORKERS
    rates = np.where(rng.random(items if item_rate else users) < 0.5, 0.05, 0.6)
    examples, owners = [], []
    for n in range(12_000):
        user, item = int(rng.integers(users)), int(rng.integers(items))
        negative = rng.random() < rates[item if item_rate else user]
        examples.append(
            {
                "user_id": f"u{user:05d}",
                "item_id": f"i{item:06d}",
                "creator_id": f"c{item % 20:04d}",
                "category": f"cat{item % 5:02d}",
                "kinds": ["dislike"] if negative else [],
                "example_id": str(n),
            }
        )
        owners.append(user // 40)
    return examples, owners


def test_the_shared_id_model_learns_an_item_from_every_workers_users() -> None:
    examples, owners = _examples(item_rate=True)
    shared, local = batch_id_models(examples, owners, WORKERS, auc)
    # Each local model sees a third of each item's examples.
    assert shared > local + 0.02, (shared, local)


def test_sharing_adds_nothing_when_the_signal_is_the_users_own() -> None:
    examples, owners = _examples(item_rate=False)
    shared, local = batch_id_models(examples, owners, WORKERS, auc)
    assert abs(shared - local) < 0.01, (shared, local)
    assert local > 0.7, local


def test_the_worlds_item_taste_ranks_better_than_its_creators_and_categorys() -> None:
    config = SimulatorConfig(n_users=300, n_items=2000, n_creators=40, n_categories=8)
    rng = np.random.default_rng(3)
    world = World.generate(config, rng)
    user = rng.integers(config.n_users, size=20_000)
    item = rng.integers(config.n_items, size=20_000)
    creator, category = world.item_creator[item], world.item_category[item]
    affinity = (world.item_vector[item] * world.user_taste[user]).sum(1)
    hated = world.hated_creator[user, creator] | world.hated_category[user, category]
    none = np.zeros(len(user))
    explicit, implicit, _ = feedback_probabilities(
        config, affinity + world.creator_quality[creator], world.user_negativity[user], hated,
        none, none.astype(np.bool_), np.ones(len(user)),
    )  # fmt: skip
    negative = rng.random(len(user)) < explicit + implicit
    cases = [
        {"user_id": f"u{u:05d}", "item_id": f"i{i:06d}", "kinds": ["skip"] if n else []}
        for u, i, n in zip(user.tolist(), item.tolist(), negative.tolist(), strict=True)
    ]
    with_item, with_group = world_taste(world, config, cases, auc)
    assert with_item > with_group + 0.01, (with_item, with_group)
    assert with_group > 0.55, with_group
