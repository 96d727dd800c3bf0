"""Patches of Faust's consumer: the fetch wait, fetches across a rebalance, commits past a
message in flight. Each names the upstream behaviour and when it can go."""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer


def _with_fetch_wait(thread: Any, transport: Any) -> Any:
    # Faust fixes the consumer's fetch wait at 1.5 s. A broker that holds a fetch for the
    # whole wait when little data is ready (Tansu does) adds that wait to every hop from
    # producer to worker; ``fetch_max_wait_ms`` on the app shortens it.
    consumer = _create_worker_consumer(thread, transport)
    wait = getattr(thread.app, "negstream_fetch_max_wait_ms", None)
    if wait is not None:
        consumer._fetch_max_wait_ms = wait
    return consumer


_wait_next_records = Consumer._wait_next_records


async def _drop_fetches_across_a_rebalance(consumer: Any, timeout: float) -> Any:
    # A fetch sent before a rebalance can answer after it, from the position the consumer
    # had before it was sought back to the committed offsets. Faust takes its records for
    # the new generation: it sees the offsets it skips as a gap, counts them as processed
    # and commits past them, and drops them when they are fetched again. Records of the
    # committed (input) topics fetched across a rebalance are dropped here instead; the
    # rebalance seeks those partitions to their committed offsets, so they are fetched
    # again. Other records (table recovery reading a changelog) are kept.
    generation = consumer.app.consumer_generation_id
    records, active = await _wait_next_records(consumer, timeout)
    if records and consumer.app.consumer_generation_id != generation:
        committed = consumer.app.topics.acks_enabled_for
        records = {tp: batch for tp, batch in records.items() if not committed(tp.topic)}
    return records, active


_new_offset = Consumer._new_offset
_filter_committable_offsets = Consumer._filter_committable_offsets


def lowest_in_flight(consumer: Any) -> dict[Any, int]:
    """Per partition, the lowest offset of a tracked message not acked yet."""
    lowest: dict[Any, int] = {}
    for message in list(consumer._unacked_messages):
        if not message.acked:
            tp, offset = message.tp, message.offset
            if offset < lowest.get(tp, offset + 1):
                lowest[tp] = offset
    return lowest


def _never_past_a_message_in_flight(consumer: Any, tp: Any) -> int | None:
    # Faust commits the first run of consecutive acked offsets, and takes a single missing
    # offset at the head of that run for a hole in the log (a compacted record, a
    # transaction marker). When the missing one is a message still being processed, the
    # commit passes it and a restart or rebalance never delivers it again
    # (faust-streaming/faust#606). Nothing is committed while a tracked, unacked message
    # of the partition lies below every acked offset.
    acked = consumer._acked.get(tp)
    if acked:
        lowest = consumer.__dict__.get("_negstream_lowest_in_flight")
        in_flight = (lowest if lowest is not None else lowest_in_flight(consumer)).get(tp)
        if in_flight is not None and in_flight < min(acked):
            return None
    result: int | None = _new_offset(consumer, tp)
    return result


def _in_flight_read_once(consumer: Any, tps: Any) -> Any:
    # A commit asks for every partition's offset in turn: the messages in flight (thousands
    # while a backlog is processed) are read once for all of them, not once each.
    consumer.__dict__["_negstream_lowest_in_flight"] = lowest_in_flight(consumer)
    try:
        return _filter_committable_offsets(consumer, tps)
    finally:
        consumer.__dict__.pop("_negstream_lowest_in_flight", None)


def install() -> None:
    """Install the consumer patches (idempotent)."""
    # Upstream: Faust fixes the worker consumer's fetch wait at 1.5 s. Can go once Faust
    # exposes ``fetch_max_wait_ms`` as an app setting.
    if AIOKafkaConsumerThread._create_worker_consumer is not _with_fetch_wait:
        AIOKafkaConsumerThread._create_worker_consumer = _with_fetch_wait  # type: ignore[method-assign,assignment]
    # Upstream: Faust takes records fetched before a rebalance for the new generation.
    # Can go when Faust drops fetches of an older generation itself.
    if Consumer._wait_next_records is not _drop_fetches_across_a_rebalance:
        Consumer._wait_next_records = _drop_fetches_across_a_rebalance  # type: ignore[method-assign,assignment]
    # Upstream: faust-streaming/faust#606. Can go when that issue is fixed.
    if Consumer._new_offset is not _never_past_a_message_in_flight:
        Consumer._new_offset = _never_past_a_message_in_flight  # type: ignore[method-assign,assignment]
    if Consumer._filter_committable_offsets is not _in_flight_read_once:
        Consumer._filter_committable_offsets = _in_flight_read_once  # type: ignore[method-assign,assignment]
