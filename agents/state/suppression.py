"""The fast path: strong explicit negatives become suppressions at once, before any model."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from agents.state import counters, windows
from agents.state.config import StateConfig
from agents.state.state import UserState
from schemas.events import Feedback, ScoreUpdate, Suppression
from schemas.kinds import CREATOR_TARGETED, STRONG_NEGATIVE

#: Explicit negatives on one creator / category in the long window that suppress it as a whole.
CREATOR_REPEAT = 2
CATEGORY_REPEAT = 3
ITEM_PENALTY = 1.0
CREATOR_PENALTY = 0.8
CATEGORY_PENALTY = 0.5


def fast_path_update(state: UserState, fb: Feedback, config: StateConfig) -> ScoreUpdate | None:
    """Suppressions for a strong negative, recorded in ``state``; ``None`` for other kinds.

    The item is always suppressed; its creator when the kind targets the creator
    (:data:`~schemas.kinds.CREATOR_TARGETED`) or the user repeated explicit negatives on it,
    and its category on repeats. Each carries a penalty in [0, 1], an event-time expiry and
    the reason.
    """
    if fb.kind not in STRONG_NEGATIVE:
        return None
    long = windows.window_buckets(state.clock, config.window_long_s, config.long_step_s)
    new = [
        Suppression(
            "item", fb.item_id, ITEM_PENALTY, fb.timestamp + config.suppression_ttl_s, fb.kind
        )
    ]
    group_expiry = fb.timestamp + config.creator_suppression_ttl_s
    if fb.creator_id is not None:
        repeats = windows.total(state.long, long, counters.creator_negatives(fb.creator_id))
        if fb.kind in CREATOR_TARGETED:
            new.append(Suppression("creator", fb.creator_id, 1.0, group_expiry, fb.kind))
        elif repeats >= CREATOR_REPEAT:
            reason = f"repeated_negatives:{repeats}"
            new.append(Suppression("creator", fb.creator_id, CREATOR_PENALTY, group_expiry, reason))
    if fb.category is not None:
        repeats = windows.total(state.long, long, counters.category_negatives(fb.category))
        if repeats >= CATEGORY_REPEAT:
            reason = f"repeated_negatives:{repeats}"
            new.append(Suppression("category", fb.category, CATEGORY_PENALTY, group_expiry, reason))
    state.suppressions = list(merge(state.suppressions, new, replace_weaker=True))
    return ScoreUpdate(
        user_id=fb.user_id,
        source="fast_path",
        model_version=-1,
        timestamp=fb.timestamp,
        trigger_event_ids=(fb.event_id,),
        suppressions=active_suppressions(state),
    )


def merge(
    held: Iterable[Suppression],
    added: Iterable[Suppression],
    clock: float | None = None,
    replace_weaker: bool = False,
) -> tuple[Suppression, ...]:
    """One suppression per target.

    By default the stronger penalty is kept, with the later expiry of the two (merging
    suppressions published by different paths). With ``replace_weaker`` (a user's own new
    suppressions) an added one at least as strong replaces the held one and keeps the later
    expiry, and a weaker one is dropped. Those expired at event time ``clock``, when given,
    are left out.

    Examples
    --------
    >>> a = Suppression("item", "i1", 1.0, 50.0, "hide")
    >>> b = Suppression("item", "i1", 0.5, 90.0, "skip")
    >>> merge([a], [b])[0].expires_at, merge([a], [b], replace_weaker=True)[0].expires_at
    (90.0, 50.0)
    """
    merged: dict[tuple[str, str], Suppression] = {}
    for is_added, suppressions in ((False, held), (True, added)):
        for suppression in suppressions:
            if clock is not None and suppression.expires_at <= clock:
                continue
            key = (suppression.target_type, suppression.target_id)
            previous = merged.get(key)
            if previous is None:
                merged[key] = suppression
                continue
            if is_added and replace_weaker:
                if previous.penalty > suppression.penalty:
                    continue
                stronger = suppression
            else:
                stronger = suppression if suppression.penalty > previous.penalty else previous
            expiry = max(previous.expires_at, suppression.expires_at)
            if stronger.expires_at != expiry:
                stronger = replace(stronger, expires_at=expiry)
            merged[key] = stronger
    return tuple(merged.values())


def active_suppressions(state: UserState) -> tuple[Suppression, ...]:
    """The user's suppressions that have not expired at their clock."""
    return tuple(s for s in state.suppressions if s.expires_at > state.clock)
