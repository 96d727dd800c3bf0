"""Strict validation of raw input events, with one clear reason per failure."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Final

import orjson

from schemas.events import Feedback, Impression
from schemas.kinds import ALL_KINDS

#: Every reason a message can be rejected with; each is a ``reason`` label on dead letters.
REASONS: Final = (
    "oversize",
    "not_utf8",
    "bad_json",
    "nan",
    "too_deep",
    "not_object",
    "missing_field",
    "wrong_type",
    "bad_value",
    "unknown_kind",
    "timestamp_out_of_range",
    "key_mismatch",
)

#: Event time must fall in [2000-01-01, 2100-01-01) UTC, in epoch seconds.
MIN_TIMESTAMP: Final = 946_684_800.0
MAX_TIMESTAMP: Final = 4_102_444_800.0
DEFAULT_MAX_BYTES: Final = 64 * 1024
MAX_ID_LENGTH: Final = 512

_NAN_TOKEN = re.compile(rb"(?<![\"\w])-?(NaN|Infinity)\b")


class ValidationError(ValueError):
    """An input message that negstream rejects; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_object(raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Decode one JSON object from ``raw``.

    Examples
    --------
    >>> parse_object(b'{"a": 1}')
    {'a': 1}
    >>> parse_object(b'{"a": NaN}')
    Traceback (most recent call last):
    ...
    schemas.validation.ValidationError: nan: NaN and Infinity are not valid JSON numbers
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise ValidationError("wrong_type", f"payload is {type(raw).__name__}, not bytes")
    if len(raw) > max_bytes:
        raise ValidationError("oversize", f"payload is {len(raw)} bytes, limit {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _classify_decode_error(bytes(raw), str(exc)) from None
    if not isinstance(obj, dict):
        raise ValidationError("not_object", f"payload is a JSON {type(obj).__name__}, not object")
    return obj


def _classify_decode_error(raw: bytes, message: str) -> ValidationError:
    if "UTF-8" in message:
        return ValidationError("not_utf8", message)
    if "depth limit" in message:
        return ValidationError("too_deep", message)
    if "infinity" in message or _NAN_TOKEN.search(raw):
        return ValidationError("nan", "NaN and Infinity are not valid JSON numbers")
    return ValidationError("bad_json", message)


def _string(obj: dict[str, Any], name: str, required: bool) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise ValidationError("missing_field", f"field {name!r} is required")
        return None
    if not isinstance(value, str):
        raise ValidationError("wrong_type", f"field {name!r} must be a string")
    if not value or len(value) > MAX_ID_LENGTH:
        raise ValidationError("bad_value", f"field {name!r} must have 1..{MAX_ID_LENGTH} chars")
    return value


def _count(obj: dict[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("wrong_type", f"field {name!r} must be an integer")
    if not 0 <= value < 2**31:
        raise ValidationError("bad_value", f"field {name!r} must be in [0, 2**31)")
    return value


def parse_timestamp(value: Any, latest: float | None = None) -> float:
    """Event time in epoch seconds from a number or an ISO-8601 string with a UTC offset.

    Examples
    --------
    >>> parse_timestamp(1767225600)
    1767225600.0
    >>> parse_timestamp("2026-01-01T00:00:00Z")
    1767225600.0
    >>> try:
    ...     parse_timestamp(1767225600000)
    ... except ValidationError as exc:
    ...     print(exc.reason, "milliseconds" in exc.detail)
    timestamp_out_of_range True
    """
    if value is None:
        raise ValidationError("missing_field", "field 'timestamp' is required")
    if isinstance(value, bool):
        raise ValidationError("wrong_type", "field 'timestamp' must be a number or string")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            detail = f"timestamp {value[:40]!r} is not ISO-8601"
            raise ValidationError("bad_value", detail) from None
        if parsed.tzinfo is None:
            raise ValidationError("bad_value", "timestamp string needs a UTC offset (e.g. 'Z')")
        seconds = parsed.timestamp()
    else:
        raise ValidationError("wrong_type", "field 'timestamp' must be a number or string")
    if latest is not None and math.isfinite(seconds) and seconds > latest:
        # A clock far ahead would drag the event-time watermark with it and make every
        # other user's events on the partition late.
        raise ValidationError(
            "timestamp_out_of_range", f"timestamp {value} is later than the allowed {latest:.0f}"
        )
    if not math.isfinite(seconds) or not MIN_TIMESTAMP <= seconds < MAX_TIMESTAMP:
        hint = " (milliseconds? divide by 1000)" if seconds >= MAX_TIMESTAMP * 100 else ""
        raise ValidationError(
            "timestamp_out_of_range",
            f"timestamp {value} is outside [2000-01-01, 2100-01-01) in epoch seconds{hint}",
        )
    return seconds


def _check_key(user_id: str, key: bytes | None) -> None:
    if key is not None and key != user_id.encode():
        shown = key[:64].decode("utf-8", "replace")
        raise ValidationError("key_mismatch", f"message key {shown!r} is not user_id {user_id!r}")


def validate_impression(
    obj: dict[str, Any], key: bytes | None = None, latest: float | None = None
) -> Impression:
    """Build an :class:`Impression` from a decoded object, or raise :class:`ValidationError`."""
    user_id = _string(obj, "user_id", True)
    assert user_id is not None
    _check_key(user_id, key)
    return Impression(
        event_id=_string(obj, "event_id", True) or "",
        user_id=user_id,
        item_id=_string(obj, "item_id", True) or "",
        timestamp=parse_timestamp(obj.get("timestamp"), latest),
        creator_id=_string(obj, "creator_id", False),
        category=_string(obj, "category", False),
        request_id=_string(obj, "request_id", False),
        position=_count(obj, "position"),
    )


def validate_feedback(
    obj: dict[str, Any], key: bytes | None = None, latest: float | None = None
) -> Feedback:
    """Build a :class:`Feedback` from a decoded object, or raise :class:`ValidationError`."""
    user_id = _string(obj, "user_id", True)
    assert user_id is not None
    _check_key(user_id, key)
    kind = obj.get("kind")
    if kind is None:
        raise ValidationError("missing_field", "field 'kind' is required")
    if not isinstance(kind, str):
        raise ValidationError("wrong_type", "field 'kind' must be a string")
    if kind not in ALL_KINDS:
        detail = f"kind {kind[:40]!r} is not one of {sorted(ALL_KINDS)}"
        raise ValidationError("unknown_kind", detail)
    return Feedback(
        event_id=_string(obj, "event_id", True) or "",
        user_id=user_id,
        item_id=_string(obj, "item_id", True) or "",
        kind=kind,
        timestamp=parse_timestamp(obj.get("timestamp"), latest),
        creator_id=_string(obj, "creator_id", False),
        category=_string(obj, "category", False),
        request_id=_string(obj, "request_id", False),
        dwell_ms=_count(obj, "dwell_ms"),
    )


def decode_impression(
    raw: bytes,
    key: bytes | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    latest: float | None = None,
) -> Impression:
    """Decode and validate one raw impression message.

    ``latest`` (epoch seconds), when given, is the latest event time accepted.

    Examples
    --------
    >>> raw = b'{"event_id":"e1","user_id":"u1","item_id":"i1","timestamp":1767225600}'
    >>> decode_impression(raw, key=b"u1").item_id
    'i1'
    """
    return validate_impression(parse_object(raw, max_bytes), key, latest)


def decode_feedback(
    raw: bytes,
    key: bytes | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    latest: float | None = None,
) -> Feedback:
    """Decode and validate one raw feedback message.

    Examples
    --------
    >>> raw = b'{"event_id":"e2","user_id":"u1","item_id":"i1","kind":"meh","timestamp":1767225600}'
    >>> try:
    ...     decode_feedback(raw)
    ... except ValidationError as exc:
    ...     print(exc.reason)
    unknown_kind
    """
    return validate_feedback(parse_object(raw, max_bytes), key, latest)
