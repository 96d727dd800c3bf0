"""The input pipeline: one micro-batch at a time through ingest, per-user tables and the join."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, cast

from faust.types import TP, Message, TableT

from agents.fast_lane import FastLane
from agents.state import fold as user_state
from agents.state.ingest import RawMessage, decode_batch
from schemas.codec import encode
from schemas.events import Feedback, Impression
from schemas.kinds import NO_REACTION, kind_group
from streams import metrics
from streams.output import OutputProducer
from streams.privacy import Pseudonymizer
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)

Record = Impression | Feedback

#: Seconds between rebuilds of the label-deadline index from the users table.
REBUILD_EVERY_S = 30.0
#: Longest wall time an input not yet read since its partition was assigned holds the
#: partition's watermark, when the broker never says it has nothing to read.
HOLD_UNREAD_MAX_S = 30.0
#: Longest CPU stretch of a batch before it lets the event loop run other tasks.
YIELD_EVERY_S = 0.002
#: Batches whose records may wait for delivery while the next ones are computed.
MAX_UNDELIVERED_STEPS = 8

#: Marks a delivered batch's input records processed (their offsets may be committed).
Ack = Callable[[list[Message]], None]


@dataclass
class _Step:
    """What one batch (or label-window sweep) leaves to deliver, in delivery order.

    Its outputs (examples, score updates) go first, then the changelog records of the user
    states that account for them, then its input events are acked: a crash at any point
    replays the events (at-least-once, deduplicated by event id) instead of losing outputs.
    """

    outputs: list[tuple[Any, bytes, bytes, int | None]] = field(default_factory=list)
    # The states written, by partition and user; serialised at delivery, where the steps
    # delivered together keep only each user's newest state.
    changelog: dict[int, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    # (trigger event ids, produced ms by event id) of the updates, timed at delivery.
    timings: list[tuple[tuple[str, ...], dict[str, int | None]]] = field(default_factory=list)
    events: list[Message] = field(default_factory=list)
    ack: Ack | None = None

    def __bool__(self) -> bool:
        return bool(self.outputs or self.changelog or self.events)


class InputPipeline:
    """Drives the pure per-user functions and keeps each partition's event-time watermark.

    Each input topic-partition has a clock, the newest event time read from it. A
    partition's watermark is the lowest clock of its two inputs (less
    ``watermark_delay_s``), so impressions read ahead of their feedback do not close label
    windows early. An input idle for ``idle_flush_s`` wall seconds stops holding the
    watermark back; when both are idle, event time moves on with wall time, so the last
    impressions of a quiet stream are still labelled.
    """

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        users: TableT[str, Any],
        pseudonym: Pseudonymizer | None = None,
    ) -> None:
        self.settings = settings
        self.pseudonym = pseudonym or Pseudonymizer(settings.pseudonymize_key)
        self.topics = topics
        self.users = users
        # The users table's changelog is written here, a batch per partition, rather than
        # one record at a time through Faust's producer.
        self.changelog = OutputProducer(settings, "changelog")
        self.impressions_topic = topics.impressions_name
        self.feedback_topic = topics.inputs.topics[1]
        self.clock: dict[tuple[str, int], float] = {}
        self.last_input: dict[tuple[str, int], float] = {}
        # Next offset to process of each input read so far (see check_inputs()).
        self.next_offset: dict[tuple[str, int], int] = {}
        # Latest wall time at which each input was found to have nothing left to read.
        self.quiet_at: dict[tuple[str, int], float] = {}
        self.deadlines: dict[int, list[tuple[float, str]]] = defaultdict(list)
        self.first_seen: dict[int, tuple[float, float]] = {}
        # The watermark each user state was written under survives a restart in the table:
        # the highest one is where the partition's watermark resumes.
        self.floor: dict[int, float] = {}
        self.index_stale = True
        self.recovery_seen: float | None = None
        self.last_rebuild = 0.0
        # Called with (user_id, event_id, produced_ms) for each feedback event: the model path.
        self.on_feedback: Callable[[str, str, int | None], None] | None = None
        # Publishes strong negatives' suppressions ahead of the batch (agents/fast_lane.py).
        self.lane: FastLane | None = None
        self.last_yield = time.perf_counter()
        # Batches and the idle timer both read, publish, then write user state; the lock
        # keeps one from reading state the other is about to replace.
        self.lock = asyncio.Lock()
        # Steps computed but not yet delivered, delivered in order by one task, so the next
        # batch is computed while the broker acknowledges the last one.
        self.undelivered: asyncio.Queue[_Step] | None = None
        # Held here: the event loop keeps only weak references to tasks.
        self.deliverer: asyncio.Task[None] | None = None
        self.delivery_error: BaseException | None = None

    async def process(self, events: list[Message], ack: Ack | None = None) -> None:
        """Decode, validate, dedupe, update tables, join and publish one micro-batch.

        The user states are stored at once; the batch's records are then delivered in the
        background, in batch order, and ``ack`` is called on each event once they all are.
        """
        step = _Step(events=list(events), ack=ack)
        async with self.lock:
            await self._process(events, step)
            # Queued under the lock: steps are delivered in the order their states were made.
            await self._queue(step)

    async def _queue(self, step: _Step) -> None:
        if self.delivery_error is not None:
            raise RuntimeError("delivering a batch's records failed") from self.delivery_error
        if not step:
            return
        if self.undelivered is None:
            self.undelivered = asyncio.Queue(MAX_UNDELIVERED_STEPS)
            self.deliverer = asyncio.create_task(self._deliver_forever(self.undelivered))
        await self.undelivered.put(step)
        metrics.UNDELIVERED_BATCHES.set(self.undelivered.qsize())

    async def flush(self) -> None:
        """Wait until every computed batch is delivered (and its events acked)."""
        if self.undelivered is not None and self.delivery_error is None:
            await self.undelivered.join()

    async def _deliver_forever(self, queue: asyncio.Queue[_Step]) -> None:
        while True:
            # Every step waiting is delivered together: one round trip for the outputs and
            # one for the changelog, however many batches were computed meanwhile.
            steps = [await queue.get()]
            while not queue.empty():
                steps.append(queue.get_nowait())
            try:
                await self._deliver(steps)
            except Exception as error:  # not a broker outage (those are retried): a bug
                log.exception("delivering a batch's records failed; the worker stops")
                self.delivery_error = error
                return
            finally:
                for _ in steps:
                    queue.task_done()
                metrics.UNDELIVERED_BATCHES.set(queue.qsize())

    async def _deliver(self, steps: list[_Step]) -> None:
        records = [record for step in steps for record in step.outputs]
        if records:

            async def send_outputs() -> list[asyncio.Future[Any]]:
                return [await self.topics.publish(*record) for record in records]

            await self.topics.outputs.deliver(send_outputs)
        for step in steps:
            self._time_updates(step)
        # A user's newest state is all the changelog needs: batches delivered together send
        # one record per user, and only that one is serialised.
        newest: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
        for step in steps:
            for partition, states in step.changelog.items():
                newest[partition].update(states)
        if newest:
            changelog = {
                partition: [self._changelog_record(user, state) for user, state in states.items()]
                for partition, states in newest.items()
            }
            topic = cast(Any, self.users).changelog_topic.get_topic_name()

            async def send_changelog() -> list[asyncio.Future[Any]]:
                pending = []
                for partition, records in changelog.items():
                    pending += await self.changelog.send_partition(topic, partition, records)
                return pending

            await self.changelog.deliver(send_changelog)
        for step in steps:
            if step.ack is not None:
                step.ack(step.events)

    def _time_updates(self, step: _Step) -> None:
        now = time.time()
        for event_ids, sent_ms in step.timings:
            for event_id in event_ids:
                produced = sent_ms.get(event_id)
                if produced:
                    metrics.FEEDBACK_TO_SCORE.labels("fast").observe(
                        max(0.0, now - produced / 1000)
                    )

    async def _process(self, events: list[Message], step: _Step) -> None:
        started = time.perf_counter()
        if self.index_stale:
            self.rebuild_index(self.users.items())
        messages = [_raw(message) for message in events]
        latest = time.time() + self.settings.max_future_s
        decoded = decode_batch(
            messages, self.impressions_topic, self.settings.max_payload_bytes, latest
        )
        outcomes: Counter[str] = Counter()
        for position, letter in decoded.dead_letters:
            outcomes[f"dead_letter:{self._type_of(letter.topic)}"] += 1
            metrics.DEAD_LETTERS.labels(letter.reason).inc()
            key = messages[position].key
            if self.pseudonym.enabled:
                # The raw payload and the key name the user: keep the payload's size and
                # digest, and the key as a pseudonym.
                hidden = None if key is None else self.pseudonym(key.decode("utf-8", "replace"))
                key = None if hidden is None else hidden.encode()
                detail = letter.detail
                if letter.reason == "key_mismatch":
                    detail = "message key is not the user_id"
                letter = replace(letter, key=hidden, value_b64="", detail=detail,
                                 truncated=letter.value_size > 0)  # fmt: skip
            await self.topics.dead_letters.send(key=key, value=encode(letter))
        for position, record in decoded.unkeyed:
            # Unkeyed input sits on a partition not chosen by user_id: re-send it keyed.
            outcomes[f"repartitioned:{self._type_of(messages[position].topic)}"] += 1
            channel = self.topics.inputs.derive(topics=[messages[position].topic])
            await channel.send(key=record.user_id.encode(), value=messages[position].value)
        by_user: dict[str, list[int]] = defaultdict(list)
        records: dict[int, Record] = dict(decoded.events)
        for position, record in decoded.events:
            by_user[record.user_id].append(position)
        touched = {m.partition for m in messages}
        watermarks = {p: self.watermark(p) for p in touched}
        now = time.monotonic()
        for message in messages:
            # Every message read counts towards being caught up, rejected ones too.
            source = (message.topic, message.partition)
            expected = self.next_offset.get(source)
            if expected is not None and message.offset > expected:
                metrics.INPUT_OFFSET_GAPS.labels(self._type_of(message.topic)).inc(
                    message.offset - expected
                )
                log.warning(
                    "input %s[%d]: offsets %d..%d were never handed to the input pipeline",
                    message.topic, message.partition, expected, message.offset - 1,
                )  # fmt: skip
            self.next_offset[source] = max(expected or 0, message.offset + 1)
        for position, record in decoded.events:
            message = messages[position]
            self.observe(message.topic, message.partition, record.timestamp, now)
        batch_out = user_state.Outputs()
        new_states: list[tuple[str, int, dict[str, Any]]] = []
        for user_id, positions in by_user.items():
            partition = messages[positions[-1]].partition
            batch = [records[p] for p in positions]
            watermark = watermarks[partition]
            state, out = user_state.apply_and_advance(
                cast(Any, self.users).data.get(user_id), batch, self.settings, watermark, user_id
            )
            await self.pause()
            batch_out.extend(out)
            new_states.append((user_id, partition, state))
        outcomes.update(batch_out.counts)
        sent_ms = {r.event_id: messages[p].timestamp_ms for p, r in decoded.events}
        # The step delivers these outputs before the states that record them: a crash in
        # between replays the events (at-least-once) instead of losing their outputs.
        partitions = {user: partition for user, partition, _ in new_states}
        await self._publish(batch_out, sent_ms, partitions, step)
        await self._write_states(new_states, watermarks.__getitem__, step)
        for _, record in decoded.events:
            if isinstance(record, Feedback):
                if self.lane is not None:
                    self.lane.applied(record.user_id, (record.event_id,))
                if self.on_feedback is not None:
                    self.on_feedback(record.user_id, record.event_id, sent_ms[record.event_id])
        for partition in touched:
            await self.close_due(partition, step)
        _observe(outcomes)
        metrics.BATCH_EVENTS.observe(len(events))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    async def pause(self) -> None:
        """Let the event loop run other tasks when this one has held it for a while.

        A batch is CPU work in one task; without these pauses the fast lane, the consumer
        and the producers would each wait for the whole batch.
        """
        now = time.perf_counter()
        if now - self.last_yield >= YIELD_EVERY_S:
            await asyncio.sleep(0)
            self.last_yield = time.perf_counter()

    def _type_of(self, topic: str) -> str:
        return "impression" if topic == self.impressions_topic else "feedback"

    def observe(
        self, topic: str, partition: int, timestamp: float, now: float, offset: int | None = None
    ) -> None:
        """Move the clock of one input topic-partition on to an event read from it."""
        self.first_seen.setdefault(partition, (timestamp, now))
        source = (topic, partition)
        self.clock[source] = max(self.clock.get(source, 0.0), timestamp)
        self.last_input[source] = now
        if offset is not None:
            self.next_offset[source] = max(self.next_offset.get(source, 0), offset + 1)

    def watermark(self, partition: int) -> float:
        """Event time up to which ``partition``'s label windows may close.

        The lower clock of the two inputs. An input silent for longer than ``idle_flush_s``
        lets its clock run on with wall time from its last event, so a quiet input never
        freezes the watermark; only wall time up to the latest check that found it with
        nothing left to read counts (:meth:`check_inputs`), so an input the worker is merely
        behind on, or paused on (e.g. in a rebalance), never runs on.

        An input not read yet since the partition was assigned holds the watermark at its
        floor (where it stood when the state was last written) until it is read, or the
        broker says it has nothing to read; only then does it run on from the partition's
        first event time. Otherwise, after a restart or a
        takeover, one input resumed further ahead than the other would close label windows
        whose feedback is still to be read, and make that input's events look late.
        """
        floor = self.floor.get(partition, 0.0)
        first = self.first_seen.get(partition)
        if first is None:
            return floor
        now = time.monotonic()
        idle_after = self.settings.idle_flush_s
        clocks = []
        for topic in (self.impressions_topic, self.feedback_topic):
            source = (topic, partition)
            if source in self.clock:
                clock, seen = self.clock[source], self.last_input[source]
            elif source in self.quiet_at or now - first[1] > HOLD_UNREAD_MAX_S:
                clock, seen = first
            else:
                return floor
            clocks.append(clock + max(0.0, self.quiet_at.get(source, seen) - seen - idle_after))
        return max(floor, min(clocks) - self.settings.watermark_delay_s)

    def check_inputs(self, consumer: Any) -> None:
        """Ask the consumer which inputs have records this worker has not processed yet.

        An input with nothing left remembers the time of the check (its clock may run on up
        to then, see :meth:`watermark`). Compares the log end offset of the latest fetch (a
        fetch reports it correctly on Tansu too) with the next offset to process: the last
        one processed plus one, or the committed offset for an input not read yet. An input
        whose end is not known yet counts as behind.
        """
        committed = getattr(consumer, "_committed_offset", {})
        now = time.monotonic()
        for partition in list(self.first_seen):
            for topic in (self.impressions_topic, self.feedback_topic):
                source = (topic, partition)
                tp = TP(topic, partition)
                try:
                    end = consumer.highwater(tp)
                except Exception:  # not assigned (any more): leave as it is
                    continue
                position = self.next_offset.get(source)
                if position is None:
                    position = committed.get(tp) or 0
                if end is None or end > position:
                    self.quiet_at.pop(source, None)
                    continue
                self.quiet_at[source] = now

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the clocks of partitions this worker no longer owns.

        Whoever owns a partition next starts its clocks afresh from the table's floor, so
        stale clocks from an earlier ownership never push a watermark ahead.
        """
        for partition in set(partitions):
            self.first_seen.pop(partition, None)
            self.floor.pop(partition, None)
            self.deadlines.pop(partition, None)
            for topic in (self.impressions_topic, self.feedback_topic):
                source = (topic, partition)
                self.clock.pop(source, None)
                self.last_input.pop(source, None)
                self.next_offset.pop(source, None)
                self.quiet_at.pop(source, None)
        self.index_stale = True

    def _store(
        self, user_id: str, partition: int, state: dict[str, Any], watermark: float
    ) -> dict[str, Any]:
        """Replace the user's state in the table; return the state stored.

        Stored states are never changed afterwards (every write stores a new dict), so the
        changelog record can be made later, at delivery.
        """
        state["partition"] = partition
        state["watermark"] = max(state.get("watermark", 0.0), watermark)
        cast(Any, self.users).data[user_id] = state
        deadline = user_state.next_deadline(state, self.settings)
        if deadline is not None:
            heapq.heappush(self.deadlines[partition], (deadline, user_id))
        return state

    def _changelog_record(self, user_id: str, state: dict[str, Any]) -> tuple[bytes | None, bytes]:
        """The users table's changelog record of one stored state, as Faust writes it."""
        table: Any = self.users
        topic = table.changelog_topic
        key, _ = topic.prepare_key(user_id, table.key_serializer)
        value, _ = topic.prepare_value(state, table.value_serializer)
        return key, value

    async def _write_states(
        self,
        states: Iterable[tuple[str, int, dict[str, Any]]],
        watermark: Callable[[int], float],
        step: _Step,
    ) -> None:
        """Store each ``(user, partition, state)`` and add its changelog record to ``step``.

        Each partition's records go out as one batch: a batch's state is durable after about
        one round trip, so the gap after its outputs were delivered, in which a crash makes
        an output be published again, stays short.
        """
        for user, partition, state in states:
            step.changelog[partition][user] = self._store(
                user, partition, state, watermark(partition)
            )
            await self.pause()

    async def close_due(self, partition: int, step: _Step) -> None:
        """Close every label window on ``partition`` that its clock has passed."""
        heap = self.deadlines[partition]
        watermark = self.watermark(partition)
        due: set[str] = set()
        while heap and heap[0][0] <= watermark:
            due.add(heapq.heappop(heap)[1])
        closed = user_state.Outputs()
        changed: list[tuple[str, dict[str, Any]]] = []
        for user_id in due:
            current = cast(Any, self.users).data.get(user_id)
            if current is None:
                continue
            state, out = user_state.advance(current, watermark, user_id, self.settings)
            await self.pause()
            if out.examples or out.counts:
                closed.extend(out)
                changed.append((user_id, state))
            else:
                deadline = user_state.next_deadline(current, self.settings)
                if deadline is not None:
                    heapq.heappush(heap, (deadline, user_id))
        if changed:
            _observe(closed.counts)
            await self._publish(closed, {}, {user: partition for user, _ in changed}, step)
            await self._write_states(
                ((user, partition, state) for user, state in changed), lambda _: watermark, step
            )
        metrics.PENDING_IMPRESSIONS.set(sum(len(h) for h in self.deadlines.values()))

    async def on_idle_tick(self) -> None:
        """Timer: rebuild the deadline index after recovery, and advance idle partitions."""
        step = _Step()
        async with self.lock:
            # The periodic rebuild is a safety net: the index is derived from the table,
            # so a user it ever missed is picked up again within REBUILD_EVERY_S.
            if self.index_stale or time.monotonic() - self.last_rebuild > REBUILD_EVERY_S:
                self.rebuild_index(self.users.items())
            for partition in list(self.deadlines):
                await self.close_due(partition, step)
            await self._queue(step)

    def rebuild_index(self, items: Iterable[tuple[str, Any]]) -> None:
        """Rebuild the label deadlines from the table (after recovery or a rebalance).

        Each partition's watermark resumes from the highest one its states were written
        under: a redelivered event whose state write was lost is judged against a watermark
        no later than the one it first met, and changelog writes of a partition are ordered,
        so one whose write survived is dropped as a duplicate.
        """
        self.deadlines.clear()
        for user_id, state in items:
            if not state:
                continue
            partition = int(state.get("partition", 0))
            self.floor[partition] = max(self.floor.get(partition, 0.0), state.get("watermark", 0.0))
            deadline = user_state.next_deadline(state, self.settings)
            if deadline is not None:
                self.deadlines[partition].append((deadline, user_id))
        for heap in self.deadlines.values():
            heapq.heapify(heap)
        self.index_stale = False
        self.last_rebuild = time.monotonic()

    async def _publish(
        self,
        out: user_state.Outputs,
        sent_ms: dict[str, int | None],
        partitions: dict[str, int],
        step: _Step,
    ) -> None:
        """Add the examples and score updates to ``step``'s outputs.

        With pseudonymous ids the key no longer hashes to the user's partition, so each
        record names its partition explicitly: outputs stay co-partitioned with the input.
        """
        hide = self.pseudonym.enabled
        records = step.outputs
        lane = self.lane
        for update in out.updates:
            if lane is not None:
                merged = lane.merge(update.user_id, update.suppressions, update.timestamp)
                update = replace(update, suppressions=merged)
            user = self.pseudonym(update.user_id)
            partition = partitions.get(update.user_id) if hide else None
            value = encode(replace(update, user_id=user) if hide else update)
            records.append((self.topics.scores, user.encode(), value, partition))
            metrics.SCORE_UPDATES.labels(update.source).inc()
            # An event the fast lane published first was timed by the lane.
            timed = tuple(
                event_id for event_id in update.trigger_event_ids
                if lane is None or not lane.is_pending(update.user_id, event_id)
            )  # fmt: skip
            step.timings.append((timed, sent_ms))
        for example in out.examples:
            group = "none" if example.label == NO_REACTION else kind_group(example.label)
            metrics.EXAMPLES.labels(group).inc()
            user = self.pseudonym(example.user_id)
            partition = partitions.get(example.user_id) if hide else None
            value = encode(replace(example, user_id=user) if hide else example)
            records.append((self.topics.examples, user.encode(), value, partition))
            await self.pause()


def _raw(message: Message) -> RawMessage:
    # Bulk-read records are never decoded by Faust: key and value are the broker's bytes.
    return RawMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
    )


def _observe(counts: Counter[str]) -> None:
    for name, count in counts.items():
        if ":" in name:
            outcome, kind = name.split(":", 1)
            metrics.EVENTS.labels(kind, outcome).inc(count)
        elif name == "abuse_excluded":
            metrics.EXCLUDED_EXAMPLES.labels("abuse_guard").inc(count)
        elif name == "unmatched_feedback":
            metrics.UNMATCHED_FEEDBACK.inc(count)
        elif name == "flagged":
            metrics.FLAGGED_USERS.inc(count)
