"""A partition whose offsets do not follow on from the last one handed over is read again
from the first one missing; its events in that batch are dropped, unacked."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from tests.driver import FoldDriver

T0 = 1_767_225_600.0


def impression(driver: FoldDriver, n: int, offset: int) -> Any:
    value = {"event_id": f"i{n}", "user_id": "u1", "item_id": f"item{n}", "timestamp": T0 + n}
    message = driver.message("impressions", b"u1", orjson.dumps(value))
    return replace_offset(message, offset)


def replace_offset(message: Any, offset: int) -> Any:
    message.offset = offset
    return message


def test_a_skipped_offset_is_read_again_and_a_hole_in_the_log_is_passed_over() -> None:
    driver = FoldDriver()
    rewinds: list[tuple[str, int, int, list[int]]] = []

    async def rewind(topic: str, partition: int, offset: int, dropped: list[Any]) -> None:
        rewinds.append((topic, partition, offset, [m.offset for m in dropped]))

    driver.pipeline.rewind = rewind

    async def go() -> None:
        first = [impression(driver, n, n) for n in range(3)]
        await driver.pipeline.process(first)
        # Offsets 3 and 4 never arrive: 5 and 6 are dropped and the partition rewound to 3.
        await driver.pipeline.process([impression(driver, n, n) for n in (5, 6)])
        # Read again from 3: all follow on.
        await driver.pipeline.process([impression(driver, n, n) for n in (3, 4, 5, 6)])
        # A hole at 7 (e.g. a transaction marker): the rewind to 7 brings 8 again, taken.
        await driver.pipeline.process([impression(driver, 8, 8)])
        await driver.pipeline.process([impression(driver, 8, 8)])
        await driver.pipeline.flush()

    asyncio.run(go())
    topic = driver.settings.topic("impressions")
    assert rewinds == [(topic, 0, 3, [5, 6]), (topic, 0, 7, [8])]
    state = driver.users.get("u1")
    assert state is not None
    # Each impression applied once, in offset order: 0-6 and 8 (7 is the hole).
    assert [p.event_id for p in state.pending] == [f"i{n}" for n in (0, 1, 2, 3, 4, 5, 6, 8)]


def test_a_partition_kept_through_a_rebalance_is_checked_from_where_it_was() -> None:
    driver = FoldDriver()
    rewinds: list[int] = []

    async def rewind(topic: str, partition: int, offset: int, dropped: list[Any]) -> None:
        rewinds.append(offset)

    driver.pipeline.rewind = rewind

    async def go() -> None:
        await driver.pipeline.process([impression(driver, n, n) for n in range(3)])
        # A rebalance revokes everything, then gives partition 0 back: the consumer must go
        # on from offset 3 (or re-read from the committed one), not resume at 9.
        driver.pipeline.forget_partitions([0])
        driver.pipeline.on_assigned([0])
        await driver.pipeline.process([impression(driver, 9, 9)])
        # A partition that moved away and came back starts from its committed offset
        # (unknown here), so anything is taken.
        driver.pipeline.forget_partitions([0])
        driver.pipeline.on_assigned([1])
        driver.pipeline.on_assigned([0, 1])
        await driver.pipeline.process([impression(driver, 20, 20)])

    asyncio.run(go())
    assert rewinds == [3]
