"""Tests of the drift statistics: PSI, rate shift, Page-Hinkley, calibration, label delay."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.monitor.calibration import CalibrationTable, LabelDelay
from model.monitor.change import PageHinkley
from model.monitor.drift import PSI_ACT, PSI_WATCH, FixedBinHistogram, PSIMonitor, psi, psi_level
from model.monitor.metrics import CalibrationError
from model.monitor.rates import RateShift


def _json_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    # allow_nan=False: a checkpoint must be strict JSON, not Python's NaN/Infinity extension.
    loaded: dict[str, Any] = json.loads(json.dumps(state, allow_nan=False))
    return loaded


def _frozen(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # A read-only input makes any in-place write by the code under test raise.
    array = np.array(array)
    array.setflags(write=False)
    return array


# --- PSI -------------------------------------------------------------------------------------


def test_psi_of_identical_proportions_is_zero() -> None:
    assert psi([5, 10, 85], [5, 10, 85]) == 0.0
    assert psi([5, 10, 85], [50, 100, 850]) == 0.0


def test_psi_of_a_two_bin_shift_matches_the_formula() -> None:
    # (0.2, 0.8) -> (0.6, 0.4): (0.6 - 0.2) ln 3 + (0.4 - 0.8) ln 0.5 = 0.4 (ln 3 + ln 2)
    assert psi([20, 80], [60, 40]) == pytest.approx(0.4 * math.log(6), rel=1e-12)


def test_psi_smooths_an_empty_bin_with_eps() -> None:
    eps = 1e-3
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - eps) * math.log(0.5 / eps)
    assert psi([100, 0], [50, 50], eps=eps) == pytest.approx(expected, rel=1e-12)


def test_psi_without_observations_is_nan_and_bad_input_raises() -> None:
    assert math.isnan(psi([0, 0, 0], [1, 2, 3]))
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        psi([1, -2], [1, 2])
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2], eps=0.0)


@given(
    st.integers(1, 20).flatmap(
        lambda bins: st.tuples(
            st.lists(st.integers(0, 10**6), min_size=bins, max_size=bins),
            st.lists(st.integers(0, 10**6), min_size=bins, max_size=bins),
        )
    )
)
def test_psi_is_non_negative_and_symmetric(pair: tuple[list[int], list[int]]) -> None:
    reference, current = pair
    value = psi(reference, current)
    if sum(reference) == 0 or sum(current) == 0:
        assert math.isnan(value)
        return
    assert value >= 0.0
    assert psi(current, reference) == pytest.approx(value, rel=1e-9, abs=1e-12)


def test_psi_levels_follow_the_thresholds() -> None:
    assert (PSI_WATCH, PSI_ACT) == (0.1, 0.25)
    assert [psi_level(v) for v in (0.0, 0.0999, 0.1, 0.2499, 0.25, 4.0)] == [
        "ok",
        "ok",
        "watch",
        "watch",
        "act",
        "act",
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psi_stays_low_on_one_distribution_and_high_on_a_shifted_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    monitor = PSIMonitor(reference_size=20_000).update_many(rng.beta(2, 5, 20_000))
    assert monitor.update_many(rng.beta(2, 5, 5_000)).psi() < PSI_WATCH
    assert monitor.roll() < PSI_WATCH
    assert monitor.update_many(rng.beta(5, 2, 5_000)).psi() > PSI_ACT
    assert monitor.level() == "act"


def test_psi_noise_matches_the_documented_expectation() -> None:
    # Same-distribution noise should average (bins - 1) * (1/n_r + 1/n_c), as the docstring says.
    rng = np.random.default_rng(7)
    bins, n_reference, n_current = 10, 2_000, 1_000
    values = [
        psi(
            FixedBinHistogram().update_many(rng.random(n_reference)).counts,
            FixedBinHistogram().update_many(rng.random(n_current)).counts,
        )
        for _ in range(400)
    ]
    expected = (bins - 1) * (1 / n_reference + 1 / n_current)
    assert np.mean(values) == pytest.approx(expected, rel=0.15)


# --- Histogram and monitor ---------------------------------------------------------------------


def test_histogram_bins_are_half_open_with_end_bins_catching_outliers() -> None:
    histogram = FixedBinHistogram([0.0, 1.0, 2.0]).update_many([-5.0, 0.0, 0.999, 1.0, 2.0, 9.0])
    assert histogram.counts.tolist() == [3, 3]
    with pytest.raises(ValueError):
        histogram.update(math.nan)
    with pytest.raises(ValueError):
        FixedBinHistogram([0.0, 0.0, 1.0])


def test_monitor_fills_the_reference_exactly_then_the_current_period() -> None:
    monitor = PSIMonitor(reference_size=5)
    assert math.isnan(monitor.update_many([0.05] * 3).psi())
    monitor.update_many([0.05, 0.95, 0.95, 0.95])
    assert monitor.reference_frozen
    assert monitor.reference.sum() == 5
    assert monitor.current.tolist() == [0] * 9 + [2]


def test_monitor_set_reference_freezes_it() -> None:
    monitor = PSIMonitor().set_reference([1] * 10)
    assert monitor.reference_frozen
    assert monitor.update_many(np.linspace(0.05, 0.95, 10)).psi() == 0.0
    with pytest.raises(ValueError):
        monitor.set_reference([1, 2])


def test_monitor_state_round_trips_through_json() -> None:
    rng = np.random.default_rng(3)
    monitor = PSIMonitor(reference_size=100).update_many(rng.random(150))
    restored = PSIMonitor(reference_size=100)
    restored.load_state_dict(_json_round_trip(monitor.state_dict()))
    batch = rng.random(30)
    assert restored.update_many(batch).psi() == monitor.update_many(batch).psi()
    with pytest.raises(ValueError):
        PSIMonitor(reference_size=99).load_state_dict(monitor.state_dict())


# --- Rate shift --------------------------------------------------------------------------------


def test_rate_shift_reports_rates_ratio_change_and_z() -> None:
    shift = RateShift(reference_impressions=1_000)
    shift.update_many(["hide"] * 10 + ["skip"] * 50, impressions=1_000)
    shift.update_many(["hide"] * 30, impressions=500)
    hide, skip = shift.get()["hide"], shift.get()["skip"]
    assert (hide.current_rate, hide.reference_rate) == (0.06, 0.01)
    assert hide.ratio == pytest.approx(6.0)
    assert hide.change == pytest.approx(0.05)
    pooled = 40 / 1_500
    assert hide.z == pytest.approx(0.05 / math.sqrt(pooled * (1 / 500 + 1 / 1_000)))
    assert (skip.current_rate, skip.ratio, skip.change) == (0.0, 0.0, -0.05)


def test_rate_shift_roll_clears_only_the_current_period() -> None:
    shift = RateShift(reference_impressions=10).update_many(["hide"], 10)
    rolled = shift.update_many(["hide"] * 3, 10).roll()
    assert rolled["hide"].current_rate == pytest.approx(0.3)
    after = shift.get()["hide"]
    assert math.isnan(after.current_rate)
    assert after.reference_rate == pytest.approx(0.1)


def test_rate_shift_state_round_trips_and_rejects_a_bare_string() -> None:
    shift = RateShift(reference_impressions=5).update_many(["hide", "skip"], 5)
    shift.update_many(["skip", "skip"], 4)
    restored = RateShift(reference_impressions=5)
    restored.load_state_dict(_json_round_trip(shift.state_dict()))
    assert restored.get() == shift.get()
    with pytest.raises(TypeError):
        shift.update_many("hide", 1)


# --- Page-Hinkley ------------------------------------------------------------------------------


def _unit_noise_detector() -> PageHinkley:
    # delta = sigma / 2 and threshold = 25 sigma, as the PageHinkley docstring advises.
    return PageHinkley(delta=0.5, threshold=25.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_page_hinkley_catches_a_mean_jump_quickly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    stream = np.concatenate([rng.normal(0, 1, 500), rng.normal(3, 1, 500)])
    detector = _unit_noise_detector()
    detections = [i for i, x in enumerate(stream) if detector.update(float(x)).drift_detected]
    assert detections, "the jump was never detected"
    assert 500 <= detections[0] <= 540


@pytest.mark.parametrize("seed", [10, 11, 12, 13, 14])
def test_page_hinkley_stays_quiet_on_a_stationary_stream(seed: int) -> None:
    rng = np.random.default_rng(seed)
    detector = _unit_noise_detector()
    assert not any(detector.update(float(x)).drift_detected for x in rng.normal(0, 1, 5_000))


def test_page_hinkley_ignores_a_decrease() -> None:
    detector = PageHinkley(min_instances=5, threshold=5.0)
    stream = [10.0] * 50 + [0.0] * 200
    assert not any(detector.update(x).drift_detected for x in stream)


def test_page_hinkley_matches_river_defaults_and_round_trips() -> None:
    detector = PageHinkley()
    assert (detector.min_instances, detector.delta, detector.threshold, detector.alpha) == (
        30,
        0.005,
        50.0,
        1 - 0.0001,
    )
    rng = np.random.default_rng(5)
    for x in rng.normal(0, 0.1, 100):
        detector.update(float(x))
    restored = PageHinkley()
    restored.load_state_dict(_json_round_trip(detector.state_dict()))
    for x in rng.normal(5, 0.1, 20):
        assert restored.update(float(x)).statistic == detector.update(float(x)).statistic
        assert restored.drift_detected == detector.drift_detected
    with pytest.raises(ValueError):
        detector.update(math.inf)


# --- Calibration -------------------------------------------------------------------------------


def test_calibration_ece_is_near_zero_for_a_calibrated_predictor() -> None:
    rng = np.random.default_rng(11)
    p = rng.random(200_000)
    table = CalibrationTable().update_many(p, rng.random(p.size) < p)
    assert table.ece() < 0.01


def test_calibration_ece_is_large_for_a_miscalibrated_predictor() -> None:
    rng = np.random.default_rng(12)
    p = rng.random(200_000)
    # Outcomes follow p / 2: every bucket's mean prediction is twice its rate, so ECE -> E[p]/2.
    table = CalibrationTable().update_many(p, rng.random(p.size) < p / 2)
    assert table.ece() == pytest.approx(0.25, abs=0.01)
    for bucket in table.get():
        assert bucket.observed_rate == pytest.approx(bucket.mean_predicted / 2, abs=0.02)


def test_calibration_table_agrees_with_the_metric_and_round_trips() -> None:
    rng = np.random.default_rng(13)
    p, y = rng.random(1_000), (rng.random(1_000) < 0.3).astype(float)
    table = CalibrationTable().update_many(p, y)
    assert table.ece() == pytest.approx(CalibrationError().update(y, p).get(), rel=1e-12)
    assert sum(bucket.n for bucket in table.get()) == 1_000
    restored = CalibrationTable()
    restored.load_state_dict(_json_round_trip(table.state_dict()))
    assert restored.get() == table.get()
    with pytest.raises(ValueError):
        table.update_many([0.5, 1.5], [0, 1])


def test_empty_calibration_table_keeps_its_rows() -> None:
    rows = CalibrationTable(bins=4).get()
    assert [(row.lo, row.hi, row.n) for row in rows] == [
        (0.0, 0.25, 0),
        (0.25, 0.5, 0),
        (0.5, 0.75, 0),
        (0.75, 1.0, 0),
    ]
    assert math.isnan(rows[0].mean_predicted)
    assert math.isnan(CalibrationTable().ece())


# --- Label delay -------------------------------------------------------------------------------


def test_label_delay_quantiles_are_within_one_bin() -> None:
    rng = np.random.default_rng(21)
    delays = rng.exponential(600.0, 50_000)
    summary = LabelDelay().update_many(delays).get()
    assert summary.n == 50_000
    assert summary.mean == pytest.approx(delays.mean(), rel=1e-12)
    assert summary.max == delays.max()
    # One bin spans a factor 10 ** (1 / 20), about 12 %.
    assert summary.p50 == pytest.approx(np.quantile(delays, 0.5), rel=0.03)
    assert summary.p95 == pytest.approx(np.quantile(delays, 0.95), rel=0.03)


def test_label_delay_edge_cases_and_round_trip() -> None:
    empty = LabelDelay()
    assert math.isnan(empty.get().p50)
    with pytest.raises(ValueError):
        empty.update(-1.0)
    delays = LabelDelay().update_many([0.0, 0.0, 10 * 86_400.0])
    assert delays.quantile(0.0) == 0.0
    # The median is one of the zeros, in the first bin [0, lowest): known only to that bin.
    assert 0.0 <= delays.quantile(0.5) < delays.lowest
    assert delays.quantile(1.0) == 10 * 86_400.0
    restored = LabelDelay()
    restored.load_state_dict(_json_round_trip(delays.state_dict()))
    assert restored.get() == delays.get()
    fresh = LabelDelay()
    fresh.load_state_dict(_json_round_trip(empty.state_dict()))
    assert fresh.update(5.0).get().p50 == 5.0


# --- Inputs are never mutated ------------------------------------------------------------------


def test_no_input_is_mutated_and_no_state_is_exposed() -> None:
    values = _frozen(np.array([0.3, 0.1, 0.7]))
    labels = _frozen(np.array([1.0, 0.0, 1.0]))
    edges = np.linspace(0.0, 1.0, 5)
    histogram = FixedBinHistogram(edges)
    edges[0] = -1.0  # the histogram took a copy
    histogram.update_many(values)
    assert histogram.edges[0] == 0.0
    histogram.counts[:] = 99  # a copy, not the state
    assert histogram.counts.tolist() == [1, 1, 1, 0]
    psi(_frozen(np.array([1, 2])), _frozen(np.array([2, 1])))
    PSIMonitor(reference_size=2).update_many(values).set_reference(_frozen(np.ones(10)))
    CalibrationTable().update_many(values, labels)
    LabelDelay().update_many(values)
    kinds = ["hide", "skip"]
    RateShift(1).update_many(kinds, 3)
    assert kinds == ["hide", "skip"]
    assert values.tolist() == [0.3, 0.1, 0.7]
    assert labels.tolist() == [1.0, 0.0, 1.0]
