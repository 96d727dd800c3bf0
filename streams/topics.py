"""Topic declarations: the topics the worker reads through Faust, declared once.

negstream's outputs (examples, scores, drift reports, dead letters, the users changelog)
are written by :class:`streams.output.OutputProducer` by name; every topic is created by
:mod:`streams.admin`.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust
from faust.types import TopicT

from streams.settings import Settings


@dataclass(frozen=True)
class Topics:
    """The topics Faust subscribes to. Values are raw bytes: negstream decodes and validates
    them itself, so that a malformed message becomes a dead letter instead of a crashed
    agent."""

    inputs: TopicT
    examples: TopicT


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    """Declare the read topics on ``app`` (bulk-read: see :mod:`streams.bulk`)."""

    def raw(*names: str) -> TopicT:
        return app.topic(
            *names,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
            retention=settings.retention_ms / 1000,
            internal=False,
        )

    topics = Topics(
        inputs=raw(settings.topic("impressions"), settings.topic("feedback")),
        examples=raw(settings.topic("examples")),
    )
    app.topics.add(topics.inputs)
    app.topics.add(topics.examples)
    return topics
