"""The compact forms of per-user state: packed dedupe ids, packed buckets at rest, shared
buckets, candidates and strings. Each must read and fold exactly as the plain form."""

from __future__ import annotations

import copy
import gc
from sys import intern

import orjson

from agents.state import counters, dedupe, windows
from agents.state import fold as user_state
from agents.state.state import Candidate, UserState
from schemas import Feedback, Impression
from tests.support import state_config

T0 = 1_767_225_600.0
SETTINGS = state_config(label_window_s=60.0, grace_s=120.0, watermark_delay_s=0.0,
                        window_step_s=60.0, window_short_s=600.0, window_long_s=3600.0)  # fmt: skip


def imp(eid: str, t: float, item: str = "i1", creator: str = "c1") -> Impression:
    return Impression(eid, "u1", item, T0 + t, creator_id=creator, category="g1")


def fb(eid: str, t: float, kind: str = "dislike", item: str = "i1") -> Feedback:
    return Feedback(eid, "u1", item, kind, T0 + t, creator_id="c1", category="g1")


def test_packed_ids_answer_as_the_dict_they_were_made_from() -> None:
    seen = {"e1": 1.0, "e12": 2.5, "xé": 3.0, "": 4.0, "1e": 5.0}
    ids = dedupe.packed(seen)
    assert isinstance(ids, dedupe.PackedIds)
    assert ids == seen and list(ids.items()) == list(seen.items()) and len(ids) == len(seen)
    assert [ids[k] for k in seen] == list(seen.values())
    # Parts, joins and neighbours of stored ids are not stored ids.
    for probe in [*seen, "e", "2", "e1\x00e12", "\x00", "e1e12", "x", "E1", "e2"]:
        assert (probe in ids) == (probe in seen), probe
    assert dedupe.packed({}) == {} and "e1" not in dedupe.EMPTY


def test_ids_holding_the_separator_or_too_many_to_scan_stay_a_dict() -> None:
    odd = {"e\x001": 1.0, "e": 2.0}
    assert type(dedupe.packed(odd)) is dict and dedupe.packed(odd) == odd
    many = {f"e{n}": float(n) for n in range(dedupe.PACKED_MAX + 1)}
    assert type(dedupe.packed(many)) is dict
    assert isinstance(dedupe.packed(dict(list(many.items())[:-1])), dedupe.PackedIds)


def test_packed_buckets_keep_every_count_and_the_order() -> None:
    bucket = {"imp": 300, "i:a": 1, "#i": 2, "c:b": 255}
    packed = windows.PackedBucket(bucket)
    assert packed == bucket and list(packed.items()) == list(bucket.items())
    assert packed.unpacked() == bucket and list(packed.unpacked()) == list(bucket)
    assert windows.PackedBucket({"imp": 3}).unpacked() == {"imp": 3}


def _session() -> list[Impression | Feedback]:
    return [imp("a", 0), imp("b", 1, item="i2"), fb("c", 5), fb("d", 70, kind="click")]


def test_a_state_at_rest_packs_its_buckets_and_folds_as_the_plain_one() -> None:
    state, _ = user_state.apply_events(None, _session(), SETTINGS, T0)
    state, _ = user_state.advance(state, T0 + 150, "u1", SETTINGS)
    assert not state.pending and not state.reactions
    assert isinstance(state.seen_old, dedupe.PackedIds) and "d" in state.seen_old
    buckets = [*state.fine.values(), *state.long.values()]
    assert buckets and all(isinstance(b, windows.PackedBucket) for b in buckets)
    plain = UserState.from_wire(orjson.loads(orjson.dumps(state.to_wire())))
    assert all(type(b) is dict for b in [*plain.fine.values(), *plain.long.values()])
    assert plain == state and plain.to_wire() == state.to_wire()
    before = copy.deepcopy(state)
    later = [imp("e", 400), fb("f", 401), fb("d", 70, kind="click"), fb("g", 430, kind="hide")]
    for watermark in (T0 + 405, T0 + 10_000):
        folded, out = user_state.apply_and_advance(state, later, SETTINGS, watermark, "u1")
        folded_plain, out_plain = user_state.apply_and_advance(
            plain, later, SETTINGS, watermark, "u1"
        )
        assert folded.to_wire() == folded_plain.to_wire()
        assert out.counts["duplicate:feedback"] == 1
        assert (out.examples, out.updates, out.counts) == (
            out_plain.examples,
            out_plain.updates,
            out_plain.counts,
        )
    assert state == before, "a stored state never changes"


def test_a_long_bucket_that_counts_what_its_one_step_counts_shares_it() -> None:
    state, _ = user_state.apply_events(None, [imp("a", 0), fb("b", 5)], SETTINGS)
    [step] = state.fine.values()
    [whole] = state.long.values()
    assert whole is step
    before = copy.deepcopy(state)
    # The next event falls in another step of the same long bucket: they part.
    later, _ = user_state.apply_events(state, [imp("c", 65, item="i2")], SETTINGS)
    assert state == before
    [whole] = later.long.values()
    assert whole[counters.IMPRESSIONS] == 2 and step[counters.IMPRESSIONS] == 1
    assert all(b is not whole for b in later.fine.values())


def test_recovered_states_share_counter_names_candidates_and_suppression_strings() -> None:
    state, _ = user_state.apply_events(
        None, [imp("a", 0, item="i77"), fb("b", 5, kind="hide", item="i77")], SETTINGS
    )
    wire = orjson.loads(orjson.dumps(state.to_wire()))
    recovered = UserState.from_wire(wire)
    assert recovered == state
    name = counters.item_exposure("i77")
    for bucket in [*recovered.fine.values(), *recovered.long.values()]:
        assert any(key is name for key in bucket) or name not in bucket
    for key in recovered.fine:
        assert key is intern(key)
    assert recovered.candidates[0] is state.candidates[0]
    [suppression] = recovered.suppressions
    assert suppression.target_id is intern("i77") and suppression.reason is intern("hide")


def test_candidates_are_shared_while_held_and_forgotten_after() -> None:
    first = Candidate.shared("i-shared", "c1", "g1")
    assert Candidate.shared("i-shared", "c1", "g1") is first
    other = Candidate.shared("i-shared", "c2", "g1")  # the producer changed its creator
    assert other is not first and other.creator_id == "c2"
    del first
    gc.collect()
    assert Candidate.shared("i-shared", "c2", "g1") is other
    del other
    gc.collect()
    assert Candidate.shared("i-shared", "c1", None) == Candidate("i-shared", "c1", None)
