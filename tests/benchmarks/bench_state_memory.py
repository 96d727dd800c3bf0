"""Per-user state memory and fold speed of the heavy world, folded in-process (no broker).

The heavy world's events go through the worker's input pipeline (:class:`tests.driver.
FoldDriver`: the same fold loop, watermarks and encoder, outputs not kept), in the worker's
order and batches. Rows, per active user (a user with a stored state): the bytes the stored
states retain, by :class:`~agents.state.state.UserState` field, and the states kept
compressed at rest (each object counted once, where first met, so what users share, interned
ids and shared candidates, counts once); the
resident memory the process grew by (the collector's and allocator's slack included); and
the fold's events per second of CPU time.

Run ``python -m tests.benchmarks.bench_state_memory [--quick] [--users N] [--impressions N]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import orjson

from agents.state.state import UserState
from simulator.stream import IMPRESSIONS_TOPIC, Simulator
from simulator.worlds import world_config
from streams.users import Resting
from tests.benchmarks.harness import rss_bytes
from tests.driver import FoldDriver

#: (users, impressions) of a full and a quick run.
FULL = (100_000, 1_000_000)
QUICK = (10_000, 100_000)


@dataclass
class StateMemory:
    """What one fold of the heavy world measured."""

    users: int
    impressions: int
    events: int
    active: int
    #: Active users whose state is kept compressed at rest.
    resting: int
    rss_per_user: float
    retained_per_user: float
    #: Retained bytes per active user, by field (``"table"``: the user ids and the table).
    by_field: dict[str, float]
    events_per_cpu_s: float


class _TimedDriver(FoldDriver):
    """Counts the events fed and the CPU time spent folding them (not making them)."""

    def __init__(self) -> None:
        super().__init__(capture=False)
        self.events = 0
        self.cpu_s = 0.0

    async def feed(self, messages: list[Any], wall_step_s: float = 0.001) -> None:
        started = time.thread_time()
        await super().feed(messages, wall_step_s)
        self.cpu_s += time.thread_time() - started
        self.events += len(messages)


def measure(users: int, impressions: int, seed: int = 0) -> StateMemory:
    """Fold the heavy world of ``users`` users and ``impressions`` impressions; measure."""
    # Ground truth is not kept: only the worker's state should grow.
    simulator = Simulator(world_config("heavy", n_users=users, seed=seed, keep_ground_truth=False))
    driver = _TimedDriver()
    gc.collect()
    before = rss_bytes(os.getpid())
    topics = {IMPRESSIONS_TOPIC: "impressions"}
    driver.run(
        (topics.get(e.topic, "feedback"), e.key.encode(), orjson.dumps(e.value), 0)
        for e in simulator.events(impressions)
        if isinstance(e.value, dict)
    )
    gc.collect()
    rss = rss_bytes(os.getpid()) - before
    # As the store holds them: a state at rest stays compressed.
    stored: dict[str, UserState | Resting] = dict(driver.users.table.data)
    active = max(len(stored), 1)
    by_field = {name: size / active for name, size in retained(stored).items()}
    return StateMemory(
        users=users,
        impressions=impressions,
        events=driver.events,
        active=len(stored),
        resting=sum(isinstance(state, Resting) for state in stored.values()),
        rss_per_user=rss / active,
        retained_per_user=sum(by_field.values()),
        by_field=by_field,
        events_per_cpu_s=driver.events / max(driver.cpu_s, 1e-9),
    )


def retained(states: dict[str, UserState | Resting]) -> Counter[str]:
    """Bytes the states (and the table of them) hold, by field, those at rest as one row;
    an object met twice counts once, where it was met first."""
    seen: set[int] = set()
    sizes: Counter[str] = Counter()
    sizes["table"] += _size(states, seen)
    for user in states:
        sizes["table"] += _size(user, seen)
    names = [f.name for f in fields(UserState)]
    for state in states.values():
        if isinstance(state, Resting):
            sizes["(at rest, compressed)"] += _deep(state, seen)
            continue
        seen.add(id(state))
        sizes["(the state object)"] += sys.getsizeof(state)
        for name in names:
            sizes[name] += _deep(getattr(state, name), seen)
    return sizes


def _size(obj: object, seen: set[int]) -> int:
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    return sys.getsizeof(obj)


def _deep(obj: object, seen: set[int]) -> int:
    size = _size(obj, seen)
    if not size:
        return 0
    if isinstance(obj, dict):
        return size + sum(_deep(k, seen) + _deep(v, seen) for k, v in obj.items())
    if isinstance(obj, list | tuple | set | frozenset):
        return size + sum(_deep(item, seen) for item in obj)
    for cls in type(obj).__mro__:
        for slot in cls.__dict__.get("__slots__", ()):
            # A weak reference belongs to whoever holds it (an intern table), not the state.
            if slot != "__weakref__" and hasattr(obj, slot):
                size += _deep(getattr(obj, slot), seen)
    return size


def table(result: StateMemory) -> str:
    """The result as a Markdown table."""
    lines = [
        f"## per-user state, heavy world: {result.users:,} users, {result.impressions:,} "
        f"impressions ({result.events:,} events) folded in-process; {result.active:,} active "
        "users\n",
        "| row | per active user |",
        "|---|---|",
        f"| resident memory growth | {result.rss_per_user:,.0f} B |",
        f"| retained by the stored states | {result.retained_per_user:,.0f} B |",
        f"| states kept compressed at rest | {result.resting / max(result.active, 1):.0%} |",
    ]
    for name, size in sorted(result.by_field.items(), key=lambda kv: -kv[1]):
        lines.append(f"| &nbsp;&nbsp;{name} | {size:,.0f} B |")
    lines.append(f"| fold speed | {result.events_per_cpu_s:,.0f} events per CPU-second |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Fold the heavy world and print the table; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_state_memory", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK[0]:,} users")
    parser.add_argument("--users", type=int, default=None, help=f"default {FULL[0]:,}")
    parser.add_argument("--impressions", type=int, default=None, help=f"default {FULL[1]:,}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    users, impressions = QUICK if args.quick else FULL
    result = measure(args.users or users, args.impressions or impressions, args.seed)
    print(table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
