"""Ingest: decode and validate input messages; bad ones become dead letters with a reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from schemas.codec import make_dead_letter
from schemas.events import DeadLetter, Feedback, Impression
from schemas.validation import ValidationError, parse_object, validate_feedback, validate_impression


class RawMessage(NamedTuple):
    """One consumed message, as the broker delivered it (a tuple: made for every message
    read, at about a quarter of a frozen dataclass's cost)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


@dataclass
class Decoded:
    """The outcome of decoding a batch: events by position, and what was rejected."""

    events: list[tuple[int, Impression | Feedback]] = field(default_factory=list)
    unkeyed: list[tuple[int, Impression | Feedback]] = field(default_factory=list)
    dead_letters: list[tuple[int, DeadLetter]] = field(default_factory=list)


def decode_batch(
    messages: Sequence[RawMessage],
    impressions_topic: str,
    max_bytes: int,
    latest: float | None = None,
    into: Decoded | None = None,
    first: int = 0,
) -> Decoded:
    """Validate each message; every message lands in exactly one of the three lists.

    A message without a key is valid but sits on a partition chosen without its user_id, so
    it is returned in ``unkeyed`` to be re-sent keyed (the repartition step). A batch can be
    decoded a slice at a time: ``into`` the slices before it, its messages numbered from
    ``first``.
    """
    decoded = Decoded() if into is None else into
    for position, message in enumerate(messages, first):
        try:
            record = decode_one(message, impressions_topic, max_bytes, latest)
        except ValidationError as error:
            letter = make_dead_letter(
                error.reason,
                error.detail,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=message.value,
            )
            decoded.dead_letters.append((position, letter))
            continue
        target = decoded.events if message.key is not None else decoded.unkeyed
        target.append((position, record))
    return decoded


def decode_one(
    message: RawMessage, impressions_topic: str, max_bytes: int, latest: float | None = None
) -> Impression | Feedback:
    """Decode one message by the topic it came from, or raise :class:`ValidationError`."""
    if message.value is None:
        raise ValidationError("bad_json", "message has no value (a tombstone?)")
    obj: dict[str, Any] = parse_object(message.value, max_bytes)
    if message.topic == impressions_topic:
        return validate_impression(obj, message.key, latest)
    return validate_feedback(obj, message.key, latest)
