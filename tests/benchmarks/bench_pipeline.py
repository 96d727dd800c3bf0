"""Pipeline throughput benchmark: one worker through a pre-loaded backlog, against a bare consumer.

Rows: the rate a bare aiokafka consumer reads the input topics (the ceiling for a Python
consumer here), the full pipeline's rate through the same backlog, and their ratio.

Run ``python -m tests.benchmarks.bench_pipeline [--quick]`` (``make bench`` runs it with the
other sections). Progress goes to stderr; the table goes to stdout at the end. The peers
benchmark (``bench/peers``) runs the same worker with this module's settings and reads its
counters with this module's ``events_total``, ``metric``, ``cpu_seconds`` and ``rss_bytes``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.settings import Settings
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
    simulated,
    start_worker,
    wait_for_count,
)
from tests.support import WorkerProcess

__all__ = ["bench_throughput", "cpu_seconds", "events_total", "main", "metric", "rss_bytes"]

#: Mean request gap of the throughput backlog: 20 impressions/s of event time, so the label
#: windows (120 s) of most impressions close inside the backlog and training runs.
THROUGHPUT_REQUEST_GAP_S = 0.5
THROUGHPUT_ROWS = ("raw aiokafka consumer", "full pipeline throughput", "pipeline / raw")


def throughput_rows(plan: Plan) -> Sequence[str]:
    """Row names of the throughput section (the same for every plan)."""
    return THROUGHPUT_ROWS


def input_partitions(settings: Settings) -> list[TopicPartition]:
    """Every partition of both input topics."""
    return [
        TopicPartition(settings.topic(name), p)
        for name in ("impressions", "feedback")
        for p in range(settings.partitions)
    ]


async def raw_consume(settings: Settings, expected: int, timeout: float = 120.0) -> float:
    """Messages per second a bare aiokafka consumer reads from the inputs' beginning.

    No group, every partition assigned, a ``getmany`` loop and no processing: the ceiling
    any Python consumer of these topics reaches on this broker and machine.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign(input_partitions(settings))
        await consumer.seek_to_beginning()
        count = 0
        started = time.perf_counter()
        deadline = started + timeout
        while count < expected:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            count += sum(len(records) for records in batches.values())
            if time.perf_counter() > deadline:
                raise TimeoutError(f"raw consumer read {count}/{expected} in {timeout}s")
        return count / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def bench_throughput(
    broker: EmbeddedBroker, root: Path, plan: Plan, report: Report, workers: list[WorkerProcess]
) -> None:
    """Pre-load a backlog, read it with a bare consumer, then time the worker through it."""
    n = plan.throughput_events
    settings = bench_settings(broker, root / "throughput")
    ensure_topics(settings)
    log(f"throughput: generating and producing {n} simulated events")
    messages = simulated(n, seed=11, request_gap_s=THROUGHPUT_REQUEST_GAP_S)
    produce_rate = asyncio.run(produce_all(settings, messages))
    raw_rate = asyncio.run(raw_consume(settings, n))
    report.add(
        THROUGHPUT_ROWS[0],
        f"{raw_rate:,.0f} events/s",
        "ceiling",
        f"{n:,} events, 2 topics x {settings.partitions} partitions, getmany, no processing "
        f"(aiokafka producer loaded them at {produce_rate:,.0f}/s)",
    )
    spawned = time.monotonic()
    worker = start_worker(settings, root / "throughput" / "worker.log", workers)
    assert worker.process is not None
    pid = worker.process.pid
    first: list[tuple[float, float, float]] = []

    def remember_first(count: float) -> None:
        if count > 0 and not first:
            first.append((time.monotonic(), count, cpu_seconds(pid)))

    try:
        try:
            # Scraping /metrics costs the worker CPU: poll slowly while it is being timed.
            count = wait_for_count(worker, n, plan.throughput_cap_s, remember_first, every=0.5)
            capped = ""
        except TimeoutError:
            count = events_total(worker)
            capped = "; **stopped at the time cap**"
        done, cpu_done = time.monotonic(), cpu_seconds(pid)
        if not first:
            raise TimeoutError("the worker counted no event")
        t_first, c_first, cpu_first = first[0]
        elapsed = max(done - t_first, 1e-9)
        rate = (count - c_first) / elapsed
        cpu_share = (cpu_done - cpu_first) / elapsed
        trained = metric(worker, "negstream_train_examples_total")
        updates = metric(worker, "negstream_score_updates_total")
        examples = metric(worker, "negstream_examples_total")
    finally:
        worker.stop()
    report.add(
        THROUGHPUT_ROWS[1],
        f"{rate:,.0f} events/s",
        f"≥ {raw_rate / 2:,.0f}/s (50% of raw)",
        f"{count:,.0f} of {n:,} counted in {elapsed:.1f} s from the first count{capped}; "
        f"{count / (done - spawned):,.0f}/s counting worker start-up; worker CPU "
        f"{cpu_share:.0%} of one core; {examples:,.0f} examples published, "
        f"{trained:,.0f} learned, {updates:,.0f} ScoreUpdates",
    )
    ratio = rate / raw_rate
    report.add(
        THROUGHPUT_ROWS[2], f"{ratio:.1%}", "≥ 50%", "met" if ratio >= 0.5 else "**NOT MET**"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the throughput rows and print their table; return the exit status."""
    description = (__doc__ or "").splitlines()[0]
    return harness.main("bench_pipeline", description, bench_throughput, throughput_rows, argv)


if __name__ == "__main__":
    sys.exit(main())
