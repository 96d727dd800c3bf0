"""When a trainer writes its next checkpoint: by time, or by batches spaced by the writes'
own cost (a backlog's fast batches would otherwise write one every fraction of a second)."""

from __future__ import annotations

import pytest

import agents.trainer
from agents.trainer import CHECKPOINT_SPACING, CheckpointClock
from streams.settings import Settings


class FakeTime:
    """Both clocks the checkpoint clock reads, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(agents.trainer, "time", fake)
    return fake


SETTINGS = Settings(checkpoint_every_batches=50, checkpoint_every_s=60.0)


def test_batches_make_a_checkpoint_due_when_writes_are_cheap(clock: FakeTime) -> None:
    checkpoints = CheckpointClock(SETTINGS)
    assert not checkpoints.due(49)
    assert checkpoints.due(50)


def test_a_costly_write_spaces_the_next_one_due_by_batches(clock: FakeTime) -> None:
    checkpoints = CheckpointClock(SETTINGS)
    started = clock.now
    clock.now += 2.0  # the write took 2 s
    checkpoints.written(started)
    assert checkpoints.took == 2.0
    clock.now += CHECKPOINT_SPACING * 2.0 - 0.1
    assert not checkpoints.due(500)
    clock.now += 0.1
    assert checkpoints.due(50)
    assert not checkpoints.due(49)


def test_time_makes_a_checkpoint_due_whatever_the_batches(clock: FakeTime) -> None:
    checkpoints = CheckpointClock(SETTINGS)
    started = clock.now
    clock.now += 30.0  # a write slower than the interval allows
    checkpoints.written(started)
    clock.now += 59.9
    assert not checkpoints.due(1000)
    clock.now += 0.1
    assert checkpoints.due(1)
