"""Drift reports flag a category whose negative rate jumps, and stay quiet on a steady stream.

The simulator's stream goes through the worker's own label join (pure functions, no broker)
and the drift monitor, one report per event-time period; the simulator's true p(negative)
stands in for the model's predictions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from agents.state import fold as user_state
from model.monitor.drift_monitor import DriftMonitor
from schemas.kinds import NEGATIVE_KINDS
from schemas.validation import validate_feedback, validate_impression
from simulator.stream import Simulator, SimulatorConfig
from tests.support import state_config

PERIOD_S = 10.0
PERIODS = 10
DRIFT_PERIOD = 6
SETTINGS = state_config(label_window_s=10.0, watermark_delay_s=0.0)


def reports(drift: bool) -> list[list[str]]:
    config = SimulatorConfig(
        n_users=300, seed=11, drift_at=DRIFT_PERIOD * PERIOD_S if drift else None,
        drift_category="cat03" if drift else None, drift_factor=4.0 if drift else 1.0,
    )  # fmt: skip
    simulator = Simulator(config)
    start = config.start_time
    impressions_per_s = config.impressions_per_request / config.mean_request_gap_s
    events = simulator.events(int(PERIODS * PERIOD_S * impressions_per_s))
    states: dict[str, Any] = {}
    examples = []
    newest = 0.0
    for event in events:
        assert isinstance(event.value, dict)
        record = (validate_impression if event.topic == "impressions" else validate_feedback)(
            event.value
        )
        newest = max(newest, record.timestamp)
        state, out = user_state.apply_events(states.get(record.user_id), [record], SETTINGS, newest)
        state, closed = user_state.advance(state, newest, record.user_id, SETTINGS)
        states[record.user_id] = state
        examples += out.examples + closed.examples
    truth = {row["event_id"]: row["p_negative"] for row in simulator.ground_truth()}
    by_period = defaultdict(list)
    for example in examples:
        by_period[math.floor((example.timestamp - start) / PERIOD_S)].append(example)
    monitor = DriftMonitor(reference_periods=3, min_examples=500)
    fired = []
    for period in range(PERIODS):
        batch = by_period[period]
        assert len(batch) > 1000
        negative = np.array([e.label in NEGATIVE_KINDS for e in batch])
        monitor.update(
            [truth[e.example_id] for e in batch], negative,
            [e.label for e in batch if e.label in NEGATIVE_KINDS], [e.category for e in batch],
        )  # fmt: skip
        _, alerts = monitor.report()
        fired.append(sorted({a.metric for a in alerts}))
    return fired


@pytest.fixture(scope="module")
def drifted() -> list[list[str]]:
    return reports(drift=True)


def test_a_category_jump_is_flagged_within_two_periods(drifted: list[list[str]]) -> None:
    assert not any(drifted[:DRIFT_PERIOD]), f"no alert before the jump: {drifted[:DRIFT_PERIOD]}"
    flagged = drifted[DRIFT_PERIOD] + drifted[DRIFT_PERIOD + 1]
    assert "category_negative_rate:cat03" in flagged


def test_a_steady_stream_of_the_same_length_raises_no_alert() -> None:
    assert reports(drift=False) == [[] for _ in range(PERIODS)]
