"""The model path's learner: test-then-train on ``training-examples`` off the event loop,
dedupe redelivered examples, checkpoint."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import torch
from faust.types import Message

from model import CandidateBatch, CheckpointStore, ExampleBatch, ModelConfig, OnlineModel
from model.monitor.prequential import Prequential
from schemas.events import FEATURE_NAMES
from schemas.kinds import DEFAULT_SEVERITY
from streams import metrics
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Example ids remembered to drop a redelivered example before it is learned twice.
SEEN_EXAMPLES = 200_000
#: The most recent of those written into each checkpoint.
CHECKPOINTED_IDS = 50_000

#: A checkpoint due by its batch count waits until this many times the previous one's
#: writing time has passed since that one: however fast batches come (a backlog), writing
#: checkpoints takes at most about a tenth of the model thread.
CHECKPOINT_SPACING = 9.0

#: What one call to :meth:`Trainer.train` learned: the examples, and the model's
#: predictions for them made before it learned them (rows x heads).
Learned = tuple[list[dict[str, Any]], np.ndarray]


def model_config(settings: Settings) -> ModelConfig:
    """The model every trainer learns and every scoring replica holds (device aside)."""
    return ModelConfig(
        device=settings.device,
        features=FEATURE_NAMES,
        severity=dict(DEFAULT_SEVERITY),
        buckets=settings.model_buckets,
        # Id pairs are ~4x as many as ids: 2**20 at the default 2**18 buckets.
        cross_buckets=4 * settings.model_buckets,
    )


class CheckpointClock:
    """When the next checkpoint is due: ``checkpoint_every_s`` seconds after the previous
    one, or after ``checkpoint_every_batches`` batches once :data:`CHECKPOINT_SPACING` times
    the previous one's writing time has passed since it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.last = time.monotonic()
        self.took = 0.0

    def due(self, batches: int) -> bool:
        """Whether a checkpoint is due after ``batches`` batches since the previous one."""
        since = time.monotonic() - self.last
        if since >= self.settings.checkpoint_every_s:
            return True
        return batches >= self.settings.checkpoint_every_batches and (
            since >= CHECKPOINT_SPACING * self.took
        )

    def written(self, started: float) -> None:
        """A checkpoint begun at ``started`` (``time.perf_counter()``) is written."""
        self.took = time.perf_counter() - started
        self.last = time.monotonic()


def fresh_examples(
    values: Iterable[tuple[int, bytes | None]], seen: OrderedDict[str, None]
) -> list[dict[str, Any]]:
    """The decoded examples among ``(offset, value)`` records whose ``example_id`` is not in
    ``seen``; their ids are added to it (the oldest beyond :data:`SEEN_EXAMPLES` dropped).

    A copy of an example published again (at-least-once delivery) is skipped and counted;
    an undecodable record is logged and skipped.
    """
    examples = []
    for offset, value in values:
        try:
            example = orjson.loads(value or b"")
            example_id = example["example_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("skipping an undecodable training example at offset %d", offset)
            continue
        if example_id in seen:
            metrics.TRAIN_DUPLICATES.inc()
            continue
        seen[example_id] = None
        examples.append(example)
    while len(seen) > SEEN_EXAMPLES:
        seen.popitem(last=False)
    return examples


def restore(
    store: CheckpointStore, model: OnlineModel, fresh: Callable[[], OnlineModel]
) -> tuple[OnlineModel, dict[str, Any] | None]:
    """``model`` with the newest checkpoint of ``store`` loaded, and that checkpoint; with
    none, ``model`` and None. A checkpoint of another model shape (written before an
    upgrade, say) is logged and ignored: ``fresh()`` and None."""
    state = store.load_latest()
    if state is None:
        return model, None
    try:
        model.load_state_dict(state["model"])
    except (KeyError, ValueError, RuntimeError) as error:
        log.warning("checkpoint in %s ignored (%s); the model starts fresh", store.directory, error)
        return fresh(), None
    return model, state


class Trainer:
    """Owns the online model; every torch call runs on :attr:`executor`, one thread, never
    the event loop.

    ``train`` takes a micro-batch of examples: test-then-train, then returns what it learned
    (the caller queues those users for rescoring and feeds the drift reporter). Checkpoints
    hold the model, its optimiser, its version and the consumed offsets of
    ``training-examples``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        torch.set_num_threads(max(1, settings.torch_threads))
        self.model = OnlineModel(model_config(settings))
        self.store = CheckpointStore(settings.checkpoint_dir)
        self.offsets: dict[int, int] = {}
        self.resumed_ids: list[str] = []
        self._resume()
        self.prequential = Prequential(self.model)
        # The test-then-train figures after the latest batch, computed on the model thread
        # (a rolling AUC sorts its whole window: tens of milliseconds) and only read here.
        self.figures: dict[str, float] = {}
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="negstream-model")
        # Learned example ids survive restarts in the checkpoint: a copy of an example that
        # was republished after a crash is not learned twice.
        self.seen: OrderedDict[str, None] = OrderedDict.fromkeys(self.resumed_ids)
        self.batches_since_checkpoint = 0
        self.clock = CheckpointClock(settings)
        metrics.MODEL_VERSION.set(self.model.version)

    def _resume(self) -> None:
        config = self.model.config
        self.model, state = restore(self.store, self.model, lambda: OnlineModel(config))
        if state is None:
            return
        self.offsets = {int(p): int(o) for p, o in state.get("offsets", {}).items()}
        self.resumed_ids = list(state.get("seen_examples", []))
        log.info(
            "model resumed at version %d from %s", self.model.version, self.settings.checkpoint_dir
        )

    async def train(self, messages: list[Message]) -> Learned:
        """Test-then-train on one micro-batch of ``training-examples`` messages; return the
        examples learned (redelivered copies are skipped) with their predictions."""
        for message in messages:
            self.offsets[message.partition] = message.offset
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        # Decoded on the model thread too: a thousand examples' JSON is tens of milliseconds.
        values = [(m.offset, m.value) for m in messages]
        examples, predictions = await loop.run_in_executor(self.executor, self._learn, values)
        if not examples:
            return [], np.zeros((0, 0), dtype=np.float32)
        elapsed = time.perf_counter() - started
        metrics.TRAIN_BATCH_SECONDS.observe(elapsed)
        metrics.TRAIN_EXAMPLES.inc(len(examples))
        metrics.TRAIN_EXAMPLES_PER_SECOND.set(len(examples) / max(elapsed, 1e-9))
        metrics.MODEL_VERSION.set(self.model.version)
        for name, value in self.figures.items():
            head, metric = name.split("/")
            if np.isfinite(value):
                metrics.PREQUENTIAL.labels(head, metric).set(value)
        self.batches_since_checkpoint += 1
        if self.clock.due(self.batches_since_checkpoint):
            await loop.run_in_executor(self.executor, self.checkpoint)
        return examples, predictions

    @property
    def config(self) -> ModelConfig:
        """The model's config (rescoring builds its batches with it)."""
        return self.model.config

    @property
    def ready(self) -> bool:
        """Always: a local model scores from its first state on."""
        return True

    def score(self, batch: CandidateBatch) -> tuple[list[float], int]:
        """p_negative of each candidate and the model version (on :attr:`executor`)."""
        return self.model.p_negative(batch).tolist(), self.model.version

    def _learn(self, values: list[tuple[int, bytes | None]]) -> Learned:
        """Decode the new examples among ``(offset, value)`` records and test-then-train on
        them (model thread); the examples and their predictions."""
        examples = fresh_examples(values, self.seen)
        if not examples:
            return [], np.zeros((0, 0), dtype=np.float32)
        batch = ExampleBatch.from_examples(examples, self.model.config)
        self.prequential.update(batch)
        self.figures = self.prequential.get()
        return examples, self.prequential.last_predictions

    def checkpoint(self) -> None:
        """Write model, optimiser, version and consumed offsets atomically (blocking)."""
        started = time.perf_counter()
        recent = list(self.seen)[-CHECKPOINTED_IDS:]
        self.store.save(
            {
                # Written out before the model learns again (both on the model thread), so
                # the live tensors are saved as they are, not copied first.
                "model": self.model.state_dict(copy=False),
                "offsets": dict(self.offsets),
                "seen_examples": recent,
            }
        )
        self.batches_since_checkpoint = 0
        self.clock.written(started)
        metrics.CHECKPOINT_SECONDS.observe(self.clock.took)
        metrics.CHECKPOINT_TIMESTAMP.set(time.time())

    async def close(self) -> None:
        """Checkpoint at shutdown (on the model thread: a checkpoint takes the event loop's
        thread for about half a second) and stop the model thread."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.shield(loop.run_in_executor(self.executor, self.checkpoint))
        finally:
            # Also when the wait above is cancelled: the checkpoint still completes.
            self.executor.shutdown(wait=True)
