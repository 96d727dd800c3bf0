"""Test helpers: settings per test, a real worker process, producing and consuming."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from streams.broker import _die_with_parent, free_port, wait_for_port
from streams.settings import PREFIX, Settings


def isolated_settings(broker_url: str, data_dir: Path, **changes: Any) -> Settings:
    """Settings isolated to one test: own topics, consumer group, data dir and port."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "broker_url": broker_url,
        "app_id": f"negstream-{tag}",
        "topic_prefix": f"t{tag}-",
        "data_dir": str(data_dir),
        "metrics_port": free_port(),
        "label_window_s": 2.0,
        "watermark_delay_s": 0.0,
        "idle_flush_s": 0.5,
        "log_level": "warn",
    }
    values.update(changes)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    for spec in dataclasses.fields(settings):
        env[PREFIX + spec.name.upper()] = str(getattr(settings, spec.name))
    return env


class WorkerProcess:
    """``python -m negstream worker`` as a child process with ``settings``."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "negstream", "worker"],
                env=settings_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # a worker never outlives its test run
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log()[-3000:]}")
            try:
                wait_for_port(self.settings.metrics_host, self.settings.metrics_port, 0.5)
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker not up:\n{self.log()[-3000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def get(self, path: str, timeout: float = 60.0) -> bytes:
        """GET a worker page; retried while the worker answers 503 (tables recovering)."""
        url = f"http://{self.settings.metrics_host}:{self.settings.metrics_port}{path}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    return bytes(response.read())
            except urllib.error.HTTPError as error:
                if error.code != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, by name and sorted labels."""
        text = self.get("/metrics").decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples


def produce(settings: Settings, messages: Iterable[tuple[str, bytes | None, Any]]) -> int:
    """Send ``(topic setting, key, value)``; dict values are JSON-encoded."""
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, linger_ms=5, max_request_size=16 * 2**20
    )
    count = 0
    for topic, key, value in messages:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        producer.send(settings.topic(topic), key=key, value=raw)
        count += 1
    producer.flush()
    producer.close()
    return count


def consume(
    settings: Settings,
    topic: str,
    done: Callable[[list[tuple[bytes | None, bytes]]], bool],
    timeout: float = 60.0,
) -> list[tuple[bytes | None, bytes]]:
    """Read ``topic`` from the start until ``done(messages)`` or ``timeout`` seconds."""
    name = settings.topic(topic)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=None, consumer_timeout_ms=300
    )
    consumer.assign([TopicPartition(name, p) for p in range(settings.partitions)])
    consumer.seek_to_beginning()
    messages: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(messages) and time.monotonic() < deadline:
            for message in consumer:
                messages.append((message.key, message.value))
    finally:
        consumer.close()
    return messages


def assert_once_by_id(examples: list[Any], expected: dict[str, str]) -> int:
    """Every expected example, with its label, exactly once after dedupe by example id.

    At-least-once delivery may publish an example again after a crash (the window between
    its delivery and its state reaching the changelog); such a copy must be identical, so a
    consumer that dedupes by ``example_id`` (the trainer does) sees each example once.
    Returns how many redelivered copies there were.
    """
    by_id: dict[str, list[Any]] = {}
    for example in examples:
        by_id.setdefault(example.example_id, []).append(example)
    missing = sorted(set(expected) - set(by_id))
    assert not missing, f"{len(missing)} of {len(expected)} examples lost: {missing[:10]}"
    unexpected = sorted(set(by_id) - set(expected))
    assert not unexpected, f"unexpected examples: {unexpected[:10]}"
    wrong = {i: (c[0].label, expected[i]) for i, c in by_id.items() if c[0].label != expected[i]}
    assert not wrong, f"wrong labels (got, expected): {dict(list(wrong.items())[:10])}"
    differing = sorted(i for i, copies in by_id.items() if any(c != copies[0] for c in copies))
    assert not differing, f"copies of one example differ: {differing[:10]}"
    return len(examples) - len(by_id)


def memory_users(states: dict[str, Any] | None = None) -> Any:
    """A users store over a plain dict (no Faust app), as the worker's services see it.

    ``states`` may hold typed states or their wire dicts (decoded on first read).
    """
    from types import SimpleNamespace

    from agents.wiring import users_store

    return users_store(SimpleNamespace(data=states if states is not None else {}))


def state_config(**overrides: Any) -> Any:
    """The per-user logic's config of ``Settings(**overrides)``."""
    from agents.wiring import state_config as build

    return build(Settings(**overrides))
