"""A remote-model worker's replica (no broker): chunks put together and applied in order,
every refusal counted by its reason, rescoring held until a model arrives and named by the
version that scored it."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY

from agents import model_follower
from agents.encoder import OutputEncoder
from agents.model_follower import ModelFollower
from agents.model_topic import snapshot_key, snapshot_offset
from agents.rescorer import Rescorer
from agents.state.features import feature_rows
from agents.trainer import fresh_examples, model_config
from agents.wiring import state_config
from model import CandidateBatch, OnlineModel, TouchedRows, encode_update, take_update
from schemas import decode_score_update
from streams.output import OutputProducer
from streams.privacy import Pseudonymizer
from streams.settings import Settings
from tests.support import memory_users

#: Small chunks: every snapshot of the small model takes several.
CHUNK = 16 * 1024


def settings(tmp_path: Path, **changes: Any) -> Settings:
    values = {"model_buckets": 2**8, "device": "cpu", "model_source": "remote", **changes}
    return Settings(data_dir=str(tmp_path), **values)


def examples(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    found = []
    for index in range(count):
        user, item = rng.randrange(20), rng.randrange(100)
        label = "hide" if item % 4 == user % 4 else "click"
        found.append({
            "example_id": f"{seed}-{index}", "user_id": f"u{user}", "item_id": f"i{item}",
            "creator_id": f"c{item % 9}", "category": f"g{item % 4}", "label": label,
            "kinds": [label], "weight": 1.0, "features": {"impressions_long": float(index % 7)},
        })  # fmt: skip
    return found


def refused(reason: str) -> float:
    value = REGISTRY.get_sample_value("negstream_model_updates_refused_total", {"reason": reason})
    return value or 0.0


def applied(kind: str) -> float:
    value = REGISTRY.get_sample_value("negstream_model_updates_applied_total", {"kind": kind})
    return value or 0.0


def chunks(model: OnlineModel, full: bool) -> list[bytes]:
    return encode_update(take_update(model, full=full), CHUNK)


def test_updates_apply_in_order_and_every_refusal_is_counted(tmp_path: Path) -> None:
    config = model_config(settings(tmp_path))
    trainer = OnlineModel(config, changes=TouchedRows())
    follower = ModelFollower(settings(tmp_path), config)
    candidates = examples(100, seed=99)
    assert not follower.ready and asyncio.run(follower.predict(candidates)) is None
    with pytest.raises(RuntimeError):
        follower.score(follower.replica.model._as_candidates(candidates))

    trainer.learn_many(examples(64, seed=1))
    snapshot = chunks(trainer, full=True)
    assert len(snapshot) >= 3
    before = {reason: refused(reason) for reason in ("gap", "stale", "invalid", "chunk")}
    before["incomplete"] = refused("incomplete")
    snapshots, deltas = applied("snapshot"), applied("delta")
    follower._take(snapshot)
    assert follower.ready and follower.version == trainer.version == 1
    assert np.array_equal(
        asyncio.run(follower.predict(candidates)), trainer.predict_many(candidates)
    )
    assert 0 <= follower.age() < 5

    trainer.learn_many(examples(64, seed=2))
    follower._take(chunks(trainer, full=False))
    trainer.learn_many(examples(64, seed=3))
    chunks(trainer, full=False)  # lost on the way
    trainer.learn_many(examples(64, seed=4))
    follower._take(chunks(trainer, full=False))
    assert follower.version == 2, "a delta after a gap is refused"
    garbled = bytearray(snapshot[1])
    garbled[-1] ^= 0xFF
    follower._take([bytes(garbled)])
    # A snapshot cut off by the next update: its chunks are dropped, the delta is a gap.
    newer = chunks(trainer, full=True)
    trainer.learn_many(examples(64, seed=5))
    follower._take([newer[0], *chunks(trainer, full=False)])
    assert follower.version == 2
    follower._take(snapshot)  # older than what the replica holds
    other = OnlineModel(model_config(settings(tmp_path, model_buckets=2**9)))
    follower._take(encode_update(take_update(other, full=True), CHUNK))

    assert {reason: refused(reason) - count for reason, count in before.items()} == {
        "gap": 2, "stale": 1, "invalid": 1, "chunk": 1, "incomplete": 1,
    }  # fmt: skip
    follower._take(chunks(trainer, full=True))
    assert follower.version == trainer.version == 5
    assert np.array_equal(
        asyncio.run(follower.predict(candidates)), trainer.predict_many(candidates)
    )
    assert (applied("snapshot") - snapshots, applied("delta") - deltas) == (2, 1)
    follower.close()


def state(candidates: int) -> dict[str, Any]:
    items = [{"item_id": f"i{n}", "creator_id": "c", "category": "g"} for n in range(candidates)]
    return {"clock": 100.0, "candidates": items, "suppressions": []}


def test_rescoring_waits_for_the_first_model_and_names_its_version(tmp_path: Path) -> None:
    worker = settings(tmp_path, score_min_interval_s=0.0)
    config = model_config(worker)
    follower = ModelFollower(worker, config)
    encoder = OutputEncoder(worker, Pseudonymizer(""))
    users = memory_users({"u1": state(3)})
    rescorer = Rescorer(
        worker, state_config(worker), users, follower, encoder, OutputProducer(worker)
    )
    rescorer.request_refresh("u1", "f1", 1_000)
    asyncio.run(rescorer.refresh())
    assert "u1" in rescorer.pending, "kept queued: no model to score with yet"

    trainer = OnlineModel(config, changes=TouchedRows())
    for seed in range(3):
        trainer.learn_many(examples(64, seed))
    follower._take(chunks(trainer, full=True))
    jobs = asyncio.run(rescorer._due_jobs(now=1.0))
    (record,) = rescorer._rescore(jobs)
    update = decode_score_update(record.value)
    assert update.model_version == trainer.version == 3
    # The scores are the trainer's model's, on the features the rescorer computed.
    (job,) = jobs
    candidates = job.state.candidates
    dense = feature_rows(job.state, state_config(worker), candidates)
    ids = {"user_id": ["u1"] * 3, "item_id": [c.item_id for c in candidates],
           "creator_id": [c.creator_id for c in candidates],
           "category": [c.category for c in candidates]}  # fmt: skip
    expected = trainer.p_negative(CandidateBatch.from_columns(ids, dense, config)).tolist()
    by_item = dict(zip(ids["item_id"], expected, strict=True))
    for score in update.scores:
        assert score.p_negative == pytest.approx(by_item[score.item_id], abs=1e-6)
    follower.close()


def learned_chunks(model: OnlineModel, full: bool, learned: dict[int, int]) -> list[bytes]:
    return encode_update(dataclasses.replace(take_update(model, full=full), learned=learned), CHUNK)


def test_users_are_handed_back_once_an_applied_model_learned_their_examples(
    tmp_path: Path,
) -> None:
    config = model_config(settings(tmp_path))
    trainer = OnlineModel(config, changes=TouchedRows())
    follower = ModelFollower(settings(tmp_path), config)
    read = examples(10, seed=3)
    for offset, example in enumerate(read):
        assert follower.example_read(0, offset, example["user_id"], example["example_id"]) == []
    assert follower.example_read(1, 0, "u99", "other") == []
    expected = [(e["user_id"], e["example_id"]) for e in read]

    trainer.learn_many(read[:5])
    assert asyncio.run(follower.take(learned_chunks(trainer, True, {0: 4, 1: -1}))) == expected[:5]
    # Refused (a delta whose base the replica lacks): nothing is handed back.
    trainer.learn_many(read[5:])
    take_update(trainer, full=False)  # never reaches the replica
    assert asyncio.run(follower.take(learned_chunks(trainer, False, {0: 9, 1: -1}))) == []
    assert follower.version == 1 and len(follower.unlearned) == 6
    # The next snapshot applies: its model learned the rest of partition 0.
    assert asyncio.run(follower.take(learned_chunks(trainer, True, {0: 9, 1: -1}))) == expected[5:]
    # Read after its model learned it: handed back at once.
    assert follower.example_read(0, 8, "u1", "again") == [("u1", "again")]
    # A trainer that names no offsets: its update covers everything read.
    assert asyncio.run(follower.take(chunks(trainer, full=True))) == [("u99", "other")]
    follower.close()


def test_examples_are_decoded_and_predicted_on_the_model_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = model_config(settings(tmp_path))
    follower = ModelFollower(settings(tmp_path), config)
    decoded_on: set[str] = set()

    def decode(*args: Any) -> list[dict[str, Any]]:
        decoded_on.add(threading.current_thread().name)
        return fresh_examples(*args)

    monkeypatch.setattr(model_follower, "fresh_examples", decode)
    read = examples(6, seed=4)
    records = [(index % 2, 10 + index, orjson.dumps(e)) for index, e in enumerate(read)]
    records += [(0, 20, b"not json"), (1, 21, orjson.dumps(read[2]))]  # garbled; a copy
    seen: OrderedDict[str, None] = OrderedDict()
    found, predictions = asyncio.run(follower.read_examples(records, seen))
    expected = [(partition, offset) for partition, offset, _ in records[:6]]
    assert [(p, o) for p, o, _ in found] == expected
    assert [e for _, _, e in found] == read
    assert predictions is None, "no model yet"
    assert decoded_on and threading.current_thread().name not in decoded_on
    assert list(seen) == [e["example_id"] for e in read]

    trainer = OnlineModel(config, changes=TouchedRows())
    trainer.learn_many(examples(64, seed=1))
    follower._take(chunks(trainer, full=True))
    more = examples(5, seed=5)
    found, predictions = asyncio.run(
        follower.read_examples([(0, n, orjson.dumps(e)) for n, e in enumerate(more)], seen)
    )
    assert [e for _, _, e in found] == more
    assert np.array_equal(predictions, trainer.predict_many(more))
    follower.close()


def test_record_keys_name_the_newest_snapshot() -> None:
    for offset in (-1, 0, 7, 2**40):
        assert snapshot_offset(snapshot_key(offset)) == offset
    for key in (None, b"", b"snapshot=", b"snapshot=-2", b"7", b"snapshot=1e3"):
        assert snapshot_offset(key) is None
