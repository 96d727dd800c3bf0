"""Builds the Faust app from the settings object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust

from streams.settings import Settings


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


#: Records one poll of the consumer hands over (one event-loop step of about 10 ms).
MAX_POLL_RECORDS = 500


def build_app(settings: Settings) -> faust.App:
    """A Faust app configured from ``settings``; agents are registered by the worker."""
    datadir = Path(settings.data_dir) / "faust"
    # Faust opens files under its data dir at start; a first run has none.
    datadir.mkdir(parents=True, exist_ok=True)
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
        # Faust turns each fetched record into a message, with a highwater lookup and a
        # sensor call, in one event-loop step per poll: unbounded, a backlog's poll of
        # thousands of records held the loop for 100-200 ms.
        broker_max_poll_records=MAX_POLL_RECORDS,
        stream_buffer_maxsize=max(4096, 4 * settings.batch_size),
        web_enabled=True,
        web_bind=settings.metrics_host,
        web_host=settings.metrics_host,
        web_port=settings.metrics_port,
        web_in_thread=False,
        table_standby_replicas=0,
        recovery_consistency_check=settings.recovery_consistency_check,
    )
    app.negstream_fetch_max_wait_ms = settings.fetch_max_wait_ms  # type: ignore[attr-defined]
    return app


def recovery_done(app: faust.App) -> bool:
    """Whether the app is neither rebalancing nor recovering its tables."""
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
    return not (app.rebalancing or app.in_recovery or not recovery.completed.is_set())


def recovery_status(app: faust.App) -> str:
    """Where a rebalance stands, in words (for logs)."""
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
    remaining = {}
    for tp, end in dict(getattr(recovery, "active_highwaters", {})).items():
        left = (end or 0) - recovery.active_offsets.get(tp, -1) - 1
        if left > 0:
            remaining[f"{tp.topic}[{tp.partition}]"] = left
    return (
        f"rebalancing={bool(app.rebalancing)} in_recovery={bool(app.in_recovery)} "
        f"recovery_completed={recovery.completed.is_set()} "
        f"changelog records left={remaining or 'none known'}"
    )


def recovery_ended_at(app: faust.App) -> float | None:
    """When the latest table recovery ended (changes after each rebalance's recovery)."""
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
    ended: float | None = getattr(recovery, "_recovery_ended_at", None)
    return ended


def committed_offsets(consumer: Any) -> dict[Any, int]:
    """The consumer's committed offset of each partition it committed (Faust's own map)."""
    committed: dict[Any, int] = getattr(consumer, "_committed_offset", {})
    return committed


def fetched_end(consumer: Any, tp: Any) -> tuple[int | None, float | None]:
    """The log end offset of ``tp`` in the latest fetch answer, and the ``time.time()`` at
    which that answer came (``None`` when the consumer does not say).

    The end alone does not show that an input has nothing left: with the broker gone it
    stays what the last answer said, however long ago that was. Raises when ``tp`` is not
    assigned.
    """
    end: int | None = consumer.highwater(tp)
    thread = getattr(consumer, "_thread", None)
    client = getattr(thread, "_consumer", None) if thread is not None else consumer
    polled = getattr(client, "last_poll_timestamp", None)
    if polled is None:
        return end, None
    try:
        at_ms = polled(tp)
    except AssertionError:  # unassigned meanwhile
        return end, None
    return end, (at_ms / 1000 if at_ms is not None else None)


def fetch_position(consumer: Any, tp: Any) -> int | None:
    """The offset ``consumer`` fetches ``tp`` from next (one past the last record it
    returned; where an offset reset put it, for a partition never committed); ``None``
    when not known."""
    thread = getattr(consumer, "_thread", None)
    client: Any = getattr(thread, "_consumer", None) if thread is not None else consumer
    try:
        state = client._subscription.subscription.assignment.state_value(tp)
    except Exception:  # no subscription, or tp not assigned
        return None
    position: int | None = getattr(state, "position", None) if state is not None else None
    return position


def committed_offset(app: faust.App, topic: str, partition: int) -> int | None:
    """The offset reading ``topic[partition]`` resumes from: the committed one (Kafka's next
    to read) as the consumer last sought or committed it; ``None`` when not known."""
    from faust.types import TP

    return committed_offsets(app.consumer).get(TP(topic, partition))
