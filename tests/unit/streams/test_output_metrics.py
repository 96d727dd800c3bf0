"""The output producer's metrics, and label series that exist before their first event."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, RequestTimedOutError
from prometheus_client import REGISTRY

from schemas import REASONS
from streams import metrics
from streams.output import OutputProducer, error_reason
from streams.settings import Settings


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    assert value is not None, f"no series {name}{labels}"
    return value


class FakeBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes]] = []

    def append(self, key: bytes | None, value: bytes, timestamp: Any) -> object:
        self.records.append((key, value))
        return object()

    def close(self) -> None:
        pass

    def record_count(self) -> int:
        return len(self.records)

    def size(self) -> int:
        return sum(len(value) + len(key or b"") for key, value in self.records)


class FakeProducer:
    """Answers each send with a future the test settles: acknowledged unless ``fail``
    names an error for the n-th send."""

    def __init__(self, fail: dict[int, BaseException] | None = None) -> None:
        self.fail = fail or {}
        self.sends = 0

    def _future(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        error = self.fail.pop(self.sends, None)
        self.sends += 1
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
        return future

    async def send(self, topic: str, value: bytes, key: bytes | None, partition: Any) -> Any:
        return self._future()

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> Any:
        return self._future()


def producer_with(fake: FakeProducer) -> OutputProducer:
    output = OutputProducer(Settings())

    async def started() -> Any:
        return fake

    output._started = started  # type: ignore[method-assign]
    return output


def test_deliveries_count_records_bytes_and_latency_by_topic() -> None:
    examples, scores = f"examples-{uuid.uuid4().hex}", f"scores-{uuid.uuid4().hex}"
    output = producer_with(FakeProducer())

    async def send() -> list[asyncio.Future[Any]]:
        return [
            await output.send(examples, b"u1", b"abc"),
            await output.send(examples, None, b"defg"),
            await output.send(scores, b"u2", b"x" * 10),
        ]

    asyncio.run(output.deliver(send))
    assert sample("negstream_output_records_total", topic=examples) == 2
    assert sample("negstream_output_bytes_total", topic=examples) == 2 + 3 + 4
    assert sample("negstream_output_records_total", topic=scores) == 1
    assert sample("negstream_output_bytes_total", topic=scores) == 12
    # One latency observation per topic and delivery.
    assert sample("negstream_output_send_seconds_count", topic=examples) == 1
    for reason in metrics.OUTPUT_ERROR_REASONS:
        assert sample("negstream_output_errors_total", topic=examples, reason=reason) == 0


def test_a_failed_send_counts_an_error_and_the_records_sent_again() -> None:
    topic = f"scores-{uuid.uuid4().hex}"
    output = producer_with(FakeProducer(fail={1: RequestTimedOutError()}))

    async def send() -> list[asyncio.Future[Any]]:
        return [await output.send(topic, b"u", b"v1"), await output.send(topic, b"u", b"v2")]

    asyncio.run(output.deliver(send))
    # First try: one record acknowledged, one timed out; second try: both acknowledged.
    assert sample("negstream_output_errors_total", topic=topic, reason="timeout") == 1
    assert sample("negstream_output_records_total", topic=topic) == 3
    assert sample("negstream_output_send_seconds_count", topic=topic) == 1


def test_changelog_batches_count_their_records() -> None:
    topic = f"changelog-{uuid.uuid4().hex}"
    output = producer_with(FakeProducer())
    records = [(b"u1", b"s1"), (b"u2", b"s2"), (b"u3", b"s3")]

    async def send() -> list[asyncio.Future[Any]]:
        return await output.send_partition(topic, 0, records)

    asyncio.run(output.deliver(send))
    assert sample("negstream_output_records_total", topic=topic) == 3
    assert sample("negstream_output_bytes_total", topic=topic) == 12


def test_a_send_outside_a_delivery_counts_when_answered() -> None:
    topic = f"drift-{uuid.uuid4().hex}"
    output = producer_with(FakeProducer(fail={1: KafkaConnectionError()}))

    async def run() -> None:
        ok = await output.send(topic, None, b"report")
        failed = await output.send(topic, None, b"report")
        await asyncio.wait([ok, failed])
        await asyncio.sleep(0)  # done callbacks run on the next loop iteration

    asyncio.run(run())
    assert sample("negstream_output_records_total", topic=topic) == 1
    assert sample("negstream_output_errors_total", topic=topic, reason="unreachable") == 1


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RequestTimedOutError(), "timeout"),
        (KafkaConnectionError(), "unreachable"),
        (ValueError("not Kafka's"), "other"),
    ],
)
def test_error_reasons(error: BaseException, reason: str) -> None:
    assert error_reason(error) == reason
    assert reason in metrics.OUTPUT_ERROR_REASONS


def test_series_of_known_labels_start_at_zero() -> None:
    # Exist before any event: panels show 0 rather than "No data".
    for reason in REASONS:
        assert sample("negstream_dead_letters_total", reason=reason) >= 0
    for kind in ("impression", "feedback"):
        assert sample("negstream_input_offset_gaps_total", topic=kind) >= 0
        for outcome in ("accepted", "duplicate", "late", "repartitioned", "dead_letter"):
            assert sample("negstream_events_total", type=kind, outcome=outcome) >= 0
    for group in ("explicit_negative", "implicit_negative", "engagement", "none"):
        assert sample("negstream_examples_total", label_group=group) >= 0
    assert sample("negstream_examples_excluded_total", reason="abuse_guard") >= 0
    for source in ("fast_path", "model"):
        assert sample("negstream_score_updates_total", source=source) >= 0
    for generation in ("0", "1", "2"):
        assert sample("negstream_gc_pause_seconds_count", generation=generation) >= 0
