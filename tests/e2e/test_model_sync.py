"""A worker scoring with the shared trainer's model (NEGSTREAM_MODEL_SOURCE=remote) while the
trainer is SIGKILLed and restarted: scores go on with the model held, the trainer resumes
from its checkpoint, and no example is learned twice."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from model import OnlineModel, load_latest
from schemas import ScoreUpdate, decode_score_update
from simulator.stream import Simulator, SimulatorConfig
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.support import Feeder, Stream, WorkerProcess, isolated_settings, read_all, wait_until

pytestmark = pytest.mark.broker

SHARED_MODEL = {
    "model_source": "remote",
    "model_buckets": 2**12,
    "device": "cpu",
    "train_batch_size": 64,
    "train_max_wait_s": 0.2,
    "score_min_interval_s": 0.2,
    "checkpoint_every_batches": 3,
    "model_sync_s": 0.5,
    "model_snapshot_every": 20,
    "model_max_age_s": 30.0,
}
#: Events per second the producers send, and seconds of the trainer outage.
RATE = 150.0
OUTAGE_S = 8.0
#: The wire form's fixed chunk header (see model.update): kind, version, chunk index.
HEADER = struct.Struct("<4sBBQqqIIQQIII")
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def stream(impressions: int) -> Stream:
    config = SimulatorConfig(n_users=40, n_items=300, n_creators=20, n_categories=6, seed=11,
                             mean_request_gap_s=0.2, keep_ground_truth=False)  # fmt: skip
    return [(event.topic, event.value) for event in Simulator(config).events(impressions)]


def model_scores(settings: Settings) -> list[tuple[float, ScoreUpdate]]:
    """(broker timestamp in s, update) of every model ScoreUpdate so far."""
    records = read_all(settings, "scores", settings.partitions)
    updates = [(r.timestamp / 1000, decode_score_update(r.value)) for r in records]
    return [(at, update) for at, update in updates if update.source == "model"]


def sample(process: WorkerProcess, name: str, **labels: str) -> float:
    return process.metrics().get((name, tuple(sorted(labels.items()))), 0.0)


def test_scores_go_on_through_a_trainer_crash_and_nothing_is_learned_twice(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path / "worker", **SHARED_MODEL)
    trainer_settings = settings.replace(
        data_dir=str(tmp_path / "trainer"), metrics_port=free_port()
    )
    ensure_topics(settings)
    # Both start side by side (each imports torch).
    trainer = WorkerProcess(trainer_settings, tmp_path / "trainer.log", "trainer").launch()
    worker = WorkerProcess(settings, tmp_path / "worker.log").launch()
    trainer.wait_up()
    worker.wait_up()
    # More events than the test needs: it stops sending once the trainer is back.
    feeder = Feeder(settings, stream(6000), RATE)
    try:
        assert sample(worker, "negstream_model_remote") == 1
        feeder.start()
        wait_until(
            lambda: sample(worker, "negstream_model_updates_applied_total", kind="delta") >= 3
            and sample(worker, "negstream_score_updates_total", source="model") > 0,
            45, "the worker to apply deltas and publish model scores",
        )  # fmt: skip

        def checkpointed() -> dict[str, Any] | None:
            state = load_latest(trainer_settings.trainer_checkpoint_dir)
            return state if state and state["model"]["version"] >= 3 else None

        wait_until(checkpointed, 30, "a trainer checkpoint")
        trainer.kill()
        killed_at = time.time()
        snapshots = sample(worker, "negstream_model_updates_applied_total", kind="snapshot")
        saved = load_latest(trainer_settings.trainer_checkpoint_dir)
        assert saved is not None
        saved_version = saved["model"]["version"]
        updates_end = len(read_all(settings, "model_updates", 1))
        # What was in flight when the trainer died lands; then the model holds still.
        time.sleep(2.0)
        held = sample(worker, "negstream_model_version")
        scored = sample(worker, "negstream_score_updates_total", source="model")
        time.sleep(OUTAGE_S)
        assert sample(worker, "negstream_model_version") == held
        assert sample(worker, "negstream_score_updates_total", source="model") > scored
        assert sample(worker, "negstream_model_age_seconds") >= OUTAGE_S
        restarted_at = time.time()

        trainer = WorkerProcess(trainer_settings, tmp_path / "trainer2.log", "trainer").start()
        wait_until(
            lambda: sample(worker, "negstream_model_updates_applied_total", kind="snapshot")
            > snapshots, 45, "the worker to apply the restarted trainer's snapshot",
        )  # fmt: skip
        assert sample(worker, "negstream_model_age_seconds") < OUTAGE_S
        assert sample(worker, "negstream_model_version") >= saved_version
        feeder.pause()  # for good: nothing more is sent
        assert feeder.error is None and feeder.is_alive(), "events flowed throughout"
        time.sleep(2.0)  # the last label windows close
        worker.stop()  # it publishes no example after this

        # The trainer reads what the worker published to the end.
        def drained() -> int | None:
            examples = read_all(settings, "examples", settings.partitions)
            lag = sample(trainer, "negstream_trainer_lag_records")
            return len(examples) if lag == 0 and examples else None

        published = wait_until(drained, 45, "the trainer to read every example")
        time.sleep(1.0)
        assert drained() == published
        relearned = sample(trainer, "negstream_train_examples_total")
        skipped = sample(trainer, "negstream_train_duplicates_total")
        assert trainer.process is not None
        trainer.stop()
        assert trainer.process.returncode == 0, trainer.log()[-3000:]
    finally:
        feeder.join(1)
        worker.stop()
        trainer.stop()

    # The first update of the restarted trainer is a snapshot of the checkpoint's version.
    records = read_all(settings, "model_updates", 1)
    first = HEADER.unpack_from(records[updates_end].value)
    assert (first[2], first[4]) == (0, saved_version), "kind 0 is a snapshot"
    # While the trainer was down, every model score was of the version the worker held.
    during = [u for at, u in model_scores(settings) if killed_at + 2 < at < restarted_at]
    assert during and {u.model_version for u in during} == {held}
    # No example learned twice: the final model counts each distinct example once.
    examples = read_all(settings, "examples", settings.partitions)
    distinct = {orjson.loads(record.value)["example_id"] for record in examples}
    final = load_latest(trainer_settings.trainer_checkpoint_dir)
    assert final is not None
    model = OnlineModel.from_state_dict(final["model"])
    assert len(examples) == published
    assert model.examples_seen == len(distinct) > saved["model"]["examples_seen"]
    assert model.version > saved_version
    # The restarted trainer read on from the checkpoint's offsets: it learned exactly the
    # examples the checkpoint lacks, and skipped no more than the copies on the topic.
    assert relearned == len(distinct) - saved["model"]["examples_seen"]
    assert skipped <= len(examples) - len(distinct)
