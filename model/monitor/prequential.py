"""Prequential (test-then-train) evaluation: score each batch before learning from it."""

from __future__ import annotations

from typing import Any, Protocol, Self

import numpy as np
import numpy.typing as npt

from model.batch import CandidateBatch, ExampleBatch
from model.config import HEADS, p_negative
from model.monitor.metrics import CalibrationError, LogLoss, RollingAUC

__all__ = ["Learner", "Prequential"]

_EXPLICIT = HEADS.index("explicit_negative")
_IMPLICIT = HEADS.index("implicit_negative")


class Learner(Protocol):
    """What :class:`Prequential` needs of a model (``OnlineModel`` and any river-shaped twin)."""

    def learn_many(self, batch: ExampleBatch) -> None: ...

    def predict_many(self, batch: CandidateBatch) -> npt.NDArray[np.float32]: ...


class Prequential:
    """Test-then-train wrapper: every example is scored by a model that has not yet seen it.

    Metrics are kept per head and for ``"negative"`` (any negative,
    ``1 - (1 - p_explicit)(1 - p_implicit)`` against "explicit or implicit target"): a rolling
    AUC, the log loss and the expected calibration error, reported by :meth:`get` as
    ``"<head>/auc"``, ``"<head>/log_loss"``, ``"<head>/ece"``.

    Parameters
    ----------
    model
        Anything with ``learn_many(ExampleBatch)`` and ``predict_many(CandidateBatch)``.
    window
        Window of each :class:`~model.monitor.metrics.RollingAUC`.
    bins
        Buckets of each :class:`~model.monitor.metrics.CalibrationError`.

    Examples
    --------
    >>> from model.config import ModelConfig
    >>> from model.online import OnlineModel
    >>> config = ModelConfig(buckets=2**8, features=())
    >>> example = {"user_id": "u", "item_id": "i", "creator_id": None, "category": None,
    ...            "label": "none", "kinds": [], "weight": 1.0, "features": {}}
    >>> batch = ExampleBatch.from_examples([example] * 4, config)
    >>> evaluation = Prequential(OnlineModel(config))
    >>> evaluation.update(batch).examples_seen, evaluation.last_predictions.shape
    (4, (4, 3))
    >>> sorted(evaluation.get())[:3]
    ['engagement/auc', 'engagement/ece', 'engagement/log_loss']
    """

    def __init__(self, model: Learner, window: int = 10_000, bins: int = 10) -> None:
        self.model = model
        self.metrics: dict[str, dict[str, RollingAUC | LogLoss | CalibrationError]] = {
            head: {"auc": RollingAUC(window), "log_loss": LogLoss(), "ece": CalibrationError(bins)}
            for head in (*HEADS, "negative")
        }
        self.examples_seen = 0
        self.last_predictions: npt.NDArray[np.float32] = np.zeros((0, len(HEADS)), np.float32)

    def update(self, batch: ExampleBatch) -> Self:
        """Predict ``batch``, record the out-of-sample metrics, then learn from it."""
        # A model that predicts and learns a batch in one call (OnlineModel) featurises it
        # once; the metrics read only the predictions, so they may follow the learning.
        predict_then_learn = getattr(self.model, "predict_then_learn", None)
        if predict_then_learn is None:
            predictions = self.model.predict_many(batch)
        else:
            predictions = predict_then_learn(batch)
        self.last_predictions = predictions
        targets = batch.targets
        columns: dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]] = {
            head: (targets[:, index], predictions[:, index]) for index, head in enumerate(HEADS)
        }
        columns["negative"] = (
            np.maximum(targets[:, _EXPLICIT], targets[:, _IMPLICIT]),
            p_negative(predictions),
        )
        for head, (labels, scores) in columns.items():
            for metric in self.metrics[head].values():
                metric.update(labels, scores)
        if predict_then_learn is None:
            self.model.learn_many(batch)
        self.examples_seen += len(batch)
        return self

    def get(self) -> dict[str, float]:
        """Every metric as ``{"<head>/<metric>": value}``; ``nan`` where undefined so far."""
        return {
            f"{head}/{name}": metric.get()
            for head, metrics in self.metrics.items()
            for name, metric in metrics.items()
        }
