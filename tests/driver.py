"""The worker's input pipeline run in-process: the same fold loop, watermarks and encoder,
with a dict users store, captured outputs and a wall clock the caller moves.

Benchmarks and property tests build examples through this, so they measure and check the
worker's own code, in the worker's order (batches of ``batch_size`` as read).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import orjson

from agents.delivery import Step
from agents.encoder import OutputEncoder
from agents.pipeline import InputPipeline
from agents.watermarks import Watermarks
from agents.wiring import state_config, users_store
from streams.privacy import Pseudonymizer
from streams.settings import Settings

#: Wall time the inputs stay quiet at the end of a run.
QUIET_FOR_S = 90 * 86_400.0


@dataclass
class Captured:
    """Everything the pipeline published, decoded, in publication order."""

    examples: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0


class _Delivery:
    """Takes each step's outputs at once (the broker is not part of what is measured); keeps
    them decoded unless ``capture`` is off."""

    def __init__(self, settings: Settings, capture: bool = True) -> None:
        self.captured = Captured()
        self.capture = capture
        self.topics = {
            settings.topic("examples"): self.captured.examples,
            settings.topic("scores"): self.captured.updates,
            settings.topic("dead_letters"): self.captured.dead_letters,
        }

    async def queue(self, step: Step) -> None:
        self.captured.steps += 1
        if not self.capture:
            return
        for record in step.outputs:
            target = self.topics.get(record.topic)
            if target is not None:
                target.append(orjson.loads(record.value))

    async def flush(self) -> None:
        return None


class FoldDriver:
    """Feeds raw input records to an :class:`InputPipeline` a batch at a time."""

    def __init__(self, settings: Settings | None = None, capture: bool = True) -> None:
        self.settings = settings or Settings()
        self.clock = 0.0
        self.watermarks = Watermarks(
            self.settings.topic("impressions"),
            self.settings.topic("feedback"),
            self.settings.watermark_delay_s,
            self.settings.idle_flush_s,
            wall=lambda: self.clock,
        )
        self.users = users_store(SimpleNamespace(data={}))
        self.delivery = _Delivery(self.settings, capture)
        self.pipeline = InputPipeline(
            self.settings,
            state_config(self.settings),
            self.users,
            self.watermarks,
            OutputEncoder(self.settings, Pseudonymizer(self.settings.pseudonymize_key)),
            self.delivery,  # type: ignore[arg-type]
        )
        self.offsets: dict[tuple[str, int], int] = {}

    @property
    def captured(self) -> Captured:
        """What was published so far."""
        return self.delivery.captured

    def message(self, topic: str, key: bytes | None, value: bytes, partition: int = 0) -> Any:
        """A consumed record as the bulk reader hands it over (its offset assigned here)."""
        name = self.settings.topic(topic)
        offset = self.offsets.get((name, partition), 0)
        self.offsets[(name, partition)] = offset + 1
        return SimpleNamespace(
            topic=name, partition=partition, offset=offset, key=key, value=value,
            timestamp=time.time(),
        )  # fmt: skip

    async def feed(self, messages: list[Any], wall_step_s: float = 0.001) -> None:
        """Process ``messages`` as one micro-batch; the wall clock moves ``wall_step_s``."""
        self.clock += wall_step_s
        await self.pipeline.process(messages)

    async def finish(self) -> None:
        """Both inputs go quiet for long: event time runs on past every label window (an
        input whose clock lags the other's by hours runs on from its own clock)."""
        consumer = _QuietConsumer(self.offsets)
        self.watermarks.check_inputs(consumer)
        self.clock += QUIET_FOR_S
        self.watermarks.check_inputs(consumer)
        await self.pipeline.on_idle_tick()

    def run(
        self,
        records: Iterable[tuple[str, bytes | None, bytes, int]],
        batch_sizes: Iterable[int] | None = None,
    ) -> Captured:
        """Feed ``(topic setting, key, value, partition)`` records in order, in batches of
        ``batch_size`` (or the sizes ``batch_sizes`` gives, cycled), then :meth:`finish`;
        return what was published."""
        sizes = itertools.cycle(batch_sizes or [self.settings.batch_size])

        async def go() -> None:
            batch: list[Any] = []
            size = next(sizes)
            for topic, key, value, partition in records:
                batch.append(self.message(topic, key, value, partition))
                if len(batch) >= size:
                    await self.feed(batch)
                    batch, size = [], next(sizes)
            if batch:
                await self.feed(batch)
            await self.finish()

        asyncio.run(go())
        return self.captured


class _QuietConsumer:
    """A consumer with nothing left to read: each input's end is the next offset."""

    def __init__(self, offsets: dict[tuple[str, int], int]) -> None:
        self.offsets = offsets
        self._committed_offset: dict[Any, int] = {}

    def highwater(self, tp: Any) -> int:
        return self.offsets.get((tp.topic, tp.partition), 0)
