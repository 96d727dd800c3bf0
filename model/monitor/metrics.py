"""Streaming evaluation metrics with a river-style ``update(...).get()`` interface.

Each ``update`` takes one label/score pair or two equal-length arrays, so a micro-batch is one
call. Labels are 0/1; scores are probabilities. Metrics are unweighted: they measure how well
the model ranks and calibrates what was served, whereas example weights are a training choice.
"""

from __future__ import annotations

import math
from typing import Self

import numpy as np
import numpy.typing as npt

__all__ = ["CalibrationError", "LogLoss", "RollingAUC"]

_ArrayLike = float | int | bool | npt.ArrayLike


def _pair(y_true: _ArrayLike, y_score: _ArrayLike) -> tuple[npt.NDArray[np.float64], ...]:
    labels = np.atleast_1d(np.asarray(y_true, dtype=np.float64)).ravel()
    scores = np.atleast_1d(np.asarray(y_score, dtype=np.float64)).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.shape[0]} labels but {scores.shape[0]} scores")
    return labels, scores


class RollingAUC:
    """Exact ROC AUC over the last ``window`` label/score pairs.

    Exact rather than histogram-based: scores of a negative-feedback model crowd into a narrow
    band near 0, where fixed histogram bins would tie most pairs and flatten the AUC. Storage is
    two ``window``-long arrays; :meth:`get` sorts them, ``O(window log window)``, so call it at
    report time, not per event. Tied scores count one half, as in the Mann-Whitney U statistic.
    :meth:`get` is ``nan`` until the window holds both classes.

    Examples
    --------
    Of the 2 x 2 positive/negative pairs, (0.8 > 0.1), (0.8 > 0.4), (0.35 > 0.1) are ordered
    right and (0.35 < 0.4) wrong: AUC = 3/4.

    >>> auc = RollingAUC(window=100)
    >>> auc.update([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]).get()
    0.75

    Only the last ``window`` pairs count:

    >>> RollingAUC(window=2).update([1, 0, 0, 1], [0.1, 0.9, 0.2, 0.7]).get()
    1.0
    """

    def __init__(self, window: int = 10_000) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.window = window
        self._labels = np.zeros(window, dtype=np.float64)
        self._scores = np.zeros(window, dtype=np.float64)
        self._count = 0  # pairs ever seen; the ring position is count % window

    def update(self, y_true: _ArrayLike, y_score: _ArrayLike) -> Self:
        labels, scores = _pair(y_true, y_score)
        if len(labels) > self.window:
            self._count += len(labels) - self.window
            labels, scores = labels[-self.window :], scores[-self.window :]
        slots = (self._count + np.arange(len(labels))) % self.window
        self._labels[slots] = labels
        self._scores[slots] = scores
        self._count += len(labels)
        return self

    def get(self) -> float:
        size = min(self._count, self.window)
        labels = self._labels[:size] > 0.5
        scores = self._scores[:size]
        positives = int(labels.sum())
        negatives = size - positives
        if positives == 0 or negatives == 0:
            return math.nan
        order = np.argsort(scores)
        ranked = scores[order]
        if np.isnan(ranked[-1]) or size >= _EXACT_RANK_SUMS:
            rank_sum = _rank_sum_of_distinct(scores, labels)
        else:
            # Ranks are half-integers and their sums stay far below 2**53: summed exactly, in
            # any order, they give the same float.
            rank_sum = _rank_sum_sorted(ranked, labels[order])
        return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


#: Windows below this size sum their ranks exactly in float64 (ranks and their sums below 2**50).
_EXACT_RANK_SUMS = 2**24


def _rank_sum_sorted(ranked: npt.NDArray[np.float64], positive: npt.NDArray[np.bool_]) -> float:
    """Sum of the 1-based ranks of the positives among ``ranked`` scores (sorted, no NaN);
    tied scores share the mean of their ranks."""
    positions = np.flatnonzero(positive)
    # Twice the sum, in integers: the ranks of distinct scores, then each run of tied scores
    # (usually few) trades its positives' own ranks for the run's mean rank.
    twice = 2 * int(positions.sum() + len(positions))
    steps = ranked[1:] != ranked[:-1]
    ties = np.flatnonzero(~steps)
    if len(ties):
        tied = np.zeros(len(ranked), dtype=np.bool_)
        tied[ties] = tied[ties + 1] = True
        members = np.flatnonzero(tied)
        starts = np.ones(len(members), dtype=np.bool_)
        starts[1:] = steps[members[1:] - 1]
        run = np.cumsum(starts) - 1
        hits = positive[members]
        sizes = np.bincount(run)
        hits_per_run = np.bincount(run, weights=hits)
        first = members[starts]
        twice += int((hits_per_run * (2 * first + sizes + 1)).sum())
        twice -= 2 * int((members[hits] + 1).sum())
    return twice / 2


def _rank_sum_of_distinct(
    scores: npt.NDArray[np.float64], positive: npt.NDArray[np.bool_]
) -> float:
    """:func:`_rank_sum_sorted` of unsorted ``scores``, NaNs (sorted last) all tied."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct score: ties share the mean of their ranks.
    upper = np.cumsum(counts)
    mean_rank = upper - (counts - 1) / 2.0
    return float(mean_rank[inverse][positive].sum())


class LogLoss:
    """Mean binary cross-entropy of every pair seen, scores clipped to ``[eps, 1 - eps]``.

    Examples
    --------
    ``-(ln 0.8 + ln 0.5) / 2 = 0.4581...``:

    >>> round(LogLoss().update([1, 0], [0.8, 0.5]).get(), 4)
    0.4581
    """

    def __init__(self, eps: float = 1e-7) -> None:
        self.eps = eps
        self._total = 0.0
        self._count = 0

    def update(self, y_true: _ArrayLike, y_score: _ArrayLike) -> Self:
        labels, scores = _pair(y_true, y_score)
        p = np.clip(scores, self.eps, 1.0 - self.eps)
        self._total += float(-(labels * np.log(p) + (1.0 - labels) * np.log1p(-p)).sum())
        self._count += len(labels)
        return self

    def get(self) -> float:
        """Mean loss; ``nan`` before the first update."""
        return self._total / self._count if self._count else math.nan


class CalibrationError:
    """Expected calibration error over ``bins`` equal-width score buckets of ``[0, 1]``.

    ``ECE = sum_b (n_b / n) * |mean score_b - positive rate_b|``, over every pair seen. A
    drifting ECE with a steady AUC says the model still ranks well but its probabilities need
    recalibrating (e.g. the negative base rate moved).

    Examples
    --------
    Bucket [0.0, 0.5) holds scores 0.1, 0.2 (mean 0.15) with labels 0, 1 (rate 0.5); bucket
    [0.5, 1.0] holds 0.9, 0.9 with labels 1, 1. ECE = 2/4 * 0.35 + 2/4 * 0.1 = 0.225:

    >>> round(CalibrationError(bins=2).update([0, 1, 1, 1], [0.1, 0.2, 0.9, 0.9]).get(), 6)
    0.225
    """

    def __init__(self, bins: int = 10) -> None:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.bins = bins
        self._counts = np.zeros(bins, dtype=np.float64)
        self._score_sums = np.zeros(bins, dtype=np.float64)
        self._label_sums = np.zeros(bins, dtype=np.float64)

    def update(self, y_true: _ArrayLike, y_score: _ArrayLike) -> Self:
        labels, scores = _pair(y_true, y_score)
        bucket = np.clip((scores * self.bins).astype(np.int64), 0, self.bins - 1)
        self._counts += np.bincount(bucket, minlength=self.bins)
        self._score_sums += np.bincount(bucket, weights=scores, minlength=self.bins)
        self._label_sums += np.bincount(bucket, weights=labels, minlength=self.bins)
        return self

    def get(self) -> float:
        """ECE in ``[0, 1]``; ``nan`` before the first update."""
        total = self._counts.sum()
        if total == 0:
            return math.nan
        filled = self._counts > 0
        gaps = np.abs(self._score_sums[filled] - self._label_sums[filled])
        # |mean score - rate| * n_b / n == |sum scores - sum labels| / n
        return float(gaps.sum() / total)
