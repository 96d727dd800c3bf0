"""The drift agent: feeds the drift monitor from training, reports every period."""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import numpy as np
from faust.types import TableT

from agents.state import windows
from agents.trainer import ModelService
from model.monitor.drift_monitor import DriftMonitor
from schemas.codec import encode
from schemas.events import DriftAlert, DriftReport
from schemas.kinds import NEGATIVE_KINDS
from streams import metrics
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)

#: Users sampled for the distribution of per-user negative rates in each report.
USER_SAMPLE = 10_000


class DriftReporter:
    """Collects each test-then-train batch; every ``drift_interval_s`` publishes a report."""

    def __init__(
        self, settings: Settings, topics: Topics, users: TableT[str, Any], service: ModelService
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.users = users
        self.service = service
        self.monitor = DriftMonitor(reference_periods=settings.drift_reference_periods)
        self.period_start = time.time()
        service.on_learned.append(self.observe)

    def observe(self, examples: list[dict[str, Any]], predictions: np.ndarray) -> None:
        """Hook of :class:`ModelService`: one learned batch and its pre-learning predictions."""
        p_negative = 1.0 - (1.0 - predictions[:, 0]) * (1.0 - predictions[:, 1])
        labels = [example["label"] for example in examples]
        negative = np.array([label in NEGATIVE_KINDS for label in labels], dtype=bool)
        eps = 1e-7
        clipped = np.clip(p_negative, eps, 1 - eps)
        log_loss = float(-np.mean(np.where(negative, np.log(clipped), np.log(1 - clipped))))
        delays = [e["label_delay_s"] for e in examples if e.get("label_delay_s") is not None]
        for delay in delays:
            metrics.LABEL_DELAY.observe(max(0.0, delay))
        self.monitor.update(
            p_negative,
            negative,
            [label for label in labels if label in NEGATIVE_KINDS],
            [example.get("category") for example in examples],
            delays,
            log_loss,
        )

    def user_rates(self) -> list[float]:
        """Short-window negative rates of up to :data:`USER_SAMPLE` users on this worker."""
        rates = []
        for _, state in itertools.islice(self.users.items(), USER_SAMPLE):
            if not state:
                continue
            window = windows.window_buckets(
                state["clock"], self.settings.window_short_s, self.settings.window_step_s
            )
            impressions = windows.total(state["short"], window, "imp")
            if impressions:
                rates.append(windows.total(state["short"], window, "neg") / impressions)
        return rates

    async def report(self) -> DriftReport:
        """Publish this period's :class:`DriftReport` and mirror it in Prometheus."""
        rates = self.user_rates()
        if rates:
            self.monitor.update_user_rates(rates)
        figures, alerts = self.monitor.report()
        for name, value in self.service.prequential.get().items():
            if np.isfinite(value):
                figures[f"prequential:{name}"] = value
        end = time.time()
        report = DriftReport(
            scope="global",
            window_start=self.period_start,
            window_end=end,
            model_version=self.service.model.version,
            metrics={k: float(v) for k, v in figures.items() if np.isfinite(v)},
            alerts=tuple(DriftAlert(a.metric, a.value, a.threshold, a.level) for a in alerts),
        )
        self.period_start = end
        await self.topics.drift.send(key=b"global", value=encode(report))
        metrics.DRIFT_REPORTS.inc()
        for name in ("psi_p_negative", "psi_user_negative_rate"):
            if name in report.metrics:
                metrics.DRIFT_PSI.labels(name.removeprefix("psi_")).set(report.metrics[name])
        for name, value in report.metrics.items():
            if name.startswith("kind_rate:"):
                kind, _, period = name.removeprefix("kind_rate:").partition(":")
                metrics.DRIFT_NEGATIVE_RATE.labels(kind, period or "current").set(value)
        metrics.DRIFT_ALERTS.clear()
        for alert in report.alerts:
            metrics.DRIFT_ALERTS.labels(alert.metric, alert.level).set(1)
        if report.alerts:
            log.warning(
                "drift alerts: %s", ", ".join(f"{a.metric}={a.value:.3f}" for a in report.alerts)
            )
        return report
