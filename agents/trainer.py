"""The model path: learn from ``training-examples`` off the event loop, rescore touched users."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import orjson
import torch
from faust.types import Message, TableT

from agents.fast_lane import FastLane
from agents.state.fold import feature_rows
from agents.state.suppression import active_suppressions
from model import CandidateBatch, CheckpointStore, ExampleBatch, ModelConfig, OnlineModel
from model.monitor.prequential import Prequential
from schemas.codec import encode
from schemas.events import FEATURE_NAMES, ItemScore, ScoreUpdate, Suppression
from streams import metrics
from streams.privacy import Pseudonymizer
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)

#: Example ids remembered to drop a redelivered example before it is learned twice.
SEEN_EXAMPLES = 200_000
#: The most recent of those written into each checkpoint.
CHECKPOINTED_IDS = 50_000
#: Most event ids a ScoreUpdate names as its triggers.
MAX_TRIGGER_IDS = 50
#: Most triggers queued for one user between two updates (the newest are kept).
MAX_QUEUED_TRIGGERS = 1000


def trigger_ids(triggers: list[tuple[str, int | None]]) -> tuple[str, ...]:
    """The event ids a ScoreUpdate names: feedback events first, then the newest examples.

    ``triggers`` are ``(event_id, produced_ms)`` in arrival order; a feedback event has its
    produce time, a learned example ``None``. A busy user gathers many learned examples
    between two updates, and a ranking service matches the update to the feedback it reacts
    to, so feedback ids are kept before example ids (the newest of each, at most
    :data:`MAX_TRIGGER_IDS` in all).

    Examples
    --------
    >>> trigger_ids([("f1", 5), *((f"x{n}", None) for n in range(60)), ("f2", 9)])[:4]
    ('f1', 'f2', 'x12', 'x13')
    >>> len(trigger_ids([(f"f{n}", n) for n in range(80)]))
    50
    """
    feedback = [event_id for event_id, produced_ms in triggers if produced_ms is not None]
    kept = feedback[-MAX_TRIGGER_IDS:]
    room = MAX_TRIGGER_IDS - len(kept)
    examples = [event_id for event_id, produced_ms in triggers if produced_ms is None]
    return tuple(kept + (examples[-room:] if room else []))


@dataclass(frozen=True)
class _Rescore:
    """One user to rescore: the stored state read, why, and the suppressions to publish."""

    user: str
    state: dict[str, Any]
    triggers: list[tuple[str, int | None]]
    suppressions: tuple[Suppression, ...]


class ModelService:
    """Owns the online model; every torch call runs on one worker thread, never the loop.

    ``train`` takes a micro-batch of examples: test-then-train, then the users in it are
    queued for rescoring. ``refresh`` rescores queued users (also queued by their new
    feedback), at most once per ``score_min_interval_s`` each, so a busy user's updates are
    coalesced. Checkpoints hold the model, its optimiser, its version and the consumed
    offsets of ``training-examples``.
    """

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        users: TableT[str, Any],
        pseudonym: Pseudonymizer | None = None,
    ) -> None:
        self.settings = settings
        self.pseudonym = pseudonym or Pseudonymizer(settings.pseudonymize_key)
        self.topics = topics
        self.users = users
        torch.set_num_threads(max(1, settings.torch_threads))
        config = ModelConfig(
            device=settings.device,
            features=FEATURE_NAMES,
            buckets=settings.model_buckets,
            # Id pairs are ~4x as many as ids: 2**20 at the default 2**18 buckets.
            cross_buckets=4 * settings.model_buckets,
        )
        self.model = OnlineModel(config)
        self.store = CheckpointStore(settings.checkpoint_dir)
        self.offsets: dict[int, int] = {}
        self.resumed_ids: list[str] = []
        self._resume()
        self.prequential = Prequential(self.model)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="negstream-model")
        # Learned example ids survive restarts in the checkpoint: a copy of an example that
        # was republished after a crash is not learned twice.
        self.seen: OrderedDict[str, None] = OrderedDict.fromkeys(self.resumed_ids)
        self.pending: dict[str, list[tuple[str, int | None]]] = {}
        self.last_refresh: dict[str, float] = {}
        # Queued users without candidates yet, and since when (see ``_due_jobs``).
        self.waiting_since: dict[str, float] = {}
        self.batches_since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
        self.on_learned: list[Callable[[list[dict[str, Any]], np.ndarray], None]] = []
        # Suppressions the fast lane published ahead of the users table are merged in.
        self.lane: FastLane | None = None
        metrics.MODEL_VERSION.set(self.model.version)

    def _resume(self) -> None:
        state = self.store.load_latest()
        if state is None:
            return
        try:
            self.model.load_state_dict(state["model"])
        except (KeyError, ValueError, RuntimeError) as error:
            # A checkpoint of another model shape (e.g. written before an upgrade).
            log.warning("checkpoint ignored (%s); the model starts fresh", error)
            self.model = OnlineModel(self.model.config)
            return
        self.offsets = {int(p): int(o) for p, o in state.get("offsets", {}).items()}
        self.resumed_ids = list(state.get("seen_examples", []))
        log.info(
            "model resumed at version %d from %s", self.model.version, self.settings.checkpoint_dir
        )

    async def train(self, messages: list[Message]) -> None:
        """Test-then-train on one micro-batch of ``training-examples`` messages."""
        examples = []
        for message in messages:
            self.offsets[message.partition] = message.offset
            try:
                example = orjson.loads(message.value or b"")
                example_id = example["example_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("skipping an undecodable training example at offset %d", message.offset)
                continue
            if example_id in self.seen:
                continue
            self.seen[example_id] = None
            examples.append(example)
        while len(self.seen) > SEEN_EXAMPLES:
            self.seen.popitem(last=False)
        if not examples:
            return
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        predictions = await loop.run_in_executor(self.executor, self._learn, examples)
        elapsed = time.perf_counter() - started
        metrics.TRAIN_BATCH_SECONDS.observe(elapsed)
        metrics.TRAIN_EXAMPLES.inc(len(examples))
        metrics.TRAIN_EXAMPLES_PER_SECOND.set(len(examples) / max(elapsed, 1e-9))
        metrics.MODEL_VERSION.set(self.model.version)
        for name, value in self.prequential.get().items():
            head, metric = name.split("/")
            if np.isfinite(value):
                metrics.PREQUENTIAL.labels(head, metric).set(value)
        for hook in self.on_learned:
            hook(examples, predictions)
        for example in examples:
            user = self.pseudonym.real_id(example["user_id"])
            self.request_refresh(user, example["example_id"], None)
        self.batches_since_checkpoint += 1
        due = time.monotonic() - self.last_checkpoint >= self.settings.checkpoint_every_s
        if due or self.batches_since_checkpoint >= self.settings.checkpoint_every_batches:
            await loop.run_in_executor(self.executor, self.checkpoint)

    def _learn(self, examples: list[dict[str, Any]]) -> np.ndarray:
        batch = ExampleBatch.from_examples(examples, self.model.config)
        self.prequential.update(batch)
        return self.prequential.last_predictions

    def checkpoint(self) -> None:
        """Write model, optimiser, version and consumed offsets atomically (blocking)."""
        started = time.perf_counter()
        recent = list(self.seen)[-CHECKPOINTED_IDS:]
        self.store.save(
            {
                "model": self.model.state_dict(),
                "offsets": dict(self.offsets),
                "seen_examples": recent,
            }
        )
        self.batches_since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        metrics.CHECKPOINT_TIMESTAMP.set(time.time())

    def request_refresh(self, user_id: str, trigger_id: str, produced_ms: int | None) -> None:
        """Queue ``user_id`` for rescoring because of event ``trigger_id``."""
        triggers = self.pending.setdefault(user_id, [])
        triggers.append((trigger_id, produced_ms))
        if len(triggers) > MAX_QUEUED_TRIGGERS:
            # A flooding user: an update names at most MAX_TRIGGER_IDS of them anyway.
            del triggers[: len(triggers) - MAX_QUEUED_TRIGGERS]

    def _due_jobs(self, now: float) -> list[_Rescore]:
        """Take the queued users due a refresh that have candidates to score.

        A user's feedback can be read before the impressions that give it candidates (the
        two input topics are read independently), so a user without candidates keeps its
        triggers queued, for up to ``label_window_s``: the update that follows its first
        impression still names the feedback.
        """
        jobs: list[_Rescore] = []
        interval, patience = self.settings.score_min_interval_s, self.settings.label_window_s
        for user in list(self.pending):
            if now - self.last_refresh.get(user, 0.0) < interval:
                continue
            state = cast(Any, self.users).data.get(user)
            if not (state and state.get("candidates")):
                since = self.waiting_since.setdefault(user, now)
                if now - since >= patience:
                    del self.pending[user], self.waiting_since[user]
                    metrics.REFRESHES_WITHOUT_CANDIDATES.inc()
                continue
            self.waiting_since.pop(user, None)
            active = active_suppressions(state)
            if self.lane is not None:
                active = self.lane.merge(user, active, state["clock"])
            jobs.append(_Rescore(user, state, self.pending.pop(user), active))
            self.last_refresh[user] = now
        return jobs

    async def refresh(self) -> None:
        """Rescore the queued users that have not been refreshed too recently."""
        if not self.pending:
            return
        jobs = self._due_jobs(time.monotonic())
        if not jobs:
            return
        # Featurising, scoring and encoding run on the model thread: stored states are
        # never changed in place (each write stores a new dict), so reading them there is
        # safe, and the event loop stays free for the consumer and the fast lane.
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        encoded = await loop.run_in_executor(self.executor, self._rescore, jobs)
        metrics.SCORE_REFRESH_SECONDS.observe(time.perf_counter() - started)
        records = [(self.topics.scores, key, value, partition) for key, value, partition in encoded]

        async def send() -> list[asyncio.Future[Any]]:
            return [await self.topics.publish(*record) for record in records]

        await self.topics.outputs.deliver(send)
        sent = time.time()
        metrics.LAST_SCORE_TIMESTAMP.set(sent)
        metrics.SCORE_UPDATES.labels("model").inc(len(records))
        for job in jobs:
            for _, produced_ms in job.triggers:
                if produced_ms:
                    metrics.FEEDBACK_TO_SCORE.labels("model").observe(
                        max(0.0, sent - produced_ms / 1000)
                    )

    def _rescore(self, jobs: list[_Rescore]) -> list[tuple[bytes, bytes, int | None]]:
        """Score each job's candidates; return each user's encoded ``ScoreUpdate`` record."""
        ids: dict[str, list[str | None]] = {
            "user_id": [], "item_id": [], "creator_id": [], "category": []
        }  # fmt: skip
        dense: list[tuple[float, ...]] = []
        for job in jobs:
            candidates = job.state["candidates"]
            dense += feature_rows(job.state, self.settings, candidates)
            ids["user_id"] += [job.user] * len(candidates)
            for name in ("item_id", "creator_id", "category"):
                ids[name] += [c.get(name) for c in candidates]
        # The model is configured with FEATURE_NAMES (see __init__), the rows' order.
        batch = CandidateBatch.from_columns(ids, dense, self.model.config)
        p_negative, version = self.model.p_negative(batch).tolist(), self.model.version
        records: list[tuple[bytes, bytes, int | None]] = []
        start = 0
        for job in jobs:
            candidates = job.state["candidates"]
            penalties = _penalties(job.suppressions)
            scores = []
            for candidate, p in zip(
                candidates, p_negative[start : start + len(candidates)], strict=True
            ):
                penalty = max(
                    penalties.get(("item", candidate["item_id"]), 0.0),
                    penalties.get(("creator", candidate.get("creator_id")), 0.0),
                    penalties.get(("category", candidate.get("category")), 0.0),
                )
                score = round((1.0 - p) * (1.0 - penalty), 6)
                scores.append(ItemScore(candidate["item_id"], round(p, 6), score))
            start += len(candidates)
            published_id = self.pseudonym(job.user)
            update = ScoreUpdate(
                user_id=published_id,
                source="model",
                model_version=version,
                timestamp=job.state["clock"],
                trigger_event_ids=trigger_ids(job.triggers),
                scores=tuple(sorted(scores, key=lambda s: -s.score)),
                suppressions=job.suppressions,
            )
            partition = job.state.get("partition") if self.pseudonym.enabled else None
            records.append((published_id.encode(), encode(update), partition))
        return records

    def close(self) -> None:
        """Checkpoint at shutdown and stop the model thread."""
        try:
            self.checkpoint()
        finally:
            self.executor.shutdown(wait=True)


def _penalties(suppressions: tuple[Suppression, ...]) -> dict[tuple[str, str], float]:
    """The strongest penalty on each suppressed (target type, target id)."""
    strongest: dict[tuple[str, str], float] = {}
    for suppression in suppressions:
        target = (suppression.target_type, suppression.target_id)
        strongest[target] = max(strongest.get(target, 0.0), suppression.penalty)
    return strongest
