"""Online negative-feedback model: hashing, batches, the torch model, checkpoints, metrics."""

from model.batch import CandidateBatch, ExampleBatch, squash
from model.checkpoint import CheckpointStore, load_latest, save_checkpoint
from model.config import (
    DEFAULT_FEATURES,
    DEFAULT_SEVERITY,
    HEADS,
    ModelConfig,
    resolve_device,
)
from model.hashing import FeatureHasher, expected_collision_fraction, stable_hash
from model.lazy_adam import LazyAdam
from model.metrics import CalibrationError, LogLoss, RollingAUC
from model.online import OnlineModel
from model.prequential import Learner, Prequential
from model.sampling import sample_extra_negatives

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_SEVERITY",
    "HEADS",
    "CalibrationError",
    "CandidateBatch",
    "CheckpointStore",
    "ExampleBatch",
    "FeatureHasher",
    "LazyAdam",
    "Learner",
    "LogLoss",
    "ModelConfig",
    "OnlineModel",
    "Prequential",
    "RollingAUC",
    "expected_collision_fraction",
    "load_latest",
    "resolve_device",
    "sample_extra_negatives",
    "save_checkpoint",
    "squash",
    "stable_hash",
]
