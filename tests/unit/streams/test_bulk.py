"""Bulk reading of the hot topics: batches, back-pressure, rebalances and acks (no broker)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP, Message
from faust.types.tuples import ConsumerMessage
from intervaltree import IntervalTree
from mode.utils.queues import FlowControlEvent

from streams import patches
from streams.bulk import BulkSource
from streams.patches import bulk_fetch


class _Consumer:
    """The parts of Faust's consumer a source uses, recording what it is told."""

    def __init__(self) -> None:
        self._unacked_messages: set[Message] = set()
        self.acked: list[int] = []
        self.full: list[TP] = []
        self.dropped: list[TP] = []

    def ack(self, message: Message) -> bool:
        message.acked = True
        self._unacked_messages.discard(message)
        self.acked.append(message.offset)
        return True

    def on_buffer_full(self, tp: TP) -> None:
        assert isinstance(tp, TP), "Faust's active-partition set holds Faust's TP only"
        self.full.append(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        self.dropped.append(tp)


def _app() -> Any:
    flow = FlowControlEvent(initially_suspended=False)
    return SimpleNamespace(consumer=_Consumer(), flow_control=flow, consumer_generation_id=1)


def _message(offset: int, partition: int = 0, generation: int = 1) -> Message:
    return ConsumerMessage(
        "feedback", partition, offset, 0.0, 0, None, b"u1", b"{}", None, generation_id=generation
    )


def _put(source: BulkSource, *messages: Message) -> None:
    for message in messages:
        source.put(TopicPartition(message.topic, message.partition), message)


def test_a_batch_is_at_most_max_records_in_fetch_order_and_tracked_until_acked() -> None:
    app = _app()
    source = BulkSource(app, ["feedback"], max_buffered=100)
    _put(source, *(_message(offset) for offset in range(5)))
    batch = asyncio.run(source.take(3, within_s=0.0))
    assert [m.offset for m in batch] == [0, 1, 2]
    assert set(app.consumer._unacked_messages) == set(batch), "in flight until acked"
    source.ack(batch)
    assert app.consumer.acked == [0, 1, 2] and not app.consumer._unacked_messages
    assert [m.offset for m in asyncio.run(source.take(10, within_s=0.0))] == [3, 4]


def test_take_waits_within_s_for_a_fuller_batch() -> None:
    async def scenario() -> list[int]:
        source = BulkSource(_app(), ["feedback"], max_buffered=100)
        _put(source, _message(0))

        async def later() -> None:
            await asyncio.sleep(0.01)
            _put(source, _message(1), _message(2))

        task = asyncio.create_task(later())
        batch = await source.take(3, within_s=1.0)
        await task
        return [m.offset for m in batch]

    assert asyncio.run(scenario()) == [0, 1, 2]


def test_take_waits_for_a_first_record() -> None:
    async def scenario() -> bool:
        source = BulkSource(_app(), ["feedback"], max_buffered=100)
        waiting = asyncio.create_task(source.take(3, within_s=0.0))
        await asyncio.sleep(0.01)
        assert not waiting.done(), "no empty batches"
        _put(source, _message(7))
        return [m.offset for m in await asyncio.wait_for(waiting, 1.0)] == [7]

    assert asyncio.run(scenario())


def test_a_full_buffer_pauses_the_partitions_that_add_to_it_until_it_drains() -> None:
    app = _app()
    source = BulkSource(app, ["feedback"], max_buffered=4)
    _put(source, *(_message(offset) for offset in range(3)))
    assert app.consumer.full == []
    _put(source, _message(3), _message(4), _message(0, partition=1))
    assert app.consumer.full == [TP("feedback", 0), TP("feedback", 1)]
    asyncio.run(source.take(2, within_s=0.0))
    assert app.consumer.dropped == [], "4 left: not below half"
    asyncio.run(source.take(1, within_s=0.0))
    assert app.consumer.dropped == [], "3 left: not below half"
    asyncio.run(source.take(2, within_s=0.0))
    assert sorted(app.consumer.dropped) == [TP("feedback", 0), TP("feedback", 1)]


def test_records_from_before_a_rebalance_are_left_out_unacked() -> None:
    # The rebalance sought the consumer back to the commit: they are fetched again.
    app = _app()
    source = BulkSource(app, ["feedback"], max_buffered=100)
    _put(source, _message(0, generation=1), _message(1, generation=2))
    app.consumer_generation_id = 2
    batch = asyncio.run(source.take(10, within_s=0.0))
    assert [m.offset for m in batch] == [1]
    assert app.consumer.acked == [], "an ack would let the commit pass offset 0"
    assert [m.offset for m in app.consumer._unacked_messages] == [1]


def test_nothing_is_taken_while_a_rebalance_suspends_flow_and_resuming_keeps_the_buffer() -> None:
    async def scenario() -> list[int]:
        app = _app()
        source = BulkSource(app, ["feedback"], max_buffered=100)
        app.flow_control.suspend()
        _put(source, _message(0), _message(1))
        waiting = asyncio.create_task(source.take(10, within_s=0.0))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        # Faust resumes flow after seeking to the commit: records fetched after the seek
        # must survive the resume (mode clears the queues it manages then).
        app.flow_control.resume()
        return [m.offset for m in await asyncio.wait_for(waiting, 1.0)]

    assert asyncio.run(scenario()) == [0, 1]


def test_the_consumer_routes_bulk_topics_to_their_source_and_yields_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = _app()
    source = BulkSource(app, ["feedback"], max_buffered=100)
    fetched = [
        (TopicPartition("feedback", 0), _message(5)),
        (TopicPartition("users-changelog", 0), _message(0)),
        (TopicPartition("feedback", 0), _message(4)),  # behind the read offset: dropped
        (TopicPartition("feedback", 0), _message(9)),  # 6..8 missing: a gap
    ]

    async def getmany(consumer: Any, timeout: float) -> AsyncIterator[tuple[Any, Message]]:
        for item in fetched:
            yield item

    gaps: list[tuple[int, int]] = []

    async def add_gap(tp: TP, start: int, end: int) -> None:
        gaps.append((start, end))

    consumer = app.consumer
    consumer.app = app
    consumer._read_offset = defaultdict(lambda: None)
    consumer._add_gap = add_gap
    consumer._commit_every = None
    monkeypatch.setattr(bulk_fetch, "_getmany", getmany)

    async def drain() -> list[Any]:
        return [item async for item in bulk_fetch._getmany_with_bulk_sources(consumer, 1.0)]

    passed = asyncio.run(drain())
    assert [tp.topic for tp, _ in passed] == ["users-changelog"]
    assert [m.offset for m in source.messages] == [5, 9]
    assert gaps == [(6, 9)]
    assert consumer._read_offset[TopicPartition("feedback", 0)] == 9


def test_offsets_read_again_after_a_skip_are_not_committed_before_they_are_processed() -> None:
    # The consumer handed 20 after 9: the fetch loop took 10..19 for a hole in the log and
    # recorded a gap, which Faust's commit passes over. The pipeline rewinds to 10 instead.
    patches.install()
    tp = TP("feedback", 0)
    app = _app()
    source = BulkSource(app, ["feedback"], max_buffered=100)
    consumer = app.consumer
    consumer._gap = defaultdict(IntervalTree)
    consumer._committed_offset = defaultdict(lambda: None, {tp: 10})
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._read_offset = defaultdict(lambda: None)
    sought: list[int] = []

    async def seek(partition: TP, offset: int) -> None:
        sought.append(offset)
        consumer._read_offset[partition] = offset

    consumer.seek = seek

    async def scenario() -> int | None:
        await FaustConsumer._add_gap(consumer, tp, 10, 20)
        await source.rewind("feedback", 0, 10, [_message(20)])
        _put(source, *(_message(offset) for offset in range(10, 21)))
        batch = await source.take(3, within_s=0.0)  # 10..12 read again and processed
        for message in batch:
            consumer._acked[tp].append(message.offset)
            consumer._acked_index[tp].add(message.offset)
        source.ack(batch)
        return FaustConsumer._new_offset(consumer, tp)

    assert asyncio.run(scenario()) == 13, "13..20 are read again but not processed yet"
    assert sought == [10]


def test_taking_records_tells_faust_their_partitions_are_being_processed() -> None:
    # Faust's consumer logs "Stream has not started processing" for a partition it is behind
    # on unless a stream took an event of it lately.
    app = _app()
    app.monitor = SimpleNamespace(stream_inbound_time={})
    source = BulkSource(app, ["feedback"], max_buffered=100)
    _put(source, _message(0, partition=0), _message(0, partition=2), _message(1, partition=2))
    asyncio.run(source.take(10, within_s=0.0))
    assert set(app.monitor.stream_inbound_time) == {TP("feedback", 0), TP("feedback", 2)}


class _FetchingConsumer(_Consumer):
    """A consumer whose active partitions follow what the sources pause and resume."""

    def __init__(self, app: Any, assigned: set[TP]) -> None:
        super().__init__()
        self.app = app
        self.active = set(assigned)
        self.flow_active = True
        self.should_stop = False
        self._read_offset: dict[Any, int | None] = defaultdict(lambda: None)
        self._commit_every = None

    def _get_active_partitions(self) -> set[TP]:
        return self.active

    def on_buffer_full(self, tp: TP) -> None:
        super().on_buffer_full(tp)
        self.active.discard(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        super().on_buffer_drop(tp)
        self.active.add(tp)


def _fetching(
    monkeypatch: pytest.MonkeyPatch, assigned: set[TP], max_buffered: int
) -> tuple[BulkSource, _FetchingConsumer, list[tuple[float, set[TP]]]]:
    """A source and its consumer, whose fetches (Faust's part) return nothing and are
    recorded as (the wait they were given, the partitions active when they began)."""
    app = _app()
    app.consumer = consumer = _FetchingConsumer(app, assigned)
    fetches: list[tuple[float, set[TP]]] = []

    async def getmany(consumer: Any, timeout: float) -> AsyncIterator[tuple[Any, Message]]:
        fetches.append((timeout, set(consumer._get_active_partitions())))
        for item in list[tuple[Any, Message]]():
            yield item

    monkeypatch.setattr(bulk_fetch, "_getmany", getmany)
    return BulkSource(app, ["feedback"], max_buffered=max_buffered), consumer, fetches


async def _fetch(consumer: Any) -> None:
    """One turn of Faust's fetch loop, which asks for a wait of 1 s."""
    async for _ in bulk_fetch._getmany_with_bulk_sources(consumer, 1.0):
        pass


def test_a_fetch_waits_briefly_while_a_full_source_holds_partitions_paused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Faust waits up to 1 s for the partitions still fetched: a paused one that resumes
    # meanwhile would wait for that to end while its reader runs dry.
    other = TP("users-changelog", 0)
    source, consumer, fetches = _fetching(monkeypatch, {TP("feedback", 0), other}, 2)
    asyncio.run(_fetch(consumer))
    _put(source, _message(0), _message(1))
    assert consumer.active == {other}
    asyncio.run(_fetch(consumer))
    assert [wait for wait, _ in fetches] == [1.0, bulk_fetch.RESUME_POLL_S]


def test_with_every_partition_paused_the_fetch_starts_as_soon_as_one_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Faust's fetch loop sleeps 1 s when no partition is active.
    tp = TP("feedback", 0)
    source, consumer, fetches = _fetching(monkeypatch, {tp}, 4)

    async def scenario() -> None:
        _put(source, *(_message(offset) for offset in range(4)))
        assert consumer.active == set()
        fetching = asyncio.create_task(_fetch(consumer))
        await asyncio.sleep(0.05)
        assert not fetching.done() and fetches == [], "no fetch while nothing can be fetched"
        await source.take(3, within_s=0.0)  # 1 left: below half, the partition resumes
        await asyncio.wait_for(fetching, 0.5)

    asyncio.run(scenario())
    assert fetches == [(bulk_fetch.RESUME_POLL_S, {tp})]


def test_a_fetch_with_every_partition_paused_gives_way_to_a_rebalance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, consumer, fetches = _fetching(monkeypatch, {TP("feedback", 0)}, 1)
    _put(source, _message(0))

    async def scenario() -> None:
        fetching = asyncio.create_task(_fetch(consumer))
        await asyncio.sleep(0.03)
        assert not fetching.done()
        consumer.flow_active = False  # Faust's own wait for the rebalance takes over
        await asyncio.wait_for(fetching, 0.5)

    asyncio.run(scenario())
    assert fetches == [(bulk_fetch.RESUME_POLL_S, set())]
