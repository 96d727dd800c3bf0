"""Codec round trips, dead-letter wrapping and the exported JSON Schema."""

from __future__ import annotations

import base64
import hashlib

from schemas import (
    DriftAlert,
    DriftReport,
    Example,
    decode_dead_letter,
    decode_drift_report,
    decode_example,
    encode,
    make_dead_letter,
)
from schemas.codec import DEAD_LETTER_VALUE_LIMIT
from schemas.jsonschema import SCHEMAS
from schemas.kinds import ALL_KINDS


def test_example_round_trip() -> None:
    example = Example("e1", "u1", "i1", 1.0, "dislike", 3.0, "c1", None, "r1", ("dislike", "skip"),
                      {"neg_rate_short": 0.5}, 2.5)  # fmt: skip
    assert decode_example(encode(example)) == example


def test_drift_report_round_trip() -> None:
    report = DriftReport(
        "global", 0.0, 30.0, 7, {"psi": 0.3}, (DriftAlert("psi", 0.3, 0.25, "act"),)
    )
    assert decode_drift_report(encode(report)) == report


def test_dead_letter_keeps_bounded_bytes_and_describes_the_whole_payload() -> None:
    payload = bytes(range(256)) * (DEAD_LETTER_VALUE_LIMIT // 128)
    letter = make_dead_letter("oversize", "big", topic="t", partition=1, offset=2, key=b"u",
                              value=payload)  # fmt: skip
    kept = base64.b64decode(letter.value_b64)
    assert letter.truncated and len(kept) == DEAD_LETTER_VALUE_LIMIT
    assert payload.startswith(kept)
    assert letter.value_size == len(payload)
    assert letter.value_sha256 == hashlib.sha256(payload).hexdigest()
    assert decode_dead_letter(encode(letter)) == letter


def test_json_schema_lists_required_fields_and_kinds() -> None:
    feedback = SCHEMAS["negative-feedback"]()
    assert set(feedback["required"]) == {"event_id", "user_id", "item_id", "kind", "timestamp"}
    assert set(feedback["properties"]["kind"]["enum"]) == ALL_KINDS
    impression = SCHEMAS["impressions"]()
    assert "kind" not in impression["properties"]
