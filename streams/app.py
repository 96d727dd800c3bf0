"""Builds the Faust app from the settings object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from streams import bulk, fetch_wait
from streams.settings import Settings

_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer


def _with_fetch_wait(thread: Any, transport: Any) -> Any:
    # Faust fixes the consumer's fetch wait at 1.5 s. A broker that holds a fetch for the
    # whole wait when little data is ready (Tansu does) adds that wait to every hop from
    # producer to worker; ``fetch_max_wait_ms`` on the app shortens it.
    consumer = _create_worker_consumer(thread, transport)
    wait = getattr(thread.app, "negstream_fetch_max_wait_ms", None)
    if wait is not None:
        consumer._fetch_max_wait_ms = wait
    return consumer


AIOKafkaConsumerThread._create_worker_consumer = _with_fetch_wait  # type: ignore[method-assign,assignment]
# A short wait stalls a consumer that is behind on Tansu; see ``streams.fetch_wait``.
fetch_wait.install()
# The hot topics' records go to batch buffers, not through Faust's per-record path; see
# ``streams.bulk``.
bulk.install()

_wait_next_records = Consumer._wait_next_records


async def _drop_fetches_across_a_rebalance(consumer: Any, timeout: float) -> Any:
    # A fetch sent before a rebalance can answer after it, from the position the consumer
    # had before it was sought back to the committed offsets. Faust takes its records for
    # the new generation: it sees the offsets it skips as a gap, counts them as processed
    # and commits past them, and drops them when they are fetched again. Records of the
    # committed (input) topics fetched across a rebalance are dropped here instead; the
    # rebalance seeks those partitions to their committed offsets, so they are fetched
    # again. Other records (table recovery reading a changelog) are kept.
    generation = consumer.app.consumer_generation_id
    records, active = await _wait_next_records(consumer, timeout)
    if records and consumer.app.consumer_generation_id != generation:
        committed = consumer.app.topics.acks_enabled_for
        records = {tp: batch for tp, batch in records.items() if not committed(tp.topic)}
    return records, active


Consumer._wait_next_records = _drop_fetches_across_a_rebalance  # type: ignore[method-assign,assignment]

_new_offset = Consumer._new_offset


def _never_past_a_message_in_flight(consumer: Any, tp: Any) -> int | None:
    # Faust commits the first run of consecutive acked offsets, and takes a single missing
    # offset at the head of that run for a hole in the log (a compacted record, a
    # transaction marker). When the missing one is a message still being processed, the
    # commit passes it and a restart or rebalance never delivers it again
    # (faust-streaming/faust#606). Nothing is committed while a tracked, unacked message
    # of the partition lies below every acked offset.
    acked = consumer._acked.get(tp)
    if acked:
        first = min(acked)
        for message in list(consumer._unacked_messages):
            if message.tp == tp and not message.acked and message.offset < first:
                return None
    result: int | None = _new_offset(consumer, tp)
    return result


Consumer._new_offset = _never_past_a_message_in_flight  # type: ignore[method-assign,assignment]


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials for the configured SASL/SSL connection, or ``None``."""
    ssl_context = None
    if settings.security_protocol.endswith("SSL"):
        import ssl

        ssl_context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


def build_app(settings: Settings) -> faust.App:
    """A Faust app configured from ``settings``; agents are registered by the worker."""
    datadir = Path(settings.data_dir) / "faust"
    app = faust.App(
        settings.app_id,
        broker=settings.broker_url,
        broker_credentials=broker_credentials(settings),
        store="memory://",
        autodiscover=False,
        datadir=str(datadir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=False,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_s,
        broker_request_timeout=max(30.0, settings.session_timeout_s + 5),
        producer_max_batch_size=settings.producer_max_batch_size,
        producer_linger=0.0,
        stream_buffer_maxsize=max(4096, 4 * settings.batch_size),
        web_enabled=True,
        web_bind=settings.metrics_host,
        web_host=settings.metrics_host,
        web_port=settings.metrics_port,
        web_in_thread=False,
        table_standby_replicas=0,
    )
    app.negstream_fetch_max_wait_ms = settings.fetch_max_wait_ms  # type: ignore[attr-defined]
    return app
