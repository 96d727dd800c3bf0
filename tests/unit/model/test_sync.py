"""Model updates: touched rows, the chunked wire form, and replicas that follow a trainer."""

from __future__ import annotations

import dataclasses
import random
import struct
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from model import ExampleBatch, ModelConfig, OnlineModel
from model.sync import ModelReplica, ModelUpdate, TableRows, TouchedRows, take_update
from model.update import encode_update
from model.update_reader import UpdateAssembler, decode_update

Stream = Callable[..., list[dict[str, Any]]]

# Small tables so a snapshot is a few hundred KiB; deep_warmup=0 so the embeddings move from
# the first batch and a stale row would change the predictions.
SMALL = {"buckets": 2**10, "cross_buckets": 2**11, "device": "cpu", "deep_warmup": 0.0}
CONFIGS = {
    "default": ModelConfig(**SMALL),
    "pair_biases_decay": ModelConfig(
        **SMALL, crosses=("user*creator", "user*category"), rate_half_life=500.0
    ),
    "adam_extra_negatives": ModelConfig(**SMALL, optimizer="adam", extra_negatives=2),
    # A warm-up blend that grows with examples_seen.
    "adagrad_warmup": ModelConfig(**{**SMALL, "deep_warmup": 1000.0}, optimizer="adagrad", lr=0.03),
}
# The wire form's fixed chunk header (see model.update).
HEADER = struct.Struct("<4sBBQqqIIQQIII")


def _batches(stream: Stream, count: int, size: int = 64, seed: int = 0) -> list[list[Any]]:
    examples = stream(count * size, seed=seed)
    return [examples[start : start + size] for start in range(0, len(examples), size)]


def _candidates(stream: Stream) -> list[dict[str, Any]]:
    """Ids seen in training and ids never seen (users 40.., items 400..)."""
    return stream(200, seed=99) + stream(50, seed=98, users=60, items=range(400, 500))


def _trainer(config: ModelConfig) -> OnlineModel:
    return OnlineModel(config, changes=TouchedRows())


def _wire(update: ModelUpdate, max_chunk_bytes: int = 64 * 1024) -> ModelUpdate:
    """The update after encoding and reassembling it, as a replica receives it."""
    assembler = UpdateAssembler()
    chunks = encode_update(update, max_chunk_bytes)
    received = [assembler.add(chunk) for chunk in chunks]
    assert all(item is None for item in received[:-1])
    assert received[-1] is not None
    return received[-1]


def _assert_same(left: ModelUpdate, right: ModelUpdate) -> None:
    """Every field equal and every array the same dtype, shape and bytes."""
    fields = ("lineage", "version", "base_version", "examples_seen", "config", "kind")
    assert [getattr(left, name) for name in fields] == [getattr(right, name) for name in fields]
    assert list(left.dense) == list(right.dense)
    for name, array in left.dense.items():
        other = right.dense[name]
        assert (array.dtype, array.shape) == (other.dtype, other.shape), name
        assert array.tobytes() == other.tobytes(), name
    assert list(left.tables) == list(right.tables)
    for name, table in left.tables.items():
        other_table = right.tables[name]
        pairs = [(table.values, other_table.values)]
        if table.rows is None:
            assert other_table.rows is None
        else:
            assert other_table.rows is not None
            pairs.append((table.rows, other_table.rows))
        for array, other in pairs:
            assert (array.dtype, array.shape) == (other.dtype, other.shape), name
            assert array.tobytes() == other.tobytes(), name


def _resign(chunk: bytes, directory: bytes | None = None, **fields: int) -> bytes:
    """``chunk`` with header fields or directory replaced and a CRC that matches again."""
    names = ("magic", "format", "kind", "lineage", "version", "base", "index", "count")
    names += ("offset", "total", "directory_size", "body_size", "crc")
    header = dict(zip(names, HEADER.unpack_from(chunk), strict=True))
    old_directory = chunk[HEADER.size : HEADER.size + header["directory_size"]]
    body = chunk[HEADER.size + header["directory_size"] :]
    directory = old_directory if directory is None else directory
    header.update(fields, directory_size=len(directory), crc=0)
    packed = HEADER.pack(*header.values())[:-4]
    crc = zlib.crc32(body, zlib.crc32(directory, zlib.crc32(packed)))
    return packed + struct.pack("<I", crc) + directory + body


@pytest.mark.parametrize("full", [True, False], ids=["snapshot", "delta"])
def test_round_trip_is_bit_exact(make_toy_stream: Stream, full: bool) -> None:
    model = _trainer(CONFIGS["pair_biases_decay"])
    batches = _batches(make_toy_stream, 3)
    model.learn_many(batches[0])
    take_update(model, full=True)
    for batch in batches[1:]:
        model.learn_many(batch)
    update = take_update(model, full=full)
    assert update.kind == ("snapshot" if full else "delta")
    # Tiny chunks cut arrays at odd byte offsets; one chunk keeps each array whole.
    for max_chunk_bytes in (2048, 10**8):
        _assert_same(update, decode_update(encode_update(update, max_chunk_bytes)))


def test_round_trip_keeps_every_bit_of_odd_arrays() -> None:
    nan = np.array([0x7FC00001, 0xFFFFFFFF], dtype=np.uint32).view(np.float32)
    update = ModelUpdate(
        lineage=2**63 - 1,
        version=9,
        base_version=9,
        examples_seen=0,
        config="digest",
        dense={
            "nan_payloads": nan,
            "clock": np.array(-0.0, dtype=np.float64),
            "half": np.arange(6, dtype=np.float16).reshape(2, 3),
            "empty": np.zeros((0, 4), dtype=np.float32),
            "big_endian": np.arange(3, dtype=">f4"),
        },
        tables={
            "none_written": TableRows(np.zeros(0, dtype=np.int32), np.zeros((0, 2), np.float32)),
            "wide_rows": TableRows(np.array([2**40], dtype=np.int64), np.ones((1, 1), np.float64)),
        },
    )
    decoded = decode_update(encode_update(update, 420))
    expected = dataclasses.replace(
        update, dense={**update.dense, "big_endian": np.arange(3, dtype="<f4")}
    )
    _assert_same(expected, decoded)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_replica_predicts_exactly_like_the_trainer(make_toy_stream: Stream, name: str) -> None:
    config = CONFIGS[name]
    trainer, replica = _trainer(config), ModelReplica(config)
    batches = _batches(make_toy_stream, 5)
    candidates = _candidates(make_toy_stream)
    trainer.learn_many(batches[0])
    assert replica.apply(_wire(take_update(trainer, full=True)))
    assert np.array_equal(replica.predict_many(candidates), trainer.predict_many(candidates))
    for batch in batches[1:]:
        trainer.learn_many(batch)
        # The trainer moved on: until the delta lands, the replica predicts otherwise.
        assert not np.array_equal(
            replica.predict_many(candidates), trainer.predict_many(candidates)
        )
        delta = _wire(take_update(trainer, full=False))
        assert delta.kind == "delta"
        assert replica.apply(delta)
        assert replica.version == trainer.version
        assert np.array_equal(replica.predict_many(candidates), trainer.predict_many(candidates))
        assert np.array_equal(replica.p_negative(candidates), trainer.p_negative(candidates))
    assert (replica.applied, replica.refused_gaps, replica.refused_stale) == (5, 0, 0)


def test_delta_carries_only_the_rows_the_batch_wrote(make_toy_stream: Stream) -> None:
    config = ModelConfig(buckets=2**12, cross_buckets=2**14, device="cpu", deep_warmup=0.0)
    model = _trainer(config)
    first, batch = _batches(make_toy_stream, 2, seed=3)
    model.learn_many(first)
    snapshot = take_update(model, full=True)
    before = {name: table.values for name, table in snapshot.tables.items()}
    model.learn_many(batch)
    delta = take_update(model, full=False)

    examples = ExampleBatch.from_examples(batch, config)
    ids = np.stack([examples.user, examples.item, examples.creator, examples.category], 1)
    written = {
        "network.table.weight": np.unique(ids + np.arange(4) * config.buckets),
        "wide.table.counts": np.unique(model.wide.rows(examples).numpy()),
    }
    # No id crosses in this config: the cross-bias table is never written.
    assert set(delta.tables) == set(written)
    for name, rows in written.items():
        table = delta.tables[name]
        assert table.rows is not None
        assert np.array_equal(table.rows, rows)
        after = (
            model.network.table.weight if name.startswith("network") else model.wide.table.counts
        )
        changed = np.flatnonzero((after.detach().numpy() != before[name]).any(axis=1))
        assert len(changed) > 0 and set(changed) <= set(rows.tolist())
        assert np.array_equal(table.values, after.detach().numpy()[rows])

    delta_bytes = sum(map(len, encode_update(delta)))
    snapshot_bytes = sum(map(len, encode_update(snapshot)))
    # 64 examples write at most 4 x 64 of 4 x 4096 embedding rows and 6 x 64 of 49152 rate rows.
    assert delta_bytes * 20 < snapshot_bytes


def test_a_gap_is_refused_until_a_snapshot(make_toy_stream: Stream) -> None:
    config = CONFIGS["default"]
    trainer, replica = _trainer(config), ModelReplica(config)
    candidates = _candidates(make_toy_stream)
    batches = _batches(make_toy_stream, 4)
    take_update(trainer, full=True)  # not received
    trainer.learn_many(batches[0])
    # No snapshot yet: nothing for a delta to apply on top of.
    assert not replica.apply(take_update(trainer, full=False))
    assert replica.version is None and replica.refused_gaps == 1
    assert replica.apply(take_update(trainer, full=True))
    held = replica.predict_many(candidates)
    trainer.learn_many(batches[1])
    take_update(trainer, full=False)  # lost on the way
    trainer.learn_many(batches[2])
    assert not replica.apply(take_update(trainer, full=False))
    assert (replica.version, replica.refused_gaps) == (1, 2)
    assert np.array_equal(replica.predict_many(candidates), held)

    assert replica.apply(take_update(trainer, full=True))
    trainer.learn_many(batches[3])
    assert replica.apply(take_update(trainer, full=False))
    assert replica.version == trainer.version == 4
    assert np.array_equal(replica.predict_many(candidates), trainer.predict_many(candidates))


def test_superseded_updates_are_refused(make_toy_stream: Stream) -> None:
    config = CONFIGS["default"]
    trainer, replica = _trainer(config), ModelReplica(config)
    candidates = _candidates(make_toy_stream)
    first, second = _batches(make_toy_stream, 2)
    trainer.learn_many(first)
    old_snapshot = take_update(trainer, full=True)
    trainer.learn_many(second)
    delta = take_update(trainer, full=False)
    assert replica.apply(old_snapshot) and replica.apply(delta)
    assert not replica.apply(delta)
    assert not replica.apply(old_snapshot)
    assert (replica.version, replica.refused_stale, replica.refused_gaps) == (2, 2, 0)
    assert np.array_equal(replica.predict_many(candidates), trainer.predict_many(candidates))


def test_a_reloaded_trainer_starts_a_new_lineage(make_toy_stream: Stream) -> None:
    config = CONFIGS["default"]
    trainer, ahead, behind = _trainer(config), ModelReplica(config), ModelReplica(config)
    candidates = _candidates(make_toy_stream)
    first, second, third = _batches(make_toy_stream, 3)
    trainer.learn_many(first)
    saved = trainer.state_dict()
    snapshot = take_update(trainer, full=True)
    assert ahead.apply(snapshot) and behind.apply(snapshot)
    trainer.learn_many(second)
    assert ahead.apply(take_update(trainer, full=False))
    # Back to version 1 (a restart from a checkpoint), then another history from there.
    trainer.load_state_dict(saved)
    restarted = take_update(trainer, full=False)
    assert (restarted.kind, restarted.version) == ("snapshot", 1)
    trainer.learn_many(third)
    delta = take_update(trainer, full=False)
    assert (delta.kind, delta.base_version, delta.version) == ("delta", 1, 2)
    # Its base version is what ``behind`` holds, but of the old run: refused as a gap.
    assert not behind.apply(delta) and not ahead.apply(delta)
    assert (behind.refused_gaps, ahead.refused_gaps, ahead.version) == (1, 1, 2)
    # The new run's snapshot replaces even a newer version of the old run.
    assert ahead.apply(restarted) and ahead.apply(delta)
    assert np.array_equal(ahead.predict_many(candidates), trainer.predict_many(candidates))


def test_apply_runs_on_a_worker_thread_and_checks_the_config(make_toy_stream: Stream) -> None:
    config = CONFIGS["default"]
    trainer = _trainer(config)
    trainer.learn_many(_batches(make_toy_stream, 1)[0])
    snapshot = take_update(trainer, full=True)
    replica = ModelReplica(config)
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(replica.apply(snapshot)))
    worker.start()
    worker.join()
    assert results == [True]
    other = ModelReplica(ModelConfig(**{**SMALL, "embedding_dim": 8}))
    with pytest.raises(ValueError, match="config"):
        other.apply(snapshot)
    assert other.version is None


def test_a_delta_that_does_not_fit_changes_nothing(make_toy_stream: Stream) -> None:
    config = CONFIGS["default"]
    trainer, replica = _trainer(config), ModelReplica(config)
    assert replica.apply(take_update(trainer, full=True))
    trainer.learn_many(_batches(make_toy_stream, 1)[0])
    delta = take_update(trainer, full=False)
    table = delta.tables["network.table.weight"]
    assert table.rows is not None
    rows = table.rows.copy()
    rows[-1] = 4 * config.buckets
    tables = {**delta.tables, "network.table.weight": dataclasses.replace(table, rows=rows)}
    broken = dataclasses.replace(delta, tables=tables)
    weights = replica.model.network.table.weight.detach().clone()
    with pytest.raises(ValueError, match="outside"):
        replica.apply(broken)
    assert replica.version == 0
    assert torch.equal(replica.model.network.table.weight, weights)
    assert replica.apply(delta)


def test_chunks_respect_max_chunk_bytes(make_toy_stream: Stream) -> None:
    model = _trainer(ModelConfig(buckets=2**13, cross_buckets=2**13, device="cpu"))
    model.learn_many(_batches(make_toy_stream, 1)[0])
    snapshot = take_update(model, full=True)
    assert snapshot.nbytes > 900 * 1024
    for limit in (4096, 64 * 1024, 900 * 1024):
        chunks = encode_update(snapshot, limit)
        # Every chunk but the last is full: no more chunks than the payload forces.
        assert [len(chunk) for chunk in chunks[:-1]] == [limit] * (len(chunks) - 1)
        assert len(chunks[-1]) <= limit
        per_chunk = (sum(map(len, chunks)) - snapshot.nbytes) // len(chunks)
        assert len(chunks) == -(-snapshot.nbytes // (limit - per_chunk))
    assert max(map(len, encode_update(snapshot))) <= 900 * 1024
    with pytest.raises(ValueError, match="no room"):
        encode_update(snapshot, 100)


def test_malformed_chunks_raise_value_error(make_toy_stream: Stream) -> None:
    model = _trainer(CONFIGS["default"])
    model.learn_many(_batches(make_toy_stream, 1)[0])
    update = take_update(model, full=True)
    chunks = encode_update(update, 16 * 1024)
    assert len(chunks) >= 3
    rng = random.Random(0)
    garbled = []
    for _ in range(50):
        chunk = bytearray(chunks[1])
        chunk[rng.randrange(len(chunk))] ^= 1 << rng.randrange(8)
        garbled.append(bytes(chunk))
    bad = [
        b"",
        b"NSMU",
        bytes(rng.randrange(256) for _ in range(500)),
        chunks[0][:-1],
        chunks[0][: HEADER.size + 3],
        chunks[0] + b"\x00",
        *garbled,
        _resign(chunks[0], directory=b"{not json"),
        _resign(chunks[0], directory=b'{"config":"x","examples_seen":0,"arrays":[["dense"]]}'),
        _resign(chunks[0], format=2),
        _resign(chunks[0], kind=0, base=5),
        _resign(chunks[0], index=7, count=3),
        _resign(chunks[0], total=1),
    ]
    for chunk in bad:
        assembler = UpdateAssembler()
        with pytest.raises(ValueError):
            assembler.add(chunk)
    with pytest.raises(ValueError):
        UpdateAssembler().add("not bytes")  # type: ignore[arg-type]

    # Out of place: a middle chunk first, a chunk skipped, a chunk of another update.
    assembler = UpdateAssembler()
    for sequence in (
        [chunks[1]],
        [chunks[0], chunks[2]],
        [chunks[0], _resign(chunks[1], lineage=1)],
    ):
        with pytest.raises(ValueError):
            for chunk in sequence:
                assembler.add(chunk)
    # After all that, the same assembler still puts a whole update together.
    results = [assembler.add(chunk) for chunk in chunks]
    assert results[-1] is not None
    _assert_same(update, results[-1])
    with pytest.raises(ValueError, match="before their update is complete"):
        decode_update(chunks[:-1])
    with pytest.raises(ValueError, match="past the end"):
        decode_update([*chunks, chunks[0]])


def test_touched_rows_are_the_distinct_rows_marked() -> None:
    touched = TouchedRows()
    generator = torch.Generator().manual_seed(0)
    marked = []
    # Enough marks (230k rows) to merge pending rows into the distinct set a few times.
    for _ in range(600):
        rows = torch.randint(0, 50_000, (64, 6), generator=generator)
        touched.mark("rates", rows)
        marked.append(rows.flatten())
    touched.mark("embeddings", torch.tensor([5, 5, 2]))
    base, rows = touched.take(version=600)
    assert base is None
    assert torch.equal(rows["rates"], torch.unique(torch.cat(marked)))
    assert rows["embeddings"].tolist() == [2, 5]
    lineage = touched.lineage
    touched.mark("rates", torch.tensor([1]))
    touched.restart()
    assert touched.lineage != lineage
    assert touched.take(version=601) == (None, {})


def test_an_update_carries_when_it_was_taken(make_toy_stream: Stream) -> None:
    config = CONFIGS["default"]
    trainer, replica = _trainer(config), ModelReplica(config)
    trainer.learn_many(_batches(make_toy_stream, 1)[0])
    before = time.time()
    update = take_update(trainer, full=True)
    assert before <= update.created <= time.time()
    received = _wire(update)
    assert received.created == update.created
    assert replica.created is None and replica.apply(received)
    assert replica.created == update.created
    # Not known (0): left out of the wire form, and read back as 0.
    unknown = dataclasses.replace(update, created=0.0)
    assert _wire(unknown).created == 0.0
    assert len(encode_update(unknown, 10**8)[0]) < len(encode_update(update, 10**8)[0])
    with pytest.raises(ValueError, match="creation time"):
        encode_update(dataclasses.replace(update, created=float("nan")))


def test_an_update_names_the_offsets_its_model_learned(make_toy_stream: Stream) -> None:
    config = CONFIGS["default"]
    trainer = _trainer(config)
    trainer.learn_many(_batches(make_toy_stream, 1)[0])
    update = dataclasses.replace(take_update(trainer, full=True), learned={0: 41, 2: -1})
    assert _wire(update).learned == {0: 41, 2: -1}
    # Not known (empty): the directory has no such field, as before the field existed, and
    # such a directory reads back as empty.
    unknown = dataclasses.replace(update, learned={})
    (chunk,) = encode_update(unknown, 10**8)
    assert b'"learned"' not in chunk and b'"learned"' in encode_update(update, 10**8)[0]
    assert decode_update([chunk]).learned == {}
