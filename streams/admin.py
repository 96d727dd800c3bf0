"""Explicit topic creation with the kafka-python admin client."""

from __future__ import annotations

import logging
import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.settings import Settings

log = logging.getLogger(__name__)

#: Topic settings by name; "scores" is compacted: the latest update per user is what counts.
TOPIC_NAMES = ("impressions", "feedback", "examples", "scores", "drift", "dead_letters")

#: Faust tables whose changelogs are created with the topics.
TABLE_NAMES = ("users",)


class TopicLayoutError(RuntimeError):
    """Existing topics cannot work with these settings (e.g. inputs not co-partitioned)."""


def admin_client(settings: Settings, timeout: float = 30.0) -> KafkaAdminClient:
    """An admin client, retried until the cluster answers or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return KafkaAdminClient(
                bootstrap_servers=settings.bootstrap_servers,
                client_id=f"{settings.app_id}-admin",
                **client_security(settings),
            )
        except KafkaError:
            if time.monotonic() > deadline:
                raise


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


def wanted_topics(settings: Settings) -> list[NewTopic]:
    """Every topic negstream reads or writes, with partitions and retention."""
    retention = {"retention.ms": str(settings.retention_ms)}
    topics = []
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


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing topics; check that existing ones have the configured partitions.

    Returns the names created. Raises :class:`TopicLayoutError` when an existing topic has a
    different partition count: the inputs and changelogs must be co-partitioned by user_id.
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
        present = [t.name for t in wanted if t.name not in created]
        if present:
            _check_partitions(admin, present, settings.partitions)
        if created:
            log.info("created topics: %s", ", ".join(created))
        return created
    finally:
        admin.close()


def _check_partitions(admin: KafkaAdminClient, names: list[str], partitions: int) -> None:
    for description in admin.describe_topics(names):
        count = len(description.get("partitions", []))
        if count and count != partitions:
            raise TopicLayoutError(
                f"topic {description['topic']!r} has {count} partitions but "
                f"NEGSTREAM_PARTITIONS={partitions}; co-partitioned topics must match"
            )
