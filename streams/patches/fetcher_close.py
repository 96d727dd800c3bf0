"""Lets an aiokafka consumer stop while its broker is gone.

Upstream behaviour (aio-libs/aiokafka#647): ``Fetcher.close`` cancels its pending tasks and
awaits each one; a task that was sleeping between retries because the broker went away
re-raises ``CancelledError`` into ``close``. Faust's consumer thread then never reports
itself stopped, and a worker whose broker vanished ignored SIGTERM. This version awaits the
cancelled tasks and swallows their cancellation, as ``close`` already does for its own
fetch task. It can go once that issue is fixed in the aiokafka release the project pins.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka.consumer.fetcher import Fetcher


async def _close(fetcher: Any) -> None:
    fetcher._closed = True
    fetcher._fetch_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await fetcher._fetch_task
    # Fail all pending fetchone/fetchall calls.
    for waiter in fetcher._fetch_waiters:
        fetcher._notify(waiter)
    for task in fetcher._pending_tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def install() -> None:
    """Replace ``Fetcher.close`` (idempotent)."""
    if Fetcher.close is not _close:
        Fetcher.close = _close
