"""Running label counts per hashed id, with recency decay, and the smoothed rates they give.

A :class:`RateTable` keeps, for every row of a hashed table, how many impressions it took part
in and how many carried each label column (:data:`RATE_COLUMNS`). Counts fade by half every
``half_life`` examples (lazily: a row is decayed when it is next read or written). Rates are
smoothed towards the table's overall rate with a prior of ``strength`` impressions, so an id
seen once says little and an id seen a thousand times says nearly all.

Examples
--------
>>> table = RateTable(rows=8, half_life=0.0)
>>> rows = torch.tensor([[1], [1], [2]])
>>> labels = torch.tensor([[1.0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 1, 0]])
>>> table.add(rows, labels)
>>> table.read(rows)[:, 0].tolist()
[[2.0, 1.0, 0.0, 1.0, 1.0], [2.0, 1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0, 0.0]]
>>> rates = table.rates(torch.tensor([[1], [5]]), strength=2.0)[:, 0, -1]
>>> [round(r, 3) for r in rates.tolist()]
[0.45, 0.4]
"""

from __future__ import annotations

import math
from typing import Any, Final

import torch

from model.config import HEADS

__all__ = ["RATE_COLUMNS", "RateTable", "label_columns", "smoothed"]

#: Label columns of a table after its impressions column: each head, then "any negative".
RATE_COLUMNS: Final = (*HEADS, "negative")

_EXPLICIT = HEADS.index("explicit_negative")
_IMPLICIT = HEADS.index("implicit_negative")


def label_columns(targets: torch.Tensor) -> torch.Tensor:
    """``[n, heads]`` 0/1 targets -> ``[n, len(RATE_COLUMNS)]``: the heads and "any negative".

    Examples
    --------
    >>> label_columns(torch.tensor([[0.0, 1.0, 1.0]])).tolist()
    [[0.0, 1.0, 1.0, 1.0]]
    """
    negative = torch.maximum(targets[:, _EXPLICIT], targets[:, _IMPLICIT])
    return torch.cat([targets, negative.unsqueeze(1)], dim=1)


class RateTable:
    """Decayed impression and label counts of each row of a hashed table.

    Parameters
    ----------
    rows
        Rows of the table (every field's hashed ids, offset by the caller).
    half_life
        Examples after which a count weighs half; 0 keeps every count forever.
    device
        Where the counts live (the model's device).
    """

    def __init__(self, rows: int, half_life: float, device: torch.device | None = None) -> None:
        if rows < 1 or half_life < 0:
            raise ValueError("rows must be >= 1 and half_life >= 0")
        self.half_life = half_life
        width = 1 + len(RATE_COLUMNS)
        self.counts = torch.zeros(rows, width, device=device)
        # Example count at each row's last write, for the lazy decay (none without decay).
        decayed = rows if half_life > 0 else 0
        self.touched = torch.zeros(decayed, dtype=torch.float64, device=device)
        self.totals = torch.zeros(width, dtype=torch.float64, device=device)
        self.seen = 0.0

    def _fade(self, rows: torch.Tensor) -> torch.Tensor:
        """Decay factor of ``rows``' counts from their last write to now."""
        age = self.seen - self.touched[rows]
        return torch.exp2(age * (-1.0 / self.half_life)).to(self.counts.dtype)

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        """Counts ``[n, K, 1 + len(RATE_COLUMNS)]`` of the ``[n, K]`` rows, decayed to now."""
        flat = rows.reshape(-1)
        # index_select measured several times faster than advanced indexing on cpu here.
        counts = self.counts.index_select(0, flat)
        if self.half_life > 0:
            counts = counts * self._fade(flat).unsqueeze(1)
        return counts.reshape(*rows.shape, counts.shape[-1])

    def add(self, rows: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one impression of each example ``[n]`` in each of its rows ``[n, K]``, with
        its label columns ``[n, len(RATE_COLUMNS)]`` (see :func:`label_columns`)."""
        n = rows.shape[0]
        if n == 0:
            return
        values = torch.cat([labels.new_ones(n, 1), labels], dim=1).to(self.counts.dtype)
        flat = rows.reshape(-1)
        per_row = values.repeat_interleave(rows.shape[1], dim=0)
        # The batch counts as seen at its end: earlier counts fade to then, this one by none.
        end = self.seen + n
        if self.half_life > 0:
            unique = torch.unique(flat)
            age = end - self.touched[unique]
            self.counts[unique] *= torch.exp2(age * (-1.0 / self.half_life)).unsqueeze(1)
            self.touched[unique] = end
            self.totals *= math.exp2(-n / self.half_life)
        self.counts.index_add_(0, flat, per_row)
        self.totals += values.sum(0).to(self.totals.dtype)
        self.seen = end

    def prior(self) -> torch.Tensor:
        """Overall rate of each label column, as a Beta(1, 1) posterior mean ``[C]``."""
        totals = self.totals.to(self.counts.dtype)
        return (totals[1:] + 1.0) / (totals[0] + 2.0)

    def rates(self, rows: torch.Tensor, strength: float) -> torch.Tensor:
        """Smoothed rate of each label column ``[n, K, len(RATE_COLUMNS)]`` of the rows:
        ``(count + strength * prior) / (impressions + strength)``."""
        return smoothed(self.read(rows), self.prior(), strength)

    def state_dict(self, *, copy: bool = True) -> dict[str, Any]:
        """Counts, write times, totals and the example clock (tensors copied to cpu;
        ``copy=False``: tensors already on cpu shared)."""
        return {
            "counts": self.counts.detach().to("cpu", copy=copy),
            "touched": self.touched.detach().to("cpu", copy=copy),
            "totals": self.totals.detach().to("cpu", copy=copy),
            "seen": self.seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (copying, so later counts never write into it)."""
        device = self.counts.device
        for name in ("counts", "touched", "totals"):
            saved = state[name]
            if saved.shape != getattr(self, name).shape:
                raise ValueError(f"{name} has shape {tuple(saved.shape)}")
            setattr(self, name, saved.to(device, copy=True))
        self.seen = float(state["seen"])


def smoothed(counts: torch.Tensor, prior: torch.Tensor, strength: float) -> torch.Tensor:
    """Rates of counts ``[..., 1 + C]`` (impressions first) shrunk towards ``prior`` ``[C]``.

    Examples
    --------
    >>> smoothed(torch.tensor([[4.0, 2.0]]), torch.tensor([0.1]), 1.0).tolist()
    [[0.41999998688697815]]
    """
    impressions = counts[..., :1]
    return (counts[..., 1:] + strength * prior) / (impressions + strength)
