"""Stall reports of inputs that are not read and rebalances that do not end (no broker)."""

from __future__ import annotations

import logging

import pytest
from faust.types import TP

from agents.progress import ProgressWatch
from agents.watermarks import Watermarks

IMP, FB = "impressions", "feedback"


class Consumer:
    """An assignment, its log ends and committed offsets, and flow control's sets."""

    def __init__(self, ends: dict[TP, int], committed: dict[TP, int]) -> None:
        self.ends, self._committed_offset = ends, committed
        self._paused_partitions: set[TP] = set()
        self._buffered_partitions: set[TP] = set()
        self._active_partitions: set[TP] | None = None
        self.flow_active = True

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int:
        return self.ends[tp]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watch() -> tuple[ProgressWatch, Watermarks, Clock]:
    clock = Clock()
    marks = Watermarks(IMP, FB, 5.0, 2.0, wall=clock)
    return ProgressWatch(marks, stall_after_s=30.0, wall=clock), marks, clock


def test_an_input_with_records_that_is_not_read_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    progress, marks, clock = watch()
    consumer = Consumer({TP(IMP, 0): 50, TP(FB, 0): 20}, {TP(IMP, 0): 10, TP(FB, 0): 20})
    consumer._buffered_partitions.add(TP(IMP, 0))
    with caplog.at_level(logging.WARNING, "agents.progress"):
        for _ in range(5):
            progress.check(consumer, False, str)
            clock.now += 10
        stalled = [r.getMessage() for r in caplog.records]
        assert stalled == [
            "input impressions[0]: offsets 10..49 wait to be read and none was handed to the "
            "pipeline for 40 s (paused: buffer full)"
        ]
        progress.check(consumer, False, str)
        assert len(caplog.records) == 1  # once per episode
        marks.read(IMP, 0, 10)
        progress.check(consumer, False, str)
        assert caplog.records[-1].getMessage() == "input impressions[0]: being read again"


def test_an_input_read_slowly_is_not_a_stall(caplog: pytest.LogCaptureFixture) -> None:
    progress, marks, clock = watch()
    consumer = Consumer({TP(IMP, 0): 1000, TP(FB, 0): 0}, {TP(IMP, 0): 0})
    with caplog.at_level(logging.WARNING, "agents.progress"):
        for offset in range(20):
            marks.read(IMP, 0, offset)
            progress.check(consumer, False, str)
            clock.now += 10
    assert not caplog.records


def test_a_rebalance_that_does_not_end_is_reported_and_so_is_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    progress, _, clock = watch()
    consumer = Consumer({TP(IMP, 0): 50}, {TP(IMP, 0): 10})
    with caplog.at_level(logging.WARNING, "agents.progress"):
        for _ in range(5):
            progress.check(consumer, True, lambda: "in_recovery=True")
            clock.now += 10
        # Inputs are not read during a recovery: no input stall is reported for it.
        assert [r.getMessage() for r in caplog.records] == [
            "rebalance not finished after 40 s: in_recovery=True"
        ]
        progress.check(consumer, False, str)
        assert caplog.records[-1].getMessage() == "rebalance finished after 50 s"
