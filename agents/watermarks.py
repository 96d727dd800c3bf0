"""Per-partition event-time watermarks of the two inputs, and the offsets read from each."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from faust.types import TP

from streams import metrics
from streams.app import committed_offsets, fetch_position, fetched_end

log = logging.getLogger(__name__)

#: Wall time after which an input not yet read since its partition was assigned, and not
#: known to have nothing to read, is logged as holding its partition's watermark.
HOLD_UNREAD_WARN_S = 60.0


class Watermarks:
    """Each input topic-partition's clock (the newest event time read from it) and the
    watermark of each partition: the lower clock of its two inputs, less ``delay_s``.

    Impressions read ahead of their feedback therefore do not close label windows early. An
    input idle for ``idle_after_s`` wall seconds stops holding the watermark back; when both
    are idle, event time moves on with wall time, so the last impressions of a quiet stream
    are still labelled.
    """

    def __init__(
        self,
        impressions_topic: str,
        feedback_topic: str,
        delay_s: float,
        idle_after_s: float,
        wall: Callable[[], float] = time.monotonic,
        committed: Callable[[str, int], int | None] | None = None,
    ) -> None:
        self.topics = (impressions_topic, feedback_topic)
        # The committed offset of an input partition: where reading it resumes once
        # assigned, so the first offset handed over is checked too.
        self.committed = committed
        self.delay_s, self.idle_after_s, self.wall = delay_s, idle_after_s, wall
        self.clock: dict[tuple[str, int], float] = {}
        self.last_input: dict[tuple[str, int], float] = {}
        # Next offset to process of each input read so far (see check_inputs()).
        self.next_offset: dict[tuple[str, int], int] = {}
        # Latest wall time at which each input was found to have nothing left to read.
        self.quiet_at: dict[tuple[str, int], float] = {}
        self.first_seen: dict[int, tuple[float, float]] = {}
        # The watermark each user state was written under survives a restart in the table:
        # the highest one is where the partition's watermark resumes.
        self.floor: dict[int, float] = {}
        self.hold_logged: set[tuple[str, int]] = set()

    def kind_of(self, topic: str) -> str:
        """``"impression"`` or ``"feedback"``: the input a topic is."""
        return "impression" if topic == self.topics[0] else "feedback"

    def expected_offset(self, topic: str, partition: int) -> int | None:
        """The next offset of ``topic[partition]`` the pipeline should be handed: one past
        the last one handed, or the committed offset when none was handed since the
        partition was assigned; ``None`` when not known."""
        expected = self.next_offset.get((topic, partition))
        if expected is None and self.committed is not None:
            expected = self.committed(topic, partition)
        return expected

    def skipped(self, topic: str, partition: int, expected: int, offset: int) -> None:
        """Count and log offsets ``expected..offset-1`` that the consumer skipped (they
        are read again)."""
        metrics.INPUT_OFFSET_GAPS.labels(self.kind_of(topic)).inc(offset - expected)
        log.warning(
            "input %s[%d]: the consumer skipped offsets %d..%d; reading them again",
            topic, partition, expected, offset - 1,
        )  # fmt: skip
        self.next_offset[(topic, partition)] = expected

    def read(self, topic: str, partition: int, offset: int) -> None:
        """Note that ``offset`` was handed to the pipeline; count any offsets skipped."""
        source = (topic, partition)
        expected = self.expected_offset(topic, partition)
        if expected is not None and offset > expected:
            metrics.INPUT_OFFSET_GAPS.labels(self.kind_of(topic)).inc(offset - expected)
            log.warning(
                "input %s[%d]: offsets %d..%d were never handed to the input pipeline",
                topic, partition, expected, offset - 1,
            )  # fmt: skip
        self.next_offset[source] = max(expected or 0, offset + 1)

    def observe(
        self, topic: str, partition: int, timestamp: float, now: float, offset: int | None = None
    ) -> None:
        """Move the clock of one input topic-partition on to an event read from it."""
        self.first_seen.setdefault(partition, (timestamp, now))
        source = (topic, partition)
        self.clock[source] = max(self.clock.get(source, 0.0), timestamp)
        self.last_input[source] = now
        if offset is not None:
            self.next_offset[source] = max(self.next_offset.get(source, 0), offset + 1)

    def resume_from(self, partition: int, watermark: float) -> None:
        """A stored state of ``partition`` was written under ``watermark``."""
        self.floor[partition] = max(self.floor.get(partition, 0.0), watermark)

    def __call__(self, partition: int) -> float:
        """Event time up to which ``partition``'s label windows may close.

        The lower clock of the two inputs. An input silent for longer than ``idle_after_s``
        lets its clock run on with wall time from its last event, so a quiet input never
        freezes the watermark; only wall time up to the latest check that found it with
        nothing left to read counts (:meth:`check_inputs`), so an input the worker is merely
        behind on, or paused on (e.g. in a rebalance), never runs on.

        An input not read yet since the partition was assigned holds the watermark at its
        floor (where it stood when the state was last written) until it is read, or the
        broker says it has nothing to read, however long that takes (a broker slow to
        answer after a restart can take minutes); only then does it run on from the
        partition's first event time. Otherwise, after a restart or a takeover, one input
        resumed further ahead than the other would close label windows whose feedback is
        still to be read, and make that input's events look late.
        """
        floor = self.floor.get(partition, 0.0)
        first = self.first_seen.get(partition)
        if first is None:
            return floor
        now = self.wall()
        clocks = []
        for topic in self.topics:
            source = (topic, partition)
            if source in self.clock:
                clock, seen = self.clock[source], self.last_input[source]
            elif source in self.quiet_at:
                clock, seen = first
            else:
                if now - first[1] > HOLD_UNREAD_WARN_S and source not in self.hold_logged:
                    self.hold_logged.add(source)
                    log.warning(
                        "input %s[%d] not read in %.0f s since its partition was assigned: "
                        "the partition's label windows wait for it",
                        topic, partition, now - first[1],
                    )  # fmt: skip
                return floor
            idle = max(0.0, self.quiet_at.get(source, seen) - seen - self.idle_after_s)
            clocks.append(clock + idle)
        return max(floor, min(clocks) - self.delay_s)

    def check_inputs(self, consumer: Any) -> None:
        """Ask the consumer which inputs have records this worker has not processed yet.

        An input with nothing left remembers when the fetch answer that showed it came (its
        clock may run on up to then, see :meth:`__call__`): with the broker unreachable no
        answer comes, so event time stops running on with wall time. Compares the log end
        offset of the latest fetch (a fetch reports it correctly on Tansu too) with the next
        offset to process: the last one processed plus one, or the committed offset for an
        input not read yet. An input whose end is not known yet counts as behind.
        """
        committed = committed_offsets(consumer)
        now, epoch = self.wall(), time.time()
        for partition in list(self.first_seen):
            for topic in self.topics:
                source = (topic, partition)
                tp = TP(topic, partition)
                try:
                    end, answered = fetched_end(consumer, tp)
                except Exception:  # not assigned (any more): leave as it is
                    continue
                position = self.next_offset.get(source)
                if position is None:
                    # Not read since assigned: reading resumes at the committed offset, or,
                    # never committed, where the offset reset put the fetch (a log emptied
                    # by retention starts past 0).
                    position = committed.get(tp) or fetch_position(consumer, tp) or 0
                if end is None or end > position:
                    self.quiet_at.pop(source, None)
                    continue
                # Quiet as of the answer that gave the end, not as of now: while the broker
                # is unreachable no answer comes, and event time must not run on with wall
                # time (producers hold the events of that time until it is back).
                at = now if answered is None else now - max(0.0, epoch - answered)
                self.quiet_at[source] = max(at, self.quiet_at.get(source, at))

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the clocks of partitions this worker no longer owns.

        Whoever owns a partition next starts its clocks afresh from the table's floor, so
        stale clocks from an earlier ownership never push a watermark ahead.
        """
        for partition in set(partitions):
            self.first_seen.pop(partition, None)
            self.floor.pop(partition, None)
            for topic in self.topics:
                source = (topic, partition)
                self.clock.pop(source, None)
                self.last_input.pop(source, None)
                self.quiet_at.pop(source, None)
                self.hold_logged.discard(source)

    def assigned(self, partitions: Iterable[int]) -> None:
        """The input partitions owned after a rebalance. The next offset of those kept
        through it is remembered (revoking every partition first, as the rebalance does,
        does not drop it): reading a kept partition must go on from where it was, or from
        the committed offset before that, never past it. The others start from their
        committed offset."""
        owned = set(partitions)
        for source in [s for s in self.next_offset if s[1] not in owned]:
            del self.next_offset[source]
