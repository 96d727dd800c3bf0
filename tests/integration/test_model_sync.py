"""The shared trainer on a real broker: it learns every example of training-examples once,
publishes a snapshot then deltas to model-updates, and a replica built from the topic
predicts exactly like the trainer's checkpointed model; a replica that starts later skips
to the newest snapshot."""

from __future__ import annotations

import asyncio
import random
import signal
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from agents.model_follower import ModelFollower
from agents.model_topic import reading_start, snapshot_offset, updates_consumer
from agents.trainer import model_config
from model import ModelReplica, OnlineModel, UpdateAssembler, load_latest
from streams.admin import TopicLayoutError, ensure_topics
from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.ranks import free_address
from tests.support import (
    WorkerProcess,
    isolated_settings,
    new_topic_named,
    produce,
    wait_until,
)

pytestmark = pytest.mark.broker

#: A model whose snapshot takes several chunks (about 4 MB), updates every half second and a
#: snapshot every fifth update; no periodic checkpoint: the one at SIGTERM is compared.
TRAINER_SETTINGS = {
    "model_buckets": 2**13,
    "device": "cpu",
    "train_batch_size": 64,
    "train_max_wait_s": 0.1,
    "model_sync_s": 0.5,
    "model_snapshot_every": 5,
    "model_max_age_s": 30.0,
    "checkpoint_every_batches": 10_000,
    "checkpoint_every_s": 3600.0,
}
#: The wire form's fixed chunk header (see model.update): kind, version, chunk index, count.
HEADER = struct.Struct("<4sBBQqqIIQQIII")
KINDS = ("snapshot", "delta")


def example(index: int, rng: random.Random) -> dict[str, Any]:
    """An example in the worker's wire form: user ``u`` hides category ``u % 5``."""
    user, item = rng.randrange(60), rng.randrange(500)
    label = "hide" if item % 5 == user % 5 else rng.choice(["click", "none"])
    return {
        "example_id": f"ex-{index}",
        "user_id": f"user-{user}",
        "item_id": f"item-{item}",
        "creator_id": f"creator-{item % 40}",
        "category": f"category-{item % 5}",
        "request_id": None,
        "timestamp": 1_700_000_000.0 + index,
        "label": label,
        "kinds": [] if label == "none" else [label],
        "weight": 1.0,
        "features": {"impressions_long": float(index % 11)},
        "label_delay_s": 1.0,
    }


@dataclass
class Chunk:
    offset: int
    key: bytes | None
    kind: str
    version: int
    index: int
    count: int


@dataclass
class Built:
    """A replica built from model-updates and what it read."""

    replica: ModelReplica
    start: int
    applied: list[tuple[str, int]]


async def _read(settings: Settings, from_newest_snapshot: bool) -> tuple[Built, list[Chunk]]:
    """Read model-updates to its end, as a worker does (from the newest snapshot) or from
    the first record, applying every update to a fresh replica."""
    consumer = updates_consumer(settings, "test")
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic("model_updates"), 0)
        consumer.assign([tp])
        start, end = await reading_start(consumer, tp)
        if not from_newest_snapshot:
            start = 0
        consumer.seek(tp, start)
        replica, assembler = ModelReplica(model_config(settings)), UpdateAssembler()
        applied: list[tuple[str, int]] = []
        chunks: list[Chunk] = []
        while not chunks or chunks[-1].offset < end - 1:
            for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                fields = HEADER.unpack_from(record.value)
                chunks.append(Chunk(record.offset, record.key, KINDS[fields[2]], fields[4],
                                    fields[6], fields[7]))  # fmt: skip
                update = assembler.add(record.value)
                if update is not None and replica.apply(update):
                    applied.append((update.kind, update.version))
        return Built(replica, start, applied), chunks
    finally:
        await consumer.stop()


def _candidates(rng: random.Random) -> list[dict[str, Any]]:
    return [example(10_000 + n, rng) for n in range(300)]


def test_trainer_learns_every_example_once_and_replicas_follow_it(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path, **TRAINER_SETTINGS)
    ensure_topics(settings)
    rng = random.Random(5)
    examples = [example(index, rng) for index in range(1500)]
    # Copies of 200 examples (at-least-once delivery) land among the others.
    copies = rng.sample(examples, 200)
    stream = examples + copies
    rng.shuffle(stream)
    trainer = WorkerProcess(settings, tmp_path / "trainer.log", command="trainer").start()
    try:
        produce(settings, (("examples", e["user_id"].encode(), e) for e in stream[:700]))
        time.sleep(1.5)
        produce(settings, (("examples", e["user_id"].encode(), e) for e in stream[700:]))

        def learned_everything() -> dict[Any, float] | None:
            samples = trainer.metrics()
            done = samples[("negstream_train_examples_total", ())] >= len(examples)
            return samples if done else None

        samples = wait_until(learned_everything, 60, "the trainer to learn every example")
        version = int(samples[("negstream_model_version", ())])

        def published_at_version() -> bool:
            # Two updates taken after the last batch: the newest published carries it. Stop
            # between snapshots: at least two, and a delta not followed by one (every fifth
            # delta is) published last, so the topic's last record names the second.
            before = samples[("negstream_model_updates_published_total", (("kind", "delta"),))]
            now = trainer.metrics()
            published = now[("negstream_model_updates_published_total", (("kind", "delta"),))]
            snapshots = now[("negstream_model_updates_published_total", (("kind", "snapshot"),))]
            between = published % 5 in (1, 2, 3) and snapshots >= 2
            return published >= before + 2 and between

        wait_until(published_at_version, 30, "updates of the final version")
        samples = trainer.metrics()
        assert trainer.process is not None
        stopping = time.monotonic()
        trainer.process.send_signal(signal.SIGTERM)
        assert trainer.process.wait(15) == 0, trainer.log()[-3000:]
        stop_s = time.monotonic() - stopping
    finally:
        trainer.stop()

    assert stop_s < 10, f"SIGTERM took {stop_s:.1f} s"
    assert samples[("negstream_train_examples_total", ())] == len(examples)
    assert samples[("negstream_train_duplicates_total", ())] == len(copies)
    checkpoint = load_latest(settings.trainer_checkpoint_dir)
    assert checkpoint is not None, trainer.log()[-3000:]
    saved = OnlineModel.from_state_dict(checkpoint["model"])
    assert saved.examples_seen == len(examples)
    assert saved.version == version
    # Every record read, and the offsets to resume from are the checkpoint's.
    assert sum(offset + 1 for offset in checkpoint["offsets"].values()) == len(stream)

    everything, chunks = asyncio.run(_read(settings, from_newest_snapshot=False))
    # A snapshot first, then deltas; every fifth delta is followed by a snapshot of its
    # version. Several chunks a snapshot.
    updates = [c for c in chunks if c.index == 0]
    kinds = [c.kind for c in updates]
    assert kinds[0] == "snapshot" and "delta" in kinds
    snapshots = [n for n, kind in enumerate(kinds) if kind == "snapshot"]
    assert snapshots == list(range(0, len(kinds), 6)) and len(snapshots) >= 2
    for n in snapshots[1:]:
        assert (updates[n - 1].kind, updates[n - 1].version) == ("delta", updates[n].version)
    assert min(c.count for c in updates if c.kind == "snapshot") >= 3
    assert everything.applied == [(c.kind, c.version) for c in updates]
    versions = [c.version for c in updates]
    assert versions == sorted(versions) and versions[-1] == version
    # Every record names the newest snapshot complete when it was written.
    complete, first = -1, -1
    ends: dict[int, int] = {}
    for chunk in chunks:
        assert snapshot_offset(chunk.key) == complete, chunk
        if chunk.kind == "snapshot" and chunk.index == 0:
            first = chunk.offset
        if chunk.kind == "snapshot" and chunk.index == chunk.count - 1:
            complete = ends[first] = first
            ends[first] = chunk.offset

    candidates = _candidates(rng)
    expected = saved.predict_many(candidates)
    assert everything.replica.version == version
    assert np.array_equal(everything.replica.predict_many(candidates), expected)
    # An untrained model predicts otherwise: the comparison can tell.
    assert not np.array_equal(OnlineModel(saved.config).predict_many(candidates), expected)

    # A replica that starts now reads from the newest complete snapshot: one snapshot,
    # then only the deltas after it.
    later, _ = asyncio.run(_read(settings, from_newest_snapshot=True))
    newest = max(start for start, end in ends.items() if end < chunks[-1].offset)
    assert later.start == newest > 0
    after = [(c.kind, c.version) for c in updates if c.offset >= newest]
    assert later.applied == after and later.applied[0][0] == "snapshot"
    assert len(later.applied) < len(everything.applied)
    assert np.array_equal(later.replica.predict_many(candidates), expected)

    # A worker's follower reading the whole topic applies the first snapshot and the deltas,
    # and seeks past every later snapshot unread: it held their versions already.
    follower = ModelFollower(settings, model_config(settings))
    follower.position = 0
    skipped = REGISTRY.get_sample_value("negstream_model_snapshots_skipped_total") or 0.0
    asyncio.run(_follow_to(follower, chunks[-1].offset + 1))
    assert follower.replica.applied == len(kinds) - (len(snapshots) - 1)
    assert REGISTRY.get_sample_value("negstream_model_snapshots_skipped_total") == skipped + (
        len(snapshots) - 1
    )
    assert follower.version == version
    assert np.array_equal(asyncio.run(follower.predict(candidates)), expected)
    follower.close()


async def _follow_to(follower: ModelFollower, end: int) -> None:
    """Run ``follower`` until it has read model-updates up to ``end``."""
    task = asyncio.create_task(follower.run(lambda learned: None))
    try:
        deadline = time.monotonic() + 60
        while (follower.position or 0) < end:
            assert time.monotonic() < deadline, f"follower at {follower.position} of {end}"
            assert not task.done(), task
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_model_updates_is_created_with_one_partition_and_checked(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path)
    created = ensure_topics(settings)
    assert settings.topic("model_updates") in created
    assert ensure_topics(settings) == []  # the layout it created passes its own check
    with pytest.raises(TopicLayoutError, match=r"has 4 partitions but NEGSTREAM_PARTITIONS=8"):
        ensure_topics(settings.replace(partitions=8))
    other = isolated_settings(broker.url, tmp_path)
    new_topic_named(other.bootstrap_servers, other.topic("model_updates"), partitions=4)
    with pytest.raises(TopicLayoutError, match=r"model-updates.* has 4 partitions.*exactly one"):
        ensure_topics(other)


def test_two_data_parallel_trainers_learn_one_model_and_resume_it_together(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    zero = isolated_settings(
        broker.url, tmp_path / "rank-0", **TRAINER_SETTINGS,
        trainer_world=2, trainer_rendezvous=free_address(), trainer_peer_timeout_s=30.0,
    )  # fmt: skip
    # Its own data dir: rank 1 starts from the checkpoint rank 0 reads and sends it.
    one = zero.replace(trainer_rank=1, metrics_port=free_port(), data_dir=str(tmp_path / "rank-1"))
    ensure_topics(zero)
    rng = random.Random(9)
    examples = [example(index, rng) for index in range(800)]
    copies = rng.sample(examples, 100)
    stream = examples + copies
    rng.shuffle(stream)
    produce(zero, (("examples", e["user_id"].encode(), e) for e in stream))
    first = _run_ranks([zero, one], tmp_path / "first", len(examples))
    # Each rank learned its partitions' share; together every example once, copies dropped.
    learned = [samples[("negstream_train_examples_total", ())] for samples in first]
    assert min(learned) > 0 and sum(learned) == len(examples)
    assert sum(samples[("negstream_train_duplicates_total", ())] for samples in first) == 100
    versions = {samples[("negstream_model_version", ())] for samples in first}
    assert len(versions) == 1, f"the ranks' models are at versions {versions}"
    checkpoint = load_latest(zero.trainer_checkpoint_dir)
    assert checkpoint is not None and load_latest(one.trainer_checkpoint_dir) is None
    saved = OnlineModel.from_state_dict(checkpoint["model"])
    assert saved.examples_seen == len(examples) and saved.version == versions.pop()
    # Rank 0's checkpoint holds every partition's offset, so both ranks resume.
    assert sorted(checkpoint["offsets"]) == list(range(zero.partitions))
    assert sum(offset + 1 for offset in checkpoint["offsets"].values()) == len(stream)
    # Rank 0 alone published; a replica built from the topic is the checkpointed model.
    built, _ = asyncio.run(_read(zero, from_newest_snapshot=True))
    candidates = _candidates(rng)
    assert built.replica.version == saved.version
    assert np.array_equal(built.replica.predict_many(candidates), saved.predict_many(candidates))

    # Restarted, the ranks go on from the checkpoint: only new examples are read and learned.
    more = [example(index, rng) for index in range(800, 1100)]
    produce(zero, (("examples", e["user_id"].encode(), e) for e in more))
    second = _run_ranks([zero, one], tmp_path / "second", len(more))
    assert sum(samples[("negstream_train_examples_total", ())] for samples in second) == len(more)
    assert sum(samples[("negstream_train_duplicates_total", ())] for samples in second) == 0
    resumed = load_latest(zero.trainer_checkpoint_dir)
    assert resumed is not None
    assert resumed["model"]["examples_seen"] == len(examples) + len(more)


def _run_ranks(ranks: list[Settings], logs: Path, expected: int) -> list[dict[Any, float]]:
    """Start the trainers, wait until together they learned ``expected`` examples and rank 0
    published two updates after that, then SIGTERM them; each one's last metrics."""
    logs.mkdir()
    trainers = [
        WorkerProcess(settings, logs / f"trainer-{n}.log", command="trainer").launch()
        for n, settings in enumerate(ranks)
    ]
    try:
        for trainer in trainers:
            trainer.wait_up()
        delta = ("negstream_model_updates_published_total", (("kind", "delta"),))

        def learned() -> list[dict[Any, float]] | None:
            samples = [trainer.metrics() for trainer in trainers]
            done = sum(s[("negstream_train_examples_total", ())] for s in samples) >= expected
            return samples if done else None

        samples = wait_until(learned, 60, "the trainers to learn every example")
        published = samples[0].get(delta, 0.0)
        wait_until(
            lambda: trainers[0].metrics().get(delta, 0.0) >= published + 2, 30, "two more updates"
        )
        samples = [trainer.metrics() for trainer in trainers]
        for trainer in trainers:
            assert trainer.process is not None
            trainer.process.send_signal(signal.SIGTERM)
        for trainer in trainers:
            assert trainer.process is not None
            assert trainer.process.wait(15) == 0, trainer.log()[-3000:]
        return samples
    finally:
        for trainer in trainers:
            trainer.stop()
