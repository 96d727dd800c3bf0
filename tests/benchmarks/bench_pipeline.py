"""Whole-pipeline benchmark on a fresh embedded broker with one worker process.

Measures, each as one or more rows of a single markdown table:

1. throughput of the full pipeline on a pre-loaded backlog, against the rate a bare aiokafka
   consumer reads the same topics (the ceiling for a Python consumer here);
2. fast-path latency (feedback produced → suppression consumed) at paced loads, and at the
   target rate the broker's own share: the fast path's first hop (feedback produced → read
   by a plain consumer) alone on fresh topics (and, with ``--hop-during-load``, during the
   worker's load);
3. model-path latency (feedback produced → first model ScoreUpdate naming it);
4. worker memory per active user;
5. start-to-ready of an empty worker (the latency worker's start), and of a restart that
   recovers the users table.

Run ``python -m tests.benchmarks.bench_pipeline [--quick]`` (or ``make bench``). Progress goes
to stderr; the table goes to stdout at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import traceback
import urllib.error
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka import KafkaProducer

from simulator.stream import Simulator, SimulatorConfig
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.settings import Settings
from tests.support import WorkerProcess, isolated_settings

#: Simulator topic labels → settings names of the input topics.
INPUT_TOPICS = {"impressions": "impressions", "negative-feedback": "feedback"}
#: One injected ``not_interested`` probe per this many simulated events.
PROBE_EVERY = 25
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
#: The paced rate the latency targets are stated at.
TARGET_RATE = 1000.0
#: Rates up to this also give a model-path row (at 10k/s it only repeats the backlog).
MODEL_PATH_MAX_RATE = 1000.0
#: Events per user in the memory rows: one impression and one feedback.
EVENTS_PER_USER = 2
#: Users produced at a time while loading, so a capped load leaves no backlog behind that
#: the restarted worker would then count before the fresh event.
USERS_PER_CHUNK = 2500
#: Mean request gap of the throughput backlog: 20 impressions/s of event time, so the label
#: windows (120 s) of most impressions close inside the backlog and training runs.
THROUGHPUT_REQUEST_GAP_S = 0.5


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


def machine_line(load_start: tuple[float, ...], load_end: tuple[float, ...]) -> str:
    """One line naming the machine and its load, since other work shares these cores."""
    fmt = "/".join(f"{x:.2f}" for x in load_start), "/".join(f"{x:.2f}" for x in load_end)
    return (
        f"**bench_pipeline** — {cpu_model()}, {os.cpu_count()} cores, "
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


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (NaN when empty)."""
    return float(np.percentile(values, q)) if values else float("nan")


def events_total(worker: WorkerProcess) -> float:
    """Sum of ``negstream_events_total`` over every type and outcome."""
    samples = worker.metrics()
    return sum(v for (name, _), v in samples.items() if name == "negstream_events_total")


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


def start_worker(settings: Settings, log_path: Path, workers: list[WorkerProcess]) -> WorkerProcess:
    """Start a worker and remember it, so ``main`` stops it whatever happens."""
    worker = WorkerProcess(settings, log_path)
    workers.append(worker)
    return worker.start()


def wait_ready(worker: WorkerProcess, producer: KafkaProducer, user: str, timeout: float) -> None:
    """Send one fresh impression and wait until the input pipeline has counted it.

    The metrics port opens before the consumer group has joined; only a processed event
    shows the input pipeline is really consuming.
    """
    before = events_total(worker)
    value = {"event_id": f"ready-{user}", "user_id": user, "item_id": "ready",
             "timestamp": time.time()}  # fmt: skip
    producer.send(worker.settings.topic("impressions"), orjson.dumps(value), key=user.encode())
    producer.flush()
    wait_for_count(worker, before + 1, timeout)


def sync_producer(settings: Settings) -> KafkaProducer:
    """A kafka-python producer for single events, connected before any timing starts."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=0)
    producer.bootstrap_connected()
    return producer


# --- 1. throughput ------------------------------------------------------------------------

THROUGHPUT_ROWS = ("raw aiokafka consumer", "full pipeline throughput", "pipeline / raw")


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


STARTUP_ROW = "start-to-ready, empty worker"
#: Source name of the broker-only hop: feedback produced → read back by a plain consumer.
BROKER_HOP = "broker"

# --- 2 and 3. latency ---------------------------------------------------------------------


def paced_producer(
    bootstrap: list[str],
    topics: dict[str, str],
    rate: float,
    seconds: float,
    seed: int,
    prefix: str,
    conn: Any,
) -> None:
    """Child process: offer ``rate`` events/s for ``seconds`` with ``not_interested`` probes.

    Runs in its own process so that producing 10k events/s does not delay the parent's
    ``scores`` consumer, whose receive times are the other end of every latency. Sends
    ``(events sent, seconds taken, {probe event_id: produce wall time})`` back on ``conn``.
    """
    try:
        messages = _with_probes(
            simulated(int(rate * seconds), seed, start_time=time.time(), rate=rate), prefix
        )
        result = asyncio.run(_pace(bootstrap, topics, messages, rate))
    except Exception as error:
        conn.send(error)
    else:
        conn.send(result)
    finally:
        conn.close()


def _with_probes(
    messages: list[tuple[str, bytes, bytes]], prefix: str
) -> list[tuple[str, bytes, bytes, str | None]]:
    """Insert a ``not_interested`` on the latest impression every ``PROBE_EVERY`` events."""
    out: list[tuple[str, bytes, bytes, str | None]] = []
    latest: dict[str, Any] | None = None
    for index, (topic, key, value) in enumerate(messages):
        out.append((topic, key, value, None))
        if topic == "impressions":
            latest = orjson.loads(value)
        if index % PROBE_EVERY == PROBE_EVERY - 1 and latest is not None:
            probe_id = f"{prefix}{index}"
            probe = {**latest, "event_id": probe_id, "kind": "not_interested",
                     "timestamp": latest["timestamp"] + 0.5}  # fmt: skip
            out.append(("feedback", latest["user_id"].encode(), orjson.dumps(probe), probe_id))
    return out


async def _pace(
    bootstrap: list[str],
    topics: dict[str, str],
    messages: list[tuple[str, bytes, bytes, str | None]],
    rate: float,
) -> tuple[int, float, dict[str, float]]:
    """Send ``messages`` on a ``rate`` schedule; return (sent, seconds, probe send times).

    Each tick sends every message that is due by then, so a slow tick is caught up at once
    instead of lowering the offered rate.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await producer.start()
    probes: dict[str, float] = {}
    try:
        pending = []
        started = time.perf_counter()
        sent = 0
        while sent < len(messages):
            due = min(len(messages), int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                topic, key, value, probe_id = messages[sent]
                if probe_id is not None:
                    probes[probe_id] = time.time()
                pending.append(await producer.send(topics[topic], value, key=key))
                sent += 1
            if len(pending) > 2000:
                await asyncio.gather(*pending)
                pending.clear()
            await asyncio.sleep(0.001)
        await asyncio.gather(*pending)
        return sent, time.perf_counter() - started, probes
    finally:
        await producer.stop()


def _score_triggers(value: bytes) -> Iterator[tuple[str, str]]:
    """(source, trigger event id) of each event a ``ScoreUpdate`` names."""
    update = orjson.loads(value)
    for event_id in update.get("trigger_event_ids", ()):
        yield update["source"], event_id


def _event_id(value: bytes) -> Iterator[tuple[str, str]]:
    """("broker", event id) of an input event read back as it was produced."""
    yield BROKER_HOP, orjson.loads(value)["event_id"]


async def _collect(
    settings: Settings,
    topic: str,
    keys: Callable[[bytes], Iterator[tuple[str, str]]],
    found: dict[tuple[str, str], float],
    stop: Any,
) -> None:
    """Record the first receive wall time of every key ``keys`` finds in ``topic``'s records."""
    # Tansu holds a fetch for its full max wait even when records arrive (measured: p50
    # 130 ms a hop at aiokafka's default 500 ms, 4 ms at 10 ms): keep it short, so the
    # measuring consumer adds milliseconds, not the broker's wait.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(settings.partitions)])
        await consumer.seek_to_end()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=50)
            received = time.time()
            for records in batches.values():
                for record in records:
                    for key in keys(record.value):
                        found.setdefault(key, received)
    finally:
        await consumer.stop()


async def _paced_run(
    settings: Settings,
    rate: float,
    seconds: float,
    seed: int,
    prefix: str,
    drain_s: float,
    sources: Sequence[str] = ("fast_path", "model"),
) -> tuple[int, float, dict[str, float], dict[tuple[str, str], float]]:
    """One paced load from a child process while this process consumes its results.

    ``sources`` names what is timed: ScoreUpdate sources, read from ``scores``, and
    :data:`BROKER_HOP`, the probes read back from the feedback topic (the broker's own hop).
    Returns what the child sent (count, seconds, probe times) and the receive time of each
    (source, event id), after waiting up to ``drain_s`` for every source of the last probes.
    """
    found: dict[tuple[str, str], float] = {}
    stop = asyncio.Event()
    watched = []
    if BROKER_HOP in sources:
        watched.append(_collect(settings, settings.topic("feedback"), _event_id, found, stop))
    if set(sources) - {BROKER_HOP}:
        watched.append(_collect(settings, settings.topic("scores"), _score_triggers, found, stop))
    collector = asyncio.gather(*watched)
    await asyncio.sleep(1.0)  # the consumer is assigned and at the end before the load starts
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    topics = {name: settings.topic(name) for name in ("impressions", "feedback")}
    child = context.Process(
        target=paced_producer,
        args=(settings.bootstrap_servers, topics, rate, seconds, seed, prefix, send),
        daemon=True,
    )
    child.start()
    send.close()
    try:
        result = await asyncio.get_running_loop().run_in_executor(None, receive.recv)
        if isinstance(result, Exception):
            raise result
        sent, elapsed, probes = result
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            if all((source, p) in found for p in probes for source in sources):
                break
            await asyncio.sleep(0.1)
        return sent, elapsed, probes, found
    finally:
        stop.set()
        await collector
        child.join(10)
        if child.is_alive():
            child.kill()


def _latency_row(
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
    """Row names of the latency section."""
    hops = [broker_hop_row(rate) for rate, _ in plan.latency_loads if rate == TARGET_RATE]
    return hops + [name for rate, _ in plan.latency_loads for name in load_rows(rate, plan)]


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
            _paced_run(settings, rate, seconds, 19, "hop-", plan.drain_s, (BROKER_HOP,))
        )
        _latency_row(report, name, probes, found, BROKER_HOP, None)


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
                    _paced_run(settings, rate, seconds, 20 + index, f"probe{index}-",
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
                _latency_row(report, names[1], probes, found, "fast_path", fast_target)
                if len(names) > 2:
                    model_target = ("p99 ≤ 1 s at 1k/s", 1000.0001) if at_target else None
                    _latency_row(report, names[2], probes, found, "model", model_target)
                if hop:
                    _latency_row(report, names[-1], probes, found, BROKER_HOP, None,
                                 "; the same probes, read from the feedback topic by one more "
                                 "plain consumer during the load")  # fmt: skip
    finally:
        producer.close()
        worker.stop()


# --- 4 and 5. memory, start-up and recovery -------------------------------------------------


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
        value = {"event_id": f"ready-{user}", "user_id": user, "item_id": "ready",
                 "timestamp": time.time()}  # fmt: skip
        producer.send(settings.topic("impressions"), orjson.dumps(value), key=user.encode())
        producer.flush()
        counted = wait_for_count(worker, 1, timeout=timeout)
        return metrics_s, time.monotonic() - spawned, counted, worker
    finally:
        producer.close()


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


# --- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement and print one markdown table; return the exit status."""
    parser = argparse.ArgumentParser(prog="bench_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (< 3 minutes)")
    parser.add_argument(
        "--hop-during-load",
        action="store_true",
        help="also time the fast path's first hop during the 1k/s load (one more consumer)",
    )
    args = parser.parse_args(argv)
    plan = replace(QUICK if args.quick else FULL, hop_during_load=args.hop_during_load)
    load_start = os.getloadavg()
    report = Report()
    workers: list[WorkerProcess] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="negstream-bench-") as tmp:
        root = Path(tmp)
        broker = EmbeddedBroker(log_path=root / "tansu.log")
        try:
            broker.start()
            sections: list[tuple[Callable[..., None], Sequence[str]]] = [
                (bench_throughput, THROUGHPUT_ROWS),
                (bench_latency, [STARTUP_ROW, *latency_rows(plan)]),
                (bench_memory_and_recovery, memory_rows(plan)),
            ]
            for run, names in sections:
                with report.section(names):
                    run(broker, root, plan, report, workers)
        except Exception as error:  # the broker itself failed: report it in the table
            traceback.print_exc(file=sys.stderr)
            report.rows.append(("embedded broker", f"failed: {error}", "", ""))
        finally:
            for worker in workers:
                with contextlib.suppress(Exception):
                    worker.stop()
            broker.stop()
    header = machine_line(load_start, os.getloadavg())
    header += f"; {'quick' if args.quick else 'full'} run, {time.monotonic() - began:.0f} s"
    print(report.markdown(header), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
