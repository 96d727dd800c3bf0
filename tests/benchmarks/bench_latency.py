"""Pipeline latency benchmark: fast-path and model-path latency of one worker at paced loads.

Rows, in order:

1. the broker's own share at the target rate: the fast path's first hop (feedback produced →
   read by a plain consumer) alone on fresh topics;
2. start-to-ready of an empty worker (the latency worker's start);
3. at each paced load: the rate offered, fast-path latency (feedback produced → suppression
   consumed) and, up to 1k/s, model-path latency (feedback produced → first model
   ScoreUpdate naming it); with ``--hop-during-load``, also the first hop during the worker's
   1k/s load.

Run ``python -m tests.benchmarks.bench_latency [--quick] [--hop-during-load]`` (``make bench``
runs it with the other sections). Progress goes to stderr; the table goes to stdout at the end.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from tests.benchmarks import harness
from tests.benchmarks.harness import (
    Plan,
    Report,
    bench_settings,
    events_total,
    log,
    percentile,
    sync_producer,
    time_to_ready,
    wait_ready,
)
from tests.benchmarks.pacing import BROKER_HOP, paced_run
from tests.support import WorkerProcess

#: The paced rate the latency targets are stated at.
TARGET_RATE = 1000.0
#: Rates up to this also give a model-path row (at 10k/s it only repeats the backlog).
MODEL_PATH_MAX_RATE = 1000.0
STARTUP_ROW = "start-to-ready, empty worker"


def latency_row(
    report: Report,
    name: str,
    probes: dict[str, float],
    found: dict[tuple[str, str], float],
    source: str,
    target: tuple[str, float] | None,
    context: str = "",
) -> None:
    """Add p50/p99 of probe → first ``source`` result; ``target`` is (text, p99 ms).

    The notes give the p99 of each third of the run too: on a broker whose fetches slow down
    as its logs grow (Tansu 0.6.0), latency climbs during a run.
    """
    timed = sorted((t, 1e3 * (found[(source, p)] - t)) for p, t in probes.items()
                   if (source, p) in found)  # fmt: skip
    latencies = [latency for _, latency in timed]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    verdict = ""
    if target is not None:
        verdict = "met; " if latencies and p99 < target[1] else "**NOT MET**; "
    thirds = [latencies[i * len(latencies) // 3 : (i + 1) * len(latencies) // 3] for i in range(3)]
    by_third = " / ".join(f"{percentile(third, 99):,.0f}" for third in thirds)
    notes = f"{verdict}matched {len(latencies)}/{len(probes)} probes"
    if latencies:
        notes += f", max {max(latencies):,.0f} ms; p99 by third of the run {by_third} ms"
    notes += context
    report.add(name, f"p50 {p50:,.1f} ms, p99 {p99:,.1f} ms", target[0] if target else "", notes)


def broker_hop_row(rate: float) -> str:
    """Row name of the broker-only hop at ``rate``."""
    return f"broker hop alone @ {rate:,.0f}/s"


def load_rows(rate: float, plan: Plan) -> list[str]:
    """Row names of one paced load."""
    names = [f"offered load {rate:,.0f}/s", f"fast-path latency @ {rate:,.0f}/s"]
    if rate <= MODEL_PATH_MAX_RATE:
        names.append(f"model-path latency @ {rate:,.0f}/s")
    if rate == TARGET_RATE and plan.hop_during_load:
        names.append(f"broker hop during that load @ {rate:,.0f}/s")
    return names


def latency_rows(plan: Plan) -> list[str]:
    """Row names of the latency section, the start-up row among them."""
    hops = [broker_hop_row(rate) for rate, _ in plan.latency_loads if rate == TARGET_RATE]
    loads = [name for rate, _ in plan.latency_loads for name in load_rows(rate, plan)]
    return [*hops, STARTUP_ROW, *loads]


def bench_broker_hop(
    broker: EmbeddedBroker, root: Path, plan: Plan, report: Report, rate: float, seconds: float
) -> None:
    """The first hop of the fast path with no worker: the broker's share of its latency.

    The same paced load (producer, rate, probes) goes to fresh topics, and a plain consumer
    of the feedback topic, set like the measuring one, times each probe from its send to
    its receipt. The fast path crosses the broker twice (feedback in, scores out).
    """
    settings = bench_settings(broker, root / "broker-hop")
    ensure_topics(settings)
    name = broker_hop_row(rate)
    with report.section((name,)):
        log(f"latency: broker hop alone, {rate:,.0f} events/s for {seconds:.0f} s")
        _, _, probes, found = asyncio.run(
            paced_run(settings, rate, seconds, 19, "hop-", plan.drain_s, (BROKER_HOP,))
        )
        latency_row(report, name, probes, found, BROKER_HOP, None)


def bench_latency(
    broker: EmbeddedBroker, root: Path, plan: Plan, report: Report, workers: list[WorkerProcess]
) -> None:
    """Paced loads with ``not_interested`` probes; time each probe to its ScoreUpdates."""
    for rate, seconds in plan.latency_loads:
        if rate == TARGET_RATE:
            bench_broker_hop(broker, root, plan, report, rate, seconds)
    settings = bench_settings(broker, root / "latency")
    ensure_topics(settings)
    # The latency worker starts on existing, empty topics: its start-up is the empty row.
    with report.section((STARTUP_ROW,)):
        log("start-up: empty worker")
        metrics_s, ready_s, _, _ = time_to_ready(
            settings, root / "latency" / "worker.log", workers, "fresh-empty"
        )
        report.add(
            STARTUP_ROW,
            f"{ready_s:.2f} s",
            "",
            f"/metrics answered after {metrics_s:.2f} s; ready = a fresh event counted "
            "(topics created beforehand)",
        )
    worker = workers[-1]
    producer = sync_producer(settings)
    try:
        wait_ready(worker, producer, "latency-warmup", timeout=60)
        offered = events_total(worker)
        for index, (rate, seconds) in enumerate(plan.latency_loads):
            log(f"latency: {rate:,.0f} events/s for {seconds:.0f} s")
            names = load_rows(rate, plan)
            at_target = rate == TARGET_RATE
            hop = at_target and plan.hop_during_load
            with report.section(names):
                before = events_total(worker)
                # Events an earlier, overloaded run left unprocessed queue ahead of this one.
                backlog = offered - before
                # Asked for, a plain consumer of the feedback topic also times each probe's
                # first hop: the broker's share of the fast path in the same run.
                sources = ("fast_path", "model", BROKER_HOP) if hop else ("fast_path", "model")
                sent, elapsed, probes, found = asyncio.run(
                    paced_run(settings, rate, seconds, 20 + index, f"probe{index}-",
                              plan.drain_s, sources)
                )  # fmt: skip
                offered += sent
                processed = events_total(worker) - before
                achieved = sent / elapsed
                report.add(
                    names[0],
                    f"{achieved:,.0f} events/s achieved",
                    f"{rate:,.0f}/s",
                    f"{sent:,} events in {elapsed:.1f} s"
                    + ("" if achieved >= 0.95 * rate else " — **offered rate not reached**")
                    + f"; worker backlog at the start {backlog:,.0f}; it counted "
                    f"{processed:,.0f} by the end of the drain",
                )
                fast_target = ("p99 < 50 ms at 1k/s", 50.0) if at_target else None
                latency_row(report, names[1], probes, found, "fast_path", fast_target)
                if len(names) > 2:
                    model_target = ("p99 ≤ 1 s at 1k/s", 1000.0001) if at_target else None
                    latency_row(report, names[2], probes, found, "model", model_target)
                if hop:
                    latency_row(report, names[-1], probes, found, BROKER_HOP, None,
                                "; the same probes, read from the feedback topic by one more "
                                "plain consumer during the load")  # fmt: skip
    finally:
        producer.close()
        worker.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the latency rows and print their table; return the exit status."""
    description = (__doc__ or "").splitlines()[0]
    return harness.main(
        "bench_latency", description, bench_latency, latency_rows, argv, hop_during_load=True
    )


if __name__ == "__main__":
    sys.exit(main())
