"""Online negative-feedback model: hashing, batches, the torch model, baselines, checkpoints,
updates for scoring replicas, metrics."""

from model.baselines import RateLogistic, RunningRate
from model.batch import CandidateBatch, ExampleBatch, squash
from model.checkpoint import CheckpointStore, load_latest, save_checkpoint
from model.config import (
    DEFAULT_FEATURES,
    DEFAULT_SEVERITY,
    HEADS,
    ModelConfig,
    p_negative,
    resolve_device,
)
from model.hashing import FeatureHasher, expected_collision_fraction, stable_hash
from model.id_rates import RATE_COLUMNS, RateTable
from model.lazy_adam import LazyAdam
from model.logistic import OnlineLogistic
from model.monitor.calibration import CalibrationBucket, CalibrationTable, DelaySummary, LabelDelay
from model.monitor.change import PageHinkley
from model.monitor.drift import PSI_ACT, PSI_WATCH, FixedBinHistogram, PSIMonitor, psi, psi_level
from model.monitor.metrics import CalibrationError, LogLoss, RollingAUC
from model.monitor.prequential import Learner, Prequential
from model.monitor.rates import KindShift, RateShift
from model.online import OnlineModel
from model.sampling import sample_extra_negatives
from model.sync import ModelReplica, take_update
from model.touched import TouchedRows
from model.update import ModelUpdate, TableRows, encode_update
from model.update_reader import UpdateAssembler, UpdateHead, decode_update, peek_update
from model.wide import RateRegression

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_SEVERITY",
    "HEADS",
    "PSI_ACT",
    "PSI_WATCH",
    "RATE_COLUMNS",
    "CalibrationBucket",
    "CalibrationError",
    "CalibrationTable",
    "CandidateBatch",
    "CheckpointStore",
    "DelaySummary",
    "ExampleBatch",
    "FeatureHasher",
    "FixedBinHistogram",
    "KindShift",
    "LabelDelay",
    "LazyAdam",
    "Learner",
    "LogLoss",
    "ModelConfig",
    "ModelReplica",
    "ModelUpdate",
    "OnlineLogistic",
    "OnlineModel",
    "PSIMonitor",
    "PageHinkley",
    "Prequential",
    "RateLogistic",
    "RateRegression",
    "RateShift",
    "RateTable",
    "RollingAUC",
    "RunningRate",
    "TableRows",
    "TouchedRows",
    "UpdateAssembler",
    "UpdateHead",
    "decode_update",
    "encode_update",
    "expected_collision_fraction",
    "load_latest",
    "p_negative",
    "peek_update",
    "psi",
    "psi_level",
    "resolve_device",
    "sample_extra_negatives",
    "save_checkpoint",
    "squash",
    "stable_hash",
    "take_update",
]
