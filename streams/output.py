"""Batching producers for negstream's own records: outputs and the users table changelog.

Faust's producer sends each record as its own batch on Tansu (``producer_max_batch_size=1``,
see DESIGN.md), which allows one record per partition per round trip. Examples and score
updates go through an :class:`OutputProducer`: a delivery's records as one batch per
partition (:meth:`OutputProducer.send_many`), and a micro-batch's user states to the
changelog the same way (:meth:`OutputProducer.send_partition`). Single records (the fast
lane's) are batched by the producer's linger (``output_linger_ms``).

Every record sent is counted by topic in ``negstream_output_*`` (records and bytes the broker
acknowledged, errors by reason, send latency of each delivery): see :mod:`streams.metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.errors import KafkaError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streams import metrics
from streams.app import broker_credentials
from streams.retry import Backoff
from streams.settings import Settings
from streams.yielding import YIELD_CHECK_MASK, Yielder

log = logging.getLogger(__name__)


#: Largest output request: a dead letter carries up to the largest accepted payload.
MAX_REQUEST_BYTES = 16 * 1024 * 1024

#: The ``reason`` label of a failed send, by aiokafka error class (first match wins).
ERROR_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (kafka_errors.KafkaTimeoutError, "timeout"),
    (kafka_errors.RequestTimedOutError, "timeout"),
    (kafka_errors.KafkaConnectionError, "unreachable"),
    (kafka_errors.NodeNotReadyError, "unreachable"),
    (kafka_errors.BrokerNotAvailableError, "unreachable"),
    (kafka_errors.KafkaUnavailableError, "unreachable"),
    (kafka_errors.NotLeaderForPartitionError, "no_leader"),
    (kafka_errors.LeaderNotAvailableError, "no_leader"),
    (kafka_errors.UnknownTopicOrPartitionError, "no_leader"),
    (kafka_errors.NotEnoughReplicasError, "not_enough_replicas"),
    (kafka_errors.NotEnoughReplicasAfterAppendError, "not_enough_replicas"),
    (kafka_errors.MessageSizeTooLargeError, "too_large"),
    (kafka_errors.RecordListTooLargeError, "too_large"),
    (kafka_errors.TopicAuthorizationFailedError, "unauthorized"),
    (kafka_errors.ClusterAuthorizationFailedError, "unauthorized"),
)


def error_reason(error: BaseException) -> str:
    """The ``reason`` label of ``negstream_output_errors_total`` for a failed send.

    Examples
    --------
    >>> error_reason(kafka_errors.RequestTimedOutError()), error_reason(ValueError())
    ('timeout', 'other')
    """
    for kind, reason in ERROR_REASONS:
        if isinstance(error, kind):
            return reason
    return "other"


class _Tally:
    """One topic's records within one delivery attempt: their futures, counts and bytes."""

    __slots__ = ("futures", "records", "sizes")

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []
        self.records: list[int] = []
        self.sizes: list[int] = []

    def add(self, future: asyncio.Future[Any], records: int, size: int) -> None:
        self.futures.append(future)
        self.records.append(records)
        self.sizes.append(size)


#: The tallies of the delivery attempt running in this task (see OutputProducer.deliver).
_ATTEMPT: ContextVar[dict[str, _Tally] | None] = ContextVar("output_attempt", default=None)


class OutputProducer:
    """Sends raw key/value records; started on first use inside the running event loop."""

    def __init__(self, settings: Settings, role: str = "outputs") -> None:
        self.settings = settings
        self.role = role
        self._producer: AIOKafkaProducer | None = None
        self._starting: asyncio.Lock | None = None
        self._closed = False

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        if self._closed:
            raise RuntimeError(f"the {self.role} producer is stopped")
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.bootstrap_servers,
                    client_id=f"{self.settings.app_id}-{self.role}",
                    acks="all",
                    linger_ms=self.settings.output_linger_ms,
                    max_batch_size=512 * 1024,
                    max_request_size=MAX_REQUEST_BYTES,
                    **credentials_to_aiokafka_auth(broker_credentials(self.settings)),
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
        return self._producer

    async def deliver(self, send: Callable[[], Awaitable[list[asyncio.Future[Any]]]]) -> None:
        """Run ``send`` (which queues records) and wait until the broker has all of them.

        While the broker is unreachable the records are sent again, with a growing pause,
        until they are delivered: the caller waits (back-pressure) instead of failing, and a
        record may be written twice, which readers of these topics tolerate.
        """
        backoff = Backoff()
        while True:
            # Each record sent inside ``send`` is tallied by topic for the output metrics; a
            # context variable keeps concurrent deliveries (other tasks) apart.
            attempt: dict[str, _Tally] = {}
            token = _ATTEMPT.set(attempt)
            started = time.perf_counter()
            try:
                try:
                    futures = await send()
                finally:
                    _ATTEMPT.reset(token)
                await asyncio.gather(*futures)
                _count_delivered(attempt, time.perf_counter() - started)
                return
            except KafkaError as error:
                _count_failed(attempt, error)
                if self._closed:
                    raise
                delay = backoff.next_delay()
                metrics.OUTPUT_RESENDS.labels(self.role).inc()
                log.warning(
                    "%s not delivered (%s: %s); sending the same records again in %.1f s",
                    self.role, type(error).__name__, error, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> asyncio.Future[Any]:
        """Queue one record; the returned future resolves once the broker has it."""
        producer = await self._started()
        sent: asyncio.Future[Any] = await producer.send(topic, value, key=key, partition=partition)
        _tally(topic, sent, 1, len(value) + (len(key) if key else 0))
        return sent

    async def send_many(
        self, records: Sequence[tuple[str, bytes | None, bytes, int | None]]
    ) -> list[asyncio.Future[Any]]:
        """Queue ``(topic, key, value, partition)`` records as batches, one run per
        partition (see :meth:`send_partition`), each record on the partition :meth:`send`
        would choose: its own, else its key's hash. Records of a partition keep their order.

        A batch costs one future and one accumulator entry, where :meth:`send` costs them per
        record: most of a producer's CPU time at these sizes.
        """
        producer = await self._started()
        runs: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
        partitions: dict[str, list[int]] = {}
        yielder = Yielder()
        for count, (topic, key, value, partition) in enumerate(records):
            if count & YIELD_CHECK_MASK == YIELD_CHECK_MASK:
                await yielder()  # hashing thousands of keys is CPU work: let others run
            if partition is None:
                known = partitions.get(topic)
                if known is None:
                    known = partitions[topic] = sorted(await producer.partitions_for(topic))
                partition = producer._partitioner(key, known, known)
            runs.setdefault((topic, partition), []).append((key, value))
        futures: list[asyncio.Future[Any]] = []
        for (topic, partition), run in runs.items():
            futures += await self.send_partition(topic, partition, run, yielder)
        return futures

    async def send_partition(
        self,
        topic: str,
        partition: int,
        records: list[tuple[bytes | None, bytes]],
        yielder: Yielder | None = None,
    ) -> list[asyncio.Future[Any]]:
        """Queue ``records`` for one partition, in order, as few batches as fit.

        The last record always goes alone in a batch of its own. A broker may report a
        log's end offset as the base offset of its last batch plus one (Tansu 0.6.0 does in
        ListOffsets); a single-record last batch keeps that right, so a table recovery that
        reads up to the reported end reads every record. Returns the delivery futures.
        Appending thousands of records is CPU work: ``yielder`` (a new one by default) lets
        other tasks run in between.
        """
        producer = await self._started()
        yielder = yielder or Yielder()
        futures: list[asyncio.Future[Any]] = []
        for group in (records[:-1], records[-1:]):
            batch = producer.create_batch()
            for count, (key, value) in enumerate(group):
                if count & YIELD_CHECK_MASK == YIELD_CHECK_MASK:
                    await yielder()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await self._submit(batch, topic, partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a record of {len(value)} bytes fits in no batch")
            if batch.record_count():
                futures.append(await self._submit(batch, topic, partition))
        return futures

    async def _submit(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        # Closed, so that no other send joins the batch.
        batch.close()
        producer = await self._started()
        records, size = batch.record_count(), batch.size()
        sent: asyncio.Future[Any] = await producer.send_batch(batch, topic, partition=partition)
        _tally(topic, sent, records, size)
        return sent

    async def stop(self) -> None:
        """Deliver what is queued and close the connection."""
        self._closed = True
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


_started_topics: set[str] = set()


def _tally(topic: str, future: asyncio.Future[Any], records: int, size: int) -> None:
    """Account for a queued record (or batch) of ``topic`` in the output metrics."""
    if topic not in _started_topics:
        _started_topics.add(topic)
        metrics.start_output_topic(topic)
    attempt = _ATTEMPT.get()
    if attempt is None:
        # Sent outside deliver(): counted when the broker answers, one callback each.
        started = time.perf_counter()
        future.add_done_callback(lambda done: _count_one(topic, done, records, size, started))
        return
    tally = attempt.get(topic)
    if tally is None:
        tally = attempt[topic] = _Tally()
    tally.add(future, records, size)


def _count_delivered(attempt: dict[str, _Tally], elapsed: float) -> None:
    for topic, tally in attempt.items():
        metrics.OUTPUT_RECORDS.labels(topic).inc(sum(tally.records))
        metrics.OUTPUT_BYTES.labels(topic).inc(sum(tally.sizes))
        metrics.OUTPUT_SEND_SECONDS.labels(topic).observe(elapsed)


def _count_failed(attempt: dict[str, _Tally], error: BaseException) -> None:
    """Records the broker acknowledged count as sent; every other one as an error (each is
    sent again), with the reason of its own failure or else of the one that ended the try."""
    for topic, tally in attempt.items():
        for future, records, size in zip(tally.futures, tally.records, tally.sizes, strict=True):
            failure = _failure(future, error)
            if failure is None:
                metrics.OUTPUT_RECORDS.labels(topic).inc(records)
                metrics.OUTPUT_BYTES.labels(topic).inc(size)
            else:
                metrics.OUTPUT_ERRORS.labels(topic, error_reason(failure)).inc(records)


def _failure(future: asyncio.Future[Any], unsettled: BaseException) -> BaseException | None:
    """None when the broker acknowledged the send, else its error (``unsettled`` while it
    is pending or was cancelled)."""
    if not future.done() or future.cancelled():
        return unsettled
    return future.exception()


def _count_one(
    topic: str, future: asyncio.Future[Any], records: int, size: int, started: float
) -> None:
    failure = _failure(future, asyncio.CancelledError())
    if failure is None:
        metrics.OUTPUT_RECORDS.labels(topic).inc(records)
        metrics.OUTPUT_BYTES.labels(topic).inc(size)
        metrics.OUTPUT_SEND_SECONDS.labels(topic).observe(time.perf_counter() - started)
    else:
        metrics.OUTPUT_ERRORS.labels(topic, error_reason(failure)).inc(records)
