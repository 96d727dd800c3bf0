"""A consumer's fetch wait that grows while the broker answers empty and the consumer is behind.

The worker's consumers ask for a short fetch wait (``Settings.fetch_max_wait_ms``, 10 ms), so
that a broker that holds every fetch for the whole wait (Tansu 0.6.0 does) adds little latency.
Tansu also answers with only what it gathered before the wait ran out, and finding the fetch
offset in a partition scans the partition's batches: at about 20,000 small batches that scan
alone outlasts 10 ms. Every answer is then empty, and a consumer that is behind never catches
up. A restart with 100k users of table state never finished recovering its changelog (under
100 records/s), and an input partition past that size would stall the worker. On S3 storage
every batch is an object and the scan is slower still: with 3,000 batches a partition, a
1 s wait read 5 records/s and a 5 s wait 1,400/s.

So an empty answer while a fetched partition has records past the fetch offset doubles that
consumer's wait, up to :data:`MAX_FETCH_WAIT_MS`, and the configured wait comes back once
no fetched partition is behind. Apache Kafka answers as soon as records are there, so on it
the wait stays as configured.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import Fetcher

__all__ = ["MAX_FETCH_WAIT_MS", "install", "next_wait_ms"]

log = logging.getLogger(__name__)

#: Longest fetch wait the adaptation goes up to: long enough for Tansu to find the offset in
#: a partition of thousands of batches on S3 storage.
MAX_FETCH_WAIT_MS = 10_000


def next_wait_ms(current: int, configured: int, starved: bool, caught_up: bool) -> int:
    """The fetch wait for a consumer's next fetch, after an answer.

    ``starved``: the answer held no records although a fetched partition has records past its
    fetch offset. ``caught_up``: no partition the consumer reads has records past its position.

    Examples
    --------
    >>> next_wait_ms(10, 10, starved=True, caught_up=False)
    20
    >>> next_wait_ms(640, 10, starved=True, caught_up=False)
    1280
    >>> next_wait_ms(8000, 10, starved=True, caught_up=False)
    10000
    >>> next_wait_ms(80, 10, starved=False, caught_up=False)  # records came: keep it
    80
    >>> next_wait_ms(80, 10, starved=False, caught_up=True)
    10
    """
    if starved:
        return min(MAX_FETCH_WAIT_MS, max(1, current) * 2)
    if caught_up:
        return configured
    return current


_proc_fetch_request = Fetcher._proc_fetch_request


async def _adapt_fetch_wait(fetcher: Any, assignment: Any, node_id: int, request: Any) -> Any:
    configured: int = fetcher.__dict__.setdefault(
        "_negstream_configured_wait_ms", fetcher._fetch_max_wait_ms
    )
    result = await _proc_fetch_request(fetcher, assignment, node_id, request)
    if not assignment.active:
        return result
    got = starved = False
    for topic, partitions in request.topics:
        for partition, offset, _ in partitions:
            tp = TopicPartition(topic, partition)
            got = got or tp in fetcher._records
            highwater = assignment.state_value(tp).highwater
            starved = starved or (highwater is not None and highwater > offset)
    starved = starved and not got
    # Caught up is judged over every partition being read, not this fetch's: a fetch may
    # carry only partitions whose records were all handed out while others are behind.
    caught_up = True
    for tp in assignment.tps:
        state = assignment.state_value(tp)
        if state.paused or not state.has_valid_position or state.highwater is None:
            continue
        if state.highwater > state.position:
            caught_up = False
            break
    current: int = fetcher._fetch_max_wait_ms
    wait = next_wait_ms(current, configured, starved, caught_up)
    if wait != current:
        log.log(
            logging.INFO if current == configured else logging.DEBUG,
            "fetch wait %d -> %d ms (%s)",
            current,
            wait,
            "broker answered empty while records wait" if wait > current else "caught up",
        )
        fetcher._fetch_max_wait_ms = wait
    return result


def install() -> None:
    """Adapt the fetch wait of every aiokafka consumer in this process (idempotent)."""
    Fetcher._proc_fetch_request = _adapt_fetch_wait
