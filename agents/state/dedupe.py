"""A user's older dedupe ids with their event times, packed to save memory.

Most users keep a few dozen ids between merges; as a dict each costs its own string, a float
and a table entry (about 125 bytes). Packed, the ids share one string and the times one
bytes object (about 25 bytes an id). A lookup then scans that string, so only sets of up to
:data:`PACKED_MAX` ids are packed: a larger set stays a dict and a lookup stays O(1).
"""

from __future__ import annotations

import struct
from collections.abc import ItemsView, Iterator, Mapping

#: Largest set kept packed (a lookup scans at most this many ids, about 1.5 µs).
PACKED_MAX = 128

#: Frames each packed id. An id that holds it is never packed, so a lookup of an id holding
#: it can answer no at once.
_SEP = "\x00"


class PackedIds(Mapping[str, float]):
    """Event ids to event times, in insertion order, never changed once built.

    Examples
    --------
    >>> ids = PackedIds({"e1": 4.0, "e2": 5.5})
    >>> "e2" in ids, "e" in ids, ids["e2"], list(ids.items()) == [("e1", 4.0), ("e2", 5.5)]
    (True, False, 5.5, True)
    >>> ids == {"e2": 5.5, "e1": 4.0}
    True
    """

    __slots__ = ("_framed", "_times")

    def __init__(self, seen: Mapping[str, float]) -> None:
        # Every id between two separators: "\0e1\0e2\0".
        self._framed = _SEP + _SEP.join(seen) + _SEP if seen else ""
        self._times = struct.pack(f"{len(seen)}d", *seen.values())

    def __contains__(self, event_id: object) -> bool:
        return (
            isinstance(event_id, str)
            and _SEP not in event_id
            and _SEP + event_id + _SEP in self._framed
        )

    def __getitem__(self, event_id: str) -> float:
        at = self._framed.find(_SEP + event_id + _SEP) if _SEP not in event_id else -1
        if at < 0:
            raise KeyError(event_id)
        index = self._framed.count(_SEP, 0, at)
        time: float = struct.unpack_from("d", self._times, 8 * index)[0]
        return time

    def __iter__(self) -> Iterator[str]:
        return iter(self._framed[1:-1].split(_SEP) if self._framed else ())

    def __len__(self) -> int:
        return len(self._times) // 8

    def items(self) -> ItemsView[str, float]:
        """The ``(id, time)`` pairs, in insertion order, read in one pass."""
        return _Items(self)

    def times(self) -> Iterator[float]:
        """The event times, in insertion order."""
        return iter(memoryview(self._times).cast("d"))

    def __repr__(self) -> str:
        return f"PackedIds({dict(self.items())!r})"


class _Items(ItemsView[str, float]):
    __slots__ = ()
    _mapping: PackedIds

    def __iter__(self) -> Iterator[tuple[str, float]]:
        return zip(self._mapping, self._mapping.times(), strict=True)


def packed(seen: Mapping[str, float]) -> Mapping[str, float]:
    """``seen`` in its most compact form that still looks ids up in bounded time: packed
    when small and free of the separator, else a dict.

    Examples
    --------
    >>> type(packed({"e1": 1.0})).__name__, type(packed({"e\\x001": 1.0})).__name__
    ('PackedIds', 'dict')
    """
    if isinstance(seen, PackedIds):
        return seen
    if len(seen) <= PACKED_MAX:
        ids = PackedIds(seen)
        # One separator more than ids: none of them holds one.
        if ids._framed.count(_SEP) == len(seen) + 1 or not seen:
            return ids
    return seen if isinstance(seen, dict) else dict(seen.items())


#: The packed form of no ids, shared.
EMPTY: Mapping[str, float] = PackedIds({})
