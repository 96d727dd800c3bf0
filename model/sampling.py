"""Extra negatives for explicit feedback: in-batch items sharing the rejected item's creator/topic.

Why this choice
---------------
An explicit negative ("hide", "not interested", "block creator") usually rejects more than the
one item: users who hide a video rarely want the same creator's next upload, and a
"not interested" is often about the topic. So for each example whose explicit-negative head is
1, up to ``k`` other items are drawn uniformly (with replacement) from the *same micro-batch*,
from the most specific group that has any: items by the same creator *and* in the same category,
else items of the same category, else items by the same creator; when none exists the example
gets no extra rows. Category ranks above creator because most explicit negatives ("not
interested", "hide") are about the topic, and a creator's other topics are a weaker guess.
Drawing from the batch, rather than uniformly from hash buckets, keeps the sampled items real,
recently served and popularity-weighted, and needs no item catalogue in the model. Each sampled
row keeps the user and dense features of the source example, takes the sampled item's ids,
targets ``explicit_negative = 1`` with the other heads 0, and weighs ``weight`` times the source
example's weight (``ModelConfig.extra_negative_weight``, 0.5 by default): a guess should count
less than what the user said.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import numpy.typing as npt

from model.batch import ExampleBatch
from model.config import HEADS

__all__ = ["sample_extra_negatives"]

_EXPLICIT = HEADS.index("explicit_negative")


def _rows_by_key(keys: npt.NDArray[np.int64]) -> dict[int, npt.NDArray[np.int64]]:
    groups: defaultdict[int, list[int]] = defaultdict(list)
    for row, key in enumerate(keys.tolist()):
        if key != 0:
            groups[key].append(row)
    return {key: np.asarray(rows, dtype=np.int64) for key, rows in groups.items()}


def sample_extra_negatives(
    batch: ExampleBatch, k: int, rng: np.random.Generator, weight: float
) -> ExampleBatch:
    """Sample ``k`` extra negative rows per explicit-negative example of ``batch``.

    Parameters
    ----------
    batch
        The micro-batch; only read.
    k
        Extra rows per explicit-negative example.
    rng
        Source of randomness (the model's, so sampling is seeded and checkpointed).
    weight
        Loss weight of a sampled row relative to its source example.

    Returns
    -------
    ExampleBatch
        The sampled rows only (possibly empty); callers concatenate them.

    Examples
    --------
    >>> from model.config import ModelConfig
    >>> config = ModelConfig(features=())
    >>> def example(item, creator, label):
    ...     return {"user_id": "u", "item_id": item, "creator_id": creator, "category": None,
    ...             "label": label, "kinds": [], "weight": 1.0, "features": {}}
    >>> batch = ExampleBatch.from_examples(
    ...     [example("i1", "c1", "hide"), example("i2", "c1", "none"), example("i3", "c2", "none")],
    ...     config)
    >>> extra = sample_extra_negatives(batch, 2, np.random.default_rng(0), weight=0.5)
    >>> len(extra), bool((extra.item == batch.item[1]).all()), extra.targets[0].tolist()
    (2, True, [1.0, 0.0, 0.0])
    >>> extra.weights.tolist()
    [0.5, 0.5]
    """
    sources = np.flatnonzero(batch.targets[:, _EXPLICIT] > 0)
    if k <= 0 or len(sources) == 0:
        return batch.take(np.zeros(0, dtype=np.int64))
    both = np.where(
        (batch.creator != 0) & (batch.category != 0), (batch.creator << 32) | batch.category, 0
    )
    by_both = _rows_by_key(both)
    by_category = _rows_by_key(batch.category)
    by_creator = _rows_by_key(batch.creator)
    source_rows: list[npt.NDArray[np.int64]] = []
    sampled_rows: list[npt.NDArray[np.int64]] = []
    for source in sources.tolist():
        item = batch.item[source]
        keys = (
            (by_both, int(both[source])),
            (by_category, int(batch.category[source])),
            (by_creator, int(batch.creator[source])),
        )
        for groups, key in keys:
            rows = groups.get(key)
            if rows is None:
                continue
            pool = rows[batch.item[rows] != item]
            if len(pool):
                sampled_rows.append(rng.choice(pool, size=k))
                source_rows.append(np.full(k, source, dtype=np.int64))
                break
    if not sampled_rows:
        return batch.take(np.zeros(0, dtype=np.int64))
    src = np.concatenate(source_rows)
    dst = np.concatenate(sampled_rows)
    targets = np.zeros((len(src), len(HEADS)), dtype=np.float32)
    targets[:, _EXPLICIT] = 1.0
    return ExampleBatch(
        batch.user[src],
        batch.item[dst],
        batch.creator[dst],
        batch.category[dst],
        batch.dense[src],
        targets=targets,
        weights=(batch.weights[src] * np.float32(weight)).astype(np.float32),
    )
