"""Topic declarations: every topic negstream reads or writes, declared once."""

from __future__ import annotations

from dataclasses import dataclass

import faust
from faust.types import TopicT

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
    )
