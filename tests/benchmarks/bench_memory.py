"""Pipeline memory and recovery benchmark: worker RSS per active user, then a restart.

Rows: worker memory per active user at each user count of the plan, then start-to-ready of
a restarted worker that recovers those users' table state from the changelog, then the peak
RSS of a worker restarted once wall time has passed every loaded user's label window, while
it closes them all at once.

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
from kafka.partitioner.default import murmur2

from agents.state.fold import JOIN_SKEW_S
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from tests.benchmarks import harness
from tests.benchmarks.harness import (
    Plan,
    Report,
    bench_settings,
    cpu_seconds,
    events_total,
    log,
    metric,
    produce_all,
    rss_bytes,
    send_ready_event,
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
#: RSS sampling period of the restarted worker, and its /metrics polling period (scraping
#: costs the worker CPU; reading RSS does not).
PEAK_SAMPLE_S = 0.1
PEAK_POLL_S = 1.0
#: The restarted worker counts as done with the closes once it published no example and
#: used at most :data:`IDLE_CPU_SHARE` of a core (closing, delivering, and learning from
#: the examples each keep a core busy) for this long.
PEAK_QUIET_S = 5.0
IDLE_CPU_SHARE = 0.25


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
    return [
        *rows,
        "restart-to-ready with the loaded users' table state",
        "peak RSS of a worker restarted past every loaded user's label window, as it closes them",
    ]


def peak_while_closing(
    worker: WorkerProcess, timeout: float
) -> tuple[int, int, float, float, float]:
    """Sample ``worker``'s RSS from now until the label windows due are closed, delivered and
    learnt from: no example published and the worker about idle for :data:`PEAK_QUIET_S`,
    or ``timeout`` seconds.

    Returns ``(RSS now, peak RSS, seconds from now to the peak, examples published
    meanwhile, seconds sampled)``.
    """
    assert worker.process is not None
    pid = worker.process.pid
    started = time.monotonic()
    at_ready = peak = rss_bytes(pid)
    peak_at = 0.0
    examples_before = examples = metric(worker, "negstream_examples_total")
    quiet_since, cpu_at_quiet, polled = started, cpu_seconds(pid), started
    while time.monotonic() - started < timeout:
        time.sleep(PEAK_SAMPLE_S)
        rss, now = rss_bytes(pid), time.monotonic()
        if rss > peak:
            peak, peak_at = rss, now - started
        if now - polled < PEAK_POLL_S:
            continue
        polled = now
        published, cpu = metric(worker, "negstream_examples_total"), cpu_seconds(pid)
        if published != examples or cpu - cpu_at_quiet > IDLE_CPU_SHARE * (now - quiet_since):
            examples, quiet_since, cpu_at_quiet = published, now, cpu
        elif now - quiet_since >= PEAK_QUIET_S:
            break
    sampled_s = time.monotonic() - started
    return at_ready, peak, peak_at, examples - examples_before, sampled_s


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
        names[-2],
        f"{ready_s:.2f} s",
        "",
        f"{loaded:,} users recovered from the changelog; /metrics answered after "
        f"{metrics_s:.2f} s; ready = a fresh event counted ({counted:.0f} counted: >1 means "
        f"replayed input); {recovered}",
    )
    # The loaded users' label windows close as event time passes their deadlines. Restarted
    # once wall time is past all of them, a worker closes them all at once, as soon as each
    # partition's fresh event moves its watermark on.
    last_due = start_time + (loaded - 1) * 0.001 + settings.label_window_s + JOIN_SKEW_S
    wait_s = last_due + settings.watermark_delay_s + 1.0 - time.time()
    log(f"closes: restarting once every label window has passed, in {max(0.0, wait_s):.0f} s")
    time.sleep(max(0.0, wait_s))
    closing = start_worker(settings, root / "memory" / "worker3.log", workers)
    producer = sync_producer(settings)
    try:
        for partition, user in enumerate(fresh_users(settings.partitions)):
            send_ready_event(settings, producer, user)
            log(f"  fresh event for partition {partition}")
        wait_for_count(closing, settings.partitions, timeout=plan.recovery_cap_s)
        at_ready, peak, peak_at, closed, sampled_s = peak_while_closing(
            closing, plan.recovery_cap_s
        )
    finally:
        producer.close()
        closing.stop()
    report.add(
        names[-1],
        f"{peak / 2**20:,.0f} MiB",
        "",
        f"RSS {at_ready / 2**20:,.0f} MiB once a fresh event of each partition was counted, "
        f"the peak {peak_at:.1f} s later; sampled every {PEAK_SAMPLE_S:.1f} s for "
        f"{sampled_s:.1f} s, until no example was published and the worker was about idle for "
        f"{PEAK_QUIET_S:.0f} s; {closed:,.0f} examples published meanwhile",
    )


def fresh_users(partitions: int) -> list[str]:
    """A user id for each partition, in partition order (the producer's default
    partitioner: murmur2 of the key)."""
    chosen: dict[int, str] = {}
    n = 0
    while len(chosen) < partitions:
        user = f"fresh-{n}"
        chosen.setdefault((murmur2(user.encode()) & 0x7FFFFFFF) % partitions, user)
        n += 1
    return [chosen[partition] for partition in range(partitions)]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the memory and recovery rows and print their table; return the exit status."""
    description = (__doc__ or "").splitlines()[0]
    return harness.main("bench_memory", description, bench_memory_and_recovery, memory_rows, argv)


if __name__ == "__main__":
    sys.exit(main())
