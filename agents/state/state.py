"""Typed per-user state and its versioned wire format (the users table's changelog value)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.events import Suppression

#: Version of :meth:`UserState.to_wire`'s format. Version 0 is the same layout without the
#: ``version`` field (states written before it existed); both are read.
WIRE_VERSION = 1

#: A window's buckets: bucket index (as a string, the JSON key) to counter name to count.
Buckets = dict[str, dict[str, int]]


@dataclass(frozen=True, slots=True)
class Pending:
    """An impression whose label window is open, with its features as of its arrival."""

    event_id: str
    item_id: str
    creator_id: str | None
    category: str | None
    request_id: str | None
    timestamp: float
    features: dict[str, float]
    kinds: tuple[str, ...] = ()
    label_ts: float | None = None

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able form."""
        return {
            "event_id": self.event_id,
            "item_id": self.item_id,
            "creator_id": self.creator_id,
            "category": self.category,
            "request_id": self.request_id,
            "timestamp": self.timestamp,
            "kinds": list(self.kinds),
            "label_ts": self.label_ts,
            "features": self.features,
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Pending:
        """Read :meth:`to_wire`'s form."""
        return cls(
            wire["event_id"],
            wire["item_id"],
            wire.get("creator_id"),
            wire.get("category"),
            wire.get("request_id"),
            float(wire["timestamp"]),
            dict(wire.get("features") or {}),
            tuple(wire.get("kinds") or ()),
            wire.get("label_ts"),
        )


@dataclass(frozen=True, slots=True)
class Orphan:
    """A feedback event whose impression has not been read (yet)."""

    item_id: str
    request_id: str | None
    kind: str
    timestamp: float

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able form."""
        return {
            "item_id": self.item_id,
            "request_id": self.request_id,
            "kind": self.kind,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Orphan:
        """Read :meth:`to_wire`'s form."""
        return cls(wire["item_id"], wire.get("request_id"), wire["kind"], float(wire["timestamp"]))


@dataclass(frozen=True, slots=True)
class Candidate:
    """An item recently shown to the user: what the model rescores."""

    item_id: str
    creator_id: str | None
    category: str | None

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able form."""
        return {"item_id": self.item_id, "creator_id": self.creator_id, "category": self.category}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> Candidate:
        """Read :meth:`to_wire`'s form."""
        return cls(wire["item_id"], wire.get("creator_id"), wire.get("category"))


def _suppression_wire(suppression: Suppression) -> dict[str, Any]:
    return {
        "target_type": suppression.target_type,
        "target_id": suppression.target_id,
        "penalty": suppression.penalty,
        "expires_at": suppression.expires_at,
        "reason": suppression.reason,
    }


@dataclass(slots=True)
class UserState:
    """One user's tables, open label windows, candidates and suppressions.

    Stored states are never changed: the fold works on :meth:`copy` and stores the copy, so
    a reader on another thread (the fast lane) always sees a whole state.

    Examples
    --------
    >>> state = UserState(clock=5.0, partition=2)
    >>> UserState.from_wire(state.to_wire()) == state
    True
    """

    clock: float = 0.0
    #: Newest accepted event time per input (``"impression"``, ``"feedback"``).
    topic_clock: dict[str, float] = field(default_factory=dict)
    #: Event id -> event time, for dedupe.
    seen: dict[str, float] = field(default_factory=dict)
    short: Buckets = field(default_factory=dict)
    long: Buckets = field(default_factory=dict)
    pending: list[Pending] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    suppressions: list[Suppression] = field(default_factory=list)
    flagged_since: float = 0.0
    flagged_until: float = 0.0
    #: The partition the state lives on, and the highest watermark it was written under.
    partition: int = 0
    watermark: float = 0.0

    def copy(self) -> UserState:
        """A copy whose containers the fold may change.

        Window buckets are shared until written (the fold copies the one it adds to: a
        user's state holds up to 58 buckets, and a batch writes one or two); list entries
        are immutable.
        """
        return UserState(
            self.clock,
            dict(self.topic_clock),
            dict(self.seen),
            dict(self.short),
            dict(self.long),
            list(self.pending),
            list(self.orphans),
            list(self.candidates),
            list(self.suppressions),
            self.flagged_since,
            self.flagged_until,
            self.partition,
            self.watermark,
        )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able changelog value."""
        return {
            "version": WIRE_VERSION,
            "clock": self.clock,
            "topic_clock": self.topic_clock,
            "seen": self.seen,
            "short": self.short,
            "long": self.long,
            "pending": [p.to_wire() for p in self.pending],
            "orphans": [o.to_wire() for o in self.orphans],
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
            raise ValueError(f"user state of wire version {version}; this worker reads <= 1")
        return cls(
            float(wire.get("clock", 0.0)),
            dict(wire.get("topic_clock") or {}),
            dict(wire.get("seen") or {}),
            dict(wire.get("short") or {}),
            dict(wire.get("long") or {}),
            [Pending.from_wire(p) for p in wire.get("pending") or ()],
            [Orphan.from_wire(o) for o in wire.get("orphans") or ()],
            [Candidate.from_wire(c) for c in wire.get("candidates") or ()],
            [Suppression(**s) for s in wire.get("suppressions") or ()],
            float(wire.get("flagged_since", 0.0)),
            float(wire.get("flagged_until", 0.0)),
            int(wire.get("partition", 0)),
            float(wire.get("watermark", 0.0)),
        )
