"""Unit tests of the seeded event simulator."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import kinds
from simulator import world as sim_world
from simulator.stream import (
    IMPRESSIONS_TOPIC,
    MALFORMED_REASONS,
    NEGATIVE_FEEDBACK_TOPIC,
    SimEvent,
    Simulator,
    SimulatorConfig,
    to_jsonl_lines,
)
from streams.settings import Settings

IMPRESSION_FIELDS = {
    "event_id": str,
    "user_id": str,
    "item_id": str,
    "creator_id": str,
    "category": str,
    "request_id": str,
    "position": int,
    "timestamp": float,
}
FEEDBACK_FIELDS = {
    "event_id": str,
    "user_id": str,
    "item_id": str,
    "kind": str,
    "creator_id": str,
    "category": str,
    "request_id": str,
    "timestamp": float,
}
SMALL: dict[str, Any] = {"n_users": 200, "n_items": 800, "n_creators": 40, "n_categories": 8}
MIX_IMPRESSIONS = 20_000


def run(n_impressions: int, **overrides: Any) -> tuple[Simulator, list[SimEvent]]:
    simulator = Simulator(SimulatorConfig(**overrides))
    return simulator, list(simulator.events(n_impressions))


def values(events: list[SimEvent], topic: str) -> list[dict[str, Any]]:
    return [e.value for e in events if e.topic == topic and isinstance(e.value, dict)]


def reaction_by_impression(events: list[SimEvent]) -> dict[tuple[str, str], list[str]]:
    """Map each impression's (request_id, item_id) to the kinds of its feedback."""
    reactions: dict[tuple[str, str], list[str]] = {
        (v["request_id"], v["item_id"]): [] for v in values(events, IMPRESSIONS_TOPIC)
    }
    for v in values(events, NEGATIVE_FEEDBACK_TOPIC):
        reactions[(v["request_id"], v["item_id"])].append(v["kind"])
    return reactions


@pytest.fixture(scope="module")
def default_run() -> tuple[Simulator, list[SimEvent]]:
    return run(MIX_IMPRESSIONS)


@pytest.fixture(scope="module")
def faulty_run() -> tuple[Simulator, list[SimEvent]]:
    return run(
        4000,
        duplicate_rate=0.05,
        out_of_order_rate=0.1,
        late_rate=0.05,
        late_delay_s=300.0,
        malformed_rate=0.01,
        **SMALL,
    )


def test_same_seed_gives_identical_events_and_different_seed_does_not() -> None:
    knobs = {"duplicate_rate": 0.05, "malformed_rate": 0.02, "flood_users": 1, **SMALL}
    _, first = run(2000, seed=7, **knobs)
    _, second = run(2000, seed=7, **knobs)
    _, other = run(2000, seed=8, **knobs)
    assert first == second
    assert [e.value for e in first] != [e.value for e in other]


def test_each_events_call_starts_over_from_the_seed() -> None:
    simulator = Simulator(SimulatorConfig(seed=3, **SMALL))
    assert list(simulator.events(500)) == list(simulator.events(500))


def test_exact_impression_count_and_no_faults_by_default(
    default_run: tuple[Simulator, list[SimEvent]],
) -> None:
    _, events = default_run
    assert len(values(events, IMPRESSIONS_TOPIC)) == MIX_IMPRESSIONS
    assert all(e.malformed_reason is None and isinstance(e.value, dict) for e in events)
    event_ids = [e.value["event_id"] for e in events if isinstance(e.value, dict)]
    assert len(event_ids) == len(set(event_ids))


def test_valid_events_follow_the_contract(faulty_run: tuple[Simulator, list[SimEvent]]) -> None:
    simulator, events = faulty_run
    start = simulator.config.start_time
    for event in events:
        if not isinstance(event.value, dict):
            continue
        value = event.value
        assert event.key == value["user_id"]
        fields = IMPRESSION_FIELDS if event.topic == IMPRESSIONS_TOPIC else FEEDBACK_FIELDS
        assert event.topic in (IMPRESSIONS_TOPIC, NEGATIVE_FEEDBACK_TOPIC)
        dwell = event.topic == NEGATIVE_FEEDBACK_TOPIC and value["kind"] in sim_world.DWELL_KINDS
        assert set(value) == set(fields) | ({"dwell_ms"} if dwell else set())
        for name, expected in fields.items():
            assert type(value[name]) is expected, (name, value)
        assert math.isfinite(value["timestamp"]) and value["timestamp"] >= start
        if event.topic == NEGATIVE_FEEDBACK_TOPIC:
            assert value["kind"] in kinds.ALL_KINDS
        if dwell:
            assert type(value["dwell_ms"]) is int and value["dwell_ms"] > 0
            short = value["kind"] == "short_dwell"
            assert (value["dwell_ms"] < 3_000) if short else (value["dwell_ms"] >= 15_000)
        if event.topic == IMPRESSIONS_TOPIC:
            assert 0 <= value["position"] < simulator.config.impressions_per_request


def test_events_come_in_emission_order(faulty_run: tuple[Simulator, list[SimEvent]]) -> None:
    emit_times = [e.emit_time for e in faulty_run[1]]
    assert emit_times == sorted(emit_times)


def test_feedback_delays_stay_within_the_configured_bound(
    default_run: tuple[Simulator, list[SimEvent]],
) -> None:
    simulator, events = default_run
    shown = {(v["request_id"], v["item_id"]): v["timestamp"] for v in values(events, "impressions")}
    delays = [
        v["timestamp"] - shown[(v["request_id"], v["item_id"])]
        for v in values(events, NEGATIVE_FEEDBACK_TOPIC)
    ]
    assert min(delays) >= 0.0
    assert max(delays) <= simulator.config.max_feedback_delay_s
    # Most feedback comes within seconds, some takes much longer.
    assert sum(d < 10.0 for d in delays) / len(delays) > 0.7
    assert any(d > 30.0 for d in delays)


def test_clean_stream_emits_at_event_time_and_impressions_first(
    default_run: tuple[Simulator, list[SimEvent]],
) -> None:
    seen: set[tuple[str, str]] = set()
    for event in default_run[1]:
        assert isinstance(event.value, dict)
        assert event.emit_time == event.value["timestamp"]
        pair = (event.value["request_id"], event.value["item_id"])
        if event.topic == IMPRESSIONS_TOPIC:
            seen.add(pair)
        else:
            assert pair in seen


def test_duplicates_repeat_an_event_id_with_the_same_value(
    faulty_run: tuple[Simulator, list[SimEvent]],
) -> None:
    by_id: dict[str, list[dict[str, Any]]] = {}
    for value in values(faulty_run[1], IMPRESSIONS_TOPIC) + values(
        faulty_run[1], "negative-feedback"
    ):
        by_id.setdefault(value["event_id"], []).append(value)
    repeated = [copies for copies in by_id.values() if len(copies) > 1]
    assert repeated
    assert all(len(copies) == 2 and copies[0] == copies[1] for copies in repeated)


def test_fault_knobs_leave_the_base_traffic_unchanged(
    faulty_run: tuple[Simulator, list[SimEvent]],
) -> None:
    _, clean = run(4000, **SMALL)
    faulty = {v["event_id"]: v for v in values(faulty_run[1], IMPRESSIONS_TOPIC)}
    faulty.update((v["event_id"], v) for v in values(faulty_run[1], NEGATIVE_FEEDBACK_TOPIC))
    base = {v["event_id"]: v for v in values(clean, IMPRESSIONS_TOPIC)}
    base.update((v["event_id"], v) for v in values(clean, NEGATIVE_FEEDBACK_TOPIC))
    assert faulty == base


def test_out_of_order_emits_feedback_before_its_impression() -> None:
    _, events = run(4000, out_of_order_rate=0.2, **SMALL)
    emitted: dict[tuple[str, str, str], float] = {}
    for event in events:
        value = event.value
        assert isinstance(value, dict)
        emitted[(event.topic, value["request_id"], value["item_id"])] = event.emit_time
    feedback = [key[1:] for key in emitted if key[0] == NEGATIVE_FEEDBACK_TOPIC]
    early = [
        pair
        for pair in feedback
        if emitted[(NEGATIVE_FEEDBACK_TOPIC, *pair)] < emitted[(IMPRESSIONS_TOPIC, *pair)]
    ]
    assert 0.15 * len(feedback) < len(early) < 0.25 * len(feedback)


def test_late_events_are_emitted_long_after_their_event_time(
    faulty_run: tuple[Simulator, list[SimEvent]],
) -> None:
    lags = [e.emit_time - e.value["timestamp"] for e in faulty_run[1] if isinstance(e.value, dict)]
    late = [lag for lag in lags if lag >= 300.0]
    assert 0.02 * len(lags) < len(late) < 0.1 * len(lags)


def test_every_malformed_kind_appears_and_is_broken_as_labelled(
    faulty_run: tuple[Simulator, list[SimEvent]],
) -> None:
    malformed = [e for e in faulty_run[1] if e.malformed_reason is not None]
    assert {e.malformed_reason for e in malformed} == set(MALFORMED_REASONS)
    assert all(isinstance(e.value, bytes) for e in malformed)
    out_of_range = [
        json.loads(e.value)["timestamp"]
        for e in malformed
        if e.malformed_reason == "timestamp_out_of_range" and isinstance(e.value, bytes)
    ]
    assert min(out_of_range) < 0 and max(out_of_range) >= 1e13
    for event in malformed:
        payload = event.value
        assert isinstance(payload, bytes)
        reason = event.malformed_reason
        if reason == "not_utf8":
            with pytest.raises(UnicodeDecodeError):
                payload.decode("utf-8")
            continue
        if reason == "bad_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(payload)
            continue
        parsed = json.loads(payload)
        if reason == "missing_field":
            assert "user_id" not in parsed and "event_id" in parsed
        elif reason == "wrong_type":
            assert isinstance(parsed["timestamp"], list)
        elif reason == "unknown_kind":
            assert event.topic == NEGATIVE_FEEDBACK_TOPIC and parsed["kind"] == "meh"
        elif reason == "timestamp_out_of_range":
            assert parsed["timestamp"] >= 1e13 or parsed["timestamp"] < 0
        elif reason == "nan":
            assert b"NaN" in payload and math.isnan(parsed["timestamp"])
        elif reason == "oversize":
            assert Settings.max_payload_bytes < len(payload) < 1_000_000


def test_jsonl_lines_hold_the_valid_events_only(
    faulty_run: tuple[Simulator, list[SimEvent]],
) -> None:
    events = faulty_run[1]
    lines = list(to_jsonl_lines(events))
    valid = [e for e in events if isinstance(e.value, dict)]
    assert len(lines) == len(valid) < len(events)
    assert all(line.endswith(b"\n") for line in lines)
    parsed = [json.loads(line) for line in lines]
    assert parsed == [{"topic": e.topic, "key": e.key, "value": e.value} for e in valid]


def test_reaction_mix_is_inside_the_documented_ranges(
    default_run: tuple[Simulator, list[SimEvent]],
) -> None:
    reactions = reaction_by_impression(default_run[1])
    assert all(len(found) <= 1 for found in reactions.values())
    negative = sum(bool(found) and found[0] in kinds.NEGATIVE_KINDS for found in reactions.values())
    positive = sum(bool(found) and found[0] in kinds.POSITIVE for found in reactions.values())
    assert 0.15 <= negative / MIX_IMPRESSIONS <= 0.25
    assert 0.20 <= positive / MIX_IMPRESSIONS <= 0.30
    every_kind = Counter(found[0] for found in reactions.values() if found)
    assert set(every_kind) == kinds.ALL_KINDS


def test_ground_truth_has_one_valid_record_per_impression(
    default_run: tuple[Simulator, list[SimEvent]],
) -> None:
    simulator, events = default_run
    truth = simulator.ground_truth()
    impressions = values(events, IMPRESSIONS_TOPIC)
    assert sorted(r["event_id"] for r in truth) == sorted(v["event_id"] for v in impressions)
    shown = {v["event_id"]: (v["user_id"], v["item_id"]) for v in impressions}
    for record in truth:
        assert shown[record["event_id"]] == (record["user_id"], record["item_id"])
        groups = ("p_explicit_negative", "p_implicit_negative", "p_engagement", "p_negative")
        assert all(0.0 <= record[name] <= 1.0 for name in groups)
        p_negative = record["p_explicit_negative"] + record["p_implicit_negative"]
        assert record["p_negative"] == pytest.approx(p_negative)
        assert record["p_negative"] + record["p_engagement"] <= 1.0 + 1e-12


@pytest.mark.parametrize(
    ("probability", "kind_group"),
    [
        ("p_negative", kinds.NEGATIVE_KINDS),
        ("p_explicit_negative", frozenset(kinds.EXPLICIT_NEGATIVE)),
        ("p_engagement", frozenset(kinds.POSITIVE)),
    ],
)
def test_ground_truth_matches_the_observed_rates(
    default_run: tuple[Simulator, list[SimEvent]], probability: str, kind_group: frozenset[str]
) -> None:
    simulator, events = default_run
    truth = simulator.ground_truth()
    reactions = reaction_by_impression(events)
    observed = sum(bool(found) and found[0] in kind_group for found in reactions.values())
    expected = sum(r[probability] for r in truth)
    # Outcomes are independent Bernoulli draws with these probabilities: 5 sigma.
    sigma = math.sqrt(sum(r[probability] * (1.0 - r[probability]) for r in truth))
    assert abs(observed - expected) < 5.0 * sigma


def test_an_explicit_negative_ends_engagement_and_raises_later_negatives(
    default_run: tuple[Simulator, list[SimEvent]],
) -> None:
    simulator, events = default_run
    truth = {r["event_id"]: r for r in simulator.ground_truth()}
    reactions = reaction_by_impression(events)
    rejected: dict[tuple[str, str], dict[str, Any]] = {}
    raised = 0
    for value in values(events, IMPRESSIONS_TOPIC):
        pair = (value["user_id"], value["item_id"])
        record = truth[value["event_id"]]
        found = reactions[(value["request_id"], value["item_id"])]
        if pair in rejected:
            # Same user and item, so only the remembered negatives can move the probability.
            assert record["p_engagement"] == 0.0
            assert not set(found) & set(kinds.POSITIVE)
            earlier = rejected[pair]["p_explicit_negative"]
            assert record["p_explicit_negative"] >= earlier
            raised += record["p_explicit_negative"] > earlier
        elif found and found[0] in kinds.EXPLICIT_NEGATIVE:
            rejected[pair] = record
    assert raised > 0


def test_probabilities_rise_with_hate_and_remembered_negatives() -> None:
    config = SimulatorConfig()
    affinity = np.zeros(4)
    hated = np.array([False, True, False, False])
    remembered = np.array([0.0, 0.0, 1.0, 3.0])
    blocked = np.array([False, False, False, True])
    p_explicit, p_implicit, p_engaged = sim_world.feedback_probabilities(
        config, affinity, 0.0, hated, remembered, blocked, np.ones(4)
    )
    assert p_explicit[1] > p_explicit[0] and p_explicit[3] > p_explicit[2] > p_explicit[0]
    assert p_implicit[2] > p_implicit[0]
    assert p_engaged[3] == 0.0 < p_engaged[0]
    drifted = sim_world.feedback_probabilities(
        config, affinity, 0.0, hated, remembered, blocked, np.full(4, 100.0)
    )
    assert np.allclose(drifted[0] + drifted[1], sim_world.MAX_NEGATIVE_PROBABILITY)


def test_drift_raises_the_category_negative_rate() -> None:
    factor = 4.0
    _, events = run(MIX_IMPRESSIONS, drift_at=50.0, drift_category="cat03", drift_factor=factor)
    drift_time = SimulatorConfig().start_time + 50.0
    reactions = reaction_by_impression(events)
    counts: Counter[tuple[str, bool, bool]] = Counter()
    for value in values(events, IMPRESSIONS_TOPIC):
        found = reactions[(value["request_id"], value["item_id"])]
        negative = bool(found) and found[0] in kinds.NEGATIVE_KINDS
        counts[(value["category"], value["timestamp"] >= drift_time, negative)] += 1

    def rate(category: str, after: bool) -> float:
        hits = counts[(category, after, True)]
        return hits / (hits + counts[(category, after, False)])

    assert rate("cat03", after=True) >= factor / 2.0 * rate("cat03", after=False)
    assert rate("cat04", after=True) < 1.5 * rate("cat04", after=False)


def test_flood_users_send_only_negatives_far_above_human_rates() -> None:
    flood_rate = 100.0
    _, events = run(3000, flood_users=2, flood_rate=flood_rate, **SMALL)
    feedback = values(events, NEGATIVE_FEEDBACK_TOPIC)
    impressions = values(events, IMPRESSIONS_TOPIC)
    span = max(v["timestamp"] for v in impressions) - min(v["timestamp"] for v in impressions)
    per_user = Counter(v["user_id"] for v in feedback)
    bots = {user for user in per_user if user.startswith("bot")}
    assert bots == {"bot000", "bot001"}
    assert not bots & {v["user_id"] for v in impressions}
    assert all(v["kind"] in kinds.NEGATIVE_KINDS for v in feedback if v["user_id"] in bots)
    busiest_human = max(count for user, count in per_user.items() if user not in bots)
    for bot in bots:
        assert per_user[bot] / span >= 0.8 * flood_rate
        assert per_user[bot] > 20 * busiest_human


def test_write_ground_truth_writes_one_json_line_per_impression(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(**SMALL))
    for _ in simulator.events(250):
        pass
    path = tmp_path / "truth.jsonl"
    assert simulator.write_ground_truth(path) == 250
    lines = path.read_bytes().splitlines()
    assert [json.loads(line) for line in lines] == simulator.ground_truth()


def test_ground_truth_can_be_switched_off_without_changing_the_events() -> None:
    simulator = Simulator(SimulatorConfig(keep_ground_truth=False, **SMALL))
    events = list(simulator.events(300))
    assert simulator.ground_truth() == []
    assert events == run(300, **SMALL)[1]


@pytest.mark.parametrize(
    "bad",
    [
        {"duplicate_rate": 1.5},
        {"malformed_rate": -0.1},
        {"n_users": 0},
        {"drift_at": 10.0},
        {"drift_at": 10.0, "drift_category": "cat99"},
        {"flood_rate": 0.0},
    ],
)
def test_config_rejects_impossible_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulatorConfig(**bad)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_impressions=st.integers(0, 300),
    per_request=st.integers(1, 12),
    duplicate_rate=st.sampled_from([0.0, 0.3]),
    out_of_order_rate=st.sampled_from([0.0, 0.5]),
)
def test_any_config_keeps_order_counts_and_truth(
    seed: int, n_impressions: int, per_request: int, duplicate_rate: float, out_of_order_rate: float
) -> None:
    config = SimulatorConfig(
        seed=seed,
        impressions_per_request=per_request,
        duplicate_rate=duplicate_rate,
        out_of_order_rate=out_of_order_rate,
        n_users=30,
        n_items=40,
        n_creators=5,
        n_categories=3,
    )
    simulator = Simulator(config)
    events = list(simulator.events(n_impressions))
    emit_times = [e.emit_time for e in events]
    assert emit_times == sorted(emit_times)
    impression_ids = {v["event_id"] for v in values(events, IMPRESSIONS_TOPIC)}
    assert len(impression_ids) == n_impressions
    assert {r["event_id"] for r in simulator.ground_truth()} == impression_ids
