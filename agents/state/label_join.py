"""The label join: when an impression is due, the feedback it claims and the example it makes."""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator

from agents.state import counters
from agents.state.config import StateConfig
from agents.state.counters import feedback_counters
from agents.state.features import Rows, cut_of, short_sums, window_sums
from agents.state.outputs import Outputs
from agents.state.state import Pending, Reaction, Schedule, UserState, time_order
from schemas.events import FEATURE_NAMES, Example
from schemas.kinds import label_of, severity

#: Feedback up to this many seconds before its impression's time still joins (clock skew).
JOIN_SKEW_S = 5.0


def label_due(pending: Pending, config: StateConfig) -> float:
    """Watermark at which an impression is labelled."""
    return _label_due_at(pending.timestamp, config)


def reaction_due(reaction: Reaction, config: StateConfig) -> float:
    """Watermark past which no open impression can claim a feedback event."""
    return _reaction_due_at(reaction.timestamp, config)


def _label_due_at(timestamp: float, config: StateConfig) -> float:
    return timestamp + config.label_window_s + JOIN_SKEW_S


def _reaction_due_at(timestamp: float, config: StateConfig) -> float:
    return timestamp + config.label_window_s + 2 * JOIN_SKEW_S


def next_deadline(state: UserState, config: StateConfig) -> float | None:
    """Watermark at which the user's earliest open impression or reaction is due, if any:
    the first of each list's (both are in time order, and a due time grows with the time)."""
    if state.pending:
        due = label_due(state.pending[0], config)
        return min(due, reaction_due(state.reactions[0], config)) if state.reactions else due
    return reaction_due(state.reactions[0], config) if state.reactions else None


def scheduled_deadline(schedule: Schedule, config: StateConfig) -> float | None:
    """:func:`next_deadline` of the state ``schedule`` was read from."""
    times = [_label_due_at(t, config) for t in schedule.pending_times]
    times += [_reaction_due_at(t, config) for t in schedule.reaction_times]
    return min(times) if times else None


def _joins(pending: Pending, reaction: Reaction, config: StateConfig) -> bool:
    if pending.item_id != reaction.item_id:
        return False
    if pending.request_id and reaction.request_id and pending.request_id != reaction.request_id:
        return False
    delay = reaction.timestamp - pending.timestamp
    return -JOIN_SKEW_S <= delay <= config.label_window_s


def close_due(
    state: UserState, watermark: float, user_id: str, config: StateConfig, out: Outputs
) -> None:
    """Label, into ``out``, the impressions due at event time ``watermark``; drop the
    reactions no impression can claim any more (:func:`close_due_in_steps`, in one go)."""
    for _ in close_due_in_steps(state, watermark, user_id, config, out, 0):
        pass


def close_due_in_steps(
    state: UserState,
    watermark: float,
    user_id: str,
    config: StateConfig,
    out: Outputs,
    step: int,
) -> Iterator[None]:
    """Label, into ``out``, the impressions due at event time ``watermark``; drop the
    reactions no impression can claim any more. Pauses (yields) after every ``step``
    impressions labelled (0: never), so that a caller on an event loop lets other tasks run
    while a heavy user's thousands are labelled; the outcome does not depend on ``step``.

    Event time, whatever the read order (README "Event-time semantics"):

    * an impression is labelled once the watermark is ``label_window_s + JOIN_SKEW_S`` past
      it, when every event of either input up to then has been read;
    * a feedback event belongs to the latest impression (by event time) of its item (and
      request, when both name one) that it follows within the label window, or precedes by
      at most ``JOIN_SKEW_S``;
    * the example's features are the user's tables as of the start of its impression's step
      (:mod:`agents.state.features`), less its own feedback.
    """
    # Both lists are in time order and a due time grows with the time, so what closes is a
    # prefix of each: the work is O(due), however many stay open. Past its cap, the oldest
    # open impressions are labelled now, with the feedback read so far.
    count = _closing(state.pending, _label_due_at, config.max_pending, "pending", config,
                     watermark, out)  # fmt: skip
    if count:
        yield from _label(state, count, user_id, config, out, step)
    reactions = state.reactions
    gone = _closing(reactions, _reaction_due_at, config.max_reactions, "reactions", config,
                    watermark, out)  # fmt: skip
    if gone:
        unclaimed = sum(not r.claimed for r in reactions[:gone])
        if unclaimed:
            out.counts["unmatched_feedback"] += unclaimed
        state.reactions = reactions[gone:]


def _closing(
    entries: list[Pending] | list[Reaction],
    due_at: Callable[[float, StateConfig], float],
    cap: int,
    collection: str,
    config: StateConfig,
    watermark: float,
    out: Outputs,
) -> int:
    """How many of ``entries`` (in time order) close at ``watermark``: those due (``due_at``
    gives an entry's due time from its time), then the oldest beyond ``cap`` of the rest,
    counted as ``capped:<collection>``."""
    count = 0
    for entry in entries:
        if due_at(entry.timestamp, config) > watermark:
            break
        count += 1
    over = len(entries) - count - cap
    if over > 0:
        out.counts["capped:" + collection] += over
        count += over
    return count


def _label(
    state: UserState,
    count: int,
    user_id: str,
    config: StateConfig,
    out: Outputs,
    step: int,
) -> Iterator[None]:
    """Label the first ``count`` open impressions, in time order."""
    due = state.pending[:count]
    claims = _claims(state, due, config)
    rows_at: dict[int, Rows] = {}
    reactions = state.reactions
    for labelled, pending in enumerate(due, 1):
        if step and labelled % step == 0:
            yield
        claimed = [reactions[index] for index in claims.get(id(pending), ())]
        if _flagged_during(state, pending, config):
            out.counts["abuse_excluded"] += 1
        else:
            out.examples.append(_example(state, user_id, pending, claimed, config, rows_at))
    state.pending = state.pending[count:]
    if claims:
        # A claim is final: an impression is due only once every impression that could own
        # the reaction instead has been read, and one labelled early past its cap keeps what
        # it claimed. So a claimed reaction leaves the state; no close is due for it.
        taken = {index for indexes in claims.values() for index in indexes}
        state.reactions = [r for index, r in enumerate(reactions) if index not in taken]


def _claims(state: UserState, due: list[Pending], config: StateConfig) -> dict[int, list[int]]:
    """The unclaimed reactions (indexes into ``state.reactions``, in order) each impression
    of ``due`` claims, keyed by ``id()`` of the impression.

    A feedback event belongs to the latest impression (by time, then event id) among all the
    user's open ones that it joins (:func:`_joins`); it is claimed now when that impression is
    due. Impressions of an item are kept sorted per request id, so finding the owner costs
    a binary search in each of at most two lists, and a user shown the same item thousands
    of times is labelled in ``O((impressions + reactions) log impressions)``, not their
    product.
    """
    items = {p.item_id for p in due}
    # A reaction more than the label window after the latest due impression joins none of
    # them (the expression of _joins, monotonic in both times): its owner, if any, is still
    # open. The reactions are in time order, so those are a suffix, never looked at.
    latest_due = due[-1].timestamp
    window = config.label_window_s
    open_reactions = []
    for index, reaction in enumerate(state.reactions):
        if reaction.timestamp - latest_due > window:
            break
        if not reaction.claimed and reaction.item_id in items:
            open_reactions.append(index)
    if not open_reactions:
        return {}
    # Per item, every open impression (any request) and per (item, request id) those of
    # that request; None is the lane of the impressions that name no request (an empty id
    # names none, as in _joins).
    reacted = {state.reactions[index].item_id for index in open_reactions}
    anyone: defaultdict[str, list[Pending]] = defaultdict(list)
    lanes: defaultdict[tuple[str, str | None], list[Pending]] = defaultdict(list)
    # Each pool is in time order, as the open impressions are. An impression more than
    # JOIN_SKEW_S after the latest of these reactions joins none of them (the expression of
    # _joins, monotonic in both times), so the pools stop before it.
    last = state.reactions[open_reactions[-1]].timestamp
    for pending in state.pending:
        if pending.timestamp - last > JOIN_SKEW_S:
            break
        if pending.item_id in reacted:
            anyone[pending.item_id].append(pending)
            lanes[(pending.item_id, pending.request_id or None)].append(pending)
    times: dict[int, list[float]] = {}
    for pool in (*anyone.values(), *lanes.values()):
        times[id(pool)] = [p.timestamp for p in pool]
    due_ids = {id(p) for p in due}
    claims: defaultdict[int, list[int]] = defaultdict(list)
    for index in open_reactions:
        reaction = state.reactions[index]
        if not reaction.request_id:
            item_pool = anyone.get(reaction.item_id)
            pools = [item_pool] if item_pool else []
        else:
            pools = [
                pool
                for pool in (
                    lanes.get((reaction.item_id, reaction.request_id)),
                    lanes.get((reaction.item_id, None)),
                )
                if pool
            ]
        owner = None
        for pool in pools:
            found = _latest_joining(pool, times[id(pool)], reaction, config)
            if found is not None and (owner is None or time_order(found) > time_order(owner)):
                owner = found
        if owner is not None and id(owner) in due_ids:
            claims[id(owner)].append(index)
    return claims


def _latest_joining(
    pool: list[Pending], times: list[float], reaction: Reaction, config: StateConfig
) -> Pending | None:
    """The latest impression of ``pool`` (sorted by time, with ``times`` its timestamps; all
    of the reaction's item and of a request it matches) that ``reaction`` joins, if any."""
    # The impressions the reaction does not precede by more than JOIN_SKEW_S are a prefix:
    # ``p.timestamp - reaction.timestamp <= JOIN_SKEW_S``, the expression of _joins, is
    # monotonic in the impression's time. A search on the sum finds its end up to rounding;
    # the steps after it settle the end by that expression exactly.
    at = reaction.timestamp
    end = bisect_right(times, at + JOIN_SKEW_S)
    while end < len(times) and times[end] - at <= JOIN_SKEW_S:
        end += 1
    while end and times[end - 1] - at > JOIN_SKEW_S:
        end -= 1
    if not end:
        return None
    latest = pool[end - 1]
    return latest if _joins(latest, reaction, config) else None


def _example(
    state: UserState,
    user_id: str,
    pending: Pending,
    claimed: list[Reaction],
    config: StateConfig,
    rows_at: dict[int, Rows],
) -> Example:
    cut = cut_of(pending.timestamp, config)
    # Its own feedback is never among its features: feedback up to JOIN_SKEW_S before the
    # impression can fall before the cut.
    minus: Counter[str] | None = None
    for reaction in claimed:
        if cut_of(reaction.timestamp, config) < cut:
            totals, named = feedback_counters(reaction.kind, reaction.creator_id,
                                              reaction.category)  # fmt: skip
            if minus is None:
                minus = Counter()
            minus.update(totals + named)
    if minus:
        rows = Rows(*window_sums(state, config, cut, minus))
    else:
        cached = rows_at.get(cut)
        if cached is None:
            cached = rows_at[cut] = Rows(*window_sums(state, config, cut))
        rows = cached
    row = rows.row(pending.item_id, pending.creator_id, pending.category)
    if claimed:
        # In time order, as the reactions they were taken from.
        kinds = tuple(r.kind for r in claimed)
        label_ts: float | None = claimed[-1].timestamp
    else:
        kinds, label_ts = (), None
    label = label_of(kinds)
    return Example(
        example_id=pending.event_id,
        user_id=user_id,
        item_id=pending.item_id,
        timestamp=pending.timestamp,
        label=label,
        weight=severity(label),
        creator_id=pending.creator_id,
        category=pending.category,
        request_id=pending.request_id,
        kinds=kinds,
        features=dict(zip(FEATURE_NAMES, row, strict=True)),
        label_delay_s=None if label_ts is None else label_ts - pending.timestamp,
    )


#: A flagged user's examples are excluded while its negatives outnumber its impressions by
#: this much in the short window: a bot's flood, not a heavy user skipping through a feed.
FLOOD_RATIO = 2.0


def _flagged_during(state: UserState, pending: Pending, config: StateConfig) -> bool:
    # Excluded when the user was flagged (over ``abuse_negative_cap`` negatives in the short
    # window) at any point of the impression's label window and flooded negatives without
    # matching impressions then. Both use only events up to the window's end, all read by the
    # time the impression is labelled, so the verdict does not depend on the read order.
    start, end = pending.timestamp, pending.timestamp + config.label_window_s
    if not (state.flagged_since <= end and start <= state.flagged_until):
        return False
    short = short_sums(state, config, cut_of(end, config) + 1)
    return short.get(counters.NEGATIVES) > FLOOD_RATIO * short.get(counters.IMPRESSIONS)
