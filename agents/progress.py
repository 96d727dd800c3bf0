"""Stall reports: an input with records to read that the pipeline is not handed, or a
rebalance whose table recovery does not end.

Neither stops the worker; each is logged once per episode, with what the consumer knows,
so an operator (or a failing fault test) can tell a stuck partition from a slow one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from faust.types import TP

from agents.watermarks import Watermarks
from streams.app import committed_offsets, fetched_end

log = logging.getLogger(__name__)

#: Wall seconds without progress before a stall is reported.
STALL_AFTER_S = 30.0


class ProgressWatch:
    """Checks, each time it is called, that every assigned input with records to read
    keeps being read, and that a rebalance's recovery ends."""

    def __init__(
        self,
        watermarks: Watermarks,
        stall_after_s: float = STALL_AFTER_S,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watermarks = watermarks
        self.stall_after_s = stall_after_s
        self.wall = wall
        # input -> (next offset to process, wall time it was first seen at that offset)
        self.behind: dict[tuple[str, int], tuple[int, float]] = {}
        self.reported: set[tuple[str, int]] = set()
        self.recovering_since: float | None = None
        self.recovery_reported = False

    def check(self, consumer: Any, recovering: bool, describe: Callable[[], str]) -> None:
        """One look at the inputs of ``consumer``'s assignment (``recovering``: the app is
        rebalancing or recovering its tables; ``describe`` says how, for the log)."""
        now = self.wall()
        if recovering:
            if self.recovering_since is None:
                self.recovering_since = now
            elif not self.recovery_reported and now - self.recovering_since > self.stall_after_s:
                self.recovery_reported = True
                log.warning(
                    "rebalance not finished after %.0f s: %s", now - self.recovering_since,
                    describe(),
                )  # fmt: skip
            # Inputs are not read while tables recover: not a stall of theirs.
            self.behind.clear()
            return
        if self.recovery_reported:
            log.warning("rebalance finished after %.0f s", now - (self.recovering_since or now))
        self.recovering_since, self.recovery_reported = None, False
        try:
            assignment = consumer.assignment()
        except Exception:  # not started, or stopping
            return
        committed = committed_offsets(consumer)
        topics = set(self.watermarks.topics)
        seen: set[tuple[str, int]] = set()
        for tp in assignment:
            if tp.topic not in topics:
                continue
            source = (tp.topic, tp.partition)
            seen.add(source)
            try:
                end, _ = fetched_end(consumer, TP(tp.topic, tp.partition))
            except Exception:
                continue
            position = self.watermarks.next_offset.get(source)
            if position is None:
                position = committed.get(TP(tp.topic, tp.partition))
            if end is None or position is None or end <= position:
                self._caught_up(source)
                continue
            since = self.behind.get(source)
            if since is None or since[0] != position:
                self._caught_up(source)
                self.behind[source] = (position, now)
                continue
            if source not in self.reported and now - since[1] > self.stall_after_s:
                self.reported.add(source)
                log.warning(
                    "input %s[%d]: offsets %d..%d wait to be read and none was handed to the "
                    "pipeline for %.0f s (paused: %s)",
                    tp.topic, tp.partition, position, end - 1, now - since[1],
                    _paused(consumer, tp),
                )  # fmt: skip
        for source in set(self.behind) - seen:
            self._caught_up(source)

    def _caught_up(self, source: tuple[str, int]) -> None:
        self.behind.pop(source, None)
        if source in self.reported:
            self.reported.discard(source)
            log.warning("input %s[%d]: being read again", *source)


def _paused(consumer: Any, tp: Any) -> str:
    """Why the consumer is not fetching ``tp``, as far as Faust's flow control says."""
    reasons = []
    faust_tp = TP(tp.topic, tp.partition)
    if faust_tp in getattr(consumer, "_paused_partitions", ()):
        reasons.append("paused")
    if faust_tp in getattr(consumer, "_buffered_partitions", ()):
        reasons.append("buffer full")
    active = getattr(consumer, "_active_partitions", None)
    if active is not None and faust_tp not in active:
        reasons.append("not active")
    if not getattr(consumer, "flow_active", True):
        reasons.append("flow stopped")
    return ", ".join(reasons) or "no"
