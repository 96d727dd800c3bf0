"""Calibration by score bucket and streaming label-delay summary."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple, Self

import numpy as np
import numpy.typing as npt

from model.monitor._checks import _check_config, _finite

__all__ = ["CalibrationBucket", "CalibrationTable", "DelaySummary", "LabelDelay"]


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
    :class:`model.monitor.metrics.CalibrationError` does, so :meth:`ece` equals its value
    on the same pairs; the table adds the per-bucket view a reliability diagram needs.

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
