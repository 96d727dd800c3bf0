"""Scale-out: three workers each learning their own model against three workers scoring with
one shared trainer's model, on the same paced stream.

One embedded broker; the simulator's heavy world, sent at 1,000 events/s keyed by user. The
stream is processed twice, each time under topics of its own: (1) three workers with
``NEGSTREAM_MODEL_SOURCE=local``; (2) three workers with ``remote`` and one ``negstream
trainer``. Then the run's ``training-examples``, ``scores`` and ``model-updates`` are read
back.

AUC. Every training example published after the first :data:`WARMUP_SHARE` of the run's
examples (by record timestamp) is a case; its label is 1 when any of its kinds is a
negative kind (``schemas.kinds.NEGATIVE_KINDS``), else 0. Its score is the ``p_negative``
of its (user, item) in the newest model ``ScoreUpdate`` for the user written (broker
timestamp) before the label was known: before the first feedback event on that impression
(same user, item and request) was sent, or, with no feedback, before the example itself was
published (its window closed). Only the worker that owns the user publishes its updates, so
the score is that worker's model's. Examples with no such score are left out and counted
(coverage). The AUC is over all users' cases; the same definition serves both modes.

Freshness (shared mode). For an example at offset ``o`` of partition ``p``, published at
``t`` (record timestamp), the first version that learned it is the oldest update on
``model-updates`` whose learned offsets (``ModelUpdate.learned``) reach ``o`` on ``p``;
its freshness is the time from ``t`` to the first model ``ScoreUpdate`` for its user
written at or after ``t`` by that version or a later one. Examples never followed by such
an update are counted, not timed.

The last line printed is ``scale-out: shared_auc=A local_auc=B freshness_p99_s=F``.
``--offline`` replays the stream without the broker (:func:`replay`); ``--ceiling`` prints
the bounds of :mod:`tests.benchmarks.sharing_ceiling` instead.
"""

from __future__ import annotations

import argparse
import bisect
import json
import struct
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from agents.trainer import model_config
from model import ExampleBatch, OnlineModel
from simulator.stream import Simulator
from simulator.worlds import world_config
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.benchmarks.harness import (
    INPUT_TOPICS,
    bench_settings,
    folded_examples,
    log,
    metric,
    negative_label,
    percentile,
)
from tests.benchmarks.sharing_ceiling import batch_id_models, world_taste
from tests.support import WorkerProcess, read_all, start_all, wait_until

#: Events a second the stream is sent at.
RATE = 1000.0
#: Seed of the simulated world and stream.
SEED = 17
#: Share of a run's examples (by publish time) left out of the AUC: the models warm up.
WARMUP_SHARE = 0.3
WORKERS = 3
#: Model settings of both modes (the table size is the plan's).
MODEL = {
    "device": "cpu",
    "partitions": 6,
    "model_snapshot_every": 50,
    "torch_threads": 1,
    "log_level": "warn",
}
#: The wire form's fixed chunk header (see model.update).
HEADER = struct.Struct("<4sBBQqqIIQQIII")


@dataclass(frozen=True)
class Plan:
    """A run's size: impressions drawn, world size, seconds left to drain after sending, and
    the model's hashed table size (``NEGSTREAM_MODEL_BUCKETS``) in both modes (``--buckets``).

    Both use the worker's default, 2^18 (a snapshot of 130 MB: the workers following the
    topic skip the later ones unread, so their freshness is the trainer's). At 2^15 the full
    world, whose 200k impressions hold about 15k items and 96k user x creator pairs, crowds
    the shared model's table: 37 % of the items and 52 % of the pairs share a bucket, against
    22 % of the pairs in each local model's (at 2^18: 6 %, 9 % and 3 %). The README gives
    both sizes' figures.
    """

    impressions: int
    users: int
    drain_s: float
    buckets: int


QUICK = Plan(impressions=30_000, users=2_000, drain_s=15.0, buckets=Settings().model_buckets)
FULL = Plan(impressions=200_000, users=10_000, drain_s=30.0, buckets=Settings().model_buckets)


def stream(
    plan: Plan, limit: int
) -> tuple[list[tuple[str, bytes, dict[str, Any]]], dict[str, float]]:
    """The first ``limit`` events of the heavy world as ``(topic setting, key, value)``, and
    the world's own p(negative) of each impression sent, by impression id (an example's id).
    """
    simulator = Simulator(world_config("heavy", seed=SEED, n_users=plan.users))
    found = []
    for event in simulator.events(plan.impressions):
        found.append((INPUT_TOPICS[event.topic], event.key.encode(), event.value))
        if len(found) >= limit:
            break
    truth = {row["event_id"]: row["p_negative"] for row in simulator.iter_ground_truth()}
    return found, truth


def send(settings: Settings, events: Sequence[tuple[str, bytes, dict[str, Any]]]) -> list[float]:
    """Send ``events`` at :data:`RATE`; the wall time each was handed to the producer."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=2)
    sent_at: list[float] = []
    started = time.monotonic()
    step = 50
    try:
        for first in range(0, len(events), step):
            for topic, key, value in events[first : first + step]:
                sent_at.append(time.time())
                producer.send(settings.topic(topic), orjson.dumps(value), key=key)
            time.sleep(max(0.0, started + (first + step) / RATE - time.monotonic()))
        producer.flush()
    finally:
        producer.close()
    return sent_at


def run_mode(
    broker: EmbeddedBroker, root: Path, remote: bool, events: list[Any], plan: Plan
) -> dict[str, Any]:
    """Process ``events`` with three workers (and a trainer when ``remote``); what the run
    wrote, with the send times."""
    mode = "remote" if remote else "local"
    base = bench_settings(
        broker, root / mode, model_source=mode, model_buckets=plan.buckets, **MODEL
    )
    ensure_topics(base)
    workers = [
        WorkerProcess(
            base.replace(data_dir=str(root / mode / f"w{n}"), metrics_port=free_port()),
            root / f"{mode}-w{n}.log",
        )
        for n in range(WORKERS)
    ]
    trainer = None
    try:
        if remote:
            trainer_settings = base.replace(
                data_dir=str(root / mode / "trainer"), metrics_port=free_port()
            )
            trainer = WorkerProcess(trainer_settings, root / "trainer.log", "trainer").launch()
        start_all(workers, timeout=180)
        if trainer is not None:
            trainer.wait_up(180)
        wait_until(
            lambda: all(metric(w, "negstream_partition_assignments_total") >= 1 for w in workers),
            120, "every worker to be assigned partitions",
        )  # fmt: skip
        if remote:
            wait_until(
                lambda: all(
                    metric(w, "negstream_model_updates_applied_total") >= 1 for w in workers
                ),
                120, "every worker to apply the trainer's first snapshot",
            )  # fmt: skip
        time.sleep(5.0)  # the group settles
        log(f"  {mode}: sending {len(events)} events at {RATE:.0f}/s")
        sent_at = send(base, events)
        log(f"  {mode}: sent; draining {plan.drain_s:.0f} s")
        time.sleep(plan.drain_s)
    finally:
        for worker in workers:
            worker.stop()
        if trainer is not None:
            trainer.stop()
    return {
        "examples": read_all(base, "examples", base.partitions),
        "scores": read_all(base, "scores", base.partitions),
        "updates": read_all(base, "model_updates", 1) if remote else [],
        "sent_at": sent_at,
    }


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Rank AUC (ties averaged); NaN without both labels."""
    y = np.asarray(labels, dtype=np.float64)
    positives = float(y.sum())
    negatives = len(y) - positives
    if not positives or not negatives:
        return float("nan")
    order = np.asarray(scores, dtype=np.float64)
    ranks = np.empty(len(order))
    sorter = np.argsort(order, kind="mergesort")
    sorted_scores = order[sorter]
    ranks_sorted = np.arange(1, len(order) + 1, dtype=np.float64)
    # Average the ranks of tied scores.
    _, starts, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(starts, counts, strict=True):
        if count > 1:
            ranks_sorted[start : start + count] = start + (count + 1) / 2
    ranks[sorter] = ranks_sorted
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def model_scores(records: list[Any]) -> dict[str, list[tuple[float, int, dict[str, float]]]]:
    """Per user, ``(broker time s, model version, p_negative by item)`` of every model
    ScoreUpdate, in time order."""
    by_user: dict[str, list[tuple[float, int, dict[str, float]]]] = defaultdict(list)
    for record in records:
        update = orjson.loads(record.value)
        if update.get("source") != "model":
            continue
        items = {s["item_id"]: float(s["p_negative"]) for s in update.get("scores", ())}
        by_user[update["user_id"]].append(
            (record.timestamp / 1000, int(update["model_version"]), items)
        )
    for updates in by_user.values():
        updates.sort(key=lambda u: u[0])
    return by_user


def measure_auc(
    run: dict[str, Any], events: list[Any], truth: dict[str, float]
) -> tuple[float, float, int, int]:
    """``(AUC, ceiling, cases scored, cases)`` of a run (see the module); the ceiling is the
    AUC of the world's own p(negative) of each impression (``truth``) over the same cases."""
    feedback_at: dict[tuple[str, str, Any], float] = {}
    for (topic, _, value), at in zip(events, run["sent_at"], strict=False):
        if topic == "feedback":
            key = (value["user_id"], value["item_id"], value.get("request_id"))
            feedback_at.setdefault(key, at)
    examples = sorted(run["examples"], key=lambda r: r.timestamp)
    seen: set[str] = set()
    cases = []
    for record in examples[int(len(examples) * WARMUP_SHARE) :]:
        example = orjson.loads(record.value)
        if example["example_id"] in seen:
            continue
        seen.add(example["example_id"])
        key = (example["user_id"], example["item_id"], example.get("request_id"))
        cases.append((example, min(feedback_at.get(key, np.inf), record.timestamp / 1000)))
    by_user = model_scores(run["scores"])
    labels, scores, true = [], [], []
    for example, label_at in cases:
        updates = by_user.get(example["user_id"], [])
        index = bisect.bisect_left([u[0] for u in updates], label_at)
        for _, _, items in reversed(updates[:index]):
            if example["item_id"] in items:
                labels.append(negative_label(example))
                scores.append(items[example["item_id"]])
                true.append(truth[example["example_id"]])
                break
    return auc(labels, scores), auc(labels, true), len(labels), len(cases)


def learned_versions(updates: list[Any]) -> list[tuple[int, dict[int, int]]]:
    """``(version, learned offsets)`` of every update on model-updates, in order."""
    found = []
    for record in updates:
        fields = HEADER.unpack_from(record.value)
        if fields[6] != 0:  # only an update's first chunk
            continue
        directory = json.loads(record.value[HEADER.size : HEADER.size + fields[10]])
        learned = {int(p): int(o) for p, o in directory.get("learned", {}).items()}
        found.append((int(fields[4]), learned))
    return found


def measure_freshness(run: dict[str, Any]) -> tuple[list[float], int]:
    """Seconds from each example's publication to its user's first update from a model that
    learned it; and how many examples got none."""
    versions = learned_versions(run["updates"])
    by_user = model_scores(run["scores"])
    delays: list[float] = []
    missed = 0
    for record in run["examples"]:
        learner = next(
            (v for v, learned in versions if learned.get(record.partition, -1) >= record.offset),
            None,
        )
        example = orjson.loads(record.value)
        published = record.timestamp / 1000
        updates = by_user.get(example["user_id"], [])
        first = next(
            (at for at, version, _ in updates
             if learner is not None and at >= published and version >= learner),
            None,
        )  # fmt: skip
        if first is None:
            missed += 1
        else:
            delays.append(first - published)
    return delays, missed


def owner(example: dict[str, Any], partitions: int, models: int) -> int:
    """Which of ``models`` learns an example: its user's partition (the producer's
    partitioner), in contiguous ranges as a range assignor would split them."""
    partition = (murmur2(example["user_id"].encode()) & 0x7FFFFFFF) % partitions
    return partition * models // partitions


def ceiling(plan: Plan, events: list[Any]) -> tuple[float, float, float, float]:
    """The bounds of :mod:`tests.benchmarks.sharing_ceiling` on ``events``: the shared and
    local AUCs of the id models fitted in batch, and the world's own AUC with each item's
    taste and with its creator's and category's."""
    partitions = int(MODEL["partitions"])
    examples = folded_examples(Settings(device="cpu", partitions=partitions), events)
    owners = [owner(example, partitions, WORKERS) for example in examples]
    shared, local = batch_id_models(examples, owners, WORKERS, auc)
    simulator = Simulator(world_config("heavy", seed=SEED, n_users=plan.users))
    cases = examples[int(len(examples) * WARMUP_SHARE) :]
    item, group = world_taste(simulator.world, simulator.config, cases, auc)
    return shared, local, item, group


def replay(plan: Plan, events: list[Any]) -> tuple[float, float]:
    """``(shared AUC, local AUC)`` of the stream replayed offline, without broker or timing.

    The worker's own fold (:class:`tests.driver.FoldDriver`) joins ``events`` into examples;
    one model learns them all, and :data:`WORKERS` models each learn the examples of the
    users of their partitions (the producer's partitioner over the run's partitions, split
    in contiguous ranges as a range assignor would). Each model scores a batch of 1,024 of
    its examples, then learns it; the AUC of ``p_negative`` is over the examples after the
    first :data:`WARMUP_SHARE`. What this leaves out against the live run is freshness.
    """
    partitions = int(MODEL["partitions"])
    settings = Settings(model_buckets=plan.buckets, device="cpu", partitions=partitions)
    examples = folded_examples(settings, events)
    config = model_config(settings)
    scores: dict[str, float] = {}
    for models in (1, WORKERS):
        shares: list[list[dict[str, Any]]] = [[] for _ in range(models)]
        for example in examples:
            shares[owner(example, partitions, models)].append(example)
        for share in shares:
            model = OnlineModel(config)
            for first in range(0, len(share), 1024):
                chunk = share[first : first + 1024]
                batch = ExampleBatch.from_examples(chunk, config)
                for example, p in zip(chunk, model.p_negative(batch), strict=True):
                    scores[f"{models}:{example['example_id']}"] = float(p)
                model.learn_many(batch)
    cases = examples[int(len(examples) * WARMUP_SHARE) :]
    labels = [negative_label(e) for e in cases]
    return tuple(  # type: ignore[return-value]
        auc(labels, [scores[f"{models}:{e['example_id']}"] for e in cases])
        for models in (1, WORKERS)
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench_scale_out", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small world, about 40 s of stream")
    parser.add_argument(
        "--buckets", type=int, default=0, help="NEGSTREAM_MODEL_BUCKETS of both modes (2^18)"
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="replay the stream through one model and through three, without the broker",
    )
    parser.add_argument(
        "--length",
        type=float,
        default=1.0,
        help="scale the stream's impressions and events by this factor (default 1)",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="what sharing could add at most: id models fitted in batch, the world's taste",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.buckets:
        plan = replace(plan, buckets=args.buckets)
    if args.length <= 0:
        parser.error("--length must be positive")
    plan = replace(plan, impressions=int(plan.impressions * args.length))
    seconds = (40.0 if args.quick else 300.0) * args.length
    events, truth = stream(plan, int(RATE * seconds))
    log(
        f"scale-out: {len(events)} events of the heavy world ({plan.users} users), "
        f"model tables of {plan.buckets} buckets"
    )
    if args.offline:
        shared_auc, local_auc = replay(plan, events)
        print(f"offline: shared_auc={shared_auc:.4f} local_auc={local_auc:.4f}")
        return
    if args.ceiling:
        shared_auc, local_auc, item_auc, group_auc = ceiling(plan, events)
        print(
            f"ceiling: batch_shared_auc={shared_auc:.4f} batch_local_auc={local_auc:.4f} "
            f"world_item_taste_auc={item_auc:.4f} world_group_taste_auc={group_auc:.4f}"
        )
        return
    with tempfile.TemporaryDirectory(prefix="negstream-bench-") as tmp:
        root = Path(tmp)
        broker = EmbeddedBroker(log_path=root / "tansu.log")
        broker.start()
        try:
            local = run_mode(broker, root, False, events, plan)
            shared = run_mode(broker, root, True, events, plan)
        finally:
            broker.stop()
    local_auc, local_ceiling, local_scored, local_cases = measure_auc(local, events, truth)
    shared_auc, shared_ceiling, shared_scored, shared_cases = measure_auc(shared, events, truth)
    delays, missed = measure_freshness(shared)
    print(
        f"local:  AUC {local_auc:.4f} over {local_scored} of {local_cases} examples after "
        f"warm-up ({len(local['examples'])} examples, {len(local['scores'])} score updates); "
        f"the world's own p(negative) {local_ceiling:.4f} on them"
    )
    print(
        f"shared: AUC {shared_auc:.4f} over {shared_scored} of {shared_cases} examples after "
        f"warm-up ({len(shared['examples'])} examples, {len(shared['scores'])} score updates); "
        f"the world's own p(negative) {shared_ceiling:.4f} on them"
    )
    print(f"shared: freshness p50 {percentile(delays, 50):.2f} s, p99 "
          f"{percentile(delays, 99):.2f} s over {len(delays)} examples; {missed} never rescored "
          f"by a model that learned them")  # fmt: skip
    print(f"scale-out: shared_auc={shared_auc:.4f} local_auc={local_auc:.4f} "
          f"freshness_p99_s={percentile(delays, 99):.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
