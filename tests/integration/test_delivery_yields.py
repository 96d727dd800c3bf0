"""Ordered delivery on the embedded broker: a step of many users' states goes out whole and
in order, and other tasks run while the states are serialised and the events acked, where
one turn of the loop used to do hundreds of them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.delivery import ACK_SLICE, OrderedDelivery, Step
from agents.state.state import UserState
from agents.wiring import users_store
from streams import yielding
from streams.admin import ensure_topics
from streams.app import build_app
from streams.broker import EmbeddedBroker
from streams.output import OutputProducer
from streams.tables import declare_users_table
from tests.support import isolated_settings

pytestmark = pytest.mark.broker

USERS = 300
EVENTS = 1000


async def _read(bootstrap: list[str], topic: str, partition: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        found: list[tuple[bytes, bytes]] = []
        while batch := await consumer.getmany(tp, timeout_ms=1000):
            found += [(r.key, r.value) for r in batch[tp]]
        return found
    finally:
        await consumer.stop()


def test_a_large_step_lets_other_tasks_run_and_goes_out_whole(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(yielding, "YIELD_EVERY_S", 0.0)  # every check lets the loop go
    settings = isolated_settings(broker.url, tmp_path)
    ensure_topics(settings)
    users = users_store(declare_users_table(build_app(settings), settings))
    serialised = 0
    record_of = users.changelog_record

    def counted(user: str, state: UserState) -> tuple[bytes | None, bytes]:
        nonlocal serialised
        serialised += 1
        return record_of(user, state)

    users.changelog_record = counted  # type: ignore[method-assign]
    acked: list[list[Any]] = []
    step = Step(events=list(range(EVENTS)), ack=acked.append)  # type: ignore[arg-type]
    states: dict[str, UserState] = {}
    for n in range(USERS):
        partition = n % settings.partitions
        states[f"u{n}"] = step.changelog[partition][f"u{n}"] = UserState(
            clock=float(n), partition=partition, seen={f"e{n}": float(n)}
        )

    async def run() -> list[tuple[int, int]]:
        seen: list[tuple[int, int]] = []
        done = False

        async def watch() -> None:
            while not done:
                seen.append((serialised, sum(map(len, acked))))
                await asyncio.sleep(0)

        delivery = OrderedDelivery(
            OutputProducer(settings, "outputs"), OutputProducer(settings, "changelog"), users
        )
        watcher = asyncio.create_task(watch())
        try:
            await delivery.queue(step)
            await delivery.flush()
        finally:
            done = True
            await watcher
            await delivery.stop()
        return seen

    seen = asyncio.run(run())
    # The watcher ran after each state was serialised and after each slice of acks.
    assert {count for count, _ in seen} >= set(range(USERS + 1))
    assert {count for _, count in seen} >= set(range(0, EVENTS, ACK_SLICE))
    assert [len(part) for part in acked] == [ACK_SLICE] * (EVENTS // ACK_SLICE) + [
        EVENTS % ACK_SLICE
    ]
    assert [event for part in acked for event in part] == list(range(EVENTS))
    # Every state reached the changelog, each partition's in the order the step held them.
    topic = users.changelog_topic
    for partition in range(settings.partitions):
        expected = [
            record_of(user, state) for user, state in states.items() if state.partition == partition
        ]
        got = asyncio.run(_read(settings.bootstrap_servers, topic, partition))
        assert got == expected
