"""Bulk reading: the hot topics' records go from Faust's consumer straight into batches.

Faust hands every fetched record to its agents one at a time: a task and a wait for each
record (``Consumer._drain_messages``), then a channel queue, a stream step, sensors and an
ack. Measured on the worker at a backlog, that machinery held the GIL for about 40% of the
worker's time, more than all of negstream's own per-event work. The input and
training-example topics are read here instead: the consumer's records for them are appended
to a :class:`BulkSource` as they are fetched, and a task takes them a micro-batch at a time.

Everything else stays Faust's: the consumer group, the partition assignment that keeps the
users table next to its inputs, table recovery (the inputs are only fetched once it is
done), flow control (nothing is taken while a rebalance suspends it) and offset commits of
acked records. The consumer's fetch loop hands them over through
``streams.patches.bulk_fetch``. A taken record is tracked as in flight; ``BulkSource.ack``
marks it done, and Faust commits up to it. A record fetched before the latest rebalance is
dropped when its turn comes, unacked: every rebalance ends with the consumer sought back to
the committed offsets, so it is fetched again if this worker still owns its partition. A
source is never cleared: Faust clears the queues flow control manages when flow resumes, and
it resumes after the seek, so records fetched in between would be lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from faust.types import TP, Message

__all__ = ["BulkSource"]

#: Past any offset: the end of a range that runs to the end of the log.
END_OF_LOG = 2**63


class BulkSource:
    """Records of some topics, in fetch order, taken by one reader a batch at a time.

    ``max_buffered`` bounds what waits here: past it, each partition that adds a record is
    taken out of the consumer's fetches until the reader has taken the buffer below half.
    """

    def __init__(self, app: Any, topics: Iterable[str], max_buffered: int) -> None:
        self.app = app
        self.topics = frozenset(topics)
        self.max_buffered = max_buffered
        self.messages: deque[Message] = deque()
        self.arrived = asyncio.Event()
        self.paused: set[TP] = set()
        sources = app.__dict__.setdefault("negstream_bulk_sources", {})
        for topic in self.topics:
            sources[topic] = self

    def put(self, tp: TP, message: Message) -> None:
        """Buffer one fetched record (called by the consumer's fetch loop)."""
        self.messages.append(message)
        self.arrived.set()
        if len(self.messages) >= self.max_buffered and tp not in self.paused:
            # Faust's own TP: the consumer's fetch loop yields aiokafka's, and the consumer's
            # active-partition set must hold Faust's.
            tp = TP(tp.topic, tp.partition)
            self.paused.add(tp)
            self.app.consumer.on_buffer_full(tp)

    async def take(self, max_records: int, within_s: float) -> list[Message]:
        """The next batch: up to ``max_records`` records, waiting at most ``within_s`` for
        more once the first has arrived.

        Waits while a rebalance suspends flow. Records fetched before the latest rebalance are
        left out, unacked (see the module's docstring). Those returned are tracked as in
        flight: nothing past them is committed until each is given to :meth:`ack`.
        """
        while True:
            while not self.messages:
                self.arrived.clear()
                await self.arrived.wait()
            await self.app.flow_control.acquire()
            deadline = time.monotonic() + within_s
            while len(self.messages) < max_records:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._pop(max_records)
            if batch:
                return batch

    def _pop(self, max_records: int) -> list[Message]:
        messages = self.messages
        count = min(max_records, len(messages))
        taken = [messages.popleft() for _ in range(count)]
        if self.paused and len(messages) < self.max_buffered // 2:
            for tp in self.paused:
                self.app.consumer.on_buffer_drop(tp)
            self.paused.clear()
        generation = self.app.consumer_generation_id
        unacked = self.app.consumer._unacked_messages
        batch = []
        for message in taken:
            if message.generation_id != generation:
                continue
            message.tracked = True
            unacked.add(message)
            batch.append(message)
        # Faust's consumer checks each partition it is behind on for a stream that takes its
        # events, and logs an error when none has for a while: these records are taken here.
        monitor = getattr(self.app, "monitor", None)
        if batch and monitor is not None:
            now = time.monotonic()
            inbound = monitor.stream_inbound_time
            for message in batch:
                inbound[message.tp] = now
        return batch

    async def rewind(
        self, topic: str, partition: int, offset: int, dropped: Iterable[Message]
    ) -> None:
        """Read ``topic[partition]`` again from ``offset``: ``dropped`` (taken, never to be
        acked) and the partition's buffered records are forgotten, and the consumer seeks.

        The fetch loop recorded the skipped offsets as a gap in the log (see
        ``streams.patches.bulk_fetch``), and Faust commits over a gap as if it had been
        processed: the gap from ``offset`` on is dropped, or the first ack of a record read
        again would commit past the skipped ones not yet processed.
        """
        consumer = self.app.consumer
        unacked = consumer._unacked_messages
        for message in dropped:
            unacked.discard(message)
        if any(m.topic == topic and m.partition == partition for m in self.messages):
            self.messages = deque(
                m for m in self.messages if not (m.topic == topic and m.partition == partition)
            )
        tp = TP(topic, partition)
        await consumer.seek(tp, offset)
        gaps = getattr(consumer, "_gap", {}).get(tp)
        if gaps:
            gaps.chop(offset, END_OF_LOG)

    def ack(self, messages: Iterable[Message]) -> None:
        """Mark taken ``messages`` processed: their offsets may be committed."""
        consumer = self.app.consumer
        for message in messages:
            message.ack(consumer)
