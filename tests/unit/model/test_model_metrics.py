"""Streaming metrics against brute-force and hand-computed values; prequential ordering."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from model import (
    HEADS,
    CalibrationError,
    CandidateBatch,
    ExampleBatch,
    LogLoss,
    ModelConfig,
    Prequential,
    RollingAUC,
)


def brute_force_auc(labels: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]) -> float:
    positives = scores[labels == 1]
    negatives = scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((wins + 0.5 * ties) / (len(positives) * len(negatives)))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_count_on_random_data_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = rng.integers(0, 20, 500) / 20.0  # coarse scores force many ties
    auc = RollingAUC(window=1000)
    for start in range(0, 500, 37):
        auc.update(labels[start : start + 37], scores[start : start + 37])
    assert auc.get() == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def exact_auc(labels: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]) -> float:
    """The pairwise count as one correctly rounded quotient of integers."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = int((positives[:, None] > negatives[None, :]).sum())
    ties = int((positives[:, None] == negatives[None, :]).sum())
    return (2 * wins + ties) / (2 * len(positives) * len(negatives))


@pytest.mark.parametrize("levels", [3, 20, 1000, None])
def test_auc_is_the_exact_pairwise_count_whatever_the_ties(levels: int | None) -> None:
    rng = np.random.default_rng(levels or 0)
    for size in (2, 3, 50, 777):
        labels = rng.integers(0, 2, size)
        labels[:2] = [0, 1]
        scores = rng.random(size) if levels is None else rng.integers(0, levels, size) / levels
        auc = RollingAUC(window=size).update(labels, scores).get()
        assert auc == exact_auc(labels, scores), (size, levels)


def test_auc_ranks_nan_scores_above_every_score_and_tied() -> None:
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    scores = np.array([0.2, np.nan, 0.4, np.nan, 0.2, 0.9, np.nan, 0.1])
    expected = exact_auc(labels, np.where(np.isnan(scores), 2.0, scores))
    assert RollingAUC(window=8).update(labels, scores).get() == expected


def test_auc_window_keeps_only_the_last_pairs() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 300)
    scores = rng.random(300)
    auc = RollingAUC(window=100)
    for label, score in zip(labels, scores, strict=True):
        auc.update(int(label), float(score))
    assert auc.get() == pytest.approx(brute_force_auc(labels[-100:], scores[-100:]))
    # A batch larger than the window is the same as its tail.
    big = RollingAUC(window=100).update(labels, scores)
    assert big.get() == pytest.approx(auc.get())


def test_auc_is_nan_with_one_class() -> None:
    assert math.isnan(RollingAUC().get())
    assert math.isnan(RollingAUC().update([1, 1], [0.2, 0.3]).get())


def test_auc_perfect_and_inverted() -> None:
    assert RollingAUC().update([0, 0, 1], [0.1, 0.2, 0.3]).get() == 1.0
    assert RollingAUC().update([1, 1, 0], [0.1, 0.2, 0.3]).get() == 0.0


def test_log_loss_hand_computed() -> None:
    metric = LogLoss().update(1, 0.9).update([0, 1], [0.2, 0.5])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.5)) / 3
    assert metric.get() == pytest.approx(expected)
    assert math.isnan(LogLoss().get())
    # Clipping keeps a confident miss finite.
    assert math.isfinite(LogLoss().update([1], [0.0]).get())


def test_calibration_error_against_per_bucket_definition() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random(1000)
    labels = (rng.random(1000) < scores**2).astype(np.int64)
    metric = CalibrationError(bins=10)
    metric.update(labels[:400], scores[:400]).update(labels[400:], scores[400:])
    bucket = np.minimum((scores * 10).astype(int), 9)
    expected = sum(
        (bucket == b).sum() / 1000 * abs(scores[bucket == b].mean() - labels[bucket == b].mean())
        for b in range(10)
        if (bucket == b).any()
    )
    assert metric.get() == pytest.approx(expected)


def test_calibration_error_is_zero_when_calibrated_per_bucket() -> None:
    metric = CalibrationError(bins=2).update([0, 1, 0, 0], [0.25, 0.25, 0.0, 0.0])
    # Bucket [0, 0.5): mean score 0.125, positive rate 0.25.
    assert metric.get() == pytest.approx(0.125)
    assert CalibrationError(bins=1).update([0, 1], [0.5, 0.5]).get() == 0.0
    assert CalibrationError(bins=4).update([1], [1.0]).get() == 0.0


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="labels"):
        RollingAUC().update([0, 1], [0.5])


class RecordingLearner:
    """Predicts a constant and records the order of calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def learn_many(self, batch: ExampleBatch) -> None:
        self.calls.append("learn")

    def predict_many(self, batch: CandidateBatch) -> npt.NDArray[np.float32]:
        self.calls.append("predict")
        scores = np.where(batch.user % 2 == 0, 0.9, 0.1).astype(np.float32)
        return np.repeat(scores[:, None], len(HEADS), axis=1)


def test_prequential_predicts_before_learning_and_scores_out_of_sample() -> None:
    config = ModelConfig(buckets=2**10, features=())
    rows = [
        {"user_id": f"u{i}", "item_id": "i", "label": "hide" if i % 3 else "none", "kinds": []}
        for i in range(30)
    ]
    batch = ExampleBatch.from_examples(rows, config)
    learner = RecordingLearner()
    evaluation = Prequential(learner).update(batch).update(batch)
    assert learner.calls == ["predict", "learn", "predict", "learn"]
    assert evaluation.examples_seen == 60
    metrics = evaluation.get()
    scores = np.where(batch.user % 2 == 0, 0.9, 0.1)
    explicit = batch.targets[:, HEADS.index("explicit_negative")]
    assert metrics["explicit_negative/auc"] == pytest.approx(
        brute_force_auc(explicit.astype(np.int64), scores)
    )
    # "negative" combines the heads: 1 - (1 - 0.9)^2 = 0.99 or 1 - 0.9^2 = 0.19.
    assert metrics["negative/log_loss"] == pytest.approx(
        LogLoss().update(explicit, 1 - (1 - scores) ** 2).get(), rel=1e-5
    )
    assert math.isnan(metrics["implicit_negative/auc"])
    assert set(metrics) == {
        f"{head}/{name}" for head in (*HEADS, "negative") for name in ("auc", "log_loss", "ece")
    }
