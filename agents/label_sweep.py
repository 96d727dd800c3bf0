"""The label-window sweep: each partition's label deadlines, and closing the windows passed."""

from __future__ import annotations

import heapq
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence

from agents.delivery import OrderedDelivery, Step
from agents.resting import RestingStates
from agents.state import fold
from agents.state.config import StateConfig
from agents.state.state import Schedule, UserState
from agents.watermarks import Watermarks
from streams import metrics
from streams.users import UsersStore

#: Seconds between rebuilds of the label-deadline index from the users table.
REBUILD_EVERY_S = 30.0
#: Most users whose label windows go into one step of a sweep. Users due at once (after
#: a restart, the first events move a partition's watermark past every recovered user's
#: deadlines) are closed this many at a time, each slice's outputs and states queued for
#: delivery before the next is folded. What the sweep keeps alive is then the steps that
#: delivery holds (up to :data:`agents.delivery.MAX_UNDELIVERED_STEPS` queued and as many
#: being sent), whose states stay decoded until sent: (2 * 8 + 1) * 512 = 8.7k users at
#: most however many are due, fewer than the states kept open anyway
#: (``NEGSTREAM_OPEN_STATES``, 10,000 by default). Large enough that a slice's own costs (a
#: queued step, a call to compress states at rest) stay small beside folding its users.
CLOSE_SLICE_USERS = 512

#: Put a closed slice into a step, ``(outputs, partition, [(user, state)], watermark, step)``:
#: the outputs first, then the users' states.
CloseInto = Callable[[fold.Outputs, int, list[tuple[str, UserState]], float, Step], Awaitable[None]]


class LabelSweep:
    """Indexes each partition's users by their next label deadline and closes the label
    windows the partition's clock has passed.

    The index is derived from the users table: rebuilt while :attr:`stale` (after an
    assignment, a recovery or a partition given up) and every :data:`REBUILD_EVERY_S` by the
    idle timer. ``pause`` lets the event loop run other tasks; ``close_into`` puts what a
    slice closed into a step (the input pipeline's publishing and state writes).
    """

    def __init__(
        self,
        config: StateConfig,
        users: UsersStore[UserState],
        watermarks: Watermarks,
        delivery: OrderedDelivery,
        resting: RestingStates,
        pause: Callable[[], Awaitable[None]],
        close_into: CloseInto,
    ) -> None:
        self.config = config
        self.users = users
        self.watermarks = watermarks
        self.delivery = delivery
        self.resting = resting
        self.pause = pause
        self.close_into = close_into
        self.deadlines: dict[int, list[tuple[float, str]]] = defaultdict(list)
        self.stale = True
        self.last_rebuild = 0.0

    def schedule(self, user_id: str, partition: int, state: UserState) -> None:
        """Index the next label deadline of the user's new ``state``, if it has one."""
        deadline = fold.next_deadline(state, self.config)
        if deadline is not None:
            heapq.heappush(self.deadlines[partition], (deadline, user_id))

    def mark_stale(self) -> None:
        """Rebuild the index from the table before the next sweep."""
        self.stale = True

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the deadlines of ``partitions``; the index is rebuilt before the next sweep."""
        for partition in partitions:
            self.deadlines.pop(partition, None)
        self.stale = True

    async def rebuild_if_stale(self, max_age_s: float = math.inf) -> None:
        """Rebuild the index from the users table if it is stale, or older than
        ``max_age_s``."""
        if self.stale or time.monotonic() - self.last_rebuild > max_age_s:
            await self.rebuild_index(self.users.views(Schedule.of, Schedule.from_wire))

    async def close_all(self) -> Step:
        """Close every label window due on every indexed partition (the idle timer), the
        index rebuilt first when stale or old; return the step written last, not queued."""
        # The periodic rebuild is a safety net: the index is derived from the table,
        # so a user it ever missed is picked up again within REBUILD_EVERY_S.
        await self.rebuild_if_stale(REBUILD_EVERY_S)
        return await self.close_due(list(self.deadlines), Step())

    async def close_due(self, partitions: Iterable[int], step: Step) -> Step:
        """Close every label window on ``partitions`` that their clocks have passed, at most
        :data:`CLOSE_SLICE_USERS` users a step.

        Slices go into ``step`` until it holds that many users; it is then queued for
        delivery, the states due to rest are compressed, and the next slice goes into a fresh
        step. Returns the step written last, not queued yet: ``step`` itself unless more
        users were due.

        A partition's users due are closed in one order, however it is sliced, so each
        topic's outputs come out in that order; a step publishes its score updates ahead of
        its examples, so across the two topics they interleave step by step. A slice's
        outputs and states go into one step, so a step delivered is complete; users due that
        an error or a cancellation left unclosed are indexed as due again.
        """
        closing = 0  # users closed into `step`
        for partition in partitions:
            heap = self.deadlines[partition]
            watermark = self.watermarks(partition)
            # A user once, in the order of its earliest deadline due: one order for every
            # slice, as a single close would take, and the same in every process (a set's
            # order of strings changes with the interpreter's hash seed).
            due: dict[str, None] = {}
            while heap and heap[0][0] <= watermark:
                due[heapq.heappop(heap)[1]] = None
            order = list(due)
            del due
            closed = 0
            try:
                while closed < len(order):
                    if closing >= CLOSE_SLICE_USERS:
                        await self.delivery.queue(step)
                        step, closing = Step(), 0
                        await self.resting.compress_due(self.watermarks, self.pause)
                    users = order[closed : closed + CLOSE_SLICE_USERS - closing]
                    await self._close_slice(partition, heap, users, watermark, step)
                    closed += len(users)
                    closing += len(users)
            finally:
                # Taken from the index, not closed (an error or a cancellation stopped them).
                for user_id in order[closed:]:
                    heapq.heappush(heap, (watermark, user_id))
            metrics.PENDING_IMPRESSIONS.set(sum(len(h) for h in self.deadlines.values()))
        return step

    async def _close_slice(
        self,
        partition: int,
        heap: list[tuple[float, str]],
        users: Sequence[str],
        watermark: float,
        step: Step,
    ) -> None:
        """Close the label windows of ``users`` of ``partition`` due at ``watermark`` into
        ``step`` (their outputs, then their states); index again, in ``heap``, the next
        deadline of those with nothing to close."""
        closed = fold.Outputs()
        changed: list[tuple[str, UserState]] = []
        for user_id in users:
            current = self.users.get(user_id)
            if current is None:
                continue
            state, out = fold.advance(current, watermark, user_id, self.config)
            await self.pause()
            # Claimed feedback past its window leaves without an output: the state still
            # changed, and keeping the old one would bring the user due again every sweep.
            dropped = len(state.reactions) != len(current.reactions)
            if out.examples or out.counts or dropped or len(state.pending) != len(current.pending):
                closed.extend(out)
                changed.append((user_id, state))
            else:
                deadline = fold.next_deadline(current, self.config)
                if deadline is not None:
                    heapq.heappush(heap, (deadline, user_id))
        if changed:
            await self.close_into(closed, partition, changed, watermark, step)

    async def rebuild_index(self, items: Iterable[tuple[str, Schedule]]) -> None:
        """Rebuild the label deadlines from the table (after recovery or a rebalance).

        Each partition's watermark resumes from the highest one its states were written
        under: a redelivered event whose state write was lost is judged against a watermark
        no later than the one it first met, and changelog writes of a partition are ordered,
        so one whose write survived is dropped as a duplicate.
        """
        deadlines: dict[int, list[tuple[float, str]]] = defaultdict(list)
        for user_id, schedule in items:
            self.watermarks.resume_from(schedule.partition, schedule.watermark)
            deadline = fold.scheduled_deadline(schedule, self.config)
            if deadline is not None:
                deadlines[schedule.partition].append((deadline, user_id))
            await self.pause()
        self.deadlines = deadlines
        for heap in self.deadlines.values():
            heapq.heapify(heap)
        self.stale = False
        self.last_rebuild = time.monotonic()
