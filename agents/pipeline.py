"""The input fold loop: one micro-batch at a time through ingest, per-user tables and the join."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Protocol

from faust.types import Message

from agents.delivery import Ack, OrderedDelivery, Step
from agents.encoder import OutputEncoder, OutputRecord
from agents.label_sweep import LabelSweep
from agents.resting import REST_AFTER_S, RestingStates
from agents.state import fold
from agents.state.config import StateConfig
from agents.state.ingest import Decoded, RawMessage, decode_batch
from agents.state.state import UserState
from agents.watermarks import Watermarks
from schemas.events import Feedback, Impression, Suppression
from schemas.kinds import NO_REACTION, kind_group
from streams import metrics
from streams.settings import Settings
from streams.users import UsersStore
from streams.yielding import Yielder, run_in_steps

log = logging.getLogger(__name__)

Record = Impression | Feedback

#: A user's events of one batch are folded this many at a time, pausing in between: a
#: power user's burst (hundreds of strong negatives, each with a fast-path update) would
#: otherwise hold the event loop for its whole length.
USER_STEP_EVENTS = 32
#: A batch's messages are decoded and validated this many at a time, pausing in between.
DECODE_SLICE = 64


#: Read ``topic[partition]`` again from ``offset``, forgetting the messages given (unacked).
Rewind = Callable[[str, int, int, list[Message]], Awaitable[None]]


class SuppressionsAhead(Protocol):
    """What the pipeline asks of the fast lane (``agents.fast_lane.FastLane``)."""

    def merge(
        self, user_id: str, suppressions: Sequence[Suppression], clock: float
    ) -> tuple[Suppression, ...]: ...

    def is_pending(self, user_id: str, event_id: str) -> bool: ...

    def applied(self, user_id: str, event_ids: Iterable[str]) -> None: ...


class InputPipeline:
    """Folds each micro-batch of input events into the users' states and queues what it
    produced for ordered delivery.

    ``lane`` (the fast lane) has its suppressions merged into every score update;
    ``on_feedback(user_id, event_id, produced_ms)`` is called for each applied feedback event
    (the model path queues the user for rescoring).
    """

    def __init__(
        self,
        settings: Settings,
        config: StateConfig,
        users: UsersStore[UserState],
        watermarks: Watermarks,
        encoder: OutputEncoder,
        delivery: OrderedDelivery,
        lane: SuppressionsAhead | None = None,
        on_feedback: Callable[[str, str, int | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.users = users
        self.watermarks = watermarks
        self.encoder = encoder
        self.delivery = delivery
        self.lane = lane
        self.on_feedback = on_feedback
        # Event time alone never compresses a state still in a label window and its grace.
        rest_after_s = max(REST_AFTER_S, config.label_window_s + config.grace_s)
        self.resting = RestingStates(users, rest_after_s, settings.open_states)
        self.impressions_topic = settings.topic("impressions")
        self.feedback_topic = settings.topic("feedback")
        self.sweep = LabelSweep(
            config, users, watermarks, delivery, self.resting, self.pause, self._close_into
        )
        self.recovery_seen: float | None = None
        self.yielder = Yielder()
        # Batches and the idle timer both read, publish, then write user state; the lock
        # keeps one from reading state the other is about to replace.
        self.lock = asyncio.Lock()
        # Reads a partition again from an offset (see _contiguous); set by the worker.
        self.rewind: Rewind | None = None
        self.rewound: dict[tuple[str, int], tuple[int, int]] = {}

    async def process(self, events: list[Message], ack: Ack | None = None) -> None:
        """Decode, validate, dedupe, update tables, join and publish one micro-batch.

        The user states are stored at once; the batch's records are then delivered in the
        background, in batch order, and ``ack`` is called on each event once they all are.
        """
        events = await self._contiguous(events)
        if not events:
            return
        step = Step(events=list(events), ack=ack)
        async with self.lock:
            # The batch's step, or the last of the label-window sweep that follows it.
            step = await self._process(events, step)
            # Queued under the lock: steps are delivered in the order their states were made.
            await self.delivery.queue(step)

    async def _contiguous(self, events: list[Message]) -> list[Message]:
        """``events`` without those of a partition whose offsets do not follow on from the
        last one handed over (or, first after an assignment, from the committed offset).

        Faust's consumer can resume a partition past offsets it never handed over (seen
        after a rebalance that moved partitions between workers): such a partition is read
        again from the first offset missing, and its events here are dropped, unacked.
        """
        if self.rewind is None:
            return events
        expected: dict[tuple[str, int], int | None] = {}
        skipped: dict[tuple[str, int], tuple[int, list[Message]]] = {}
        kept: list[Message] = []
        for message in events:
            source = (message.topic, message.partition)
            if source in skipped:
                skipped[source][1].append(message)
                continue
            if source not in expected:
                expected[source] = self.watermarks.expected_offset(*source)
            following = expected[source]
            # Read again and still not there: a hole in the log (a transaction marker, a
            # compacted record), passed over.
            hole = self.rewound.get(source) == (following, message.offset)
            if following is not None and message.offset > following and not hole:
                skipped[source] = (following, [message])
                continue
            expected[source] = max(following or 0, message.offset + 1)
            kept.append(message)
        for (topic, partition), (offset, dropped) in skipped.items():
            self.rewound[(topic, partition)] = (offset, dropped[0].offset)
            self.watermarks.skipped(topic, partition, offset, dropped[0].offset)
            await self.rewind(topic, partition, offset, dropped)
        return kept if skipped else events

    async def flush(self) -> None:
        """Wait until every computed batch is delivered (and its events acked)."""
        await self.delivery.flush()

    async def settle(self) -> None:
        """Wait for the batch being computed, then until everything computed is delivered."""
        async with self.lock:
            await self.delivery.flush()

    def on_assigned(self, partitions: Iterable[int] = ()) -> None:
        """Input ``partitions`` were assigned: the deadline index is rebuilt before the next
        batch; offsets of partitions kept through the rebalance go on being checked."""
        self.sweep.mark_stale()
        self.watermarks.assigned(partitions)

    def on_recovery(self, ended_at: float | None) -> None:
        """A finished recovery (after a rebalance) brings users whose label windows are
        still open: index them again once their state is complete, and keep the values it
        stored compressed."""
        if ended_at != self.recovery_seen:
            self.recovery_seen = ended_at
            self.sweep.mark_stale()
            self.resting.recovered(self.users.user_ids())

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the clocks and deadlines of partitions this worker no longer owns."""
        partitions = set(partitions)
        self.watermarks.forget_partitions(partitions)
        self.sweep.forget_partitions(partitions)
        self.resting.forget_partitions(partitions)

    async def _process(self, events: list[Message], step: Step) -> Step:
        """Fold ``events`` into ``step``, then close the label windows due on their
        partitions; return the step left to queue (``step`` itself unless the sweep filled
        it and queued it)."""
        started = time.perf_counter()
        await self.sweep.rebuild_if_stale()
        messages = [_raw(message) for message in events]
        latest = time.time() + self.settings.max_future_s
        decoded, max_bytes = Decoded(), self.settings.max_payload_bytes
        for first in range(0, len(messages), DECODE_SLICE):
            part = messages[first : first + DECODE_SLICE]
            decode_batch(part, self.impressions_topic, max_bytes, latest, decoded, first)
            await self.pause()
        watermarks = self.watermarks
        outcomes: Counter[str] = Counter()
        for position, letter in decoded.dead_letters:
            outcomes[f"dead_letter:{watermarks.kind_of(letter.topic)}"] += 1
            metrics.DEAD_LETTERS.labels(letter.reason).inc()
            step.outputs.append(self.encoder.dead_letter(letter, messages[position].key))
        for position, record in decoded.unkeyed:
            # Unkeyed input sits on a partition not chosen by user_id: re-send it keyed.
            message = messages[position]
            outcomes[f"repartitioned:{watermarks.kind_of(message.topic)}"] += 1
            value = message.value or b""
            step.outputs.append(OutputRecord(message.topic, record.user_id.encode(), value, None))
        by_user: dict[str, list[int]] = defaultdict(list)
        records: dict[int, Record] = dict(decoded.events)
        for position, record in decoded.events:
            by_user[record.user_id].append(position)
        touched = {m.partition for m in messages}
        marks = {p: watermarks(p) for p in touched}
        now = watermarks.wall()
        for message in messages:
            # Every message read counts towards being caught up, rejected ones too.
            watermarks.read(message.topic, message.partition, message.offset)
        for position, record in decoded.events:
            message = messages[position]
            watermarks.observe(message.topic, message.partition, record.timestamp, now)
        batch_out = fold.Outputs()
        new_states: list[tuple[str, int, UserState]] = []
        for user_id, positions in by_user.items():
            partition = messages[positions[-1]].partition
            batch = [records[p] for p in positions]
            steps = fold.apply_and_advance_in_steps(
                self.users.get(user_id), batch, self.config, marks[partition], user_id,
                USER_STEP_EVENTS,
            )  # fmt: skip
            state, out = await run_in_steps(steps, self.pause)
            batch_out.extend(out)
            new_states.append((user_id, partition, state))
        outcomes.update(batch_out.counts)
        sent_ms = {r.event_id: messages[p].timestamp_ms for p, r in decoded.events}
        # The step delivers these outputs before the states that record them: a crash in
        # between replays the events (at-least-once) instead of losing their outputs.
        partitions = {user: partition for user, partition, _ in new_states}
        await self._publish(batch_out, sent_ms, partitions, step)
        await self._write_states(new_states, marks.__getitem__, step)
        for _, record in decoded.events:
            if isinstance(record, Feedback):
                if self.lane is not None:
                    self.lane.applied(record.user_id, (record.event_id,))
                if self.on_feedback is not None:
                    self.on_feedback(record.user_id, record.event_id, sent_ms[record.event_id])
        step = await self.sweep.close_due(touched, step)
        await self.resting.compress_due(watermarks, self.pause)
        _observe(outcomes)
        metrics.BATCH_EVENTS.observe(len(events))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return step

    async def pause(self) -> None:
        """Let the event loop run other tasks when this one has held it for a while.

        A batch is CPU work in one task; without these pauses the fast lane, the consumer
        and the producers would each wait for the whole batch.
        """
        await self.yielder()

    def _store(self, user_id: str, partition: int, state: UserState, watermark: float) -> None:
        """Store the user's new state (never changed afterwards: the changelog record is made
        later, at delivery) and index its next label deadline."""
        state.partition = partition
        state.watermark = max(state.watermark, watermark)
        self.users.put(user_id, state, partition)
        self.resting.written(user_id, partition, state)
        self.sweep.schedule(user_id, partition, state)

    async def _write_states(
        self,
        states: Iterable[tuple[str, int, UserState]],
        watermark: Callable[[int], float],
        step: Step,
    ) -> None:
        """Store each ``(user, partition, state)`` and add it to ``step``'s changelog.

        Each partition's records go out as one batch: a batch's state is durable after about
        one round trip, so the gap after its outputs were delivered, in which a crash makes
        an output be published again, stays short.
        """
        for user, partition, state in states:
            self._store(user, partition, state, watermark(partition))
            step.changelog[partition][user] = state
            await self.pause()

    async def _close_into(
        self,
        closed: fold.Outputs,
        partition: int,
        changed: list[tuple[str, UserState]],
        watermark: float,
        step: Step,
    ) -> None:
        """Put what the label sweep closed on ``partition`` at ``watermark`` into ``step``:
        the outputs, then the ``changed`` users' states."""
        _observe(closed.counts)
        await self._publish(closed, {}, {user: partition for user, _ in changed}, step)
        await self._write_states(
            ((user, partition, state) for user, state in changed), lambda _: watermark, step
        )

    async def on_idle_tick(self) -> None:
        """Timer: rebuild the deadline index after recovery, and advance idle partitions."""
        async with self.lock:
            step = await self.sweep.close_all()
            await self.resting.compress_due(self.watermarks, self.pause)
            await self.delivery.queue(step)

    async def _publish(
        self,
        out: fold.Outputs,
        sent_ms: dict[str, int | None],
        partitions: dict[str, int],
        step: Step,
    ) -> None:
        """Add the examples and score updates to ``step``'s outputs."""
        records = step.outputs
        lane, encoder = self.lane, self.encoder
        # Counted per batch: looking up a labelled metric costs more than the rest of a
        # record.
        sources: Counter[str] = Counter()
        groups: Counter[str] = Counter()
        for update in out.updates:
            if lane is not None:
                merged = lane.merge(update.user_id, update.suppressions, update.timestamp)
                update = replace(update, suppressions=merged)
            records.append(encoder.score_update(update, partitions.get(update.user_id)))
            sources[update.source] += 1
            # An event the fast lane published first was timed by the lane.
            timed = tuple(
                event_id for event_id in update.trigger_event_ids
                if lane is None or not lane.is_pending(update.user_id, event_id)
            )  # fmt: skip
            step.timings.append((timed, sent_ms))
        for example in out.examples:
            group = "none" if example.label == NO_REACTION else kind_group(example.label)
            groups[group] += 1
            records.append(encoder.example(example, partitions.get(example.user_id)))
            await self.pause()
        for source, count in sources.items():
            metrics.SCORE_UPDATES.labels(source).inc(count)
        for group, count in groups.items():
            metrics.EXAMPLES.labels(group).inc(count)


def _raw(message: Message) -> RawMessage:
    # Bulk-read records are never decoded by Faust: key and value are the broker's bytes.
    timestamp = message.timestamp
    return RawMessage(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value,
        int(timestamp * 1000) if timestamp else None,
    )


def _observe(counts: Counter[str]) -> None:
    for name, count in counts.items():
        if name.startswith("capped:"):
            metrics.STATE_CAPPED.labels(name.removeprefix("capped:")).inc(count)
        elif ":" in name:
            outcome, kind = name.split(":", 1)
            metrics.EVENTS.labels(kind, outcome).inc(count)
        elif name == "abuse_excluded":
            metrics.EXCLUDED_EXAMPLES.labels("abuse_guard").inc(count)
        elif name == "unmatched_feedback":
            metrics.UNMATCHED_FEEDBACK.inc(count)
        elif name == "flagged":
            metrics.FLAGGED_USERS.inc(count)
