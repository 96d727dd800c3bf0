"""Bad input at scale through a real worker, and pseudonymous user ids on every output."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemas import ValidationError, decode_dead_letter, decode_example, decode_score_update
from schemas.validation import decode_feedback, decode_impression
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from tests.support import WorkerProcess, consume, isolated_settings, produce

pytestmark = pytest.mark.broker
T0 = 1_767_225_600.0

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)  # fmt: skip
FIELDS = st.sampled_from(["event_id", "user_id", "item_id", "kind", "timestamp", "position",
                          "creator_id", "dwell_ms"])  # fmt: skip
MUTATED = st.builds(
    lambda n, changes: orjson.dumps({"event_id": f"z{n}", "user_id": "fuzz", "item_id": "i",
                                     "kind": "hide", "timestamp": T0, **changes}),
    st.integers(0, 10**9), st.dictionaries(FIELDS, JSON_VALUES, min_size=1, max_size=3),
)  # fmt: skip
PAYLOADS = st.one_of(st.binary(max_size=200), MUTATED,
                     JSON_VALUES.map(lambda v: orjson.dumps(v)))  # fmt: skip

_EVENT = b'{"event_id": "%s", "user_id": "fuzz", "item_id": "i", "kind": "hide", "timestamp": %s}'
NASTIES: list[tuple[str, bytes | None, bytes]] = [
    ("feedback", b"fuzz", b'{"user_id": "fuzz", "pad": "' + b"x" * (10 * 2**20) + b'"}'),
    ("impressions", b"fuzz", b"[" * 5_000 + b"]" * 5_000),
    ("feedback", b"fuzz", (_EVENT % (b"n2", b"1767225600")).decode().encode("utf-16")),
    ("feedback", b"fuzz", _EVENT % (b"n3", b"-1767225600")),
    ("feedback", b"fuzz", _EVENT % (b"n4", b"1e300")),
    ("feedback", b"fuzz", _EVENT % (b"n5", b"17672256000000000000000")),
    ("feedback", b"fuzz", (_EVENT % (b"n6", b"1767225600")).replace(b"hide", b"love")),
    ("feedback", b"fuzz", _EVENT % (b"n7", b"NaN")),
    ("feedback", b"fuzz", _EVENT % (b"n8", b"-Infinity")),
    ("feedback", b"mallory", _EVENT % (b"n9", b"1767225600")),
    ("impressions", b"fuzz", b"\xff\xfe\x00\x00garbage"),
    ("impressions", b"fuzz", b""),
]


def rejected(topic: str, key: bytes | None, raw: bytes) -> bool:
    decode = decode_impression if topic == "impressions" else decode_feedback
    try:
        decode(raw, key=key, max_bytes=64 * 1024, latest=time.time() + 3600)
    except ValidationError:
        return True
    return False


@settings(max_examples=1, phases=[Phase.generate], deadline=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
@given(fuzz=st.lists(PAYLOADS, min_size=2000, max_size=2000))
def test_fuzzed_input_is_dead_lettered_and_valid_events_around_it_survive(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory, fuzz: list[bytes]
) -> None:
    tmp_path = tmp_path_factory.mktemp("fuzz")
    config = isolated_settings(broker.url, tmp_path)
    ensure_topics(config)
    messages: list[tuple[str, bytes | None, Any]] = []
    valid_ids = []
    cases = [(("impressions", "feedback")[n % 2], (b"fuzz", b"other")[n % 7 == 0], raw)
             for n, raw in enumerate(fuzz)]  # fmt: skip
    for n, (topic, key, raw) in enumerate(cases + NASTIES):
        messages.append((topic, key, raw))
        if n % 10 == 0:
            valid = {
                "event_id": f"ok-{n}",
                "user_id": "good",
                "item_id": f"i{n}",
                "timestamp": T0 + n / 1000,
            }
            messages.append(("impressions", b"good", valid))
            valid_ids.append(f"ok-{n}")
    topic_name = {"impressions": "impressions", "feedback": "negative-feedback"}
    expected_letters = sum(
        1 for t, k, raw in messages if isinstance(raw, bytes) and rejected(topic_name[t], k, raw)
    )
    worker = WorkerProcess(config, tmp_path / "worker.log").start()
    try:
        produce(config, messages)
        letters = consume(
            config, "dead_letters", lambda got: len(got) >= expected_letters, timeout=120
        )
        examples = consume(
            config,
            "examples",
            lambda got: {decode_example(v).example_id for _, v in got} >= set(valid_ids),
            timeout=60,
        )
        assert worker.process is not None and worker.process.poll() is None, "the worker stays up"
    finally:
        worker.stop()
    assert len(letters) == expected_letters
    reasons = {decode_dead_letter(v).reason for _, v in letters}
    assert {"oversize", "too_deep", "not_utf8", "nan", "timestamp_out_of_range", "unknown_kind",
            "key_mismatch"} <= reasons  # fmt: skip
    good = {
        decode_example(v).example_id for _, v in examples if decode_example(v).user_id == "good"
    }
    assert good == set(valid_ids)


def test_pseudonymized_outputs_hide_user_ids(broker: EmbeddedBroker, tmp_path: Path) -> None:
    config = isolated_settings(broker.url, tmp_path, pseudonymize_key="s3cret", label_window_s=1.0)
    ensure_topics(config)
    hidden = hmac.new(b"s3cret", b"alice", hashlib.sha256).hexdigest()[:32]
    impression = {"event_id": "i-1", "user_id": "alice", "item_id": "v9", "timestamp": T0}
    feedback = {**impression, "event_id": "f-1", "kind": "not_interested", "timestamp": T0 + 1}
    broken = b'{"event_id": "b-1", "user_id": "alice", "timestamp": NaN}'
    worker = WorkerProcess(config, tmp_path / "worker.log").start()
    try:
        produce(config, [("impressions", b"alice", impression), ("feedback", b"alice", feedback),
                         ("feedback", b"alice", broken)])  # fmt: skip
        scores = consume(config, "scores", lambda got: len(got) >= 1)
        examples = consume(config, "examples", lambda got: len(got) >= 1)
        letters = consume(config, "dead_letters", lambda got: len(got) >= 1)
    finally:
        worker.stop()
    for key, value in scores + examples + letters:
        assert b"alice" not in key and b"alice" not in value, value.decode()[-300:]
    assert scores[0][0] == hidden.encode() and decode_score_update(scores[0][1]).user_id == hidden
    assert decode_example(examples[0][1]).user_id == hidden
    letter = decode_dead_letter(letters[0][1])
    assert letter.reason == "nan" and base64.b64decode(letter.value_b64) == b""
    assert letter.value_sha256 == hashlib.sha256(broken).hexdigest()
