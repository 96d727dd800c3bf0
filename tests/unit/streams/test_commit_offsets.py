"""The commit offset never passes a message still being processed (no broker)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from streams import patches

patches.install()

INPUT = TP("feedback", 0)


def consumer(committed: int, acked: list[int], in_flight: list[int]) -> Any:
    return SimpleNamespace(
        _acked=defaultdict(list, {INPUT: list(acked)}),
        _acked_index=defaultdict(set, {INPUT: set(acked)}),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None, {INPUT: committed}),
        _unacked_messages=[
            SimpleNamespace(tp=INPUT, offset=offset, acked=False) for offset in in_flight
        ],
    )


def test_a_message_in_flight_at_the_head_holds_the_commit_back() -> None:
    # Message 10 is still being processed; 11-13 are done.
    c = consumer(committed=10, acked=[11, 12, 13], in_flight=[10])
    assert Consumer._new_offset(c, INPUT) is None
    assert c._acked[INPUT] == [11, 12, 13], "the acked offsets are kept for later"
    c._unacked_messages.clear()
    c._acked[INPUT].insert(0, 10)
    c._acked_index[INPUT].add(10)
    assert Consumer._new_offset(c, INPUT) == 14


def test_a_hole_in_the_log_is_still_committed_over() -> None:
    # Offset 10 holds no message (a transaction marker, say): nothing is in flight.
    c = consumer(committed=10, acked=[11, 12], in_flight=[])
    assert Consumer._new_offset(c, INPUT) == 13


def test_messages_in_flight_after_the_acked_run_do_not_hold_it_back() -> None:
    c = consumer(committed=10, acked=[10, 11, 13], in_flight=[12, 14])
    assert Consumer._new_offset(c, INPUT) == 12
