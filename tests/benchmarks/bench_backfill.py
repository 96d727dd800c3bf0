"""Backfill: a simulated history replayed at full speed through one worker on the embedded
broker, the heavy-tailed world against a uniform one of the same size, in the same run.

Each world's events are produced first (a backlog, as when bootstrapping from history),
followed on every partition by sentinel events (one impression and one feedback a
partition, an hour after the world's newest event) that move the partition's watermark
past the last label window once read, so the tail is labelled without waiting for wall
time. A worker with the default pipeline settings then reads them.

A backfill is done when every impression's example is out: throughput counts from the
worker's first accepted event to the example of its last impression, so both worlds' times
hold all their labelling (timed to the last accepted event with the sentinels sent after
it, as this bench did before, a world of minutes had most of its label windows closed
after the clock stopped, one of months almost none).

Afterwards the outputs are read back and checked: one example per impression (duplicates
and missing ones counted), every strong negative's item suppressed in a fast-path update
it caused, the event loop's longest hold and the rebalances.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka.partitioner.default import murmur2

from schemas.kinds import STRONG_NEGATIVE
from simulator.stream import IMPRESSIONS_TOPIC, Simulator
from simulator.worlds import HEAVY_QUICK_IMPRESSIONS, world_config
from streams.broker import EmbeddedBroker
from streams.settings import Settings
from tests.benchmarks import bench_state_memory as state_memory
from tests.benchmarks.harness import bench_settings, metric, rss_bytes
from tests.support import WorkerProcess, consume, produce

#: Impressions of each world: quick, and the full run.
QUICK_IMPRESSIONS = HEAVY_QUICK_IMPRESSIONS
FULL_IMPRESSIONS = 300_000
TOPICS = {IMPRESSIONS_TOPIC: "impressions"}


@dataclass
class Result:
    """One world's run."""

    world: str
    events: int
    users: int
    #: Over the time from the first accepted event to the last impression's example.
    events_per_s: float
    examples: int
    impressions: int
    duplicates: int
    missing: int
    strong_negatives: int
    unsuppressed: int
    loop_lag_max_ms: float
    rebalances: int
    late: int
    excluded: int
    rss_per_user_bytes: float


def _messages(world: str, impressions: int, seed: int) -> tuple[list[tuple[str, bytes, Any]], Any]:
    simulator = Simulator(world_config(world, seed=seed))
    messages = []
    for event in simulator.events(impressions):
        topic = TOPICS.get(event.topic, "feedback")
        messages.append((topic, event.key.encode(), event.value))
    return messages, simulator


def _sentinels(settings: Settings, after: float) -> list[tuple[str, bytes, Any]]:
    """One impression and one feedback event on every partition, at ``after``."""
    keys: dict[int, str] = {}
    n = 0
    while len(keys) < settings.partitions:
        key = f"sentinel-{n}"
        # The producer's default partitioner: murmur2 of the key.
        keys.setdefault((murmur2(key.encode()) & 0x7FFFFFFF) % settings.partitions, key)
        n += 1
    messages: list[tuple[str, bytes, Any]] = []
    for key in keys.values():
        base = {"user_id": key, "item_id": "sentinel", "timestamp": after}
        messages.append(("impressions", key.encode(), {**base, "event_id": f"{key}-i"}))
        messages.append(
            ("feedback", key.encode(), {**base, "event_id": f"{key}-f", "kind": "click"})
        )
    return messages


def metric_sum(samples: dict[tuple[str, Any], float], name: str) -> float:
    """Sum of one metric's samples over all labels, from a scrape."""
    return sum(v for (n, _), v in samples.items() if n == name)


def _wait_metric(
    worker: WorkerProcess, names: str | tuple[str, ...], target: float, timeout: float
) -> float:
    """Wait until the sum of the metrics ``names`` reaches ``target``; return the sum.
    Raises :class:`TimeoutError` past ``timeout`` seconds: a rate timed to a timeout would
    measure the timeout."""
    names = (names,) if isinstance(names, str) else names
    deadline = time.monotonic() + timeout
    while True:
        samples = worker.metrics()
        value = sum(metric_sum(samples, name) for name in names)
        if value >= target:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{' + '.join(names)} reached {value:,.0f} of {target:,.0f} in {timeout:,.0f} s"
                f":\n{worker.log()[-2000:]}"
            )
        time.sleep(0.2)


def run_world(
    broker: EmbeddedBroker, root: Path, world: str, impressions: int, seed: int
) -> Result:
    """Replay one world through a fresh worker and check its outputs."""
    settings = bench_settings(broker, root / world)
    messages, _ = _messages(world, impressions, seed)
    values = [value for _, _, value in messages if isinstance(value, dict)]
    imp_ids = {
        v["event_id"]
        for (topic, _, v) in messages
        if topic == "impressions" and isinstance(v, dict)
    }
    strong = {v["event_id"]: v["item_id"] for v in values if v.get("kind") in STRONG_NEGATIVE}
    users = len({v["user_id"] for v in values})
    newest = max(
        float(v["timestamp"]) for v in values if isinstance(v.get("timestamp"), float | int)
    )
    # Last on every partition: read once all of the partition's events are.
    sentinels = _sentinels(settings, newest + 3600.0)
    produce(settings, [*messages, *sentinels])
    worker = WorkerProcess(settings, root / f"{world}.log").start()
    try:
        idle_rss = rss_bytes(worker.process.pid)  # type: ignore[union-attr]
        # The worker's first accepted event starts the clock; the labelling of the last
        # impression stops it.
        started = time.monotonic()
        while metric(worker, "negstream_events_total") == 0:
            time.sleep(0.05)
            if time.monotonic() - started > 120:
                raise TimeoutError(f"the worker read nothing:\n{worker.log()[-2000:]}")
        first = time.monotonic()
        expected = len(messages) + len(sentinels)
        total = _wait_metric(worker, "negstream_events_total", expected, timeout=3600)
        # An impression the abuse guard withholds is labelled without an example.
        labelled = ("negstream_examples_total", "negstream_examples_excluded_total")
        _wait_metric(worker, labelled, len(imp_ids), timeout=600)
        elapsed = time.monotonic() - first
        total -= len(sentinels)
        time.sleep(2.0)  # fast-path updates of the last batch
        samples = worker.metrics()
        rss = rss_bytes(worker.process.pid)  # type: ignore[union-attr]
    finally:
        worker.stop()
    # Read back at least what the worker says it published (more when copies were written),
    # stopping at the first pause after that: a large topic takes the broker a while.
    published = metric_sum(samples, "negstream_examples_total")
    examples = [
        orjson.loads(v)
        for _, v in consume(settings, "examples", lambda m: len(m) >= published, timeout=600)
    ]
    counts = Counter(e["example_id"] for e in examples if e["example_id"] in imp_ids)
    published = metric_sum(samples, "negstream_score_updates_total")
    updates = [
        orjson.loads(v)
        for _, v in consume(settings, "scores", lambda m: len(m) >= published, timeout=600)
    ]
    suppressed: set[str] = set()
    for update in updates:
        if update["source"] != "fast_path":
            continue
        items = {s["target_id"] for s in update["suppressions"] if s["target_type"] == "item"}
        for event_id in update["trigger_event_ids"]:
            if strong.get(event_id) in items:
                suppressed.add(event_id)
    late = sum(v for (n, labels), v in samples.items()
               if n == "negstream_events_total" and ("outcome", "late") in labels)  # fmt: skip
    excluded = sum(v for (n, _), v in samples.items() if n == "negstream_examples_excluded_total")
    lag = max(
        (v for (n, _), v in samples.items() if n == "negstream_event_loop_lag_max_seconds"),
        default=0.0,
    )
    assignments = sum(
        v for (n, _), v in samples.items() if n == "negstream_partition_assignments_total"
    )
    return Result(
        world=world,
        events=int(total),
        users=users,
        events_per_s=total / max(elapsed, 1e-9),
        examples=sum(counts.values()),
        impressions=len(imp_ids),
        duplicates=sum(c - 1 for c in counts.values()),
        missing=len(imp_ids - set(counts)),
        strong_negatives=len(strong),
        unsuppressed=len(set(strong) - suppressed),
        loop_lag_max_ms=lag * 1000,
        rebalances=max(0, int(assignments) - 1),
        late=int(late),
        excluded=int(excluded),
        rss_per_user_bytes=max(0, rss - idle_rss) / max(users, 1),
    )


def table(results: Sequence[Result]) -> str:
    """The results as a Markdown table."""
    head = ("world", "events", "users", "events/s", "examples", "impressions", "duplicates",
            "missing", "late events", "excluded (abuse guard)", "strong negatives",
            "unsuppressed", "loop lag max (ms)", "rebalances",
            "worker RSS growth / user (B, model and buffers included)")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = (r.world, f"{r.events:,}", f"{r.users:,}", f"{r.events_per_s:,.0f}",
                 f"{r.examples:,}", f"{r.impressions:,}", r.duplicates, r.missing, r.late,
                 r.excluded,
                 f"{r.strong_negatives:,}", r.unsuppressed, f"{r.loop_lag_max_ms:.0f}",
                 r.rebalances, f"{r.rss_per_user_bytes:,.0f}")  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both worlds; print the table and the ``backfill:`` line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_backfill",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_IMPRESSIONS:,} impressions a world")  # fmt: skip
    parser.add_argument("--impressions", type=int, default=None,
                        help=f"impressions a world (default {FULL_IMPRESSIONS:,})")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the workers' logs")
    parser.add_argument("--memory-users", type=int, default=100_000,
                        help="users of the heavy world whose state memory is measured "
                             "(full runs only; 0 skips it)")  # fmt: skip
    parser.add_argument("--memory-impressions", type=int, default=1_000_000,
                        help="impressions folded for the memory measurement")  # fmt: skip
    args = parser.parse_args(argv)
    impressions = args.impressions or (QUICK_IMPRESSIONS if args.quick else FULL_IMPRESSIONS)
    root = Path(tempfile.mkdtemp(prefix="negstream-backfill-"))
    try:
        with EmbeddedBroker(log_path=root / "tansu.log") as broker:
            heavy = run_world(broker, root, "heavy", impressions, args.seed)
            uniform = run_world(broker, root, "uniform", impressions, args.seed)
    finally:
        if args.keep:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"## backfill ({impressions:,} impressions a world, seed {args.seed})\n")
    print(table([heavy, uniform]))
    if not args.quick and args.memory_users:
        memory = state_memory.measure(args.memory_users, args.memory_impressions, args.seed)
        print(f"\nper-user state, heavy world of {args.memory_users:,} users, "
              f"{args.memory_impressions:,} impressions folded in-process: {memory.active:,} "
              f"active users, {memory.rss_per_user:,.0f} B resident per active user "
              f"({memory.retained_per_user:,.0f} B retained by the states)")  # fmt: skip
    print(
        f"\nbackfill: events={heavy.events} events_per_s={heavy.events_per_s:.0f} "
        f"uniform_events_per_s={uniform.events_per_s:.0f} examples={heavy.examples} "
        f"impressions={heavy.impressions} duplicates={heavy.duplicates} "
        f"missing={heavy.missing} unsuppressed={heavy.unsuppressed} "
        f"loop_lag_max_ms={heavy.loop_lag_max_ms:.0f} rebalances={heavy.rebalances}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
