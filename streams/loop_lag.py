"""Measures how long the event loop is held: a task that should wake every few milliseconds
records how late it woke."""

from __future__ import annotations

import asyncio
import logging
import time

from streams import metrics

log = logging.getLogger(__name__)

#: How often the watcher wakes.
INTERVAL_S = 0.02
#: A hold longer than this is logged (at most once every :data:`LOG_EVERY_S`).
WARN_S = 0.25
LOG_EVERY_S = 10.0


async def watch_event_loop(interval_s: float = INTERVAL_S, warn_s: float = WARN_S) -> None:
    """Observe ``negstream_event_loop_lag_seconds`` for ever; warn when the loop was held."""
    loop = asyncio.get_running_loop()
    last_log, held, worst, longest = 0.0, 0, 0.0, 0.0
    while True:
        started = loop.time()
        await asyncio.sleep(interval_s)
        lag = max(0.0, loop.time() - started - interval_s)
        metrics.EVENT_LOOP_LAG.observe(lag)
        if lag > longest:
            longest = lag
            metrics.EVENT_LOOP_LAG_MAX.set(lag)
        if lag > warn_s:
            held, worst = held + 1, max(worst, lag)
            now = time.monotonic()
            if now - last_log >= LOG_EVERY_S:
                log.warning(
                    "event loop held for up to %.2f s (%d times over %.2f s since the last "
                    "report): a callback or timer ran too long", worst, held, warn_s,
                )  # fmt: skip
                last_log, held, worst = now, 0, 0.0
