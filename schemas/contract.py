"""The one declaration of the input events: the worker validates with it, producers get its schema.

Examples
--------
>>> IMPRESSION.validate({"event_id": "e1", "user_id": "u1", "item_id": "i1",
...                      "timestamp": "2026-01-01T00:00:00Z"}).timestamp
1767225600.0
>>> FEEDBACK.json_schema()["required"]
['user_id', 'kind', 'event_id', 'item_id', 'timestamp']
"""

from __future__ import annotations

from typing import Final

from schemas.events import Feedback, Impression
from schemas.kinds import ALL_KINDS
from schemas.rules import (
    END_YEAR,
    FIRST_YEAR,
    Choice,
    Count,
    EventTime,
    Field,
    RecordRules,
    Text,
)

#: Payloads larger than this are rejected (``oversize``) unless the worker is set otherwise.
DEFAULT_MAX_BYTES: Final = 64 * 1024

#: What the worker checks beyond the schema, in every schema's description and the README.
CONTEXT_RULES: Final = (
    "Other properties are allowed and ignored. Beyond this schema the worker checks: "
    "the message key must be the user_id as UTF-8 (key_mismatch; a message without a key is "
    "accepted and re-keyed); event time may be at most NEGSTREAM_MAX_FUTURE_S (1 h by default) "
    "ahead of the worker's clock (timestamp_out_of_range); the payload must be at most "
    f"NEGSTREAM_MAX_PAYLOAD_BYTES ({DEFAULT_MAX_BYTES} by default) bytes (oversize) of UTF-8 "
    "(not_utf8) JSON text without NaN, Infinity or numbers beyond double range (nan), lone "
    "surrogate escapes (bad_json) or nesting deeper than 1024 (too_deep)."
)

_ID = Text()
_TIMESTAMP = EventTime()

#: Shared fields, in the order they are checked; ``user_id`` first, as the key must match it.
_USER = Field("user_id", _ID, True, "The user; also the message key.", is_key=True)
_EVENT = Field("event_id", _ID, True, "Unique id of the event; repeats are counted once.")
_ITEM = Field("item_id", _ID, True, "The item shown or reacted to.")
_TIME = Field(
    "timestamp",
    _TIMESTAMP,
    True,
    f"Event time: epoch seconds in [{FIRST_YEAR}-01-01, {END_YEAR}-01-01) UTC, or an RFC 3339 "
    f"date-time with an offset ('T' or a space before the time, seconds optional) dated "
    f"{FIRST_YEAR} to {END_YEAR - 1}.",
)
_OPTIONAL = (
    Field("creator_id", _ID, False, "Creator of the item."),
    Field("category", _ID, False, "Category of the item."),
    Field("request_id", _ID, False, "The request that showed the item; narrows the label join."),
)

#: An ``impressions`` message value.
IMPRESSION: Final = RecordRules(
    "impressions",
    "impression",
    Impression,
    (
        _USER,
        _EVENT,
        _ITEM,
        _TIME,
        *_OPTIONAL,
        Field("position", Count(), False, "Rank of the item in the request, from 0."),
    ),
    CONTEXT_RULES,
)

#: A ``negative-feedback`` message value.
FEEDBACK: Final = RecordRules(
    "negative-feedback",
    "feedback",
    Feedback,
    (
        _USER,
        Field("kind", Choice(ALL_KINDS), True, "The reaction: a negative or a positive kind."),
        _EVENT,
        _ITEM,
        _TIME,
        *_OPTIONAL,
        Field("dwell_ms", Count(), False, "Time spent on the item, in milliseconds."),
    ),
    CONTEXT_RULES,
)

#: The declarations by the topic they describe.
RECORDS: Final = {rules.topic: rules for rules in (IMPRESSION, FEEDBACK)}
