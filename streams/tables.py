"""Table declarations: the per-user state table and its changelog."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import faust
from faust.streams import _current_event
from faust.types import TableT

from streams.settings import Settings


def declare_users_table(app: faust.App, settings: Settings) -> TableT[str, Any]:
    """Per-user state (windowed counters, dedupe ids, pending labels), keyed by user_id.

    Windows live inside each value as event-time buckets that expire with the user's clock
    (see :mod:`agents.windows`), so one batch writes one changelog record per user.
    """
    # Keys and values use Faust's json codec, which is orjson when installed.
    return app.Table(
        f"{settings.topic_prefix}users",
        default=None,
        partitions=settings.partitions,
        help="per-user negative-feedback state",
    )


@dataclass(frozen=True)
class _SourceMessage:
    topic: str
    partition: int


@dataclass(frozen=True)
class _SourcePartition:
    message: _SourceMessage


@contextlib.contextmanager
def partition_context(topic: str, partition: int) -> Iterator[None]:
    """Route table writes made inside the block to the changelog partition ``partition``.

    Faust picks a table write's changelog partition from the event being processed. A
    micro-batch (``stream.take_events``) has no single current event, so the batch names the
    source partition of the user it writes; sends must stay outside the block.
    """
    source: Any = _SourcePartition(_SourceMessage(topic, partition))
    token = _current_event.set(weakref.ref(source))
    try:
        yield
    finally:
        _current_event.reset(token)
