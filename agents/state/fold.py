"""The fold: dedupe, lateness, windowed counters and the label join, as pure functions.

``apply_events`` folds a micro-batch of one user's validated events into a copy of the
user's :class:`UserState` and returns the outputs; ``advance`` closes the label windows the
event-time watermark has passed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from agents.state import counters, windows
from agents.state.config import StateConfig
from agents.state.features import Totals, feature_row
from agents.state.state import Candidate, Orphan, Pending, UserState
from agents.state.suppression import fast_path_update
from schemas.events import FEATURE_NAMES, Example, Feedback, Impression, ScoreUpdate
from schemas.kinds import EXPLICIT_NEGATIVE, NEGATIVE_KINDS, NO_REACTION, label_of, severity

Event = Impression | Feedback

#: Feedback up to this many seconds before its impression's time still joins (clock skew).
JOIN_SKEW_S = 5.0


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


def next_deadline(state: UserState, config: StateConfig) -> float | None:
    """Event time at which the user's earliest open label window closes, if any."""
    times = [p.timestamp for p in state.pending]
    times += [o.timestamp for o in state.orphans]
    return min(times) + config.label_window_s if times else None


def apply_events(
    state: UserState | None, events: list[Event], config: StateConfig, watermark: float = 0.0
) -> tuple[UserState, Outputs]:
    """Fold one user's events (in arrival order) into a copy of ``state``.

    An event more than ``grace_s`` behind the event-time ``watermark``, or behind this
    user's newest event on the same input topic, is late: counted, remembered for dedupe,
    not applied. The per-topic clock keeps lateness exact while the watermark lags, e.g.
    while a restarted worker reads a backlog (Kafka orders a user's events per topic).
    """
    return _apply(_copy(state), events, config, watermark)


def apply_and_advance(
    state: UserState | None,
    events: list[Event],
    config: StateConfig,
    watermark: float,
    user_id: str,
) -> tuple[UserState, Outputs]:
    """:func:`apply_events` then :func:`advance` at the same watermark, copying once."""
    state, out = _apply(_copy(state), events, config, watermark)
    out.extend(_advance(state, watermark, user_id, config))
    return state, out


def advance(
    state: UserState | None, watermark: float, user_id: str, config: StateConfig
) -> tuple[UserState, Outputs]:
    """Emit the examples whose label window closed at event time ``watermark``.

    The watermark, not the user's own clock, closes windows: the two input topics are read
    independently, so one user's impressions can run ahead of that user's feedback.
    """
    state = _copy(state)
    return state, _advance(state, watermark, user_id, config)


def _copy(state: UserState | None) -> UserState:
    return UserState() if state is None else state.copy()


def _apply(
    state: UserState, events: list[Event], config: StateConfig, watermark: float
) -> tuple[UserState, Outputs]:
    out = Outputs()
    totals = Totals(config)
    seen = state.seen
    for event in events:
        kind = "impression" if isinstance(event, Impression) else "feedback"
        if event.event_id in seen:
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
            _apply_impression(state, event, config, totals)
        else:
            _apply_feedback(state, event, config, out, totals)
        out.counts["accepted:" + kind] += 1
    _expire(state, config)
    return state, out


def _apply_impression(
    state: UserState, imp: Impression, config: StateConfig, totals: Totals
) -> None:
    row = feature_row(*totals.at(state), imp.item_id, imp.creator_id, imp.category)
    pending = Pending(
        imp.event_id,
        imp.item_id,
        imp.creator_id,
        imp.category,
        imp.request_id,
        imp.timestamp,
        dict(zip(FEATURE_NAMES, row, strict=True)),
    )
    names = [counters.IMPRESSIONS, counters.item_exposure(imp.item_id)]
    if imp.creator_id is not None:
        names.append(counters.creator_exposure(imp.creator_id))
    _count(state, imp.timestamp, names, config, totals)
    remaining = []
    for orphan in state.orphans:
        if _joins(pending, orphan.item_id, orphan.request_id, orphan.timestamp, config):
            pending = replace(
                pending, kinds=(*pending.kinds, orphan.kind), label_ts=orphan.timestamp
            )
        else:
            remaining.append(orphan)
    state.orphans = remaining
    state.pending.append(pending)
    candidates = [c for c in state.candidates if c.item_id != imp.item_id]
    candidates.append(Candidate(imp.item_id, imp.creator_id, imp.category))
    state.candidates = candidates[-config.candidates_per_user :]


def _apply_feedback(
    state: UserState, fb: Feedback, config: StateConfig, out: Outputs, totals: Totals
) -> None:
    if fb.kind in NEGATIVE_KINDS:
        names = [counters.NEGATIVES, counters.by_kind(fb.kind)]
        if fb.kind in EXPLICIT_NEGATIVE:
            names.append(counters.EXPLICIT_NEGATIVES)
        if fb.creator_id is not None:
            names.append(counters.creator_negatives(fb.creator_id))
        if fb.category is not None:
            names.append(counters.category_negatives(fb.category))
    else:
        names = [counters.POSITIVES, counters.by_kind(fb.kind)]
    _count(state, fb.timestamp, names, config, totals)
    pendings = state.pending
    for index in range(len(pendings) - 1, -1, -1):
        pending = pendings[index]
        if _joins(pending, fb.item_id, fb.request_id, fb.timestamp, config):
            pendings[index] = replace(
                pending, kinds=(*pending.kinds, fb.kind), label_ts=fb.timestamp
            )
            break
    else:
        state.orphans.append(Orphan(fb.item_id, fb.request_id, fb.kind, fb.timestamp))
    if totals.at(state)[0].get(counters.NEGATIVES) > config.abuse_negative_cap:
        if state.flagged_until <= fb.timestamp:
            out.counts["flagged"] += 1
            state.flagged_since = fb.timestamp
        state.flagged_until = fb.timestamp + config.window_short_s
    update = fast_path_update(state, fb, config)
    if update is not None:
        out.updates.append(update)


def _joins(
    pending: Pending,
    item_id: str,
    request_id: str | None,
    timestamp: float,
    config: StateConfig,
) -> bool:
    if pending.item_id != item_id:
        return False
    if pending.request_id and request_id and pending.request_id != request_id:
        return False
    delay = float(timestamp) - float(pending.timestamp)
    return -JOIN_SKEW_S <= delay <= config.label_window_s


def _count(
    state: UserState, timestamp: float, names: list[str], config: StateConfig, totals: Totals
) -> None:
    short = windows.bucket_of(timestamp, config.window_step_s)
    long = windows.bucket_of(timestamp, config.long_step_s)
    totals.own(state, short, long)
    windows.add(state.short, short, names)
    windows.add(state.long, long, names)
    totals.added(short, long, names)


def _advance(state: UserState, now: float, user_id: str, config: StateConfig) -> Outputs:
    out = Outputs()
    still_open = []
    for pending in state.pending:
        if pending.timestamp + config.label_window_s > now:
            still_open.append(pending)
        elif _flagged_during(state, pending, config):
            out.counts["abuse_excluded"] += 1
        else:
            out.examples.append(_example(user_id, pending))
    state.pending = still_open
    kept = [o for o in state.orphans if o.timestamp + config.label_window_s > now]
    out.counts["unmatched_feedback"] += len(state.orphans) - len(kept)
    state.orphans = kept
    return out


def _flagged_during(state: UserState, pending: Pending, config: StateConfig) -> bool:
    # Excluded when the user was flagged at any point of the impression's label window.
    start, end = pending.timestamp, pending.timestamp + config.label_window_s
    return bool(state.flagged_since <= end and start <= state.flagged_until)


def _example(user_id: str, pending: Pending) -> Example:
    label = label_of(pending.kinds)
    delay = None if pending.label_ts is None else pending.label_ts - pending.timestamp
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
        kinds=pending.kinds,
        features=pending.features,
        label_delay_s=delay,
    )


def _expire(state: UserState, config: StateConfig) -> None:
    short, long = (
        windows.window_buckets(state.clock, config.window_short_s, config.window_step_s),
        windows.window_buckets(state.clock, config.window_long_s, config.long_step_s),
    )
    windows.expire(state.short, short.start)
    windows.expire(state.long, long.start)
    horizon = state.clock - config.dedup_ttl_s
    seen = state.seen
    # min() scans in C; rebuild the dict only when an entry has expired.
    if seen and min(seen.values()) < horizon:
        seen = {k: v for k, v in seen.items() if v >= horizon}
    if len(seen) > config.dedup_max_per_user:
        seen = dict(sorted(seen.items(), key=lambda kv: kv[1])[-config.dedup_max_per_user :])
    state.seen = seen
    state.suppressions = [s for s in state.suppressions if s.expires_at > state.clock]


__all__ = [
    "NO_REACTION",
    "Event",
    "Outputs",
    "advance",
    "apply_and_advance",
    "apply_events",
    "next_deadline",
]
