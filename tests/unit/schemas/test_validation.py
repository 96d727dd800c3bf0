"""Validation of raw input: every failure has its reason; nothing else is ever raised."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import ValidationError, decode_feedback, decode_impression
from schemas.validation import REASONS, parse_timestamp

GOOD_IMPRESSION = {
    "event_id": "e1",
    "user_id": "u1",
    "item_id": "i1",
    "timestamp": 1_767_225_600.0,
    "creator_id": "c1",
    "category": "news",
    "request_id": "r1",
    "position": 3,
}
GOOD_FEEDBACK = {**GOOD_IMPRESSION, "event_id": "e2", "kind": "not_interested"}
del GOOD_FEEDBACK["position"]


def reason_of(raw: bytes, key: bytes | None = b"u1", feedback: bool = False) -> str:
    decode = decode_feedback if feedback else decode_impression
    with pytest.raises(ValidationError) as caught:
        decode(raw, key=key)
    assert caught.value.reason in REASONS
    return caught.value.reason


def test_valid_events_decode_to_records() -> None:
    impression = decode_impression(orjson.dumps(GOOD_IMPRESSION), key=b"u1")
    assert (impression.user_id, impression.item_id, impression.position) == ("u1", "i1", 3)
    feedback = decode_feedback(orjson.dumps(GOOD_FEEDBACK), key=b"u1")
    assert feedback.kind == "not_interested"
    assert feedback.timestamp == 1_767_225_600.0


def test_iso_timestamps_need_an_offset() -> None:
    assert parse_timestamp("2026-01-01T01:00:00+01:00") == 1_767_225_600.0
    with pytest.raises(ValidationError) as caught:
        parse_timestamp("2026-01-01T00:00:00")
    assert caught.value.reason == "bad_value"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"x" * 70_000, "oversize"),
        (b'{"user_id": "\xff\xfe"}', "not_utf8"),
        (b'{"user_id": "u1", ', "bad_json"),
        (b'{"timestamp": NaN}', "nan"),
        (b'{"timestamp": Infinity}', "nan"),
        (b"[" * 2000 + b"]" * 2000, "too_deep"),
        (b"[1, 2]", "not_object"),
        (b'"just a string"', "not_object"),
    ],
)
def test_undecodable_payloads(raw: bytes, reason: str) -> None:
    assert reason_of(raw) == reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"user_id": None}, "missing_field"),
        ({"event_id": None}, "missing_field"),
        ({"timestamp": None}, "missing_field"),
        ({"item_id": 7}, "wrong_type"),
        ({"timestamp": [1]}, "wrong_type"),
        ({"timestamp": True}, "wrong_type"),
        ({"position": "3"}, "wrong_type"),
        ({"position": -1}, "bad_value"),
        ({"item_id": ""}, "bad_value"),
        ({"item_id": "x" * 600}, "bad_value"),
        ({"timestamp": 1e13}, "timestamp_out_of_range"),
        ({"timestamp": -5}, "timestamp_out_of_range"),
        ({"timestamp": "yesterday"}, "bad_value"),
    ],
)
def test_bad_fields(change: dict[str, object], reason: str) -> None:
    event = {**GOOD_IMPRESSION, **change}
    assert reason_of(orjson.dumps(event)) == reason


def test_unknown_kind_and_key_mismatch() -> None:
    assert (
        reason_of(orjson.dumps({**GOOD_FEEDBACK, "kind": "meh"}), feedback=True) == "unknown_kind"
    )
    assert reason_of(orjson.dumps({**GOOD_FEEDBACK, "kind": 3}), feedback=True) == "wrong_type"
    assert reason_of(orjson.dumps(GOOD_IMPRESSION), key=b"someone-else") == "key_mismatch"


def test_oversize_is_checked_before_parsing() -> None:
    big = orjson.dumps({**GOOD_IMPRESSION, "padding": "x" * 100})
    with pytest.raises(ValidationError) as caught:
        decode_impression(big, max_bytes=64)
    assert caught.value.reason == "oversize"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_validation_errors(raw: bytes) -> None:
    for decode in (decode_impression, decode_feedback):
        try:
            record = decode(raw, key=None)
        except ValidationError as error:
            assert error.reason in REASONS
        else:
            assert record.user_id


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(sorted({*GOOD_IMPRESSION, "kind", "dwell_ms"}))


@settings(max_examples=500, deadline=None)
@given(JSON, st.dictionaries(FIELDS, JSON, max_size=6), st.booleans())
def test_arbitrary_json_raises_only_validation_errors(
    value: object, overrides: dict[str, object], as_event: bool
) -> None:
    payload = {**GOOD_FEEDBACK, **overrides} if as_event else value
    try:
        raw = orjson.dumps(payload)
    except (TypeError, orjson.JSONEncodeError):
        return
    for decode in (decode_impression, decode_feedback):
        try:
            record = decode(raw, key=None)
        except ValidationError as error:
            assert error.reason in REASONS
        else:
            assert math.isfinite(record.timestamp)


def test_event_times_beyond_the_allowed_future_are_rejected() -> None:
    raw = orjson.dumps(GOOD_IMPRESSION)
    assert decode_impression(raw, latest=GOOD_IMPRESSION["timestamp"]).event_id == "e1"
    with pytest.raises(ValidationError) as caught:
        decode_impression(raw, latest=GOOD_IMPRESSION["timestamp"] - 1)
    assert caught.value.reason == "timestamp_out_of_range"
