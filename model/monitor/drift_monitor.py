"""Drift reports: each period's distributions and rates against a rolling reference."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Self

import numpy as np
import numpy.typing as npt

from model import (
    PSI_ACT,
    PSI_WATCH,
    CalibrationTable,
    FixedBinHistogram,
    LabelDelay,
    PageHinkley,
    psi,
    psi_level,
)


@dataclass(frozen=True)
class Alert:
    """A threshold that fired: which figure, its value, the threshold and the level."""

    metric: str
    value: float
    threshold: float
    level: str


@dataclass
class _Period:
    """Counts of one report period."""

    predictions: FixedBinHistogram = field(default_factory=FixedBinHistogram)
    user_rates: FixedBinHistogram = field(default_factory=FixedBinHistogram)
    examples: int = 0
    negatives: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    category_examples: dict[str, int] = field(default_factory=dict)
    category_negatives: dict[str, int] = field(default_factory=dict)


def rate_z(current: int, current_n: int, reference: int, reference_n: int) -> float:
    """Two-proportion z statistic of a rate now against its reference.

    Examples
    --------
    >>> round(rate_z(60, 1000, 300, 5000), 2)
    0.0
    >>> round(rate_z(150, 1000, 300, 5000), 2)
    9.86
    """
    if current_n == 0 or reference_n == 0:
        return 0.0
    pooled = (current + reference) / (current_n + reference_n)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / current_n + 1 / reference_n))
    if spread == 0:
        return 0.0
    return (current / current_n - reference / reference_n) / spread


class DriftMonitor:
    """Per-period drift figures against the sum of the previous ``reference_periods`` periods.

    Fed with each test-then-train batch (predicted p(negative), whether each example was
    negative, the negative kinds, categories, label delays, the batch's mean log loss) and,
    at report time, the users' negative rates. :meth:`report` returns the period's figures and
    the alerts that fired, then rolls the period into the reference. No alert fires until
    the reference holds ``reference_periods`` periods.

    Alerts: PSI of p(negative) or of users' negative rates at 0.1 (watch) and 0.25 (act); a
    negative rate (overall, per kind, per category) that moved by ``rate_ratio`` or more with
    a two-proportion z of ``rate_z_threshold`` or more (act); Page-Hinkley on the per-batch
    log loss (watch).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> monitor = DriftMonitor(reference_periods=2, min_examples=100)
    >>> for period in range(4):
    ...     rate = 0.2 if period < 3 else 0.6
    ...     negative = rng.random(2000) < rate
    ...     categories = ["news"] * 2000
    ...     kinds = ["dislike"] * int(negative.sum())
    ...     _ = monitor.update(rng.random(2000), negative, kinds, categories)
    ...     figures, alerts = monitor.report()
    >>> sorted({a.metric for a in alerts})
    ['category_negative_rate:news', 'kind_rate:dislike', 'negative_rate']
    """

    def __init__(
        self,
        reference_periods: int = 5,
        min_examples: int = 500,
        rate_ratio: float = 1.5,
        rate_z_threshold: float = 5.0,
        loss_detector: PageHinkley | None = None,
    ) -> None:
        self.reference_periods = reference_periods
        self.min_examples = min_examples
        self.rate_ratio = rate_ratio
        self.rate_z_threshold = rate_z_threshold
        self.loss_detector = loss_detector or PageHinkley(
            min_instances=20, delta=0.02, threshold=1.0
        )
        self.history: deque[_Period] = deque(maxlen=reference_periods)
        self.current = _Period()
        self.calibration = CalibrationTable()
        self.delays = LabelDelay()
        self.loss_changed = False

    def update(
        self,
        p_negative: npt.ArrayLike,
        negative: npt.ArrayLike,
        kinds: Sequence[str],
        categories: Sequence[str | None],
        label_delays: Sequence[float] = (),
        mean_log_loss: float | None = None,
    ) -> Self:
        """Add one batch: predictions and outcomes of its examples (inputs are not changed)."""
        predictions = np.asarray(p_negative, dtype=np.float64)
        outcomes = np.asarray(negative, dtype=bool)
        period = self.current
        period.predictions.update_many(predictions)
        period.examples += len(outcomes)
        period.negatives += int(outcomes.sum())
        for kind in kinds:
            period.kinds[kind] = period.kinds.get(kind, 0) + 1
        for category, is_negative in zip(categories, outcomes.tolist(), strict=True):
            name = category or "(none)"
            period.category_examples[name] = period.category_examples.get(name, 0) + 1
            if is_negative:
                period.category_negatives[name] = period.category_negatives.get(name, 0) + 1
        self.calibration.update_many(predictions, outcomes.astype(np.float64))
        delays = [d for d in label_delays if d is not None and d >= 0 and math.isfinite(d)]
        if delays:
            self.delays.update_many(delays)
        if mean_log_loss is not None and math.isfinite(mean_log_loss):
            self.loss_changed |= self.loss_detector.update(mean_log_loss).drift_detected
        return self

    def update_user_rates(self, rates: npt.ArrayLike) -> Self:
        """Add the current negative rates of users (one value per user) to this period."""
        self.current.user_rates.update_many(np.clip(np.asarray(rates, dtype=np.float64), 0, 1))
        return self

    def report(self) -> tuple[dict[str, float], list[Alert]]:
        """This period's figures and alerts against the reference; then start a new period."""
        period = self.current
        figures: dict[str, float] = {
            "examples": float(period.examples),
            "negative_rate": period.negatives / period.examples if period.examples else 0.0,
            "ece": self.calibration.ece() if period.examples else float("nan"),
        }
        if self.delays.count:
            summary = self.delays.get()
            figures["label_delay_p50"] = summary.p50
            figures["label_delay_p95"] = summary.p95
        alerts: list[Alert] = []
        ready = len(self.history) == self.reference_periods and period.examples >= self.min_examples
        reference = self._reference()
        for name, hist, ref in (
            ("psi_p_negative", period.predictions, reference.predictions),
            ("psi_user_negative_rate", period.user_rates, reference.user_rates),
        ):
            if hist.total and ref.total:
                value = psi(ref.counts, hist.counts)
                figures[name] = value
                level = psi_level(value)
                if ready and level != "ok":
                    threshold = PSI_ACT if level == "act" else PSI_WATCH
                    alerts.append(Alert(name, value, threshold, level))
        self._rate("negative_rate", period.negatives, period.examples,
                   reference.negatives, reference.examples, ready, figures, alerts)  # fmt: skip
        for kind in sorted(set(period.kinds) | set(reference.kinds)):
            count, reference_count = period.kinds.get(kind, 0), reference.kinds.get(kind, 0)
            self._rate(f"kind_rate:{kind}", count, period.examples,
                       reference_count, reference.examples, ready, figures, alerts)  # fmt: skip
        for category in sorted(period.category_examples):
            self._rate(
                f"category_negative_rate:{category}",
                period.category_negatives.get(category, 0),
                period.category_examples[category],
                reference.category_negatives.get(category, 0),
                reference.category_examples.get(category, 0),
                ready, figures, alerts,
            )  # fmt: skip
        if self.loss_changed:
            figures["log_loss_change"] = 1.0
            alerts.append(Alert("log_loss_change", self.loss_detector.statistic, 1.0, "watch"))
        self.loss_changed = False
        self.history.append(period)
        self.current = _Period()
        self.calibration = CalibrationTable()
        return figures, alerts

    def _rate(
        self,
        name: str,
        count: int,
        total: int,
        reference_count: int,
        reference_total: int,
        ready: bool,
        figures: dict[str, float],
        alerts: list[Alert],
    ) -> None:
        rate = count / total if total else 0.0
        figures[name] = rate
        if not reference_total:
            return
        reference_rate = reference_count / reference_total
        figures[name + ":reference"] = reference_rate
        z = rate_z(count, total, reference_count, reference_total)
        moved = rate >= reference_rate * self.rate_ratio or rate * self.rate_ratio <= reference_rate
        if ready and moved and abs(z) >= self.rate_z_threshold:
            alerts.append(Alert(name, rate, reference_rate * self.rate_ratio, "act"))

    def _reference(self) -> _Period:
        total = _Period()
        for period in self.history:
            total.examples += period.examples
            total.negatives += period.negatives
            for source, target in (
                (period.kinds, total.kinds),
                (period.category_examples, total.category_examples),
                (period.category_negatives, total.category_negatives),
            ):
                for key, value in source.items():
                    target[key] = target.get(key, 0) + value
        total.predictions = _summed([p.predictions for p in self.history])
        total.user_rates = _summed([p.user_rates for p in self.history])
        return total


def _summed(histograms: list[FixedBinHistogram]) -> FixedBinHistogram:
    total = FixedBinHistogram()
    if histograms:
        counts = np.sum([h.counts for h in histograms], axis=0)
        total.load_state_dict({**total.state_dict(), "counts": counts.tolist()})
    return total
