"""Applying one user's events to its state: dedupe, lateness, window counts and the fast path."""

from __future__ import annotations

from sys import intern

from agents.state import counters, windows
from agents.state.config import StateConfig
from agents.state.counters import feedback_counters
from agents.state.features import cut_of, short_sums
from agents.state.outputs import Outputs
from agents.state.state import Candidate, Pending, Reaction, UserState, insert_in_time_order
from agents.state.suppression import Ranked, fast_path_update
from schemas.events import Feedback, Impression
from schemas.kinds import NEGATIVE_KINDS

Event = Impression | Feedback


class BucketWriter:
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


def apply_batch(
    state: UserState,
    events: list[Event],
    config: StateConfig,
    watermark: float,
    out: Outputs,
    writer: BucketWriter | None = None,
) -> None:
    """Apply ``events`` (in arrival order) to ``state`` in place, adding what they produce
    to ``out``; late and duplicate events are counted, not applied."""
    writer = writer or BucketWriter(state, config)
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
    state: UserState, imp: Impression, config: StateConfig, writer: BucketWriter, out: Outputs
) -> None:
    named = [counters.item_exposure(imp.item_id)]
    if imp.creator_id is not None:
        named.append(counters.creator_exposure(imp.creator_id))
    left_out = writer.count(imp.timestamp, [counters.IMPRESSIONS], named, "#i")
    if left_out:
        out.counts["capped:window_names"] += left_out
    insert_in_time_order(
        state.pending,
        Pending(
            imp.event_id, imp.item_id, imp.creator_id, imp.category, imp.request_id, imp.timestamp
        ),
    )
    candidates = [c for c in state.candidates if c.item_id != imp.item_id]
    # Shared: every user's candidate of an item is one object.
    candidates.append(Candidate.shared(imp.item_id, imp.creator_id, imp.category))
    state.candidates = candidates[-config.candidates_per_user :]


def _apply_feedback(
    state: UserState, fb: Feedback, config: StateConfig, writer: BucketWriter, out: Outputs
) -> None:
    totals, named = feedback_counters(fb.kind, fb.creator_id, fb.category)
    left_out = writer.count(fb.timestamp, totals, named, "#f")
    if left_out:
        out.counts["capped:window_names"] += left_out
    insert_in_time_order(
        state.reactions,
        Reaction(
            fb.event_id,
            fb.item_id,
            fb.request_id,
            fb.kind,
            fb.timestamp,
            fb.creator_id,
            fb.category,
        ),
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
