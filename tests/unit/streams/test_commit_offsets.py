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


class CountedReads(list[Any]):
    """The consumer's messages in flight, counting how often they are read."""

    reads = 0

    def __iter__(self) -> Any:
        self.reads += 1
        return super().__iter__()


def test_a_commit_reads_the_messages_in_flight_once_for_all_partitions() -> None:
    tps = [TP("feedback", p) for p in range(4)]
    in_flight = {0: [10], 1: [], 2: [25], 3: [40]}  # 3's is past its acked run
    c = SimpleNamespace(
        _acked=defaultdict(list, {tp: [11, 12, 13] for tp in tps[:2]}),
        _acked_index=defaultdict(set, {tp: {11, 12, 13} for tp in tps[:2]}),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None, dict(zip(tps, (10, 10, 25, 30), strict=True))),
        _unacked_messages=CountedReads(
            SimpleNamespace(tp=tps[p], offset=offset, acked=False)
            for p, offsets in in_flight.items()
            for offset in offsets
        ),
        _should_commit=lambda tp, offset: True,
    )
    c._acked.update({tps[2]: [26, 27], tps[3]: [30, 31]})
    c._acked_index.update({tps[2]: {26, 27}, tps[3]: {30, 31}})
    c._new_offset = lambda tp: Consumer._new_offset(c, tp)
    assert Consumer._filter_committable_offsets(c, tps) == {tps[1]: 14, tps[3]: 32}
    assert c._unacked_messages.reads == 1
    assert "_negstream_lowest_in_flight" not in vars(c)
