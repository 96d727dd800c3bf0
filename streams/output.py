"""Batching producers for negstream's own records: outputs and the users table changelog.

Faust's producer sends each record as its own batch on Tansu (``producer_max_batch_size=1``,
see DESIGN.md), which allows one record per partition per round trip. Examples and score
updates are sent through an :class:`OutputProducer` that batches them
(``output_linger_ms``); a micro-batch's user states go to the changelog as one batch per
partition with :meth:`OutputProducer.send_partition`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streams.app import broker_credentials
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Longest pause between two attempts to deliver records while the broker is away.
MAX_RETRY_DELAY_S = 5.0

#: Largest output request: a dead letter carries up to the largest accepted payload.
MAX_REQUEST_BYTES = 16 * 1024 * 1024


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
        delay = 0.2
        while True:
            try:
                await asyncio.gather(*await send())
                return
            except KafkaError as error:
                if self._closed:
                    raise
                log.warning(
                    "%s not delivered (%s: %s); sending again in %.1f s",
                    self.role, type(error).__name__, error, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(2 * delay, MAX_RETRY_DELAY_S)

    async def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> asyncio.Future[Any]:
        """Queue one record; the returned future resolves once the broker has it."""
        producer = await self._started()
        sent: asyncio.Future[Any] = await producer.send(topic, value, key=key, partition=partition)
        return sent

    async def send_partition(
        self, topic: str, partition: int, records: list[tuple[bytes | None, bytes]]
    ) -> list[asyncio.Future[Any]]:
        """Queue ``records`` for one partition, in order, as few batches as fit.

        The last record always goes alone in a batch of its own. A broker may report a
        log's end offset as the base offset of its last batch plus one (Tansu 0.6.0 does in
        ListOffsets); a single-record last batch keeps that right, so a table recovery that
        reads up to the reported end reads every record. Returns the delivery futures.
        """
        producer = await self._started()
        futures: list[asyncio.Future[Any]] = []
        for group in (records[:-1], records[-1:]):
            batch = producer.create_batch()
            for key, value in group:
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
        sent: asyncio.Future[Any] = await producer.send_batch(batch, topic, partition=partition)
        return sent

    async def stop(self) -> None:
        """Deliver what is queued and close the connection."""
        self._closed = True
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
