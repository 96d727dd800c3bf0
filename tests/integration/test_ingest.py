"""A real worker on the embedded broker: valid events counted once, bad ones dead-lettered."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from schemas import decode_dead_letter, decode_example
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from tests.support import WorkerProcess, consume, isolated_settings, produce

pytestmark = pytest.mark.broker
T0 = 1_767_225_600.0

MALFORMED = {
    "bad_json": b'{"event_id": "x", ',
    "not_utf8": b'{"user_id": "\xff\xfe"}',
    "nan": b'{"event_id": "x", "user_id": "u0", "item_id": "i", "timestamp": NaN}',
    "missing_field": orjson.dumps({"event_id": "m1", "item_id": "i1", "timestamp": T0}),
    "wrong_type": orjson.dumps(
        {"event_id": "m2", "user_id": "u0", "item_id": "i1", "timestamp": [1]}
    ),
    "timestamp_out_of_range": orjson.dumps(
        {"event_id": "m3", "user_id": "u0", "item_id": "i1", "timestamp": 1e13}
    ),
    "oversize": orjson.dumps(
        {"event_id": "m4", "user_id": "u0", "item_id": "i1", "timestamp": T0, "pad": "x" * 200_000}
    ),
    "too_deep": b"[" * 3000 + b"]" * 3000,
    "not_object": b"[1, 2, 3]",
}
UNKNOWN_KIND = orjson.dumps(
    {"event_id": "m5", "user_id": "u0", "item_id": "i1", "kind": "meh", "timestamp": T0}
)
KEY_MISMATCH = orjson.dumps({"event_id": "m6", "user_id": "u1", "item_id": "i1", "timestamp": T0})


def impression(n: int, user: str) -> dict[str, object]:
    return {"event_id": f"imp-{n}", "user_id": user, "item_id": f"i{n % 7}",
            "creator_id": f"c{n % 3}", "category": "g", "timestamp": T0 + n}  # fmt: skip


def feedback(n: int, user: str, kind: str) -> dict[str, object]:
    return {"event_id": f"fb-{n}", "user_id": user, "item_id": f"i{n % 7}", "kind": kind,
            "creator_id": f"c{n % 3}", "category": "g", "timestamp": T0 + n + 0.5}  # fmt: skip


def test_worker_counts_valid_events_once_and_dead_letters_the_rest(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path)
    ensure_topics(settings)
    users = [f"u{k}" for k in range(5)]
    messages: list[tuple[str, bytes | None, object]] = []
    expected_labels: dict[str, str] = {}
    for n in range(60):
        user = users[n % 5]
        messages.append(("impressions", user.encode(), impression(n, user)))
        expected_labels[f"imp-{n}"] = "none"
        if n % 4 == 0:
            kind = ("skip", "click", "dislike")[n % 3]
            messages.append(("feedback", user.encode(), feedback(n, user, kind)))
            expected_labels[f"imp-{n}"] = kind
    duplicates = messages[::5]
    messages += duplicates
    unkeyed = impression(100, "u3")
    messages.append(("impressions", None, unkeyed))
    expected_labels["imp-100"] = "none"
    for reason, raw in MALFORMED.items():
        messages.append(("impressions" if reason != "nan" else "feedback", b"u0", raw))
    messages.append(("feedback", b"u0", UNKNOWN_KIND))
    messages.append(("impressions", b"u0", KEY_MISMATCH))
    produce(settings, messages)

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        letters = consume(settings, "dead_letters", lambda got: len(got) >= len(MALFORMED) + 2)
        examples = consume(settings, "examples", lambda got: len(got) >= len(expected_labels))
        # Let anything extra (a duplicate) show up before asserting there is none.
        examples = consume(settings, "examples", lambda got: False, timeout=3)
        metrics = worker.metrics()
        view = orjson.loads(worker.get("/users/u1/"))
    finally:
        worker.stop()

    reasons = sorted(decode_dead_letter(value).reason for _, value in letters)
    assert reasons == sorted([*MALFORMED, "unknown_kind", "key_mismatch"])
    for _, value in letters:
        letter = decode_dead_letter(value)
        assert letter.topic.startswith(settings.topic_prefix) and letter.offset >= 0
    decoded = [decode_example(value) for _, value in examples]
    ids = [example.example_id for example in decoded]
    missing = set(expected_labels) - set(ids)
    repeated = sorted(i for i in set(ids) if ids.count(i) > 1)
    assert not missing and not repeated, f"missing {sorted(missing)}, repeated {repeated}"
    assert len(ids) == len(expected_labels)
    assert {e.example_id: e.label for e in decoded} == expected_labels
    assert all(key == e.user_id.encode() for (key, _), e in zip(examples, decoded, strict=True))

    def count(outcome: str, kind: str) -> float:
        labels = (("outcome", outcome), ("type", kind))
        return metrics.get(("negstream_events_total", labels), 0.0)

    feedback_count = sum(1 for label in expected_labels.values() if label != "none")
    assert count("accepted", "impression") == len(expected_labels)
    assert count("accepted", "feedback") == feedback_count
    assert count("duplicate", "impression") + count("duplicate", "feedback") == len(duplicates)
    assert count("repartitioned", "impression") == 1
    assert view["long"]["impressions"] == 12
    assert view["long"]["negatives"] == sum(
        1 for n in range(60) if n % 5 == 1 and n % 4 == 0 and n % 3 != 1
    )
