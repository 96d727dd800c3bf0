"""Label windows due all at once are closed a bounded slice of users at a time, each slice's
outputs and states queued as a step of its own, with the outputs and states of one close of
them all; a sweep stopped by an error leaves the users it did not close due."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from agents import label_sweep
from agents.delivery import Step
from agents.state import fold
from tests.driver import FoldDriver

T0 = 1_767_225_600.0
USERS = 300
SLICE = 64
FEEDBACK_KINDS = ("dislike", "like", "skip")


def _records(driver: FoldDriver) -> list[Any]:
    """An impression for each user, on two partitions, and feedback on every third one:
    both inputs read, no label window passed yet."""
    messages = []
    for n in range(USERS):
        user = f"u{n}"
        value = {"event_id": f"i{n}", "user_id": user, "item_id": f"item{n % 7}",
                 "creator_id": f"c{n % 5}", "timestamp": T0 + n * 0.01}  # fmt: skip
        messages.append(driver.message("impressions", user.encode(), orjson.dumps(value), n % 2))
        if n % 3 == 0:
            reaction = {**value, "event_id": f"f{n}", "kind": FEEDBACK_KINDS[n % 9 // 3],
                        "timestamp": T0 + n * 0.01 + 1}  # fmt: skip
            messages.append(
                driver.message("feedback", user.encode(), orjson.dumps(reaction), n % 2)
            )
    return messages


class _Steps:
    """Records, for each step queued, the users it holds states of, whether it carries input
    events, and the examples it publishes."""

    def __init__(self, driver: FoldDriver) -> None:
        self.steps: list[tuple[int, bool]] = []
        self.examples: list[int] = []
        queue = driver.delivery.queue
        topic = driver.settings.topic("examples")

        async def recording(step: Step) -> None:
            if step:
                users = sum(len(states) for states in step.changelog.values())
                self.steps.append((users, bool(step.events)))
                self.examples.append(sum(record.topic == topic for record in step.outputs))
            await queue(step)

        driver.delivery.queue = recording  # type: ignore[method-assign]


def _published(driver: FoldDriver) -> tuple[list[Any], list[Any]]:
    return driver.captured.examples, driver.captured.updates


def _states(driver: FoldDriver) -> dict[str, Any]:
    return {user: state.to_wire() for user, state in driver.users.items()}


def _drive(
    monkeypatch: pytest.MonkeyPatch, bound: int, *batches: Callable[[FoldDriver], list[Any]]
) -> tuple[FoldDriver, _Steps]:
    """Every user fed in one batch, then ``batches`` (made for the driver), with slices of
    at most ``bound`` users; without ``batches`` an idle tick closes every label window."""
    monkeypatch.setattr(label_sweep, "CLOSE_SLICE_USERS", bound)
    driver = FoldDriver()
    steps = _Steps(driver)
    later = [batch(driver) for batch in batches]

    async def go() -> None:
        await driver.feed(_records(driver))
        for messages in later:
            await driver.feed(messages)
        if not later:
            await driver.finish()

    asyncio.run(go())
    return driver, steps


def _idle_close(monkeypatch: pytest.MonkeyPatch, bound: int) -> tuple[FoldDriver, _Steps]:
    """Every user fed in one batch, then every label window closed by one idle tick."""
    return _drive(monkeypatch, bound)


def test_an_idle_tick_closes_many_users_a_bounded_slice_a_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole, whole_steps = _idle_close(monkeypatch, USERS + 1)
    sliced, sliced_steps = _idle_close(monkeypatch, SLICE)
    # The batch's step, then the sweep's: one step in one close, several of at most SLICE.
    assert whole_steps.steps == [(USERS, True), (USERS, False)]
    assert whole_steps.examples == [0, USERS]
    assert sliced_steps.steps[0] == (USERS, True)
    sweep = [users for users, _ in sliced_steps.steps[1:]]
    assert sweep == [SLICE] * (USERS // SLICE) + [USERS % SLICE]
    assert sliced_steps.examples == [0, *sweep]
    # Each topic's outputs in the same order, and the same final states.
    examples, updates = _published(whole)
    assert len(examples) == USERS
    assert _published(sliced) == (examples, updates)
    assert _states(sliced) == _states(whole)
    assert not any(sliced.pipeline.sweep.deadlines.values())


def _moving(driver: FoldDriver) -> list[Any]:
    """A batch that moves both inputs' clocks past every label window."""
    late = T0 + 86_400.0
    return [
        driver.message("impressions", f"v{p}".encode(), orjson.dumps(
            {"event_id": f"iv{p}", "user_id": f"v{p}", "item_id": "x", "timestamp": late}), p)
        for p in (0, 1)
    ] + [
        driver.message("feedback", f"v{p}".encode(), orjson.dumps(
            {"event_id": f"fv{p}", "user_id": f"v{p}", "item_id": "x", "kind": "like",
             "timestamp": late + 1}), p)
        for p in (0, 1)
    ]  # fmt: skip


def _batch_close(monkeypatch: pytest.MonkeyPatch, bound: int) -> tuple[FoldDriver, _Steps]:
    """Every user fed in one batch; a later batch moves both inputs' clocks past every
    label window, so the batch path closes them all."""
    return _drive(monkeypatch, bound, _moving)


def test_a_batch_that_moves_the_watermark_far_closes_a_bounded_slice_a_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole, whole_steps = _batch_close(monkeypatch, USERS + 1)
    sliced, sliced_steps = _batch_close(monkeypatch, SLICE)
    # One close: the batch's own two users and every user closed, in the batch's step.
    assert whole_steps.steps == [(USERS, True), (2 + USERS, True)]
    assert whole_steps.examples == [0, USERS]
    # Sliced: the batch's step takes the first slice and goes first, its events acked once
    # it is delivered; the rest of the sweep follows in steps of its own.
    assert sliced_steps.steps[:2] == [(USERS, True), (2 + SLICE, True)]
    sweep = [users for users, _ in sliced_steps.steps[2:]]
    assert not any(events for _, events in sliced_steps.steps[2:])
    assert sweep == [SLICE] * ((USERS - SLICE) // SLICE) + [(USERS - SLICE) % SLICE]
    assert sliced_steps.examples == [0, SLICE, *sweep]
    examples, updates = _published(whole)
    assert len(examples) == USERS
    assert _published(sliced) == (examples, updates)
    assert _states(sliced) == _states(whole)


def test_a_sweep_stopped_by_an_error_leaves_the_users_it_did_not_close_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole, _ = _idle_close(monkeypatch, USERS + 1)
    monkeypatch.setattr(label_sweep, "CLOSE_SLICE_USERS", SLICE)
    driver = FoldDriver()
    steps = _Steps(driver)
    advance = fold.advance
    calls = 0

    def failing(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2 * SLICE + 10:
            raise RuntimeError("advance failed")
        return advance(*args)

    async def stopped() -> None:
        await driver.feed(_records(driver))
        monkeypatch.setattr(fold, "advance", failing)
        await driver.finish()

    with pytest.raises(RuntimeError, match="advance failed"):
        asyncio.run(stopped())
    # Two full slices queued; the third, stopped, queued nothing; the users it and the rest
    # of the sweep did not close are due again.
    assert [users for users, _ in steps.steps[1:]] == [SLICE, SLICE]
    assert len(driver.captured.examples) == 2 * SLICE
    due = {user for heap in driver.pipeline.sweep.deadlines.values() for _, user in heap}
    assert len(due) == USERS - 2 * SLICE
    monkeypatch.setattr(fold, "advance", advance)
    asyncio.run(driver.pipeline.on_idle_tick())
    examples, updates = _published(whole)
    key = orjson.dumps
    assert sorted(map(key, driver.captured.examples)) == sorted(map(key, examples))
    assert sorted(map(key, driver.captured.updates)) == sorted(map(key, updates))
    assert _states(driver) == _states(whole)
    assert not any(driver.pipeline.sweep.deadlines.values())
