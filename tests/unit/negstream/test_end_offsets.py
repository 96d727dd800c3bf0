"""Unit tests of the worker's end-offset tracking on Faust's Prometheus sensor."""

from __future__ import annotations

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from negstream.worker import track_changed_end_offsets


def _monitor() -> tuple[PrometheusMonitor, CollectorRegistry]:
    registry = CollectorRegistry()
    return PrometheusMonitor(metrics=FaustMetrics.create(registry, "t")), registry


def test_only_a_changed_end_offset_reaches_the_sensor() -> None:
    monitor, registry = _monitor()
    seen: list[tuple[TP, int]] = []
    track = monitor.track_tp_end_offset

    def counting(tp: TP, offset: int) -> None:
        seen.append((tp, offset))
        track(tp, offset)

    monitor.track_tp_end_offset = counting  # type: ignore[method-assign]
    track_changed_end_offsets(monitor)
    one, two = TP("impressions", 0), TP("impressions", 1)
    for tp, offset in [(one, 5), (one, 5), (two, 5), (one, 5), (one, 9), (two, 5), (one, 9)]:
        monitor.track_tp_end_offset(tp, offset)
    assert seen == [(one, 5), (two, 5), (one, 9)]
    labels = {"topic": "impressions", "partition": "0"}
    assert registry.get_sample_value("t_topic_partition_end_offset", labels) == 9.0
    assert monitor.tp_end_offsets == {one: 9, two: 5}


def test_after_the_offsets_are_cleared_the_same_offset_is_set_again() -> None:
    monitor, registry = _monitor()
    track_changed_end_offsets(monitor)
    tp = TP("negative-feedback", 2)
    monitor.track_tp_end_offset(tp, 7)
    monitor.tp_end_offsets.clear()
    registry_labels = {"topic": "negative-feedback", "partition": "2"}
    monitor._metrics.topic_partition_end_offset.labels(  # type: ignore[attr-defined]
        topic="negative-feedback", partition=2
    ).set(0)
    monitor.track_tp_end_offset(tp, 7)
    assert registry.get_sample_value("t_topic_partition_end_offset", registry_labels) == 7.0
