"""Pipeline memory and recovery benchmark: worker RSS per active user, then a restart.

Rows: worker memory per active user at each user count of the plan, then start-to-ready of
a restarted worker that recovers those users' table state from the changelog.

Run ``python -m tests.benchmarks.bench_memory [--quick]`` (``make bench`` runs it with the
other sections). Progress goes to stderr; the table goes to stdout at the end.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.error
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson

from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from tests.benchmarks import harness
from tests.benchmarks.harness import (
    Plan,
    Report,
    bench_settings,
    events_total,
    log,
    produce_all,
    rss_bytes,
    start_worker,
    sync_producer,
    time_to_ready,
    wait_for_count,
    wait_ready,
)
from tests.support import WorkerProcess

#: Events per user in the memory rows: one impression and one feedback.
EVENTS_PER_USER = 2
#: Users produced at a time while loading, so a capped load leaves no backlog behind that
#: the restarted worker would then count before the fresh event.
USERS_PER_CHUNK = 2500


def user_events(first: int, last: int, start_time: float) -> Iterator[tuple[str, bytes, bytes]]:
    """An impression and a feedback event for each of the users ``first..last-1``."""
    kinds = ("click", "skip", "like", "short_dwell")
    for n in range(first, last):
        user = f"mem-u{n}"
        key = user.encode()
        t = start_time + n * 0.001
        base = {"user_id": user, "item_id": f"item{n % 5000}", "creator_id": f"cr{n % 200}",
                "category": f"cat{n % 20}"}  # fmt: skip
        yield "impressions", key, orjson.dumps({**base, "event_id": f"mi{n}", "timestamp": t})
        value = {**base, "event_id": f"mf{n}", "kind": kinds[n % len(kinds)], "timestamp": t + 1}
        yield "feedback", key, orjson.dumps(value)


def memory_rows(plan: Plan) -> list[str]:
    """Row names of the memory and recovery section."""
    rows = [f"memory per active user ({users:,} users)" for users in plan.memory_users]
    return [*rows, "restart-to-ready with the loaded users' table state"]


def bench_memory_and_recovery(
    broker: EmbeddedBroker, root: Path, plan: Plan, report: Report, workers: list[WorkerProcess]
) -> None:
    """RSS growth per loaded user, then a restart that recovers those users' table state."""
    settings = bench_settings(broker, root / "memory")
    ensure_topics(settings)
    worker = start_worker(settings, root / "memory" / "worker.log", workers)
    producer = sync_producer(settings)
    names = memory_rows(plan)
    loaded = 0
    try:
        wait_ready(worker, producer, "memory-warmup", timeout=60)
        time.sleep(1.0)
        assert worker.process is not None
        baseline = rss_bytes(worker.process.pid)
        expected = events_total(worker)
        start_time = time.time()
        load_started = time.monotonic()
        for name, users in zip(names, plan.memory_users, strict=False):
            log(f"memory: loading users {loaded:,}..{users:,}")
            chunk_started, chunk_from = time.monotonic(), loaded
            capped = False
            while loaded < users:
                if time.monotonic() - load_started > plan.memory_cap_s:
                    capped = True
                    break
                upto = min(users, loaded + USERS_PER_CHUNK)
                messages = list(user_events(loaded, upto, start_time))
                asyncio.run(produce_all(settings, messages))
                expected += len(messages)
                wait_for_count(worker, expected, timeout=plan.memory_cap_s + 60)
                loaded = upto
            rate = (loaded - chunk_from) * EVENTS_PER_USER / (time.monotonic() - chunk_started)
            time.sleep(2.0)  # let the last batch's garbage go before reading RSS
            rss = rss_bytes(worker.process.pid)
            note = f"**{users:,} not reached: load stopped at the {plan.memory_cap_s:.0f} s cap**; "
            report.add(
                name,
                f"{(rss - baseline) / max(loaded, 1):,.0f} bytes/user at {loaded:,} users",
                "",
                (note if capped else "")
                + f"RSS {baseline / 2**20:,.0f} → {rss / 2**20:,.0f} MiB; {EVENTS_PER_USER} "
                f"events/user; load counted {rate:,.0f} events/s",
            )
            if capped:
                break
        # Offsets are committed every few seconds: wait so the restart replays nothing.
        time.sleep(4.0)
    finally:
        producer.close()
        worker.stop()
    log(f"recovery: restarting with {loaded:,} users of table state")
    metrics_s, ready_s, counted, restarted = time_to_ready(
        settings, root / "memory" / "worker2.log", workers, "fresh-after-restart",
        timeout=plan.recovery_cap_s,
    )  # fmt: skip
    try:
        restarted.get(f"/users/mem-u{loaded - 1}/")
        recovered = "last user's state recovered"
    except urllib.error.HTTPError as error:
        recovered = f"**last user's state missing** (HTTP {error.code})"
    finally:
        restarted.stop()
    report.add(
        names[-1],
        f"{ready_s:.2f} s",
        "",
        f"{loaded:,} users recovered from the changelog; /metrics answered after "
        f"{metrics_s:.2f} s; ready = a fresh event counted ({counted:.0f} counted: >1 means "
        f"replayed input); {recovered}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the memory and recovery rows and print their table; return the exit status."""
    description = (__doc__ or "").splitlines()[0]
    return harness.main("bench_memory", description, bench_memory_and_recovery, memory_rows, argv)


if __name__ == "__main__":
    sys.exit(main())
