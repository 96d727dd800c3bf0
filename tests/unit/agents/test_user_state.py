"""The per-user state machine: dedupe, late events, windows, the label join, abuse guard."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from agents.state import features
from agents.state import fold as user_state
from agents.state.state import Candidate, Schedule, UserState
from schemas import Feedback, Impression
from tests.support import state_config

T0 = 1_767_225_600.0
SETTINGS = state_config(label_window_s=60.0, grace_s=120.0, watermark_delay_s=0.0,
                        window_step_s=60.0, window_short_s=600.0, window_long_s=3600.0,
                        abuse_negative_cap=5)  # fmt: skip


def imp(
    eid: str, t: float, item: str = "i1", creator: str = "c1", request: str | None = None
) -> Impression:
    return Impression(
        eid, "u1", item, T0 + t, creator_id=creator, category="g1", request_id=request
    )


def fb(
    eid: str, t: float, kind: str = "dislike", item: str = "i1", request: str | None = None
) -> Feedback:
    return Feedback(
        eid, "u1", item, kind, T0 + t, creator_id="c1", category="g1", request_id=request
    )


def run(events: list[Impression | Feedback], close_at: float | None = None):
    state, out = user_state.apply_events(None, events, SETTINGS)
    if close_at is not None:
        state, closed = user_state.advance(state, T0 + close_at, "u1", SETTINGS)
        out.extend(closed)
    return state, out


def test_duplicates_count_once() -> None:
    state, out = run([imp("a", 0), imp("a", 0), fb("b", 5), fb("b", 5)])
    view = features.table_view(state, SETTINGS)
    assert view["short"]["impressions"] == 1 and view["short"]["negatives"] == 1
    assert out.counts["duplicate:impression"] == 1 and out.counts["duplicate:feedback"] == 1
    again, out2 = user_state.apply_events(state, [imp("a", 0)], SETTINGS)
    assert out2.counts["duplicate:impression"] == 1
    assert features.table_view(again, SETTINGS)["short"]["impressions"] == 1


def test_apply_events_does_not_mutate_its_input() -> None:
    state, _ = run([imp("a", 0)])
    before = copy.deepcopy(state)
    user_state.apply_events(state, [fb("b", 1), imp("c", 2)], SETTINGS)
    user_state.advance(state, T0 + 1000, "u1", SETTINGS)
    assert state == before


def test_late_events_beyond_grace_are_counted_not_applied() -> None:
    state, _ = run([imp("a", 1000)])
    events = [imp("late", 1000 - 121), imp("ok", 1000 - 119)]
    state, out = user_state.apply_events(state, events, SETTINGS, watermark=T0 + 1000)
    assert out.counts["late:impression"] == 1
    assert features.table_view(state, SETTINGS)["long"]["impressions"] == 2


def test_events_far_behind_the_users_own_topic_clock_are_late() -> None:
    # Without any watermark: 121 s behind this user's newest impression.
    _, out = run([imp("a", 1000), imp("late", 1000 - 121), fb("f", 1000 - 121)])
    assert out.counts["late:impression"] == 1
    assert out.counts["accepted:feedback"] == 1, "the feedback topic has its own clock"


def test_windows_expire_with_the_clock() -> None:
    state, _ = run([fb("a", 0), fb("b", 590), imp("c", 700)])
    view = features.table_view(state, SETTINGS)
    # The short window at t=700 covers buckets 2..11 (t in [120, 720)): only "b" is in it.
    assert view["short"]["negatives"] == 1
    assert view["long"]["negatives"] == 2


def test_join_labels_with_the_most_severe_kind_and_weights_it() -> None:
    _, out = run(
        [imp("a", 0), fb("b", 3, "skip"), fb("c", 4, "report"), imp("d", 10, "i2")], close_at=200
    )
    by_id = {e.example_id: e for e in out.examples}
    assert by_id["a"].label == "report" and by_id["a"].kinds == ("skip", "report")
    assert by_id["a"].weight == 5.0 and by_id["a"].label_delay_s == 4.0
    assert by_id["d"].label == "none" and by_id["d"].kinds == ()


def test_claimed_feedback_leaves_the_state_with_its_label() -> None:
    # Labelled at 65 (60 s window + 5 s skew): the claimed reaction goes with it, so the
    # next close is due for the open impression "d" alone, not to drop "b".
    events = [imp("a", 0), fb("b", 3, "hide"), fb("x", 4, "skip", item="i9"), imp("d", 30, "i2")]
    state, out = run(events, close_at=66)
    assert [(e.example_id, e.label) for e in out.examples] == [("a", "hide")]
    assert [r.event_id for r in state.reactions] == ["x"]
    assert [p.event_id for p in state.pending] == ["d"]
    # "x" (never joined) is kept until no impression can claim it, then counted unmatched.
    assert user_state.next_deadline(state, SETTINGS) == T0 + 4 + 60 + 2 * user_state.JOIN_SKEW_S
    later, closed = user_state.advance(state, T0 + 200, "u1", SETTINGS)
    assert later.reactions == [] and closed.counts["unmatched_feedback"] == 1


def test_feedback_before_its_impression_still_joins() -> None:
    _, out = run([fb("b", 3, "hide"), imp("a", 0)], close_at=200)
    assert [(e.example_id, e.label) for e in out.examples] == [("a", "hide")]


def test_request_id_disambiguates_repeated_items() -> None:
    events = [
        imp("a", 0, request="r1"),
        imp("b", 1, request="r2"),
        fb("c", 2, "hide", request="r1"),
    ]
    _, out = run(events, close_at=200)
    assert {e.example_id: e.label for e in out.examples} == {"a": "hide", "b": "none"}


def test_label_window_bounds_the_join() -> None:
    state, out = run([imp("a", 0)], close_at=59)
    assert out.examples == []
    state, out = user_state.apply_events(state, [fb("b", 61, "dislike")], SETTINGS)
    _, closed = user_state.advance(state, T0 + 200, "u1", SETTINGS)
    assert [e.label for e in closed.examples] == ["none"]
    assert closed.counts["unmatched_feedback"] == 1


def test_features_are_taken_before_the_impression_and_its_feedback() -> None:
    # Features count whole steps (60 s here) before the impression's step: "c" sees "a" and
    # "b", "d" (the same step as "c") sees only what "c" sees.
    events = [imp("a", 0), fb("b", 1, "dislike"), imp("c", 62), imp("d", 63, item="i2")]
    _, out = run(events, close_at=500)
    by_id = {e.example_id: e for e in out.examples}
    assert by_id["a"].features["item_exposure"] == 0.0
    assert by_id["a"].features["explicit_neg_long"] == 0.0, "never its own feedback"
    assert by_id["d"].features["impressions_long"] == 1.0
    assert by_id["c"].features["item_exposure"] == 1.0
    assert by_id["c"].features["explicit_neg_long"] == 1.0
    assert by_id["c"].features["neg_rate_short"] == 1.0


def test_strong_negative_publishes_a_suppression_at_once() -> None:
    _, out = run([imp("a", 0), fb("b", 1, "not_interested")])
    (update,) = out.updates
    assert update.source == "fast_path" and update.trigger_event_ids == ("b",)
    (suppression,) = update.suppressions
    assert (suppression.target_type, suppression.target_id) == ("item", "i1")
    assert suppression.reason == "not_interested" and 0 < suppression.penalty <= 1
    assert suppression.expires_at == T0 + 1 + SETTINGS.suppression_ttl_s


def test_repeated_negatives_suppress_the_creator() -> None:
    events = [imp("a", 0), fb("b", 1, "dislike"), imp("c", 2, "i2"), fb("d", 3, "dislike", "i2")]
    _, out = run(events)
    targets = {(s.target_type, s.target_id) for s in out.updates[-1].suppressions}
    assert ("creator", "c1") in targets and ("item", "i2") in targets
    _, weak = run([imp("a", 0), fb("b", 1, "skip")])
    assert weak.updates == []


def test_flooding_user_is_flagged_and_excluded_from_examples() -> None:
    events = [imp("a", 0)] + [fb(f"n{i}", 1 + i * 0.1, "dislike", f"x{i}") for i in range(8)]
    _, out = run(events, close_at=500)
    assert out.counts["flagged"] == 1
    assert out.examples == [] and out.counts["abuse_excluded"] == 1
    calm, calm_out = run([imp("a", 0), fb("b", 1)], close_at=500)
    assert calm_out.counts["flagged"] == 0 and len(calm_out.examples) == 1
    assert not features.table_view(calm, SETTINGS)["flagged"]


def test_features_many_equals_features_one_by_one() -> None:
    events = [imp("a", 0), fb("b", 1, "dislike"), imp("c", 2, "i2", "c2"), fb("d", 3, "skip", "i2")]
    state, _ = run(events)
    candidates = [
        Candidate("i1", "c1", "g1"),
        Candidate("i2", "c2", None),
        Candidate("i9", None, "g1"),
    ]
    one_by_one = [
        features.features(state, SETTINGS, c.item_id, c.creator_id, c.category) for c in candidates
    ]
    assert features.features_many(state, SETTINGS, candidates) == one_by_one
    # fb() gives every feedback creator c1: the dislike and the skip both count.
    assert one_by_one[0]["item_exposure"] == 1.0 and one_by_one[0]["creator_neg_long"] == 2.0


def test_a_window_reads_the_same_buckets_walking_the_held_ones_or_its_range() -> None:
    # Six buckets held (one empty): a long range walks the held buckets, a short one its
    # own indexes; both give the non-empty buckets inside the range.
    buckets: dict[str, Any] = {str(index): {"imp": index} for index in (3, 5, 9, 40, 41)}
    buckets["7"] = {}
    for indexes in (range(0, 100), range(4, 41), range(41, 42), range(50, 60), range(5, 6)):
        expected = [buckets[str(i)]["imp"] for i in indexes if buckets.get(str(i))]
        found = features._present(buckets, indexes)
        assert sorted(bucket["imp"] for bucket in found) == expected, indexes


def test_batch_splits_give_the_same_state_and_features_and_never_mutate_inputs() -> None:
    # Buckets are shared between a state and its copies until written: folding one stream
    # whole or in random splits must give identical states, features and examples, and no
    # earlier state may change when a later batch writes into a bucket it shares.
    import random

    rng = random.Random(7)
    events: list[Impression | Feedback] = []
    t = 0.0
    for n in range(400):
        t += rng.expovariate(1 / 20)  # spans many short and several long buckets
        item, creator = f"i{rng.randrange(30)}", f"c{rng.randrange(5)}"
        if rng.random() < 0.6:
            events.append(imp(f"e{n}", t, item=item, creator=creator))
        else:
            kind = rng.choice(["dislike", "skip", "click", "hide"])
            events.append(fb(f"e{n}", t, kind=kind, item=item))
    whole, _ = user_state.apply_events(None, events, SETTINGS)
    state, history = None, []
    at = 0
    while at < len(events):
        size = rng.randrange(1, 12)
        state, _ = user_state.apply_events(state, events[at : at + size], SETTINGS)
        history.append((state, copy.deepcopy(state)))
        at += size
    assert _settled(state) == _settled(whole)
    assert all(kept == snapshot for kept, snapshot in history)
    candidates = [Candidate(f"i{k}", f"c{k % 5}", "g1") for k in range(30)]
    assert features.features_many(state, SETTINGS, candidates) == features.features_many(
        whole, SETTINGS, candidates
    )
    # Each pending impression carries the features taken when it arrived.
    assert len(state.pending) > 200


def _settled(state: UserState) -> UserState:
    # Dedupe ids move from the young to the old dict in chunks, and ids older than the dedupe
    # TTL are dropped then: compare the union of those within the TTL.
    horizon = state.clock - SETTINGS.dedup_ttl_s
    seen = {k: v for k, v in {**state.seen_old, **state.seen}.items() if v >= horizon}
    return dataclasses.replace(state, seen=seen, seen_old={})


def _random_events(
    seed: int, count: int, mean_gap_s: float, items: int, impressions: float, kinds: list[str]
) -> tuple[list[Impression | Feedback], float]:
    """``count`` events of one user, a share ``impressions`` of them impressions, and the
    time of the last."""
    import random

    rng = random.Random(seed)
    events: list[Impression | Feedback] = []
    t = 0.0
    for n in range(count):
        t += rng.expovariate(1 / mean_gap_s)
        item = f"i{rng.randrange(items)}"
        if rng.random() < impressions:
            events.append(imp(f"e{n}", t, item=item))
        else:
            events.append(fb(f"e{n}", t, kind=rng.choice(kinds), item=item))
    return events, t


def _to_the_end(steps: Any) -> tuple[int, UserState, Any]:
    """Run a stepped fold: how often it paused, and its result."""
    pauses = 0
    while True:
        try:
            next(steps)
            pauses += 1
        except StopIteration as done:
            state, out = done.value
            return pauses, state, out


def test_folding_in_steps_gives_the_result_of_one_pass() -> None:
    # The pipeline folds a heavy user's long batch a few events at a time, pausing in
    # between; the state and every output must not depend on where it paused.
    events, t = _random_events(11, 300, 5.0, 12, 0.5, ["dislike", "hide", "click"])
    start, _ = user_state.apply_events(None, events[:40], SETTINGS)
    rest, mark = events[40:], T0 + t / 2
    whole = user_state.apply_and_advance(start, rest, SETTINGS, mark, "u1")
    for step in (1, 7, 32, len(rest) + 5):
        steps = user_state.apply_and_advance_in_steps(start, rest, SETTINGS, mark, "u1", step)
        pauses, state, out = _to_the_end(steps)
        assert pauses >= len(rest) // step
        assert state.to_wire() == whole[0].to_wire()
        assert (out.examples, out.updates, out.counts) == (
            whole[1].examples,
            whole[1].updates,
            whole[1].counts,
        )
        assert out.updates and out.examples


def test_labelling_in_steps_gives_the_result_of_one_pass() -> None:
    # A batch that moves the watermark past a heavy user's hundreds of open impressions is
    # labelled a few at a time, pausing in between; the state and every example must not
    # depend on where it paused.
    events, t = _random_events(5, 400, 2.0, 30, 0.7, ["dislike", "skip", "click"])
    state, _ = user_state.apply_events(None, events, SETTINGS)
    due = len(state.pending)
    late = [imp("last", t + 10 * SETTINGS.label_window_s)]
    mark = T0 + t + 10 * SETTINGS.label_window_s  # every window but the last one's is past
    whole = user_state.apply_and_advance(state, late, SETTINGS, mark, "u1")
    assert len(whole[1].examples) == due > 200
    for step in (1, 7, 32, due + 5):
        steps = user_state.apply_and_advance_in_steps(state, late, SETTINGS, mark, "u1", step)
        pauses, result, out = _to_the_end(steps)
        assert pauses == 1 + due // step  # one after the event, then the labels'
        assert result.to_wire() == whole[0].to_wire()
        assert (out.examples, out.counts) == (whole[1].examples, whole[1].counts)


def test_the_deadline_index_reads_from_the_wire_what_the_decoded_state_gives() -> None:
    state, _ = user_state.apply_events(
        None, [imp("e1", 0.0), imp("e2", 30.0), fb("e3", 10.0, item="i9")], SETTINGS, T0
    )
    state.partition, state.watermark = 2, T0 + 5.0
    assert state.pending and state.reactions  # both kinds of deadline are present
    expected = user_state.next_deadline(state, SETTINGS)
    assert expected == T0 + 0.0 + 60.0 + user_state.JOIN_SKEW_S
    schedule = Schedule.from_wire(state.to_wire())
    assert schedule == Schedule.of(state)
    assert (schedule.partition, schedule.watermark) == (2, T0 + 5.0)
    assert user_state.scheduled_deadline(schedule, SETTINGS) == expected
    # Version 1 kept pending impressions as dicts and reactions as "orphans".
    old = {"pending": [{"event_id": "e1", "item_id": "i1", "timestamp": T0 + 40.0}],
           "orphans": [{"item_id": "i9", "kind": "skip", "timestamp": T0 + 1.0}]}  # fmt: skip
    assert Schedule.from_wire(old) == Schedule.of(UserState.from_wire(old))
    assert user_state.scheduled_deadline(Schedule.from_wire({}), SETTINGS) is None


def test_open_impressions_and_reactions_stay_in_time_order_whatever_the_read_order() -> None:
    # Events within the grace, read in two orders: the state keeps both lists in time order
    # (then event id), so a close labels a prefix, and the two reads give one state.
    events: list[Impression | Feedback] = [
        imp("e5", 50.0), imp("e1", 10.0), fb("f3", 30.0), imp("e3", 30.0), imp("e2", 10.0),
        fb("f1", 12.0), fb("f0", 12.0), imp("e4", 40.0), fb("f2", 5.0),
    ]  # fmt: skip
    in_time = sorted(events, key=lambda e: (e.timestamp, e.event_id))
    a, _ = user_state.apply_events(None, events, SETTINGS)
    b, _ = user_state.apply_events(None, in_time, SETTINGS)
    assert [p.event_id for p in a.pending] == ["e1", "e2", "e3", "e4", "e5"]
    assert [r.event_id for r in a.reactions] == ["f2", "f0", "f1", "f3"]
    assert (a.pending, a.reactions) == (b.pending, b.reactions)
    # A state written before the lists were kept in order is read back in order.
    wire = a.to_wire()
    wire["pending"].reverse()
    wire["reactions"].reverse()
    assert (UserState.from_wire(wire).pending, UserState.from_wire(wire).reactions) == (
        a.pending,
        a.reactions,
    )


def test_a_close_looks_only_at_what_is_due(monkeypatch: Any) -> None:
    # A user with thousands of open impressions and reactions, one of each due: a close and
    # the next deadline read O(due) entries, not all of them.
    from agents.state import label_join

    n = 2000
    events: list[Impression | Feedback] = []
    for k in range(n):
        events += [imp(f"p{k}", 10.0 * k, item=f"i{k}"), fb(f"f{k}", 10.0 * k + 1, item=f"i{k}")]
    state, _ = user_state.apply_events(None, events, SETTINGS)
    looked = 0
    label_due_at, reaction_due_at = label_join._label_due_at, label_join._reaction_due_at

    def counted(due_at: Any) -> Any:
        def wrapped(timestamp: float, config: Any) -> float:
            nonlocal looked
            looked += 1
            due: float = due_at(timestamp, config)
            return due

        return wrapped

    monkeypatch.setattr(label_join, "_label_due_at", counted(label_due_at))
    monkeypatch.setattr(label_join, "_reaction_due_at", counted(reaction_due_at))
    # The first impression (t=0) and its skip (t=1) are due, the second (t=10) not yet.
    mark = T0 + 1.0 + SETTINGS.label_window_s + 2 * user_state.JOIN_SKEW_S
    after, out = user_state.advance(state, mark, "u1", SETTINGS)
    assert [e.example_id for e in out.examples] == ["p0"]
    assert [e.kinds for e in out.examples] == [("dislike",)]
    assert (len(after.pending), len(after.reactions)) == (n - 1, n - 1)
    assert user_state.next_deadline(after, SETTINGS) == T0 + 10.0 + 60.0 + user_state.JOIN_SKEW_S
    assert looked <= 8, f"{looked} due times read for {n} open impressions and reactions"


def test_past_their_caps_the_oldest_open_impressions_are_labelled_and_reactions_dropped() -> None:
    # Caps of 5: of 8 open impressions (none due) the 3 oldest are labelled now, with the
    # feedback read so far. f0 is claimed by p0 and leaves with its label; of the 7 kept
    # reactions on items never shown, the 2 oldest go, counted as unmatched.
    config = dataclasses.replace(SETTINGS, max_pending=5, max_reactions=5)
    events: list[Impression | Feedback] = [imp(f"p{k}", 10.0 * k, item=f"i{k}") for k in range(8)]
    events += [fb("f0", 1.0, item="i0")]  # joins p0, which is labelled at once
    events += [fb(f"g{k}", 10.0 * k + 2, kind="skip", item="never") for k in range(7)]
    state, _ = user_state.apply_events(None, events, config)
    after, out = user_state.advance(state, T0 + 1.0, "u1", config)
    assert [e.example_id for e in out.examples] == ["p0", "p1", "p2"]
    assert [e.kinds for e in out.examples] == [("dislike",), (), ()]
    assert [p.event_id for p in after.pending] == ["p3", "p4", "p5", "p6", "p7"]
    assert [r.event_id for r in after.reactions] == ["g2", "g3", "g4", "g5", "g6"]
    assert out.counts["capped:pending"] == 3 and out.counts["capped:reactions"] == 2
    assert out.counts["unmatched_feedback"] == 2  # g0 and g1
