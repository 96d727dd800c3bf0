"""Producing input events (simulated or replayed) to Kafka, with progress output."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from kafka import KafkaProducer

from streams.admin import client_security
from streams.settings import Settings

#: Where each simulator/replay topic label goes.
TOPIC_SETTINGS = {"impressions": "impressions", "negative-feedback": "feedback"}


def make_producer(settings: Settings) -> KafkaProducer:
    """A kafka-python producer for raw key/value bytes."""
    return KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.app_id}-producer",
        acks="all",
        linger_ms=5,
        retries=5,
        max_request_size=16 * 1024 * 1024,
        **client_security(settings),
    )


def encode_value(value: Any) -> bytes:
    """Message bytes of a JSON value (bytes pass through untouched)."""
    return value if isinstance(value, bytes) else orjson.dumps(value)


class Progress:
    """A one-line progress report on stderr, refreshed at most every ``every`` seconds."""

    def __init__(self, label: str, total: int | None = None, every: float = 0.5) -> None:
        self.label, self.total, self.every = label, total, every
        self.count = 0
        self.started = self.shown = time.monotonic()

    def step(self, n: int = 1) -> None:
        """Count ``n`` more; redraw when due."""
        self.count += n
        now = time.monotonic()
        if now - self.shown >= self.every:
            self.shown = now
            self._draw(now)

    def _draw(self, now: float, end: str = "\r") -> None:
        rate = self.count / max(now - self.started, 1e-9)
        if self.total:
            width = 30
            filled = int(width * min(self.count / self.total, 1.0))
            bar = "#" * filled + "-" * (width - filled)
            text = f"{self.label} [{bar}] {self.count}/{self.total} {rate:,.0f}/s"
        else:
            text = f"{self.label} {self.count} {rate:,.0f}/s"
        sys.stderr.write(text + end)
        sys.stderr.flush()

    def close(self) -> None:
        """Draw the final line."""
        self._draw(time.monotonic(), end="\n")


def send_all(
    settings: Settings,
    messages: Iterable[tuple[str, str | None, Any]],
    rate: float | None = None,
    progress: Progress | None = None,
    producer: KafkaProducer | None = None,
) -> int:
    """Send ``(topic label, key, value)`` triples, paced to ``rate`` messages/s when given."""
    own = producer is None
    producer = producer or make_producer(settings)
    sent = 0
    started = time.monotonic()
    try:
        for label, key, value in messages:
            topic = settings.topic(TOPIC_SETTINGS.get(label, label))
            producer.send(
                topic, key=None if key is None else key.encode(), value=encode_value(value)
            )
            sent += 1
            if progress:
                progress.step()
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush()
    finally:
        if own:
            producer.close()
        if progress:
            progress.close()
    return sent


def read_event_file(path: str) -> Iterator[tuple[str, str | None, Any]]:
    """Events of a JSONL file (``{"topic", "key", "value"}`` lines) or a CSV file.

    A CSV file has a header with a ``topic`` column; the other columns form the value (empty
    cells are left out, numeric ``timestamp``/``position``/``dwell_ms`` become numbers).
    A line that does not parse is still sent as raw bytes, so the worker dead-letters it.
    """
    if path.endswith(".csv"):
        yield from _read_csv(path)
        return
    with open(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                yield record["topic"], record.get("key"), record["value"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                yield "impressions", None, line.rstrip(b"\n")


def _read_csv(path: str) -> Iterator[tuple[str, str | None, Any]]:
    import csv

    numeric = {"timestamp": float, "position": int, "dwell_ms": int}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            topic = row.pop("topic", None) or "impressions"
            value: dict[str, Any] = {}
            for name, cell in row.items():
                if cell in (None, ""):
                    continue
                convert = numeric.get(name)
                try:
                    value[name] = convert(cell) if convert else cell
                except ValueError:
                    value[name] = cell
            yield topic, value.get("user_id"), value


def count_lines(path: str) -> int:
    """Number of events in a replay file, for the progress bar."""
    with open(path, "rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines - 1 if path.endswith(".csv") else lines
