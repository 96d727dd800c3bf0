"""States at rest: a user's stored state kept compressed once its partition's event time has
moved on without it, or once many other users' states were written since."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable

from agents.state.state import Schedule, UserState
from streams.users import UsersStore

#: Event-time seconds a user's state is left as the fold wrote it before it is compressed.
#: Longer than a label window and its grace, so that a session's states, and those its
#: label windows close, are not compressed between two of its events; most users then
#: wait hours or days for their next session.
REST_AFTER_S = 900.0
#: Most states compressed a call (about 0.1 ms each), so that one call stays short however
#: many states came due at once (after a jump of the watermark); the rest wait for the next.
COMPRESS_PER_CALL = 256
#: Most notes looked at a call.
LOOKS_PER_CALL = 4096
#: Most values a recovery stored undecoded compressed a call (a heavy user's in about
#: 0.1 ms).
RECOVERED_PER_CALL = 512
#: Users whose states are kept as the fold wrote them, however recent their partition's
#: event time: the most recently written ones (``NEGSTREAM_OPEN_STATES``).
OPEN_STATES = 10_000


class RestingStates:
    """Which stored states to keep compressed, and when.

    A user whose state is written is noted, once, by partition, with the watermark at which
    that state comes due; :meth:`compress_due` compresses the states come due, and notes
    again, due later, a user written since. So the notes are at most one a user written in
    the last :attr:`rest_after_s` of event time, and the work is O(1) a write. Users due at
    the same watermark (those a batch wrote) share one list: a note costs a list slot and
    a set entry.

    Event time alone leaves every state written in the last :attr:`rest_after_s` open, and
    a busy partition writes many users' states in that span. So the users whose states are
    open are also kept in the order they were last written, and the least recently written
    beyond :attr:`open_states` are compressed too: a user who comes back often stays at the
    recent end, open, and the fold never waits on decoding its state. That is O(1) a
    write too, and the order holds at most one entry a user whose state is open.
    """

    def __init__(
        self,
        users: UsersStore[UserState],
        rest_after_s: float = REST_AFTER_S,
        open_states: int = OPEN_STATES,
    ) -> None:
        self.users = users
        self.rest_after_s = rest_after_s
        self.open_states = open_states
        #: Users whose state was written and not compressed since, least recently written
        #: first.
        self.recent: OrderedDict[str, int] = OrderedDict()
        #: Writes since the last :meth:`compress_due`.
        self.writes = 0
        #: Users a recovery may have stored a value for as its changelog JSON, to compress.
        self.recovered_users: deque[str] = deque()
        #: By partition, (due watermark, users) in the order noted.
        self.due: dict[int, deque[tuple[float, list[str]]]] = {}
        self.noted: set[str] = set()

    def written(self, user_id: str, partition: int, state: UserState) -> None:
        """``state`` was stored for ``user_id`` (its ``watermark`` set)."""
        if user_id not in self.noted:
            self._note(user_id, partition, state.watermark + self.rest_after_s)
        recent = self.recent
        if user_id in recent:
            recent.move_to_end(user_id)
        else:
            recent[user_id] = partition
        self.writes += 1

    def _note(self, user_id: str, partition: int, due: float) -> None:
        queue = self.due.get(partition)
        if queue is None:
            queue = self.due[partition] = deque()
        if queue and queue[-1][0] == due:
            queue[-1][1].append(user_id)
        else:
            queue.append((due, [user_id]))
        self.noted.add(user_id)

    def recovered(self, user_ids: Iterable[str]) -> None:
        """A recovery ended: compress the values it stored for these users as their
        changelog JSON (undecoded until read), a bounded slice a call."""
        self.recovered_users = deque(user_ids)

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the notes of partitions this worker no longer owns."""
        partitions = set(partitions)
        for partition in partitions:
            for _, users in self.due.pop(partition, ()):
                self.noted.difference_update(users)
        for user_id in [u for u, p in self.recent.items() if p in partitions]:
            del self.recent[user_id]

    async def compress_due(
        self, watermark: Callable[[int], float], pause: Callable[[], Awaitable[None]]
    ) -> int:
        """Compress the states come due at each partition's ``watermark``, at most
        :data:`COMPRESS_PER_CALL` of them, then the least recently written beyond
        :attr:`open_states`, at most :data:`COMPRESS_PER_CALL` more than the writes since
        the last call (so the open ones never grow past the bound for long), then at most
        :data:`RECOVERED_PER_CALL` values a recovery stored undecoded, calling ``pause``
        after each; return how many."""
        compressed = await self._compress_aged(watermark, pause)
        compressed += await self._compress_least_recent(pause)
        return compressed + await self._compress_recovered(pause)

    async def _compress_aged(
        self, watermark: Callable[[int], float], pause: Callable[[], Awaitable[None]]
    ) -> int:
        compressed = looks = 0
        for partition, queue in list(self.due.items()):
            mark = watermark(partition)
            while queue and queue[0][0] <= mark:
                users = queue[0][1]
                if not users:
                    queue.popleft()
                    continue
                if compressed >= COMPRESS_PER_CALL or looks >= LOOKS_PER_CALL:
                    return compressed
                looks += 1
                user_id = users.pop()
                self.noted.discard(user_id)
                if self.users.rest(user_id, self._view_at(user_id, partition, mark)):
                    self.recent.pop(user_id, None)
                    compressed += 1
                    await pause()
        return compressed

    async def _compress_least_recent(self, pause: Callable[[], Awaitable[None]]) -> int:
        recent, users = self.recent, self.users
        budget = COMPRESS_PER_CALL + self.writes
        self.writes = 0
        compressed = 0
        while len(recent) > self.open_states and budget > 0:
            budget -= 1
            # At rest already (the event-time path got there first): just forgotten.
            user_id, _ = recent.popitem(last=False)
            if users.rest(user_id, Schedule.of):
                compressed += 1
                await pause()
        return compressed

    async def _compress_recovered(self, pause: Callable[[], Awaitable[None]]) -> int:
        queue, users = self.recovered_users, self.users
        compressed = looks = 0
        while queue and compressed < RECOVERED_PER_CALL and looks < LOOKS_PER_CALL:
            looks += 1
            # Not stored as JSON (read, written or compressed since, or its partition gone).
            if users.rest_recovered(queue.popleft(), Schedule.from_wire):
                compressed += 1
                await pause()
        return compressed

    def _view_at(
        self, user_id: str, partition: int, mark: float
    ) -> Callable[[UserState], Schedule | None]:
        def view_of(state: UserState) -> Schedule | None:
            due = state.watermark + self.rest_after_s
            if due <= mark:
                return Schedule.of(state)
            # Written since it was noted (a newer watermark): due later.
            self._note(user_id, partition, due)
            return None

        return view_of
