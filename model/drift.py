"""Drift statistics: PSI, negative-rate shift, Page-Hinkley, calibration table and label delay."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, NamedTuple, Self

import numpy as np
import numpy.typing as npt

__all__ = [
    "PSI_ACT",
    "PSI_WATCH",
    "CalibrationBucket",
    "CalibrationTable",
    "DelaySummary",
    "FixedBinHistogram",
    "KindShift",
    "LabelDelay",
    "PSIMonitor",
    "PageHinkley",
    "RateShift",
    "psi",
    "psi_level",
]

PSI_WATCH: Final = 0.1
"""PSI from which a distribution is worth watching (below it: stable)."""
PSI_ACT: Final = 0.25
"""PSI from which a shift is significant enough to act on (retrain, recalibrate, investigate)."""

_FloatArray = npt.NDArray[np.float64]
_IntArray = npt.NDArray[np.int64]


def _finite(values: npt.ArrayLike, name: str) -> _FloatArray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array


def _bin_counts(values: npt.ArrayLike, name: str) -> _FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return array


def _check_config(state: Mapping[str, Any], config: Mapping[str, Any], owner: str) -> None:
    # A snapshot taken with other bins or parameters would load without error and then report
    # numbers that mean something else; refuse it instead.
    if dict(state["config"]) != dict(config):
        raise ValueError(f"{owner} state has config {state['config']}, this one has {config}")


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


class PageHinkley:
    """Page-Hinkley test for an increase in the mean of a monitored value (e.g. the log loss).

    As in river's ``drift.PageHinkley`` (increase side): with ``m_t`` the running mean,
    ``S_t = alpha * S_{t-1} + (x_t - m_t) - delta`` and drift when ``S_t - min S > threshold``
    after ``min_instances`` values. The update after a detection starts the test over.

    ``delta`` and ``threshold`` are in the units of ``x``: ``delta`` is the mean increase that is
    tolerated, ``threshold`` the evidence needed. River's defaults suit a quiet value such as a
    per-batch mean loss; on a unit-variance value they false-alarm, because ``S`` then wanders
    like a random walk (measured here: 37 of 40 seeds of 5000 N(0, 1) points). For noise of
    standard deviation ``sigma``, ``delta = sigma / 2, threshold = 25 * sigma`` held 200 of 200
    such seeds and caught a ``3 sigma`` jump within 15 values.

    Examples
    --------
    >>> detector = PageHinkley(min_instances=5, threshold=10.0)
    >>> for step, loss in enumerate([0.0] * 20 + [5.0] * 10):
    ...     if detector.update(loss).drift_detected:
    ...         print(f"drift at step {step}, statistic {detector.statistic:.2f}")
    ...         break
    drift at step 22, statistic 13.64

    The update after a detection starts the test over:

    >>> detector.update(5.0).drift_detected, detector.n
    (False, 1)
    """

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
    ) -> None:
        if min_instances < 1 or delta < 0 or threshold <= 0 or not 0 < alpha <= 1:
            raise ValueError("need min_instances >= 1, delta >= 0, threshold > 0, 0 < alpha <= 1")
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.reset()

    def reset(self) -> Self:
        """Start the test over."""
        self._n = 0
        self._mean = 0.0
        self._sum = 0.0
        # River starts the minimum at +inf; 0 is the same test (the first deviation is always 0,
        # so S_1 = -delta <= 0) and keeps the state JSON-able.
        self._min = 0.0
        self._drift_detected = False
        return self

    @property
    def drift_detected(self) -> bool:
        """Whether the last update detected an increase."""
        return self._drift_detected

    @property
    def n(self) -> int:
        """Values seen since the last (re)start."""
        return self._n

    @property
    def statistic(self) -> float:
        """``S_t - min S``, compared with ``threshold``; worth exporting as a gauge."""
        return self._sum - self._min

    def update(self, x: float) -> Self:
        """Feed one value."""
        if not math.isfinite(x):
            raise ValueError(f"x must be finite, got {x}")
        if self._drift_detected:
            self.reset()
        self._n += 1
        self._mean += (x - self._mean) / self._n
        self._sum = self.alpha * self._sum + (x - self._mean) - self.delta
        self._min = min(self._min, self._sum)
        self._drift_detected = self._n >= self.min_instances and self.statistic > self.threshold
        return self

    def _config(self) -> dict[str, Any]:
        return {
            "min_instances": self.min_instances,
            "delta": self.delta,
            "threshold": self.threshold,
            "alpha": self.alpha,
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-able snapshot of the test."""
        return {
            "config": self._config(),
            "n": self._n,
            "mean": self._mean,
            "sum": self._sum,
            "min": self._min,
            "drift_detected": self._drift_detected,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot taken with the same parameters."""
        _check_config(state, self._config(), type(self).__name__)
        self._n = int(state["n"])
        self._mean = float(state["mean"])
        self._sum = float(state["sum"])
        self._min = float(state["min"])
        self._drift_detected = bool(state["drift_detected"])


class CalibrationBucket(NamedTuple):
    """One score bucket of a :class:`CalibrationTable`; the means are ``nan`` when it is empty.

    Examples
    --------
    >>> CalibrationTable(bins=4).update(0.3, 1).get()[1]
    CalibrationBucket(lo=0.25, hi=0.5, n=1, mean_predicted=0.3, observed_rate=1.0)
    """

    lo: float
    hi: float
    n: int
    mean_predicted: float
    observed_rate: float


class CalibrationTable:
    """Mean predicted p(negative) against the observed negative rate, per score bucket.

    Buckets are ``bins`` equal-width slices of ``[0, 1]``, bucketed as
    :class:`model.metrics.CalibrationError` does, so :meth:`ece` equals its value on the same
    pairs; the table adds the per-bucket view a reliability diagram needs.

    Examples
    --------
    >>> table = CalibrationTable(bins=2).update_many([0.1, 0.2, 0.9, 0.9], [0, 1, 1, 1])
    >>> [tuple(round(v, 3) for v in bucket) for bucket in table.get()]
    [(0.0, 0.5, 2, 0.15, 0.5), (0.5, 1.0, 2, 0.9, 1.0)]
    >>> round(table.ece(), 6)
    0.225
    """

    def __init__(self, bins: int = 10) -> None:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.bins = bins
        self.reset()

    def reset(self) -> Self:
        """Forget every pair."""
        self._counts = np.zeros(self.bins, dtype=np.int64)
        self._predicted = np.zeros(self.bins, dtype=np.float64)
        self._observed = np.zeros(self.bins, dtype=np.float64)
        return self

    def update(self, p: float, y: float) -> Self:
        """Count one predicted probability and its 0/1 outcome."""
        return self.update_many([p], [y])

    def update_many(self, p: npt.ArrayLike, y: npt.ArrayLike) -> Self:
        """Count equal-length arrays of predicted probabilities and 0/1 outcomes."""
        predicted, observed = _finite(p, "p"), _finite(y, "y")
        if predicted.shape != observed.shape:
            raise ValueError(f"{len(predicted)} predictions but {len(observed)} outcomes")
        if ((predicted < 0) | (predicted > 1) | (observed < 0) | (observed > 1)).any():
            raise ValueError("p and y must lie in [0, 1]")
        bucket = np.minimum((predicted * self.bins).astype(np.int64), self.bins - 1)
        self._counts += np.bincount(bucket, minlength=self.bins)
        self._predicted += np.bincount(bucket, weights=predicted, minlength=self.bins)
        self._observed += np.bincount(bucket, weights=observed, minlength=self.bins)
        return self

    def get(self) -> list[CalibrationBucket]:
        """Every bucket, empty ones included, so that a dashboard's rows stay fixed."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_predicted = self._predicted / self._counts
            observed_rate = self._observed / self._counts
        return [
            CalibrationBucket(
                b / self.bins,
                (b + 1) / self.bins,
                int(self._counts[b]),
                float(mean_predicted[b]),
                float(observed_rate[b]),
            )
            for b in range(self.bins)
        ]

    def ece(self) -> float:
        """Count-weighted mean of ``|mean predicted - observed rate|``; ``nan`` with no data."""
        total = int(self._counts.sum())
        if total == 0:
            return math.nan
        # n_b * |mean p_b - rate_b| == |sum p_b - sum y_b|, which needs no division per bucket.
        return float(np.abs(self._predicted - self._observed).sum() / total)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able snapshot of the per-bucket sums."""
        return {
            "config": {"bins": self.bins},
            "counts": self._counts.tolist(),
            "predicted": self._predicted.tolist(),
            "observed": self._observed.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot taken with the same number of buckets."""
        _check_config(state, {"bins": self.bins}, type(self).__name__)
        self._counts = np.array(state["counts"], dtype=np.int64)
        self._predicted = np.array(state["predicted"], dtype=np.float64)
        self._observed = np.array(state["observed"], dtype=np.float64)


class DelaySummary(NamedTuple):
    """Label delays in seconds: how many, their mean, median, 95th percentile and maximum.

    Examples
    --------
    >>> LabelDelay().update(30.0).get()
    DelaySummary(n=1, mean=30.0, p50=30.0, p95=30.0, max=30.0)
    """

    n: int
    mean: float
    p50: float
    p95: float
    max: float


class LabelDelay:
    """Streaming mean and quantiles of label delays (seconds from impression to its label).

    A fixed histogram rather than a reservoir: its state is small, deterministic (no sampling
    seed to checkpoint) and mergeable across partitions by adding counts. Bins are log-spaced,
    ``bins_per_decade`` per factor of 10 from ``lowest`` to ``highest``, plus ``[0, lowest)``;
    delays above ``highest`` count in the last bin. The mean, minimum and maximum are exact; a
    quantile is interpolated inside its bin and clamped to ``[min, max]``, so its error is under
    one bin width (12 % of the value with 20 bins a decade).

    Examples
    --------
    >>> delays = LabelDelay().update_many([1.0, 2.0, 3.0, 4.0, 100.0])
    >>> summary = delays.get()
    >>> summary.n, summary.mean, summary.max
    (5, 22.0, 100.0)
    >>> 2.7 < summary.p50 < 3.3, 4.0 < summary.p95 <= 100.0
    (True, True)
    """

    def __init__(
        self, lowest: float = 0.1, highest: float = 7 * 86_400.0, bins_per_decade: int = 20
    ) -> None:
        if not 0 < lowest < highest or bins_per_decade < 1:
            raise ValueError("need 0 < lowest < highest and bins_per_decade >= 1")
        self.lowest, self.highest, self.bins_per_decade = lowest, highest, bins_per_decade
        steps = math.ceil(math.log10(highest / lowest) * bins_per_decade)
        self._edges = np.concatenate(
            ([0.0], lowest * 10.0 ** (np.arange(steps + 1) / bins_per_decade))
        )
        self.reset()

    def reset(self) -> Self:
        """Forget every delay."""
        self._counts = np.zeros(len(self._edges) - 1, dtype=np.int64)
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf
        return self

    @property
    def count(self) -> int:
        """Delays seen."""
        return int(self._counts.sum())

    def update(self, delay: float) -> Self:
        """Count one delay in seconds."""
        return self.update_many([delay])

    def update_many(self, delays: npt.ArrayLike) -> Self:
        """Count an array of delays in seconds; a negative one (clock skew) raises."""
        array = _finite(delays, "delays")
        if len(array) == 0:
            return self
        if (array < 0).any():
            raise ValueError("label delays must be >= 0")
        bins = np.searchsorted(self._edges, array, side="right") - 1
        np.clip(bins, 0, len(self._counts) - 1, out=bins)
        self._counts += np.bincount(bins, minlength=len(self._counts))
        self._sum += float(array.sum())
        self._min = min(self._min, float(array.min()))
        self._max = max(self._max, float(array.max()))
        return self

    def quantile(self, q: float) -> float:
        """Estimated ``q``-quantile, ``0 <= q <= 1``; ``nan`` with no data."""
        if not 0 <= q <= 1:
            raise ValueError(f"q must be in [0, 1], got {q}")
        total = self.count
        if total == 0:
            return math.nan
        if q == 0:
            return self._min
        cumulative = np.cumsum(self._counts)
        rank = q * total
        # The first bin whose cumulative count reaches the rank holds it; it is non-empty.
        b = int(np.searchsorted(cumulative, rank, side="left"))
        below = cumulative[b] - self._counts[b]
        fraction = (rank - below) / self._counts[b]
        lo, hi = float(self._edges[b]), float(self._edges[b + 1])
        if b == len(self._counts) - 1:
            hi = max(hi, self._max)  # the last bin also holds every delay above ``highest``
        estimate = lo + fraction * (hi - lo)
        return float(min(max(estimate, self._min), self._max))

    def get(self) -> DelaySummary:
        """Count, mean, p50, p95 and maximum (``nan`` with no data)."""
        total = self.count
        if total == 0:
            return DelaySummary(0, math.nan, math.nan, math.nan, math.nan)
        return DelaySummary(
            total, self._sum / total, self.quantile(0.5), self.quantile(0.95), self._max
        )

    def _config(self) -> dict[str, Any]:
        return {
            "lowest": self.lowest,
            "highest": self.highest,
            "bins_per_decade": self.bins_per_decade,
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-able snapshot; the extremes are ``None`` before the first delay."""
        empty = self.count == 0
        return {
            "config": self._config(),
            "counts": self._counts.tolist(),
            "sum": self._sum,
            "min": None if empty else self._min,
            "max": None if empty else self._max,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot taken with the same bins."""
        _check_config(state, self._config(), type(self).__name__)
        self._counts = np.array(state["counts"], dtype=np.int64)
        self._sum = float(state["sum"])
        self._min = math.inf if state["min"] is None else float(state["min"])
        self._max = -math.inf if state["max"] is None else float(state["max"])
