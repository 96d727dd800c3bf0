"""Backoff between attempts while the broker is away: one policy for every retry loop."""

from __future__ import annotations

import time

#: First pause, and the longest.
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 5.0


class Backoff:
    """Doubling pauses, capped; starts over after a success or a long healthy stretch.

    Examples
    --------
    >>> backoff = Backoff()
    >>> [backoff.next_delay() for _ in range(7)]
    [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    >>> backoff.reset(); backoff.next_delay()
    0.2
    """

    def __init__(self, first_s: float = FIRST_DELAY_S, max_s: float = MAX_DELAY_S) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.delay = first_s
        self.started = time.monotonic()

    def next_delay(self) -> float:
        """The pause before the next attempt."""
        delay = self.delay
        self.delay = min(2 * self.delay, self.max_s)
        return delay

    def reset(self) -> None:
        """Start over from the first pause."""
        self.delay = self.first_s
        self.started = time.monotonic()
