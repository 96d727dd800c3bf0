"""The wide part: logistic regression on smoothed per-id label rates and the dense features.

Inputs of an example, all read from counts of the examples learned before it: for each id
field (user, item, creator, category) and each id cross (e.g. user x creator), the logit of
the smoothed rate of each chosen label column (:data:`~model.id_rates.RATE_COLUMNS`) and,
optionally, ``log1p`` of its impressions; optionally each cross's rates shrunk towards its
left field's (the user's) and ``log1p`` of its label counts; then the batch's squashed dense
features. The regression is :class:`~model.logistic.OnlineLogistic` (Laplace updates), so it
is close to the all-data fit after a few batches: what a model needs in its first minutes.

Examples
--------
>>> import numpy as np
>>> config = ModelConfig(buckets=2**8, cross_buckets=2**8, features=())
>>> part = RateRegression(config, columns=("negative",), crosses=("user*creator",), counts=True)
>>> rows = [{"user_id": "u", "item_id": "i", "creator_id": "c", "category": None,
...          "label": "hide", "kinds": ["hide"], "weight": 1.0, "features": {}}]
>>> batch = ExampleBatch.from_examples(rows, config)
>>> part.width, part.inputs(batch, part.rows(batch)).shape
(10, torch.Size([1, 10]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from model.batch import CandidateBatch, ExampleBatch
from model.config import ID_FIELDS, ModelConfig, resolve_device
from model.hashing import cross_buckets
from model.id_rates import RATE_COLUMNS, RateTable, label_columns, smoothed
from model.logistic import OnlineLogistic

__all__ = ["LOGIT_CLIP", "RateRegression"]

#: Rates enter as logits clipped to this, so an id never seen negative stays finite.
LOGIT_CLIP = 8.0


class RateRegression:
    """Per-id rate tables and the logistic regression over their smoothed rates.

    Parameters
    ----------
    config
        Supplies ``buckets``, ``cross_buckets``, ``features``, ``rate_prior``,
        ``rate_half_life``, ``logistic_ridge``, ``logistic_forget`` and ``device``.
    columns
        Label columns (of :data:`~model.id_rates.RATE_COLUMNS`) whose rates are inputs.
    crosses
        Id crosses (``"user*creator"``) with their own rate table rows.
    counts
        Also feed ``log1p`` of each row's impressions (how much its rates can be trusted).
    nested
        Also feed each cross's rates smoothed towards its left field's rates (user x creator
        towards the user's) instead of the overall rate.
    pair_counts
        Also feed ``log1p`` of each cross's count of each chosen label column.
    outputs
        Independent regressions (one per head).
    """

    def __init__(
        self,
        config: ModelConfig,
        columns: Sequence[str] = ("negative",),
        crosses: Sequence[str] = (),
        counts: bool = False,
        nested: bool = False,
        pair_counts: bool = False,
        outputs: int = 1,
    ) -> None:
        unknown = set(columns) - set(RATE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown rate columns {sorted(unknown)}")
        self.config = config
        self.device = resolve_device(config.device)
        self.columns = [RATE_COLUMNS.index(name) for name in columns]
        self.crosses = [
            (ID_FIELDS.index(left), ID_FIELDS.index(right), name)
            for left, right, name in ((*name.split("*"), name) for name in crosses)
        ]
        self.counts, self.nested, self.pair_counts = counts, nested, pair_counts
        self._lefts = [left for left, _, _ in self.crosses]
        keys = len(ID_FIELDS) + len(self.crosses)
        self._offsets = torch.tensor(
            [f * config.buckets for f in range(len(ID_FIELDS))]
            + [len(ID_FIELDS) * config.buckets + k * config.cross_buckets for k in range(keys - 4)],
            dtype=torch.int64,
        )
        rows = len(ID_FIELDS) * config.buckets + len(self.crosses) * config.cross_buckets
        self.table = RateTable(rows, config.rate_half_life, self.device)
        rated = keys + (len(self.crosses) if nested else 0)
        self.width = rated * len(self.columns) + keys * int(counts) + len(config.features)
        if pair_counts:
            self.width += len(self.crosses) * len(self.columns)
        self.regression = OnlineLogistic(
            self.width,
            outputs,
            ridge=config.logistic_ridge,
            forget=config.logistic_forget,
            device=self.device,
        )

    def rows(self, batch: CandidateBatch) -> torch.Tensor:
        """Rate-table rows ``[n, 4 + crosses]`` of the batch's ids and id crosses."""
        fields = (batch.user, batch.item, batch.creator, batch.category)
        keys = list(fields) + [
            cross_buckets(fields[left], fields[right], name, self.config.cross_buckets)
            for left, right, name in self.crosses
        ]
        rows = torch.from_numpy(np.stack(keys, axis=1)) + self._offsets
        return rows.to(self.device, non_blocking=True)

    def inputs(self, batch: CandidateBatch, rows: torch.Tensor) -> torch.Tensor:
        """Regression inputs ``float32 [n, width]``: rate logits, counts, dense features."""
        counts = self.table.read(rows)
        strength = self.config.rate_prior
        rates = smoothed(counts, self.table.prior(), strength)
        if self.nested and self.crosses:
            # A pair's rate shrunk towards its left id's own rate rather than the overall one:
            # "this user, on this creator, against this user elsewhere".
            lefts = rates[:, self._lefts]
            pairs = counts[:, len(ID_FIELDS) :]
            nested = (pairs[..., 1:] + strength * lefts) / (pairs[..., :1] + strength)
            rates = torch.cat([rates, nested], dim=1)
        parts = [torch.logit(rates[..., self.columns]).clamp(-LOGIT_CLIP, LOGIT_CLIP).flatten(1)]
        if self.counts:
            parts.append(torch.log1p(counts[..., 0]))
        if self.pair_counts:
            # How many, not only how often: "three dislikes of this creator" says more than
            # a rate over a handful of impressions.
            labels = counts[:, len(ID_FIELDS) :, 1:][..., self.columns]
            parts.append(torch.log1p(labels).flatten(1))
        parts.append(torch.from_numpy(batch.dense).to(self.device, non_blocking=True))
        return torch.cat(parts, dim=1)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits ``float32 [n, outputs]``."""
        return self.regression.logits(inputs)

    def learn(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
    ) -> None:
        """Fold one batch into the regression (targets ``[n, outputs]``; ``offset``: logits
        the rest of a model adds, which the regression then fits around)."""
        self.regression.learn(inputs, targets, weights, offset)

    def count(self, rows: torch.Tensor, batch: ExampleBatch) -> None:
        """Add the batch's impressions and labels to the rate tables (after learning it)."""
        targets = torch.from_numpy(batch.targets).to(self.device, non_blocking=True)
        self.count_targets(rows, targets)

    def count_targets(self, rows: torch.Tensor, targets: torch.Tensor) -> None:
        """:meth:`count` of a batch's head ``targets`` ``[n, HEADS]`` (on the device)."""
        self.table.add(rows, label_columns(targets))

    def state_dict(self, *, copy: bool = True) -> dict[str, Any]:
        """Rate tables and regression (cpu copies; ``copy=False``: cpu tensors shared)."""
        return {
            "table": self.table.state_dict(copy=copy),
            "regression": self.regression.state_dict(copy=copy),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.table.load_state_dict(state["table"])
        self.regression.load_state_dict(state["regression"])
