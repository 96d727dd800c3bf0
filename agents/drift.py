"""The drift agent: feeds the drift monitor from training, reports every period."""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import numpy as np

from agents.delivery import deliver_records
from agents.encoder import OutputRecord
from agents.state.config import StateConfig
from agents.state.features import negative_rate
from agents.state.state import UserState
from model import p_negative
from model.monitor.drift_monitor import DriftMonitor
from schemas.codec import encode
from schemas.events import DriftAlert, DriftReport
from schemas.kinds import NEGATIVE_KINDS
from streams import metrics
from streams.output import OutputProducer
from streams.settings import Settings
from streams.users import UsersStore
from streams.yielding import Yielder

log = logging.getLogger(__name__)

#: Users sampled for the distribution of per-user negative rates in each report.
USER_SAMPLE = 10_000


class DriftReporter:
    """Collects each test-then-train batch; every ``drift_interval_s`` publishes a report."""

    def __init__(
        self,
        settings: Settings,
        config: StateConfig,
        users: UsersStore[UserState],
        outputs: OutputProducer,
    ) -> None:
        self.settings = settings
        self.config = config
        self.users = users
        self.outputs = outputs
        self.topic = settings.topic("drift")
        self.monitor = DriftMonitor(reference_periods=settings.drift_reference_periods)
        self.period_start = time.time()

    def observe(self, examples: list[dict[str, Any]], predictions: np.ndarray) -> None:
        """One learned batch and the model's predictions for it made before learning it."""
        if not examples:
            return
        p_any = p_negative(predictions)
        labels = [example["label"] for example in examples]
        negative = np.array([label in NEGATIVE_KINDS for label in labels], dtype=bool)
        eps = 1e-7
        clipped = np.clip(p_any, eps, 1 - eps)
        log_loss = float(-np.mean(np.where(negative, np.log(clipped), np.log(1 - clipped))))
        delays = [e["label_delay_s"] for e in examples if e.get("label_delay_s") is not None]
        for delay in delays:
            metrics.LABEL_DELAY.observe(max(0.0, delay))
        self.monitor.update(
            p_any,
            negative,
            [label for label in labels if label in NEGATIVE_KINDS],
            [example.get("category") for example in examples],
            delays,
            log_loss,
        )

    async def user_rates(self) -> list[float]:
        """Short-window negative rates of up to :data:`USER_SAMPLE` users on this worker."""
        rates = []
        # A state at rest is decoded for the sample: the loop runs other tasks in between.
        yielder = Yielder()
        for _, state in itertools.islice(self.users.items(), USER_SAMPLE):
            rate = negative_rate(state, self.config)
            if rate is not None:
                rates.append(rate)
            await yielder()
        return rates

    async def report(self, prequential: dict[str, float], model_version: int) -> DriftReport:
        """Publish this period's :class:`DriftReport` and mirror it in Prometheus.

        ``prequential`` are the trainer's test-then-train figures, ``model_version`` its
        model's version.
        """
        rates = await self.user_rates()
        if rates:
            self.monitor.update_user_rates(rates)
        figures, alerts = self.monitor.report()
        for name, value in prequential.items():
            if np.isfinite(value):
                figures[f"prequential:{name}"] = value
        end = time.time()
        report = DriftReport(
            scope="global",
            window_start=self.period_start,
            window_end=end,
            model_version=model_version,
            metrics={k: float(v) for k, v in figures.items() if np.isfinite(v)},
            alerts=tuple(DriftAlert(a.metric, a.value, a.threshold, a.level) for a in alerts),
        )
        self.period_start = end
        await deliver_records(
            self.outputs, [OutputRecord(self.topic, b"global", encode(report), None)]
        )
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
