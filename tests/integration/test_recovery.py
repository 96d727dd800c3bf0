"""Table recovery across rebalances, on a changelog whose end the broker reports short."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaConsumer, TopicPartition

from streams.admin import changelog_topic, ensure_topics
from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.support import (
    TABLE_SETTINGS,
    WorkerProcess,
    isolated_settings,
    produce,
    user_page,
    wait_until,
)

pytestmark = pytest.mark.broker

#: Copies of a partition's last changelog record appended as one batch.
COPIES = 5


def changelog_records(settings: Settings, partitions: int) -> dict[int, list[Any]]:
    """The users changelog's records so far, by partition."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                             consumer_timeout_ms=1500, fetch_max_wait_ms=100)  # fmt: skip
    topic = changelog_topic(settings, "users")
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    records: dict[int, list[Any]] = {p: [] for p in range(partitions)}
    try:
        for record in consumer:
            records[record.partition].append(record)
    finally:
        consumer.close()
    return records


def reported_ends(settings: Settings, partitions: int) -> dict[int, int]:
    """The changelog's end offsets as the broker's ListOffsets answers them."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None)
    topic = changelog_topic(settings, "users")
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        consumer.close()
    return {tp.partition: end for tp, end in ends.items()}


async def append_batch(settings: Settings, partition: int, key: bytes, value: bytes) -> None:
    """``COPIES`` copies of one changelog record, as one batch (as a worker killed between
    a micro-batch's batches leaves the log)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        batch = producer.create_batch()
        for _ in range(COPIES):
            assert batch.append(key=key, value=value, timestamp=None) is not None
        batch.close()
        topic = changelog_topic(settings, "users")
        await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


def readies(worker: WorkerProcess) -> int:
    """Table recoveries the worker has finished (each rebalance ends with one)."""
    return worker.log().count("Worker ready")


def crashed(worker: WorkerProcess) -> bool:
    """Whether the worker's table recovery crashed."""
    return "[^---Recovery]: Crashed" in worker.log()


def test_a_worker_recovers_again_after_reading_past_a_short_reported_end(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    partitions = 2
    settings = isolated_settings(
        broker.url, tmp_path, partitions=partitions, log_level="info", **TABLE_SETTINGS
    )
    ensure_topics(settings)
    users = [f"rc-u{n}" for n in range(40)]
    now = time.time()
    events = [
        ("impressions", user.encode(), {"event_id": f"ri{n}", "user_id": user,
                                        "item_id": f"rc-item{n}", "timestamp": now})
        for n, user in enumerate(users)
    ]  # fmt: skip
    first = WorkerProcess(settings, tmp_path / "first.log").start()
    second_settings = Settings(**{**settings.__dict__, "metrics_port": free_port()})
    second = WorkerProcess(second_settings, tmp_path / "second.log")
    try:
        wait_until(lambda: readies(first) >= 1, 60, "the first worker's recovery")
        produce(settings, events)
        written = wait_until(
            lambda: (r := changelog_records(settings, partitions)) and all(r.values()) and r,
            60, "changelog records on every partition",
        )  # fmt: skip
        for partition, records in written.items():
            last = records[-1]
            asyncio.run(append_batch(settings, partition, last.key, last.value))
        true_ends = {p: len(r) + COPIES for p, r in written.items()}
        # The broker answers the base offset of the last batch plus one: short of the end.
        assert all(reported_ends(settings, partitions)[p] < true_ends[p] for p in true_ends)

        # Each join and leave makes the first worker recover the partitions it is given,
        # from where its last recovery of each left off: past the reported end, for those
        # read through the appended batch.
        for joins in (1, 2):
            second.start()
            wait_until(lambda n=joins: readies(second) >= n, 60, "the second worker ready")
            seen = readies(first)
            second.stop()
            wait_until(lambda s=seen: readies(first) > s or crashed(first), 60,
                       "the first worker's recovery")  # fmt: skip
            assert not crashed(first), first.log()[-3000:]
            assert first.process is not None and first.process.poll() is None, first.log()[-3000:]
        for n, user in enumerate(users):
            assert f'"rc-item{n}"'.encode() in user_page([first], user)
    finally:
        second.stop()
        first.stop()
