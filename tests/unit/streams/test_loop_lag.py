"""The event-loop watcher: a long hold is measured, logged, and named by where it was."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from streams import loop_lag, metrics


def hold_the_loop_for(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(1000))


async def _run_with_a_hold(seconds: float) -> None:
    watcher = asyncio.ensure_future(loop_lag.watch_event_loop())
    await asyncio.sleep(0.1)
    hold_the_loop_for(seconds)
    await asyncio.sleep(0.1)
    watcher.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watcher


def test_a_long_hold_is_measured_and_logged_with_where_it_was(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_lag, "OWN_CODE", (*loop_lag.OWN_CODE, __file__))
    caplog.set_level(logging.WARNING, logger=loop_lag.__name__)
    asyncio.run(_run_with_a_hold(0.4))
    assert metrics.EVENT_LOOP_LAG_MAX._value.get() >= 0.35
    (record,) = [r for r in caplog.records if "event loop held" in r.getMessage()]
    assert "hold_the_loop_for" in record.getMessage()
    assert "test_loop_lag.py" in record.getMessage()


def test_short_pauses_are_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=loop_lag.__name__)
    asyncio.run(_run_with_a_hold(0.1))
    assert not [r for r in caplog.records if "event loop held" in r.getMessage()]
