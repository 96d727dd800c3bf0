"""Letting the event loop run between stretches of CPU work done in one task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from typing import TypeVar

__all__ = ["YIELD_CHECK_MASK", "YIELD_EVERY_S", "Yielder", "run_in_steps"]

T = TypeVar("T")

#: Longest CPU stretch of a task before it lets the event loop run other tasks.
YIELD_EVERY_S = 0.002
#: Cheap items (microseconds each) are timed 64 at a time: ``count & YIELD_CHECK_MASK``
#: picks the items after which the yielder is awaited.
YIELD_CHECK_MASK = 63


class Yielder:
    """Awaited between items of CPU work (``await yielder()``): lets the event loop run
    other tasks once the caller has held it for ``every_s`` (default
    :data:`YIELD_EVERY_S`) since its last yield, or since the yielder was made.

    Time, not an item count, decides: items differ in cost by orders of magnitude (a power
    user's state is a thousand times an occasional user's), and a count that suits the small
    ones holds the loop for hundreds of milliseconds on the large ones.
    """

    __slots__ = ("every_s", "since")

    def __init__(self, every_s: float | None = None) -> None:
        self.every_s = YIELD_EVERY_S if every_s is None else every_s
        self.since = time.perf_counter()

    async def __call__(self) -> None:
        if time.perf_counter() - self.since >= self.every_s:
            await asyncio.sleep(0)
            self.since = time.perf_counter()


async def run_in_steps(steps: Generator[None, None, T], pause: Callable[[], Awaitable[None]]) -> T:
    """Run ``steps``, work that yields between its parts, to its end, awaiting ``pause`` at
    each of its yields; what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
        await pause()
