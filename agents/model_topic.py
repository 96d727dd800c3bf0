"""The model-updates topic: how the trainer writes model updates and where a reader starts.

Layout
------
One partition, written by one trainer. Each update the trainer takes
(:func:`model.sync.take_update`, a full snapshot or a delta) is cut into chunks
(:func:`model.update.encode_update`, at most 900 KiB each) and written in order, one chunk a
record. Every chunk says which update it belongs to and where in it it goes, so a reader
feeds the records in offset order to one :class:`~model.update_reader.UpdateAssembler` and
applies each update it completes to a :class:`~model.sync.ModelReplica`, which takes a
snapshot whatever it held and a delta only on top of the version it was taken against.

Skipping what a snapshot supersedes
-----------------------------------
The broker keeps every record until retention deletes it (Tansu never compacts, and a
compacted topic would not keep the deltas after a snapshot anyway), so a reader must not
start at the beginning. Every record's key names the offset of the first chunk of the newest
*complete* snapshot at the time it was written: ``b"snapshot=<offset>"`` (``-1``: none yet).
A snapshot becomes complete once the broker has acknowledged all of its chunks; its own
chunks still name the previous one, and the records after it name it. A reader that starts:

1. reads the partition's last record (one fetch at the end offset minus one);
2. seeks to the offset its key names (the log's start for ``-1``, or when retention has
   deleted it);
3. reads on from there: that snapshot, the deltas after it, and whatever comes next.

So a start reads one snapshot and at most one snapshot interval of deltas, however long the
topic. Later snapshots follow the delta of their version (the trainer takes both at once),
so a reader that follows the topic holds a snapshot's state before its first chunk arrives:
it seeks past the snapshot's chunks (the first chunk's header gives their count) without
reading them. A reader that does not hold it (a delta was refused) applies it. When the
trainer restarts it starts a new lineage with a full snapshot: a reader drops the old
lineage's deltas from then on (:class:`~model.sync.ModelReplica` refuses them) and keeps
predicting with what it holds until that snapshot is complete.

On Tansu a multi-record batch makes ListOffsets' end offset wrong; the chunks go through
:meth:`streams.output.OutputProducer.send_partition`, which sends the last record of a send
alone in its batch, so the end offset (and with it "the last record") is right.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from model import ModelUpdate
from streams import metrics
from streams.admin import MODEL_UPDATES_MAX_MESSAGE_BYTES
from streams.app import broker_credentials
from streams.output import OutputProducer
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Prefix of every record key; the rest is the newest complete snapshot's first offset.
KEY_PREFIX = b"snapshot="
#: Longest wait for the partition's last record when a reader starts.
LAST_RECORD_WAIT_S = 10.0


def snapshot_key(offset: int) -> bytes:
    """The key of a record written while the newest complete snapshot starts at ``offset``.

    Examples
    --------
    >>> snapshot_key(1420), snapshot_key(-1)
    (b'snapshot=1420', b'snapshot=-1')
    """
    return KEY_PREFIX + str(offset).encode()


def snapshot_offset(key: bytes | None) -> int | None:
    """The snapshot offset a record key names (-1: none yet); None for another key.

    Examples
    --------
    >>> snapshot_offset(b"snapshot=1420"), snapshot_offset(b"snapshot=-1")
    (1420, -1)
    >>> snapshot_offset(b"other"), snapshot_offset(None), snapshot_offset(b"snapshot=x")
    (None, None, None)
    """
    if key is None or not key.startswith(KEY_PREFIX):
        return None
    try:
        offset = int(key[len(KEY_PREFIX) :])
    except ValueError:
        return None
    return offset if offset >= -1 else None


def updates_consumer(settings: Settings, role: str) -> AIOKafkaConsumer:
    """A consumer of model-updates without a group: readers keep their own position."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.app_id}-{role}",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=max(settings.fetch_max_wait_ms, 100),
        max_partition_fetch_bytes=MODEL_UPDATES_MAX_MESSAGE_BYTES,
        # A few chunks a fetch: the client parses each answer on the event loop.
        fetch_max_bytes=4 * MODEL_UPDATES_MAX_MESSAGE_BYTES,
        **credentials_to_aiokafka_auth(broker_credentials(settings)),
    )


async def reading_start(
    consumer: AIOKafkaConsumer, tp: TopicPartition, wait_s: float = LAST_RECORD_WAIT_S
) -> tuple[int, int]:
    """``(start, end)``: where a reader of ``tp`` starts (the first chunk of the newest
    complete snapshot the last record names, else the log's start) and the end offset seen.

    Leaves ``consumer`` assigned to ``tp`` at an unspecified position: seek after.
    """
    if tp not in consumer.assignment():
        consumer.assign([tp])
    begin = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    if end <= begin:
        return begin, end
    consumer.seek(tp, end - 1)
    deadline = time.monotonic() + wait_s
    pointer: int | None = None
    while time.monotonic() < deadline:
        fetched = await consumer.getmany(tp, timeout_ms=500, max_records=1)
        records = fetched.get(tp, [])
        if records:
            pointer = snapshot_offset(records[-1].key)
            break
    if pointer is None or pointer < begin:
        return begin, end
    return pointer, end


class UpdatePublisher:
    """Writes model updates to model-updates, each record keyed by the newest complete
    snapshot's offset (see the module's docstring)."""

    def __init__(self, settings: Settings, outputs: OutputProducer) -> None:
        self.settings = settings
        self.outputs = outputs
        self.topic = settings.topic("model_updates")
        #: First offset of the newest complete snapshot; -1 while none is known.
        self.snapshot_at = -1

    async def start(self) -> None:
        """Find the newest complete snapshot a previous trainer left (its records name it)."""
        consumer = updates_consumer(self.settings, "trainer-start")
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            start, end = await reading_start(consumer, tp)
            if end > 0:
                self.snapshot_at = start
        finally:
            await consumer.stop()

    async def publish(self, update: ModelUpdate, chunks: list[bytes]) -> None:
        """Write ``update``'s ``chunks`` and wait until the broker has every one (sent again,
        whole, after a failure: a reader drops a partly received copy)."""
        started = time.perf_counter()
        records: list[tuple[bytes | None, bytes]] = [
            (snapshot_key(self.snapshot_at), chunk) for chunk in chunks
        ]
        sent: list[asyncio.Future[Any]] = []

        async def send() -> list[asyncio.Future[Any]]:
            sent[:] = await self.outputs.send_partition(self.topic, 0, records)
            return list(sent)

        await self.outputs.deliver(send)
        if update.kind == "snapshot":
            # The first batch's metadata holds its base offset: the snapshot's first chunk.
            self.snapshot_at = int(sent[0].result().offset)
        kind = update.kind
        metrics.MODEL_UPDATES_PUBLISHED.labels(kind).inc()
        metrics.MODEL_UPDATE_BYTES.labels(kind).inc(sum(map(len, chunks)))
        metrics.MODEL_UPDATE_PUBLISH_SECONDS.labels(kind).observe(time.perf_counter() - started)
