"""The label join's claim rule against its definition, on random users, and its cost on a
user shown the same item thousands of times."""

from __future__ import annotations

import random
from typing import Any

import pytest

from agents.state import label_join
from agents.state.config import StateConfig
from agents.state.label_join import JOIN_SKEW_S, close_due
from agents.state.outputs import Outputs
from agents.state.state import Pending, Reaction, UserState, time_order
from schemas.events import Example

CONFIG = StateConfig()


def claimed_by_definition(state: UserState, watermark: float) -> dict[str, list[str]]:
    """Per due impression, the feedback ids it claims, straight from the rule: a feedback
    event belongs to the latest open impression (by time, then id) it joins, and is claimed
    when that impression is labelled; one claimed before stays with its impression."""
    due = {p.event_id for p in state.pending if label_join.label_due(p, CONFIG) <= watermark}
    claims: dict[str, list[str]] = {event_id: [] for event_id in due}
    for reaction in state.reactions:
        joined = [p for p in state.pending if label_join._joins(p, reaction, CONFIG)]
        if reaction.claimed or not joined:
            continue
        owner = max(joined, key=lambda p: (p.timestamp, p.event_id))
        if owner.event_id in due:
            claims[owner.event_id].append(reaction.event_id)
    return claims


def random_user(rng: random.Random, impressions: int, reactions: int) -> UserState:
    items = [f"i{n}" for n in range(rng.choice((1, 2, 5)))]
    requests = [None, "", "r1", "r2", "r3"]
    # Times on a grid: ties and the window's exact edges occur, some up to rounding.
    grid = [JOIN_SKEW_S, CONFIG.label_window_s, 1.0, 0.5, 0.1, 0.3]

    def at() -> float:
        return 1000.0 + rng.randrange(40) * rng.choice(grid)

    # Both lists in time order, as the fold keeps them.
    state = UserState()
    state.pending = sorted(
        (
            Pending(f"p{n}", rng.choice(items), "c", "g", rng.choice(requests), at())
            for n in range(impressions)
        ),
        key=time_order,
    )
    state.reactions = sorted(
        (
            Reaction(
                f"f{n}",
                rng.choice(items),
                rng.choice(requests),
                rng.choice(("skip", "hide")),
                at(),
                "c",
                "g",
                claimed=rng.random() < 0.1,
            )
            for n in range(reactions)
        ),
        key=time_order,
    )
    return state


@pytest.mark.parametrize("seed", range(300))
def test_each_feedback_goes_to_the_latest_impression_it_joins(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    state = random_user(rng, rng.randrange(1, 30), rng.randrange(0, 30))
    watermark = 1000.0 + rng.choice((0.0, 60.0, 200.0, 400.0, 1e6))
    expected = claimed_by_definition(state, watermark)
    got: dict[str, list[str]] = {}
    example = label_join._example

    def spy(state: UserState, user_id: str, pending: Pending, claimed: list[Reaction],
            *args: Any) -> Example:  # fmt: skip
        got[pending.event_id] = [r.event_id for r in claimed]
        return example(state, user_id, pending, claimed, *args)

    monkeypatch.setattr(label_join, "_example", spy)
    before = {r.event_id for r in state.reactions if r.claimed}
    order = sorted((p.timestamp, p.event_id) for p in state.pending if p.event_id in expected)
    out = Outputs()
    close_due(state, watermark, "u", StateConfig(abuse_negative_cap=10**9), out)
    assert got == expected
    assert [e.example_id for e in out.examples] == [event_id for _, event_id in order]
    # What is claimed now is marked so in the state (unless dropped there, past its time).
    now = {event_id for claimed in got.values() for event_id in claimed}
    for reaction in state.reactions:
        assert reaction.claimed == (reaction.event_id in before | now)


def test_a_user_shown_one_item_thousands_of_times_is_labelled_in_near_linear_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    joins = label_join._joins

    def counted(pending: Pending, reaction: Reaction, config: StateConfig) -> bool:
        nonlocal calls
        calls += 1
        return joins(pending, reaction, config)

    monkeypatch.setattr(label_join, "_joins", counted)
    n = 2000
    # A skip a second after each impression; the next impression is 10 s later, so each
    # skip joins its own impression only. The definition alone checks every pair.
    state = UserState()
    state.pending = [Pending(f"p{k}", "same", "c", "g", None, 1000.0 + k * 10) for k in range(n)]
    state.reactions = [
        Reaction(f"f{k}", "same", None, "skip", 1001.0 + k * 10, "c", "g") for k in range(n)
    ]
    out = Outputs()
    close_due(state, 1e9, "u", CONFIG, out)
    assert len(out.examples) == n
    assert [e.kinds for e in out.examples] == [("skip",)] * n
    assert calls <= 4 * n, f"{calls} join checks for {n} impressions and {n} reactions"
