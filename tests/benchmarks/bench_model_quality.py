"""Model quality on the simulator: prequential AUC vs the oracle, responsiveness, ablations."""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from agents.state import fold as user_state
from model import ExampleBatch, LogLoss, ModelConfig, OnlineModel, RollingAUC
from model.config import ENGAGEMENT, EXPLICIT_NEGATIVE, HEADS, p_negative
from schemas.events import Example, Feedback, Impression
from schemas.kinds import DEFAULT_SEVERITY, NEGATIVE_KINDS, NO_REACTION
from schemas.validation import validate_feedback, validate_impression
from simulator.stream import IMPRESSIONS_TOPIC, Simulator, SimulatorConfig
from simulator.world import category_name, creator_name, item_name
from streams.settings import Settings

try:
    from tests.benchmarks import bench_model_throughput
except ModuleNotFoundError:  # run as a script: its own folder, not the repo root, is on sys.path
    import bench_model_throughput  # type: ignore[no-redef]

_EXPLICIT = HEADS.index("explicit_negative")
_IMPLICIT = HEADS.index("implicit_negative")
_ENGAGEMENT = HEADS.index("engagement")
#: Candidates ranked per responsiveness probe, and same-creator items among them (at most).
CANDIDATES = 50
SAME_CREATOR = 5
#: Fewest other items a creator needs for its disliked item to be probed.
MIN_SAME_CREATOR = 3
TRAIN_BATCH = 1024
WARMUP_FRACTION = 0.2
#: Stream segments of the learning-curve table (AUC and oracle AUC of each).
SEGMENTS = 10


@dataclass
class Probe:
    """A user's explicit negative and the fixed candidate set ranked around it."""

    example_id: str
    rows: list[dict[str, Any]]
    disliked: int
    same_creator: list[int]


@dataclass
class JoinedStream:
    """Examples in publication order, the true p_negative of each, and the probes."""

    examples: list[dict[str, Any]]
    true_p_negative: npt.NDArray[np.float64]
    probes: dict[str, Probe]
    join_seconds: float
    counts: dict[str, int] = field(default_factory=dict)


def _record(example: Example) -> dict[str, Any]:
    # A flat mapping as the trainer decodes it from ``training-examples``; asdict would
    # deep-copy every features dict for nothing.
    return {
        "example_id": example.example_id,
        "user_id": example.user_id,
        "item_id": example.item_id,
        "creator_id": example.creator_id,
        "category": example.category,
        "label": example.label,
        "kinds": list(example.kinds),
        "weight": example.weight,
        "features": example.features,
    }


class _ProbeBuilder:
    """Draws each probe's candidate set from the simulated world, seeded."""

    def __init__(self, simulator: Simulator, rate: float, seed: int) -> None:
        world = simulator.world
        self.rate = rate
        self.rng = np.random.default_rng(seed)
        self.item_cdf = world.item_cdf
        self.item_creator = world.item_creator
        self.item_category = world.item_category
        self.item_index = {item_name(i): i for i in range(len(world.item_creator))}
        by_creator: dict[int, list[int]] = defaultdict(list)
        for item, creator in enumerate(world.item_creator.tolist()):
            by_creator[creator].append(item)
        self.by_creator = by_creator

    def build(self, example: Example, state: dict[str, Any], settings: Settings) -> Probe | None:
        """A probe for an explicit negative (sampled at ``rate``), else ``None``."""
        if example.label not in EXPLICIT_NEGATIVE or self.rng.random() >= self.rate:
            return None
        item = self.item_index[example.item_id]
        creator = int(self.item_creator[item])
        others = [i for i in self.by_creator[creator] if i != item]
        if len(others) < MIN_SAME_CREATOR:
            return None
        same = self.rng.permutation(others)[:SAME_CREATOR].tolist()
        # Fillers follow item popularity, as a retrieval stage would, from other creators.
        fillers: list[int] = []
        while len(fillers) < CANDIDATES - 1 - len(same):
            draw = np.searchsorted(self.item_cdf, self.rng.random(CANDIDATES)).tolist()
            fillers += [i for i in draw if self.item_creator[i] != creator and i not in fillers]
        chosen = [item, *same, *fillers[: CANDIDATES - 1 - len(same)]]
        rows = []
        for candidate in chosen:
            item_id = item_name(candidate)
            creator_id = creator_name(int(self.item_creator[candidate]))
            category = category_name(int(self.item_category[candidate]))
            rows.append(
                {
                    "user_id": example.user_id,
                    "item_id": item_id,
                    "creator_id": creator_id,
                    "category": category,
                    # The user's table as it stands when the example is published; held
                    # fixed before and after learning so the figure is the model's own.
                    "features": user_state.features(state, settings, item_id, creator_id, category),
                }
            )
        return Probe(example.example_id, rows, 0, list(range(1, 1 + len(same))))


def _events(simulator: Simulator, n_impressions: int) -> Iterator[Impression | Feedback]:
    for event in simulator.events(n_impressions):
        if not isinstance(event.value, dict):
            continue
        if event.topic == IMPRESSIONS_TOPIC:
            yield validate_impression(event.value)
        else:
            yield validate_feedback(event.value)


def join_stream(n_impressions: int, seed: int, probe_rate: float) -> JoinedStream:
    """Run the simulator through the worker's per-user join, micro-batch by micro-batch.

    Events are taken in emission order in micro-batches of ``Settings.batch_size``, grouped
    by user and folded with ``apply_events`` then ``advance`` under a watermark of the newest
    event time less ``watermark_delay_s``, as the input pipeline does; users whose label window
    closes while they are idle are advanced too. Examples come out in publication order.
    """
    started = time.perf_counter()
    settings = Settings()
    simulator = Simulator(SimulatorConfig(seed=seed))
    probes = _ProbeBuilder(simulator, probe_rate, seed)
    states: dict[str, dict[str, Any]] = {}
    deadlines: dict[str, float] = {}
    examples: list[dict[str, Any]] = []
    found: dict[str, Probe] = {}
    counts: defaultdict[str, int] = defaultdict(int)
    newest = -math.inf

    def publish(user_id: str, out: user_state.Outputs) -> None:
        for key, value in out.counts.items():
            counts[key] += value
        for example in out.examples:
            examples.append(_record(example))
            probe = probes.build(example, states[user_id], settings)
            if probe is not None:
                found[example.example_id] = probe

    def step(batch: list[Impression | Feedback], watermark: float) -> None:
        by_user: dict[str, list[Impression | Feedback]] = defaultdict(list)
        for event in batch:
            by_user[event.user_id].append(event)
        for user_id, events in by_user.items():
            state, out = user_state.apply_events(states.get(user_id), events, settings, watermark)
            states[user_id], closed = user_state.advance(state, watermark, user_id, settings)
            out.extend(closed)
            publish(user_id, out)
            deadlines[user_id] = user_state.next_deadline(states[user_id], settings) or math.inf
        for user_id in [u for u, due in deadlines.items() if due <= watermark]:
            states[user_id], closed = user_state.advance(
                states[user_id], watermark, user_id, settings
            )
            publish(user_id, closed)
            deadlines[user_id] = user_state.next_deadline(states[user_id], settings) or math.inf

    batch: list[Impression | Feedback] = []
    for event in _events(simulator, n_impressions):
        batch.append(event)
        newest = max(newest, event.timestamp)
        if len(batch) == settings.batch_size:
            step(batch, newest - settings.watermark_delay_s)
            batch = []
    # End of stream: the worker's idle flush lets event time run past every label window.
    step(batch, newest + settings.label_window_s + 1.0)
    truth = {record["event_id"]: record["p_negative"] for record in simulator.iter_ground_truth()}
    true_p = np.array([truth[example["example_id"]] for example in examples], dtype=np.float64)
    return JoinedStream(examples, true_p, found, time.perf_counter() - started, dict(counts))


def without_negatives(example: Mapping[str, Any]) -> dict[str, Any]:
    """The ablation's view of an example: negative kinds become ``"none"`` (absent positives).

    Examples
    --------
    >>> without_negatives({"label": "hide", "kinds": ["click", "hide"], "weight": 3.0})
    {'label': 'click', 'kinds': ['click'], 'weight': 1.0}
    """
    kinds = [kind for kind in example["kinds"] if kind not in NEGATIVE_KINDS]
    positives = [kind for kind in (example["label"], *kinds) if kind in ENGAGEMENT]
    label = positives[0] if positives else NO_REACTION
    return {**example, "label": label, "kinds": kinds, "weight": DEFAULT_SEVERITY.get(label, 1.0)}


def _p_negative(p: npt.NDArray[np.float32], ignore_negatives: bool) -> npt.NDArray[np.float64]:
    if ignore_negatives:
        # Without negative labels the negative heads only ever see 0: rank by engagement.
        return 1.0 - p[:, _ENGAGEMENT].astype(np.float64)
    return p_negative(p.astype(np.float64))


def _rank(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Position of each candidate when sorted by ``scores`` descending (0 is the top)."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(len(scores))
    return ranks


def _segment_bounds(n: int, segments: int) -> list[tuple[int, int]]:
    """``segments`` consecutive, near-equal ``[start, stop)`` ranges covering ``range(n)``.

    Examples
    --------
    >>> _segment_bounds(10, 3)
    [(0, 3), (3, 6), (6, 10)]
    """
    return [(k * n // segments, (k + 1) * n // segments) for k in range(segments)]


def _auc(labels: npt.NDArray[np.float64], scores: npt.NDArray[np.float64]) -> float:
    return RollingAUC(window=max(2, len(labels))).update(labels, scores).get()


def _batches(examples: Sequence[Mapping[str, Any]], config: ModelConfig) -> list[ExampleBatch]:
    """``examples`` in micro-batches of :data:`TRAIN_BATCH`, in order."""
    return [
        ExampleBatch.from_examples(examples[i : i + TRAIN_BATCH], config)
        for i in range(0, len(examples), TRAIN_BATCH)
    ]


def _any_negative(batch: ExampleBatch) -> npt.NDArray[np.float64]:
    """The label every quality figure scores: 1 where an example has any negative reaction."""
    targets = batch.targets
    return np.maximum(targets[:, _EXPLICIT], targets[:, _IMPLICIT]).astype(np.float64)


def evaluate(
    name: str,
    config: ModelConfig,
    stream: JoinedStream,
    ignore_negatives: bool = False,
    warmup_fraction: float = WARMUP_FRACTION,
    segments: int = SEGMENTS,
) -> dict[str, Any]:
    """Prequential pass of one model variant: metrics after warm-up, per stream segment, and
    probe rank drops."""
    model = OnlineModel(config)
    # Metrics score the true label, "any negative", whatever the variant trained on.
    labelled = _batches(stream.examples, config)
    n = len(stream.examples)
    warmup = int(warmup_fraction * n)
    labels = np.zeros(n, dtype=np.float64)
    scores = np.zeros(n, dtype=np.float64)
    drops: dict[str, list[float]] = {"item": [], "creator": []}
    train_seconds = 0.0
    for index, batch in enumerate(labelled):
        start = index * TRAIN_BATCH
        records = stream.examples[start : start + TRAIN_BATCH]
        train = batch
        if ignore_negatives:
            train = ExampleBatch.from_examples([without_negatives(r) for r in records], config)
        stop = start + len(records)
        scores[start:stop] = _p_negative(model.predict_many(batch), ignore_negatives)
        labels[start:stop] = _any_negative(batch)
        probes = [
            stream.probes[r["example_id"]] for r in records if r["example_id"] in stream.probes
        ]
        probes = probes if start >= warmup else []
        rows = [row for probe in probes for row in probe.rows]
        before = _p_negative(model.predict_many(rows), ignore_negatives) if rows else None
        tick = time.perf_counter()
        model.learn_many(train)
        train_seconds += time.perf_counter() - tick
        if before is None:
            continue
        after = _p_negative(model.predict_many(rows), ignore_negatives)
        for at, probe in zip(range(0, len(rows), CANDIDATES), probes, strict=True):
            # Ranking score is 1 - p_negative: a higher p_negative means a lower position.
            drop = _rank(1.0 - after[at : at + CANDIDATES]) - _rank(
                1.0 - before[at : at + CANDIDATES]
            )
            drops["item"].append(float(drop[probe.disliked]))
            drops["creator"].append(float(drop[probe.same_creator].mean()))
    truth = stream.true_p_negative
    after_warmup = slice(warmup, None)
    span = CANDIDATES - 1
    return {
        "variant": name,
        "auc": _auc(labels[after_warmup], scores[after_warmup]),
        "log_loss": LogLoss().update(labels[after_warmup], scores[after_warmup]).get(),
        "oracle_auc": _auc(labels[after_warmup], truth[after_warmup]),
        "oracle_log_loss": LogLoss().update(labels[after_warmup], truth[after_warmup]).get(),
        "segments": [
            (
                start,
                stop,
                _auc(labels[start:stop], scores[start:stop]),
                _auc(labels[start:stop], truth[start:stop]),
            )
            for start, stop in _segment_bounds(n, segments)
        ],
        "probes": len(drops["item"]),
        "item_drop": float(np.mean(drops["item"])) if drops["item"] else math.nan,
        "item_drop_pct": 100.0 * float(np.mean(drops["item"])) / span
        if drops["item"]
        else math.nan,
        "creator_drop": float(np.mean(drops["creator"])) if drops["creator"] else math.nan,
        "creator_drop_pct": 100.0 * float(np.mean(drops["creator"])) / span
        if drops["creator"]
        else math.nan,
        "train_examples_per_s": n / train_seconds,
    }


def offline_reference(
    config: ModelConfig, stream: JoinedStream, passes: int, train_fraction: float = 0.8
) -> tuple[float, list[tuple[int, float]]]:
    """The oracle's AUC on the held-out part, and a model's after each of ``passes`` passes.

    The model learns the first ``train_fraction`` of the stream (in order on the first pass,
    shuffled by batch after), and is scored on the rest without learning from it: what this
    much data allows the model family, free of the online model's one-pass constraint.
    """
    model = OnlineModel(config)
    n = len(stream.examples)
    cut = int(train_fraction * n)
    train = _batches(stream.examples[:cut], config)
    test = _batches(stream.examples[cut:], config)
    labels = np.concatenate([_any_negative(batch) for batch in test])
    rng = np.random.default_rng(config.seed)
    aucs = []
    for index in range(passes):
        order = range(len(train)) if index == 0 else rng.permutation(len(train))
        for position in order:
            model.learn_many(train[position])
        scores = np.concatenate([_p_negative(model.predict_many(b), False) for b in test])
        aucs.append((index + 1, _auc(labels, scores)))
    return _auc(labels, stream.true_p_negative[cut:]), aucs


def machine() -> str:
    """CPU model, core count, torch version, threads and GPU, for the table's header."""
    cpu = platform.processor() or "unknown cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"cpu: {cpu} ({torch.multiprocessing.cpu_count()} cores), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, gpu: {gpu}"
    )


def _table(results: Sequence[Mapping[str, Any]]) -> str:
    header = (
        "| variant | AUC | log loss | oracle AUC | oracle log loss | AUC gap | probes "
        "| item drop (pos / %) | same-creator drop (pos / %) | learn_many ex/s |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in results:
        gap = r["oracle_auc"] - r["auc"]
        lines.append(
            f"| {r['variant']} | {r['auc']:.4f} | {r['log_loss']:.4f} | {r['oracle_auc']:.4f} "
            f"| {r['oracle_log_loss']:.4f} | {gap:+.4f} | {r['probes']} "
            f"| {r['item_drop']:.1f} / {r['item_drop_pct']:.0f}% "
            f"| {r['creator_drop']:.1f} / {r['creator_drop_pct']:.0f}% "
            f"| {r['train_examples_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def _curve(results: Sequence[Mapping[str, Any]]) -> str:
    """Learning curve: each variant's AUC per stream segment, beside the oracle's and the
    first variant's gap to it (the oracle is the same for every variant)."""
    header = (
        "| examples | oracle AUC | "
        + " | ".join(f"{r['variant']} AUC" for r in results)
        + f" | {results[0]['variant']} gap |"
    )
    lines = [header, "|" + "---|" * (len(results) + 3)]
    for index, (start, stop, _, oracle) in enumerate(results[0]["segments"]):
        aucs = [r["segments"][index][2] for r in results]
        lines.append(
            f"| {start:,}-{stop:,} | {oracle:.4f} | "
            + " | ".join(f"{auc:.4f}" for auc in aucs)
            + f" | {oracle - aucs[0]:+.4f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print its tables; ``--quick`` for a ~30k-impression smoke run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="30k impressions instead of 200k")
    parser.add_argument(
        "--impressions",
        type=int,
        default=None,
        help="stream length, about one example an impression; the join grows faster than "
        "linearly (a user's table grows with the stream): ~60 s at 200k, ~8 min at 1M",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--warmup", type=float, default=WARMUP_FRACTION, help="share of the stream not scored"
    )
    parser.add_argument(
        "--segments", type=int, default=SEGMENTS, help="rows of the learning-curve table"
    )
    parser.add_argument(
        "--default-only", action="store_true", help="skip the ablation and the variants"
    )
    parser.add_argument(
        "--offline-reference",
        type=int,
        default=0,
        metavar="PASSES",
        help="also train the default model offline on the first 80%% for up to PASSES "
        "passes and score the last 20%% (what the data allows without the one-pass limit)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    impressions = args.impressions or (30_000 if args.quick else 200_000)
    segments = 5 if args.quick and args.segments == SEGMENTS else args.segments
    stream = join_stream(impressions, args.seed, probe_rate=0.5 if args.quick else 0.15)
    base = ModelConfig(seed=args.seed)
    variants: list[tuple[str, ModelConfig, bool]] = [
        ("default", base, False),
        ("ablation: negatives ignored", base, True),
        ("adversarial_eps=0.05", ModelConfig(seed=args.seed, adversarial_eps=0.05), False),
        ("extra_negatives=2", ModelConfig(seed=args.seed, extra_negatives=2), False),
    ]
    if args.default_only:
        variants = variants[:1]
    results = [
        evaluate(name, config, stream, ignore, args.warmup, segments)
        for name, config, ignore in variants
    ]
    print(f"## model quality ({impressions:,} impressions, seed {args.seed})")
    print(machine())
    print(
        f"join: {len(stream.examples):,} examples in {stream.join_seconds:.1f} s; "
        f"warm-up {args.warmup:.0%} (the first {int(args.warmup * len(stream.examples)):,} "
        f"examples are not scored); micro-batch {TRAIN_BATCH}; "
        f"{CANDIDATES} candidates a probe, up to {SAME_CREATOR} by the same creator"
    )
    print()
    print(_table(results))
    print()
    print(f"Learning curve: prequential AUC of each {100 / segments:.0f}% of the stream.")
    print()
    print(_curve(results))
    print()
    if args.offline_reference > 0:
        oracle, aucs = offline_reference(base, stream, args.offline_reference)
        print(f"Offline reference: the default model trained on the first 80% and scored on "
              f"the last 20% (oracle AUC there {oracle:.4f}).")  # fmt: skip
        print()
        print("| passes | held-out AUC | gap |")
        print("|---|---|---|")
        for passes, auc in aucs:
            print(f"| {passes} | {auc:.4f} | {oracle - auc:+.4f} |")
        print()
    batches = 15 if args.quick else 40
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        speed = bench_model_throughput.measure(device, TRAIN_BATCH, batches, warmup=5)
        print(
            f"throughput {device}: {speed['examples_per_s']:,.0f} examples/s featurise+train, "
            f"{speed['train_only_examples_per_s']:,.0f} train only (batch {TRAIN_BATCH})"
        )


if __name__ == "__main__":
    main()
