"""Simple learners the model must beat: running negative rates and a logistic regression on them.

Each has the prequential shape of :class:`~model.online.OnlineModel` for the one figure they
all give: ``learn_many(batch)`` and ``p_negative(batch)``, the probability of any negative
reaction. They read the same featurised batches, so a benchmark compares them on the same
examples in the same order.

Examples
--------
>>> import numpy as np
>>> config = ModelConfig(buckets=2**8, features=())
>>> hidden = {"user_id": "u", "item_id": "bad", "label": "hide", "kinds": ["hide"],
...           "features": {}}
>>> fine = {**hidden, "item_id": "good", "label": "none", "kinds": []}
>>> batch = ExampleBatch.from_examples([hidden, fine] * 20, config)
>>> rate = RunningRate("item", config)
>>> rate.learn_many(batch)
>>> [round(p, 2) for p in rate.p_negative(batch.take(np.arange(2))).tolist()]
[0.83, 0.17]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from model.batch import CandidateBatch, ExampleBatch
from model.config import HEADS, ID_FIELDS, ModelConfig
from model.id_rates import RATE_COLUMNS, RateTable, label_columns
from model.wide import RateRegression

__all__ = ["RateLogistic", "RunningRate", "id_rows"]

_NEGATIVE = RATE_COLUMNS.index("negative")
_EXPLICIT = HEADS.index("explicit_negative")
_IMPLICIT = HEADS.index("implicit_negative")


def id_rows(batch: CandidateBatch, buckets: int) -> torch.Tensor:
    """Rows ``[n, 4]`` of a four-field table (field ``f`` owns rows ``f * buckets`` on).

    Examples
    --------
    >>> config = ModelConfig(buckets=16, features=())
    >>> id_rows(CandidateBatch.from_rows([{"user_id": "u", "item_id": "i"}], config), 16)[0, 2:]
    tensor([32, 48])
    """
    fields = np.stack((batch.user, batch.item, batch.creator, batch.category), axis=1)
    return torch.from_numpy(fields + np.arange(len(ID_FIELDS), dtype=np.int64) * buckets)


class RunningRate:
    """The smoothed running rate of any negative reaction of one id field's value.

    Parameters
    ----------
    field
        One of ``user``, ``item``, ``creator``, ``category``.
    config
        Supplies ``buckets``, ``rate_prior`` and ``rate_half_life``.
    """

    def __init__(self, field: str, config: ModelConfig) -> None:
        if field not in ID_FIELDS:
            raise ValueError(f"field must be one of {ID_FIELDS}, got {field!r}")
        self.field, self.config = field, config
        self.table = RateTable(len(ID_FIELDS) * config.buckets, config.rate_half_life)

    def _rows(self, batch: CandidateBatch) -> torch.Tensor:
        column = ID_FIELDS.index(self.field)
        return id_rows(batch, self.config.buckets)[:, column : column + 1]

    def learn_many(self, batch: ExampleBatch) -> None:
        """Count the batch's impressions and labels."""
        self.table.add(self._rows(batch), label_columns(torch.from_numpy(batch.targets)))

    def p_negative(self, batch: CandidateBatch) -> npt.NDArray[np.float32]:
        """Smoothed negative rate of each row's id ``float32 [n]``."""
        rates = self.table.rates(self._rows(batch), self.config.rate_prior)
        return rates[:, 0, _NEGATIVE].numpy().astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """The rate table (cpu copies)."""
        return {"table": self.table.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.table.load_state_dict(state["table"])


class RateLogistic:
    """Online logistic regression of any negative on the four id fields' smoothed negative
    rates (as logits) and the batch's dense features, by Laplace updates
    (:class:`~model.wide.RateRegression` with only the "negative" column, no crosses).

    Parameters
    ----------
    config
        Supplies ``buckets``, ``features``, ``rate_prior``, ``rate_half_life``,
        ``logistic_ridge`` and ``logistic_forget``.
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.part = RateRegression(config, columns=("negative",))

    def learn_many(self, batch: ExampleBatch) -> None:
        """Fold the batch into the regression (inputs as before it), then count it."""
        rows = self.part.rows(batch)
        targets = torch.from_numpy(batch.targets)
        negative = torch.maximum(targets[:, _EXPLICIT], targets[:, _IMPLICIT])
        self.part.learn(self.part.inputs(batch, rows), negative.unsqueeze(1))
        self.part.count(rows, batch)

    def p_negative(self, batch: CandidateBatch) -> npt.NDArray[np.float32]:
        """Probability of any negative reaction ``float32 [n]``."""
        logits = self.part.logits(self.part.inputs(batch, self.part.rows(batch)))
        return torch.sigmoid(logits)[:, 0].cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        """Rate table and regression (cpu copies)."""
        return self.part.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.part.load_state_dict(state)
