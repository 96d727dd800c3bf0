"""The per-partition event-time watermarks of the inputs (no broker)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from agents.watermarks import HOLD_UNREAD_WARN_S, Watermarks

IMP, FB = "impressions", "feedback"


class Marks(Watermarks):
    """Watermarks of one worker whose inputs are ``impressions`` and ``feedback``."""

    def watermark(self, partition: int) -> float:
        return self(partition)


def pipeline(delay_s: float = 5.0, idle_after_s: float = 2.0) -> Marks:
    return Marks(IMP, FB, delay_s, idle_after_s)


class Consumer:
    """The two things the pipeline asks a consumer: log end and committed offsets."""

    def __init__(self, ends: dict[TP, int | None], committed: dict[TP, int]) -> None:
        self.ends, self._committed_offset = ends, committed

    def highwater(self, tp: TP) -> int | None:
        if tp not in self.ends:
            raise AssertionError("Partition is not assigned")
        return self.ends[tp]


class Answering(Consumer):
    """A consumer that also says when each partition's latest fetch answer came."""

    def __init__(self, ends: dict[TP, int | None], answered: dict[TP, float]) -> None:
        super().__init__(ends, {})
        self.answered = answered

    def last_poll_timestamp(self, tp: TP) -> int | None:
        at = self.answered.get(tp)
        return None if at is None else int(at * 1000)


def test_the_watermark_is_the_lower_input_clock_less_the_delay() -> None:
    p, now = pipeline(), time.monotonic()
    p.observe(IMP, 0, 1000.0, now)
    p.observe(FB, 0, 900.0, now)
    assert p.watermark(0) == 895.0
    p.observe(FB, 0, 1100.0, now)
    assert p.watermark(0) == 995.0


def test_an_input_not_read_since_a_restart_holds_the_watermark_at_its_floor() -> None:
    # After a restart the impressions resume far ahead of the feedback still to be read:
    # until feedback is read, windows must not close past where the table left them.
    p, now = pipeline(), time.monotonic()
    p.floor[0] = 500.0
    p.observe(IMP, 0, 1000.0, now)
    assert p.watermark(0) == 500.0
    p.observe(FB, 0, 700.0, now)
    assert p.watermark(0) == 695.0


def test_an_unread_input_at_the_end_of_its_log_stops_holding() -> None:
    p, now = pipeline(), time.monotonic()
    p.observe(IMP, 0, 1000.0, now)
    consumer = Consumer({TP(FB, 0): 40, TP(IMP, 0): 90}, {TP(FB, 0): 12})
    p.check_inputs(consumer)
    assert p.watermark(0) == 0.0, "feedback is still to be read"
    consumer._committed_offset[TP(FB, 0)] = 40
    p.check_inputs(consumer)
    assert p.watermark(0) == 995.0


def test_an_empty_or_unfetched_input_log() -> None:
    p, now = pipeline(), time.monotonic()
    p.observe(IMP, 0, 1000.0, now)
    p.check_inputs(Consumer({TP(FB, 0): None}, {}))
    assert p.watermark(0) == 0.0, "no fetch answered yet: nothing known"
    p.check_inputs(Consumer({}, {}))
    assert p.watermark(0) == 0.0, "not assigned: keep holding"
    p.check_inputs(Consumer({TP(FB, 0): 0}, {}))
    assert p.watermark(0) == 995.0


def test_an_unread_input_never_committed_is_read_up_where_its_fetch_position_is() -> None:
    # No commit to resume from: the offset reset chose where fetching starts (past 0 on a
    # log that retention emptied). At the log's end there, nothing is left to read.
    p, now = pipeline(), time.monotonic()
    p.observe(IMP, 0, 1000.0, now)
    consumer = Consumer({TP(FB, 0): 70, TP(IMP, 0): 90}, {})
    positions = {TP(FB, 0): 12}
    state = SimpleNamespace(state_value=lambda tp: SimpleNamespace(position=positions[tp]))
    subscription = SimpleNamespace(subscription=SimpleNamespace(assignment=state))
    consumer._thread = SimpleNamespace(_consumer=SimpleNamespace(_subscription=subscription))
    p.check_inputs(consumer)
    assert p.watermark(0) == 0.0, "offsets 12..69 are still to be read"
    positions[TP(FB, 0)] = 70
    p.check_inputs(consumer)
    assert p.watermark(0) == 995.0


def test_an_unread_input_holds_however_long_the_broker_takes(caplog: Any) -> None:
    # A broker slow to answer (S3 storage after a restart: minutes) must not let the
    # impressions read so far close windows whose feedback is still unread.
    p = pipeline()
    p.observe(IMP, 0, 1000.0, time.monotonic() - HOLD_UNREAD_WARN_S - 600)
    assert p.watermark(0) == 0.0
    assert "not read in" in caplog.text, "a long hold is logged"
    p.check_inputs(Consumer({TP(FB, 0): 0, TP(IMP, 0): 1}, {}))
    assert p.watermark(0) == 995.0, "the broker says the feedback log is empty"


def test_idle_inputs_with_nothing_left_to_read_let_event_time_run_on() -> None:
    p = pipeline()
    long_ago = time.monotonic() - 12.0
    p.observe(IMP, 0, 1000.0, long_ago, offset=4)
    p.observe(FB, 0, 1000.0, long_ago, offset=9)
    assert p.watermark(0) == 995.0, "not known to be quiet yet"
    p.check_inputs(Consumer({TP(IMP, 0): 5, TP(FB, 0): 10}, {}))
    assert 1004.9 < p.watermark(0) < 1006.0  # 12 s quiet, 2 s of them allowed, 5 s delay


def test_an_input_with_records_left_to_process_never_runs_on() -> None:
    # Silent in wall time because the worker is busy or paused, not because the input is:
    # running its clock on would close windows whose feedback is still to be read.
    p = pipeline()
    long_ago = time.monotonic() - 60.0
    p.observe(IMP, 0, 1000.0, long_ago, offset=4)
    p.observe(FB, 0, 1000.0, long_ago, offset=9)
    p.check_inputs(Consumer({TP(IMP, 0): 5, TP(FB, 0): 10}, {}))
    assert p.watermark(0) > 1050.0
    p.check_inputs(Consumer({TP(IMP, 0): 5, TP(FB, 0): 11}, {}))
    assert p.watermark(0) == 995.0
    p.observe(FB, 0, 1001.0, time.monotonic(), offset=10)
    p.check_inputs(Consumer({TP(IMP, 0): 5, TP(FB, 0): 11}, {}))
    assert p.watermark(0) == 996.0, "read up: the feedback clock is fresh, not idle"


def test_forgetting_a_partition_drops_its_clocks_and_stale_idle_time() -> None:
    # A partition owned earlier, then lost and taken back, must not resume from clocks
    # whose last read lies far back in wall time: they would race ahead as if idle.
    p = pipeline()
    long_ago = time.monotonic() - 600.0
    p.observe(IMP, 1, 1000.0, long_ago)
    p.observe(FB, 1, 1000.0, long_ago)
    p.floor[1] = 990.0
    p.forget_partitions([1])
    assert p.watermark(1) == 0.0
    p.observe(IMP, 1, 1010.0, time.monotonic())
    assert p.watermark(1) == 0.0
    p.observe(FB, 1, 1020.0, time.monotonic())
    assert p.watermark(1) == 1005.0


def test_event_time_stops_running_on_when_fetch_answers_stop() -> None:
    # The broker is gone: the log ends stay what the last answer said, so every input looks
    # read up. Event time may only run on up to that answer, or the producers' events of the
    # outage, sent once it is back, would find their label windows closed.
    p = pipeline()
    now, epoch = time.monotonic(), time.time()
    p.observe(IMP, 0, 1000.0, now - 30.0, offset=4)
    p.observe(FB, 0, 1000.0, now - 30.0, offset=9)
    ends: dict[TP, int | None] = {TP(IMP, 0): 5, TP(FB, 0): 10}
    p.check_inputs(Answering(ends, {TP(IMP, 0): epoch - 20.0, TP(FB, 0): epoch - 20.0}))
    assert 1002.9 < p.watermark(0) < 1003.2  # quiet 10 s when answered: 2 s idle, 5 s delay
    p.check_inputs(Answering(ends, {TP(IMP, 0): epoch - 20.0, TP(FB, 0): epoch - 20.0}))
    assert p.watermark(0) < 1003.2, "no newer answer: no more event time"
    p.check_inputs(Answering(ends, {TP(IMP, 0): epoch, TP(FB, 0): epoch}))
    assert p.watermark(0) > 1022.9, "answered again: the quiet time counts"
