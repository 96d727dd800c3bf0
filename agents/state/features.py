"""Dense features of a user's windowed tables as of an event time, and the operators' view.

Features count whole steps (``window_step_s``): an impression's features are the tables as
of the start of the step holding its event time (its *cut*), so they count only events with
an earlier event time, whatever order the two inputs were read in. The short window is the
``window_short_s`` of steps before the cut; the long window is the steps before the cut in
the long bucket of the step just before it, plus the whole long buckets before that one,
``window_long_s`` of long buckets in all (a hopping window that ends at the cut).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import repeat
from typing import Any

from agents.state import counters, windows
from agents.state.config import StateConfig
from agents.state.counters import (
    CATEGORY_NEGATIVES_PREFIX,
    CREATOR_EXPOSURE_PREFIX,
    CREATOR_NEGATIVES_PREFIX,
    ITEM_EXPOSURE_PREFIX,
)
from agents.state.state import Buckets, Candidate, UserState
from schemas.events import FEATURE_NAMES


class Sums:
    """Totals of counter names over some buckets, less ``minus`` (each summed on first read)."""

    __slots__ = ("minus", "parts", "sums")

    def __init__(self, parts: list[dict[str, int]], minus: Mapping[str, int] | None = None):
        self.parts = parts
        self.minus = minus
        self.sums: dict[str, int] = {}

    def get(self, name: str) -> int:
        """Total of ``name``, kept for the next read."""
        total = self.sums.get(name)
        if total is None:
            total = self.sums[name] = self.total(name)
        return total

    def total(self, name: str) -> int:
        """Total of ``name``, summed again (for a name read once, such as a candidate's)."""
        parts = self.parts
        if len(parts) == 1:
            total: int = parts[0].get(name, 0)
        else:
            # map() over dict.get runs in C: no Python frame per bucket.
            total = sum(map(dict.get, parts, repeat(name), repeat(0)))
        minus = self.minus
        return total - minus.get(name, 0) if minus else total


def cut_of(timestamp: float, config: StateConfig) -> int:
    """The cut of an event at ``timestamp``: the index of the step that holds it."""
    return windows.bucket_of(timestamp, config.window_step_s)


def now_cut(state: UserState, config: StateConfig) -> int:
    """The cut that counts every event up to the user's clock."""
    return cut_of(state.clock, config) + 1


def _present(buckets: Buckets, indexes: range) -> list[dict[str, int]]:
    # Whichever is shorter is walked: the buckets held, or the indexes of the range (the
    # sums do not depend on the order).
    found: Iterable[windows.Bucket | None]
    if len(buckets) < len(indexes):
        start, stop = indexes.start, indexes.stop
        found = [bucket for index, bucket in buckets.items() if start <= int(index) < stop]
    else:
        found = [buckets.get(str(index)) for index in indexes]
    # Packed buckets (a state at rest, read outside the fold) are unpacked for the read.
    return [b if isinstance(b, dict) else b.unpacked() for b in found if b]


def short_sums(state: UserState, config: StateConfig, cut: int) -> Sums:
    """Short-window totals as of ``cut``."""
    return Sums(_present(state.fine, range(cut - config.short_buckets, cut)))


def long_sums(state: UserState, config: StateConfig, cut: int) -> Sums:
    """Long-window totals as of ``cut``."""
    per_long = config.steps_per_long
    # The long bucket of the last step before the cut, read from its steps.
    head = (cut - 1) // per_long
    long = _present(state.long, range(head - config.long_buckets + 1, head))
    long += _present(state.fine, range(head * per_long, cut))
    return Sums(long)


def window_sums(
    state: UserState, config: StateConfig, cut: int, minus: Mapping[str, int] | None = None
) -> tuple[Sums, Sums]:
    """(short, long) totals as of ``cut``, less ``minus`` (an impression's own feedback)."""
    short, long = short_sums(state, config, cut), long_sums(state, config, cut)
    short.minus = long.minus = minus
    return short, long


def oldest_fine_needed(cut: int, config: StateConfig) -> int:
    """The oldest step bucket :func:`window_sums` reads for ``cut``."""
    return min(
        cut - config.short_buckets, ((cut - 1) // config.steps_per_long) * config.steps_per_long
    )


def oldest_long_needed(cut: int, config: StateConfig) -> int:
    """The oldest long bucket :func:`window_sums` reads for ``cut``."""
    return (cut - 1) // config.steps_per_long - config.long_buckets + 1


#: The order :meth:`Rows.row` computes its values in; :data:`FEATURE_NAMES` must match.
_ROW_ORDER = (
    "neg_rate_short", "neg_rate_long", "explicit_neg_long", "creator_neg_long",
    "category_neg_long", "item_exposure", "creator_exposure", "impressions_long",
)  # fmt: skip
if FEATURE_NAMES != _ROW_ORDER:  # pragma: no cover - a schema change must change both
    raise ImportError(f"Rows.row computes {_ROW_ORDER}, the schema names {FEATURE_NAMES}")


class Rows:
    """Dense feature rows, in :data:`FEATURE_NAMES` order, of candidates against one pair of
    (short, long) sums: the user's own values are computed once, and each row adds only its
    candidate's four per-id counts. Rescoring builds one per user and a row per candidate."""

    __slots__ = ("_get", "_head", "_impressions")

    def __init__(self, short: Sums, long: Sums) -> None:
        short_imp, long_imp = short.get(counters.IMPRESSIONS), long.get(counters.IMPRESSIONS)
        self._head = (
            short.get(counters.NEGATIVES) / short_imp if short_imp else 0.0,
            long.get(counters.NEGATIVES) / long_imp if long_imp else 0.0,
            float(long.get(counters.EXPLICIT_NEGATIVES)),
        )
        self._impressions = float(long_imp)
        # Each candidate's names are read once (per user), so their totals are not kept.
        self._get = long.total

    def row(self, item_id: str, creator_id: str | None, category: str | None) -> tuple[float, ...]:
        """One candidate's row."""
        get = self._get
        # The per-id names are built, not interned: they are only looked up.
        return (
            *self._head,
            float(get(CREATOR_NEGATIVES_PREFIX + creator_id)) if creator_id else 0.0,
            float(get(CATEGORY_NEGATIVES_PREFIX + category)) if category else 0.0,
            float(get(ITEM_EXPOSURE_PREFIX + item_id)),
            float(get(CREATOR_EXPOSURE_PREFIX + creator_id)) if creator_id else 0.0,
            self._impressions,
        )


def features(
    state: UserState,
    config: StateConfig,
    item_id: str,
    creator_id: str | None,
    category: str | None,
) -> dict[str, float]:
    """Dense features of one candidate for this user now, named as :data:`FEATURE_NAMES`."""
    rows = Rows(*window_sums(state, config, now_cut(state, config)))
    return dict(zip(FEATURE_NAMES, rows.row(item_id, creator_id, category), strict=True))


def feature_rows(
    state: UserState, config: StateConfig, candidates: Iterable[Candidate]
) -> list[tuple[float, ...]]:
    """Dense features of many candidates of one user now, each in :data:`FEATURE_NAMES` order."""
    row = Rows(*window_sums(state, config, now_cut(state, config))).row
    return [row(c.item_id, c.creator_id, c.category) for c in candidates]


def features_many(
    state: UserState, config: StateConfig, candidates: Iterable[Candidate]
) -> list[dict[str, float]]:
    """:func:`features` of many candidates of one user, merging the window buckets once."""
    return [
        dict(zip(FEATURE_NAMES, row, strict=True))
        for row in feature_rows(state, config, candidates)
    ]


def negative_rate(state: UserState, config: StateConfig) -> float | None:
    """Negatives per impression in the short window now, or ``None`` without impressions."""
    short, _ = window_sums(state, config, now_cut(state, config))
    impressions = short.get(counters.IMPRESSIONS)
    return short.get(counters.NEGATIVES) / impressions if impressions else None


def table_view(state: UserState, config: StateConfig) -> dict[str, Any]:
    """The user's windowed counters at their event-time clock, as published to operators."""
    clock = state.clock
    view: dict[str, Any] = {"clock": clock, "flagged": state.flagged_until > clock}
    view["candidates"] = [
        {**candidate.to_wire(), "features": values}
        for candidate, values in zip(
            state.candidates, features_many(state, config, state.candidates), strict=True
        )
    ]
    for name, sums in zip(("short", "long"), window_sums(state, config, now_cut(state, config)),
                          strict=True):  # fmt: skip
        merged: Counter[str] = Counter()
        for part in sums.parts:
            merged.update(part)
        section: dict[str, Any] = {published: 0 for published in counters.TOTALS.values()}
        section.update({published: {} for published in counters.FAMILIES.values()})
        for counter, count in merged.items():
            if not count or counter.startswith("#"):
                continue
            published, target = counters.parse(counter)
            if target is None:
                section[published] = count
            else:
                section[published][target] = count
        impressions = section["impressions"]
        section["negative_rate"] = section["negatives"] / impressions if impressions else 0.0
        view[name] = section
    return view
