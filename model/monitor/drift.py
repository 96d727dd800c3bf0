"""Population stability index: PSI of two histograms, fixed-bin histograms, a PSI monitor."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, Literal, Self

import numpy as np
import numpy.typing as npt

from model.monitor._checks import _check_config, _finite, _FloatArray

__all__ = [
    "PSI_ACT",
    "PSI_WATCH",
    "FixedBinHistogram",
    "PSIMonitor",
    "psi",
    "psi_level",
]

PSI_WATCH: Final = 0.1
"""PSI from which a distribution is worth watching (below it: stable)."""
PSI_ACT: Final = 0.25
"""PSI from which a shift is significant enough to act on (retrain, recalibrate, investigate)."""

_IntArray = npt.NDArray[np.int64]


def _bin_counts(values: npt.ArrayLike, name: str) -> _FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return array


def psi(reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike, eps: float = 1e-4) -> float:
    """Population stability index of two histograms over the same bins.

    ``PSI = sum_b (c_b - r_b) * ln(c_b / r_b)``, where ``r_b`` and ``c_b`` are the proportions of
    the reference and current counts in bin ``b``. A bin that is empty on one side would make its
    term infinite, so an empty bin's proportion is taken as ``eps`` (not renormalised: the other
    proportions move by less than ``eps`` per bin). Each term is ``>= 0`` because both factors share
    their sign, so PSI is ``>= 0``, ``0`` only for equal proportions, and symmetric.

    Usual reading (from credit scoring, carried over to model monitoring; see :func:`psi_level`):
    below :data:`PSI_WATCH` (0.1) stable, 0.1 to 0.25 watch, from :data:`PSI_ACT` (0.25) act.
    Sampling noise alone gives about ``(bins - 1) * (1 / n_reference + 1 / n_current)`` on
    average, so with 10 bins a period needs a few thousand observations before 0.1 means drift.

    Parameters
    ----------
    reference_counts, current_counts
        Non-negative counts per bin, same length.
    eps
        Proportion given to an empty bin.

    Returns
    -------
    float
        The PSI; ``nan`` when either side has no observations.

    Examples
    --------
    Proportions (0.5, 0.5) against (0.25, 0.75): ``-0.25 ln 0.5 + 0.25 ln 1.5 = 0.25 ln 3``.

    >>> round(psi([50, 50], [25, 75]), 6), round(0.25 * math.log(3), 6)
    (0.274653, 0.274653)
    >>> psi([1, 2, 3], [10, 20, 30])
    0.0
    >>> psi([0, 0], [1, 1])
    nan
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    reference = _bin_counts(reference_counts, "reference_counts")
    current = _bin_counts(current_counts, "current_counts")
    if reference.shape != current.shape:
        raise ValueError(f"{len(reference)} reference bins but {len(current)} current bins")
    reference_total, current_total = reference.sum(), current.sum()
    if reference_total == 0 or current_total == 0:
        return math.nan
    r = reference / reference_total
    c = current / current_total
    r = np.where(r > 0, r, eps)
    c = np.where(c > 0, c, eps)
    return float(np.sum((c - r) * np.log(c / r)))


def psi_level(value: float) -> Literal["ok", "watch", "act"]:
    """Traffic-light reading of a PSI value; ``nan`` (no data yet) reads ``"ok"``.

    Examples
    --------
    >>> psi_level(0.05), psi_level(0.1), psi_level(0.3), psi_level(math.nan)
    ('ok', 'watch', 'act', 'ok')
    """
    if value >= PSI_ACT:
        return "act"
    if value >= PSI_WATCH:
        return "watch"
    return "ok"


class FixedBinHistogram:
    """Counts of values over fixed bin edges (``[lo, hi)`` bins, the last one closed).

    Values below the first edge count in the first bin and values above the last edge in the last
    bin, so a per-user negative rate above 1 (several negatives on one impression) still counts as
    "high" rather than vanishing. Non-finite values raise :class:`ValueError`.

    Parameters
    ----------
    edges
        Strictly increasing bin edges; the default is 10 equal-width bins on ``[0, 1]``, for the
        p(negative) distribution and per-user negative rates.

    Examples
    --------
    >>> histogram = FixedBinHistogram().update_many([0.05, 0.15, 0.12, 1.0, 1.7])
    >>> histogram.counts.tolist()
    [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    >>> histogram.total, histogram.reset().total
    (5, 0)
    """

    def __init__(self, edges: npt.ArrayLike | None = None) -> None:
        bin_edges = (
            np.linspace(0.0, 1.0, 11) if edges is None else np.array(edges, dtype=np.float64)
        )
        if bin_edges.ndim != 1 or len(bin_edges) < 2 or not np.isfinite(bin_edges).all():
            raise ValueError("edges must be at least two finite values")
        if (np.diff(bin_edges) <= 0).any():
            raise ValueError("edges must be strictly increasing")
        self._edges = bin_edges
        self._counts = np.zeros(len(bin_edges) - 1, dtype=np.int64)

    @property
    def edges(self) -> _FloatArray:
        """A copy of the bin edges."""
        return self._edges.copy()

    @property
    def counts(self) -> _IntArray:
        """A copy of the count per bin."""
        return self._counts.copy()

    @property
    def total(self) -> int:
        """Number of values counted."""
        return int(self._counts.sum())

    def update(self, x: float) -> Self:
        """Count one value."""
        return self.update_many([x])

    def update_many(self, values: npt.ArrayLike) -> Self:
        """Count every value of an array."""
        array = _finite(values, "values")
        bins = np.searchsorted(self._edges, array, side="right") - 1
        np.clip(bins, 0, len(self._counts) - 1, out=bins)
        self._counts += np.bincount(bins, minlength=len(self._counts))
        return self

    def get(self) -> _IntArray:
        """The count per bin (same as :attr:`counts`)."""
        return self.counts

    def reset(self) -> Self:
        """Forget every value."""
        self._counts[:] = 0
        return self

    def state_dict(self) -> dict[str, Any]:
        """JSON-able snapshot of the counts."""
        return {"config": {"edges": self._edges.tolist()}, "counts": self._counts.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot taken with the same edges."""
        _check_config(state, {"edges": self._edges.tolist()}, type(self).__name__)
        counts = _bin_counts(state["counts"], "counts")
        if len(counts) != len(self._counts) or (counts != np.round(counts)).any():
            raise ValueError(f"counts must be {len(self._counts)} whole numbers")
        self._counts = counts.astype(np.int64)


class PSIMonitor:
    """PSI of the current period's histogram against a reference histogram.

    The first ``reference_size`` observations fill the reference, which then freezes (or
    :meth:`set_reference` sets and freezes it, e.g. from the training data's histogram); later
    observations fill the current period, which :meth:`roll` ends.

    Parameters
    ----------
    edges
        Bin edges shared by both histograms (default: 10 equal-width bins on ``[0, 1]``).
    reference_size
        Observations that fill the reference before it freezes.

    Examples
    --------
    >>> monitor = PSIMonitor(reference_size=4).update_many([0.1, 0.1, 0.9, 0.9, 0.1, 0.9])
    >>> monitor.reference_frozen, monitor.reference.tolist()[1::8], monitor.current.tolist()[1::8]
    (True, [2, 2], [1, 1])
    >>> monitor.psi()
    0.0

    One more 0.1 makes the current proportions (2/3, 1/3) against (1/2, 1/2):
    ``PSI = (1/6) ln(4/3) + (1/6) ln(3/2) = ln(2) / 6``.

    >>> round(monitor.update(0.1).psi(), 6), round(math.log(2) / 6, 6), monitor.level()
    (0.115525, 0.115525, 'watch')
    >>> round(monitor.roll(), 6), monitor.current.sum(), monitor.psi()
    (0.115525, np.int64(0), nan)
    """

    def __init__(self, edges: npt.ArrayLike | None = None, reference_size: int = 10_000) -> None:
        if reference_size < 1:
            raise ValueError(f"reference_size must be >= 1, got {reference_size}")
        self.reference_size = reference_size
        self._reference = FixedBinHistogram(edges)
        self._current = FixedBinHistogram(edges)
        self._frozen = False

    @property
    def reference_frozen(self) -> bool:
        """Whether the reference is complete (later observations go to the current period)."""
        return self._frozen

    @property
    def reference(self) -> _IntArray:
        """A copy of the reference counts."""
        return self._reference.counts

    @property
    def current(self) -> _IntArray:
        """A copy of the current period's counts."""
        return self._current.counts

    def update(self, x: float) -> Self:
        """Count one observation."""
        return self.update_many([x])

    def update_many(self, values: npt.ArrayLike) -> Self:
        """Count a batch; while the reference fills, only its remaining room goes to it."""
        array = _finite(values, "values")
        if not self._frozen:
            room = max(self.reference_size - self._reference.total, 0)
            self._reference.update_many(array[:room])
            array = array[room:]
            self._frozen = self._reference.total >= self.reference_size
        if len(array):
            self._current.update_many(array)
        return self

    def set_reference(self, counts: npt.ArrayLike) -> Self:
        """Replace the reference by ``counts`` (one per bin) and freeze it."""
        self._reference.load_state_dict(
            {"config": {"edges": self._reference.edges.tolist()}, "counts": counts}
        )
        self._frozen = True
        return self

    def psi(self) -> float:
        """PSI of the current period; ``nan`` until the reference is frozen and data arrives."""
        if not self._frozen or self._current.total == 0:
            return math.nan
        return psi(self._reference.counts, self._current.counts)

    def get(self) -> float:
        """Same as :meth:`psi`."""
        return self.psi()

    def level(self) -> Literal["ok", "watch", "act"]:
        """:func:`psi_level` of the current PSI."""
        return psi_level(self.psi())

    def roll(self) -> float:
        """End the period: return its PSI and clear the current histogram."""
        value = self.psi()
        self._current.reset()
        return value

    def state_dict(self) -> dict[str, Any]:
        """JSON-able snapshot of both histograms."""
        return {
            "config": {
                "edges": self._reference.edges.tolist(),
                "reference_size": self.reference_size,
            },
            "frozen": self._frozen,
            "reference": self._reference.state_dict(),
            "current": self._current.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot taken with the same configuration."""
        config = {"edges": self._reference.edges.tolist(), "reference_size": self.reference_size}
        _check_config(state, config, type(self).__name__)
        self._reference.load_state_dict(state["reference"])
        self._current.load_state_dict(state["current"])
        self._frozen = bool(state["frozen"])
