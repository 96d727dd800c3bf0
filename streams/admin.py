"""Explicit topic creation with the kafka-python admin client."""

from __future__ import annotations

import logging
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.settings import Settings

log = logging.getLogger(__name__)

#: Topic settings by name; "scores" is compacted: the latest update per user is what counts.
TOPIC_NAMES = ("impressions", "feedback", "examples", "scores", "drift", "dead_letters")

#: Faust tables whose changelogs are created with the topics.
TABLE_NAMES = ("users",)

#: The model-updates topic has one partition: updates are read in the order they were taken.
MODEL_UPDATES_PARTITIONS = 1
#: Largest record batch of model-updates: a chunk is at most 900 KiB
#: (``model.update.DEFAULT_MAX_CHUNK_BYTES``), which the 1 MiB default only just holds.
MODEL_UPDATES_MAX_MESSAGE_BYTES = 2 * 1024 * 1024
#: Shortest retention of model-updates; snapshots make older records useless, but a worker
#: that starts while the trainer is down still needs the newest one.
MODEL_UPDATES_MIN_RETENTION_MS = 6 * 3600 * 1000


class TopicLayoutError(RuntimeError):
    """Existing topics cannot work with these settings (e.g. inputs not co-partitioned)."""


class BrokerUnreachable(ConnectionError):
    """No bootstrap server answered; the message says which were tried and why they failed."""


#: Longest wait for a TCP connection to one bootstrap server.
CONNECT_TIMEOUT_S = 3.0
#: Longest wait for the Kafka handshake and metadata once a server accepts connections.
BOOTSTRAP_TIMEOUT_S = 5.0
#: First wait between attempts; it doubles after every failure up to ``RETRY_MAX_S``.
RETRY_FIRST_S = 1.0
#: Longest wait between attempts: also the slowest pace of the "unreachable" log lines.
RETRY_MAX_S = 15.0


def admin_client(settings: Settings, timeout: float | None = 30.0) -> KafkaAdminClient:
    """An admin client, retried until the cluster answers or ``timeout`` passes (``None``:
    for ever).

    Each failed attempt logs one warning that names the servers tried, why each failed and
    when the next attempt comes; waits double from ``RETRY_FIRST_S`` to ``RETRY_MAX_S``,
    with jitter so that many workers do not knock in step. Raises
    :class:`BrokerUnreachable` once ``timeout`` has passed.
    """
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    delay = RETRY_FIRST_S
    attempt = 0
    while True:
        attempt += 1
        try:
            admin = connect_admin(settings)
        except BrokerUnreachable as error:
            wait = delay * random.uniform(0.8, 1.0)
            if deadline is not None and time.monotonic() + wait > deadline:
                raise
            log.warning(
                "broker %s unreachable (attempt %d): %s; retrying in %.0fs",
                settings.broker_url, attempt, error, wait,
            )  # fmt: skip
            time.sleep(wait)
            delay = min(2 * delay, RETRY_MAX_S)
            continue
        if attempt > 1:
            log.info(
                "broker %s answered after %d attempts (%.0fs)",
                settings.broker_url, attempt, time.monotonic() - started,
            )  # fmt: skip
        return admin


def connect_admin(settings: Settings) -> KafkaAdminClient:
    """One attempt at an admin client; :class:`BrokerUnreachable` says why it failed.

    A TCP connection to each bootstrap server comes first: it names the reason (refused,
    unknown host, timed out) that kafka-python's own error leaves out.
    """
    servers = settings.bootstrap_servers
    with ThreadPoolExecutor(len(servers)) as pool:
        failures = list(pool.map(tcp_failure, servers))
    if all(failures):
        raise BrokerUnreachable(
            "; ".join(f"{server}: {why}" for server, why in zip(servers, failures, strict=True))
        )
    options: dict[str, Any] = {}
    if "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG:  # kafka-python >= 3
        options["bootstrap_timeout_ms"] = int(BOOTSTRAP_TIMEOUT_S * 1000)
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    # kafka-python logs every failed bootstrap step; the one warning above says it all.
    kafka_log.setLevel(logging.CRITICAL)
    try:
        return KafkaAdminClient(
            bootstrap_servers=servers,
            client_id=f"{settings.app_id}-admin",
            **client_security(settings),
            **options,
        )
    except (KafkaError, OSError) as error:
        raise BrokerUnreachable(f"TCP connects, but the Kafka handshake failed: {error}") from None
    finally:
        kafka_log.setLevel(level)


def tcp_failure(server: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why a TCP connection to ``host[:port]`` fails, or ``None`` when it succeeds."""
    address = urlsplit(f"//{server}")
    try:
        with socket.create_connection((address.hostname, address.port or 9092), timeout):
            return None
    except TimeoutError:
        return f"no answer within {timeout:.0f}s"
    except OSError as error:
        return (error.strerror or str(error)).lower()


def client_security(settings: Settings) -> dict[str, str]:
    """kafka-python keyword arguments for the configured SASL/SSL connection."""
    options: dict[str, str] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password,
        )
    if settings.ssl_cafile:
        options["ssl_cafile"] = settings.ssl_cafile
    return options


def model_updates_configs(settings: Settings) -> dict[str, str]:
    """Topic configs of model-updates: retention of at least three snapshot intervals (the
    newest snapshot is never gone while the trainer publishes), segments rolled six times a
    retention so that old snapshots are deleted, and room for a chunk per record."""
    interval_ms = settings.model_snapshot_every * settings.model_sync_s * 1000
    retention = max(MODEL_UPDATES_MIN_RETENTION_MS, int(3 * interval_ms))
    return {
        "retention.ms": str(retention),
        "segment.ms": str(retention // 6),
        "max.message.bytes": str(MODEL_UPDATES_MAX_MESSAGE_BYTES),
    }


def wanted_topics(settings: Settings) -> list[NewTopic]:
    """Every topic negstream reads or writes, with partitions and retention."""
    retention = {"retention.ms": str(settings.retention_ms)}
    topics = [
        NewTopic(
            settings.topic("model_updates"),
            MODEL_UPDATES_PARTITIONS,
            settings.replication_factor,
            topic_configs=model_updates_configs(settings),
        )
    ]
    for name in TOPIC_NAMES:
        configs = {"cleanup.policy": "compact"} if name == "scores" else retention
        topics.append(
            NewTopic(
                settings.topic(name),
                settings.partitions,
                settings.replication_factor,
                topic_configs=configs,
            )
        )
    for table in TABLE_NAMES:
        topics.append(
            NewTopic(
                changelog_topic(settings, table),
                settings.partitions,
                settings.replication_factor,
                topic_configs={"cleanup.policy": "compact"},
            )
        )
    return topics


def changelog_topic(settings: Settings, table: str) -> str:
    """Name of a Faust table's changelog topic."""
    return f"{settings.app_id}-{settings.topic_prefix}{table}-changelog"


def ensure_topics(settings: Settings, timeout: float | None = 30.0) -> list[str]:
    """Create missing topics; check that existing ones have the configured partitions.

    Waits for the cluster as :func:`admin_client` does. Returns the names created. Raises
    :class:`TopicLayoutError` when an existing topic has a different partition count: the
    inputs and changelogs must be co-partitioned by user_id, and model-updates must have one.
    """
    admin = admin_client(settings, timeout)
    try:
        wanted = wanted_topics(settings)
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        created = []
        for topic in missing:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        present = {t.name: t.num_partitions for t in wanted if t.name not in created}
        if present:
            _check_partitions(admin, present, settings.topic("model_updates"))
        if created:
            log.info("created topics: %s", ", ".join(created))
        return created
    finally:
        admin.close()


def _check_partitions(admin: KafkaAdminClient, wanted: dict[str, int], model_updates: str) -> None:
    """Raise :class:`TopicLayoutError` unless each topic has its wanted partition count."""
    for description in admin.describe_topics(list(wanted)):
        # kafka-python 3 names the topic "name", 2.x "topic".
        name = description.get("name") or description.get("topic")
        count = len(description.get("partitions", []))
        partitions = wanted.get(name)
        if partitions is None or not count or count == partitions:
            continue
        if name == model_updates:
            raise TopicLayoutError(
                f"topic {name!r} has {count} partitions; model updates are read in order "
                "from exactly one"
            )
        raise TopicLayoutError(
            f"topic {name!r} has {count} partitions but NEGSTREAM_PARTITIONS={partitions}; "
            "co-partitioned topics must match"
        )
