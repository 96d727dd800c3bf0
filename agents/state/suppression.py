"""The fast path: strong explicit negatives become suppressions at once, before any model.

Suppressions age by their feedback's event time: each expires ``suppression_ttl_s`` (the
item) or ``creator_suppression_ttl_s`` (creator, category) after the feedback that made it,
and is dropped once the user's newest feedback is past that. A user keeps about
``max_suppressions`` (a quarter over it, the weakest, then the soonest expiring, go down to
it); a score update carries at most ``max_update_suppressions`` (its own new ones first,
then the strongest).
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from operator import attrgetter
from sys import intern

from agents.state import counters
from agents.state.config import StateConfig
from agents.state.features import cut_of, long_sums
from agents.state.state import UserState
from schemas.events import Feedback, ScoreUpdate, Suppression
from schemas.kinds import CREATOR_TARGETED, STRONG_NEGATIVE

#: Explicit negatives on one creator / category in the long window that suppress it as a whole.
CREATOR_REPEAT = 2
CATEGORY_REPEAT = 3
ITEM_PENALTY = 1.0
CREATOR_PENALTY = 0.8
CATEGORY_PENALTY = 0.5


def suppressions_for(
    state: UserState | None,
    fb: Feedback,
    config: StateConfig,
    more_creator: int = 0,
    more_category: int = 0,
) -> list[Suppression]:
    """The suppressions a strong negative makes (none for other kinds).

    The item is always suppressed; its creator when the kind targets the creator
    (:data:`~schemas.kinds.CREATOR_TARGETED`) or the user repeated negatives on it within the
    long window ending at the feedback's step, and its category on repeats. ``state`` must
    already count ``fb``; ``more_*`` are negatives on its creator / category it does not
    count yet (the fast lane's events the input pipeline has not applied). Each suppression
    carries a penalty in [0, 1], an expiry by the feedback's event time and its reason.
    """
    if fb.kind not in STRONG_NEGATIVE:
        return []
    # Ids and reasons interned: users keep suppressions for days, many on the same targets.
    kind = intern(fb.kind)
    new = [
        Suppression(
            "item", intern(fb.item_id), ITEM_PENALTY, fb.timestamp + config.suppression_ttl_s, kind
        )
    ]
    long = None
    if state is not None and (fb.creator_id is not None or fb.category is not None):
        long = long_sums(state, config, cut_of(fb.timestamp, config) + 1)
    group_expiry = fb.timestamp + config.creator_suppression_ttl_s
    if fb.creator_id is not None:
        repeats = more_creator
        if long is not None:
            repeats += long.get(counters.creator_negatives(fb.creator_id))
        creator = intern(fb.creator_id)
        if fb.kind in CREATOR_TARGETED:
            new.append(Suppression("creator", creator, 1.0, group_expiry, kind))
        elif repeats >= CREATOR_REPEAT:
            reason = intern(f"repeated_negatives:{repeats}")
            new.append(Suppression("creator", creator, CREATOR_PENALTY, group_expiry, reason))
    if fb.category is not None:
        repeats = more_category
        if long is not None:
            repeats += long.get(counters.category_negatives(fb.category))
        if repeats >= CATEGORY_REPEAT:
            reason = intern(f"repeated_negatives:{repeats}")
            category = intern(fb.category)
            new.append(Suppression("category", category, CATEGORY_PENALTY, group_expiry, reason))
    return new


def fast_path_update(
    state: UserState,
    fb: Feedback,
    config: StateConfig,
    counts: Counter[str] | None = None,
    ranked: Ranked | None = None,
) -> ScoreUpdate | None:
    """Suppressions for a strong negative, recorded in ``state``; ``None`` for other kinds.

    Suppressions dropped by the per-user cap are counted in ``counts["capped:suppressions"]``.
    ``ranked`` keeps the user's suppressions ranked across the calls of one fold, so each
    call costs O(log n + update size) instead of a merge and a sort of all ``n``; the result
    is the same without it.
    """
    new = suppressions_for(state, fb, config)
    if not new:
        return None
    if ranked is None:
        ranked = Ranked()
    view = ranked.of(state)
    for suppression in new:
        view.add(suppression)
    # Trimmed to the cap in one sort once past it by a quarter: amortised O(1) an event.
    if len(state.suppressions) > config.max_suppressions * 5 // 4:
        if counts is not None:
            counts["capped:suppressions"] += len(state.suppressions) - config.max_suppressions
        state.suppressions = view.strongest(config.max_suppressions)
        view = ranked.of(state)
    return ScoreUpdate(
        user_id=fb.user_id,
        source="fast_path",
        model_version=-1,
        timestamp=fb.timestamp,
        trigger_event_ids=(fb.event_id,),
        suppressions=view.for_update(new, feedback_clock(state), config),
        update_id=f"{fb.event_id}:fast_path",
    )


class Ranked:
    """A user's suppressions ranked by strength, kept in step with ``state.suppressions``
    while one fold changes it a suppression at a time (rebuilt when the list is replaced)."""

    __slots__ = ("view",)

    def __init__(self) -> None:
        self.view: _RankedList | None = None

    def of(self, state: UserState) -> _RankedList:
        """The ranking of ``state.suppressions`` (which only this ranking changes in place)."""
        if self.view is None or self.view.listed is not state.suppressions:
            self.view = _RankedList(state.suppressions)
        return self.view


def _rank(suppression: Suppression, position: int) -> tuple[float, float, int]:
    # Strongest first; equals in list order, as a stable sort by strength would have them.
    return (-suppression.penalty, -suppression.expires_at, position)


class _RankedList:
    """``listed`` (one suppression per target) with its targets' positions and its order
    by strength."""

    __slots__ = ("keys", "listed", "position", "ranked")

    def __init__(self, listed: list[Suppression]) -> None:
        self.listed = listed
        self.position = {(s.target_type, s.target_id): i for i, s in enumerate(listed)}
        order = sorted((_rank(s, i), s) for i, s in enumerate(listed))
        self.keys = [key for key, _ in order]
        self.ranked = [s for _, s in order]

    def add(self, added: Suppression) -> None:
        """:func:`merge` with ``replace_weaker``, of one suppression, in place: an added one
        at least as strong replaces the target's (keeping the later expiry), a weaker one is
        dropped, a new target goes last."""
        key = (added.target_type, added.target_id)
        position = self.position.get(key)
        if position is None:
            position = self.position[key] = len(self.listed)
            self.listed.append(added)
        else:
            previous = self.listed[position]
            if previous.penalty > added.penalty:
                return
            if previous.expires_at > added.expires_at:
                added = replace(added, expires_at=previous.expires_at)
            at = bisect.bisect_left(self.keys, _rank(previous, position))
            del self.keys[at], self.ranked[at]
            self.listed[position] = added
        rank = _rank(added, position)
        at = bisect.bisect_left(self.keys, rank)
        self.keys.insert(at, rank)
        self.ranked.insert(at, added)

    def strongest(self, count: int) -> list[Suppression]:
        """The ``count`` strongest, strongest first (as :func:`strongest`)."""
        return self.ranked[:count]

    def for_update(
        self, new: Iterable[Suppression], clock: float, config: StateConfig
    ) -> tuple[Suppression, ...]:
        """:func:`for_update` of ``new`` and those not expired at ``clock``."""
        return _chosen(new, self.ranked, config.max_update_suppressions, clock)


def for_update(
    new: Iterable[Suppression], others: Iterable[Suppression], config: StateConfig
) -> tuple[Suppression, ...]:
    """What one update carries: ``new`` first, then the strongest of ``others`` (strongest
    first), at most ``max_update_suppressions`` in all, one per target."""
    ranked = sorted(others, key=_STRENGTH, reverse=True)
    return _chosen(new, ranked, config.max_update_suppressions)


def _chosen(
    new: Iterable[Suppression],
    ranked: Iterable[Suppression],
    limit: int,
    clock: float | None = None,
) -> tuple[Suppression, ...]:
    """``new``, then the first of ``ranked`` (not expired at ``clock``, when given) on
    targets not chosen yet, ``limit`` in all."""
    chosen: dict[tuple[str, str], Suppression] = {}
    for suppression in new:
        chosen[(suppression.target_type, suppression.target_id)] = suppression
    room = limit - len(chosen)
    for suppression in ranked:
        if room <= 0:
            break
        key = (suppression.target_type, suppression.target_id)
        if key not in chosen and (clock is None or suppression.expires_at > clock):
            chosen[key] = suppression
            room -= 1
    return tuple(chosen.values())


_STRENGTH = attrgetter("penalty", "expires_at")


def strongest(suppressions: Iterable[Suppression], count: int) -> tuple[Suppression, ...]:
    """At most ``count`` suppressions: the highest penalties, then the latest expiries."""
    listed = suppressions if isinstance(suppressions, tuple | list) else list(suppressions)
    if len(listed) <= count:
        return tuple(listed)
    return tuple(heapq.nlargest(count, listed, key=_STRENGTH))


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


def feedback_clock(state: UserState) -> float:
    """Event time of the user's newest feedback: what suppressions age by."""
    return state.topic_clock.get("feedback", 0.0)


def active_suppressions(state: UserState) -> tuple[Suppression, ...]:
    """The user's suppressions that have not expired by their newest feedback's time."""
    clock = feedback_clock(state)
    return tuple(s for s in state.suppressions if s.expires_at > clock)
