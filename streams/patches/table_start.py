"""Starts the table manager without Faust's one-second grace.

Upstream behaviour: ``faust.tables.manager.TableManager.on_start`` sleeps 1 s before it
finalises the tables and starts their recovery, so that tables declared late (by agents as
they start) are still taken. The consumer group is joined only after that (the conductor
waits for the tables), so every worker start and restart was a second later. negstream
declares its one table before the app starts (``agents.wiring.register``); a table added
later still fails loudly in Faust (``Too late to add tables``). It can go when Faust makes
the grace configurable or drops it.
"""

from __future__ import annotations

from typing import Any

from faust.tables.manager import TableManager


async def _start_without_grace(manager: Any) -> None:
    if not manager.should_stop:
        await manager._update_channels()
        await manager.recovery.start()


def install() -> None:
    """Replace ``TableManager.on_start`` (idempotent)."""
    if TableManager.on_start is not _start_without_grace:
        TableManager.on_start = _start_without_grace  # type: ignore[method-assign,assignment]
