"""Routes the records of bulk-read topics from Faust's consumer to their :class:`BulkSource`.

Upstream behaviour: ``faust.transport.consumer.Consumer.getmany`` yields every fetched record
to ``_drain_messages``, which gives each its own task, channel put and stream step
(see :mod:`streams.bulk` for what that cost). This wrapper keeps Faust's own bookkeeping
(read offset, gaps) and appends the records of topics that have a ``BulkSource`` to it.
It can go when Faust offers a batch consumer path for a subscribed topic.

A source that is full takes its partitions out of the consumer's fetches until its reader
has taken it below half (``Consumer.on_buffer_full``). Faust's fetch loop then asks the
broker for the other partitions only, waiting up to 1 s for their records, or sleeps 1 s
when no partition is left: the partitions that resume meanwhile wait for that to end, and
their reader runs dry. At a backlog that stalled the input reader for 0.3-0.7 s every
1.5-2 s, a quarter to a third of its time. So while a source holds partitions paused, a
fetch waits at most :data:`RESUME_POLL_S`, and with no partition left to fetch the loop
waits that long at a time for one to resume instead of the 1 s sleep.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport.consumer import Consumer

__all__ = ["RESUME_POLL_S", "install"]

#: The longest a fetch waits while a bulk source holds partitions paused (seconds).
RESUME_POLL_S = 0.01

_getmany = Consumer.getmany


async def _getmany_with_bulk_sources(consumer: Any, timeout: float) -> Any:
    # Faust's own bookkeeping for each record of a bulk topic, as ``_drain_messages`` does
    # before it hands a record to the conductor: the read offset, and a gap in the offsets
    # (compacted records, transaction markers) that the commit may pass over.
    sources = consumer.app.__dict__.get("negstream_bulk_sources")
    if not sources:
        async for item in _getmany(consumer, timeout):
            yield item
        return
    if any(source.paused for source in sources.values()):
        timeout = min(timeout, RESUME_POLL_S)
        while (
            not consumer._get_active_partitions()
            and any(source.paused for source in sources.values())
            and consumer.flow_active
            and not consumer.should_stop
        ):
            await asyncio.sleep(RESUME_POLL_S)
    read_offset = consumer._read_offset
    async for tp, message in _getmany(consumer, timeout):
        source = sources.get(tp.topic)
        if source is None:
            yield tp, message
            continue
        offset = message.offset
        last = read_offset[tp]
        if last is not None and offset < last:
            continue
        if last and offset - last > 1:
            await consumer._add_gap(tp, last + 1, offset)
        source.put(tp, message)
        read_offset[tp] = offset
    commit_every = consumer._commit_every
    if commit_every is not None and consumer._n_acked >= commit_every:
        consumer._n_acked = 0
        await consumer.commit()


def install() -> None:
    """Route the records of topics that have a ``BulkSource`` to it (idempotent)."""
    if Consumer.getmany is not _getmany_with_bulk_sources:
        Consumer.getmany = _getmany_with_bulk_sources  # type: ignore[assignment,method-assign]
