"""The fold: dedupe, lateness, windowed counters and the label join, as pure functions.

``apply_events`` folds a micro-batch of one user's validated events into a copy of the
user's :class:`UserState`; ``advance`` labels the impressions whose label window the
event-time watermark has passed. Both return what they produced as :class:`Outputs`.

Event time, whatever the read order (README "Event-time semantics"):

* an impression is labelled once the watermark is ``label_window_s + JOIN_SKEW_S`` past it,
  when every event of either input up to then has been read;
* a feedback event belongs to the latest impression (by event time) of its item (and
  request, when both name one) that it follows within the label window, or precedes by at
  most ``JOIN_SKEW_S``;
* the example's features are the user's tables as of the start of its impression's step
  (:mod:`agents.state.features`), less its own feedback.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from sys import intern

from agents.state import counters, dedupe, windows
from agents.state.config import StateConfig
from agents.state.features import (
    Sums,
    cut_of,
    feature_row,
    now_cut,
    oldest_fine_needed,
    oldest_long_needed,
    short_sums,
    window_sums,
)
from agents.state.state import Candidate, Pending, Reaction, Schedule, UserState
from agents.state.suppression import Ranked, fast_path_update, feedback_clock
from schemas.events import FEATURE_NAMES, Example, Feedback, Impression, ScoreUpdate
from schemas.kinds import EXPLICIT_NEGATIVE, NEGATIVE_KINDS, label_of, severity

Event = Impression | Feedback

#: Feedback up to this many seconds before its impression's time still joins (clock skew).
JOIN_SKEW_S = 5.0
#: Recent dedupe ids kept apart from the older ones, so a copy of the state copies few.
SEEN_YOUNG = 64


@dataclass
class Outputs:
    """What one call produced: records to publish and counters for metrics."""

    examples: list[Example] = field(default_factory=list)
    updates: list[ScoreUpdate] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def extend(self, other: Outputs) -> None:
        """Append ``other``'s records and counts to these."""
        self.examples.extend(other.examples)
        self.updates.extend(other.updates)
        self.counts.update(other.counts)


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
    """Watermark at which the user's earliest open impression or reaction is due, if any."""
    times = [label_due(p, config) for p in state.pending]
    times += [reaction_due(r, config) for r in state.reactions]
    return min(times) if times else None


def scheduled_deadline(schedule: Schedule, config: StateConfig) -> float | None:
    """:func:`next_deadline` of the state ``schedule`` was read from."""
    times = [_label_due_at(t, config) for t in schedule.pending_times]
    times += [_reaction_due_at(t, config) for t in schedule.reaction_times]
    return min(times) if times else None


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
    writer = _Counter(state, config)
    _apply(state, events, config, watermark, out, writer)
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
    """:func:`apply_and_advance` that pauses (yields) after every ``step`` events and before
    labelling, and returns its result: a caller on an event loop lets other tasks run
    between the parts of a heavy user's long batch. The result does not depend on ``step``.
    """
    state, out = _copy(state), Outputs()
    writer = _Counter(state, config)
    for start in range(0, len(events), max(1, step)):
        _apply(state, events[start : start + step], config, watermark, out, writer)
        yield
    writer.share_equal()
    _advance(state, watermark, user_id, config, out)
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
    _advance(state, watermark, user_id, config, out)
    _expire(state, config, watermark, out)
    state.pack_at_rest()
    return state, out


def _copy(state: UserState | None) -> UserState:
    return UserState() if state is None else state.copy()


class _Counter:
    """Writes counts into a state's buckets, copying each shared bucket once a call; keeps
    the state's suppressions ranked for the fast-path updates of the call."""

    __slots__ = ("config", "ranked", "state", "written")

    def __init__(self, state: UserState, config: StateConfig) -> None:
        self.state, self.config = state, config
        #: The buckets this call writes, by (fine, index): its own copies.
        self.written: dict[tuple[bool, int], dict[str, int]] = {}
        self.ranked = Ranked()

    def bucket(self, fine: bool, index: int) -> dict[str, int]:
        written = self.written.get((fine, index))
        if written is None:
            buckets = self.state.fine if fine else self.state.long
            key = str(index)
            bucket = buckets.get(key)
            if bucket is None:
                # Interned: every user with events in that step shares the key.
                key, written = intern(key), {}
            else:
                written = windows.unpacked(bucket)
            buckets[key] = self.written[(fine, index)] = written
        return written

    def share_equal(self) -> None:
        """Let each long bucket written in this call that holds the same counts as a step
        bucket written in it hold that step bucket's dict: a user whose events of the long
        bucket all fell in one step keeps one dict, not two. Call it once the call writes no
        more: stored buckets are never changed, and the next call copies a bucket before it
        writes to it."""
        per_long = self.config.steps_per_long
        for (fine, index), step in self.written.items():
            whole = self.written.get((False, index // per_long)) if fine else None
            if whole is not None and _same_counts(step, whole):
                self.state.long[str(index // per_long)] = step

    def count(self, timestamp: float, totals: list[str], named: list[str], source: str) -> int:
        """Count one event in its step and long buckets; return the names left out."""
        config = self.config
        cap = config.max_names_per_bucket
        fine = self.bucket(True, windows.bucket_of(timestamp, config.window_step_s))
        long = self.bucket(False, windows.bucket_of(timestamp, config.long_step_s))
        left_out = windows.add(fine, totals, named, source, cap)
        return left_out + windows.add(long, totals, named, source, cap)


def _same_counts(a: dict[str, int], b: dict[str, int]) -> bool:
    # In the same order too, so that the wire form does not change either.
    return a == b and list(a) == list(b)


def feedback_counters(kind: str, creator_id: str | None, category: str | None) -> tuple[
    list[str], list[str]
]:  # fmt: skip
    """(totals, per-id names) a feedback event counts."""
    if kind in NEGATIVE_KINDS:
        totals = [counters.NEGATIVES, counters.by_kind(kind)]
        if kind in EXPLICIT_NEGATIVE:
            totals.append(counters.EXPLICIT_NEGATIVES)
        named = []
        if creator_id is not None:
            named.append(counters.creator_negatives(creator_id))
        if category is not None:
            named.append(counters.category_negatives(category))
        return totals, named
    return [counters.POSITIVES, counters.by_kind(kind)], []


def _apply(
    state: UserState,
    events: list[Event],
    config: StateConfig,
    watermark: float,
    out: Outputs,
    writer: _Counter | None = None,
) -> None:
    writer = writer or _Counter(state, config)
    seen, seen_old = state.seen, state.seen_old
    for event in events:
        kind = "impression" if isinstance(event, Impression) else "feedback"
        if event.event_id in seen or event.event_id in seen_old:
            out.counts["duplicate:" + kind] += 1
            continue
        seen[event.event_id] = event.timestamp
        topic_clock = state.topic_clock.get(kind, 0.0)
        if event.timestamp < max(watermark, topic_clock) - config.grace_s:
            out.counts["late:" + kind] += 1
            continue
        state.topic_clock[kind] = max(topic_clock, event.timestamp)
        state.clock = max(state.clock, event.timestamp)
        if isinstance(event, Impression):
            _apply_impression(state, event, config, writer, out)
        else:
            _apply_feedback(state, event, config, writer, out)
        out.counts["accepted:" + kind] += 1


def _apply_impression(
    state: UserState, imp: Impression, config: StateConfig, writer: _Counter, out: Outputs
) -> None:
    named = [counters.item_exposure(imp.item_id)]
    if imp.creator_id is not None:
        named.append(counters.creator_exposure(imp.creator_id))
    left_out = writer.count(imp.timestamp, [counters.IMPRESSIONS], named, "#i")
    if left_out:
        out.counts["capped:window_names"] += left_out
    state.pending.append(
        Pending(
            imp.event_id, imp.item_id, imp.creator_id, imp.category, imp.request_id, imp.timestamp
        )
    )
    candidates = [c for c in state.candidates if c.item_id != imp.item_id]
    # Shared: every user's candidate of an item is one object.
    candidates.append(Candidate.shared(imp.item_id, imp.creator_id, imp.category))
    state.candidates = candidates[-config.candidates_per_user :]


def _apply_feedback(
    state: UserState, fb: Feedback, config: StateConfig, writer: _Counter, out: Outputs
) -> None:
    totals, named = feedback_counters(fb.kind, fb.creator_id, fb.category)
    left_out = writer.count(fb.timestamp, totals, named, "#f")
    if left_out:
        out.counts["capped:window_names"] += left_out
    state.reactions.append(
        Reaction(
            fb.event_id,
            fb.item_id,
            fb.request_id,
            fb.kind,
            fb.timestamp,
            fb.creator_id,
            fb.category,
        )
    )
    if fb.kind in NEGATIVE_KINDS:
        short = short_sums(state, config, cut_of(fb.timestamp, config) + 1)
        if short.get(counters.NEGATIVES) > config.abuse_negative_cap:
            if state.flagged_until <= fb.timestamp:
                out.counts["flagged"] += 1
                state.flagged_since = fb.timestamp
            state.flagged_until = max(state.flagged_until, fb.timestamp + config.window_short_s)
    update = fast_path_update(state, fb, config, out.counts, writer.ranked)
    if update is not None:
        out.updates.append(update)


def _joins(pending: Pending, reaction: Reaction, config: StateConfig) -> bool:
    if pending.item_id != reaction.item_id:
        return False
    if pending.request_id and reaction.request_id and pending.request_id != reaction.request_id:
        return False
    delay = reaction.timestamp - pending.timestamp
    return -JOIN_SKEW_S <= delay <= config.label_window_s


def _advance(
    state: UserState, watermark: float, user_id: str, config: StateConfig, out: Outputs
) -> None:
    due = [p for p in state.pending if label_due(p, config) <= watermark]
    if len(state.pending) - len(due) > config.max_pending:
        # The oldest open impressions are labelled now, with the feedback read so far.
        still_open = sorted(
            (p for p in state.pending if label_due(p, config) > watermark),
            key=lambda p: (p.timestamp, p.event_id),
        )
        forced = still_open[: len(still_open) - config.max_pending]
        out.counts["capped:pending"] += len(forced)
        due += forced
    if due:
        _label(state, due, user_id, config, out)
    kept, unclaimed = [], 0
    for reaction in state.reactions:
        if reaction_due(reaction, config) <= watermark:
            unclaimed += not reaction.claimed
        else:
            kept.append(reaction)
    if len(kept) > config.max_reactions:
        kept.sort(key=lambda r: (r.timestamp, r.event_id))
        dropped = kept[: len(kept) - config.max_reactions]
        out.counts["capped:reactions"] += len(dropped)
        unclaimed += sum(not r.claimed for r in dropped)
        kept = kept[len(dropped) :]
    if unclaimed:
        out.counts["unmatched_feedback"] += unclaimed
    state.reactions = kept


def _label(
    state: UserState, due: list[Pending], user_id: str, config: StateConfig, out: Outputs
) -> None:
    by_item: defaultdict[str, list[Pending]] = defaultdict(list)
    for pending in state.pending:
        by_item[pending.item_id].append(pending)
    reactions: defaultdict[str, list[int]] = defaultdict(list)
    for index, reaction in enumerate(state.reactions):
        reactions[reaction.item_id].append(index)
    due.sort(key=lambda p: (p.timestamp, p.event_id))
    done = {p.event_id for p in due}
    sums_at: dict[int, tuple[Sums, Sums]] = {}
    for pending in due:
        order = (pending.timestamp, pending.event_id)
        claimed: list[Reaction] = []
        for index in reactions.get(pending.item_id, ()):
            reaction = state.reactions[index]
            if reaction.claimed or not _joins(pending, reaction, config):
                continue
            # A feedback event belongs to the latest impression it joins.
            later = any(
                (other.timestamp, other.event_id) > order and _joins(other, reaction, config)
                for other in by_item[pending.item_id]
            )
            if later:
                continue
            claimed.append(reaction)
            state.reactions[index] = replace(reaction, claimed=True)
        if _flagged_during(state, pending, config):
            out.counts["abuse_excluded"] += 1
        else:
            out.examples.append(_example(state, user_id, pending, claimed, config, sums_at))
        by_item[pending.item_id] = [p for p in by_item[pending.item_id] if p is not pending]
    state.pending = [p for p in state.pending if p.event_id not in done]


def _example(
    state: UserState,
    user_id: str,
    pending: Pending,
    claimed: list[Reaction],
    config: StateConfig,
    sums_at: dict[int, tuple[Sums, Sums]],
) -> Example:
    cut = cut_of(pending.timestamp, config)
    # Its own feedback is never among its features: feedback up to JOIN_SKEW_S before the
    # impression can fall before the cut.
    minus: Counter[str] = Counter()
    for reaction in claimed:
        if cut_of(reaction.timestamp, config) < cut:
            totals, named = feedback_counters(reaction.kind, reaction.creator_id,
                                              reaction.category)  # fmt: skip
            minus.update(totals + named)
    if minus:
        short, long = window_sums(state, config, cut, minus)
    else:
        cached = sums_at.get(cut)
        if cached is None:
            cached = sums_at[cut] = window_sums(state, config, cut)
        short, long = cached
    row = feature_row(short, long, pending.item_id, pending.creator_id, pending.category)
    kinds = tuple(r.kind for r in sorted(claimed, key=lambda r: (r.timestamp, r.event_id)))
    label = label_of(kinds)
    label_ts = max((r.timestamp for r in claimed), default=None)
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


def _expire(state: UserState, config: StateConfig, watermark: float, out: Outputs) -> None:
    # Buckets are kept for every cut still to come: open impressions', any event not late at
    # this watermark, and the user's own clock (rescoring and the operators' view read the
    # tables as they stand now).
    horizon = min(cut_of(max(0.0, watermark - config.grace_s), config), now_cut(state, config))
    if state.pending:
        horizon = min(horizon, min(cut_of(p.timestamp, config) for p in state.pending))
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
