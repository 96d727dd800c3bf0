"""Ordered delivery: each batch's outputs, then its users' changelog records, then its acks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faust.types import Message

from agents.encoder import OutputRecord
from agents.state.state import UserState
from streams import metrics
from streams.output import OutputProducer
from streams.users import UsersStore
from streams.yielding import Yielder

log = logging.getLogger(__name__)

#: Batches whose records may wait for delivery while the next ones are computed.
MAX_UNDELIVERED_STEPS = 8
#: A delivered step's events are acked this many at a time, the event loop running other
#: tasks in between once it has been held a while (Faust's ack is Python code per event).
ACK_SLICE = 256

#: Marks a delivered batch's input records processed (their offsets may be committed).
Ack = Callable[[list[Message]], None]


@dataclass
class Step:
    """What one batch (or label-window sweep) leaves to deliver, in delivery order.

    Its outputs (examples, score updates, dead letters) go first, then the changelog records
    of the user states that account for them, then its input events are acked: a crash at
    any point replays the events (at-least-once, deduplicated by event id) instead of losing
    outputs.
    """

    outputs: list[OutputRecord] = field(default_factory=list)
    # The states written, by partition and user; serialised at delivery, where the steps
    # delivered together keep only each user's newest state.
    changelog: dict[int, dict[str, UserState]] = field(default_factory=lambda: defaultdict(dict))
    # (trigger event ids, produced ms by event id) of the updates, timed at delivery.
    timings: list[tuple[tuple[str, ...], dict[str, int | None]]] = field(default_factory=list)
    events: list[Message] = field(default_factory=list)
    ack: Ack | None = None

    def __bool__(self) -> bool:
        return bool(self.outputs or self.changelog or self.events)


class OrderedDelivery:
    """Delivers steps in the order they were queued, by one task, so the next batch is
    computed while the broker acknowledges the last one."""

    def __init__(
        self, outputs: OutputProducer, changelog: OutputProducer, users: UsersStore[UserState]
    ) -> None:
        self.outputs, self.changelog, self.users = outputs, changelog, users
        self.undelivered: asyncio.Queue[Step] | None = None
        # Held here: the event loop keeps only weak references to tasks.
        self.deliverer: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def queue(self, step: Step) -> None:
        """Queue ``step`` (waits while :data:`MAX_UNDELIVERED_STEPS` are queued)."""
        if self.error is not None:
            raise RuntimeError("delivering a batch's records failed") from self.error
        if not step:
            return
        if self.undelivered is None:
            self.undelivered = asyncio.Queue(MAX_UNDELIVERED_STEPS)
            self.deliverer = asyncio.create_task(self._deliver_forever(self.undelivered))
        await self.undelivered.put(step)
        metrics.UNDELIVERED_BATCHES.set(self.undelivered.qsize())

    async def flush(self) -> None:
        """Wait until every queued step is delivered (and its events acked)."""
        if self.undelivered is not None and self.error is None:
            await self.undelivered.join()

    async def stop(self) -> None:
        """Close the producers (after :meth:`flush`)."""
        await self.outputs.stop()
        await self.changelog.stop()

    async def _deliver_forever(self, queue: asyncio.Queue[Step]) -> None:
        while True:
            # Every step waiting is delivered together: one round trip for the outputs and
            # one for the changelog, however many batches were computed meanwhile.
            steps = [await queue.get()]
            while not queue.empty():
                steps.append(queue.get_nowait())
            try:
                await self.deliver(steps)
            except Exception as error:  # not a broker outage (those are retried): a bug
                log.exception("delivering a batch's records failed; the worker stops")
                self.error = error
                return
            finally:
                for _ in steps:
                    queue.task_done()
                metrics.UNDELIVERED_BATCHES.set(queue.qsize())

    async def deliver(self, steps: list[Step]) -> None:
        """Outputs, then changelog records, then acks, of ``steps`` together."""
        records = [record for step in steps for record in step.outputs]
        if records:
            await deliver_records(self.outputs, records)
        for step in steps:
            _time_updates(step)
        # A user's newest state is all the changelog needs: batches delivered together send
        # one record per user, and only that one is serialised.
        newest: dict[int, dict[str, UserState]] = defaultdict(dict)
        for step in steps:
            for partition, states in step.changelog.items():
                newest[partition].update(states)
        # Serialising states is CPU work on the event loop, and a power user's state costs
        # a thousand times an occasional user's: the loop runs other tasks in between.
        yielder = Yielder()
        if newest:
            users = self.users
            changelog: dict[int, list[tuple[bytes | None, bytes]]] = {}
            for partition, states in newest.items():
                batch = changelog[partition] = []
                for user, state in states.items():
                    batch.append(users.changelog_record(user, state))
                    await yielder()
            topic = users.changelog_topic

            async def send_changelog() -> list[asyncio.Future[Any]]:
                pending = []
                for partition, batch in changelog.items():
                    pending += await self.changelog.send_partition(topic, partition, batch)
                return pending

            await self.changelog.deliver(send_changelog)
        for step in steps:
            if step.ack is not None:
                for first in range(0, len(step.events), ACK_SLICE):
                    step.ack(step.events[first : first + ACK_SLICE])
                    await yielder()


def _time_updates(step: Step) -> None:
    now = time.time()
    for event_ids, sent_ms in step.timings:
        for event_id in event_ids:
            produced = sent_ms.get(event_id)
            if produced:
                metrics.FEEDBACK_TO_SCORE.labels("fast").observe(max(0.0, now - produced / 1000))


async def deliver_records(producer: OutputProducer, records: list[OutputRecord]) -> None:
    """Send ``records`` and wait until the broker has all of them (sent again, unchanged,
    while the broker is away)."""

    async def send() -> list[asyncio.Future[Any]]:
        return await producer.send_many(records)

    await producer.deliver(send)
