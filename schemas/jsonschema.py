"""JSON Schema (draft 2020-12) of the input events, for producers in any language."""

from __future__ import annotations

from typing import Any

from schemas.kinds import ALL_KINDS
from schemas.validation import MAX_ID_LENGTH, MAX_TIMESTAMP, MIN_TIMESTAMP

_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
_OPTIONAL_ID = {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_ID_LENGTH}
_COUNT = {"type": ["integer", "null"], "minimum": 0, "maximum": 2**31 - 1}
_TIMESTAMP = {
    "description": "Event time: epoch seconds, or ISO-8601 with a UTC offset.",
    "oneOf": [
        {"type": "number", "minimum": MIN_TIMESTAMP, "exclusiveMaximum": MAX_TIMESTAMP},
        {"type": "string", "format": "date-time"},
    ],
}


def _schema(title: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://negstream.dev/schemas/{title}.json",
        "title": title,
        "description": "Message value; the message key must be the user_id (UTF-8).",
        "type": "object",
        "properties": properties,
        "required": required,
    }


def impression_schema() -> dict[str, Any]:
    """Schema of an ``impressions`` message value."""
    return _schema(
        "impression",
        {
            "event_id": _ID,
            "user_id": _ID,
            "item_id": _ID,
            "timestamp": _TIMESTAMP,
            "creator_id": _OPTIONAL_ID,
            "category": _OPTIONAL_ID,
            "request_id": _OPTIONAL_ID,
            "position": _COUNT,
        },
        ["event_id", "user_id", "item_id", "timestamp"],
    )


def feedback_schema() -> dict[str, Any]:
    """Schema of a ``negative-feedback`` message value."""
    return _schema(
        "feedback",
        {
            "event_id": _ID,
            "user_id": _ID,
            "item_id": _ID,
            "kind": {"type": "string", "enum": sorted(ALL_KINDS)},
            "timestamp": _TIMESTAMP,
            "creator_id": _OPTIONAL_ID,
            "category": _OPTIONAL_ID,
            "request_id": _OPTIONAL_ID,
            "dwell_ms": _COUNT,
        },
        ["event_id", "user_id", "item_id", "kind", "timestamp"],
    )


#: Schema builders by the topic they describe.
SCHEMAS = {"impressions": impression_schema, "negative-feedback": feedback_schema}
