"""The shared trainer's model updates: taken on the model thread, encoded, then published."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace

from agents.model_topic import UpdatePublisher
from model import ModelUpdate, OnlineModel, encode_update
from model.sync import take_update
from streams.settings import Settings

log = logging.getLogger(__name__)


class TrainerUpdates:
    """Takes the model's updates and publishes them on model-updates (rank 0 of the shared
    trainer).

    Every ``model_sync_s`` the model thread takes an update (:func:`model.sync.take_update`;
    the thread stops learning only for that copy), another thread cuts it into chunks, and
    the event loop writes them (:mod:`agents.model_topic` explains the keys that let a reader
    skip to the newest snapshot). The first update after a start is a full snapshot of a new
    lineage; the others are deltas, and every ``model_snapshot_every``-th delta is followed by
    a full snapshot of the same version, for readers that start from it (a reader that
    applied the delta skips it unread). An update is published even when nothing was
    learned, so the replicas' model age says whether the trainer is alive. Each update names,
    per partition read, the last offset learned (``learned()``; -1: none yet), so a worker
    rescores an example's user once its model has learned the example. While the broker is
    away the same update is sent again until it is taken; learning goes on, and the next
    delta carries everything since.
    """

    def __init__(
        self,
        settings: Settings,
        model: OnlineModel,
        model_thread: Executor,
        learned: Callable[[], dict[int, int]],
        publisher: UpdatePublisher,
    ) -> None:
        self.settings = settings
        self.model = model
        self.model_thread = model_thread
        self.learned = learned
        self.publisher = publisher
        self.encoder_thread = ThreadPoolExecutor(1, thread_name_prefix="negstream-encoder")
        self.updates_taken = 0

    def take(self) -> list[ModelUpdate]:
        """The next updates (model thread): a full snapshot first; then a delta, followed
        every ``model_snapshot_every``-th time by a full snapshot of the same version.

        A replica that applied the delta holds that snapshot's state already and skips it
        unread (:class:`agents.model_follower.ModelFollower`); the snapshot is there for
        readers that start from it. Each update names the offsets learned so far, so a
        worker knows which of its examples the update's model has learned.
        """
        learned = self.learned()
        if self.updates_taken == 0:
            taken = [take_update(self.model, True)]
        else:
            taken = [take_update(self.model, False)]
            if self.updates_taken % self.settings.model_snapshot_every == 0:
                taken.append(take_update(self.model, True))
        self.updates_taken += 1
        return [replace(update, learned=learned) for update in taken]

    async def run(self, first: list[ModelUpdate]) -> None:
        """Publish ``first``, then the updates :meth:`take` gives every ``model_sync_s``."""
        loop = asyncio.get_running_loop()
        updates: list[ModelUpdate] | None = first
        while True:
            started = time.monotonic()
            if updates is None:
                updates = await loop.run_in_executor(self.model_thread, self.take)
            for update in updates:
                chunks = await loop.run_in_executor(self.encoder_thread, encode_update, update)
                await self.publisher.publish(update, chunks)
                if update.kind == "snapshot":
                    log.info(
                        "published snapshot of version %d: %d chunks, %.1f MB",
                        update.version, len(chunks), sum(map(len, chunks)) / 1e6,
                    )  # fmt: skip
            updates = None
            await asyncio.sleep(max(0.0, self.settings.model_sync_s - (time.monotonic() - started)))

    def close(self) -> None:
        """Stop the encoder thread, dropping any chunks still to cut."""
        self.encoder_thread.shutdown(wait=False, cancel_futures=True)
