"""The fast path: strong explicit negatives become suppressions at once, before any model."""

from __future__ import annotations

from typing import Any

from agents.state import windows
from schemas.events import Feedback, ScoreUpdate, Suppression
from schemas.kinds import STRONG_NEGATIVE
from streams.settings import Settings

#: Explicit negatives on one creator / category in the long window that suppress it as a whole.
CREATOR_REPEAT = 2
CATEGORY_REPEAT = 3
ITEM_PENALTY = 1.0
CREATOR_PENALTY = 0.8
CATEGORY_PENALTY = 0.5


def fast_path_update(state: dict[str, Any], fb: Feedback, settings: Settings) -> ScoreUpdate | None:
    """Suppressions for a strong negative, recorded in ``state``; ``None`` for other kinds.

    The item is always suppressed; its creator when the kind targets the creator
    (block_creator, report) or the user repeated explicit negatives on it, and its category
    on repeats. Each carries a penalty in [0, 1], an event-time expiry and the reason.
    """
    if fb.kind not in STRONG_NEGATIVE:
        return None
    long_step = windows.long_step(settings.window_long_s, settings.window_step_s)
    long = windows.window_buckets(state["clock"], settings.window_long_s, long_step)
    new = [
        Suppression(
            "item", fb.item_id, ITEM_PENALTY, fb.timestamp + settings.suppression_ttl_s, fb.kind
        )
    ]
    group_expiry = fb.timestamp + settings.creator_suppression_ttl_s
    if fb.creator_id is not None:
        repeats = windows.total(state["long"], long, "nc:" + fb.creator_id)
        if fb.kind in {"block_creator", "report"}:
            new.append(Suppression("creator", fb.creator_id, 1.0, group_expiry, fb.kind))
        elif repeats >= CREATOR_REPEAT:
            reason = f"repeated_negatives:{repeats}"
            new.append(Suppression("creator", fb.creator_id, CREATOR_PENALTY, group_expiry, reason))
    if fb.category is not None:
        repeats = windows.total(state["long"], long, "ng:" + fb.category)
        if repeats >= CATEGORY_REPEAT:
            reason = f"repeated_negatives:{repeats}"
            new.append(Suppression("category", fb.category, CATEGORY_PENALTY, group_expiry, reason))
    merged = {(s["target_type"], s["target_id"]): s for s in state["suppressions"]}
    for suppression in new:
        key = (suppression.target_type, suppression.target_id)
        previous = merged.get(key)
        if previous is None or previous["penalty"] <= suppression.penalty:
            merged[key] = {
                "target_type": suppression.target_type,
                "target_id": suppression.target_id,
                "penalty": suppression.penalty,
                "expires_at": max(
                    suppression.expires_at, previous["expires_at"] if previous else 0.0
                ),
                "reason": suppression.reason,
            }
    state["suppressions"] = list(merged.values())
    return ScoreUpdate(
        user_id=fb.user_id,
        source="fast_path",
        model_version=-1,
        timestamp=fb.timestamp,
        trigger_event_ids=(fb.event_id,),
        suppressions=active_suppressions(state),
    )


def active_suppressions(state: dict[str, Any]) -> tuple[Suppression, ...]:
    """The user's suppressions that have not expired at their clock."""
    return tuple(
        Suppression(**s) for s in state["suppressions"] if s["expires_at"] > state["clock"]
    )
