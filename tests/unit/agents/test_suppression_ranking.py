"""The fast path's ranked suppressions give the same updates and the same per-user list as
merging and sorting the whole list on every strong negative."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.state import suppression
from agents.state.config import StateConfig
from agents.state.state import UserState
from schemas.events import Feedback, Suppression

CONFIG = StateConfig(max_suppressions=8, max_update_suppressions=5)
KINDS = ("dislike", "hide", "not_interested", "report", "block_creator")


def reference(state: UserState, fb: Feedback, counts: Counter[str]) -> tuple[Suppression, ...]:
    """The fast-path update's suppressions, from the whole list every time."""
    new = suppression.suppressions_for(state, fb, CONFIG)
    kept = suppression.merge(state.suppressions, new, replace_weaker=True)
    if len(kept) > CONFIG.max_suppressions * 5 // 4:
        counts["capped:suppressions"] += len(kept) - CONFIG.max_suppressions
        kept = suppression.strongest(kept, CONFIG.max_suppressions)
    state.suppressions = list(kept)
    return suppression.for_update(new, suppression.active_suppressions(state), CONFIG)


events = st.lists(
    st.tuples(
        st.integers(0, 11),  # item
        st.integers(0, 3),  # creator
        st.sampled_from(KINDS),
        st.floats(0, 8 * 86_400),  # seconds after the previous feedback
        st.booleans(),  # the fold replaces the list (expiry) before this one
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_ranked_fast_path_matches_a_full_merge_and_sort(stream: list) -> None:
    fast, slow = UserState(), UserState()
    ranked = suppression.Ranked()
    fast_counts: Counter[str] = Counter()
    slow_counts: Counter[str] = Counter()
    clock = 1_000.0
    for n, (item, creator, kind, gap, replaced) in enumerate(stream):
        clock += gap
        for state in (fast, slow):
            state.topic_clock["feedback"] = clock
        if replaced:
            kept = [s for s in fast.suppressions if s.expires_at > clock]
            fast.suppressions, slow.suppressions = kept, list(kept)
        fb = Feedback(
            event_id=f"e{n}", user_id="u", item_id=f"i{item}", kind=kind, timestamp=clock,
            creator_id=f"c{creator}", category=None,
        )  # fmt: skip
        update = suppression.fast_path_update(fast, fb, CONFIG, fast_counts, ranked)
        assert update is not None
        assert update.suppressions == reference(slow, fb, slow_counts)
        assert fast.suppressions == slow.suppressions
    assert fast_counts == slow_counts


def test_a_weaker_suppression_is_dropped_and_a_stronger_one_keeps_the_later_expiry() -> None:
    state = UserState(suppressions=[Suppression("creator", "c1", 1.0, 500.0, "block_creator")])
    view = suppression.Ranked().of(state)
    view.add(Suppression("creator", "c1", 0.8, 900.0, "repeated_negatives:2"))
    assert state.suppressions == [Suppression("creator", "c1", 1.0, 500.0, "block_creator")]
    view.add(Suppression("creator", "c1", 1.0, 300.0, "report"))
    assert state.suppressions == [Suppression("creator", "c1", 1.0, 500.0, "report")]
    assert view.strongest(1) == state.suppressions
