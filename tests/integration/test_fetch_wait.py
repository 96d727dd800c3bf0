"""A consumer with the worker's short fetch wait still reads a partition of many small
batches on the embedded broker (see ``streams.patches.fetch_wait``)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.broker import EmbeddedBroker
from streams.patches import fetch_wait
from tests.support import new_topic_named

pytestmark = pytest.mark.broker

#: Single-record batches written; Tansu 0.6.0 answers a 10 ms fetch empty from ~20,000 on.
BATCHES = 30_000
WAIT_MS = 10


async def produce_single_record_batches(bootstrap: list[str], topic: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=1)
    await producer.start()
    try:
        sent = [await producer.send(topic, b"%d" % i, partition=0) for i in range(n)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def read_all(bootstrap: list[str], tp: TopicPartition, n: int, deadline_s: float) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=WAIT_MS)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        read, started = 0, time.monotonic()
        while read < n and time.monotonic() - started < deadline_s:
            batches = await consumer.getmany(tp, timeout_ms=500)
            read += sum(len(records) for records in batches.values())
        # Caught up: a fetch or two later the configured wait is back.
        await consumer.getmany(tp, timeout_ms=200)
        await consumer.getmany(tp, timeout_ms=200)
        fetcher = consumer._fetcher
        assert fetcher._fetch_max_wait_ms == WAIT_MS
        return read
    finally:
        await consumer.stop()


def test_short_fetch_wait_reads_a_partition_of_many_small_batches(broker: EmbeddedBroker) -> None:
    fetch_wait.install()
    bootstrap = [broker.bootstrap]
    topic = new_topic_named(bootstrap, f"fetch-wait-{uuid.uuid4().hex[:8]}")
    asyncio.run(produce_single_record_batches(bootstrap, topic, BATCHES))
    read = asyncio.run(read_all(bootstrap, TopicPartition(topic, 0), BATCHES, deadline_s=60.0))
    assert read == BATCHES, f"read {read} of {BATCHES} records before the deadline"
