"""The model path end to end: simulated events in, model ScoreUpdates out, restart-safe."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from model import OnlineModel, load_latest
from schemas import ScoreUpdate, decode_score_update
from simulator.stream import Simulator, SimulatorConfig
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.settings import Settings
from tests.support import WorkerProcess, consume, isolated_settings, produce

pytestmark = pytest.mark.broker

MODEL_SETTINGS = {
    "model_buckets": 2**12,
    "train_batch_size": 64,
    "train_max_wait_s": 0.2,
    "score_min_interval_s": 0.2,
    "checkpoint_every_batches": 3,
}


def simulated(n_impressions: int, seed: int) -> list[tuple[str, bytes | None, Any]]:
    config = SimulatorConfig(n_users=30, n_items=200, n_creators=20, n_categories=5, seed=seed,
                             mean_request_gap_s=0.2)  # fmt: skip
    topic = {"impressions": "impressions", "negative-feedback": "feedback"}
    return [
        (topic[e.topic], e.key.encode(), e.value) for e in Simulator(config).events(n_impressions)
    ]


def model_updates(settings: Settings, done: Any, timeout: float = 90) -> list[ScoreUpdate]:
    def decoded_done(got: list[tuple[bytes | None, bytes]]) -> bool:
        return bool(done([decode_score_update(v) for _, v in got]))

    messages = consume(settings, "scores", decoded_done, timeout=timeout)
    return [u for u in (decode_score_update(v) for _, v in messages) if u.source == "model"]


def test_scores_refresh_with_rising_versions_and_a_dislike_sinks_its_item(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path, **MODEL_SETTINGS)
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, simulated(600, seed=1))
        updates = model_updates(
            settings, lambda got: max((u.model_version for u in got), default=0) >= 5
        )
        versions = [u.model_version for u in updates]
        assert max(versions) >= 5 and max(versions) > min(versions)
        # The user's newest update lists the candidates; dislike the best-ranked one.
        before = updates[-1]
        target = before.scores[0]
        view = orjson.loads(worker.get(f"/users/{before.user_id}/"))
        now = view["clock"] + 1
        dislike = {"event_id": "injected-dislike", "user_id": before.user_id,
                   "item_id": target.item_id, "kind": "dislike", "timestamp": now}  # fmt: skip
        produce(settings, [("feedback", before.user_id.encode(), dislike)])

        def refreshed(got: list[ScoreUpdate]) -> bool:
            return any(
                u.source == "model" and "injected-dislike" in u.trigger_event_ids for u in got
            )

        after = next(
            u
            for u in model_updates(settings, refreshed)
            if "injected-dislike" in u.trigger_event_ids
        )
    finally:
        worker.stop()
    old = {s.item_id: s.score for s in before.scores}
    new = {s.item_id: s.score for s in after.scores}
    assert new[target.item_id] < old[target.item_id]
    assert after.scores[-1].item_id == target.item_id or new[target.item_id] == min(new.values())
    assert any(s.target_id == target.item_id for s in after.suppressions)
    assert after.model_version >= before.model_version


def test_restart_resumes_the_model_from_its_checkpoint(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path, **MODEL_SETTINGS)
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, simulated(600, seed=2))
        deadline = time.monotonic() + 90
        checkpoint = None
        while time.monotonic() < deadline:
            checkpoint = load_latest(settings.checkpoint_dir)
            if checkpoint and checkpoint["model"]["version"] >= 6:
                break
            time.sleep(0.5)
        assert checkpoint is not None, "a checkpoint was written"
        user = model_updates(settings, lambda got: bool(got))[-1].user_id
        worker.kill()
        checkpoint = load_latest(settings.checkpoint_dir)
        assert checkpoint is not None
        saved_version = checkpoint["model"]["version"]
        worker = WorkerProcess(settings, tmp_path / "worker2.log").start()
        deadline = time.monotonic() + 60
        resumed = 0.0
        while time.monotonic() < deadline:
            resumed = worker.metrics().get(("negstream_model_version", ()), 0.0)
            if resumed:
                break
            time.sleep(0.5)
        assert resumed >= saved_version, "the restarted model did not start over"
        # Predictions continue from the checkpoint: score one user's candidates offline
        # with the checkpointed model and compare with the worker's refreshed scores.
        view = orjson.loads(worker.get(f"/users/{user}/"))
        offline = OnlineModel.from_state_dict(load_latest(settings.checkpoint_dir)["model"])
        rows = [{**c, "user_id": user} for c in view["candidates"]]
        expected = dict(
            zip([r["item_id"] for r in rows], offline.p_negative(rows).tolist(), strict=True)
        )
        version_now = int(worker.metrics()[("negstream_model_version", ())])
        click = {"event_id": "poke", "user_id": user, "item_id": "not-shown", "kind": "click",
                 "timestamp": view["clock"]}  # fmt: skip
        produce(settings, [("feedback", user.encode(), click)])
        update = next(
            u
            for u in model_updates(
                settings, lambda got: any("poke" in u.trigger_event_ids for u in got)
            )
            if "poke" in u.trigger_event_ids
        )
    finally:
        worker.stop()
    if update.model_version == version_now == offline.version:
        for score in update.scores:
            assert score.p_negative == pytest.approx(expected[score.item_id], abs=1e-5)
    assert update.model_version >= saved_version
