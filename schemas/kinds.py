"""Feedback kinds, their groups and default severities."""

from __future__ import annotations

from typing import Final

EXPLICIT_NEGATIVE: Final = ("dislike", "hide", "not_interested", "report", "block_creator")
IMPLICIT_NEGATIVE: Final = ("skip", "short_dwell", "click_no_convert")
POSITIVE: Final = ("click", "like", "long_dwell", "convert")
NEGATIVE_KINDS: Final = frozenset(EXPLICIT_NEGATIVE + IMPLICIT_NEGATIVE)
ALL_KINDS: Final = frozenset(EXPLICIT_NEGATIVE + IMPLICIT_NEGATIVE + POSITIVE)
NO_REACTION: Final = "none"

#: Kinds that publish a suppression at once on the fast path.
STRONG_NEGATIVE: Final = frozenset({"not_interested", "hide", "report", "block_creator", "dislike"})
#: The kind that blocks the item's creator.
BLOCK_CREATOR: Final = "block_creator"
#: Strong negatives aimed at the creator: they suppress the creator as a whole at once.
CREATOR_TARGETED: Final = frozenset({"report", "block_creator"})

#: Label weight of each kind. Reports and "not interested" outweigh any positive signal,
#: the ordering public heavy-ranker weights use.
DEFAULT_SEVERITY: Final[dict[str, float]] = {
    "report": 5.0,
    "block_creator": 5.0,
    "not_interested": 4.0,
    "hide": 3.0,
    "dislike": 3.0,
    "skip": 1.0,
    "short_dwell": 1.0,
    "click_no_convert": 0.5,
    "click": 1.0,
    "like": 1.0,
    "long_dwell": 1.0,
    "convert": 1.0,
}


def kind_group(kind: str) -> str:
    """Return the group a feedback kind belongs to.

    Examples
    --------
    >>> kind_group("hide"), kind_group("skip"), kind_group("like")
    ('explicit_negative', 'implicit_negative', 'engagement')
    """
    if kind in EXPLICIT_NEGATIVE:
        return "explicit_negative"
    if kind in IMPLICIT_NEGATIVE:
        return "implicit_negative"
    if kind in POSITIVE:
        return "engagement"
    raise ValueError(f"unknown feedback kind {kind!r}")


def severity(kind: str) -> float:
    """Label weight of a kind (1 for a kind without one, e.g. ``"none"``).

    Examples
    --------
    >>> severity("report"), severity("none")
    (5.0, 1.0)
    """
    return DEFAULT_SEVERITY.get(kind, 1.0)


def label_of(kinds: tuple[str, ...] | list[str]) -> str:
    """The label of an impression that got ``kinds``: negatives outrank positives, and
    within a group the most severe kind wins; :data:`NO_REACTION` when there were none.

    Examples
    --------
    >>> label_of(("click", "skip", "hide")), label_of(())
    ('hide', 'none')
    """
    if not kinds:
        return NO_REACTION
    return max(kinds, key=lambda kind: (kind in NEGATIVE_KINDS, severity(kind)))
