"""The fast lane publishes a strong negative's suppression ahead of the micro-batch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from schemas import decode_score_update
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from tests.support import WorkerProcess, consume, isolated_settings, produce

pytestmark = pytest.mark.broker

#: The input pipeline waits this long to fill a micro-batch, so only the lane can answer sooner.
HELD_BATCH_S = 12.0


def wait_for_lane(worker: WorkerProcess, partitions: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.metrics().get(("negstream_fast_lane_partitions", ())) == partitions:
            return
        time.sleep(0.2)
    raise AssertionError(f"the fast lane never followed the partitions:\n{worker.log()[-3000:]}")


def test_the_lane_answers_before_the_batch_and_the_batch_keeps_its_suppression(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path, batch_within_s=HELD_BATCH_S, batch_size=1000)
    ensure_topics(settings)
    t0 = time.time()
    impression = {"event_id": "i-1", "user_id": "alice", "item_id": "video-9",
                  "creator_id": "chan-3", "category": "pranks", "timestamp": t0}  # fmt: skip
    feedback = {**impression, "event_id": "f-1", "kind": "report", "timestamp": t0 + 1}
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        wait_for_lane(worker, settings.partitions)
        sent = time.monotonic()
        produce(settings, [("impressions", b"alice", impression), ("feedback", b"alice", feedback)])
        first = consume(settings, "scores", lambda got: len(got) >= 1, timeout=HELD_BATCH_S / 2)
        answered = time.monotonic() - sent
        assert first, f"no ScoreUpdate within {HELD_BATCH_S / 2} s:\n{worker.log()[-3000:]}"
        # The micro-batch holding the event closes HELD_BATCH_S after it: its own update
        # (and the model's) follow, each still carrying the lane's suppressions.
        later = consume(settings, "scores", lambda got: len(got) >= 3, timeout=60)
    finally:
        worker.stop()
    assert answered < HELD_BATCH_S / 2
    lane_update = decode_score_update(first[0][1])
    assert lane_update.source == "fast_path" and lane_update.trigger_event_ids == ("f-1",)
    expected = {("item", "video-9"), ("creator", "chan-3")}  # a report targets the creator
    assert {(s.target_type, s.target_id) for s in lane_update.suppressions} == expected
    updates = [decode_score_update(value) for _, value in later]
    sources = [u.source for u in updates]
    assert sources.count("fast_path") >= 2 and "model" in sources, sources
    for update in updates:
        assert {(s.target_type, s.target_id) for s in update.suppressions} == expected
