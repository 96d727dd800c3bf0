"""The fast lane's decisions and its pending suppressions (no broker)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson

from agents.encoder import OutputEncoder
from agents.fast_lane import FastLane
from agents.state import fold as user_state
from schemas import decode_score_update
from schemas.events import Feedback, Suppression
from streams.privacy import Pseudonymizer
from streams.settings import Settings
from tests.support import memory_users, state_config

T0 = 1_767_225_600.0


class Recorder:
    """Keeps what the lane sends, as a producer would."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, topic: str, key: bytes, value: bytes, partition: int | None) -> Any:
        self.sent.append({"topic": topic, "key": key, "value": value, "partition": partition})
        return SimpleNamespace(add_callback=lambda f: None, add_errback=lambda f: None)


def lane(states: dict[str, Any] | None = None, **overrides: Any) -> FastLane:
    settings = Settings(**overrides)
    encoder = OutputEncoder(settings, Pseudonymizer(settings.pseudonymize_key))
    users = memory_users(states)
    return FastLane(settings, state_config(**overrides), users, lambda partition: 0.0, encoder)


def record(kind: str, event_id: str = "f-1", user: str = "alice", **fields: Any) -> Any:
    value = {"event_id": event_id, "user_id": user, "item_id": "video-9",
             "creator_id": "chan-3", "category": "pranks", "kind": kind, "timestamp": T0,
             **fields}  # fmt: skip
    return SimpleNamespace(key=user.encode(), value=orjson.dumps(value), offset=7, timestamp=None)


def feedback(event_id: str, kind: str, item: str, creator: str = "chan-3") -> Feedback:
    return Feedback(event_id=event_id, user_id="alice", item_id=item, kind=kind,
                    timestamp=T0, creator_id=creator, category="pranks")  # fmt: skip


def test_a_strong_negative_is_published_with_its_item_suppression() -> None:
    fast, out = lane(), Recorder()
    fast._handle(out, 2, record("not_interested"))  # type: ignore[arg-type]
    (sent,) = out.sent
    update = decode_score_update(sent["value"])
    assert (sent["key"], sent["partition"]) == (b"alice", None)
    assert update.source == "fast_path" and update.trigger_event_ids == ("f-1",)
    assert [(s.target_type, s.target_id) for s in update.suppressions] == [("item", "video-9")]
    assert fast.is_pending("alice", "f-1")


def test_other_kinds_bad_records_and_repeats_publish_nothing() -> None:
    fast, out = lane(), Recorder()
    fast._handle(out, 0, record("skip"))  # type: ignore[arg-type]
    fast._handle(out, 0, record("like"))  # type: ignore[arg-type]
    fast._handle(out, 0, record("dislike", user="bob", timestamp="soon"))  # type: ignore[arg-type]
    unkeyed = record("dislike")
    unkeyed.key = None
    fast._handle(out, 0, unkeyed)  # type: ignore[arg-type]
    assert out.sent == []
    fast._handle(out, 0, record("dislike"))  # type: ignore[arg-type]
    fast._handle(out, 0, record("dislike"))  # type: ignore[arg-type]
    assert len(out.sent) == 1, "a redelivered event is published once"


def test_an_event_already_in_the_stored_state_is_not_published_again() -> None:
    state, _ = user_state.apply_events(None, [feedback("f-1", "hide", "video-9")], state_config())
    fast, out = lane({"alice": state}), Recorder()
    fast._handle(out, 0, record("hide"))  # type: ignore[arg-type]
    assert out.sent == []


def test_pending_events_count_towards_repeats_and_merge_into_later_updates() -> None:
    fast, out = lane(), Recorder()
    fast._handle(out, 0, record("dislike", "f-1", item_id="video-1"))  # type: ignore[arg-type]
    fast._handle(out, 0, record("dislike", "f-2", item_id="video-2"))  # type: ignore[arg-type]
    second = decode_score_update(out.sent[-1]["value"])
    targets = {(s.target_type, s.target_id) for s in second.suppressions}
    # Two explicit negatives on one creator suppress it, though neither is stored yet.
    assert targets == {("item", "video-1"), ("item", "video-2"), ("creator", "chan-3")}
    # An update computed from a state without them (the model's, say) gets them merged in.
    own = Suppression("item", "video-0", 1.0, T0 + 60, "hide")
    merged = fast.merge("alice", (own,), clock=T0)
    assert {(s.target_type, s.target_id) for s in merged} == targets | {("item", "video-0")}
    assert fast.merge("alice", (own,), clock=T0 + 10**9) == (), "expired ones are left out"
    fast.applied("alice", ["f-1", "f-2"])
    assert fast.merge("alice", (own,), clock=T0) == (own,)
    assert fast.pending == {}


def test_merge_keeps_the_stronger_penalty_and_the_later_expiry() -> None:
    fast, out = lane(), Recorder()
    fast._handle(out, 0, record("not_interested"))  # type: ignore[arg-type]
    weaker = Suppression("item", "video-9", 0.5, T0 + 10**8, "dislike")
    (merged,) = fast.merge("alice", (weaker,), clock=T0)
    assert merged.penalty == 1.0 and merged.reason == "not_interested"
    assert merged.expires_at == T0 + 10**8


def test_revoked_partitions_and_old_pending_events_are_dropped() -> None:
    fast, out = lane(), Recorder()
    fast.wanted = frozenset({1, 2})
    fast._handle(out, 1, record("hide", "f-1", user="alice"))  # type: ignore[arg-type]
    fast._handle(out, 2, record("hide", "f-2", user="bob"))  # type: ignore[arg-type]
    fast.forget_partitions([1])
    assert fast.wanted == {2}
    assert not fast.is_pending("alice", "f-1") and fast.is_pending("bob", "f-2")
    fast._expire(fast.last_expiry + 10**6)
    assert fast.pending == {}


def test_pseudonymous_ids_name_the_partition() -> None:
    fast, out = lane(pseudonymize_key="k" * 32), Recorder()
    fast._handle(out, 3, record("report"))  # type: ignore[arg-type]
    (sent,) = out.sent
    assert sent["partition"] == 3 and b"alice" not in sent["key"] + sent["value"]
