"""Event and output records exchanged on negstream's topics."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Dense per-user table features carried by every training example, in model input order.
FEATURE_NAMES: tuple[str, ...] = (
    "neg_rate_short",
    "neg_rate_long",
    "explicit_neg_long",
    "creator_neg_long",
    "category_neg_long",
    "item_exposure",
    "creator_exposure",
    "impressions_long",
)


@dataclass(frozen=True, slots=True)
class Impression:
    """An item shown to a user (topic ``impressions``, key ``user_id``)."""

    event_id: str
    user_id: str
    item_id: str
    timestamp: float
    creator_id: str | None = None
    category: str | None = None
    request_id: str | None = None
    position: int | None = None


@dataclass(frozen=True, slots=True)
class Feedback:
    """A user's reaction to an item (topic ``negative-feedback``, key ``user_id``)."""

    event_id: str
    user_id: str
    item_id: str
    kind: str
    timestamp: float
    creator_id: str | None = None
    category: str | None = None
    request_id: str | None = None
    dwell_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Example:
    """An impression joined with the feedback that followed it (topic ``training-examples``)."""

    example_id: str
    user_id: str
    item_id: str
    timestamp: float
    label: str
    weight: float
    creator_id: str | None = None
    category: str | None = None
    request_id: str | None = None
    kinds: tuple[str, ...] = ()
    features: dict[str, float] = field(default_factory=dict)
    label_delay_s: float | None = None


@dataclass(frozen=True, slots=True)
class Suppression:
    """Demote ``target_type``/``target_id`` for one user by ``penalty`` until ``expires_at``."""

    target_type: str
    target_id: str
    penalty: float
    expires_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class ItemScore:
    """The model's view of one candidate item for one user."""

    item_id: str
    p_negative: float
    score: float


@dataclass(frozen=True, slots=True)
class ScoreUpdate:
    """Refreshed scores and suppressions for one user (topic ``scores``, key ``user_id``).

    ``update_id`` names the update: a copy written again (a resend after a broker timeout;
    for fast-path updates also a replay after a crash) carries the same id, so a consumer
    drops copies by it.
    """

    user_id: str
    source: str
    model_version: int
    timestamp: float
    trigger_event_ids: tuple[str, ...] = ()
    scores: tuple[ItemScore, ...] = ()
    suppressions: tuple[Suppression, ...] = ()
    update_id: str = ""


@dataclass(frozen=True, slots=True)
class DriftAlert:
    """A drift threshold that fired."""

    metric: str
    value: float
    threshold: float
    level: str


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Drift and model-quality figures over one report period (topic ``drift-metrics``)."""

    scope: str
    window_start: float
    window_end: float
    model_version: int
    metrics: dict[str, float] = field(default_factory=dict)
    alerts: tuple[DriftAlert, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected input message with the reason and where it came from (topic ``dead-letters``).

    ``value_b64`` holds the raw bytes, base64-encoded, cut to a bounded size for huge payloads;
    ``value_size`` and ``value_sha256`` always describe the whole original payload.
    """

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    key: str | None
    value_b64: str
    value_size: int
    value_sha256: str
    truncated: bool = False
