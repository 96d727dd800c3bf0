"""The shared trainer (``negstream trainer``): one model learned from every partition of
``training-examples``, streamed to the scoring workers as updates on ``model-updates``.

Reading. A plain consumer assigned every partition of training-examples (no group
membership: nothing to rebalance), in the group ``<app_id>-trainer`` only to commit offsets
for lag tools. Where to resume is the checkpoint's business: a checkpoint holds the model,
its optimisers and, per partition, the last offset its state covers, and the trainer seeks
to the next ones at start (the log's start without a checkpoint). It commits only what a
checkpoint covers. An example copy published again by a worker (at-least-once) is dropped
by its ``example_id``; the newest ids go into each checkpoint. So after a kill and a
restart every example is in the model once: what the lost state had learned since the
checkpoint is learned again, by the checkpoint's state.

Learning. Test-then-train batches (as a worker's :class:`agents.trainer.Trainer` does) on one
model thread, never the event loop; the model marks the rows each batch writes
(:class:`model.touched.TouchedRows`).

Publishing. Every ``model_sync_s`` an update of the model (a full snapshot first, then
deltas) goes out on ``model-updates``, each naming the offsets learned so far
(:class:`agents.trainer_updates.TrainerUpdates`).

Data-parallel (``NEGSTREAM_TRAINER_WORLD`` > 1). ``world`` trainer processes join one
``torch.distributed`` group (gloo on cpu, nccl on cuda; :mod:`model.distributed`) and hold
one model: rank ``r`` reads the partitions ``p % world == r``, and every learning step is
over all ranks' examples (gradients summed, the wide part's batch gathered), so the ranks'
models stay equal. The ranks step in lockstep: each fetches what it has (waiting at most
:data:`IDLE_FETCH_S`), then all take the step, those without examples with an empty batch.
At each step they also agree on whether to checkpoint (any rank due) and to stop (any rank
asked). Rank 0 alone publishes updates and writes checkpoints, holding every rank's offsets
and recent example ids; at start it reads the newest and sends it to the others. A rank that
fails or stays away longer than ``NEGSTREAM_TRAINER_PEER_TIMEOUT_S`` fails the others' next
step: every rank stops without a checkpoint, and restarted they resume from the last one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from agents.model_topic import UpdatePublisher
from agents.trainer import (
    CHECKPOINTED_IDS,
    CheckpointClock,
    fresh_examples,
    model_config,
    restore,
)
from agents.trainer_updates import TrainerUpdates
from model import CheckpointStore, ExampleBatch, OnlineModel, TouchedRows
from model.distributed import LOCAL, Collective
from model.monitor.prequential import Prequential
from streams import metrics
from streams.app import broker_credentials
from streams.output import OutputProducer
from streams.retry import Backoff
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Longest one fetch waits for examples when none are there (checkpoint checks run between).
IDLE_FETCH_S = 1.0

#: ``(partition, offset, value)`` of one training-examples record.
Record = tuple[int, int, bytes | None]


def shared_partitions(partitions: int, rank: int = 0, world: int = 1) -> list[int]:
    """The partitions of training-examples trainer ``rank`` of ``world`` reads.

    Examples
    --------
    >>> shared_partitions(4), shared_partitions(8, rank=1, world=3)
    ([0, 1, 2, 3], [1, 4, 7])
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of {world}")
    return [partition for partition in range(partitions) if partition % world == rank]


class TrainerService:
    """Learns from ``partitions`` of training-examples and publishes the model's updates.

    Call :meth:`run` in an event loop; :meth:`stop` ends it with a checkpoint. ``group``: the
    data-parallel ranks this one learns with (then ``partitions`` defaults to its share).
    """

    def __init__(
        self,
        settings: Settings,
        partitions: Sequence[int] | None = None,
        group: Collective = LOCAL,
    ) -> None:
        self.settings = settings
        self.group = group
        torch.set_num_threads(max(1, settings.torch_threads))
        self.model = self._new_model()
        self.store = CheckpointStore(settings.trainer_checkpoint_dir)
        self.topic = settings.topic("examples")
        self.partitions = list(
            shared_partitions(settings.partitions, group.rank, group.world)
            if partitions is None
            else partitions
        )
        #: Per partition, the last offset learned (or skipped) from.
        self.offsets: dict[int, int] = {}
        self.seen: OrderedDict[str, None] = OrderedDict()
        self._resume()
        self.prequential = Prequential(self.model)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="negstream-trainer")
        self.outputs = OutputProducer(settings, "model-updates")
        self.publisher = UpdatePublisher(settings, self.outputs)
        self.updates = TrainerUpdates(
            settings, self.model, self.model_thread, self._learned, self.publisher
        )
        self.saved_version = self.model.version
        self.clock = CheckpointClock(settings)
        self._stopping: asyncio.Event | None = None
        metrics.MODEL_VERSION.set(self.model.version)

    def _new_model(self) -> OnlineModel:
        group = None if self.group.world == 1 else self.group
        return OnlineModel(model_config(self.settings), changes=TouchedRows(), group=group)

    def _resume(self) -> None:
        # Loading restarts the model's lineage: the first update is a full snapshot.
        state = None
        if self.group.rank == 0:
            self.model, state = restore(self.store, self.model, self._new_model)
        if self.group.world > 1:
            # Every rank starts from rank 0's checkpoint (or, with none, the same fresh model).
            state = self.group.broadcast(state)
            if state is not None and self.group.rank != 0:
                self.model.load_state_dict(state["model"])
        if state is None:
            return
        offsets = {int(p): int(o) for p, o in state.get("offsets", {}).items()}
        self.offsets = {p: offsets[p] for p in self.partitions if p in offsets}
        self.seen = OrderedDict.fromkeys(state.get("seen_examples", []))

    def stop(self) -> None:
        """Ask :meth:`run` to checkpoint and return (call on the event loop's thread)."""
        if self._stopping is not None:
            self._stopping.set()

    async def run(self) -> None:
        """Learn (and on rank 0 publish) until :meth:`stop`; then checkpoint and close the
        clients.

        A failure of learning or publishing, or of another rank, ends it without a
        checkpoint (a restart resumes from the last one) and is raised.
        """
        self._stopping = asyncio.Event()
        consumer = self._consumer()
        await consumer.start()
        failed = True
        publishes = self.group.rank == 0
        try:
            if publishes:
                await self.publisher.start()
            await self._seek(consumer)
            log.info(
                "negstream trainer %d of %d: %d partitions of %s from offsets %s, model "
                "version %d on %s; %s",
                self.group.rank, self.group.world, len(self.partitions), self.topic,
                self._resume_offsets(), self.model.version, self.model.device,
                f"an update to {self.publisher.topic} every {self.settings.model_sync_s:g}s, "
                f"a snapshot every {self.settings.model_snapshot_every}"
                if publishes else "rank 0 publishes",
            )  # fmt: skip
            tasks = []
            if publishes:
                # The first update, taken before any learning: the state the trainer resumed.
                loop = asyncio.get_running_loop()
                first = await loop.run_in_executor(self.model_thread, self.updates.take)
                tasks.append(asyncio.create_task(self.updates.run(first), name="trainer-publish"))
            tasks.append(asyncio.create_task(self._learn_loop(consumer), name="trainer-learn"))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for finished in done:
                error = None if finished.cancelled() else finished.exception()
                if error is not None:
                    raise error
            # The learning loop returns only once stopped, after its last checkpoint.
            failed = False
        finally:
            if failed:
                log.error("the trainer stops without a checkpoint; it resumes from the last one")
            await self.outputs.stop()
            await consumer.stop()
            self.updates.close()
            self.model_thread.shutdown(wait=True)

    def _consumer(self) -> AIOKafkaConsumer:
        settings = self.settings
        return AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=f"{settings.app_id}-trainer",
            group_id=settings.trainer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            max_poll_records=settings.train_batch_size,
            **credentials_to_aiokafka_auth(broker_credentials(settings)),
        )

    async def _seek(self, consumer: AIOKafkaConsumer) -> None:
        """Assign the partitions; each resumes after the offset its checkpoint covers."""
        tps = [TopicPartition(self.topic, partition) for partition in self.partitions]
        consumer.assign(tps)
        for tp in tps:
            if tp.partition in self.offsets:
                consumer.seek(tp, self.offsets[tp.partition] + 1)
            else:
                await consumer.seek_to_beginning(tp)

    def _resume_offsets(self) -> dict[int, int]:
        return {p: self.offsets[p] + 1 if p in self.offsets else 0 for p in self.partitions}

    def _learned(self) -> dict[int, int]:
        """Per partition read, the last offset learned (or skipped) from; -1: none yet."""
        return {partition: self.offsets.get(partition, -1) for partition in self.partitions}

    # --- learning ------------------------------------------------------------------------

    async def _learn_loop(self, consumer: AIOKafkaConsumer) -> None:
        """Fetch and take a step until stopped (every rank together), checkpointing when due
        and once more at the stop. The next records are fetched while the model thread takes
        a step on the previous ones; a stop drops them unlearned (a restart reads them again
        after the checkpoint's offsets)."""
        loop = asyncio.get_running_loop()
        assert self._stopping is not None
        fetching = asyncio.ensure_future(self._fetch(consumer))
        try:
            while True:
                records = await fetching
                started = time.perf_counter()
                # Shielded: the step runs on (and the other ranks wait for it) even if this
                # task is cancelled; a stop waits for it on the model thread.
                step = loop.run_in_executor(
                    self.model_thread, self._step, records, self._stopping.is_set()
                )
                fetching = asyncio.ensure_future(self._fetch(consumer))
                learned, covered, stop = await asyncio.shield(step)
                if learned:
                    self._observe(learned, time.perf_counter() - started)
                # Data-parallel, other ranks' examples move the version too.
                metrics.MODEL_VERSION.set(self.model.version)
                self._report_lag(consumer)
                if covered is not None:
                    await self._commit(consumer, covered)
                if stop:
                    return
        finally:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)

    def _step(
        self, records: list[Record], stopping: bool
    ) -> tuple[int, dict[int, int] | None, bool]:
        """Learn ``records`` (an empty step when none), then checkpoint if any rank is due or
        stopping (model thread): how many this rank learned, the offsets a checkpoint
        covers (None: none was written), and whether to stop."""
        learned = self._learn(records)
        steps = self.model.version - self.saved_version
        due = steps > 0 and self.clock.due(steps)
        stop, due = self.group.any(stopping, due)
        covered = self._save() if due or stop else None
        return learned, covered, stop

    async def _fetch(self, consumer: AIOKafkaConsumer) -> list[Record]:
        """Up to ``train_batch_size`` records, waiting at most ``train_max_wait_s`` for more
        once the first arrived (and at most :data:`IDLE_FETCH_S` for a first)."""
        size = self.settings.train_batch_size
        records: list[Record] = []
        backoff = Backoff()
        deadline: float | None = None
        while len(records) < size:
            wait = IDLE_FETCH_S if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                fetched = await consumer.getmany(
                    timeout_ms=int(wait * 1000), max_records=size - len(records)
                )
            except KafkaError as error:
                delay = backoff.next_delay()
                log.warning("trainer fetch failed (%s); again in %.1f s", error, delay)
                await asyncio.sleep(delay)
                continue
            for tp, batch in fetched.items():
                records += [(tp.partition, record.offset, record.value) for record in batch]
            if deadline is None:
                if not records:
                    return records
                deadline = time.monotonic() + self.settings.train_max_wait_s
            if time.monotonic() >= deadline:
                break
        return records

    def _learn(self, records: list[Record]) -> int:
        """Test-then-train on the records' new examples (model thread); how many learned.
        Data-parallel, this rank's part of the step, empty when it has none."""
        for partition, offset, _ in records:
            self.offsets[partition] = max(offset, self.offsets.get(partition, -1))
        examples = fresh_examples(((offset, value) for _, offset, value in records), self.seen)
        try:
            batch = ExampleBatch.from_examples(examples, self.model.config)
        except (KeyError, TypeError, ValueError):
            batch = self._valid_only(examples)
        if len(batch):
            self.prequential.update(batch)
        else:
            self.model.learn_many(batch)
        return len(batch)

    def _valid_only(self, examples: list[dict[str, Any]]) -> ExampleBatch:
        """The batch of the examples that make one on their own; the others are logged."""
        valid = []
        for example in examples:
            try:
                ExampleBatch.from_examples([example], self.model.config)
            except (KeyError, TypeError, ValueError) as error:
                log.warning("skipping training example %r: %s", example.get("example_id"), error)
                continue
            valid.append(example)
        return ExampleBatch.from_examples(valid, self.model.config)

    def _observe(self, learned: int, elapsed: float) -> None:
        metrics.TRAIN_BATCH_SECONDS.observe(elapsed)
        metrics.TRAIN_EXAMPLES.inc(learned)
        metrics.TRAIN_EXAMPLES_PER_SECOND.set(learned / max(elapsed, 1e-9))
        for name, value in self.prequential.get().items():
            head, metric = name.split("/")
            if np.isfinite(value):
                metrics.PREQUENTIAL.labels(head, metric).set(value)

    def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        lag = 0
        for partition in self.partitions:
            end = consumer.highwater(TopicPartition(self.topic, partition))
            if end is not None:
                lag += max(0, end - self.offsets.get(partition, -1) - 1)
        metrics.TRAINER_LAG.set(lag)

    # --- checkpoints -----------------------------------------------------------------------

    async def _commit(self, consumer: AIOKafkaConsumer, covered: dict[int, int]) -> None:
        """Commit the offsets a checkpoint covers (for lag tools: the checkpoint has them)."""
        if not covered:
            return
        try:
            await consumer.commit(
                {TopicPartition(self.topic, p): offset + 1 for p, offset in covered.items()}
            )
        except KafkaError as error:
            log.warning("trainer offsets not committed (%s); the checkpoint has them", error)

    def _save(self) -> dict[int, int]:
        """Write model, optimisers, offsets and recent example ids (model thread; every
        rank at once, rank 0 writes them all); this rank's offsets it covers."""
        started = time.perf_counter()
        offsets = dict(self.offsets)
        every = self.group.gather_objects((offsets, list(self.seen)[-CHECKPOINTED_IDS:]))
        if every is not None:
            covered: dict[int, int] = {}
            seen: list[str] = []
            for rank_offsets, rank_seen in every:
                covered.update(rank_offsets)
                seen += rank_seen
            # Written out before the model learns again (both on the model thread), so the
            # live tensors are saved as they are, not copied first.
            self.store.save(
                {
                    "model": self.model.state_dict(copy=False),
                    "offsets": covered,
                    "seen_examples": seen,
                }
            )
            metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
            metrics.CHECKPOINT_TIMESTAMP.set(time.time())
        # Offsets are committed only once rank 0 has written the checkpoint covering them.
        self.group.barrier()
        self.saved_version = self.model.version
        # Every rank times the whole exchange (the others wait for rank 0's write), so all
        # space the next one alike.
        self.clock.written(started)
        return offsets
