"""Seeded simulator of impression and feedback events with true probabilities and faults."""

from __future__ import annotations

import heapq
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.kinds import BLOCK_CREATOR, EXPLICIT_NEGATIVE
from simulator.heavy import heavy_blocks, heavy_world
from simulator.requests import (
    EXPLICIT_GROUP,
    GROUP_KINDS,
    NO_REACTION,
    RequestBlock,
    draw_requests,
    dwell_seconds,
    reaction_groups,
)
from simulator.shape import HeavyShape
from simulator.world import (
    DWELL_KINDS,
    SimulatorConfig,
    World,
    category_name,
    creator_name,
    feedback_probabilities,
    item_name,
    user_name,
)
from simulator.worlds import WORLD_NAMES, world_config

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a declared dependency
    orjson = None  # type: ignore[assignment]

__all__ = [
    "IMPRESSIONS_TOPIC",
    "MALFORMED_REASONS",
    "NEGATIVE_FEEDBACK_TOPIC",
    "WORLD_NAMES",
    "HeavyShape",
    "SimEvent",
    "Simulator",
    "SimulatorConfig",
    "World",
    "dumps_json",
    "to_jsonl_lines",
    "world_config",
]

IMPRESSIONS_TOPIC = "impressions"
NEGATIVE_FEEDBACK_TOPIC = "negative-feedback"

#: Reasons of the malformed payloads, injected in this order round-robin.
MALFORMED_REASONS: tuple[str, ...] = (
    "bad_json",
    "not_utf8",
    "missing_field",
    "wrong_type",
    "unknown_kind",
    "timestamp_out_of_range",
    "nan",
    "oversize",
)
#: Padding of an oversize payload: over the worker's default limit
#: (``NEGSTREAM_MAX_PAYLOAD_BYTES``, 64 KiB) and under a Kafka broker's default largest
#: record (1 MB), so a producer can send it and the worker dead-letters it. A larger one
#: makes the embedded broker, which keeps every record in memory and slows with its topics'
#: size, hold mostly padding.
OVERSIZE_BYTES = 128 * 1024
#: What flooding bots send: only negatives, none that needs a dwell time.
_FLOOD_KINDS = (*EXPLICIT_NEGATIVE, "skip")
#: Longest extra wait of a duplicate behind the original emission.
DUPLICATE_SPREAD_S = 30.0
#: Requests drawn together in one vectorised step.
BLOCK_REQUESTS = 256

# One request's ground truth: user_id, impression ids, item ids, then the three
# probability columns, kept as columns so generation never builds the records it may not need.
_TruthRows = tuple[str, list[str], list[str], list[float], list[float], list[float]]


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One message as a producer would send it, at its emission time.

    ``value`` is the JSON value as a dict for valid events and raw bytes for malformed
    payloads, whose ``malformed_reason`` names what is wrong with them.
    """

    topic: str
    key: str
    value: dict[str, Any] | bytes
    emit_time: float
    malformed_reason: str | None = None


def dumps_json(value: Any) -> bytes:
    """Serialise ``value`` as compact JSON bytes, with orjson where it is installed.

    Examples
    --------
    >>> dumps_json({"a": 1})
    b'{"a":1}'
    """
    if orjson is not None:
        return orjson.dumps(value)
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def to_jsonl_lines(events: Iterable[SimEvent]) -> Iterator[bytes]:
    """Yield one ``{"topic", "key", "value"}`` JSON line per valid event; skip malformed ones.

    Examples
    --------
    >>> event = SimEvent("impressions", "u1", {"event_id": "e1"}, 0.0)
    >>> list(to_jsonl_lines([event, SimEvent("impressions", "u1", b"{", 0.0, "bad_json")]))
    [b'{"topic":"impressions","key":"u1","value":{"event_id":"e1"}}\\n']
    """
    for event in events:
        if isinstance(event.value, dict):
            yield dumps_json({"topic": event.topic, "key": event.key, "value": event.value}) + b"\n"


def _malformed_payload(reason: str, value: dict[str, Any], rounds: int) -> bytes:
    """Return the raw bytes of a payload broken the way ``reason`` says.

    ``rounds`` counts earlier payloads of the same reason; out-of-range timestamps alternate
    between far future and negative with it.
    """
    broken = dict(value)
    if reason == "bad_json":
        text = json.dumps(broken).encode()
        return text[: len(text) // 2]
    if reason == "not_utf8":
        return json.dumps(broken).encode()[:-1] + b', "note": "\xff\xfe\xfa"}'
    if reason == "missing_field":
        del broken["user_id"]
    elif reason == "wrong_type":
        broken["timestamp"] = [broken["timestamp"]]
    elif reason == "unknown_kind":
        broken["kind"] = "meh"
    elif reason == "timestamp_out_of_range":
        broken["timestamp"] = 1e13 if rounds % 2 == 0 else -1.0
    elif reason == "nan":
        broken["timestamp"] = float("nan")
    elif reason == "oversize":
        broken["padding"] = "x" * OVERSIZE_BYTES
    else:
        raise ValueError(f"unknown malformed reason {reason!r}")
    # json writes float("nan") as the literal NaN, which is the point of the "nan" case.
    return json.dumps(broken).encode()


class Simulator:
    """Generate a reproducible stream of impressions and feedback from a synthetic world.

    Parameters
    ----------
    config : SimulatorConfig, optional
        World size, base rates and fault knobs; the defaults inject no faults and make the
        uniform world. ``world_config("heavy")`` gives the heavy-tailed one.

    Examples
    --------
    >>> sim = Simulator(SimulatorConfig(n_users=20, n_items=50, n_creators=5, n_categories=3))
    >>> events = list(sim.events(30))
    >>> sum(e.topic == "impressions" for e in events), len(sim.ground_truth())
    (30, 30)
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config if config is not None else SimulatorConfig()
        world_seed, *run_seeds = np.random.SeedSequence(self.config.seed).spawn(4)
        world_rng = np.random.default_rng(world_seed)
        if self.config.heavy is None:
            self.world = World.generate(self.config, world_rng)
        else:
            self.world = heavy_world(self.config, world_rng)
        self._run_seeds = run_seeds
        self._truth: list[_TruthRows] = []

    def events(self, n_impressions: int) -> Iterator[SimEvent]:
        """Yield the events of ``n_impressions`` impressions in emission order.

        Every call starts over from the seed, so two calls give identical streams. Emission
        times never decrease; event times (``timestamp``) may lag them for late events and,
        in the heavy world, by each topic's lag. The heavy world spreads ``n_impressions``
        over its whole span, so a shorter run is not a prefix of a longer one.
        """
        if n_impressions < 0:
            raise ValueError("n_impressions must not be negative")
        self._truth = []
        run = _Run(self.config, self.world, self._run_seeds, self._truth)
        return run.iterate(n_impressions)

    def iter_ground_truth(self) -> Iterator[dict[str, Any]]:
        """Yield the true probabilities of each impression of the latest ``events`` run.

        Records cover the impressions generated so far, all of them once that run's iterator
        is exhausted; each holds ``event_id``, ``user_id``, ``item_id``,
        ``p_explicit_negative``, ``p_implicit_negative``, ``p_engagement`` and ``p_negative``.
        """
        for user_id, event_ids, item_ids, p_explicit, p_implicit, p_engaged in self._truth:
            for event_id, item_id, p_e, p_i, p_g in zip(
                event_ids, item_ids, p_explicit, p_implicit, p_engaged, strict=False
            ):
                yield {
                    "event_id": event_id,
                    "user_id": user_id,
                    "item_id": item_id,
                    "p_explicit_negative": p_e,
                    "p_implicit_negative": p_i,
                    "p_engagement": p_g,
                    "p_negative": min(p_e + p_i, 1.0),
                }

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return :meth:`iter_ground_truth` as a list."""
        return list(self.iter_ground_truth())

    def write_ground_truth(self, path: str | os.PathLike[str]) -> int:
        """Write :meth:`ground_truth` as JSON lines to ``path``; return the record count."""
        count = 0
        with open(path, "wb") as sink:
            for record in self.iter_ground_truth():
                sink.write(dumps_json(record) + b"\n")
                count += 1
        return count


class _Run:
    """State of one pass over the stream: random streams, user memory and the emit queue."""

    def __init__(
        self,
        config: SimulatorConfig,
        world: World,
        seeds: list[np.random.SeedSequence],
        truth: list[_TruthRows],
    ) -> None:
        self.config = config
        self.world = world
        # Separate streams keep the base traffic identical whether fault knobs are on or off.
        self.traffic, self.faults, self.flood = (np.random.default_rng(s) for s in seeds)
        self.truth = truth
        self.queue: list[tuple[float, int, SimEvent]] = []
        self.ready: list[SimEvent] = []
        self.horizon = -math.inf
        self.pushed = 0
        self.feedback_count = 0
        self.malformed_count = 0
        self.blocked: set[tuple[int, int]] = set()
        self.creator_negatives: dict[tuple[int, int], int] = {}
        self.faulty = config.duplicate_rate + config.late_rate + config.malformed_rate > 0.0
        self.user_names = [user_name(u) for u in range(config.n_users)]
        self.item_names = [item_name(i) for i in range(config.n_items)]
        self.creator_names = [creator_name(c) for c in range(config.n_creators)]
        self.category_names = [category_name(c) for c in range(config.n_categories)]
        self.bot_next = [
            config.start_time + float(self.flood.exponential(1.0 / config.flood_rate))
            for _ in range(config.flood_users)
        ]

    def iterate(self, n_impressions: int) -> Iterator[SimEvent]:
        per_request = self.config.impressions_per_request
        blocks = self._blocks(-(-n_impressions // per_request))
        request = 0
        shown = 0
        while shown < n_impressions:
            block = next(blocks)
            for row, request_time in enumerate(block.times):
                if shown >= n_impressions:
                    break
                self._flood_until(request_time)
                yield from self._release(request_time)
                count = min(per_request, n_impressions - shown)
                self.horizon = request_time
                self._request(block, row, request, count)
                self.horizon = -math.inf
                yield from self.ready
                self.ready.clear()
                request += 1
                shown += count
        yield from self._release(math.inf)

    def _blocks(self, n_requests: int) -> Iterator[RequestBlock]:
        config, world = self.config, self.world
        if config.heavy is not None:
            yield from heavy_blocks(config, world, self.traffic, n_requests, BLOCK_REQUESTS)
            return
        now = config.start_time
        while True:
            block = draw_requests(config, world, self.traffic, now, BLOCK_REQUESTS)
            yield block
            now = block.times[-1]

    def _release(self, until: float) -> Iterator[SimEvent]:
        queue = self.queue
        while queue and queue[0][0] <= until:
            yield heapq.heappop(queue)[2]

    def _push(self, event: SimEvent) -> None:
        # Events due at the current request time skip the heap: nothing queued is due sooner.
        if event.emit_time <= self.horizon:
            self.ready.append(event)
            return
        heapq.heappush(self.queue, (event.emit_time, self.pushed, event))
        self.pushed += 1

    def _schedule(self, topic: str, key: str, value: dict[str, Any], emit_time: float) -> float:
        """Queue a valid event with its faults; return the emission time it got."""
        if not self.faulty:
            self._push(SimEvent(topic, key, value, emit_time))
            return emit_time
        config = self.config
        late, duplicate, malformed, spread = self.faults.random(4).tolist()
        if late < config.late_rate:
            emit_time += config.late_delay_s
        self._push(SimEvent(topic, key, value, emit_time))
        if duplicate < config.duplicate_rate:
            self._push(SimEvent(topic, key, dict(value), emit_time + spread * DUPLICATE_SPREAD_S))
        if malformed < config.malformed_rate:
            reason = MALFORMED_REASONS[self.malformed_count % len(MALFORMED_REASONS)]
            rounds = self.malformed_count // len(MALFORMED_REASONS)
            payload = _malformed_payload(reason, value, rounds)
            bad_topic = NEGATIVE_FEEDBACK_TOPIC if reason == "unknown_kind" else topic
            self._push(SimEvent(bad_topic, key, payload, emit_time, reason))
            self.malformed_count += 1
        return emit_time

    def _remembered(
        self, block: RequestBlock, row: int, user: int, count: int
    ) -> tuple[list[list[float]], list[int]]:
        """Return the request's probabilities and groups after the user's earlier negatives."""
        creators, items = block.creators[row], block.items[row]
        penalties = [self.creator_negatives.get((user, c), 0) for c in creators[:count]]
        blocked = [(user, i) in self.blocked for i in items[:count]]
        if not any(penalties) and not any(blocked):
            return block.probabilities[row], block.groups[row]
        probabilities = feedback_probabilities(
            self.config,
            block.affinity[row, :count],
            block.negativity[row],
            block.hated[row, :count],
            np.array(penalties, dtype=np.float64),
            np.array(blocked, dtype=np.bool_),
            block.multiplier[row, :count],
        )
        groups = reaction_groups(probabilities, block.outcome[row, :count]).tolist()
        return [column.tolist() for column in probabilities], groups

    def _request(self, block: RequestBlock, row: int, request: int, count: int) -> None:
        config = self.config
        now, user = block.times[row], block.users[row]
        probabilities, groups = self._remembered(block, row, user, count)
        p_explicit, p_implicit, p_engaged = (column[:count] for column in probabilities)
        items, creators, categories = block.items[row], block.creators[row], block.categories[row]
        kind_draws, delays, dwell_draws = (
            block.kind_draw[row],
            block.delays[row],
            block.dwell_draw[row],
        )
        user_id = self.user_names[user]
        request_id = f"req-{config.seed}-{request}"
        seed = config.seed
        item_ids = [self.item_names[item] for item in items[:count]]
        impression_ids = [f"imp-{seed}-{request}-{position}" for position in range(count)]
        if config.keep_ground_truth:
            self.truth.append(
                (user_id, impression_ids, item_ids, p_explicit, p_implicit, p_engaged)
            )
        for position in range(count):
            group, item_id = groups[position], item_ids[position]
            creator_id = self.creator_names[creators[position]]
            category = self.category_names[categories[position]]
            impression_emit = now + block.impression_lag[row]
            if group != NO_REACTION:
                kinds = GROUP_KINDS[group]
                kind = kinds[min(block.kind_index[group][row][position], len(kinds) - 1)]
                delay = delays[position]
                feedback: dict[str, Any] = {
                    "event_id": self._feedback_id(),
                    "user_id": user_id,
                    "item_id": item_id,
                    "kind": kind,
                    "creator_id": creator_id,
                    "category": category,
                    "request_id": request_id,
                }
                if kind in DWELL_KINDS:
                    dwell_s = dwell_seconds(kind, dwell_draws[position], config)
                    feedback["dwell_ms"] = round(dwell_s * 1000.0)
                    delay = max(delay, dwell_s)
                feedback["timestamp"] = now + delay
                emit = now + delay + block.feedback_lag[row]
                emitted = self._schedule(NEGATIVE_FEEDBACK_TOPIC, user_id, feedback, emit)
                # The fault stream decides reordering so the base traffic stays the same.
                if config.out_of_order_rate > 0.0 and (
                    self.faults.random() < config.out_of_order_rate
                ):
                    impression_emit = emitted + 0.05 + 0.9 * kind_draws[position]
                if group == EXPLICIT_GROUP:
                    self.blocked.add((user, items[position]))
                    key = (user, creators[position])
                    weight = 3 if kind == BLOCK_CREATOR else 1
                    self.creator_negatives[key] = self.creator_negatives.get(key, 0) + weight
            impression = {
                "event_id": impression_ids[position],
                "user_id": user_id,
                "item_id": item_id,
                "creator_id": creator_id,
                "category": category,
                "request_id": request_id,
                "position": position,
                "timestamp": now,
            }
            self._schedule(IMPRESSIONS_TOPIC, user_id, impression, impression_emit)

    def _feedback_id(self) -> str:
        self.feedback_count += 1
        return f"fb-{self.config.seed}-{self.feedback_count}"

    def _flood_until(self, now: float) -> None:
        """Queue every bot event with an event time before ``now``."""
        config, world, flood = self.config, self.world, self.flood
        for bot, next_time in enumerate(self.bot_next):
            bot_id = f"bot{bot:03d}"
            while next_time < now:
                item = int(flood.integers(config.n_items))
                feedback = {
                    "event_id": self._feedback_id(),
                    "user_id": bot_id,
                    "item_id": self.item_names[item],
                    "kind": _FLOOD_KINDS[int(flood.integers(len(_FLOOD_KINDS)))],
                    "creator_id": self.creator_names[int(world.item_creator[item])],
                    "category": self.category_names[int(world.item_category[item])],
                    "request_id": f"req-{config.seed}-{bot_id}",
                    "timestamp": next_time,
                }
                self._schedule(NEGATIVE_FEEDBACK_TOPIC, bot_id, feedback, next_time)
                next_time += float(flood.exponential(1.0 / config.flood_rate))
            self.bot_next[bot] = next_time
