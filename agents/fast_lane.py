"""The fast lane: a strong negative's suppression published as soon as it is fetched.

The input pipeline handles events a micro-batch at a time, behind whatever batch is in front
of it and whatever else the event loop runs. The fast lane is a small thread running its
own event loop with its own consumer of the feedback partitions this worker owns (no
consumer group: it follows the worker's assignment, from the end of each partition) and its
own producer. A strong
explicit negative gets its ``ScoreUpdate`` (``source="fast_path"``) straight away,
computed by the same pure functions from the user's stored state. The input pipeline still
applies the event, writes the state and publishes its own update, so the lane only ever
makes suppressions earlier: if it fails or falls behind, nothing is lost.

Until the input pipeline has stored a state that includes a lane event, the lane's
suppressions for it are *pending*: every ``ScoreUpdate`` the worker publishes meanwhile,
by the input pipeline or the model, merges them in (:meth:`FastLane.merge`), so a later
update for the user does not drop a suppression the lane already published.

Stored user states are never changed in place (every write stores a new state), so the
lane thread reads them safely; the pending map is shared under a lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from agents.encoder import OutputEncoder
from agents.state import suppression
from agents.state.config import StateConfig
from agents.state.ingest import RawMessage, decode_one
from agents.state.state import UserState
from schemas.events import Feedback, ScoreUpdate, Suppression
from schemas.kinds import STRONG_NEGATIVE
from schemas.validation import ValidationError
from streams import metrics
from streams.app import broker_credentials
from streams.retry import MAX_DELAY_S, Backoff
from streams.settings import Settings
from streams.users import UsersStore

log = logging.getLogger(__name__)

#: Wall seconds a lane event stays pending when the input pipeline never reports it applied
#: (e.g. its partition moved to another worker in between).
PENDING_TTL_S = 300.0
#: Kinds worth decoding a record for: a cheap byte test before the full validation.
_STRONG_KIND_BYTES = tuple(f'"{kind}"'.encode() for kind in sorted(STRONG_NEGATIVE))


class _Outgoing:
    """One record the lane decided to send; its callbacks run once the broker answers."""

    def __init__(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> None:
        self.topic, self.key, self.value, self.partition = topic, key, value, partition
        self.callbacks: list[Callable[[Any], None]] = []
        self.errbacks: list[Callable[[BaseException], None]] = []

    def add_callback(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(callback)

    def add_errback(self, errback: Callable[[BaseException], None]) -> None:
        self.errbacks.append(errback)

    def done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            error: BaseException | None = asyncio.CancelledError()
        else:
            error = future.exception()
        if error is not None:
            for errback in self.errbacks:
                errback(error)
        else:
            for callback in self.callbacks:
                callback(future.result())


class _Outbox:
    """Collects what the lane decides while handling a fetch; its loop sends it after."""

    def __init__(self) -> None:
        self.items: list[_Outgoing] = []

    def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> _Outgoing:
        item = _Outgoing(topic, key, value, partition)
        self.items.append(item)
        return item


@dataclass(frozen=True)
class _Pending:
    feedback: Feedback
    partition: int
    at: float


@dataclass
class _UserLane:
    """One user's lane events not yet applied by the input pipeline: the events, their
    negatives per creator / category, and the suppressions published for them (merged)."""

    events: dict[str, _Pending] = field(default_factory=dict)
    negatives: Counter[tuple[str, str]] = field(default_factory=Counter)
    held: dict[tuple[str, str], Suppression] = field(default_factory=dict)

    def add(self, pending: _Pending, suppressions: Sequence[Suppression], cap: int) -> None:
        self.events[pending.feedback.event_id] = pending
        self.negatives.update(_targets(pending.feedback))
        merged = suppression.merge(self.held.values(), suppressions)
        self.held = {(s.target_type, s.target_id): s for s in suppression.strongest(merged, cap)}

    def remove(self, event_id: str) -> None:
        pending = self.events.pop(event_id, None)
        if pending is not None:
            self.negatives.subtract(_targets(pending.feedback))


def _targets(feedback: Feedback) -> list[tuple[str, str]]:
    found = []
    if feedback.creator_id is not None:
        found.append(("creator", feedback.creator_id))
    if feedback.category is not None:
        found.append(("category", feedback.category))
    return found


class FastLane:
    """Publishes fast-path suppressions from its own read of the feedback topic."""

    def __init__(
        self,
        settings: Settings,
        config: StateConfig,
        users: UsersStore[UserState],
        watermark: Callable[[int], float],
        encoder: OutputEncoder,
    ) -> None:
        self.settings = settings
        self.config = config
        self.users = users
        self.watermark = watermark
        self.encoder = encoder
        self.impressions_topic = settings.topic("impressions")
        self.feedback_topic = settings.topic("feedback")
        self.pending: dict[str, _UserLane] = {}
        self.lock = threading.Lock()
        self.wanted: frozenset[int] = frozenset()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.last_expiry = time.monotonic()

    # --- the worker's side (event loop) ---------------------------------------------------

    def assign(self, partitions: Iterable[int]) -> None:
        """Follow these feedback partitions from now on (the worker's whole assignment)."""
        self.wanted = frozenset(partitions)
        if self.thread is None and self.settings.fast_lane:
            self.thread = threading.Thread(
                target=self._run, name="negstream-fast-lane", daemon=True
            )
            self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the lane thread (what it queued is flushed)."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)

    # --- the lane thread ---------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                await self._follow()
                return
            except Exception as error:  # the broker went away or a client failed: start over
                if time.monotonic() - started > 60 * MAX_DELAY_S:
                    backoff.reset()  # it had been following for a while: a new outage
                delay = backoff.next_delay()
                log.warning(
                    "fast lane restarting in %.1f s (%s: %s)", delay, type(error).__name__, error
                )
                await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, seconds))

    async def _follow(self) -> None:
        settings = self.settings
        common = {
            "bootstrap_servers": settings.bootstrap_servers,
            "client_id": f"{settings.app_id}-fast-lane",
            **credentials_to_aiokafka_auth(broker_credentials(settings)),
        }
        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            **common,
        )
        producer = AIOKafkaProducer(acks="all", linger_ms=0, **common)
        try:
            await consumer.start()
            await producer.start()
            following: frozenset[int] = frozenset()
            outbox = _Outbox()
            while not self.stopping.is_set():
                wanted = self.wanted
                if wanted != following:
                    await self._reassign(consumer, following, wanted)
                    following = wanted
                    metrics.FAST_LANE_PARTITIONS.set(len(following))
                if not following:
                    await self._sleep(0.1)
                    continue
                batches = await consumer.getmany(timeout_ms=100)
                for tp, records in batches.items():
                    for record in records:
                        self._handle(outbox, tp.partition, record)
                for item in outbox.items:
                    sent = await producer.send(
                        item.topic, item.value, key=item.key, partition=item.partition
                    )
                    sent.add_done_callback(item.done)
                outbox.items.clear()
                self._expire(time.monotonic())
        finally:
            metrics.FAST_LANE_PARTITIONS.set(0)
            await producer.stop()
            await consumer.stop()

    async def _reassign(
        self, consumer: AIOKafkaConsumer, following: frozenset[int], wanted: frozenset[int]
    ) -> None:
        """Follow ``wanted``: kept partitions go on where they were, new ones from the end."""
        kept = {}
        for partition in following & wanted:
            tp = TopicPartition(self.feedback_topic, partition)
            kept[tp] = await consumer.position(tp)
        tps = [TopicPartition(self.feedback_topic, p) for p in sorted(wanted)]
        consumer.assign(tps)
        for tp, position in kept.items():
            consumer.seek(tp, position)
        fresh = [tp for tp in tps if tp not in kept]
        if fresh:
            await consumer.seek_to_end(*fresh)
            for tp in fresh:
                await consumer.position(tp)  # resolve the end now, not at first fetch

    def _handle(self, producer: _Outbox, partition: int, record: Any) -> None:
        value = record.value
        if record.key is None or not isinstance(value, bytes):
            return  # unkeyed input is re-sent keyed first; the lane sees it then
        if not any(kind in value for kind in _STRONG_KIND_BYTES):
            return
        message = RawMessage(
            self.feedback_topic, partition, record.offset, record.key, value, record.timestamp
        )
        latest = time.time() + self.settings.max_future_s
        try:
            feedback = decode_one(
                message, self.impressions_topic, self.settings.max_payload_bytes, latest
            )
        except ValidationError:
            return  # the input pipeline dead-letters it
        if isinstance(feedback, Feedback) and feedback.kind in STRONG_NEGATIVE:
            self._publish(producer, feedback, partition, record.timestamp)

    def _publish(
        self, producer: _Outbox, feedback: Feedback, partition: int, produced_ms: int | None
    ) -> None:
        """Publish a strong negative's suppressions: O(1) in the user's history and in the
        lane events still pending for the user."""
        user, config = feedback.user_id, self.config
        with self.lock:
            lane = self.pending.get(user)
            if lane is not None and feedback.event_id in lane.events:
                return
            more = lane.negatives if lane is not None else Counter()
            more_creator = more[("creator", feedback.creator_id or "")] + 1
            more_category = more[("category", feedback.category or "")] + 1
            held = tuple(lane.held.values()) if lane is not None else ()
        stored = self.users.peek(user)
        if stored is not None:
            if stored.has_seen(feedback.event_id):
                return  # the input pipeline applied it already
            newest = stored.topic_clock.get("feedback", 0.0)
            if feedback.timestamp < max(self.watermark(partition), newest) - config.grace_s:
                return  # late: the input pipeline will not apply it either
        new = suppression.suppressions_for(stored, feedback, config, more_creator, more_category)
        if not new:
            return
        others = suppression.merge(
            suppression.active_suppressions(stored) if stored is not None else (), held,
            clock=feedback.timestamp,
        )  # fmt: skip
        update = ScoreUpdate(
            user_id=user,
            source="fast_path",
            model_version=-1,
            timestamp=feedback.timestamp,
            trigger_event_ids=(feedback.event_id,),
            suppressions=suppression.for_update(new, others, config),
            update_id=f"{feedback.event_id}:fast_lane",
        )
        with self.lock:
            self.pending.setdefault(user, _UserLane()).add(
                _Pending(feedback, partition, time.monotonic()), new,
                config.max_update_suppressions,
            )  # fmt: skip
        record = self.encoder.score_update(update, partition)
        future = producer.send(record.topic, record.key, record.value, record.partition)
        future.add_callback(lambda _: _delivered(produced_ms))
        future.add_errback(lambda _: metrics.FAST_LANE_FAILURES.inc())

    # --- shared ------------------------------------------------------------------------------

    def is_pending(self, user_id: str, event_id: str) -> bool:
        """Whether the lane published ``event_id``'s update and it is not applied yet."""
        with self.lock:
            lane = self.pending.get(user_id)
            return lane is not None and event_id in lane.events

    def merge(
        self, user_id: str, suppressions: Sequence[Suppression], clock: float
    ) -> tuple[Suppression, ...]:
        """``suppressions`` with the user's pending lane suppressions merged in.

        One suppression per target: the higher penalty, the later expiry. Expired ones (at
        event time ``clock``) are left out.
        """
        with self.lock:
            lane = self.pending.get(user_id)
            if lane is None:
                return tuple(suppressions)
            held = tuple(lane.held.values())
        merged = suppression.merge(suppressions, held, clock)
        return suppression.strongest(merged, self.config.max_update_suppressions)

    def applied(self, user_id: str, event_ids: Iterable[str]) -> None:
        """The input pipeline stored a state that accounts for these events."""
        with self.lock:
            lane = self.pending.get(user_id)
            if lane is None:
                return
            for event_id in event_ids:
                lane.remove(event_id)
            if not lane.events:
                del self.pending[user_id]

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Stop following partitions this worker no longer owns; drop their pending events."""
        gone = set(partitions)
        self.wanted = self.wanted - gone
        self._keep(lambda p: p.partition not in gone)

    def _expire(self, now: float) -> None:
        if now - self.last_expiry > PENDING_TTL_S / 10:
            self.last_expiry = now
            self._keep(lambda p: now - p.at < PENDING_TTL_S)

    def _keep(self, keep: Callable[[_Pending], bool]) -> None:
        with self.lock:
            for user in list(self.pending):
                lane = self.pending[user]
                for event_id, pending in list(lane.events.items()):
                    if not keep(pending):
                        lane.remove(event_id)
                if not lane.events:
                    del self.pending[user]


def _delivered(produced_ms: int | None) -> None:
    metrics.SCORE_UPDATES.labels("fast_path").inc()
    if produced_ms:
        metrics.FEEDBACK_TO_SCORE.labels("fast").observe(max(0.0, time.time() - produced_ms / 1000))
