"""negstream's Faust agents; :func:`register` wires them onto an app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import faust

from agents.drift import DriftReporter
from agents.fast_lane import FastLane
from agents.pipeline import InputPipeline
from agents.state import fold as user_state
from agents.trainer import ModelService
from streams.bulk import BulkSource
from streams.privacy import Pseudonymizer
from streams.settings import Settings
from streams.tables import declare_users_table
from streams.topics import declare_topics

log = logging.getLogger(__name__)

#: Longest wait at shutdown for computed input batches to be delivered.
SHUTDOWN_FLUSH_S = 10.0


def register(app: faust.App, settings: Settings) -> InputPipeline:
    """Declare topics and tables on ``app`` and register every reader, timer and page."""
    topics = declare_topics(app, settings)
    users = declare_users_table(app, settings)
    pseudonym = Pseudonymizer(settings.pseudonymize_key)
    pipeline = InputPipeline(settings, topics, users, pseudonym)
    lane = FastLane(settings, users, pipeline.watermark, pseudonym)
    pipeline.lane = lane
    service = ModelService(settings, topics, users, pseudonym)
    service.lane = lane
    pipeline.on_feedback = service.request_refresh
    drift = DriftReporter(settings, topics, users, service)

    # The two hot topics are read in bulk (see streams.bulk), not by Faust agents: Faust
    # still subscribes to them, assigns them and commits their acked offsets.
    inputs = BulkSource(app, topics.inputs.topics, max(4096, 4 * settings.batch_size))
    examples = BulkSource(app, topics.examples.topics, max(4096, 4 * settings.train_batch_size))
    app.topics.add(topics.inputs)
    app.topics.add(topics.examples)

    @app.task  # type: ignore[untyped-decorator]
    async def input_reader() -> None:
        # Events are acked once the batch's records are delivered (see InputPipeline).
        await _until_failure(app, "input", pipeline_batches(inputs, pipeline, settings))

    @app.task  # type: ignore[untyped-decorator]
    async def trainer() -> None:
        await _until_failure(app, "trainer", train_batches(examples, service, settings))

    @app.timer(settings.score_refresh_s, name="negstream.score_refresh")  # type: ignore[untyped-decorator]
    async def score_refresh() -> None:
        await service.refresh()

    @app.timer(settings.drift_interval_s, name="negstream.drift")  # type: ignore[untyped-decorator]
    async def drift_report() -> None:
        await drift.report()

    @app.timer(max(0.1, settings.idle_flush_s / 2), name="negstream.idle_flush")  # type: ignore[untyped-decorator]
    async def idle_flush() -> None:
        recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
        if app.rebalancing or app.in_recovery or not recovery.completed.is_set():
            return
        # A finished recovery (after a rebalance) brings users whose label windows are
        # still open: index them again once their state is complete.
        ended = getattr(recovery, "_recovery_ended_at", None)
        if ended != pipeline.recovery_seen:
            pipeline.recovery_seen = ended
            pipeline.index_stale = True
        pipeline.check_inputs(app.consumer)
        await pipeline.on_idle_tick()

    @app.on_partitions_assigned.connect
    async def on_assigned(*args: Any, **kwargs: Any) -> None:
        pipeline.index_stale = True
        assigned = args[1] if len(args) > 1 else kwargs.get("assigned", ())
        lane.assign(tp.partition for tp in assigned if tp.topic == pipeline.feedback_topic)

    @app.on_partitions_revoked.connect
    async def on_revoked(*args: Any, **kwargs: Any) -> None:
        revoked = args[1] if len(args) > 1 else kwargs.get("revoked", ())
        inputs = {pipeline.impressions_topic, pipeline.feedback_topic}
        partitions = {tp.partition for tp in revoked if tp.topic in inputs}
        pipeline.forget_partitions(partitions)
        lane.forget_partitions(partitions)

    @app.on_before_shutdown.connect
    async def close_outputs(*args: Any, **kwargs: Any) -> None:
        lane.stop()
        try:
            await asyncio.wait_for(pipeline.flush(), SHUTDOWN_FLUSH_S)
        except TimeoutError:
            log.warning("stopping with input batches undelivered; their events will be read again")
        await topics.outputs.stop()
        await pipeline.changelog.stop()

    @app.page("/users/{user_id}/")
    async def user_view(web: Any, request: Any, user_id: str) -> Any:
        if not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return web.json({"error": "tables are recovering; retry shortly"}, status=503)
        state = users.get(user_id)
        if state is None:
            return web.json({"error": f"no state for user {user_id!r} on this worker"}, status=404)
        return web.json(user_state.table_view(state, settings))

    return pipeline


async def pipeline_batches(
    source: BulkSource,
    pipeline: InputPipeline,
    settings: Settings,
) -> None:
    """Feed the input pipeline one micro-batch at a time, for ever."""
    while True:
        messages = await source.take(settings.batch_size, settings.batch_within_s)
        await pipeline.process(messages, source.ack)


async def train_batches(
    source: BulkSource,
    service: ModelService,
    settings: Settings,
) -> None:
    """Test-then-train one micro-batch of examples at a time; checkpoint when stopped."""
    try:
        while True:
            messages = await source.take(settings.train_batch_size, settings.train_max_wait_s)
            await service.train(messages)
            source.ack(messages)
    finally:
        service.close()


async def _until_failure(app: faust.App, name: str, loop: Awaitable[None]) -> None:
    # A failure here is a bug or a lost output, never bad input (that is dead-lettered): the
    # worker stops, and a restart resumes from the committed offsets and the changelog.
    try:
        await loop
    except Exception as error:
        log.exception("the %s reader failed; the worker stops", name)
        await app.crash(error)
