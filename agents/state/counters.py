"""Names of the per-user window counters: built and parsed here, nowhere else.

A window bucket maps counter names to counts. Totals have a fixed name; per-id counters
are a family prefix and the id, e.g. ``item_exposure("i9")`` is ``"i:i9"``. The names are
the changelog's wire format, so they never change meaning. Names are interned: many users'
buckets count the same items and creators, and share one string for each.

Examples
--------
>>> creator_negatives("c1"), parse(creator_negatives("c1"))
('nc:c1', ('negatives_by_creator', 'c1'))
>>> parse(IMPRESSIONS)
('impressions', None)
"""

from __future__ import annotations

from collections.abc import Mapping
from sys import intern
from typing import Final

from schemas.kinds import EXPLICIT_NEGATIVE, NEGATIVE_KINDS

IMPRESSIONS: Final = "imp"
NEGATIVES: Final = "neg"
POSITIVES: Final = "pos"
EXPLICIT_NEGATIVES: Final = "exp"

#: Fixed-name totals and their published names.
TOTALS: Final = {
    IMPRESSIONS: "impressions",
    NEGATIVES: "negatives",
    POSITIVES: "positives",
    EXPLICIT_NEGATIVES: "explicit_negatives",
}
#: Per-id families: prefix and published name.
FAMILIES: Final = {
    "k": "by_kind",
    "nc": "negatives_by_creator",
    "ng": "negatives_by_category",
    "i": "exposure_by_item",
    "c": "exposure_by_creator",
}


#: Prefixes of the per-id families read by the features (the names below are a prefix and
#: an id); a lookup may build a name from them without interning it.
CREATOR_NEGATIVES_PREFIX: Final = "nc:"
CATEGORY_NEGATIVES_PREFIX: Final = "ng:"
ITEM_EXPOSURE_PREFIX: Final = "i:"
CREATOR_EXPOSURE_PREFIX: Final = "c:"


def by_kind(kind: str) -> str:
    """Counter of one feedback kind."""
    return intern("k:" + kind)


def creator_negatives(creator_id: str) -> str:
    """Counter of negatives on one creator's items."""
    return intern(CREATOR_NEGATIVES_PREFIX + creator_id)


def category_negatives(category: str) -> str:
    """Counter of negatives in one category."""
    return intern(CATEGORY_NEGATIVES_PREFIX + category)


def item_exposure(item_id: str) -> str:
    """Counter of impressions of one item."""
    return intern(ITEM_EXPOSURE_PREFIX + item_id)


def creator_exposure(creator_id: str) -> str:
    """Counter of impressions of one creator's items."""
    return intern(CREATOR_EXPOSURE_PREFIX + creator_id)


def feedback_counters(kind: str, creator_id: str | None, category: str | None) -> tuple[
    list[str], list[str]
]:  # fmt: skip
    """(totals, per-id names) a feedback event counts."""
    if kind in NEGATIVE_KINDS:
        totals = [NEGATIVES, by_kind(kind)]
        if kind in EXPLICIT_NEGATIVE:
            totals.append(EXPLICIT_NEGATIVES)
        named = []
        if creator_id is not None:
            named.append(creator_negatives(creator_id))
        if category is not None:
            named.append(category_negatives(category))
        return totals, named
    return [POSITIVES, by_kind(kind)], []


def interned(bucket: Mapping[str, int]) -> dict[str, int]:
    """``bucket`` with its counter names interned (as the fold makes them), e.g. read from
    the changelog.

    Examples
    --------
    >>> name = "".join(["i:", "i9"])
    >>> next(iter(interned({name: 1}))) is item_exposure("i9")
    True
    """
    return {intern(name): count for name, count in bucket.items()}


def parse(name: str) -> tuple[str, str | None]:
    """``(published family or total name, id or None)`` of a counter name."""
    prefix, sep, rest = name.partition(":")
    if sep:
        return FAMILIES[prefix], rest
    return TOTALS[name], None
