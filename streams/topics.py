"""Topic declarations: every topic negstream reads or writes, declared once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TopicT

from streams.output import OutputProducer
from streams.settings import Settings


@dataclass(frozen=True)
class Topics:
    """The app's topics. Values are raw bytes: negstream decodes and validates them itself,
    so that a malformed message becomes a dead letter instead of a crashed agent."""

    inputs: TopicT
    examples: TopicT
    scores: TopicT
    drift: TopicT
    dead_letters: TopicT
    outputs: OutputProducer

    async def publish(
        self, topic: TopicT, key: bytes | None, value: bytes, partition: int | None = None
    ) -> asyncio.Future[Any]:
        """Send one output record through the batching producer.

        Returns the delivery future: await it (or gather many) to know the broker has it.
        """
        return await self.outputs.send(topic.get_topic_name(), key, value, partition)

    @property
    def impressions_name(self) -> str:
        """Name of the impressions topic (the first input)."""
        return self.inputs.topics[0]


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    """Declare the topics on ``app``; they are created by :mod:`streams.admin`."""

    def raw(*names: str) -> TopicT:
        return app.topic(
            *names,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
            retention=settings.retention_ms / 1000,
            internal=False,
        )

    return Topics(
        inputs=raw(settings.topic("impressions"), settings.topic("feedback")),
        examples=raw(settings.topic("examples")),
        scores=raw(settings.topic("scores")),
        drift=raw(settings.topic("drift")),
        dead_letters=raw(settings.topic("dead_letters")),
        outputs=OutputProducer(settings),
    )
