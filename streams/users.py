"""The users table seen as a store of typed per-user states.

Faust keeps the table's values in memory and recovers them from the changelog as decoded
JSON. negstream writes states in place of Faust (a batch per partition, see
``agents.delivery``) and reads them typed: this adapter is the only code that touches the
table's private storage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from faust.types import TableT

State = TypeVar("State")


class UsersStore(Generic[State]):
    """Typed get/put over a Faust table whose values are stored as wire dicts.

    ``decode`` turns a recovered wire value into a state; ``encode`` a state into its wire
    value. A recovered value is decoded on its first :meth:`get` and kept decoded.
    """

    def __init__(
        self,
        table: TableT[str, Any],
        decode: Callable[[dict[str, Any]], State],
        encode: Callable[[State], dict[str, Any]],
        state_type: type[State],
    ) -> None:
        self.table = table
        self.decode, self.encode, self.state_type = decode, encode, state_type
        self._data: Any = table.data

    def get(self, user_id: str) -> State | None:
        """The user's stored state (event loop only: a recovered value is decoded in place)."""
        value = self._data.get(user_id)
        if value is None or isinstance(value, self.state_type):
            return value
        state = self.decode(value)
        self._data[user_id] = state
        return state

    def peek(self, user_id: str) -> State | None:
        """The user's stored state, from any thread (never writes the table)."""
        value = self._data.get(user_id)
        if value is None or isinstance(value, self.state_type):
            return value
        return self.decode(value)

    def put(self, user_id: str, state: State, partition: int | None = None) -> None:
        """Store ``state`` of a user of ``partition``; its changelog record is written by
        the caller.

        The partition is noted where Faust's in-memory store keeps the partition of each
        recovered key: when a rebalance's recovery completes, the store drops the keys of
        partitions this worker no longer owns. Without it, a state written here would stay
        after its partition moved away, stale, answered by the users view and rescored.
        """
        self._data[user_id] = state
        owners = getattr(self._data, "_key_partition", None)
        if owners is not None and partition is not None:
            owners[user_id] = partition

    def items(self) -> Iterator[tuple[str, State]]:
        """Every stored state (event loop only)."""
        for user_id in list(self._data):
            state = self.get(user_id)
            if state is not None:
                yield user_id, state

    def __len__(self) -> int:
        return len(self._data)

    @property
    def changelog_topic(self) -> str:
        """Name of the table's changelog topic."""
        name: str = self.table.changelog_topic.get_topic_name()
        return name

    def changelog_record(self, user_id: str, state: State) -> tuple[bytes | None, bytes]:
        """The changelog record of one state, encoded as Faust reads it back."""
        table: Any = self.table
        topic = table.changelog_topic
        key, _ = topic.prepare_key(user_id, table.key_serializer)
        value, _ = topic.prepare_value(self.encode(state), table.value_serializer)
        return key, value
