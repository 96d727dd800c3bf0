"""When an input was last found read up: the time of the fetch answer that said so, which
stops moving while the broker is gone (see ``Watermarks.check_inputs``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams.app import fetch_position, fetched_end
from streams.broker import EmbeddedBroker
from tests.support import new_topic_named

pytestmark = pytest.mark.broker

#: A log end offset and when the answer that gave it came.
Answer = tuple[int | None, float | None]


async def answers_before_and_during_an_outage(
    broker: EmbeddedBroker, tp: TopicPartition
) -> tuple[Answer, float, Answer, float, float]:
    bootstrap = [broker.bootstrap]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(tp.topic, b"x", partition=0) for _ in range(3)])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        read = 0
        while read < 3:
            batches = await consumer.getmany(tp, timeout_ms=500)
            read += sum(len(records) for records in batches.values())
        await consumer.getmany(tp, timeout_ms=100)
        # Faust's consumer wraps aiokafka's in a thread object: read through it the same way.
        faust_like = SimpleNamespace(highwater=consumer.highwater, _thread=SimpleNamespace(
            _consumer=consumer))  # fmt: skip
        before, asked = fetched_end(faust_like, tp), time.time()
        broker.stop()
        gone = time.time()
        failing_until = time.monotonic() + 2.0
        while time.monotonic() < failing_until:
            with contextlib.suppress(KafkaError):
                await consumer.getmany(tp, timeout_ms=100)
        during, now = fetched_end(faust_like, tp), time.time()
        # Back (empty), so that the consumer stops cleanly.
        broker.start()
        return before, asked, during, gone, now
    finally:
        await consumer.stop()


def test_the_answer_time_stops_while_the_broker_is_gone() -> None:
    broker = EmbeddedBroker().start()
    try:
        topic = new_topic_named([broker.bootstrap], f"fetched-end-{uuid.uuid4().hex[:8]}")
        tp = TopicPartition(topic, 0)
        before, asked, during, gone, now = asyncio.run(
            answers_before_and_during_an_outage(broker, tp)
        )
    finally:
        broker.stop()
    assert before[0] == 3 and before[1] is not None
    assert asked - before[1] < 1.0, "read up a moment ago"
    assert during[0] == 3 and during[1] is not None
    # (An answer already on its way as the broker went may still land: a moment's margin.)
    assert during[1] < gone + 0.5, "no answer came once the broker was gone"
    assert now - gone >= 2.0


def test_faust_keeps_the_aiokafka_consumer_where_fetched_end_reads_it() -> None:
    assert "_consumer" in vars(AIOKafkaConsumerThread)


async def position_without_a_commit(broker: EmbeddedBroker, tp: TopicPartition) -> list[Answer]:
    bootstrap = [broker.bootstrap]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for _ in range(3):  # a batch each: Tansu's "latest" is right for those
            await producer.send_and_wait(tp.topic, b"x", partition=0)
    finally:
        await producer.stop()
    # Never committed, reset to the log's end: fetching starts past 0 with no record read
    # (as it does on a log that retention emptied, reset to the earliest offset).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, fetch_max_wait_ms=10, auto_offset_reset="latest"
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        faust_like = SimpleNamespace(_thread=SimpleNamespace(_consumer=consumer))
        seen = []
        for _ in range(5):
            assert not await consumer.getmany(tp, timeout_ms=100)
            seen.append((fetch_position(faust_like, tp), consumer.highwater(tp)))
        return seen
    finally:
        await consumer.stop()


def test_the_fetch_position_of_a_partition_never_committed_is_where_the_reset_put_it() -> None:
    broker = EmbeddedBroker().start()
    try:
        topic = new_topic_named([broker.bootstrap], f"fetch-position-{uuid.uuid4().hex[:8]}")
        seen = asyncio.run(position_without_a_commit(broker, TopicPartition(topic, 0)))
    finally:
        broker.stop()
    assert seen[-1] == (3, 3), seen
    assert fetch_position(SimpleNamespace(), TopicPartition(topic, 0)) is None
