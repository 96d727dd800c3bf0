"""Fault tests: repeated worker crashes, a broker restart on durable storage, and a worker
lost from a two-worker consumer group. Real worker processes on a real Tansu broker; every
check compares against values the generated input forces (tests/ground_truth.py)."""

from __future__ import annotations

import dataclasses
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest

from model import load_latest
from schemas import decode_example
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker, free_port, wait_for_port
from tests.ground_truth import accepted_events
from tests.support import (
    FLUSH_USERS,
    TABLE_SETTINGS,
    Feeder,
    Stream,
    WorkerProcess,
    assert_once_by_id,
    check_examples,
    child_process,
    compare_tables,
    consume,
    expected_labels,
    generated_stream,
    isolated_settings,
    send_paced,
    start_all,
    wait_until,
)

pytestmark = pytest.mark.broker

MODEL_SETTINGS = {"model_buckets": 2**12, "checkpoint_every_batches": 2, "train_batch_size": 64}


# --------------------------------------------------------------------------- helpers


def events_processed(worker: WorkerProcess) -> float:
    """Input events this worker process has handled (any outcome) since it started."""
    try:
        samples = worker.metrics()
    except (OSError, urllib.error.URLError):
        return 0.0
    return sum(v for (name, _), v in samples.items() if name == "negstream_events_total")


def status_of(worker: WorkerProcess, path: str) -> int:
    url = f"http://{worker.settings.metrics_host}:{worker.settings.metrics_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


# --------------------------------------------------------------------------- 1. SIGKILL x3


def test_three_sigkills_lose_nothing_and_the_model_resumes(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = isolated_settings(broker.url, tmp_path, **TABLE_SETTINGS, **MODEL_SETTINGS)
    ensure_topics(settings)
    stream = generated_stream()
    truth = accepted_events(stream, settings.grace_s)
    expected = expected_labels(truth, settings)
    # Slow enough that the stream is still flowing across the three crash/restart cycles.
    feeder = Feeder(settings, stream, rate=120)
    worker = WorkerProcess(settings, tmp_path / "worker0.log").start()
    saved_version = 0
    resumed_version = -1.0
    try:
        feeder.start()
        for kill in (1, 2, 3):
            threshold = len(stream) * kill // 4

            def ready(kill: int = kill, threshold: int = threshold, w: Any = worker) -> bool:
                if feeder.sent < threshold and feeder.is_alive():
                    return False
                if events_processed(w) < 300:  # mid-stream: it is processing
                    return False
                return kill < 3 or load_latest(settings.checkpoint_dir) is not None

            wait_until(ready, 120, f"kill point {kill} (worker busy, checkpoint for the last)")
            worker.kill()
            checkpoint = load_latest(settings.checkpoint_dir)
            if kill == 3:
                assert checkpoint is not None
                saved_version = int(checkpoint["model"]["version"])
            worker = WorkerProcess(settings, tmp_path / f"worker{kill}.log").start()
            if kill == 3:
                # The gauge is set when the model is built (resumed or fresh), before training.
                gauge = ("negstream_model_version", ())
                (resumed_version,) = wait_until(
                    lambda w=worker, g=gauge: [w.metrics()[g]] if g in w.metrics() else None,
                    30,
                    "negstream_model_version",
                )
        feeder.finish()
        check_examples(settings, expected)
        compare_tables(worker, settings, truth)
    finally:
        feeder.join(120)
        worker.stop()
    assert saved_version > 0
    assert resumed_version >= saved_version, (
        f"model restarted at version {resumed_version}, checkpoint had {saved_version}"
    )


# --------------------------------------------------------------------------- 2. broker restart


@pytest.fixture
def s3_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port, in its own process; yields its endpoint.

    Tansu stores every record batch as one S3 object (and the worker produces one record
    per batch on Tansu), so S3 traffic is heavy: a separate process keeps moto off this
    process's GIL.
    """
    port = free_port()
    server = child_process(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    )
    try:
        wait_for_port("127.0.0.1", port, 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def small_stream(events: int) -> Stream:
    """The first ``events`` events of the generated stream, then its far-future flush events.

    Tansu on S3 (via moto) moves tens of records a second here, so the durable-broker test
    uses a prefix of the stream; the ground truth is computed from exactly what is sent.
    """
    stream = generated_stream()
    flush = [e for e in stream if e[1]["event_id"].startswith("flush")]
    body = [e for e in stream if not e[1]["event_id"].startswith("flush")]
    return body[:events] + flush


def test_broker_restart_on_s3_storage_loses_nothing(s3_server: str, tmp_path: Path) -> None:
    bucket = f"negstream-{uuid.uuid4().hex[:8]}"
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        region_name=credentials["AWS_DEFAULT_REGION"],
    )
    s3.create_bucket(Bucket=bucket)
    env = {**credentials, "AWS_ENDPOINT": s3_server, "AWS_ALLOW_HTTP": "true"}
    storage = f"s3://{bucket}/"
    log = tmp_path / "tansu.log"
    broker = EmbeddedBroker(storage=storage, env=env, log_path=log).start()
    worker: WorkerProcess | None = None
    try:
        settings = isolated_settings(broker.url, tmp_path, **TABLE_SETTINGS)
        ensure_topics(settings)
        stream = small_stream(240)
        truth = accepted_events(stream, settings.grace_s)
        assert truth.duplicates > 0, "the prefix still has duplicates to drop"
        expected = expected_labels(truth, settings)
        first, second = stream[: len(stream) // 2], stream[len(stream) // 2 :]
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        send_paced(settings, first, rate=3000)
        wait_until(lambda: events_processed(worker) > 0, 60, "the worker to process input")
        # The broker goes away while the worker is (likely still) working on the first half.
        broker.stop()
        assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) > 0, "nothing on S3"
        time.sleep(3)  # an outage longer than the session timeout, not an assertion
        assert worker.process is not None and worker.process.poll() is None, "worker died"
        broker = EmbeddedBroker(port=broker.port, storage=storage, env=env, log_path=log).start()
        # Durable: the first half is still on the broker after the restart.
        sent_impressions = sum(1 for topic, _ in first if topic == "impressions")
        kept = consume(settings, "impressions", lambda got: len(got) >= sent_impressions, 90)
        assert len(kept) == sent_impressions, "the restarted broker lost input records"
        send_paced(settings, second, rate=3000)
        # Reads are slow on S3: wait for the count instead of examples_by_id's short pass.
        messages = consume(settings, "examples", lambda got: len(got) >= len(expected), 180)
        assert_once_by_id([decode_example(value) for _, value in messages], expected)
        compare_tables(worker, settings, truth)
        assert worker.process is not None and worker.process.poll() is None
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()


# --------------------------------------------------------------------------- 3. two workers


def owners(worker: WorkerProcess) -> dict[str, set[int]]:
    """Changelog partitions of the users table by worker URL, as this worker's router sees them."""
    routes = orjson.loads(worker.get("/router/"))
    return {url: {p for parts in topics.values() for p in parts} for url, topics in routes.items()}


def url_of(worker: WorkerProcess) -> str:
    return f"http://{worker.settings.metrics_host}:{worker.settings.metrics_port}"


def test_two_workers_split_partitions_and_the_survivor_takes_over(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    settings_a = isolated_settings(broker.url, tmp_path / "a", **TABLE_SETTINGS)
    settings_b = dataclasses.replace(
        settings_a, data_dir=str(tmp_path / "b"), metrics_port=free_port()
    )
    ensure_topics(settings_a)
    stream = generated_stream()
    truth = accepted_events(stream, settings_a.grace_s)
    expected = expected_labels(truth, settings_a)
    a = WorkerProcess(settings_a, tmp_path / "a.log")
    b = WorkerProcess(settings_b, tmp_path / "b.log")
    everything = set(range(settings_a.partitions))
    feeder = Feeder(settings_a, stream, rate=210)
    try:
        start_all([a, b])

        def split() -> bool:
            views = [owners(a), owners(b)]
            mine = [view.get(url_of(w), set()) for view, w in zip(views, (a, b), strict=True)]
            return (
                views[0] == views[1]
                and all(mine)
                and not mine[0] & mine[1]
                and mine[0] | mine[1] == everything
            )

        wait_until(split, 90, "the two workers to split the partitions")
        feeder.start()
        users = sorted({v["user_id"] for _, v in stream[: len(stream) // 3]} - set(FLUSH_USERS))
        wait_until(lambda: feeder.sent >= len(stream) // 3, 60, "a third of the stream sent")

        def answered() -> dict[str, tuple[int, int]] | None:
            codes = {u: (status_of(a, f"/users/{u}/"), status_of(b, f"/users/{u}/")) for u in users}
            return codes if all(200 in pair for pair in codes.values()) else None

        codes = wait_until(answered, 60, "every early user to be answered by some worker")
        on_b = sorted(u for u, pair in codes.items() if pair == (404, 200))
        on_a = sorted(u for u, pair in codes.items() if pair == (200, 404))
        assert sorted(on_a + on_b) == users, f"each user lives on exactly one worker: {codes}"
        assert on_a and on_b, f"both workers own users: a={on_a} b={on_b}"

        b.kill()  # mid-stream
        wait_until(lambda: owners(a) == {url_of(a): everything}, 90, "the survivor to take over")
        feeder.finish()
        check_examples(settings_a, expected)
        # The survivor answers for the users the dead worker owned, with exact values.
        taken = {u: status_of(a, f"/users/{u}/") for u in on_b}
        assert set(taken.values()) == {200}, f"survivor does not answer: {taken}"
        compare_tables(a, settings_a, truth)
    finally:
        if feeder.is_alive():
            feeder.join(120)
        a.stop()
        b.stop()
