"""The fold: one user's events and the event-time watermark into a new state and its outputs."""

from __future__ import annotations

from collections.abc import Generator

from agents.state import dedupe, windows
from agents.state.apply import BucketWriter, Event, apply_batch
from agents.state.config import StateConfig
from agents.state.features import cut_of, now_cut, oldest_fine_needed, oldest_long_needed
from agents.state.label_join import (
    JOIN_SKEW_S,
    close_due,
    close_due_in_steps,
    next_deadline,
    scheduled_deadline,
)
from agents.state.outputs import Outputs
from agents.state.state import UserState
from agents.state.suppression import feedback_clock

#: Recent dedupe ids kept apart from the older ones, so a copy of the state copies few.
SEEN_YOUNG = 64


def apply_events(
    state: UserState | None, events: list[Event], config: StateConfig, watermark: float = 0.0
) -> tuple[UserState, Outputs]:
    """Fold one user's events (in arrival order) into a copy of ``state``.

    An event more than ``grace_s`` behind the event-time ``watermark``, or behind this
    user's newest event on the same input topic, is late: counted, remembered for dedupe,
    not applied. The per-topic clock keeps lateness exact while the watermark lags, e.g.
    while a restarted worker reads a backlog (Kafka orders a user's events per topic).
    """
    state, out = _copy(state), Outputs()
    writer = BucketWriter(state, config)
    apply_batch(state, events, config, watermark, out, writer)
    writer.share_equal()
    _expire(state, config, watermark, out)
    state.pack_at_rest()
    return state, out


def apply_and_advance(
    state: UserState | None,
    events: list[Event],
    config: StateConfig,
    watermark: float,
    user_id: str,
) -> tuple[UserState, Outputs]:
    """:func:`apply_events` then :func:`advance` at the same watermark, copying once."""
    steps = apply_and_advance_in_steps(state, events, config, watermark, user_id, len(events))
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: tuple[UserState, Outputs] = done.value
            return result


def apply_and_advance_in_steps(
    state: UserState | None,
    events: list[Event],
    config: StateConfig,
    watermark: float,
    user_id: str,
    step: int,
) -> Generator[None, None, tuple[UserState, Outputs]]:
    """:func:`apply_and_advance` that pauses (yields) after every ``step`` events applied and
    every ``step`` impressions labelled, and returns its result: a caller on an event loop
    lets other tasks run between the parts of a heavy user's long batch. The result does not
    depend on ``step``.
    """
    state, out = _copy(state), Outputs()
    writer = BucketWriter(state, config)
    for start in range(0, len(events), max(1, step)):
        apply_batch(state, events[start : start + step], config, watermark, out, writer)
        yield
    writer.share_equal()
    yield from close_due_in_steps(state, watermark, user_id, config, out, step)
    _expire(state, config, watermark, out)
    state.pack_at_rest()
    return state, out


def advance(
    state: UserState | None, watermark: float, user_id: str, config: StateConfig
) -> tuple[UserState, Outputs]:
    """Label the impressions due at event time ``watermark``; drop reactions no impression
    can claim any more.

    The watermark, not the user's own clock, closes windows: the two input topics are read
    independently, so one user's impressions can run ahead of that user's feedback.
    """
    state, out = _copy(state), Outputs()
    close_due(state, watermark, user_id, config, out)
    _expire(state, config, watermark, out)
    state.pack_at_rest()
    return state, out


def _copy(state: UserState | None) -> UserState:
    return UserState() if state is None else state.copy()


def _expire(state: UserState, config: StateConfig, watermark: float, out: Outputs) -> None:
    # Buckets are kept for every cut still to come: open impressions', any event not late at
    # this watermark, and the user's own clock (rescoring and the operators' view read the
    # tables as they stand now).
    horizon = min(cut_of(max(0.0, watermark - config.grace_s), config), now_cut(state, config))
    if state.pending:
        # The cut is monotonic in the time: the oldest impression's (the first) is the least.
        horizon = min(horizon, cut_of(state.pending[0].timestamp, config))
    windows.expire(state.fine, oldest_fine_needed(horizon, config))
    windows.expire(state.long, oldest_long_needed(horizon, config))
    _trim_seen(state, config, watermark, out)
    clock = feedback_clock(state)
    if any(s.expires_at <= clock for s in state.suppressions):
        state.suppressions = [s for s in state.suppressions if s.expires_at > clock]


def _trim_seen(state: UserState, config: StateConfig, watermark: float, out: Outputs) -> None:
    """Merge the young dedupe ids into the old ones every :data:`SEEN_YOUNG`; expired and
    (past ``dedup_max_per_user``) the oldest ids go then. Amortised O(1) an event.

    An id expires ``dedup_ttl_s`` behind the user's clock, or once its event is late (more
    than ``grace_s`` behind the watermark), whichever comes first: a late copy is not applied
    either, so forgetting it sooner counts nothing twice.
    """
    horizon = max(state.clock - config.dedup_ttl_s, watermark - config.grace_s)
    young = state.seen
    if len(young) <= SEEN_YOUNG and not (young and min(young.values()) < horizon):
        return
    old = {k: v for k, v in state.seen_old.items() if v >= horizon}
    old.update(state.seen)
    overflow = len(old) - config.dedup_max_per_user
    if overflow > 0:
        out.counts["capped:dedupe_ids"] += overflow
        old = dict(sorted(old.items(), key=lambda kv: kv[1])[overflow:])
    state.seen_old, state.seen = dedupe.packed(old), {}


__all__ = [
    "JOIN_SKEW_S",
    "Event",
    "Outputs",
    "advance",
    "apply_and_advance",
    "apply_and_advance_in_steps",
    "apply_events",
    "next_deadline",
    "scheduled_deadline",
]
