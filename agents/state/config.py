"""The per-user logic's own settings: windows, the label join, caps and suppression TTLs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StateConfig:
    """What the pure per-user functions need; the worker builds it from its settings.

    Each field has the meaning (and default) of the worker setting of the same name; the
    caps below are documented in the README ("Per-user state").
    """

    window_short_s: float = 600.0
    window_long_s: float = 86_400.0
    window_step_s: float = 60.0
    grace_s: float = 300.0
    label_window_s: float = 120.0
    dedup_ttl_s: float = 3600.0
    dedup_max_per_user: int = 4096
    candidates_per_user: int = 50
    abuse_negative_cap: int = 200
    suppression_ttl_s: float = 7 * 86_400.0
    creator_suppression_ttl_s: float = 3 * 86_400.0
    #: Open label windows kept per user; past it the oldest impression is labelled at once.
    max_pending: int = 2000
    #: Feedback events kept for the join per user; past it the oldest is dropped.
    max_reactions: int = 2000
    #: Suppressions kept per user: past a quarter over it, the weakest (then the soonest
    #: expiring) go down to it.
    max_suppressions: int = 200
    #: Suppressions one score update carries (the new ones first, then the strongest).
    max_update_suppressions: int = 64
    #: Distinct per-id counters (items, creators...) of one input in one window bucket.
    max_names_per_bucket: int = 1000
    long_step_s: float = field(init=False)
    """Bucket size of the long window: a multiple of the step spanning at most 48 buckets."""

    def __post_init__(self) -> None:
        steps = max(1, math.ceil(self.window_long_s / 48 / self.window_step_s - 1e-9))
        object.__setattr__(self, "long_step_s", steps * self.window_step_s)

    @property
    def steps_per_long(self) -> int:
        """Fine buckets in one long bucket."""
        return round(self.long_step_s / self.window_step_s)

    @property
    def short_buckets(self) -> int:
        """Fine buckets of the short window."""
        return max(1, round(self.window_short_s / self.window_step_s))

    @property
    def long_buckets(self) -> int:
        """Whole long buckets of the long window."""
        return max(1, round(self.window_long_s / self.long_step_s))
