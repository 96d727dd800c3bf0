"""The scoring model of a worker with ``NEGSTREAM_MODEL_SOURCE=remote``: a replica of the
trainer's model, kept current from ``model-updates``.

A task reads the topic from the newest complete snapshot on (:mod:`agents.model_topic`) and
hands the chunks to the model thread, which puts updates together and applies them to a
:class:`model.sync.ModelReplica`; rescoring runs on the same thread, so a score never sees
half an update and the event loop never holds a 130 MB snapshot. A snapshot of a version
the replica reached through deltas is skipped unread (the task seeks past its chunks and
counts it in ``negstream_model_snapshots_skipped_total``). While the trainer is down
the replica keeps the model it has, and rescoring goes on with it; refused updates (a gap,
another lineage's delta, a corrupt chunk) are counted and wait for the next snapshot.

The examples the worker reads wait in :class:`agents.unlearned.UnlearnedExamples` until an
applied update's model has learned them (each update names the offsets its model learned);
then their users are queued for rescoring, so the scores that follow come from a model
that learned the example.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from agents.model_topic import reading_start, updates_consumer
from agents.trainer import fresh_examples
from agents.unlearned import Learned, UnlearnedExamples
from model import (
    CandidateBatch,
    ModelConfig,
    ModelReplica,
    ModelUpdate,
    UpdateAssembler,
    UpdateHead,
    peek_update,
)
from streams import metrics
from streams.retry import Backoff
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between checks of the model's age (a stale model is logged once per outage).
AGE_CHECK_S = 5.0


class ModelFollower:
    """Follows model-updates; scores with the newest model it applied (see the module).

    Parameters
    ----------
    settings
        The worker's settings (topic, broker, ``model_max_age_s``).
    config
        The trainer's model config (:func:`agents.trainer.model_config`); only its device
        may differ.
    """

    def __init__(self, settings: Settings, config: ModelConfig) -> None:
        self.settings = settings
        self._config = config
        self.replica = ModelReplica(config)
        self.assembler = UpdateAssembler()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="negstream-model")
        self.topic = settings.topic("model_updates")
        #: Next offset of model-updates to read; None until the reading start is found.
        self.position: int | None = None
        self.started = time.time()
        self.stale = False
        #: Chunks the assembler dropped so far (their update's end never came).
        self._dropped = 0
        #: Examples read that no applied update has learned (read on the event loop only).
        self.unlearned = UnlearnedExamples()
        self._unlearned_dropped = 0
        #: (lineage, version) of the last snapshot skipped unread.
        self._skipped: tuple[int, int] | None = None

    # --- what rescoring asks (agents.rescorer.Scorer) -------------------------------------

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def ready(self) -> bool:
        """Whether a snapshot has been applied."""
        return self.replica.version is not None

    @property
    def version(self) -> int | None:
        """Version of the model held; None before the first snapshot."""
        return self.replica.version

    def score(self, batch: CandidateBatch) -> tuple[list[float], int]:
        """p_negative of each candidate and the model version (on :attr:`executor`, where
        updates are applied too: the two always agree)."""
        version = self.replica.version
        if version is None:
            raise RuntimeError("no model received yet")
        return self.replica.p_negative(batch).tolist(), version

    async def predict(self, examples: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
        """The replica's predictions for ``examples`` (rows x heads), off the event loop;
        None before the first snapshot."""
        if not self.ready or not examples:
            return None
        loop = asyncio.get_running_loop()
        predictions: np.ndarray = await loop.run_in_executor(
            self.executor, self.replica.predict_many, examples
        )
        return predictions

    async def read_examples(
        self, records: Iterable[tuple[int, int, bytes | None]], seen: OrderedDict[str, None]
    ) -> tuple[list[tuple[int, int, dict[str, Any]]], np.ndarray | None]:
        """Decode training-example records ``(partition, offset, value)`` and predict them,
        both on the model thread, off the event loop (a batch of a thousand takes tens of
        milliseconds to decode).

        Returns ``(partition, offset, example)`` of each example whose id is not in ``seen``
        (ids are added; see :func:`agents.trainer.fresh_examples`), and the replica's
        predictions of those examples (rows x heads), None before the first snapshot.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._read_examples, list(records), seen)

    def _read_examples(
        self, records: list[tuple[int, int, bytes | None]], seen: OrderedDict[str, None]
    ) -> tuple[list[tuple[int, int, dict[str, Any]]], np.ndarray | None]:
        read = [
            (partition, offset, example)
            for partition, offset, value in records
            for example in fresh_examples([(offset, value)], seen)
        ]
        if self.replica.version is None or not read:
            return read, None
        return read, self.replica.predict_many([example for _, _, example in read])

    def age(self) -> float:
        """Seconds since the update the model is at was taken (since the start before one)."""
        created = self.replica.created or self.started
        return max(0.0, time.time() - created)

    # --- which examples the model held has learned -------------------------------------------

    def example_read(
        self, partition: int, offset: int, user_id: str, example_id: str
    ) -> list[Learned]:
        """Note an example read from training-examples (event loop); returns it at once when
        the model held has learned it already, else it waits for an update that does."""
        learned = self.unlearned.add(partition, offset, user_id, example_id)
        self._count_dropped()
        return learned

    def _count_dropped(self) -> None:
        dropped = self.unlearned.dropped - self._unlearned_dropped
        if dropped:
            metrics.UNLEARNED_DROPPED.inc(dropped)
            self._unlearned_dropped = self.unlearned.dropped

    # --- following the topic ----------------------------------------------------------------

    async def run(self, on_learned: Callable[[list[Learned]], None]) -> None:
        """Follow model-updates for ever; a failed client is replaced, reading on from the
        next offset not yet applied. After each applied update, ``on_learned`` gets the
        ``(user_id, example_id)`` of the examples read that its model learned (on the event
        loop)."""
        backoff = Backoff()
        watch = asyncio.create_task(self._watch_age(), name="model-age")
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._follow(on_learned)
                except KafkaError as error:
                    if time.monotonic() - started > 60:
                        backoff.reset()
                    delay = backoff.next_delay()
                    log.warning("model updates: reader restarts in %.1f s (%s)", delay, error)
                    await asyncio.sleep(delay)
        finally:
            watch.cancel()

    async def _follow(self, on_learned: Callable[[list[Learned]], None]) -> None:
        consumer = updates_consumer(self.settings, "model-follower")
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            if self.position is None:
                start, end = await reading_start(consumer, tp)
                self.position = start
                log.info(
                    "model updates: %s has %d records; reading from offset %d (newest "
                    "complete snapshot)", self.topic, end, start,
                )  # fmt: skip
            consumer.seek(tp, self.position)
            while True:
                fetched = await consumer.getmany(tp, timeout_ms=1000, max_records=16)
                records = fetched.get(tp, [])
                if records:
                    await self._read(consumer, tp, records, on_learned)
        finally:
            await consumer.stop()

    async def _read(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        on_learned: Callable[[list[Learned]], None],
    ) -> None:
        """Take ``records`` in order, up to the first chunk of a snapshot the replica holds
        already (:meth:`superseded`): then seek past that snapshot's chunks, unread. Chunks
        of the snapshot skipped last that still come (a copy sent again after a failure) are
        dropped as well."""
        taken = 0
        for at, record in enumerate(records):
            head = peek_update(record.value or b"")
            if head is None or head.kind != "snapshot":
                continue
            if head.index > 0:
                if (head.lineage, head.version) == self._skipped:
                    await self._take_records(records[taken:at], on_learned)
                    taken, self.position = at + 1, record.offset + 1
                continue
            # The replica's version is known once the records before this one are applied.
            await self._take_records(records[taken:at], on_learned)
            taken = at
            if self.superseded(head):
                metrics.MODEL_SNAPSHOTS_SKIPPED.inc()
                self._skipped = (head.lineage, head.version)
                self.position = record.offset + head.count
                consumer.seek(tp, self.position)
                log.debug("model updates: snapshot %d skipped (held already)", head.version)
                return
        await self._take_records(records[taken:], on_learned)

    async def _take_records(
        self,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        on_learned: Callable[[list[Learned]], None],
    ) -> None:
        if not records:
            return
        learned = await self.take([record.value or b"" for record in records])
        self.position = records[-1].offset + 1
        if learned:
            on_learned(learned)

    def superseded(self, head: UpdateHead) -> bool:
        """Whether the update ``head`` starts is a snapshot of a state the replica holds
        already: the same lineage, at a version it has reached through deltas."""
        replica = self.replica
        return (
            head.kind == "snapshot"
            and replica.version is not None
            and head.lineage == replica.lineage
            and head.version <= replica.version
        )

    async def take(self, chunks: list[bytes]) -> list[Learned]:
        """Apply the updates ``chunks`` complete (on the model thread); returns ``(user_id,
        example_id)`` of the examples read that an applied update's model learned."""
        loop = asyncio.get_running_loop()
        applied = await loop.run_in_executor(self.executor, self._take, chunks)
        learned: list[Learned] = []
        for offsets in applied:
            # An update of a trainer that does not name its offsets covers all read.
            learned += self.unlearned.learn(offsets or None)
        return learned

    def _take(self, chunks: list[bytes]) -> list[Mapping[int, int]]:
        """Assemble ``chunks`` and apply each update they complete (model thread); returns
        the learned offsets of each applied (:attr:`ModelUpdate.learned`)."""
        applied: list[Mapping[int, int]] = []
        for chunk in chunks:
            started = time.perf_counter()
            try:
                update = self.assembler.add(chunk)
            except ValueError as error:
                metrics.MODEL_UPDATES_REFUSED.labels("chunk").inc()
                log.warning("model updates: chunk refused (%s)", error)
                update = None
            if self.assembler.dropped != self._dropped:
                metrics.MODEL_UPDATES_REFUSED.labels("incomplete").inc(
                    self.assembler.dropped - self._dropped
                )
                self._dropped = self.assembler.dropped
            if update is not None and self._apply(update, started):
                applied.append(update.learned)
        return applied

    def _apply(self, update: ModelUpdate, started: float) -> bool:
        """Apply a complete update; ``started`` is when its last chunk came in. Whether it
        was applied."""
        replica = self.replica
        gaps = replica.refused_gaps
        try:
            applied = replica.apply(update)
        except ValueError as error:
            metrics.MODEL_UPDATES_REFUSED.labels("invalid").inc()
            log.error("model updates: version %d refused (%s)", update.version, error)
            return False
        if not applied:
            reason = "gap" if replica.refused_gaps > gaps else "stale"
            metrics.MODEL_UPDATES_REFUSED.labels(reason).inc()
            log.debug("model updates: %s %d refused (%s)", update.kind, update.version, reason)
            return False
        metrics.MODEL_UPDATES_APPLIED.labels(update.kind).inc()
        metrics.MODEL_APPLY_SECONDS.labels(update.kind).observe(time.perf_counter() - started)
        metrics.MODEL_VERSION.set(update.version)
        if update.kind == "snapshot":
            log.info(
                "model updates: snapshot of version %d applied (lineage %x)",
                update.version, update.lineage,
            )  # fmt: skip
        return True

    async def _watch_age(self) -> None:
        """Log once when the model gets older than ``model_max_age_s``, and when it is
        current again."""
        limit = self.settings.model_max_age_s
        while True:
            await asyncio.sleep(AGE_CHECK_S)
            age = self.age()
            if age > limit and not self.stale:
                self.stale = True
                log.warning(
                    "the scoring model is %.0f s old (NEGSTREAM_MODEL_MAX_AGE_S=%g): no update "
                    "from the trainer; scoring goes on with version %s",
                    age, limit, self.replica.version,
                )  # fmt: skip
            elif age <= limit and self.stale:
                self.stale = False
                log.info("the scoring model is current again (version %s)", self.replica.version)

    def close(self) -> None:
        """Stop the model thread (what it runs finishes)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
