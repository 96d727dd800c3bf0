"""orjson codec for negstream records."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from schemas.events import (
    DeadLetter,
    DriftAlert,
    DriftReport,
    Example,
    ItemScore,
    ScoreUpdate,
    Suppression,
)

#: Raw payload bytes kept in a dead letter; the size and digest always cover the whole payload.
DEAD_LETTER_VALUE_LIMIT = 64 * 1024


def encode(record: Any) -> bytes:
    """Serialise a record (dataclass, dict or list of them) to JSON bytes.

    Examples
    --------
    >>> encode(Suppression("item", "i1", 1.0, 10.0, "not_interested"))
    b'{"target_type":"item","target_id":"i1","penalty":1.0,"expires_at":10.0,"reason":"not_interested"}'
    """
    return orjson.dumps(record)


def decode_example(raw: bytes) -> Example:
    """Decode a ``training-examples`` value."""
    obj = orjson.loads(raw)
    obj["kinds"] = tuple(obj.get("kinds", ()))
    return Example(**obj)


def decode_score_update(raw: bytes) -> ScoreUpdate:
    """Decode a ``scores`` value.

    Examples
    --------
    >>> update = ScoreUpdate("u1", "fast_path", 0, 5.0, ("e1",), (ItemScore("i1", 0.9, 0.1),))
    >>> decode_score_update(encode(update)) == update
    True
    """
    obj = orjson.loads(raw)
    obj["trigger_event_ids"] = tuple(obj.get("trigger_event_ids", ()))
    obj["scores"] = tuple(ItemScore(**s) for s in obj.get("scores", ()))
    obj["suppressions"] = tuple(Suppression(**s) for s in obj.get("suppressions", ()))
    return ScoreUpdate(**obj)


def decode_drift_report(raw: bytes) -> DriftReport:
    """Decode a ``drift-metrics`` value."""
    obj = orjson.loads(raw)
    obj["alerts"] = tuple(DriftAlert(**a) for a in obj.get("alerts", ()))
    return DriftReport(**obj)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    """Decode a ``dead-letters`` value."""
    return DeadLetter(**orjson.loads(raw))


def make_dead_letter(
    reason: str,
    detail: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
) -> DeadLetter:
    """Wrap a rejected message, keeping at most :data:`DEAD_LETTER_VALUE_LIMIT` raw bytes.

    Examples
    --------
    >>> letter = make_dead_letter("bad_json", "x", topic="t", partition=0, offset=7,
    ...                           key=b"u1", value=b"{")
    >>> letter.value_b64, letter.value_size, letter.truncated
    ('ew==', 1, False)
    """
    payload = bytes(value or b"")
    kept = payload[:DEAD_LETTER_VALUE_LIMIT]
    return DeadLetter(
        reason=reason,
        detail=detail[:500],
        topic=topic,
        partition=partition,
        offset=offset,
        key=None if key is None else key[:1024].decode("utf-8", "replace"),
        value_b64=base64.b64encode(kept).decode("ascii"),
        value_size=len(payload),
        value_sha256=hashlib.sha256(payload).hexdigest(),
        truncated=len(kept) < len(payload),
    )
