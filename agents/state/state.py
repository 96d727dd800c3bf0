"""Typed per-user state and its versioned wire format (the users table's changelog value)."""

from __future__ import annotations

import weakref
from bisect import insort
from collections.abc import Mapping
from dataclasses import dataclass, field
from sys import intern
from typing import Any, TypeVar

import orjson

from agents.state import counters, dedupe, windows
from schemas.events import Suppression
from schemas.kinds import ALL_KINDS

#: Version of :meth:`UserState.to_wire`'s format; older versions are read too.
WIRE_VERSION = 2

#: A window's buckets: bucket index (as a string, the JSON key) to counter name to count
#: (packed while the state waits for the user's next event, see :meth:`UserState.pack_at_rest`).
Buckets = dict[str, windows.Bucket]


@dataclass(frozen=True, slots=True)
class Pending:
    """An impression whose label window is open."""

    event_id: str
    item_id: str
    creator_id: str | None
    category: str | None
    request_id: str | None
    timestamp: float

    def to_wire(self) -> list[Any]:
        """The JSON-able form."""
        return [
            self.event_id, self.item_id, self.creator_id, self.category, self.request_id,
            self.timestamp,
        ]  # fmt: skip

    @classmethod
    def from_wire(cls, wire: list[Any] | dict[str, Any]) -> Pending:
        """Read :meth:`to_wire`'s form (or version 1's dict)."""
        if isinstance(wire, dict):
            return cls(
                wire["event_id"], wire["item_id"], wire.get("creator_id"), wire.get("category"),
                wire.get("request_id"), float(wire["timestamp"]),
            )  # fmt: skip
        event_id, item_id, creator_id, category, request_id, timestamp = wire
        return cls(event_id, item_id, creator_id, category, request_id, float(timestamp))


@dataclass(frozen=True, slots=True)
class Reaction:
    """A feedback event kept for the label join until no open impression can claim it."""

    event_id: str
    item_id: str
    request_id: str | None
    kind: str
    timestamp: float
    creator_id: str | None
    category: str | None
    #: Whether an impression took it as (part of) its label. A reaction leaves the state
    #: when it is claimed; only states written by earlier versions hold claimed ones.
    claimed: bool = False

    def to_wire(self) -> list[Any]:
        """The JSON-able form."""
        return [
            self.event_id, self.item_id, self.request_id, self.kind, self.timestamp,
            self.creator_id, self.category, self.claimed,
        ]  # fmt: skip

    @classmethod
    def from_wire(cls, wire: list[Any] | dict[str, Any]) -> Reaction:
        """Read :meth:`to_wire`'s form (or version 1's orphan dict)."""
        if isinstance(wire, dict):
            return cls(
                "", wire["item_id"], wire.get("request_id"), wire["kind"],
                float(wire["timestamp"]), None, None,
            )  # fmt: skip
        event_id, item_id, request_id, kind, timestamp, creator_id, category, claimed = wire
        return cls(
            event_id, item_id, request_id, kind, float(timestamp), creator_id, category,
            bool(claimed),
        )  # fmt: skip


#: An open impression or a kept reaction.
Entry = TypeVar("Entry", Pending, Reaction)


def time_order(entry: Pending | Reaction) -> tuple[float, str]:
    """The order of a user's open impressions and of its kept reactions: event time, then
    event id (a total order whatever the read order)."""
    return entry.timestamp, entry.event_id


def insert_in_time_order(entries: list[Entry], entry: Entry) -> None:
    """Insert ``entry`` into ``entries``, kept in :func:`time_order`: an append for an event
    read in time order (compared by time alone unless the times tie), a binary search for
    one read late."""
    if entries:
        last = entries[-1]
        if entry.timestamp < last.timestamp or (
            entry.timestamp == last.timestamp and entry.event_id < last.event_id
        ):
            insort(entries, entry, key=time_order)
            return
    entries.append(entry)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Candidate:
    """An item recently shown to the user: what the model rescores."""

    item_id: str
    creator_id: str | None
    category: str | None

    @classmethod
    def shared(cls, item_id: str, creator_id: str | None, category: str | None) -> Candidate:
        """The candidate of these ids, one object for all the users that hold it (while any
        does), its ids interned: many users' candidates are the same popular items.

        Examples
        --------
        >>> Candidate.shared("i1", "c1", None) is Candidate.shared("i1", "c1", None)
        True
        """
        held = _CANDIDATES.get(item_id)
        candidate = None if held is None else held()
        if (
            candidate is None
            or candidate.creator_id != creator_id
            or candidate.category != category
        ):
            candidate = cls(intern(item_id), _intern(creator_id), _intern(category))
            key = candidate.item_id
            _CANDIDATES[key] = weakref.KeyedRef(candidate, _forget_candidate, key)
        return candidate

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able form."""
        return {"item_id": self.item_id, "creator_id": self.creator_id, "category": self.category}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Candidate:
        """Read :meth:`to_wire`'s form."""
        return cls.shared(wire["item_id"], wire.get("creator_id"), wire.get("category"))


#: Candidates held by some user, by item id, weakly: an item no user holds any more goes.
#: (A dict of references rather than a WeakValueDictionary, whose lookup is Python code:
#: every impression looks its item up.)
_CANDIDATES: dict[str, weakref.KeyedRef[str, Candidate]] = {}


def _forget_candidate(held: weakref.KeyedRef[str, Candidate]) -> None:
    # The item may hold a newer candidate by now (another creator or category): keep that.
    if _CANDIDATES.get(held.key) is held:
        _CANDIDATES.pop(held.key, None)


def _intern(value: str | None) -> str | None:
    return None if value is None else intern(value)


def _suppression_wire(suppression: Suppression) -> list[Any]:
    return [
        suppression.target_type, suppression.target_id, suppression.penalty,
        suppression.expires_at, suppression.reason,
    ]  # fmt: skip


def _suppression(wire: list[Any] | dict[str, Any]) -> Suppression:
    if isinstance(wire, dict):
        wire = [wire[name] for name in _SUPPRESSION_FIELDS]
    target_type, target_id, penalty, expires_at, reason = wire
    # Interned as the fold makes them: targets and reasons repeat across users.
    return Suppression(
        intern(target_type), intern(target_id), float(penalty), float(expires_at), intern(reason)
    )


_SUPPRESSION_FIELDS = ("target_type", "target_id", "penalty", "expires_at", "reason")


@dataclass(slots=True)
class UserState:
    """One user's tables, open label windows, reactions, candidates and suppressions.

    Stored states are never changed: the fold works on :meth:`copy` and stores the copy, so
    a reader on another thread (the fast lane) always sees a whole state. Every collection
    is capped (see :class:`~agents.state.config.StateConfig`), so a copy costs the same for
    a user with years of history as for a new one.

    Examples
    --------
    >>> state = UserState(clock=5.0, partition=2, seen={"e1": 4.0})
    >>> UserState.from_wire(state.to_wire()) == state
    True
    """

    clock: float = 0.0
    #: Newest accepted event time per input (``"impression"``, ``"feedback"``).
    topic_clock: dict[str, float] = field(default_factory=dict)
    #: Recent event ids -> event time, for dedupe; merged into :attr:`seen_old` in chunks so
    #: that a copy only copies the recent ones.
    seen: dict[str, float] = field(default_factory=dict)
    #: Older event ids; never changed in place (replaced whole when merged), packed while
    #: small (:func:`agents.state.dedupe.packed`).
    seen_old: Mapping[str, float] = field(default_factory=lambda: dedupe.EMPTY)
    #: Step-sized buckets (``window_step_s``) of the recent past, and long-window buckets.
    fine: Buckets = field(default_factory=dict)
    long: Buckets = field(default_factory=dict)
    #: Open impressions and kept reactions, each in :func:`time_order`: a close labels a
    #: prefix and the next deadline is the first entry's.
    pending: list[Pending] = field(default_factory=list)
    reactions: list[Reaction] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    suppressions: list[Suppression] = field(default_factory=list)
    flagged_since: float = 0.0
    flagged_until: float = 0.0
    #: The partition the state lives on, and the highest watermark it was written under.
    partition: int = 0
    watermark: float = 0.0

    def has_seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was folded in (or dropped as late) recently."""
        return event_id in self.seen or event_id in self.seen_old

    def copy(self) -> UserState:
        """A copy whose containers the fold may change.

        Window buckets are shared until written (the fold copies the one it adds to), and
        :attr:`seen_old` until merged; list entries are immutable. Packed buckets (of a
        state at rest) are unpacked: the fold reads buckets as dicts.
        """
        at_rest = not self.pending and not self.reactions
        return UserState(
            self.clock,
            dict(self.topic_clock),
            dict(self.seen),
            self.seen_old,
            windows.unpack(self.fine) if at_rest else dict(self.fine),
            windows.unpack(self.long) if at_rest else dict(self.long),
            list(self.pending),
            list(self.reactions),
            list(self.candidates),
            list(self.suppressions),
            self.flagged_since,
            self.flagged_until,
            self.partition,
            self.watermark,
        )

    def pack_at_rest(self) -> None:
        """Pack the window buckets when no label window is open: the state then waits,
        often for long, for the user's next event, and packed buckets take about a third of
        the memory. Only the fold calls it, on the state it made (stored states never
        change); :meth:`copy` unpacks them."""
        if not self.pending and not self.reactions:
            self.fine, self.long = windows.pack(self.fine, self.long)

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able changelog value."""
        return {
            "version": WIRE_VERSION,
            "clock": self.clock,
            "topic_clock": self.topic_clock,
            "seen": self.seen,
            "seen_old": _plain(self.seen_old),
            "fine": _plain_buckets(self.fine),
            "long": _plain_buckets(self.long),
            "pending": [p.to_wire() for p in self.pending],
            "reactions": [r.to_wire() for r in self.reactions],
            "candidates": [c.to_wire() for c in self.candidates],
            "suppressions": [_suppression_wire(s) for s in self.suppressions],
            "flagged_since": self.flagged_since,
            "flagged_until": self.flagged_until,
            "partition": self.partition,
            "watermark": self.watermark,
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> UserState:
        """Read a changelog value of any known version."""
        version = wire.get("version", 0)
        if version > WIRE_VERSION:
            raise ValueError(
                f"user state of wire version {version}; this worker reads <= {WIRE_VERSION}"
            )
        return cls(
            float(wire.get("clock", 0.0)),
            dict(wire.get("topic_clock") or {}),
            dict(wire.get("seen") or {}),
            dedupe.packed(wire.get("seen_old") or {}),
            _buckets(wire.get("fine") or wire.get("short") or {}),
            _buckets(wire.get("long") or {}),
            # Sorted: a value written before the lists were kept in time order has them in
            # read order (sorting a sorted list is one pass).
            sorted((Pending.from_wire(p) for p in wire.get("pending") or ()), key=time_order),
            sorted(
                (Reaction.from_wire(r) for r in wire.get("reactions") or wire.get("orphans") or ()),
                key=time_order,
            ),
            [Candidate.from_wire(c) for c in wire.get("candidates") or ()],
            [_suppression(s) for s in wire.get("suppressions") or ()],
            float(wire.get("flagged_since", 0.0)),
            float(wire.get("flagged_until", 0.0)),
            int(wire.get("partition", 0)),
            float(wire.get("watermark", 0.0)),
        )


def _plain(seen: Mapping[str, float]) -> dict[str, float]:
    return seen if isinstance(seen, dict) else dict(seen.items())


def _plain_buckets(buckets: Buckets) -> dict[str, dict[str, int]]:
    return {index: windows.readable(bucket) for index, bucket in buckets.items()}


def _buckets(wire: dict[str, dict[str, int]]) -> Buckets:
    # Bucket indexes and counter names interned, as the fold makes them: a recovered state
    # then shares them with every other user's.
    return {intern(index): counters.interned(bucket) for index, bucket in wire.items()}


@dataclass(frozen=True, slots=True)
class Schedule:
    """What the label-deadline index reads of a user's state: its partition, the watermark it
    was written under, and the event times of its open impressions and kept reactions.

    :meth:`from_wire` reads them from a changelog value without decoding the whole state:
    a restarted worker indexes every recovered user before its first batch, and decodes a
    user's state only when an event or a reader needs it.

    Examples
    --------
    >>> state = UserState(partition=3, watermark=9.0, pending=[Pending("e", "i", None, None,
    ...                   None, 7.0)])
    >>> Schedule.from_wire(state.to_wire()) == Schedule.of(state)
    True
    """

    partition: int
    watermark: float
    pending_times: tuple[float, ...]
    reaction_times: tuple[float, ...]

    @classmethod
    def of(cls, state: UserState) -> Schedule:
        """The schedule of a decoded state."""
        return cls(
            state.partition,
            state.watermark,
            tuple(p.timestamp for p in state.pending),
            tuple(r.timestamp for r in state.reactions),
        )

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Schedule:
        """The schedule of a changelog value of any known version (as
        :meth:`UserState.from_wire` reads it)."""
        version = wire.get("version", 0)
        if version > WIRE_VERSION:
            raise ValueError(
                f"user state of wire version {version}; this worker reads <= {WIRE_VERSION}"
            )
        # Timestamps sit where Pending.to_wire and Reaction.to_wire put them (or in
        # version 1's dicts).
        pending = wire.get("pending") or ()
        reactions = wire.get("reactions") or wire.get("orphans") or ()
        return cls(
            int(wire.get("partition", 0)),
            float(wire.get("watermark", 0.0)),
            tuple(float(p["timestamp"] if isinstance(p, dict) else p[5]) for p in pending),
            tuple(float(r["timestamp"] if isinstance(r, dict) else r[4]) for r in reactions),
        )


def _wire_dictionary() -> bytes:
    """Strings a state's wire JSON is made of, most common last (zlib looks back from the
    end): counter names and the candidate fields, then the field names of an empty state."""
    names = [f'"{counters.by_kind(kind)}":1,' for kind in sorted(ALL_KINDS)]
    names += [f'"{name}":1,' for name in counters.TOTALS]
    names += [f'"{prefix}:' for prefix in counters.FAMILIES]
    names.append('"impression":,"feedback":')
    names.append('{"item_id":"","creator_id":"","category":""},')
    empty = UserState().to_wire()
    return "".join(names).encode() + orjson.dumps(empty)


#: Preset zlib dictionary of a state kept compressed at rest: its changelog JSON shares
#: most of its field and counter names with every other state, which zlib then need not
#: repeat (about 40 % smaller for a state with a session's events, 15 % for a heavy user's).
WIRE_DICTIONARY = _wire_dictionary()
