"""Checkpoints: atomic writes, rotation, fallback past a corrupt newest file."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch

from model import CheckpointStore, load_latest, save_checkpoint


def state(version: int) -> dict[str, Any]:
    return {"version": version, "weights": torch.full((3,), float(version)), "offsets": {"0": 7}}


def test_round_trip_with_metadata(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, state(1))
    loaded = load_latest(tmp_path)
    assert loaded is not None
    assert loaded["version"] == 1
    assert loaded["offsets"] == {"0": 7}
    assert torch.equal(loaded["weights"], torch.ones(3))


def test_nothing_to_load(tmp_path: Path) -> None:
    assert load_latest(tmp_path) is None
    assert load_latest(tmp_path / "never-created") is None


def test_keeps_only_the_newest_k(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for version in range(5):
        store.save(state(version))
    names = [path.name for path in store.paths()]
    assert names == ["checkpoint-000000000003.pt", "checkpoint-000000000004.pt"]
    loaded = store.load_latest()
    assert loaded is not None and loaded["version"] == 4


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_newest_falls_back_to_previous(tmp_path: Path, damage: str) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    store.save(state(1))
    newest = store.save(state(2))
    data = newest.read_bytes()
    newest.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x00not a checkpoint", "empty": b""}[
            damage
        ]
    )
    loaded = store.load_latest()
    assert loaded is not None and loaded["version"] == 1


def test_all_corrupt_gives_none(tmp_path: Path) -> None:
    newest = save_checkpoint(tmp_path, state(1))
    newest.write_bytes(b"junk")
    assert load_latest(tmp_path) is None


def test_failed_write_leaves_previous_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(state(1))

    def crash(obj: object, handle: Any) -> None:
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save(state(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-000000000000.pt"]
    loaded = store.load_latest()
    assert loaded is not None and loaded["version"] == 1


def test_leftover_temp_files_and_strangers_are_ignored(tmp_path: Path) -> None:
    (tmp_path / ".checkpoint-abc.tmp").write_bytes(b"interrupted")
    (tmp_path / "notes.txt").write_text("hello")
    save_checkpoint(tmp_path, state(3))
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded["version"] == 3


def test_refuses_to_unpickle_arbitrary_objects(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(state(1))
    store.save({"version": 2, "object": Fraction(1, 3)})
    loaded = store.load_latest()
    assert loaded is not None and loaded["version"] == 1


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep"):
        CheckpointStore(tmp_path, keep=0)
