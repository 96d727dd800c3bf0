"""What one model for all workers could add at most on a simulated stream, measured without
the live path or the online model (``bench_scale_out --ceiling``).

Two figures bound the gain of the shared model over the workers' own:

1. **Id models fitted in batch.** A logistic regression over user, item, creator and category
   biases and user x creator and user x category pair biases (L2 on every weight), fitted
   with full-batch Adam for :data:`EPOCHS` passes over the first :data:`TRAIN_SHARE` of the
   examples and scored on the rest: once on every user's examples (shared), once per worker
   on its own users' (local). These are the ids sharing can teach a model about, learned
   with many passes where the online model gets one. A latent factor per id was also tried
   and scored below the biases alone on the simulated streams, so it is left out.
2. **The world's taste.** The AUC of the world's own p(negative) over the same cases, from
   the world's arrays: once with each item's taste vector, once with its creator's mean
   item vector plus its category's, less the mean of all items, in its place. The difference is what
   learning each item's own taste could add at most; sharing gives a model three times the
   examples of each item, not the vector itself. Both leave out what the simulator adds
   from a user's history (creator penalties, blocked items).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from simulator.world import SimulatorConfig, World, feedback_probabilities
from tests.benchmarks.harness import negative_label

__all__ = ["EPOCHS", "TRAIN_SHARE", "batch_id_models", "world_taste"]

#: Share of the examples (in publish order) the id models are fitted on.
TRAIN_SHARE = 0.7
#: Full-batch passes of each fit.
EPOCHS = 200
#: L2 weight on every parameter, as a prior of this many examples.
RIDGE = 10.0

Auc = Callable[[Sequence[int], Sequence[float]], float]
Logits = Callable[[NDArray[np.int64]], torch.Tensor]


def labels_of(examples: Sequence[dict[str, Any]]) -> NDArray[np.float32]:
    """1 for an example with any negative kind, else 0."""
    return np.array([negative_label(e) for e in examples], dtype=np.float32)


def _codes(examples: Sequence[dict[str, Any]], field: str) -> tuple[NDArray[np.int64], int]:
    """Dense codes of a field's values (a missing value is one more code), and their count."""
    codes: dict[str, int] = {}
    column = [codes.setdefault(e.get(field) or "", len(codes)) for e in examples]
    return np.array(column, dtype=np.int64), len(codes)


def _fit(columns: NDArray[np.int64], sizes: Sequence[int], labels: NDArray[np.float32]) -> Logits:
    """Fit one bias per code of each column (``columns``: examples x keys) and return the
    fitted logits of rows of such codes."""
    torch.manual_seed(0)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    weights = torch.zeros(int(sum(sizes)), requires_grad=True)
    intercept = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.Adam([weights, intercept], lr=0.05)
    rows = torch.from_numpy(columns + offsets)
    targets = torch.from_numpy(labels)

    def logits(codes: NDArray[np.int64]) -> torch.Tensor:
        return intercept + weights[torch.from_numpy(codes + offsets)].sum(1)

    for _ in range(EPOCHS):
        optimiser.zero_grad()
        found = intercept + weights[rows].sum(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(found, targets)
        (loss + RIDGE * (weights**2).sum() / len(labels)).backward()
        optimiser.step()
    return logits


def batch_id_models(
    examples: Sequence[dict[str, Any]], owners: Sequence[int], workers: int, auc: Auc
) -> tuple[float, float]:
    """``(shared AUC, local AUC)`` of the id models (module docstring, 1) over the examples
    after the first :data:`TRAIN_SHARE`; ``owners``: each example's worker."""
    fields = [_codes(examples, name) for name in ("user_id", "item_id", "creator_id", "category")]
    (user, users), (_, _), (creator, creators), (category, categories) = fields
    columns = np.stack(
        [codes for codes, _ in fields] + [user * creators + creator, user * categories + category],
        axis=1,
    )
    sizes = [size for _, size in fields] + [users * creators, users * categories]
    labels = labels_of(examples)
    owner = np.asarray(owners, dtype=np.int64)
    train = np.arange(len(examples)) < int(len(examples) * TRAIN_SHARE)
    test = ~train
    fitted = _fit(columns[train], sizes, labels[train])
    with torch.no_grad():
        shared = fitted(columns[test]).numpy()
    local = np.zeros(int(test.sum()), dtype=np.float32)
    for worker in range(workers):
        mine = owner == worker
        if not (train & mine).any():
            continue
        fitted = _fit(columns[train & mine], sizes, labels[train & mine])
        with torch.no_grad():
            local[mine[test]] = fitted(columns[test & mine]).numpy()
    truth = labels[test].astype(int).tolist()
    return auc(truth, shared.tolist()), auc(truth, local.tolist())


def world_taste(
    world: World, config: SimulatorConfig, cases: Sequence[dict[str, Any]], auc: Auc
) -> tuple[float, float]:
    """``(AUC with each item's taste, AUC with its creator's and category's)`` of the world's
    own p(negative) over ``cases`` (module docstring, 2)."""
    user = np.array([int(e["user_id"][1:]) for e in cases], dtype=np.int64)
    item = np.array([int(e["item_id"][1:]) for e in cases], dtype=np.int64)
    creator, category = world.item_creator[item], world.item_category[item]
    vectors = world.item_vector
    mean = vectors.mean(axis=0)
    by_creator = _group_means(vectors, world.item_creator, config.n_creators)
    by_category = _group_means(vectors, world.item_category, config.n_categories)
    hated = world.hated_creator[user, creator] | world.hated_category[user, category]
    none = np.zeros(len(cases))
    labels = labels_of(cases).astype(int).tolist()
    figures = []
    for taste in (vectors[item], by_creator[creator] + by_category[category] - mean):
        affinity = (taste * world.user_taste[user]).sum(1) + world.creator_quality[creator]
        explicit, implicit, _ = feedback_probabilities(
            config, affinity, world.user_negativity[user], hated, none, none.astype(np.bool_),
            np.ones(len(cases)),
        )  # fmt: skip
        figures.append(auc(labels, (explicit + implicit).tolist()))
    return figures[0], figures[1]


def _group_means(
    vectors: NDArray[np.float64], groups: NDArray[np.int64], count: int
) -> NDArray[np.float64]:
    """Mean vector of each group's rows (zeros for a group without any)."""
    sums = np.zeros((count, vectors.shape[1]))
    np.add.at(sums, groups, vectors)
    sizes = np.bincount(groups, minlength=count)
    means: NDArray[np.float64] = sums / np.maximum(sizes, 1)[:, None]
    return means
