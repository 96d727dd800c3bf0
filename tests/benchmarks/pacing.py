"""Paced loads with ``not_interested`` probes, and the consumers that time each probe.

A child process offers the load (so producing 10k events/s does not delay the measuring
consumers); this process reads ``scores`` (and, asked, the feedback topic) and records when
each probe's result first arrives. :mod:`tests.benchmarks.bench_latency` turns the times
into rows.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.settings import Settings
from tests.benchmarks.harness import simulated

#: One injected ``not_interested`` probe per this many simulated events.
PROBE_EVERY = 25
#: Source name of the broker-only hop: feedback produced → read back by a plain consumer.
BROKER_HOP = "broker"

#: ``(topic setting, key, value, probe event id or None)`` in the order sent.
Paced = tuple[str, bytes, bytes, str | None]


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
        messages = with_probes(
            simulated(int(rate * seconds), seed, start_time=time.time(), rate=rate), prefix
        )
        result = asyncio.run(pace(bootstrap, topics, messages, rate))
    except Exception as error:
        conn.send(error)
    else:
        conn.send(result)
    finally:
        conn.close()


def with_probes(messages: list[tuple[str, bytes, bytes]], prefix: str) -> list[Paced]:
    """Insert a ``not_interested`` on the latest impression every ``PROBE_EVERY`` events."""
    out: list[Paced] = []
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


async def pace(
    bootstrap: list[str], topics: dict[str, str], messages: list[Paced], rate: float
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


def score_triggers(value: bytes) -> Iterator[tuple[str, str]]:
    """(source, trigger event id) of each event a ``ScoreUpdate`` names."""
    update = orjson.loads(value)
    for event_id in update.get("trigger_event_ids", ()):
        yield update["source"], event_id


def input_event_id(value: bytes) -> Iterator[tuple[str, str]]:
    """("broker", event id) of an input event read back as it was produced."""
    yield BROKER_HOP, orjson.loads(value)["event_id"]


async def collect(
    settings: Settings,
    topic: str,
    keys: Callable[[bytes], Iterator[tuple[str, str]]],
    found: dict[tuple[str, str], float],
    stop: asyncio.Event,
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


async def paced_run(
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
        feedback = settings.topic("feedback")
        watched.append(collect(settings, feedback, input_event_id, found, stop))
    if set(sources) - {BROKER_HOP}:
        watched.append(collect(settings, settings.topic("scores"), score_triggers, found, stop))
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
