"""The per-user logic's own settings: windows, the label join, caps and suppression TTLs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StateConfig:
    """What the pure per-user functions need; the worker builds it from its settings.

    Each field has the meaning (and default) of the worker setting of the same name.
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
    long_step_s: float = field(init=False)
    """Bucket size of the long window: the hop, widened so it spans at most 48 buckets."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "long_step_s", max(self.window_step_s, self.window_long_s / 48))
