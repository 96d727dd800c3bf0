"""The yielder lets the event loop run other tasks once its caller has held it long enough,
and not before (timed by a stand-in clock, so the counts are exact)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from streams import yielding
from streams.yielding import Yielder


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(yielding, "time", SimpleNamespace(perf_counter=clock))
    return clock


async def _ticks_during(
    items: int, make: type[Yielder] | Yielder, clock: Clock, item_s: float
) -> list[int]:
    """After which items another task ran, for ``items`` items of ``item_s`` each."""
    ran: list[int] = []
    done = False
    current = [0]

    async def ticker() -> None:
        while not done:
            ran.append(current[0])
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    ran.clear()  # the ticker's first turn, before any item
    yielder = make() if isinstance(make, type) else make
    for item in range(1, items + 1):
        current[0] = item
        clock.now += item_s
        await yielder()
    done = True
    await task
    return ran


def test_other_tasks_run_once_the_loop_was_held_for_the_budget(clock: Clock) -> None:
    # Items of 1 ms against a 2.5 ms budget: the loop is let go after every third item.
    ran = asyncio.run(_ticks_during(30, Yielder(0.0025), clock, 0.001))
    assert ran == list(range(3, 31, 3))


def test_items_within_the_budget_keep_the_loop(clock: Clock) -> None:
    assert asyncio.run(_ticks_during(200, Yielder(1.0), clock, 0.001)) == []


def test_the_default_budget_is_read_when_a_yielder_is_made(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(yielding, "YIELD_EVERY_S", 0.0)
    assert asyncio.run(_ticks_during(5, Yielder, clock, 0.0)) == [1, 2, 3, 4, 5]
    assert Yielder(0.5).every_s == 0.5
