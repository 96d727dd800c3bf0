"""The shared trainer (``negstream trainer``) catching up a backlog of ``training-examples``.

One embedded broker. The heavy world's examples, made by the worker's own fold
(:class:`tests.driver.FoldDriver`), are written to ``training-examples`` before the trainer
starts, repeated under new ids until the backlog holds :attr:`Plan.examples`; then one
trainer process (default settings, device cpu, one torch thread) reads it from the start.
Timed from the first learned example counted on ``/metrics`` to the last, polled every
:data:`POLL_S` seconds: examples learned a second, and the checkpoints written meanwhile
with the share of that time they took (``negstream_checkpoint_seconds``).

The last line printed is ``trainer: examples_per_s=R checkpoints=N checkpoint_share=S``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from simulator.stream import Simulator
from simulator.worlds import world_config
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.benchmarks.harness import INPUT_TOPICS, bench_settings, folded_examples, log, metric
from tests.support import WorkerProcess, wait_until

POLL_S = 0.2


@dataclass(frozen=True)
class Plan:
    """Impressions drawn from the heavy world, its users, and the backlog's size."""

    impressions: int
    users: int
    examples: int


QUICK = Plan(impressions=20_000, users=2_000, examples=100_000)
FULL = Plan(impressions=60_000, users=10_000, examples=400_000)


def world_examples(plan: Plan) -> list[dict[str, Any]]:
    """The examples the worker's fold joins from the heavy world's events."""
    simulator = Simulator(world_config("heavy", seed=23, n_users=plan.users))
    events = [
        (INPUT_TOPICS[event.topic], event.key.encode(), event.value)
        for event in simulator.events(plan.impressions)
    ]
    return folded_examples(Settings(device="cpu"), events)


def write_backlog(settings: Settings, examples: list[dict[str, Any]], total: int) -> None:
    """``total`` examples on training-examples, keyed by user: ``examples`` over and over,
    each round's ids suffixed so that none is a copy the trainer would drop."""
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, linger_ms=20, batch_size=1 << 20
    )
    topic = settings.topic("examples")
    try:
        for index in range(total):
            example = dict(examples[index % len(examples)])
            example["example_id"] = f"{example['example_id']}#{index // len(examples)}"
            producer.send(topic, orjson.dumps(example), key=example["user_id"].encode())
        producer.flush()
    finally:
        producer.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench_trainer", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a backlog of 100k examples")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    examples = world_examples(plan)
    with tempfile.TemporaryDirectory(prefix="negstream-bench-") as tmp:
        root = Path(tmp)
        broker = EmbeddedBroker(log_path=root / "tansu.log")
        broker.start()
        try:
            settings = bench_settings(
                broker, root / "trainer", torch_threads=1, metrics_port=free_port()
            )
            ensure_topics(settings)
            log(f"trainer: writing a backlog of {plan.examples} examples "
                f"({len(examples)} of the heavy world, {plan.users} users, repeated)")  # fmt: skip
            write_backlog(settings, examples, plan.examples)
            trainer = WorkerProcess(settings, root / "trainer.log", "trainer").launch()
            try:
                trainer.wait_up(180)
                learned = 0.0
                wait_until(
                    lambda: metric(trainer, "negstream_train_examples_total") > 0,
                    120, "the trainer's first examples",
                )  # fmt: skip
                started = time.monotonic()
                first = metric(trainer, "negstream_train_examples_total")
                first_write = metric(trainer, "negstream_checkpoint_seconds_sum")
                first_count = metric(trainer, "negstream_checkpoint_seconds_count")
                deadline = started + 900
                while learned < plan.examples and time.monotonic() < deadline:
                    time.sleep(POLL_S)
                    learned = metric(trainer, "negstream_train_examples_total")
                elapsed = time.monotonic() - started
                writes = metric(trainer, "negstream_checkpoint_seconds_count") - first_count
                written_s = metric(trainer, "negstream_checkpoint_seconds_sum") - first_write
            finally:
                trainer.stop()
        finally:
            broker.stop()
    rate = (learned - first) / elapsed
    print(f"trainer: {learned - first:,.0f} examples in {elapsed:.1f} s ({rate:,.0f}/s); "
          f"{writes:.0f} checkpoints taking {written_s:.1f} s")  # fmt: skip
    print(f"trainer: examples_per_s={rate:.0f} checkpoints={writes:.0f} "
          f"checkpoint_share={written_s / elapsed:.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
