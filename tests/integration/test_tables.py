"""Per-user tables, the label join and the fast path, on a real worker and broker."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas import decode_example, decode_score_update
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from tests.ground_truth import accepted_events
from tests.support import (
    TABLE_SETTINGS,
    WorkerProcess,
    assert_once_by_id,
    compare_tables,
    consume,
    examples_by_id,
    generated_stream,
    isolated_settings,
    produce,
    send_paced,
)

pytestmark = pytest.mark.broker


def test_tables_and_labels_equal_the_ground_truth(broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = isolated_settings(broker.url, tmp_path, **TABLE_SETTINGS)
    ensure_topics(settings)
    stream = generated_stream()
    truth = accepted_events(stream, settings.grace_s)
    assert truth.duplicates > 50 and truth.late > 20
    labels = truth.labels(settings.label_window_s)
    expected = {i: k for i, k in labels.items() if not i.startswith("flush")}
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        send_paced(settings, stream, rate=3000)
        examples = examples_by_id(settings, len(expected))
        compare_tables(worker, settings, truth)
        metrics = worker.metrics()
    finally:
        worker.stop()
    ids = [e.example_id for e in examples]
    assert len(ids) == len(set(ids)), "no example is published twice"
    assert {e.example_id: e.label for e in examples} == expected

    def total(outcome: str) -> float:
        wanted = ("outcome", outcome)
        return sum(
            v
            for (name, labels), v in metrics.items()
            if name == "negstream_events_total" and wanted in labels
        )

    assert total("duplicate") == truth.duplicates
    assert total("late") == truth.late


def test_sigkill_mid_stream_loses_nothing_and_dedupes_by_id(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path, **TABLE_SETTINGS)
    ensure_topics(settings)
    stream = generated_stream()
    truth = accepted_events(stream, settings.grace_s)
    expected = {i: k for i, k in truth.labels(settings.label_window_s).items()
                if not i.startswith("flush")}  # fmt: skip
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    producer = threading.Thread(target=send_paced, args=(settings, stream, 600))
    producer.start()
    try:
        time.sleep(1.5)
        worker.kill()
        time.sleep(0.5)
        worker = WorkerProcess(settings, tmp_path / "worker2.log").start()
        producer.join()
        examples = examples_by_id(settings, len(expected))
        compare_tables(worker, settings, truth)
    finally:
        producer.join()
        worker.stop()
    assert_once_by_id(examples, expected)


def test_not_interested_publishes_a_suppression(broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = isolated_settings(broker.url, tmp_path)
    ensure_topics(settings)
    t0 = 1_767_225_600.0
    impression = {"event_id": "i-1", "user_id": "alice", "item_id": "video-9",
                  "creator_id": "chan-3", "category": "pranks", "timestamp": t0}  # fmt: skip
    feedback = {**impression, "event_id": "f-1", "kind": "not_interested", "timestamp": t0 + 4}
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, [("impressions", b"alice", impression), ("feedback", b"alice", feedback)])
        updates = consume(settings, "scores", lambda got: len(got) >= 1)
    finally:
        worker.stop()
    key, value = updates[0]
    update = decode_score_update(value)
    assert key == b"alice" and update.source == "fast_path"
    assert update.trigger_event_ids == ("f-1",)
    (suppression,) = update.suppressions
    assert (suppression.target_type, suppression.target_id) == ("item", "video-9")
    assert suppression.reason == "not_interested"
    assert suppression.expires_at == t0 + 4 + settings.suppression_ttl_s


def test_flooding_user_is_flagged_and_kept_out_of_training(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path, abuse_negative_cap=20)
    ensure_topics(settings)
    t0 = 1_767_225_600.0
    messages: list[tuple[str, bytes | None, Any]] = []
    for user in ("bot", "human"):
        for n in range(10):
            imp = {
                "event_id": f"{user}-i{n}",
                "user_id": user,
                "item_id": f"x{n}",
                "timestamp": t0 + n,
            }
            messages.append(("impressions", user.encode(), imp))
    for n in range(60):
        fb = {"event_id": f"bot-f{n}", "user_id": "bot", "item_id": f"x{n % 10}",
              "kind": "report", "timestamp": t0 + n * 0.1}  # fmt: skip
        messages.append(("feedback", b"bot", fb))
    dislike = {"event_id": "human-f", "user_id": "human", "item_id": "x1", "kind": "dislike",
               "timestamp": t0 + 1.5}  # fmt: skip
    messages.append(("feedback", b"human", dislike))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, messages)
        consume(settings, "examples", lambda got: len(got) >= 10)
        examples = [decode_example(v) for _, v in consume(settings, "examples", lambda g: False, 3)]
        metrics = worker.metrics()
        bot_view = orjson.loads(worker.get("/users/bot/"))
    finally:
        worker.stop()
    assert sorted(e.example_id for e in examples) == sorted(f"human-i{n}" for n in range(10))
    assert {e.example_id: e.label for e in examples}["human-i1"] == "dislike"
    assert bot_view["flagged"] and bot_view["short"]["negatives"] == 60, "still counted"
    assert metrics[("negstream_flagged_users_total", ())] == 1
    excluded = metrics[("negstream_examples_excluded_total", (("reason", "abuse_guard"),))]
    assert excluded == 10
