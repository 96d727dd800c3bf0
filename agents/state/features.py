"""Dense features of a user's windowed tables, and the operators' view of those tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import repeat
from typing import Any

from agents.state import counters, windows
from agents.state.config import StateConfig
from agents.state.state import Buckets, Candidate, UserState
from schemas.events import FEATURE_NAMES


class WindowSums:
    """Counters of one window's buckets, each summed on first read and then kept up to date.

    A call reads a handful of names (a feature row needs seven) while a long-lived user's
    window holds thousands (one per item seen), so summing per name beats merging all.
    """

    __slots__ = ("buckets", "parts", "sums", "window")

    def __init__(self, buckets: Buckets, window: range) -> None:
        self.buckets, self.window = buckets, window
        # The window's non-empty buckets by index, found on first read.
        self.parts: dict[int, dict[str, int]] | None = None
        self.sums: dict[str, int] = {}

    def get(self, name: str, default: int = 0) -> int:
        """Total of ``name`` over the window (``default`` when it is 0)."""
        total = self.sums.get(name)
        if total is None:
            parts = self.parts
            if parts is None:
                found = ((index, self.buckets.get(str(index))) for index in self.window)
                parts = self.parts = {index: bucket for index, bucket in found if bucket}
            # map() over dict.get runs in C: no Python frame per bucket.
            total = sum(map(dict.get, parts.values(), repeat(name), repeat(0)))
            self.sums[name] = total
        return total or default

    def added(self, index: int, names: list[str]) -> None:
        """Account for ``names`` just counted in bucket ``index`` (which may be new or copied)."""
        if index in self.window:
            if self.parts is not None:
                self.parts[index] = self.buckets[str(index)]
            sums = self.sums
            for name in names:
                if name in sums:
                    sums[name] += 1


class Totals:
    """Window totals at a user's current clock, kept up to date as counts are added, so
    featurising many events of one user does not re-sum the buckets."""

    def __init__(self, config: StateConfig) -> None:
        self.config = config
        self.key: tuple[int, int] | None = None
        self.short = self.long = WindowSums({}, range(0))
        self.owned: set[tuple[str, int]] = set()

    def at(self, state: UserState) -> tuple[WindowSums, WindowSums]:
        """(short, long) counters of the windows ending at ``state``'s clock."""
        short, long = spans(state.clock, self.config)
        if self.key != (short.start, long.start):
            self.key = (short.start, long.start)
            self.short = WindowSums(state.short, short)
            self.long = WindowSums(state.long, long)
        return self.short, self.long

    def own(self, state: UserState, short_index: int, long_index: int) -> None:
        """Give ``state`` its own copy of these buckets before they are written, once a call.

        :meth:`UserState.copy` shares buckets with the state it copies.
        """
        for name, buckets, index in (
            ("short", state.short, short_index),
            ("long", state.long, long_index),
        ):
            key = (name, index)
            if key not in self.owned:
                self.owned.add(key)
                bucket = buckets.get(str(index))
                if bucket is not None:
                    buckets[str(index)] = dict(bucket)

    def added(self, short_index: int, long_index: int, names: list[str]) -> None:
        """Account for ``names`` just counted in these buckets."""
        if self.key is not None:
            self.short.added(short_index, names)
            self.long.added(long_index, names)


def spans(clock: float, config: StateConfig) -> tuple[range, range]:
    """Bucket ranges of the short and the long window ending at ``clock``."""
    return (
        windows.window_buckets(clock, config.window_short_s, config.window_step_s),
        windows.window_buckets(clock, config.window_long_s, config.long_step_s),
    )


def feature_row(
    short: WindowSums,
    long: WindowSums,
    item_id: str,
    creator_id: str | None,
    category: str | None,
) -> tuple[float, ...]:
    """One candidate's dense features, in :data:`FEATURE_NAMES` order."""
    short_imp, long_imp = short.get(counters.IMPRESSIONS), long.get(counters.IMPRESSIONS)
    values = {
        "neg_rate_short": short.get(counters.NEGATIVES) / short_imp if short_imp else 0.0,
        "neg_rate_long": long.get(counters.NEGATIVES) / long_imp if long_imp else 0.0,
        "explicit_neg_long": float(long.get(counters.EXPLICIT_NEGATIVES)),
        "creator_neg_long": (
            float(long.get(counters.creator_negatives(creator_id))) if creator_id else 0.0
        ),
        "category_neg_long": (
            float(long.get(counters.category_negatives(category))) if category else 0.0
        ),
        "item_exposure": float(long.get(counters.item_exposure(item_id))),
        "creator_exposure": (
            float(long.get(counters.creator_exposure(creator_id))) if creator_id else 0.0
        ),
        "impressions_long": float(long_imp),
    }
    return tuple(values[name] for name in FEATURE_NAMES)


def features(
    state: UserState,
    config: StateConfig,
    item_id: str,
    creator_id: str | None,
    category: str | None,
) -> dict[str, float]:
    """Dense features of one candidate for this user, named as :data:`FEATURE_NAMES`."""
    row = feature_row(*Totals(config).at(state), item_id, creator_id, category)
    return dict(zip(FEATURE_NAMES, row, strict=True))


def feature_rows(
    state: UserState, config: StateConfig, candidates: Iterable[Candidate]
) -> list[tuple[float, ...]]:
    """Dense features of many candidates of one user, each in :data:`FEATURE_NAMES` order."""
    short, long = Totals(config).at(state)
    return [feature_row(short, long, c.item_id, c.creator_id, c.category) for c in candidates]


def features_many(
    state: UserState, config: StateConfig, candidates: Iterable[Candidate]
) -> list[dict[str, float]]:
    """:func:`features` of many candidates of one user, merging the window buckets once."""
    return [
        dict(zip(FEATURE_NAMES, row, strict=True))
        for row in feature_rows(state, config, candidates)
    ]


def negative_rate(state: UserState, config: StateConfig) -> float | None:
    """Negatives per impression in the short window, or ``None`` without impressions."""
    short, _ = spans(state.clock, config)
    impressions = windows.total(state.short, short, counters.IMPRESSIONS)
    if not impressions:
        return None
    return windows.total(state.short, short, counters.NEGATIVES) / impressions


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
    short, long = spans(clock, config)
    for name, buckets, window in (("short", state.short, short), ("long", state.long, long)):
        merged = Counter(windows.merge(buckets, window))
        section: dict[str, Any] = {published: 0 for published in counters.TOTALS.values()}
        section.update({published: {} for published in counters.FAMILIES.values()})
        for counter, count in merged.items():
            if not count:
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
