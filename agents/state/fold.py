"""Per-user state: dedupe, windowed counters and the label join, as pure functions.

A user's state is a JSON-able dict kept in the Faust ``users`` table. ``apply_events`` folds
a micro-batch of that user's validated events into a copy of it and returns the outputs;
``advance`` closes the label windows the event-time clock has passed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from agents.state import windows
from agents.state.suppression import fast_path_update
from schemas.events import FEATURE_NAMES, Example, Feedback, Impression, ScoreUpdate
from schemas.kinds import DEFAULT_SEVERITY, EXPLICIT_NEGATIVE, NEGATIVE_KINDS, NO_REACTION
from streams.settings import Settings

State = dict[str, Any]
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


def next_deadline(state: State, settings: Settings) -> float | None:
    """Event time at which the user's earliest open label window closes, if any."""
    times = [p["timestamp"] for p in state["pending"]]
    times += [o["timestamp"] for o in state["orphans"]]
    return min(times) + settings.label_window_s if times else None


def new_state() -> State:
    """An empty user state."""
    return {
        "clock": 0.0,
        "topic_clock": {},
        "seen": {},
        "short": {},
        "long": {},
        "pending": [],
        "orphans": [],
        "candidates": [],
        "suppressions": [],
        "flagged_since": 0.0,
        "flagged_until": 0.0,
    }


def copy_state(state: State | None) -> State:
    """A deep copy, so callers' state is never mutated.

    Copies exactly the containers the functions here change; the rest (list entries, the
    window buckets until ``_count`` writes one) is shared.
    """
    if state is None:
        return new_state()
    copied = dict(state)
    copied["topic_clock"] = dict(state["topic_clock"])
    copied["seen"] = dict(state["seen"])
    # Window buckets are shared until written: ``_count`` copies the one it adds to. A
    # user's state holds up to 58 buckets, and a batch writes one or two.
    copied["short"] = dict(state["short"])
    copied["long"] = dict(state["long"])
    # Their entries are replaced, never changed: a pending impression that a feedback joins
    # is copied first (``_apply_feedback``).
    copied["pending"] = list(state["pending"])
    copied["orphans"] = list(state["orphans"])
    copied["candidates"] = list(state["candidates"])
    copied["suppressions"] = list(state["suppressions"])
    return copied


class _Sums:
    """Counters of one window's buckets, each summed on first read and then kept up to date.

    A call reads a handful of names (a feature row needs seven) while a long-lived user's
    window holds thousands (one per item seen), so summing per name beats merging all.
    """

    __slots__ = ("buckets", "parts", "sums", "window")

    def __init__(self, buckets: dict[str, dict[str, int]], window: range) -> None:
        self.buckets, self.window = buckets, window
        # The window's non-empty buckets by index, found on first read.
        self.parts: dict[int, dict[str, int]] | None = None
        self.sums: dict[str, int] = {}

    def get(self, name: str, default: int = 0) -> int:
        """Total of ``name`` over the window (``default`` when it is 0)."""
        total = self.sums.get(name)
        if total is None:
            parts = self.parts
            if parts is None:
                found = ((index, self.buckets.get(str(index))) for index in self.window)
                parts = self.parts = {index: bucket for index, bucket in found if bucket}
            # map() over dict.get runs in C: no Python frame per bucket.
            total = sum(map(dict.get, parts.values(), repeat(name), repeat(0)))
            self.sums[name] = total
        return total or default

    def added(self, index: int, names: list[str]) -> None:
        """Account for ``names`` just counted in bucket ``index`` (which may be new or copied)."""
        if index in self.window:
            if self.parts is not None:
                self.parts[index] = self.buckets[str(index)]
            sums = self.sums
            for name in names:
                if name in sums:
                    sums[name] += 1


class _Totals:
    """Window totals at a user's current clock, kept up to date as counts are added, so
    featurising many events of one user does not re-sum the buckets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.long_step = long_step_s(settings)
        self.key: tuple[int, int] | None = None
        self.short = self.long = _Sums({}, range(0))
        self.owned: set[tuple[str, int]] = set()

    def at(self, state: State) -> tuple[_Sums, _Sums]:
        """(short, long) counters of the windows ending at ``state``'s clock."""
        settings, clock = self.settings, state["clock"]
        short = windows.window_buckets(clock, settings.window_short_s, settings.window_step_s)
        long = windows.window_buckets(clock, settings.window_long_s, self.long_step)
        if self.key != (short.start, long.start):
            self.key = (short.start, long.start)
            self.short = _Sums(state["short"], short)
            self.long = _Sums(state["long"], long)
        return self.short, self.long

    def own(self, state: State, short_index: int, long_index: int) -> None:
        """Give ``state`` its own copy of these buckets before they are written, once a call.

        ``copy_state`` shares buckets with the caller's state (see there).
        """
        for window, index in (("short", short_index), ("long", long_index)):
            key = (window, index)
            if key not in self.owned:
                self.owned.add(key)
                bucket = state[window].get(str(index))
                if bucket is not None:
                    state[window][str(index)] = dict(bucket)

    def added(self, short_index: int, long_index: int, names: list[str]) -> None:
        """Account for ``names`` just counted in these buckets."""
        if self.key is not None:
            self.short.added(short_index, names)
            self.long.added(long_index, names)


def apply_events(
    state: State | None, events: list[Event], settings: Settings, watermark: float = 0.0
) -> tuple[State, Outputs]:
    """Fold one user's events (in arrival order) into a copy of ``state``.

    An event more than ``grace_s`` behind the event-time ``watermark``, or behind this
    user's newest event on the same input topic, is late: counted, remembered for dedupe,
    not applied. The per-topic clock keeps lateness exact while the watermark lags, e.g.
    while a restarted worker reads a backlog (Kafka orders a user's events per topic).
    """
    state = copy_state(state)
    return _apply(state, events, settings, watermark)


def apply_and_advance(
    state: State | None, events: list[Event], settings: Settings, watermark: float, user_id: str
) -> tuple[State, Outputs]:
    """:func:`apply_events` then :func:`advance` at the same watermark, copying once."""
    state, out = _apply(copy_state(state), events, settings, watermark)
    out.extend(_advance(state, watermark, user_id, settings))
    return state, out


def _apply(
    state: State, events: list[Event], settings: Settings, watermark: float
) -> tuple[State, Outputs]:
    out = Outputs()
    totals = _Totals(settings)
    seen: dict[str, float] = state["seen"]
    for event in events:
        kind = "impression" if isinstance(event, Impression) else "feedback"
        if event.event_id in seen:
            out.counts["duplicate:" + kind] += 1
            continue
        seen[event.event_id] = event.timestamp
        topic_clock = state["topic_clock"].get(kind, 0.0)
        if event.timestamp < max(watermark, topic_clock) - settings.grace_s:
            out.counts["late:" + kind] += 1
            continue
        state["topic_clock"][kind] = max(topic_clock, event.timestamp)
        state["clock"] = max(state["clock"], event.timestamp)
        if isinstance(event, Impression):
            _apply_impression(state, event, settings, totals)
        else:
            _apply_feedback(state, event, settings, out, totals)
        out.counts["accepted:" + kind] += 1
    _expire(state, settings)
    return state, out


def _apply_impression(state: State, imp: Impression, settings: Settings, totals: _Totals) -> None:
    pending: dict[str, Any] = {
        "event_id": imp.event_id,
        "item_id": imp.item_id,
        "creator_id": imp.creator_id,
        "category": imp.category,
        "request_id": imp.request_id,
        "timestamp": imp.timestamp,
        "kinds": [],
        "label_ts": None,
        "features": _features(*totals.at(state), imp.item_id, imp.creator_id, imp.category),
    }
    names = ["imp", "i:" + imp.item_id]
    if imp.creator_id is not None:
        names.append("c:" + imp.creator_id)
    _count(state, imp.timestamp, names, settings, totals)
    remaining = []
    for orphan in state["orphans"]:
        if _joins(pending, orphan, settings):
            pending["kinds"].append(orphan["kind"])
            pending["label_ts"] = orphan["timestamp"]
        else:
            remaining.append(orphan)
    state["orphans"] = remaining
    state["pending"].append(pending)
    candidates = [c for c in state["candidates"] if c["item_id"] != imp.item_id]
    candidates.append(
        {"item_id": imp.item_id, "creator_id": imp.creator_id, "category": imp.category}
    )
    state["candidates"] = candidates[-settings.candidates_per_user :]


def _apply_feedback(
    state: State, fb: Feedback, settings: Settings, out: Outputs, totals: _Totals
) -> None:
    if fb.kind in NEGATIVE_KINDS:
        names = ["neg", "k:" + fb.kind]
        if fb.kind in EXPLICIT_NEGATIVE:
            names.append("exp")
        if fb.creator_id is not None:
            names.append("nc:" + fb.creator_id)
        if fb.category is not None:
            names.append("ng:" + fb.category)
    else:
        names = ["pos", "k:" + fb.kind]
    _count(state, fb.timestamp, names, settings, totals)
    orphan = {
        "item_id": fb.item_id,
        "request_id": fb.request_id,
        "kind": fb.kind,
        "timestamp": fb.timestamp,
    }
    pendings = state["pending"]
    for index in range(len(pendings) - 1, -1, -1):
        pending = pendings[index]
        if _joins(pending, orphan, settings):
            # A copy: the caller's state may share this entry (see ``copy_state``).
            kinds = [*pending["kinds"], fb.kind]
            pendings[index] = {**pending, "kinds": kinds, "label_ts": fb.timestamp}
            break
    else:
        state["orphans"].append(orphan)
    if totals.at(state)[0].get("neg", 0) > settings.abuse_negative_cap:
        if state["flagged_until"] <= fb.timestamp:
            out.counts["flagged"] += 1
            state["flagged_since"] = fb.timestamp
        state["flagged_until"] = fb.timestamp + settings.window_short_s
    update = fast_path_update(state, fb, settings)
    if update is not None:
        out.updates.append(update)


def _joins(pending: dict[str, Any], feedback: dict[str, Any], settings: Settings) -> bool:
    if pending["item_id"] != feedback["item_id"]:
        return False
    request, feedback_request = pending["request_id"], feedback["request_id"]
    if request and feedback_request and request != feedback_request:
        return False
    delay = float(feedback["timestamp"]) - float(pending["timestamp"])
    return -JOIN_SKEW_S <= delay <= settings.label_window_s


def _count(
    state: State, timestamp: float, names: list[str], settings: Settings, totals: _Totals
) -> None:
    short = windows.bucket_of(timestamp, settings.window_step_s)
    long = windows.bucket_of(timestamp, totals.long_step)
    totals.own(state, short, long)
    windows.add(state["short"], short, names)
    windows.add(state["long"], long, names)
    totals.added(short, long, names)


def long_step_s(settings: Settings) -> float:
    """Bucket size of the long window."""
    return windows.long_step(settings.window_long_s, settings.window_step_s)


def advance(
    state: State | None, watermark: float, user_id: str, settings: Settings
) -> tuple[State, Outputs]:
    """Emit the examples whose label window closed at event time ``watermark``.

    The watermark, not the user's own clock, closes windows: the two input topics are read
    independently, so one user's impressions can run ahead of that user's feedback.
    """
    state = copy_state(state)
    return state, _advance(state, watermark, user_id, settings)


def _advance(state: State, now: float, user_id: str, settings: Settings) -> Outputs:
    out = Outputs()
    still_open = []
    for pending in state["pending"]:
        if pending["timestamp"] + settings.label_window_s > now:
            still_open.append(pending)
        elif _flagged_during(state, pending, settings):
            out.counts["abuse_excluded"] += 1
        else:
            out.examples.append(_example(user_id, pending))
    state["pending"] = still_open
    kept = [o for o in state["orphans"] if o["timestamp"] + settings.label_window_s > now]
    out.counts["unmatched_feedback"] += len(state["orphans"]) - len(kept)
    state["orphans"] = kept
    return out


def _flagged_during(state: State, pending: dict[str, Any], settings: Settings) -> bool:
    # Excluded when the user was flagged at any point of the impression's label window.
    start, end = pending["timestamp"], pending["timestamp"] + settings.label_window_s
    return bool(state["flagged_since"] <= end and start <= state["flagged_until"])


def _example(user_id: str, pending: dict[str, Any]) -> Example:
    kinds = tuple(pending["kinds"])
    label = max(kinds, key=_label_rank) if kinds else NO_REACTION
    delay = None if pending["label_ts"] is None else pending["label_ts"] - pending["timestamp"]
    return Example(
        example_id=pending["event_id"],
        user_id=user_id,
        item_id=pending["item_id"],
        timestamp=pending["timestamp"],
        label=label,
        weight=DEFAULT_SEVERITY.get(label, 1.0),
        creator_id=pending["creator_id"],
        category=pending["category"],
        request_id=pending["request_id"],
        kinds=kinds,
        features=pending["features"],
        label_delay_s=delay,
    )


def _label_rank(kind: str) -> tuple[int, float]:
    # Negatives outrank positives; within a group the most severe kind wins.
    return (1 if kind in NEGATIVE_KINDS else 0, DEFAULT_SEVERITY.get(kind, 1.0))


def _expire(state: State, settings: Settings) -> None:
    clock = state["clock"]
    oldest_short = windows.window_buckets(clock, settings.window_short_s, settings.window_step_s)
    windows.expire(state["short"], oldest_short.start)
    long_step = long_step_s(settings)
    windows.expire(
        state["long"], windows.window_buckets(clock, settings.window_long_s, long_step).start
    )
    horizon = clock - settings.dedup_ttl_s
    seen = state["seen"]
    # min() scans in C; rebuild the dict only when an entry has expired.
    if seen and min(seen.values()) < horizon:
        seen = {k: v for k, v in seen.items() if v >= horizon}
    if len(seen) > settings.dedup_max_per_user:
        seen = dict(sorted(seen.items(), key=lambda kv: kv[1])[-settings.dedup_max_per_user :])
    state["seen"] = seen
    state["suppressions"] = [s for s in state["suppressions"] if s["expires_at"] > clock]


def table_view(state: State, settings: Settings) -> dict[str, Any]:
    """The user's windowed counters at their event-time clock, as published to operators."""
    clock = state["clock"]
    view: dict[str, Any] = {"clock": clock, "flagged": state["flagged_until"] > clock}
    candidates = state["candidates"]
    view["candidates"] = [
        {**candidate, "features": values}
        for candidate, values in zip(
            candidates, features_many(state, settings, candidates), strict=True
        )
    ]
    spans = {
        "short": (
            state["short"],
            windows.window_buckets(clock, settings.window_short_s, settings.window_step_s),
        ),
        "long": (
            state["long"],
            windows.window_buckets(clock, settings.window_long_s, long_step_s(settings)),
        ),
    }
    for name, (buckets, window) in spans.items():
        merged = Counter(windows.merge(buckets, window))
        impressions, negatives = merged["imp"], merged["neg"]
        view[name] = {
            "impressions": impressions,
            "negatives": negatives,
            "positives": merged["pos"],
            "explicit_negatives": merged["exp"],
            "negative_rate": negatives / impressions if impressions else 0.0,
            "by_kind": _prefixed(merged, "k:"),
            "negatives_by_creator": _prefixed(merged, "nc:"),
            "negatives_by_category": _prefixed(merged, "ng:"),
            "exposure_by_item": _prefixed(merged, "i:"),
            "exposure_by_creator": _prefixed(merged, "c:"),
        }
    return view


def _prefixed(counts: Counter[str], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: v for k, v in counts.items() if k.startswith(prefix) and v}


def features(
    state: State, settings: Settings, item_id: str, creator_id: str | None, category: str | None
) -> dict[str, float]:
    """Dense features of one candidate for this user, named as :data:`FEATURE_NAMES`."""
    return _features(*_Totals(settings).at(state), item_id, creator_id, category)


def _features(
    short: _Sums,
    long: _Sums,
    item_id: str,
    creator_id: str | None,
    category: str | None,
) -> dict[str, float]:
    row = _feature_row(short, long, item_id, creator_id, category)
    return dict(zip(FEATURE_NAMES, row, strict=True))


def _feature_row(
    short: _Sums,
    long: _Sums,
    item_id: str,
    creator_id: str | None,
    category: str | None,
) -> tuple[float, ...]:
    # In the order of FEATURE_NAMES (checked at import below).
    short_imp, long_imp = short.get("imp", 0), long.get("imp", 0)
    return (
        short.get("neg", 0) / short_imp if short_imp else 0.0,
        long.get("neg", 0) / long_imp if long_imp else 0.0,
        float(long.get("exp", 0)),
        float(long.get("nc:" + creator_id, 0)) if creator_id else 0.0,
        float(long.get("ng:" + category, 0)) if category else 0.0,
        float(long.get("i:" + item_id, 0)),
        float(long.get("c:" + creator_id, 0)) if creator_id else 0.0,
        float(long_imp),
    )


_ROW_ORDER = (
    "neg_rate_short", "neg_rate_long", "explicit_neg_long", "creator_neg_long",
    "category_neg_long", "item_exposure", "creator_exposure", "impressions_long",
)  # fmt: skip
if _ROW_ORDER != FEATURE_NAMES:  # pragma: no cover - a schema change must update _feature_row
    raise ImportError("agents.state.fold._feature_row is out of step with FEATURE_NAMES")


def feature_rows(
    state: State, settings: Settings, candidates: list[dict[str, Any]]
) -> list[tuple[float, ...]]:
    """Dense features of many candidates of one user, each in :data:`FEATURE_NAMES` order."""
    short, long = _Totals(settings).at(state)
    return [
        _feature_row(short, long, c["item_id"], c.get("creator_id"), c.get("category"))
        for c in candidates
    ]


def features_many(
    state: State, settings: Settings, candidates: list[dict[str, Any]]
) -> list[dict[str, float]]:
    """:func:`features` of many candidates of one user, merging the window buckets once."""
    return [
        dict(zip(FEATURE_NAMES, row, strict=True))
        for row in feature_rows(state, settings, candidates)
    ]
