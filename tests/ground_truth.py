"""Expected table values and labels, computed from a generated stream without negstream code.

Everything here is written out again on purpose (no import from ``agents``), so a test that
compares the worker's tables with these values checks the implementation against an
independent reading of the documented semantics.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

NEGATIVE = {"dislike", "hide", "not_interested", "report", "block_creator",
            "skip", "short_dwell", "click_no_convert"}  # fmt: skip
EXPLICIT = {"dislike", "hide", "not_interested", "report", "block_creator"}
SEVERITY = {"report": 5.0, "block_creator": 5.0, "not_interested": 4.0, "hide": 3.0,
            "dislike": 3.0, "skip": 1.0, "short_dwell": 1.0, "click_no_convert": 0.5}  # fmt: skip


@dataclass
class Truth:
    """Accepted events per user, and the expected label of every accepted impression."""

    impressions: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    feedback: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    duplicates: int = 0
    late: int = 0

    def labels(self, label_window: float, skew: float = 5.0) -> dict[str, str]:
        """Expected label of each impression: its most severe matching feedback kind."""
        result = {}
        for user, impressions in self.impressions.items():
            by_item: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for fb in self.feedback.get(user, []):
                by_item[fb["item_id"]].append(fb)
            for imp in impressions:
                kinds = [
                    fb["kind"]
                    for fb in by_item.get(imp["item_id"], [])
                    if (not fb.get("request_id") or not imp.get("request_id")
                         or fb["request_id"] == imp["request_id"])
                    and -skew <= fb["timestamp"] - imp["timestamp"] <= label_window
                ]  # fmt: skip
                rank = [((k in NEGATIVE), SEVERITY.get(k, 1.0), k) for k in kinds]
                result[imp["event_id"]] = max(rank)[2] if rank else "none"
        return result

    def view(self, user: str, size: float, step: float) -> dict[str, Any]:
        """The user's counters over the hopping window ending at their newest event."""
        events = self.impressions.get(user, []) + self.feedback.get(user, [])
        clock = max(e["timestamp"] for e in events)
        last = math.floor(clock / step)
        first = last - max(1, round(size / step)) + 1
        inside = [e for e in events if first <= math.floor(e["timestamp"] / step) <= last]
        imps = [e for e in inside if "kind" not in e]
        negs = [e for e in inside if e.get("kind") in NEGATIVE]
        return {
            "impressions": len(imps),
            "negatives": len(negs),
            "positives": sum(1 for e in inside if "kind" in e and e["kind"] not in NEGATIVE),
            "explicit_negatives": sum(1 for e in negs if e["kind"] in EXPLICIT),
            "by_kind": dict(Counter(e["kind"] for e in inside if "kind" in e)),
            "negatives_by_creator": dict(Counter(e["creator_id"] for e in negs)),
            "negatives_by_category": dict(Counter(e["category"] for e in negs)),
            "exposure_by_item": dict(Counter(e["item_id"] for e in imps)),
            "exposure_by_creator": dict(Counter(e["creator_id"] for e in imps)),
        }


def accepted_events(stream: list[tuple[str, dict[str, Any]]], grace: float) -> Truth:
    """Dedupe by event id (first copy wins) and drop events more than ``grace`` seconds
    behind the newest event time emitted before them."""
    truth = Truth()
    seen: set[str] = set()
    newest = -math.inf
    for topic, value in stream:
        if value["event_id"] in seen:
            truth.duplicates += 1
            continue
        seen.add(value["event_id"])
        if value["timestamp"] < newest - grace:
            truth.late += 1
            continue
        newest = max(newest, value["timestamp"])
        target = truth.impressions if topic == "impressions" else truth.feedback
        target[value["user_id"]].append(value)
    return truth
