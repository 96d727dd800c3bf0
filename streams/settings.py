"""The one settings object: every knob, read from ``NEGSTREAM_*`` environment variables."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

PREFIX = "NEGSTREAM_"
#: Values of ``model_source``.
MODEL_SOURCES = ("local", "remote")


class SettingsError(ValueError):
    """An environment variable holds a value its setting cannot take."""


@dataclass(frozen=True)
class Settings:
    """negstream settings; each field is read from ``NEGSTREAM_<FIELD NAME IN CAPITALS>``.

    Defaults run against the embedded broker on loopback. For Apache Kafka set
    ``broker_url`` and the client tuning marked *(Tansu)* back to normal values (README).
    """

    broker_url: str = "kafka://127.0.0.1:9092"
    """NEGSTREAM_BROKER_URL: Kafka bootstrap servers, ``kafka://host:port[;host:port]``
    (``,`` also separates hosts; a host without a port uses 9092)."""
    app_id: str = "negstream"
    """NEGSTREAM_APP_ID: Faust app id; also the consumer group and changelog topic prefix."""
    topic_prefix: str = ""
    """NEGSTREAM_TOPIC_PREFIX: prepended to every topic name (isolates tenants and tests)."""
    topic_impressions: str = "impressions"
    """NEGSTREAM_TOPIC_IMPRESSIONS: input topic of impressions."""
    topic_feedback: str = "negative-feedback"
    """NEGSTREAM_TOPIC_FEEDBACK: input topic of feedback events."""
    topic_examples: str = "training-examples"
    """NEGSTREAM_TOPIC_EXAMPLES: labelled examples; the replayable training log."""
    topic_scores: str = "scores"
    """NEGSTREAM_TOPIC_SCORES: refreshed scores and suppressions (compacted)."""
    topic_drift: str = "drift-metrics"
    """NEGSTREAM_TOPIC_DRIFT: drift reports."""
    topic_dead_letters: str = "dead-letters"
    """NEGSTREAM_TOPIC_DEAD_LETTERS: rejected input with its reason."""
    topic_model_updates: str = "model-updates"
    """NEGSTREAM_TOPIC_MODEL_UPDATES: the trainer's model snapshots and deltas, in chunks (one
    partition)."""
    partitions: int = 4
    """NEGSTREAM_PARTITIONS: partitions of every topic (inputs must be co-partitioned)."""
    replication_factor: int = 1
    """NEGSTREAM_REPLICATION_FACTOR: replication of created topics (3 in production)."""
    retention_ms: int = 7 * 24 * 3600 * 1000
    """NEGSTREAM_RETENTION_MS: retention of the non-compacted topics."""
    max_payload_bytes: int = 64 * 1024
    """NEGSTREAM_MAX_PAYLOAD_BYTES: larger input messages are dead-lettered as oversize."""
    max_future_s: float = 3600.0
    """NEGSTREAM_MAX_FUTURE_S: events timed further ahead of the worker's clock are rejected."""
    batch_size: int = 1000
    """NEGSTREAM_BATCH_SIZE: input events processed per micro-batch."""
    batch_within_s: float = 0.02
    """NEGSTREAM_BATCH_WITHIN_S: longest wait to fill a micro-batch."""
    dedup_ttl_s: float = 3600.0
    """NEGSTREAM_DEDUP_TTL_S: event-time span over which a repeated event_id is dropped."""
    dedup_max_per_user: int = 4096
    """NEGSTREAM_DEDUP_MAX_PER_USER: most event ids remembered per user (oldest go first)."""
    window_short_s: float = 600.0
    """NEGSTREAM_WINDOW_SHORT_S: short window of the per-user tables."""
    window_long_s: float = 86_400.0
    """NEGSTREAM_WINDOW_LONG_S: long window of the per-user tables."""
    window_step_s: float = 60.0
    """NEGSTREAM_WINDOW_STEP_S: hop of both windows (their bucket size)."""
    grace_s: float = 300.0
    """NEGSTREAM_GRACE_S: events later than this behind the user's clock count as late."""
    label_window_s: float = 120.0
    """NEGSTREAM_LABEL_WINDOW_S: how long an impression waits for its feedback."""
    watermark_delay_s: float = 5.0
    """NEGSTREAM_WATERMARK_DELAY_S: how far the event-time clock trails the newest event."""
    idle_flush_s: float = 2.0
    """NEGSTREAM_IDLE_FLUSH_S: wall seconds without input before a partition's clock advances."""
    open_states: int = 10_000
    """NEGSTREAM_OPEN_STATES: most users' states kept as the fold wrote them; the least
    recently written beyond these are kept compressed until their user's next event."""
    candidates_per_user: int = 50
    """NEGSTREAM_CANDIDATES_PER_USER: recent impressions kept per user for rescoring."""
    abuse_negative_cap: int = 200
    """NEGSTREAM_ABUSE_NEGATIVE_CAP: negatives per short window that flag a user as abusive."""
    suppression_ttl_s: float = 7 * 86_400.0
    """NEGSTREAM_SUPPRESSION_TTL_S: lifetime of an item suppression."""
    creator_suppression_ttl_s: float = 3 * 86_400.0
    """NEGSTREAM_CREATOR_SUPPRESSION_TTL_S: lifetime of a creator/category suppression."""
    train_batch_size: int = 1024
    """NEGSTREAM_TRAIN_BATCH_SIZE: examples per training micro-batch."""
    train_max_wait_s: float = 1.0
    """NEGSTREAM_TRAIN_MAX_WAIT_S: longest wait to fill a training micro-batch."""
    model_buckets: int = 2**18
    """NEGSTREAM_MODEL_BUCKETS: rows of the hashed embedding table (collisions: README)."""
    torch_threads: int = 1
    """NEGSTREAM_TORCH_THREADS: torch intra-op threads for training and scoring."""
    score_refresh_s: float = 0.1
    """NEGSTREAM_SCORE_REFRESH_S: how often touched users are rescored."""
    score_min_interval_s: float = 0.5
    """NEGSTREAM_SCORE_MIN_INTERVAL_S: at most one model ScoreUpdate per user this often."""
    score_refresh_max_share: float = 0.3
    """NEGSTREAM_SCORE_REFRESH_MAX_SHARE: most of the wall time refreshes of every queued
    user may take; users with new feedback are rescored at every refresh meanwhile."""
    drift_reference_periods: int = 5
    """NEGSTREAM_DRIFT_REFERENCE_PERIODS: report periods that form the rolling reference."""
    device: str = "auto"
    """NEGSTREAM_DEVICE: torch device for the model: auto (cuda if present), cpu or cuda."""
    data_dir: str = "negstream-data"
    """NEGSTREAM_DATA_DIR: worker data (Faust state, checkpoints under ``checkpoints/``)."""
    checkpoint_every_batches: int = 50
    """NEGSTREAM_CHECKPOINT_EVERY_BATCHES: checkpoint after this many training batches, once
    nine times the previous checkpoint's writing time has passed since it."""
    checkpoint_every_s: float = 60.0
    """NEGSTREAM_CHECKPOINT_EVERY_S: or after this many seconds, whichever comes first."""
    model_source: str = "local"
    """NEGSTREAM_MODEL_SOURCE: ``local``, each worker trains its own model on its partitions'
    examples; ``remote``, workers learn nothing and score with the model that ``negstream
    trainer`` publishes to the model-updates topic."""
    model_sync_s: float = 2.0
    """NEGSTREAM_MODEL_SYNC_S: seconds between two model updates the trainer publishes (one is
    published even when nothing was learned: the workers' model age stays honest)."""
    model_snapshot_every: int = 300
    """NEGSTREAM_MODEL_SNAPSHOT_EVERY: every this many updates one is a full snapshot (the
    first after the trainer starts always is); the others are deltas."""
    model_max_age_s: float = 60.0
    """NEGSTREAM_MODEL_MAX_AGE_S: a remote-model worker whose model was taken longer ago than
    this logs it, and the NegstreamModelStale alert fires (``negstream_model_max_age_seconds``)."""
    trainer_world: int = 1
    """NEGSTREAM_TRAINER_WORLD: trainer processes learning one model together (data-parallel
    ``negstream trainer``; each reads its share of the training-examples partitions)."""
    trainer_rank: int = 0
    """NEGSTREAM_TRAINER_RANK: this trainer's rank, 0 to NEGSTREAM_TRAINER_WORLD - 1 (rank 0
    publishes updates and writes checkpoints)."""
    trainer_rendezvous: str = "tcp://127.0.0.1:29500"
    """NEGSTREAM_TRAINER_RENDEZVOUS: ``tcp://host:port`` where rank 0 meets the other trainers
    (with NEGSTREAM_TRAINER_WORLD > 1)."""
    trainer_peer_timeout_s: float = 120.0
    """NEGSTREAM_TRAINER_PEER_TIMEOUT_S: longest a trainer waits for another at a step, or for
    all to join, before it fails (and, restarted, resumes from the last checkpoint)."""
    drift_interval_s: float = 30.0
    """NEGSTREAM_DRIFT_INTERVAL_S: period of drift reports."""
    metrics_host: str = "127.0.0.1"
    """NEGSTREAM_METRICS_HOST: address the /metrics server binds (0.0.0.0 to expose)."""
    metrics_port: int = 6066
    """NEGSTREAM_METRICS_PORT: port of the /metrics server."""
    session_timeout_s: float = 2.0
    """NEGSTREAM_SESSION_TIMEOUT_S: consumer session timeout (Tansu: 2; Kafka: 45)."""
    heartbeat_s: float = 0.5
    """NEGSTREAM_HEARTBEAT_S: consumer heartbeat interval (Tansu: 0.5; Kafka: 3)."""
    producer_max_batch_size: int = 1
    """NEGSTREAM_PRODUCER_MAX_BATCH_SIZE: producer batch bytes (Tansu: 1; Kafka: 16384+)."""
    recovery_consistency_check: bool = False
    """NEGSTREAM_RECOVERY_CONSISTENCY_CHECK: stop a table recovery that finds a changelog's
    end below an offset already read from it, as a sign of a truncated or recreated topic
    (Tansu: false, since it reports the end short when the last batch holds several records;
    Kafka: true)."""
    output_linger_ms: int = 2
    """NEGSTREAM_OUTPUT_LINGER_MS: batching delay of examples and score updates."""
    fast_lane: bool = True
    """NEGSTREAM_FAST_LANE: publish strong negatives' suppressions from a thread of their own
    as soon as they are fetched, ahead of the micro-batch (the batch publishes them too)."""
    fetch_max_wait_ms: int = 10
    """NEGSTREAM_FETCH_MAX_WAIT_MS: longest a fetch waits at the broker (Tansu: 10; Kafka: 100+).
    A consumer that is behind and gets empty answers doubles it for a while (up to 1 s), see
    ``streams.patches.fetch_wait``."""
    security_protocol: str = "PLAINTEXT"
    """NEGSTREAM_SECURITY_PROTOCOL: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    sasl_mechanism: str = "PLAIN"
    """NEGSTREAM_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."""
    sasl_username: str = ""
    """NEGSTREAM_SASL_USERNAME: SASL user."""
    sasl_password: str = ""
    """NEGSTREAM_SASL_PASSWORD: SASL password."""
    ssl_cafile: str = ""
    """NEGSTREAM_SSL_CAFILE: CA bundle that signs the brokers' certificates."""
    pseudonymize_key: str = ""
    """NEGSTREAM_PSEUDONYMIZE_KEY: when set, user ids on output topics are keyed hashes."""
    log_level: str = "info"
    """NEGSTREAM_LOG_LEVEL: crit, error, warn, info or debug."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from ``NEGSTREAM_*`` variables, then apply keyword ``overrides``."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(PREFIX + spec.name.upper())
            if raw is not None:
                values[spec.name] = _convert(spec.name, spec.type, raw)
        values.update(overrides)
        settings = cls(**values)
        settings.check()
        return settings

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and checked."""
        settings = dataclasses.replace(self, **changes)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise :class:`SettingsError` for values that cannot work together."""
        positive = (
            "partitions", "batch_size", "window_short_s", "window_long_s", "window_step_s",
            "label_window_s", "train_batch_size", "drift_interval_s", "max_payload_bytes",
            "fetch_max_wait_ms", "model_sync_s", "model_snapshot_every", "model_max_age_s",
            "trainer_world", "trainer_peer_timeout_s", "open_states",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be > 0")
        if not 0 < self.score_refresh_max_share <= 1:
            raise SettingsError(f"{PREFIX}SCORE_REFRESH_MAX_SHARE must be in (0, 1]")
        if self.output_linger_ms < 0:
            raise SettingsError(f"{PREFIX}OUTPUT_LINGER_MS must be >= 0")
        if self.window_long_s < self.window_short_s:
            raise SettingsError("NEGSTREAM_WINDOW_LONG_S must be >= NEGSTREAM_WINDOW_SHORT_S")
        if self.model_source not in MODEL_SOURCES:
            raise SettingsError(
                f"{PREFIX}MODEL_SOURCE={self.model_source!r} must be one of "
                f"{', '.join(MODEL_SOURCES)}"
            )
        if not 0 <= self.trainer_rank < self.trainer_world:
            raise SettingsError(
                f"{PREFIX}TRAINER_RANK={self.trainer_rank} must be in 0 .. "
                f"{PREFIX}TRAINER_WORLD - 1 ({self.trainer_world - 1})"
            )
        if self.trainer_world > 1 and urlsplit(self.trainer_rendezvous).scheme != "tcp":
            raise SettingsError(
                f"{PREFIX}TRAINER_RENDEZVOUS={self.trainer_rendezvous!r} must be tcp://host:port"
            )
        if self.model_max_age_s <= self.model_sync_s:
            raise SettingsError(
                f"{PREFIX}MODEL_MAX_AGE_S ({self.model_max_age_s}) must be more than "
                f"{PREFIX}MODEL_SYNC_S ({self.model_sync_s}): a model that age is normal"
            )
        if self.device not in {"auto", "cpu", "cuda"} and not self.device.startswith("cuda:"):
            raise SettingsError("NEGSTREAM_DEVICE must be auto, cpu, cuda or cuda:N")
        problem = broker_url_problem(self.broker_url)
        if problem:
            raise SettingsError(
                f"{PREFIX}BROKER_URL={self.broker_url!r}: {problem}; "
                "expected kafka://host:port[;host:port...]"
            )

    def topic(self, name: str) -> str:
        """Full name of a topic setting, e.g. ``topic("scores")``."""
        return self.topic_prefix + str(getattr(self, f"topic_{name}"))

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` list for plain Kafka clients."""
        return [part.split("://", 1)[-1] for part in self.broker_url.replace(",", ";").split(";")]

    @property
    def checkpoint_dir(self) -> str:
        """Directory of model checkpoints."""
        return f"{self.data_dir}/checkpoints"

    @property
    def trainer_checkpoint_dir(self) -> str:
        """Directory of the trainer's checkpoints (``negstream trainer``)."""
        return f"{self.data_dir}/trainer-checkpoints"

    @property
    def trainer_group(self) -> str:
        """Consumer group of the trainer, under which it commits what its checkpoints cover."""
        return f"{self.app_id}-trainer"


def broker_url_problem(url: str) -> str | None:
    """What is wrong with a Faust broker URL, or ``None`` when it is usable.

    The first server names the ``kafka://`` scheme; the others may repeat it or leave it
    out (Faust's own rule). Hosts are separated by ``;`` or ``,``; the port is optional.

    Examples
    --------
    >>> broker_url_problem("kafka://k1:9092;k2:9092,kafka://k3")
    >>> broker_url_problem("http://x")
    'scheme http:// is not kafka://'
    >>> broker_url_problem("kafka://k1:90x2")
    "bad port in 'k1:90x2'"
    """
    for index, server in enumerate(re.split(r"[;,]", url)):
        scheme, separator, address = server.partition("://")
        if not separator:
            if index == 0:
                return "no kafka:// scheme"
            address = server
        elif scheme.lower() != "kafka":
            return f"scheme {scheme}:// is not kafka://"
        if not address.strip() or address != address.strip():
            return f"empty or padded server {server!r}"
        try:
            parsed = urlsplit(f"kafka://{address}")
            parsed.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError:
            return f"bad port in {address!r}"
        extra = parsed.username is not None or parsed.path or parsed.query or parsed.fragment
        if not parsed.hostname or extra:
            return f"{address!r} is not host[:port]"
    return None


def _convert(name: str, kind: Any, raw: str) -> Any:
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
