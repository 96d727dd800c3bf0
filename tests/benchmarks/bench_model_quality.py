"""Model quality on the simulator's worlds: the model against simple baselines, prequentially.

Every method sees the same examples, joined by the worker's fold in the worker's order, in
micro-batches of 1024, and scores each micro-batch before it learns from it.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import functools
import math
import pickle
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from agents.state.config import StateConfig
from agents.state.features import features as table_features
from agents.state.state import UserState
from agents.wiring import state_config
from model import CandidateBatch, ExampleBatch, LogLoss, ModelConfig, OnlineModel, RollingAUC
from model.baselines import RateLogistic, RunningRate
from model.config import ENGAGEMENT, EXPLICIT_NEGATIVE, HEADS
from schemas.events import FEATURE_NAMES
from schemas.kinds import DEFAULT_SEVERITY, NEGATIVE_KINDS, NO_REACTION
from simulator.stream import IMPRESSIONS_TOPIC, Simulator, dumps_json
from simulator.world import category_name, creator_name, item_name
from simulator.worlds import HEAVY_QUICK_IMPRESSIONS, WORLD_NAMES, world_config
from streams.settings import Settings
from tests.benchmarks import training
from tests.driver import FoldDriver

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
#: Share of the stream whose AUC is the cold-start figure.
FIRST_FRACTION = 0.1
#: Stream segments of the learning-curve table.
SEGMENTS = 10
#: The ideas measured against the default (``--ideas``): ModelConfig overrides, each undoing
#: or changing one choice of the default.
IDEAS: dict[str, dict[str, Any]] = {
    "idea: no pair rates": {"rate_crosses": ()},
    "idea: negative rates only": {"rate_columns": ("negative",)},
    "idea: no id counts": {"rate_counts": False},
    "idea: pair rates not nested": {"rate_nested": False},
    "idea: no pair label counts": {"rate_pair_counts": False},
    "idea: per-example pair biases": {"crosses": ("user*item", "user*creator", "user*category")},
    "idea: recency decay (half-life 100k examples)": {"rate_half_life": 100_000.0},
    "idea: rate prior 3": {"rate_prior": 3.0},
    "idea: rate prior 30": {"rate_prior": 30.0},
    "idea: ridge 1": {"logistic_ridge": 1.0},
    "idea: no warm-up blend": {"deep_warmup": 0.0},
}
#: Impressions of a world's run: full and ``--quick``.
IMPRESSIONS = {"uniform": (200_000, 30_000), "heavy": (200_000, HEAVY_QUICK_IMPRESSIONS)}


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

    world: str
    examples: list[dict[str, Any]]
    true_p_negative: npt.NDArray[np.float64]
    probes: dict[str, Probe]
    join_seconds: float
    batches: int = 0


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

    def build(
        self, example: Mapping[str, Any], state: UserState, config: StateConfig
    ) -> Probe | None:
        """A probe for an explicit negative (sampled at ``rate``), else ``None``."""
        if example["label"] not in EXPLICIT_NEGATIVE or self.rng.random() >= self.rate:
            return None
        item = self.item_index[example["item_id"]]
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
                    "user_id": example["user_id"],
                    "item_id": item_id,
                    "creator_id": creator_id,
                    "category": category,
                    # The user's table as it stands when the example is published; held
                    # fixed before and after learning so the figure is the learner's own.
                    "features": table_features(state, config, item_id, creator_id, category),
                }
            )
        return Probe(example["example_id"], rows, 0, list(range(1, 1 + len(same))))


def _records(simulator: Simulator, n_impressions: int) -> Iterator[tuple[str, bytes, bytes]]:
    """The simulator's events as raw input records (topic setting, key, JSON value)."""
    for event in simulator.events(n_impressions):
        topic = "impressions" if event.topic == IMPRESSIONS_TOPIC else "feedback"
        value = event.value if isinstance(event.value, bytes) else dumps_json(event.value)
        yield topic, event.key.encode(), value


def join_stream(world: str, n_impressions: int, seed: int, probe_rate: float = 0.0) -> JoinedStream:
    """Run a simulated world through the worker's own input pipeline, in the worker's order.

    :class:`tests.driver.FoldDriver` runs :class:`agents.pipeline.InputPipeline` in-process:
    raw records in emission order, micro-batches of ``Settings.batch_size``, each folded
    under the watermark as it stood before the batch was read, then the label windows the
    new watermark closed; at the end both inputs go quiet and every window closes. Examples
    come out as the trainer decodes them from ``training-examples``, in publication order.
    """
    started = time.perf_counter()
    settings = Settings()
    config = state_config(settings)
    simulator = Simulator(world_config(world, seed=seed))
    probes = _ProbeBuilder(simulator, probe_rate, seed)
    driver = FoldDriver(settings)
    examples = driver.captured.examples
    found: dict[str, Probe] = {}

    def published(since: int) -> None:
        # Probes see the user's table as the example is published, right after its batch.
        for example in examples[since:]:
            state = driver.users.get(example["user_id"])
            probe = probes.build(example, state, config) if state is not None else None
            if probe is not None:
                found[example["example_id"]] = probe

    async def run() -> None:
        batch: list[Any] = []
        for topic, key, value in _records(simulator, n_impressions):
            batch.append(driver.message(topic, key, value))
            if len(batch) == settings.batch_size:
                before = len(examples)
                await driver.feed(batch)
                published(before)
                batch = []
        before = len(examples)
        if batch:
            await driver.feed(batch)
        await driver.finish()
        published(before)

    asyncio.run(run())
    truth = {record["event_id"]: record["p_negative"] for record in simulator.iter_ground_truth()}
    true_p = np.array([truth[example["example_id"]] for example in examples], dtype=np.float64)
    elapsed = time.perf_counter() - started
    return JoinedStream(world, examples, true_p, found, elapsed, driver.captured.steps)


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


class Scorer(Protocol):
    """What a row of the table needs: learn a batch, give p(negative) of candidates."""

    def learn_many(self, batch: ExampleBatch) -> None: ...

    def p_negative(self, batch: CandidateBatch) -> npt.NDArray[np.float32]: ...


@dataclass
class Method:
    """One row of the table: a learner, and whether it learns without negatives."""

    name: str
    build: Callable[[], Scorer]
    ignore_negatives: bool = False
    baseline: bool = False

    def score(self, learner: Scorer, batch: CandidateBatch) -> npt.NDArray[np.float64]:
        """The ranking score (higher: more likely negative)."""
        if self.ignore_negatives and isinstance(learner, OnlineModel):
            # Without negative labels the negative heads only ever see 0: rank by engagement.
            return 1.0 - learner.predict_many(batch)[:, _ENGAGEMENT].astype(np.float64)
        return learner.p_negative(batch).astype(np.float64)


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


def _any_negative(batch: ExampleBatch) -> npt.NDArray[np.float64]:
    """The label every quality figure scores: 1 where an example has any negative reaction."""
    targets = batch.targets
    return np.maximum(targets[:, _EXPLICIT], targets[:, _IMPLICIT]).astype(np.float64)


def after_explicit_negative(examples: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.bool_]:
    """Whether each example's user had an explicit negative in an earlier example.

    Examples
    --------
    >>> rows = [{"user_id": "a", "label": "hide"}, {"user_id": "a", "label": "none"},
    ...         {"user_id": "b", "label": "none"}]
    >>> after_explicit_negative(rows).tolist()
    [False, True, False]
    """
    marked: set[str] = set()
    flags = np.zeros(len(examples), dtype=bool)
    for index, example in enumerate(examples):
        flags[index] = example["user_id"] in marked
        if example["label"] in EXPLICIT_NEGATIVE:
            marked.add(example["user_id"])
    return flags


class Prepared:
    """A stream featurised once: model batches, ablation batches, labels, flags."""

    def __init__(self, stream: JoinedStream, config: ModelConfig) -> None:
        examples = stream.examples
        starts = range(0, len(examples), TRAIN_BATCH)
        self.batches = [
            ExampleBatch.from_examples(examples[i : i + TRAIN_BATCH], config) for i in starts
        ]
        self.ablated = [
            ExampleBatch.from_examples(
                [without_negatives(r) for r in examples[i : i + TRAIN_BATCH]], config
            )
            for i in starts
        ]
        self.labels = np.concatenate([_any_negative(b) for b in self.batches])
        self.after_negative = after_explicit_negative(examples)
        self.config = config


def evaluate(
    method: Method, stream: JoinedStream, prepared: Prepared, warmup_fraction: float
) -> dict[str, Any]:
    """Prequential pass of one method: AUC after warm-up, in the first tenth, log loss, AUC on
    users with an earlier explicit negative, per segment, and probe rank drops."""
    learner = method.build()
    n = len(stream.examples)
    warmup = int(warmup_fraction * n)
    labels = prepared.labels
    scores = np.zeros(n, dtype=np.float64)
    drops: dict[str, list[float]] = {"item": [], "creator": []}
    train_seconds = 0.0
    for index, batch in enumerate(prepared.batches):
        start = index * TRAIN_BATCH
        stop = start + len(batch)
        scores[start:stop] = method.score(learner, batch)
        probes = [
            stream.probes[r["example_id"]]
            for r in stream.examples[start:stop]
            if start >= warmup and r["example_id"] in stream.probes
        ]
        rows = CandidateBatch.from_rows([row for p in probes for row in p.rows], prepared.config)
        before = method.score(learner, rows) if probes else None
        tick = time.perf_counter()
        learner.learn_many(prepared.ablated[index] if method.ignore_negatives else batch)
        train_seconds += time.perf_counter() - tick
        if before is None:
            continue
        after = method.score(learner, rows)
        for at, probe in zip(range(0, len(rows), CANDIDATES), probes, strict=True):
            # Ranking score is 1 - p_negative: a higher p_negative means a lower position.
            drop = _rank(-after[at : at + CANDIDATES]) - _rank(-before[at : at + CANDIDATES])
            drops["item"].append(float(drop[probe.disliked]))
            drops["creator"].append(float(drop[probe.same_creator].mean()))
    late = slice(warmup, None)
    first = slice(0, int(FIRST_FRACTION * n))
    flagged = prepared.after_negative[late]
    return {
        "method": method.name,
        "baseline": method.baseline,
        "auc": _auc(labels[late], scores[late]),
        "first_tenth": _auc(labels[first], scores[first]),
        "log_loss": LogLoss().update(labels[late], scores[late]).get(),
        "auc_after_negative": _auc(labels[late][flagged], scores[late][flagged]),
        "segments": [_auc(labels[a:b], scores[a:b]) for a, b in _segment_bounds(n, SEGMENTS)],
        "probes": len(drops["item"]),
        "item_drop": float(np.mean(drops["item"])) if drops["item"] else math.nan,
        "creator_drop": float(np.mean(drops["creator"])) if drops["creator"] else math.nan,
        "train_examples_per_s": n / max(train_seconds, 1e-9),
    }


def offline_reference(
    config: ModelConfig, prepared: Prepared, train_fraction: float = 0.8
) -> dict[str, Any]:
    """The model trained offline, one pass over the first ``train_fraction`` of the stream,
    and scored on the rest without learning from it."""
    model = OnlineModel(config)
    cut = int(train_fraction * len(prepared.batches))
    for batch in prepared.batches[:cut]:
        model.learn_many(batch)
    test = prepared.batches[cut:]
    labels = np.concatenate([_any_negative(batch) for batch in test])
    scores = np.concatenate([model.p_negative(batch).astype(np.float64) for batch in test])
    return {
        "method": f"offline reference: one pass on the first {train_fraction:.0%}, "
        f"scored on the rest",
        "auc": _auc(labels, scores),
        "log_loss": LogLoss().update(labels, scores).get(),
    }


def methods(seed: int, variants: Mapping[str, dict[str, Any]]) -> list[Method]:
    """The default model, its ablation, each ``variants`` config and the baselines."""
    base = ModelConfig(seed=seed, features=FEATURE_NAMES, severity=dict(DEFAULT_SEVERITY))
    rows = [
        Method("default", lambda: OnlineModel(base)),
        Method("ablation: negatives ignored", lambda: OnlineModel(base), ignore_negatives=True),
    ]
    for name, overrides in variants.items():
        config = ModelConfig.from_dict({**base.to_dict(), **overrides})
        rows.append(Method(name, functools.partial(OnlineModel, config)))
    for field_name in ("item", "creator", "category", "user"):
        rows.append(
            Method(
                f"baseline: running {field_name} negative rate",
                functools.partial(RunningRate, field_name, base),
                baseline=True,
            )
        )
    rows.append(
        Method(
            "baseline: logistic regression on the rates + dense features",
            lambda: RateLogistic(base),
            baseline=True,
        )
    )
    return rows


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


def _figure(value: float, digits: int = 4) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _table(results: Sequence[Mapping[str, Any]], offline: Mapping[str, Any]) -> str:
    header = (
        "| method | AUC after warm-up | AUC first tenth | log loss "
        "| AUC, users with an earlier explicit negative | probes "
        "| disliked item drop (of 50) | same-creator drop | learn ex/s |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in results:
        lines.append(
            f"| {r['method']} | {_figure(r['auc'])} | {_figure(r['first_tenth'])} "
            f"| {_figure(r['log_loss'])} | {_figure(r['auc_after_negative'])} | {r['probes']} "
            f"| {_figure(r['item_drop'], 1)} | {_figure(r['creator_drop'], 1)} "
            f"| {r['train_examples_per_s']:,.0f} |"
        )
    lines.append(
        f"| {offline['method']} | {_figure(offline['auc'])} | — | "
        f"{_figure(offline['log_loss'])} | — | — | — | — | — |"
    )
    return "\n".join(lines)


def _curve(results: Sequence[Mapping[str, Any]], truth: Sequence[float]) -> str:
    """AUC of each tenth of the stream: the oracle's, and each method's."""
    header = "| tenth | oracle | " + " | ".join(r["method"] for r in results) + " |"
    lines = [header, "|" + "---|" * (len(results) + 2)]
    for index, oracle in enumerate(truth):
        row = " | ".join(_figure(r["segments"][index]) for r in results)
        lines.append(f"| {index + 1} | {_figure(oracle)} | {row} |")
    return "\n".join(lines)


def summary(world: str, results: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
    """The world's ``quality`` line, and the targets it misses (empty when it meets them).

    The best baseline is the one with the highest AUC after warm-up; the cold-start target
    is the best first tenth of any baseline, and the log-loss target the lowest of any.
    """
    by_name = {r["method"]: r for r in results}
    default, ablation = by_name["default"], by_name["ablation: negatives ignored"]
    baselines = [r for r in results if r["baseline"]]
    best = max(baselines, key=lambda r: r["auc"])
    first_best = max(r["first_tenth"] for r in baselines)
    loss_best = min(r["log_loss"] for r in baselines)
    line = (
        f"quality {world}: default={default['auc']:.4f} best_baseline={best['auc']:.4f} "
        f"ablation={ablation['auc']:.4f} first_tenth_default={default['first_tenth']:.4f} "
        f"first_tenth_best_baseline={first_best:.4f}"
    )
    missed = []
    if default["auc"] < best["auc"] + 0.01:
        missed.append(f"AUC {default['auc']:.4f} < best baseline {best['auc']:.4f} + 0.01")
    if default["auc"] < ablation["auc"] + 0.01:
        missed.append(f"AUC {default['auc']:.4f} < ablation {ablation['auc']:.4f} + 0.01")
    if default["first_tenth"] < first_best:
        missed.append(f"first tenth {default['first_tenth']:.4f} < {first_best:.4f}")
    if default["log_loss"] >= loss_best:
        missed.append(f"log loss {default['log_loss']:.4f} >= baselines' {loss_best:.4f}")
    return line, missed


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value`` -> a ModelConfig override (values as Python literals)."""
    name, _, pairs = text.partition(":")
    overrides = {}
    for pair in filter(None, pairs.split(",")):
        key, _, value = pair.partition("=")
        overrides[key.strip()] = ast.literal_eval(value.strip())
    return name, overrides


def _joined(world: str, impressions: int, args: argparse.Namespace) -> JoinedStream:
    """:func:`join_stream`, or its pickle under ``--cache`` from an earlier identical run."""
    if args.cache is None:
        return join_stream(world, impressions, args.seed, probe_rate=args.probe_rate)
    path = Path(args.cache) / f"{world}-{impressions}-{args.seed}-{args.probe_rate}.pickle"
    if path.exists():
        with path.open("rb") as saved:
            stream: JoinedStream = pickle.load(saved)
        return stream
    stream = join_stream(world, impressions, args.seed, probe_rate=args.probe_rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as sink:
        pickle.dump(stream, sink)
    return stream


def run_world(world: str, impressions: int, args: argparse.Namespace) -> None:
    """Join one world, evaluate every method on it and print its tables and quality line."""
    stream = _joined(world, impressions, args)
    variants = {**(IDEAS if args.ideas else {}), **dict(args.variant)}
    chosen = methods(args.seed, variants)
    if args.only:
        kept = ("default", "ablation: negatives ignored", *args.only)
        chosen = [m for m in chosen if m.name in kept or m.baseline]
    prepared = Prepared(stream, ModelConfig(features=FEATURE_NAMES))
    results = [evaluate(m, stream, prepared, args.warmup) for m in chosen]
    base = ModelConfig(seed=args.seed, features=FEATURE_NAMES, severity=dict(DEFAULT_SEVERITY))
    offline = offline_reference(base, prepared)
    n = len(stream.examples)
    truth = [
        _auc(prepared.labels[a:b], stream.true_p_negative[a:b])
        for a, b in _segment_bounds(n, SEGMENTS)
    ]
    late = slice(int(args.warmup * n), None)
    oracle = _auc(prepared.labels[late], stream.true_p_negative[late])
    print(f"\n## {world} world: {impressions:,} impressions, seed {args.seed}")
    print(
        f"join (the worker's fold, in its order): {n:,} examples in {stream.join_seconds:.1f} s; "
        f"{prepared.labels.mean():.1%} negative; warm-up {args.warmup:.0%}; micro-batch "
        f"{TRAIN_BATCH}; first tenth = the first {int(FIRST_FRACTION * n):,} examples; "
        f"{int(prepared.after_negative[late].sum()):,} scored examples of users with an "
        f"earlier explicit negative; oracle AUC after warm-up {oracle:.4f}"
    )
    print()
    print(_table(results, offline))
    print()
    print(_curve(results, truth))
    print()
    line, missed = summary(world, results)
    print("targets met" if not missed else "targets missed: " + "; ".join(missed))
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark on each world; ``--quick`` for short runs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="30k / 50k impressions: a smoke run (the targets are for the full 200k)",
    )
    parser.add_argument(
        "--world", choices=(*WORLD_NAMES, "all"), default="all", help="world(s) to run"
    )
    parser.add_argument("--impressions", type=int, default=None, help="per world")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument(
        "--warmup", type=float, default=WARMUP_FRACTION, help="share of the stream not scored"
    )
    parser.add_argument("--probe-rate", type=float, default=0.15, help="explicit negatives probed")
    parser.add_argument(
        "--variant",
        type=_variant,
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="an extra model row with these ModelConfig overrides",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only these rows (with the default and the baselines)",
    )
    parser.add_argument(
        "--ideas", action="store_true", help="add a row for each idea measured (IDEAS)"
    )
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument(
        "--cache",
        default=None,
        help="folder to keep joined streams in between runs (the "
        "join is most of a run's time; delete it after changing the fold or the simulator)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# model quality\n{machine()}")
    if not args.no_throughput:
        batches = 15 if args.quick else 40
        for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            speed = training.measure(device, TRAIN_BATCH, batches, warmup=5)
            print(
                f"throughput {device}: {speed['examples_per_s']:,.0f} examples/s "
                f"featurise+train, {speed['train_only_examples_per_s']:,.0f} train only "
                f"(batch {TRAIN_BATCH})"
            )
    worlds = WORLD_NAMES if args.world == "all" else (args.world,)
    for world in worlds:
        full, quick = IMPRESSIONS[world]
        run_world(world, args.impressions or (quick if args.quick else full), args)


if __name__ == "__main__":
    main()
