"""Builds every service from the settings, each given its collaborators, and registers the
readers, timers, rebalance hooks and pages on the app."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

import faust

from agents.delivery import OrderedDelivery
from agents.drift import DriftReporter
from agents.encoder import OutputEncoder
from agents.fast_lane import FastLane
from agents.model_follower import ModelFollower
from agents.pipeline import InputPipeline
from agents.progress import ProgressWatch
from agents.rescorer import Rescorer, Scorer
from agents.state.config import StateConfig
from agents.state.features import table_view
from agents.state.state import WIRE_DICTIONARY, UserState
from agents.trainer import Trainer, model_config
from agents.watermarks import Watermarks
from streams import metrics
from streams.app import committed_offset, recovery_done, recovery_ended_at, recovery_status
from streams.bulk import BulkSource
from streams.loop_lag import watch_event_loop
from streams.output import OutputProducer
from streams.privacy import Pseudonymizer
from streams.settings import Settings
from streams.tables import declare_users_table
from streams.topics import declare_topics
from streams.users import UsersStore

log = logging.getLogger(__name__)

#: Longest wait at shutdown for computed input batches to be delivered.
SHUTDOWN_FLUSH_S = 10.0
#: Longest wait, when partitions are revoked, for what was computed to be delivered.
REVOKE_FLUSH_S = 10.0
#: Seconds between checks that assigned inputs are being read (see agents.progress).
PROGRESS_EVERY_S = 5.0


def state_config(settings: Settings) -> StateConfig:
    """The per-user logic's settings, taken from the worker's (the caps keep their defaults
    unless the worker has a setting of the same name)."""
    names = {spec.name for spec in dataclasses.fields(StateConfig) if spec.init}
    return StateConfig(
        **{name: getattr(settings, name) for name in names if hasattr(settings, name)}
    )


def users_store(table: Any) -> UsersStore[UserState]:
    """The users table as a store of :class:`UserState`."""
    return UsersStore(table, UserState.from_wire, UserState.to_wire, UserState, WIRE_DICTIONARY)


def register(app: faust.App, settings: Settings) -> InputPipeline:
    """Declare topics and tables on ``app`` and register every reader, timer and page."""
    topics = declare_topics(app, settings)
    users = users_store(declare_users_table(app, settings))
    config = state_config(settings)
    encoder = OutputEncoder(settings, Pseudonymizer(settings.pseudonymize_key))
    outputs = OutputProducer(settings)
    watermarks = Watermarks(
        settings.topic("impressions"),
        settings.topic("feedback"),
        settings.watermark_delay_s,
        settings.idle_flush_s,
        committed=lambda topic, partition: committed_offset(app, topic, partition),
    )
    lane = FastLane(settings, config, users, watermarks, encoder)
    # A worker either trains its own model or scores with the trainer's (README, Scaling out).
    trainer: Trainer | None = None
    follower: ModelFollower | None = None
    scorer: Scorer
    if settings.model_source == "remote":
        scorer = follower = ModelFollower(settings, model_config(settings))
        metrics.MODEL_AGE.set_function(follower.age)
    else:
        scorer = trainer = Trainer(settings)
    metrics.MODEL_REMOTE.set(follower is not None)
    metrics.MODEL_MAX_AGE.set(settings.model_max_age_s)
    rescorer = Rescorer(settings, config, users, scorer, encoder, outputs, lane)
    drift = DriftReporter(settings, config, users, outputs)
    delivery = OrderedDelivery(outputs, OutputProducer(settings, "changelog"), users)
    pipeline = InputPipeline(
        settings, config, users, watermarks, encoder, delivery, lane, rescorer.request_refresh
    )

    # The two hot topics are read in bulk (see streams.bulk), not by Faust agents: Faust
    # still subscribes to them, assigns them and commits their acked offsets.
    inputs = BulkSource(app, topics.inputs.topics, max(4096, 4 * settings.batch_size))
    examples = BulkSource(app, topics.examples.topics, max(4096, 4 * settings.train_batch_size))
    pipeline.rewind = inputs.rewind

    @app.task  # type: ignore[untyped-decorator]
    async def input_reader() -> None:
        # Events are acked once the batch's records are delivered (see agents.delivery).
        await _until_failure(app, "input", pipeline_batches(inputs, pipeline, settings))

    @app.task  # type: ignore[untyped-decorator]
    async def training() -> None:
        if trainer is not None:
            await _until_failure(
                app, "trainer", train_batches(examples, trainer, rescorer, drift, settings)
            )
        elif follower is not None:
            loop = follow_examples(examples, follower, rescorer, drift, settings)
            await _until_failure(app, "examples", loop)

    if follower is not None:

        @app.task  # type: ignore[untyped-decorator]
        async def model_updates() -> None:
            await _until_failure(app, "model updates", follower.run(rescorer.learned_users))

    @app.task  # type: ignore[untyped-decorator]
    async def event_loop_lag() -> None:
        await watch_event_loop()

    @app.task  # type: ignore[untyped-decorator]
    async def score_refresh() -> None:
        await _until_failure(app, "score refresh", refresh_scores(rescorer, settings))

    @app.timer(settings.drift_interval_s, name="negstream.drift")  # type: ignore[untyped-decorator]
    async def drift_report() -> None:
        if trainer is not None:
            await drift.report(trainer.figures, trainer.model.version)
        elif follower is not None:
            # Test-then-train figures are the trainer's (on its /metrics).
            await drift.report({}, follower.version or 0)

    @app.timer(max(0.1, settings.idle_flush_s / 2), name="negstream.idle_flush")  # type: ignore[untyped-decorator]
    async def idle_flush() -> None:
        if not recovery_done(app):
            return
        pipeline.on_recovery(recovery_ended_at(app))
        watermarks.check_inputs(app.consumer)
        await pipeline.on_idle_tick()

    progress = ProgressWatch(watermarks)

    @app.timer(PROGRESS_EVERY_S, name="negstream.progress")  # type: ignore[untyped-decorator]
    async def progress_watch() -> None:
        progress.check(app.consumer, not recovery_done(app), lambda: recovery_status(app))

    @app.on_partitions_assigned.connect
    async def on_assigned(*args: Any, **kwargs: Any) -> None:
        metrics.PARTITION_ASSIGNMENTS.inc()
        assigned = args[1] if len(args) > 1 else kwargs.get("assigned", ())
        input_topics = {pipeline.impressions_topic, pipeline.feedback_topic}
        pipeline.on_assigned(tp.partition for tp in assigned if tp.topic in input_topics)
        lane.assign(tp.partition for tp in assigned if tp.topic == pipeline.feedback_topic)

    @app.on_partitions_revoked.connect
    async def on_revoked(*args: Any, **kwargs: Any) -> None:
        revoked = args[1] if len(args) > 1 else kwargs.get("revoked", ())
        # Before another worker may own these partitions, everything this one computed is
        # delivered: a label sweep's changelog records (no input event of theirs waits for
        # an ack, so Faust does not wait for them) landing after the new owner's would be
        # read back by a later recovery as the users' newest states.
        try:
            await asyncio.wait_for(pipeline.settle(), REVOKE_FLUSH_S)
        except TimeoutError:
            log.warning(
                "partitions revoked with batches still undelivered after %.0f s", REVOKE_FLUSH_S
            )
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
        await delivery.stop()

    @app.page("/users/{user_id}/")
    async def user_view(web: Any, request: Any, user_id: str) -> Any:
        if not recovery_done(app):
            return web.json({"error": "tables are recovering; retry shortly"}, status=503)
        state = users.get(user_id)
        if state is None:
            return web.json({"error": f"no state for user {user_id!r} on this worker"}, status=404)
        return web.json(table_view(state, config))

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


async def refresh_scores(rescorer: Rescorer, settings: Settings) -> None:
    """Rescore queued users every ``score_refresh_s``, for ever.

    A loop, not a timer: a refresh that outlasts the interval is followed by the next one,
    never overlapped by it. Rescoring shares the interpreter with the input pipeline: a
    refresh of every queued user that took ``t`` seconds is followed by refreshes of only the
    users with new feedback (whose updates the model-path latency counts) until
    ``t / share`` (``score_refresh_max_share``) has passed, so under load the updates that
    learned examples ask for coalesce instead of the input falling behind.
    """
    share = settings.score_refresh_max_share
    everyone_at = 0.0
    while True:
        started = time.perf_counter()
        everyone = started >= everyone_at
        await rescorer.refresh(urgent_only=not everyone)
        if everyone:
            everyone_at = started + (time.perf_counter() - started) / share
        await asyncio.sleep(settings.score_refresh_s)


async def train_batches(
    source: BulkSource,
    trainer: Trainer,
    rescorer: Rescorer,
    drift: DriftReporter,
    settings: Settings,
) -> None:
    """Test-then-train one micro-batch of examples at a time; checkpoint when stopped."""
    try:
        while True:
            messages = await source.take(settings.train_batch_size, settings.train_max_wait_s)
            examples, predictions = await trainer.train(messages)
            # Each of these is milliseconds for a full batch: the loop runs others between.
            drift.observe(examples, predictions)
            await asyncio.sleep(0)
            rescorer.learned(examples)
            await asyncio.sleep(0)
            source.ack(messages)
    finally:
        await trainer.close()


async def follow_examples(
    source: BulkSource,
    follower: ModelFollower,
    rescorer: Rescorer,
    drift: DriftReporter,
    settings: Settings,
) -> None:
    """With a remote model the worker learns nothing: its partitions' examples feed the
    drift monitor (with the replica's predictions, made before the replica has their
    update, mostly) and wait in the follower until a model it applies has learned them; their
    users are rescored then."""
    seen: OrderedDict[str, None] = OrderedDict()
    while True:
        messages = await source.take(settings.train_batch_size, settings.train_max_wait_s)
        read, predictions = await follower.read_examples(
            ((message.partition, message.offset, message.value) for message in messages), seen
        )
        learned = []
        for partition, offset, example in read:
            learned += follower.example_read(
                partition, offset, example["user_id"], example["example_id"]
            )
        if predictions is not None:
            drift.observe([example for _, _, example in read], predictions)
            await asyncio.sleep(0)
        rescorer.learned_users(learned)
        await asyncio.sleep(0)
        source.ack(messages)


async def _until_failure(app: faust.App, name: str, loop: Awaitable[None]) -> None:
    # A failure here is a bug or a lost output, never bad input (that is dead-lettered): the
    # worker stops, and a restart resumes from the committed offsets and the changelog.
    try:
        await loop
    except Exception as error:
        log.exception("the %s reader failed; the worker stops", name)
        await app.crash(error)
