"""Strict validation of raw input events, with one clear reason per failure.

The field rules come from :mod:`schemas.contract`, the declaration the JSON Schema is built from.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from schemas.contract import DEFAULT_MAX_BYTES, FEEDBACK, IMPRESSION
from schemas.events import Feedback, Impression
from schemas.rules import (
    MAX_ID_LENGTH,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    REASONS,
    EventTime,
    ValidationError,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_ID_LENGTH",
    "MAX_TIMESTAMP",
    "MIN_TIMESTAMP",
    "REASONS",
    "ValidationError",
    "decode_feedback",
    "decode_impression",
    "parse_object",
    "parse_timestamp",
    "validate_feedback",
    "validate_impression",
]

_NAN_TOKEN = re.compile(rb"(?<![\"\w])-?(NaN|Infinity)\b")
_EVENT_TIME = EventTime()


def parse_object(raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Decode one JSON object from ``raw``.

    Examples
    --------
    >>> parse_object(b'{"a": 1}')
    {'a': 1}
    >>> parse_object(b'{"a": NaN}')
    Traceback (most recent call last):
    ...
    schemas.rules.ValidationError: nan: NaN and Infinity are not valid JSON numbers
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


def parse_timestamp(value: Any, latest: float | None = None) -> float:
    """Event time in epoch seconds from a number or an RFC 3339 string with an offset.

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
    return _EVENT_TIME.check("timestamp", value, latest)


def validate_impression(
    obj: dict[str, Any], key: bytes | None = None, latest: float | None = None
) -> Impression:
    """Build an :class:`Impression` from a decoded object, or raise :class:`ValidationError`."""
    return IMPRESSION.validate(obj, key, latest)


def validate_feedback(
    obj: dict[str, Any], key: bytes | None = None, latest: float | None = None
) -> Feedback:
    """Build a :class:`Feedback` from a decoded object, or raise :class:`ValidationError`."""
    return FEEDBACK.validate(obj, key, latest)


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
