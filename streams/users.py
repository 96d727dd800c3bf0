"""The users table seen as a store of typed per-user states.

Faust keeps the table's values in memory and recovers them from the changelog as the JSON
bytes of each state's wire form (the table's value serializer is ``raw``). negstream writes
states in place of Faust (a batch per partition, see ``agents.delivery``) and reads them
typed: this adapter is the only code that touches the table's private storage.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import orjson
from faust.types import TableT

State = TypeVar("State")
View = TypeVar("View")

#: orjson options of the wire JSON: those of Faust's ``json`` codec, so a changelog written
#: before the table's values were stored raw reads the same.
WIRE_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z

#: zlib level of a state kept compressed at rest: level 1 packs the heavy world's states to
#: about a quarter of their JSON in about 40 µs; level 6 saves another eighth for half as
#: much time again.
REST_LEVEL = 1


class Resting:
    """A stored state kept compressed while it waits for its user's next event: the JSON of
    its changelog record, zlib-compressed (with the store's preset dictionary, if any), and
    what :meth:`UsersStore.views` yields for it. Never changed once built."""

    __slots__ = ("packed", "view")

    def __init__(self, packed: bytes, view: Any) -> None:
        self.packed, self.view = packed, view

    def wire(self, dictionary: bytes | None = None) -> Any:
        """The state's wire value, as its changelog record holds it (``dictionary``: the
        preset dictionary it was compressed with)."""
        return orjson.loads(unpacked(self.packed, dictionary))


def packed(raw: bytes, dictionary: bytes | None = None) -> bytes:
    """``raw`` compressed as a state at rest, with a preset ``dictionary`` if given.

    Examples
    --------
    >>> unpacked(packed(b'{"clock":1.5}', b'{"clock":'), b'{"clock":')
    b'{"clock":1.5}'
    """
    if not dictionary:
        return zlib.compress(raw, REST_LEVEL)
    compressor = zlib.compressobj(REST_LEVEL, zdict=dictionary)
    return compressor.compress(raw) + compressor.flush()


def unpacked(data: bytes, dictionary: bytes | None = None) -> bytes:
    """What :func:`packed` was given."""
    if not dictionary:
        return zlib.decompress(data)
    return zlib.decompressobj(zdict=dictionary).decompress(data)


class UsersStore(Generic[State]):
    """Typed get/put over a Faust table whose values are stored as wire JSON.

    ``decode`` turns a wire value (a JSON object) into a state; ``encode`` a state into its
    wire value. A recovered value (the JSON bytes, or an already parsed wire dict) is decoded
    on its first :meth:`get` and kept decoded (or compressed first, :meth:`rest_recovered`):
    a restart parses only the newest record of each user, and only when the user is read.
    ``rest_dictionary`` is the preset zlib dictionary of states kept compressed at rest
    (:meth:`rest`): strings most wire values hold.
    """

    def __init__(
        self,
        table: TableT[str, Any],
        decode: Callable[[dict[str, Any]], State],
        encode: Callable[[State], dict[str, Any]],
        state_type: type[State],
        rest_dictionary: bytes | None = None,
    ) -> None:
        self.table = table
        self.decode, self.encode, self.state_type = decode, encode, state_type
        self.rest_dictionary = rest_dictionary
        self._data: Any = table.data

    def get(self, user_id: str) -> State | None:
        """The user's stored state (event loop only: a recovered value is decoded in place)."""
        value = self._data.get(user_id)
        if value is None or isinstance(value, self.state_type):
            return value
        state = self._decoded(value)
        if not isinstance(value, Resting):
            self._data[user_id] = state
        return state

    def peek(self, user_id: str) -> State | None:
        """The user's stored state, from any thread (never writes the table)."""
        value = self._data.get(user_id)
        if value is None or isinstance(value, self.state_type):
            return value
        return self._decoded(value)

    def _decoded(self, value: Any) -> State:
        if isinstance(value, Resting):
            return self.decode(value.wire(self.rest_dictionary))
        return self.decode(_wire(value))

    def rest(self, user_id: str, view_of: Callable[[State], Any]) -> bool:
        """Keep the user's stored state compressed until it is replaced, if ``view_of(state)``
        gives its view (see :meth:`views`) rather than ``None``; return whether it did.

        The compressed form is the state's changelog value: reading it back is what a
        recovery does. The state object itself is never changed (the fast lane may be
        reading it from another thread): the table is given a new value (event loop only).
        """
        state = self._data.get(user_id)
        if not isinstance(state, self.state_type):
            return False  # not stored, not decoded yet, or at rest already
        view = view_of(state)
        if view is None:
            return False
        raw = orjson.dumps(self.encode(state), option=WIRE_JSON)
        self._data[user_id] = Resting(packed(raw, self.rest_dictionary), view)
        return True

    def user_ids(self) -> list[str]:
        """Every stored user, as a list (a copy of the keys: quick, however many)."""
        return list(self._data)

    def rest_recovered(self, user_id: str, view_of: Callable[[dict[str, Any]], Any]) -> bool:
        """Keep the user's recovered value compressed, if it is one not decoded yet, with the
        view ``view_of(wire value)``; return whether it did (event loop only).

        The changelog's JSON bytes are what is compressed: reading them back is the decode
        the first :meth:`get` would have done.
        """
        value = self._data.get(user_id)
        if not _is_json(value):
            return False
        raw = bytes(value)
        self._data[user_id] = Resting(packed(raw, self.rest_dictionary), view_of(orjson.loads(raw)))
        return True

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
        """Every stored state (event loop only; one at rest is decoded for the caller and
        stays compressed)."""
        for user_id in list(self._data):
            state = self.get(user_id)
            if state is not None:
                yield user_id, state

    def views(
        self, of_state: Callable[[State], View], of_wire: Callable[[dict[str, Any]], View]
    ) -> Iterator[tuple[str, View]]:
        """Every stored user's ``of_state(state)``, or ``of_wire(wire value)`` while the
        user's recovered value is not decoded yet (it stays undecoded), or the view its
        state was put to rest with (event loop only)."""
        for user_id in list(self._data):
            value = self._data.get(user_id)
            if value is None:
                continue
            if isinstance(value, self.state_type):
                yield user_id, of_state(value)
            elif isinstance(value, Resting):
                yield user_id, value.view
            else:
                yield user_id, of_wire(_wire(value))

    def __len__(self) -> int:
        return len(self._data)

    @property
    def changelog_topic(self) -> str:
        """Name of the table's changelog topic."""
        name: str = self.table.changelog_topic.get_topic_name()
        return name

    def changelog_record(self, user_id: str, state: State) -> tuple[bytes | None, bytes]:
        """The changelog record of one state: the key as Faust encodes it, the value the
        JSON of the state's wire form (what the recovery stores and :meth:`get` decodes)."""
        table: Any = self.table
        key, _ = table.changelog_topic.prepare_key(user_id, table.key_serializer)
        return key, orjson.dumps(self.encode(state), option=WIRE_JSON)


def _is_json(value: Any) -> bool:
    """Whether a stored value is a recovered changelog value as its JSON bytes."""
    return isinstance(value, bytes | bytearray | memoryview)


def _wire(value: Any) -> Any:
    """A recovered value as a wire value: the changelog's JSON bytes parsed; a value
    recovered already parsed (before the table's values were stored raw) as it is."""
    if _is_json(value):
        return orjson.loads(value)
    return value
