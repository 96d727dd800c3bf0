"""Every metric the Grafana dashboard and the alert rules use is served by a running worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from tests.support import METRIC, WorkerProcess, alert_rules, dashboard_exprs, isolated_settings

pytestmark = pytest.mark.broker

SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created", ""),
    "gauge": ("",),
    "untyped": ("",),
}


def served_series(text: str) -> set[str]:
    """Series names a Prometheus server can select from one /metrics page."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SERIES_SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_dashboard_and_alert_metrics_exist_on_a_live_worker(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path)
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        page = worker.get("/metrics").decode()
    finally:
        worker.stop()
    served = served_series(page)
    used = {name for rule in alert_rules() for name in METRIC.findall(rule["expr"])}
    used |= {name for _, expr, _ in dashboard_exprs() for name in METRIC.findall(expr)}
    assert len(used) > 15
    missing = sorted(used - served)
    assert not missing, f"dashboard/alerts use metrics the worker does not serve: {missing}"
    assert "made_up_metric_total" not in served
