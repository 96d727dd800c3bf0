"""Shared harness of the pipeline benchmarks: run plans, settings, real worker processes and
their readiness, producers, /metrics scraping, and the one markdown table each prints.

Each ``bench_<section>.py`` module holds one section and runs it through :func:`main` on a
fresh embedded broker, against the real worker (``python -m negstream worker``, started by
:class:`tests.support.WorkerProcess`): the figures measure its own code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from kafka import KafkaProducer

from schemas.kinds import NEGATIVE_KINDS
from simulator.stream import Simulator, SimulatorConfig
from streams.broker import EmbeddedBroker
from streams.settings import Settings
from tests.driver import FoldDriver
from tests.support import WorkerProcess, isolated_settings

#: Simulator topic labels → settings names of the input topics.
INPUT_TOPICS = {"impressions": "impressions", "negative-feedback": "feedback"}
#: Feedback events per impression in the default simulator world (measured: ~0.46), used
#: to pace event time with wall time.
EVENTS_PER_IMPRESSION = 1.46
#: Poll period of /metrics while waiting for a count; short enough for sub-second timings,
#: long enough not to load the worker.
POLL_S = 0.1

Row = tuple[str, str, str, str]


@dataclass(frozen=True)
class Plan:
    """Sizes and time caps of one run; ``--quick`` picks the small one.

    The caps keep a slow worker from blowing the run's time budget: a row that hits one
    reports what was measured up to it and says so.

    Attributes
    ----------
    throughput_events : int
        Events pre-loaded for the throughput rows.
    throughput_cap_s : float
        Longest time the worker is timed on that backlog.
    latency_loads : tuple of (float, float)
        ``(events/s, seconds)`` of each paced load, in order on one worker. 100/s is an
        unsaturated baseline; the targets are stated at 1k/s.
    drain_s : float
        Longest wait after a paced load for the last probes' ScoreUpdates.
    memory_users : tuple of int
        Cumulative active-user counts at which worker RSS is read.
    memory_cap_s : float
        Longest time spent loading users; the restart recovers whatever was loaded.
    recovery_cap_s : float
        Longest wait for the restarted worker to be ready.
    hop_during_load : bool
        Also time the target-rate probes' first hop with one more plain consumer during the
        load. That consumer loads the broker too and lengthens the fast path's tail, so it is
        off unless asked for (``--hop-during-load``).
    """

    throughput_events: int
    throughput_cap_s: float
    latency_loads: tuple[tuple[float, float], ...]
    drain_s: float
    memory_users: tuple[int, ...]
    memory_cap_s: float
    recovery_cap_s: float
    hop_during_load: bool = False


FULL = Plan(
    50_000, 75.0, ((100.0, 10.0), (1000.0, 20.0), (10_000.0, 6.0)), 12.0, (10_000, 100_000),
    240.0, 240.0,
)  # fmt: skip
QUICK = Plan(
    10_000, 15.0, ((100.0, 4.0), (1000.0, 6.0), (10_000.0, 3.0)), 5.0, (10_000,), 35.0, 60.0
)


@dataclass
class Report:
    """Rows of the one table, in the order measured."""

    rows: list[Row] = field(default_factory=list)

    def add(self, name: str, value: str, target: str = "", notes: str = "") -> None:
        """Append one measured row; also echo it on stderr so a long run shows progress."""
        self.rows.append((name, value, target, notes))
        log(f"  {name}: {value} {notes}")

    @contextlib.contextmanager
    def section(self, names: Sequence[str]) -> Iterator[None]:
        """Run one section; on failure add "failed: reason" rows for what it did not add.

        One broken measurement must not lose the others, so errors are caught here and the
        run goes on with the next section.
        """
        before = {row[0] for row in self.rows}
        try:
            yield
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            done = {row[0] for row in self.rows} - before
            reason = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
            for name in names:
                if name not in done:
                    self.rows.append((name, reason, "", ""))

    def markdown(self, header: str) -> str:
        """The header line and the table."""
        lines = [header, "", "| measurement | value | target | notes |", "|---|---|---|---|"]
        for row in self.rows:
            lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
        return "\n".join(lines)


def log(text: str) -> None:
    """Progress on stderr, so stdout holds only the table."""
    print(text, file=sys.stderr, flush=True)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_line(name: str, load_start: tuple[float, ...], load_end: tuple[float, ...]) -> str:
    """One line naming the benchmark, the machine and its load (other work shares the cores)."""
    fmt = "/".join(f"{x:.2f}" for x in load_start), "/".join(f"{x:.2f}" for x in load_end)
    return (
        f"**{name}** — {cpu_model()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average (1/5/15 min) "
        f"{fmt[0]} at start, {fmt[1]} at end"
    )


def bench_settings(broker: EmbeddedBroker, data_dir: Path, **changes: Any) -> Settings:
    """Isolated topics, group and port, but the production pipeline timings.

    ``isolated_settings`` shortens the label window and watermark delay for tests; the
    benchmark puts the defaults back so it measures what a deployment runs.
    """
    defaults = Settings()
    values: dict[str, Any] = {
        "label_window_s": defaults.label_window_s,
        "watermark_delay_s": defaults.watermark_delay_s,
        "idle_flush_s": defaults.idle_flush_s,
        "device": "cpu",
    }
    values.update(changes)
    data_dir.mkdir(parents=True, exist_ok=True)
    return isolated_settings(broker.url, data_dir, **values)


def negative_label(example: dict[str, Any]) -> int:
    """1 for an example with any negative kind (``schemas.kinds.NEGATIVE_KINDS``), else 0."""
    return int(any(kind in NEGATIVE_KINDS for kind in example["kinds"]))


def folded_examples(
    settings: Settings, events: Sequence[tuple[str, bytes, Any]]
) -> list[dict[str, Any]]:
    """The training examples the worker's own fold (:class:`tests.driver.FoldDriver`) joins
    from ``events`` (``(topic setting, key, value)``), fed in ``settings.batch_size`` batches."""
    driver = FoldDriver(settings)

    async def fold() -> None:
        for first in range(0, len(events), settings.batch_size):
            batch = events[first : first + settings.batch_size]
            await driver.feed([driver.message(t, k, orjson.dumps(v)) for t, k, v in batch])
        await driver.finish()

    asyncio.run(fold())
    return list(driver.captured.examples)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (NaN when empty)."""
    return float(np.percentile(values, q)) if values else float("nan")


# --- the worker: metrics, processes, readiness -------------------------------------------------


def events_total(worker: WorkerProcess) -> float:
    """Sum of ``negstream_events_total`` over every type and outcome."""
    return metric(worker, "negstream_events_total")


def metric(worker: WorkerProcess, name: str) -> float:
    """Sum of one metric's samples over all labels."""
    return sum(v for (n, _), v in worker.metrics().items() if n == name)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat (utime, stime), counted after the ")" that ends the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_for_count(
    worker: WorkerProcess,
    target: float,
    timeout: float,
    on_sample: Callable[[float], None] | None = None,
    every: float = POLL_S,
) -> float:
    """Poll /metrics every ``every`` seconds until ``negstream_events_total`` reaches
    ``target``; return the count."""
    deadline = time.monotonic() + timeout
    while True:
        count = events_total(worker)
        if on_sample is not None:
            on_sample(count)
        if count >= target:
            return count
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"negstream_events_total {count:.0f} < {target:.0f} after {timeout}s"
            )
        time.sleep(every)


def start_worker(settings: Settings, log_path: Path, workers: list[WorkerProcess]) -> WorkerProcess:
    """Start a worker and remember it, so :func:`main` stops it whatever happens."""
    worker = WorkerProcess(settings, log_path)
    workers.append(worker)
    return worker.start()


def sync_producer(settings: Settings) -> KafkaProducer:
    """A kafka-python producer for single events, connected before any timing starts."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=0)
    producer.bootstrap_connected()
    return producer


def send_ready_event(settings: Settings, producer: KafkaProducer, user: str) -> None:
    """Send one fresh impression of ``user``, for a worker to count."""
    value = {"event_id": f"ready-{user}", "user_id": user, "item_id": "ready",
             "timestamp": time.time()}  # fmt: skip
    producer.send(settings.topic("impressions"), orjson.dumps(value), key=user.encode())
    producer.flush()


def wait_ready(worker: WorkerProcess, producer: KafkaProducer, user: str, timeout: float) -> None:
    """Send one fresh impression and wait until the input pipeline has counted it.

    The metrics port opens before the consumer group has joined; only a processed event
    shows the input pipeline is really consuming.
    """
    before = events_total(worker)
    send_ready_event(worker.settings, producer, user)
    wait_for_count(worker, before + 1, timeout)


def time_to_ready(
    settings: Settings,
    log_path: Path,
    workers: list[WorkerProcess],
    user: str,
    timeout: float = 120.0,
) -> tuple[float, float, float, WorkerProcess]:
    """Seconds from spawn to /metrics answering and to a fresh event counted.

    Returns ``(metrics_s, ready_s, events counted, worker)``; the caller stops the worker.
    """
    producer = sync_producer(settings)
    try:
        spawned = time.monotonic()
        worker = start_worker(settings, log_path, workers)
        worker.metrics()
        metrics_s = time.monotonic() - spawned
        send_ready_event(settings, producer, user)
        counted = wait_for_count(worker, 1, timeout=timeout)
        return metrics_s, time.monotonic() - spawned, counted, worker
    finally:
        producer.close()


# --- input ----------------------------------------------------------------------------------


def simulated(
    n_events: int,
    seed: int,
    start_time: float | None = None,
    rate: float | None = None,
    request_gap_s: float | None = None,
) -> list[tuple[str, bytes, bytes]]:
    """``n_events`` simulated input messages as ``(topic setting, key, value)``.

    With ``rate``, the request gap is set so event time advances about as fast as wall time
    at that many events per second, as it would for a live stream; ``request_gap_s`` sets
    it directly.
    """
    changes: dict[str, Any] = {"seed": seed, "keep_ground_truth": False}
    if start_time is not None:
        changes["start_time"] = start_time
    if rate is not None:
        impressions = SimulatorConfig.impressions_per_request
        changes["mean_request_gap_s"] = impressions * EVENTS_PER_IMPRESSION / rate
    if request_gap_s is not None:
        changes["mean_request_gap_s"] = request_gap_s
    simulator = Simulator(SimulatorConfig(**changes))
    # Feedback follows its impression, so impressions alone bound the events needed.
    stream = simulator.events(n_events)
    return [
        (INPUT_TOPICS[e.topic], e.key.encode(), orjson.dumps(e.value))
        for e in itertools.islice(stream, n_events)
    ]


async def produce_all(settings: Settings, messages: Sequence[tuple[str, bytes, bytes]]) -> float:
    """Send every message with a batching aiokafka producer; return messages per second.

    Input topics are not table changelogs, so Tansu's multi-record-batch offset bug does not
    apply and the producer may batch.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        started = time.perf_counter()
        pending = []
        for topic, key, value in messages:
            pending.append(await producer.send(settings.topic(topic), value, key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return len(messages) / (time.perf_counter() - started)
    finally:
        await producer.stop()


# --- running a section ----------------------------------------------------------------------

#: A section: measures on the broker under a scratch folder, adds its rows to the report and
#: appends every worker it starts to the list, so :func:`main` stops them whatever happens.
Measure = Callable[[EmbeddedBroker, Path, Plan, Report, list[WorkerProcess]], None]


def main(
    name: str,
    description: str,
    measure: Measure,
    rows: Callable[[Plan], Sequence[str]],
    argv: Sequence[str] | None = None,
    hop_during_load: bool = False,
) -> int:
    """Run one section on a fresh embedded broker and print its markdown table.

    Parses ``--quick`` (and ``--hop-during-load`` where the section takes it). ``rows``
    names the rows the section adds: if it raises, those it did not add say "failed".
    Returns the exit status.
    """
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    if hop_during_load:
        parser.add_argument(
            "--hop-during-load",
            action="store_true",
            help="also time the fast path's first hop during the 1k/s load (one more consumer)",
        )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if hop_during_load:
        plan = replace(plan, hop_during_load=args.hop_during_load)
    load_start = os.getloadavg()
    report = Report()
    workers: list[WorkerProcess] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="negstream-bench-") as tmp:
        root = Path(tmp)
        broker = EmbeddedBroker(log_path=root / "tansu.log")
        try:
            broker.start()
            with report.section(rows(plan)):
                measure(broker, root, plan, report, workers)
        except Exception as error:  # the broker itself failed: report it in the table
            traceback.print_exc(file=sys.stderr)
            report.rows.append(("embedded broker", f"failed: {error}", "", ""))
        finally:
            for worker in workers:
                with contextlib.suppress(Exception):
                    worker.stop()
            broker.stop()
    header = machine_line(name, load_start, os.getloadavg())
    header += f"; {'quick' if args.quick else 'full'} run, {time.monotonic() - began:.0f} s"
    print(report.markdown(header), flush=True)
    return 0
