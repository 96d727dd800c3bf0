"""The batching producers on the embedded broker: every record lands, in order, and the
reported end of each log is right, so a table recovery reads every record."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import yielding
from streams.broker import EmbeddedBroker, free_port
from streams.output import OutputProducer
from tests.support import isolated_settings, new_topic_named

pytestmark = pytest.mark.broker


def new_topic(bootstrap: list[str], partitions: int) -> str:
    return new_topic_named(bootstrap, f"output-{uuid.uuid4().hex[:8]}", partitions)


async def read_back(bootstrap: list[str], tp: TopicPartition) -> tuple[int, list[bytes]]:
    """(ListOffsets end offset, every value) of one partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        while True:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            if not batch:
                return end, values
            values += [record.value for record in batch[tp] if record.value is not None]
    finally:
        await consumer.stop()


async def read_partitions(bootstrap: list[str], topic: str, count: int) -> dict[int, list[bytes]]:
    """Every value of each of the topic's ``count`` partitions."""
    return {p: (await read_back(bootstrap, TopicPartition(topic, p)))[1] for p in range(count)}


def test_send_partition_keeps_order_and_a_true_end_offset(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path)
    topic = new_topic(settings.bootstrap_servers, 2)

    async def run() -> tuple[int, list[bytes], int, list[bytes]]:
        producer = OutputProducer(settings, "test")
        try:
            sent = []
            # Micro-batches of several sizes, the last of them a multi-record one: each
            # ends in a single-record batch, so ListOffsets reports the true end.
            for size in (1, 7, 3, 40):
                records = [(b"k%d" % n, b"%d-%d" % (size, n)) for n in range(size)]
                futures = await producer.send_partition(topic, 1, records)
                await asyncio.gather(*futures)
                sent += [value for _, value in records]
            await producer.send_partition(topic, 0, [(None, b"only")])
            await asyncio.gather(*(await producer.send_partition(topic, 0, [(None, b"x")] * 5)))
        finally:
            await producer.stop()
        end1, values1 = await read_back(settings.bootstrap_servers, TopicPartition(topic, 1))
        assert values1 == sent
        end0, values0 = await read_back(settings.bootstrap_servers, TopicPartition(topic, 0))
        return end1, values1, end0, values0

    end1, values1, end0, values0 = asyncio.run(run())
    assert end1 == len(values1) == 51
    assert values0 == [b"only"] + [b"x"] * 5
    assert end0 == 6


def test_outputs_are_delivered_when_awaited(broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = isolated_settings(broker.url, tmp_path)
    topic = new_topic(settings.bootstrap_servers, 1)

    async def run() -> list[bytes]:
        producer = OutputProducer(settings)
        try:
            futures = [
                await producer.send(topic, b"k", b"v%d" % n, partition=0) for n in range(200)
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return (await read_back(settings.bootstrap_servers, TopicPartition(topic, 0)))[1]

    assert asyncio.run(run()) == [b"v%d" % n for n in range(200)]


def test_send_many_partitions_as_send_does_and_keeps_each_partitions_order(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path)
    topic = new_topic(settings.bootstrap_servers, 3)
    keys = [b"user-%d" % n for n in range(12)]
    records: list[tuple[str, bytes | None, bytes, int | None]] = [
        (topic, keys[n % 12], b"v%d" % n, None) for n in range(120)
    ]
    records += [(topic, b"user-0", b"pinned-%d" % n, 2) for n in range(5)]

    async def run() -> tuple[dict[int, list[bytes]], dict[bytes, int]]:
        producer = OutputProducer(settings)
        try:
            await asyncio.gather(*await producer.send_many(records))
            # Where send() puts each key: one record per key on a second topic.
            single = new_topic(settings.bootstrap_servers, 3)
            placed = {}
            for key in keys:
                placed[key] = (await (await producer.send(single, key, b""))).partition
        finally:
            await producer.stop()
        return await read_partitions(settings.bootstrap_servers, topic, 3), placed

    read, placed = asyncio.run(run())
    for partition, values in read.items():
        expected = [v for t, k, v, p in records if (p if p is not None else placed[k]) == partition]
        assert values == expected, f"partition {partition}"
    assert sum(map(len, read.values())) == len(records)
    assert len(set(placed.values())) > 1, "keys spread over partitions"


def test_a_large_send_many_lets_other_tasks_run_and_keeps_each_partitions_order(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(yielding, "YIELD_EVERY_S", 0.0)  # every check lets the loop go
    settings = isolated_settings(broker.url, tmp_path)
    topic = new_topic(settings.bootstrap_servers, 2)
    records: list[tuple[str, bytes | None, bytes, int | None]] = [
        (topic, b"user-%d" % (n % 50), b"v%d" % n, None) for n in range(4000)
    ]

    async def run() -> tuple[set[int], dict[int, list[bytes]], dict[bytes, int]]:
        producer = OutputProducer(settings)
        hashed = 0
        placed: dict[bytes, int] = {}
        seen: set[int] = set()
        queued = False

        async def watch() -> None:
            while not queued:
                seen.add(hashed)
                await asyncio.sleep(0)

        try:
            await asyncio.gather(*await producer.send_many(records[:1]))  # connected first
            aiokafka_producer = producer._producer
            assert aiokafka_producer is not None
            partitioner = aiokafka_producer._partitioner

            def counted(key: bytes, every: list[int], available: list[int]) -> int:
                nonlocal hashed
                hashed += 1
                placed[key] = partitioner(key, every, available)
                return placed[key]

            monkeypatch.setattr(aiokafka_producer, "_partitioner", counted)
            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0)
            futures = await producer.send_many(records[1:])
            queued = True
            await watcher
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return seen, await read_partitions(settings.bootstrap_servers, topic, 2), placed

    seen, read, placed = asyncio.run(run())
    # The keys are hashed 64 at a time at most, other tasks running in between.
    counts = sorted(seen | {len(records) - 1})
    assert counts[0] == 0
    assert max(later - earlier for earlier, later in itertools.pairwise(counts)) <= 64
    for partition, values in read.items():
        assert values == [v for _, k, v, _ in records if placed[k] == partition]
    assert set(placed.values()) == {0, 1}


def test_delivery_waits_for_a_broker_that_is_away(tmp_path: Path) -> None:
    # No broker on the port at first: delivery keeps trying instead of failing, and
    # completes once a broker is there.
    port = free_port()
    settings = isolated_settings(f"kafka://127.0.0.1:{port}", tmp_path)
    topic = f"late-{uuid.uuid4().hex[:8]}"
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log")

    async def run() -> list[bytes]:
        producer = OutputProducer(settings)
        try:

            async def send() -> list[asyncio.Future[Any]]:
                return [await producer.send(topic, b"k", b"v%d" % n, partition=0) for n in range(3)]

            delivery = asyncio.create_task(producer.deliver(send))
            await asyncio.sleep(2.0)
            assert not delivery.done(), "delivered with no broker"
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, broker.start)
            await loop.run_in_executor(None, new_topic_named, settings.bootstrap_servers, topic)
            await asyncio.wait_for(delivery, 90)
        finally:
            await producer.stop()
        return (await read_back(settings.bootstrap_servers, TopicPartition(topic, 0)))[1]

    try:
        values = asyncio.run(run())
    finally:
        broker.stop()
    assert values[-3:] == [b"v0", b"v1", b"v2"]
    assert set(values) == {b"v0", b"v1", b"v2"}, "only copies of the records were written"
