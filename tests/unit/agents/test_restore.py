"""Resuming a model from the newest checkpoint, or starting fresh (no broker)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agents.trainer import restore
from model import CheckpointStore, ModelConfig, OnlineModel

SMALL = {"buckets": 2**6, "cross_buckets": 2**6, "features": (), "device": "cpu"}
EXAMPLE = {"user_id": "u1", "item_id": "i1", "creator_id": "c1", "category": "news",
           "label": "hide", "kinds": ["hide"], "weight": 1.0, "features": {}}  # fmt: skip


def test_the_newest_checkpoint_is_loaded(tmp_path: Path) -> None:
    config = ModelConfig(**SMALL)
    trained = OnlineModel(config)
    trained.learn_many([EXAMPLE])
    store = CheckpointStore(tmp_path)
    store.save({"model": trained.state_dict(), "offsets": {"0": 5}})
    model, state = restore(store, OnlineModel(config), lambda: pytest.fail("not fresh"))
    assert state is not None and state["offsets"] == {"0": 5}
    assert model.version == trained.version == 1


def test_no_checkpoint_keeps_the_model(tmp_path: Path) -> None:
    model = OnlineModel(ModelConfig(**SMALL))
    assert restore(CheckpointStore(tmp_path), model, lambda: pytest.fail("not fresh")) == (
        model,
        None,
    )


def test_a_checkpoint_of_another_model_shape_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path)
    store.save({"model": OnlineModel(ModelConfig(**SMALL)).state_dict()})
    bigger = ModelConfig(**{**SMALL, "buckets": 2**7})
    fresh = OnlineModel(bigger)
    with caplog.at_level(logging.WARNING, "agents.trainer"):
        model, state = restore(store, OnlineModel(bigger), lambda: fresh)
    assert model is fresh and state is None
    assert "ignored" in caplog.text
