"""Negative-feedback rate per kind in the current period against a reference period."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Self

from model.monitor._checks import _check_config

__all__ = ["KindShift", "RateShift"]


class KindShift(NamedTuple):
    """How one feedback kind's rate (events per impression) moved against the reference.

    Examples
    --------
    >>> RateShift(1).update_many(["hide"], 10).update_many(["hide"] * 2, 10).get()["hide"].ratio
    2.0
    """

    current_rate: float
    reference_rate: float
    ratio: float
    """``current / reference``; ``inf`` for a kind absent from the reference."""
    change: float
    """``current - reference``."""
    z: float
    """Two-sample Poisson z-score of the change; ``|z| > 3`` is unlikely to be noise."""


class RateShift:
    """Negative-feedback rate per kind in the current period against a reference period.

    A rate is events of a kind per impression. The first batches fill the reference until it
    holds ``reference_impressions`` impressions (the batch that crosses the mark counts whole, so
    that its events and impressions stay together), then it freezes and later batches fill the
    current period, which :meth:`roll` ends.

    Parameters
    ----------
    reference_impressions
        Impressions that fill the reference before it freezes.

    Examples
    --------
    >>> shift = RateShift(reference_impressions=100)
    >>> shift = shift.update_many(["hide"] * 2 + ["skip"] * 10, impressions=100)
    >>> shift = shift.update_many(["hide"] * 6 + ["skip"] * 10 + ["report"], impressions=100)
    >>> for kind, row in shift.get().items():
    ...     print(kind, row.current_rate, row.reference_rate, round(row.ratio, 2), round(row.z, 2))
    hide 0.06 0.02 3.0 1.41
    report 0.01 0.0 inf 1.0
    skip 0.1 0.1 1.0 0.0
    """

    def __init__(self, reference_impressions: int = 100_000) -> None:
        if reference_impressions < 1:
            raise ValueError(f"reference_impressions must be >= 1, got {reference_impressions}")
        self.reference_impressions = reference_impressions
        self._reference: Counter[str] = Counter()
        self._current: Counter[str] = Counter()
        self._reference_seen = 0
        self._current_seen = 0
        self._frozen = False

    @property
    def reference_frozen(self) -> bool:
        """Whether the reference is complete (later batches go to the current period)."""
        return self._frozen

    def update_many(self, kinds: Sequence[str], impressions: int) -> Self:
        """Count a batch: the kind of each feedback event, and the impressions served."""
        if isinstance(kinds, str):
            raise TypeError("kinds must be a sequence of kinds, not one string")
        if impressions < 0:
            raise ValueError(f"impressions must be >= 0, got {impressions}")
        if self._frozen:
            self._current.update(kinds)
            self._current_seen += impressions
        else:
            self._reference.update(kinds)
            self._reference_seen += impressions
            self._frozen = self._reference_seen >= self.reference_impressions
        return self

    def set_reference(self, counts: Mapping[str, int], impressions: int) -> Self:
        """Replace the reference by events per kind over ``impressions``, and freeze it."""
        if impressions < 1 or any(count < 0 for count in counts.values()):
            raise ValueError("a reference needs impressions >= 1 and non-negative counts")
        self._reference = Counter(dict(counts))
        self._reference_seen = impressions
        self._frozen = True
        return self

    def get(self) -> dict[str, KindShift]:
        """Shift of every kind seen on either side, by kind name; rates are ``nan`` with no data."""
        return {
            kind: _kind_shift(
                self._current[kind], self._current_seen, self._reference[kind], self._reference_seen
            )
            for kind in sorted(self._reference.keys() | self._current.keys())
        }

    def roll(self) -> dict[str, KindShift]:
        """End the period: return its :meth:`get` and clear the current counts."""
        shifts = self.get()
        self._current = Counter()
        self._current_seen = 0
        return shifts

    def state_dict(self) -> dict[str, Any]:
        """JSON-able snapshot of both periods."""
        return {
            "config": {"reference_impressions": self.reference_impressions},
            "frozen": self._frozen,
            "reference": {"counts": dict(self._reference), "impressions": self._reference_seen},
            "current": {"counts": dict(self._current), "impressions": self._current_seen},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot taken with the same configuration."""
        config = {"reference_impressions": self.reference_impressions}
        _check_config(state, config, type(self).__name__)
        self._reference = Counter(state["reference"]["counts"])
        self._reference_seen = int(state["reference"]["impressions"])
        self._current = Counter(state["current"]["counts"])
        self._current_seen = int(state["current"]["impressions"])
        self._frozen = bool(state["frozen"])


def _kind_shift(current: int, current_seen: int, reference: int, reference_seen: int) -> KindShift:
    current_rate = current / current_seen if current_seen else math.nan
    reference_rate = reference / reference_seen if reference_seen else math.nan
    change = current_rate - reference_rate
    if reference_rate > 0:
        ratio = current_rate / reference_rate
    else:
        ratio = math.inf if current_rate > 0 else math.nan
    z = math.nan
    if current_seen and reference_seen:
        # Negatives are rare events per impression, so each count is close to Poisson; pooling
        # the two periods gives the rate under "no change", which sets the noise of the gap.
        pooled = (current + reference) / (current_seen + reference_seen)
        noise = math.sqrt(pooled * (1 / current_seen + 1 / reference_seen))
        z = change / noise if noise > 0 else 0.0
    return KindShift(current_rate, reference_rate, ratio, change, z)
