"""What one call of the fold produced: examples, score updates and counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from schemas.events import Example, ScoreUpdate


@dataclass
class Outputs:
    """What one call produced: records to publish and counters for metrics."""

    examples: list[Example] = field(default_factory=list)
    updates: list[ScoreUpdate] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def extend(self, other: Outputs) -> None:
        """Append ``other``'s records and counts to these."""
        self.examples.extend(other.examples)
        self.updates.extend(other.updates)
        self.counts.update(other.counts)
