"""Soak: workers in one consumer group under paced load for a long while, with a random worker
SIGKILLed and restarted every few minutes and the broker (on durable ``s3://`` storage, a
local moto S3) restarted once half-way. At the end every impression must have exactly one
distinct example (copies identical), every user's tables must equal the ground truth, and
every strong negative's item must have been suppressed by a fast-path update it caused.

Tansu on moto S3 moves a few hundred records a second on two cores (every record batch is an
S3 object), so the default rate is low; the exactness check does not depend on it. It also
answers group requests through S3: with the 2 s session timeout that suits the memory
broker, members expire while it is busy and the group rebalances again and again (each
rebalance starting the changelog recovery of a restarted worker over), so the workers here
use a session timeout of Kafka's order (:data:`SESSION`).

    python -m tests.benchmarks.soak --minutes 30
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3
import orjson

from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker, free_port, wait_for_port
from tests.benchmarks.harness import log
from tests.ground_truth import accepted_events
from tests.support import (
    TABLE_SETTINGS,
    Feeder,
    WorkerProcess,
    child_process,
    compare_tables,
    consume,
    examples_by_id,
    expected_labels,
    generated_stream,
    isolated_settings,
    quiet_after,
    start_all,
    strong_negatives,
    suppressed_by_their_update,
)

#: Events an impression in the generated stream (duplicates, late copies and feedback).
EVENTS_PER_IMPRESSION = 1.65
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
MODEL = {"model_buckets": 2**12, "checkpoint_every_batches": 2, "train_batch_size": 64}
#: Fetch wait of the read-back: Tansu on S3 finds an offset by reading the partition's
#: batches (objects), and answers with what it gathered within the wait.
READ_WAIT_MS = 5000
#: Group membership settings for a broker on S3 storage.
SESSION = {"session_timeout_s": 15.0, "heartbeat_s": 1.5}
#: Lost and mislabelled examples named at the end (the first of each, by id).
SHOWN = 10


@dataclasses.dataclass
class Durable:
    """A moto S3 server and a Tansu broker storing in one of its buckets."""

    root: Path
    port: int = 0
    server: Any = None
    broker: EmbeddedBroker | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    storage: str = ""

    def start(self) -> EmbeddedBroker:
        s3_port = free_port()
        self.server = child_process(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)]
        )
        wait_for_port("127.0.0.1", s3_port, 60)
        endpoint = f"http://127.0.0.1:{s3_port}"
        bucket = f"negstream-soak-{uuid.uuid4().hex[:8]}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        ).create_bucket(Bucket=bucket)
        self.env = {**CREDENTIALS, "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true"}
        self.storage = f"s3://{bucket}/"
        return self.restart()

    def restart(self) -> EmbeddedBroker:
        if self.broker is not None:
            self.broker.stop()
        self.broker = EmbeddedBroker(
            port=self.port,
            storage=self.storage,
            env=self.env,
            log_path=self.root / "tansu.log",
        ).start()
        self.port = self.broker.port
        return self.broker

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        if self.server is not None:
            self.server.terminate()
            self.server.wait(10)


def loop_lag_max_ms(workers: Sequence[WorkerProcess]) -> float:
    """The longest event-loop hold any live worker saw since it started."""
    worst = 0.0
    for worker in workers:
        try:
            samples = worker.metrics()
        except OSError:  # not answering (yet): its figure is lost, not the soak
            continue
        worst = max(worst, samples.get(("negstream_event_loop_lag_max_seconds", ()), 0.0))
    return worst * 1000


def run(args: argparse.Namespace, root: Path) -> int:
    rng = random.Random(args.seed)
    durable = Durable(root)
    broker = durable.start()
    impressions = math.ceil(args.rate * 60 * args.minutes / EVENTS_PER_IMPRESSION)
    base = isolated_settings(broker.url, root / "w0", **TABLE_SETTINGS, **MODEL, **SESSION)
    all_settings = [base] + [
        dataclasses.replace(base, data_dir=str(root / f"w{n}"), metrics_port=free_port())
        for n in range(1, args.workers)
    ]
    for settings in all_settings:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    ensure_topics(base)
    stream = generated_stream(impressions=impressions, users=args.users)
    truth = accepted_events(stream, base.grace_s)
    expected = expected_labels(truth, base)
    strong = strong_negatives(truth)
    log(f"soak: {len(stream):,} events ({len(expected):,} impressions) at {args.rate}/s, "
        f"{args.workers} workers, a kill every {args.kill_every_s:.0f} s")  # fmt: skip
    workers = [WorkerProcess(s, root / f"w{n}-0.log") for n, s in enumerate(all_settings)]
    feeder = Feeder(base, stream, rate=args.rate)
    kills, broker_restarts, lag_ms = 0, 0, 0.0
    started = time.monotonic()
    try:
        start_all(workers)
        feeder.start()
        next_kill = time.monotonic() + args.kill_every_s * rng.uniform(0.75, 1.25)
        broker_restart_at = started + args.minutes * 30
        while feeder.is_alive():
            time.sleep(0.5)
            now = time.monotonic()
            if broker_restarts < args.broker_restarts and now >= broker_restart_at:
                feeder.pause()
                durable.broker.stop()  # type: ignore[union-attr]
                time.sleep(SESSION["session_timeout_s"] + 1)  # members expire meanwhile
                durable.restart()
                feeder.resume()
                broker_restarts += 1
                log(f"soak: broker restarted at {now - started:.0f} s")
            if now >= next_kill:
                n = rng.randrange(args.workers)
                lag_ms = max(lag_ms, loop_lag_max_ms([workers[n]]))
                workers[n].kill()
                kills += 1
                workers[n] = WorkerProcess(all_settings[n], root / f"w{n}-{kills}.log").start()
                next_kill = time.monotonic() + args.kill_every_s * rng.uniform(0.75, 1.25)
                log(f"soak: killed and restarted worker {n} at {now - started:.0f} s "
                    f"({feeder.sent:,} of {len(stream):,} events sent)")  # fmt: skip
        feeder.finish()
        log("soak: input sent; reading the outputs back")
        examples = examples_by_id(base, len(expected), 900, READ_WAIT_MS)
        try:
            compare_tables(workers, base, truth)
            tables = "exact"
        except AssertionError as error:
            tables = "differ"
            log(f"soak: {error}")
        published = sum(v for w in workers for (name, _), v in w.metrics().items()
                        if name == "negstream_score_updates_total")  # fmt: skip
        updates = [orjson.loads(v) for _, v in
                   consume(base, "scores", quiet_after(int(published), 15.0), 900,
                           READ_WAIT_MS)]  # fmt: skip
        lag_ms = max(lag_ms, loop_lag_max_ms(workers))
    finally:
        if feeder.is_alive():
            feeder.join(60)
        for worker in workers:
            worker.stop()
        durable.stop()
    by_id: dict[str, list[Any]] = {}
    for example in examples:
        by_id.setdefault(example.example_id, []).append(example)
    lost = len(set(expected) - set(by_id))
    mislabelled = sum(1 for i, c in by_id.items() if i in expected and c[0].label != expected[i])
    differing = sum(1 for copies in by_id.values() if any(c != copies[0] for c in copies))
    unsuppressed = len(set(strong) - suppressed_by_their_update(updates, strong))
    distinct = len(set(by_id) & set(expected))
    print(
        f"soak: minutes={(time.monotonic() - started) / 60:.1f} workers={args.workers} "
        f"kills={kills} restarts={kills} broker_restarts={broker_restarts} "
        f"impressions={len(expected)} distinct_examples={distinct} lost={lost} "
        f"copies={len(examples) - len(by_id)} differing_copies={differing} "
        f"mislabelled={mislabelled} tables={tables} strong_negatives={len(strong)} "
        f"unsuppressed={unsuppressed} loop_lag_max_ms={lag_ms:.0f}"
    )
    ok = (lost, differing, mislabelled, unsuppressed) == (0, 0, 0, 0) and tables == "exact"
    for example_id in sorted(set(expected) - set(by_id))[:SHOWN]:
        log(f"soak: lost {example_id} (expected {expected[example_id]})")
    wrong = sorted(i for i, c in by_id.items() if i in expected and c[0].label != expected[i])
    for example_id in wrong[:SHOWN]:
        log(f"soak: mislabelled {example_id}: {by_id[example_id][0].label}, "
            f"expected {expected[example_id]}")  # fmt: skip
    return 0 if ok and distinct == len(expected) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="how long input is sent")
    parser.add_argument("--rate", type=float, default=40.0, help="input events a second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--kill-every-s", type=float, default=180.0,
                        help="seconds between worker kills (each ±25%%)")  # fmt: skip
    parser.add_argument("--broker-restarts", type=int, default=1, choices=(0, 1),
                        help="restart the broker half-way (1) or not (0)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="negstream-soak-"))
    try:
        return run(args, root)
    finally:
        if args.keep:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
