"""Measures how long the event loop is held: a task that should wake every few milliseconds
records how late it woke. While the loop is held, a small thread samples where the loop's
thread is, so the warning about a long hold names the code that held it."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import Counter
from types import FrameType

from streams import metrics

log = logging.getLogger(__name__)

#: How often the watcher wakes.
INTERVAL_S = 0.02
#: A hold longer than this is logged (at most once every :data:`LOG_EVERY_S`).
WARN_S = 0.25
LOG_EVERY_S = 10.0
#: The sampler looks at the loop's thread once the loop has been held this long.
SAMPLE_AFTER_S = 0.05
#: Folders of negstream's own code: a sample is named by its innermost frame in one of them.
OWN_CODE = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name) + os.sep
    for name in ("agents", "streams", "model", "schemas", "negstream")
)


def where(frame: FrameType) -> str:
    """``file:line function`` of the innermost frame of negstream's own code (with the
    innermost frame of all when that is elsewhere, e.g. inside a library)."""
    innermost = _name(frame)
    own: FrameType | None = frame
    while own is not None and not own.f_code.co_filename.startswith(OWN_CODE):
        own = own.f_back
    if own is None:
        return innermost
    name = _name(own)
    return name if own is frame else f"{name} (in {innermost})"


def _name(frame: FrameType) -> str:
    path = frame.f_code.co_filename
    for root in OWN_CODE:
        if path.startswith(root):
            path = os.path.relpath(path, os.path.dirname(os.path.dirname(root)))
            break
    else:
        path = os.path.basename(path)
    return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"


class HoldSampler:
    """A daemon thread that, while the loop has not beaten for :data:`SAMPLE_AFTER_S`,
    counts where the loop's thread is every ``interval_s``."""

    def __init__(self, interval_s: float = 0.01, after_s: float = SAMPLE_AFTER_S) -> None:
        self.interval_s, self.after_s = interval_s, after_s
        self.thread_id = threading.get_ident()
        self.beat = time.monotonic()
        self.samples: Counter[str] = Counter()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="negstream-loop-hold", daemon=True)

    def start(self) -> HoldSampler:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def beaten(self) -> None:
        """The loop ran: a hold (if any) is over."""
        self.beat = time.monotonic()

    def take(self) -> tuple[str, int] | None:
        """Where the loop's thread was most often during the samples since the last call,
        and how many samples there were; forgets them."""
        samples, self.samples = self.samples, Counter()
        if not samples:
            return None
        return samples.most_common(1)[0][0], sum(samples.values())

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            if time.monotonic() - self.beat < self.after_s:
                continue
            frame = sys._current_frames().get(self.thread_id)
            if frame is not None:
                self.samples[where(frame)] += 1
            del frame


async def watch_event_loop(interval_s: float = INTERVAL_S, warn_s: float = WARN_S) -> None:
    """Observe ``negstream_event_loop_lag_seconds`` for ever; warn when the loop was held,
    naming where it was held the longest."""
    loop = asyncio.get_running_loop()
    sampler = HoldSampler().start()
    last_log, held, worst, longest = 0.0, 0, 0.0, 0.0
    worst_at = ""
    try:
        while True:
            started = loop.time()
            sampler.beaten()
            await asyncio.sleep(interval_s)
            lag = max(0.0, loop.time() - started - interval_s)
            sampler.beaten()
            seen = sampler.take()
            metrics.EVENT_LOOP_LAG.observe(lag)
            if lag > longest:
                longest = lag
                metrics.EVENT_LOOP_LAG_MAX.set(lag)
            if lag > warn_s:
                held += 1
                if lag > worst:
                    worst = lag
                    worst_at = f"; mostly in {seen[0]}" if seen else ""
                now = time.monotonic()
                if now - last_log >= LOG_EVERY_S:
                    log.warning(
                        "event loop held for up to %.2f s (%d times over %.2f s since the last "
                        "report): a callback or timer ran too long%s", worst, held, warn_s,
                        worst_at,
                    )  # fmt: skip
                    last_log, held, worst, worst_at = now, 0, 0.0, ""
    finally:
        sampler.stop()
