"""Model configuration: one frozen dataclass holding every knob of the online model."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

import numpy.typing as npt
import torch

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_SEVERITY",
    "ENGAGEMENT",
    "EXPLICIT_NEGATIVE",
    "HEADS",
    "ID_FIELDS",
    "IMPLICIT_NEGATIVE",
    "NO_REACTION",
    "ModelConfig",
    "p_negative",
    "resolve_device",
]

EXPLICIT_NEGATIVE: Final = ("dislike", "hide", "not_interested", "report", "block_creator")
IMPLICIT_NEGATIVE: Final = ("skip", "short_dwell", "click_no_convert")
ENGAGEMENT: Final = ("click", "like", "long_dwell", "convert")
NO_REACTION: Final = "none"

#: Id fields of an example, in the column order of the model's id tables.
ID_FIELDS: Final = ("user", "item", "creator", "category")

#: Output heads, in column order of targets and predictions.
HEADS: Final = ("explicit_negative", "implicit_negative", "engagement")

#: Dense per-user table features the join emits; names absent from an example count as 0.
DEFAULT_FEATURES: Final = (
    "neg_rate_short",
    "neg_rate_long",
    "explicit_neg_long",
    "creator_neg_long",
    "category_neg_long",
    "item_exposure",
    "creator_exposure",
    "impressions_long",
)

#: Loss weight of an example by the most severe kind observed on it. Reports and blocks
#: outweigh any positive signal, the ordering public heavy-ranker weights use.
DEFAULT_SEVERITY: Final[Mapping[str, float]] = MappingProxyType(
    {
        "report": 5.0,
        "block_creator": 5.0,
        "not_interested": 4.0,
        "hide": 3.0,
        "dislike": 3.0,
        "skip": 1.0,
        "short_dwell": 1.0,
        "click_no_convert": 0.5,
        "click": 1.0,
        "like": 1.0,
        "long_dwell": 1.0,
        "convert": 1.0,
    }
)


def p_negative(predictions: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Probability of any negative reaction from per-head probabilities (rows x ``HEADS``):
    ``1 - (1 - p_explicit)(1 - p_implicit)``, in the dtype of ``predictions``.

    Examples
    --------
    >>> import numpy as np
    >>> p_negative(np.array([[0.5, 0.5, 0.1]], dtype=np.float32)).tolist()
    [0.75]
    """
    explicit, implicit = HEADS.index("explicit_negative"), HEADS.index("implicit_negative")
    one = predictions.dtype.type(1.0)
    result: npt.NDArray[Any] = one - (one - predictions[:, explicit]) * (
        one - predictions[:, implicit]
    )
    return result


def _default_severity() -> dict[str, float]:
    return dict(DEFAULT_SEVERITY)


def resolve_device(device: str) -> torch.device:
    """Map ``"auto"`` to ``cuda`` when a GPU is visible, else ``cpu``; pass others through."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class ModelConfig:
    """Every knob of :class:`model.online.OnlineModel`.

    Parameters
    ----------
    buckets
        Hash buckets per id field (row 0 is the missing id). See :mod:`model.hashing`.
    embedding_dim
        Width of each id embedding.
    init_std
        Standard deviation of the initial embeddings. Much smaller (0.05 and below) leaves the
        user x item dot products near 0 and measured ~4x more steps to break symmetry.
    hidden
        Widths of the MLP's hidden layers. One layer of 32 scored +0.004 AUC over (64, 32) on
        the 200k simulator stream (3/3 seeds) with a cheaper step: one pass over a short
        stream has little data for a deeper MLP.
    features
        Names of the dense features, in column order.
    severity
        Severity of each feedback kind; kinds absent here (and ``"none"``) weigh 1. Used for
        an example without a ``weight`` (the join sets it). The loss weighs the explicit-
        given-negative logit's positives by it, rescaled to mean 1 a batch (see
        ``model.objective.internal_weights``): a report ranks above a dislike in p(explicit)
        without inflating it. p(negative) is unweighted: weighting it too cost 0.006 / 0.003
        AUC of any negative on the uniform / heavy worlds (200k impressions).
    lr
        Learning rate of the MLP's Adam (and of everything but the cross biases under
        ``"adam"`` / ``"adagrad"``).
        0.01: on the 200k-impression simulator stream 0.03 scored 0.003 AUC lower.
    embedding_lr
        Learning rate of the embedding table's Adagrad under ``"adagrad+adam"``. Embeddings
        see each id a few times a step at most and need a much larger step than the MLP; on
        the simulator stream 0.05 / 0.1 / 0.2 scored within 0.002 AUC of each other.
    optimizer
        ``"adagrad+adam"`` (default): sparse Adagrad on embeddings at ``embedding_lr`` + fused
        Adam on the MLP at ``lr``. Adagrad's step grows with the gradient, so a row seen once
        moves less than one seen often, where LazyAdam moves every touched row by ~``lr``:
        on the 200k simulator stream +0.005 AUC and twice the one-batch rank drop of a
        disliked item over ``"adam"``. ``"adam"``: :class:`~model.lazy_adam.LazyAdam` on
        embeddings + fused Adam on the MLP, both at ``lr``; ``"adagrad"``: one Adagrad over
        everything (a third less optimiser state to checkpoint).
    seed
        Seeds weight initialisation and negative sampling.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    adversarial_eps
        APR-style robustness: when > 0, embeddings are perturbed by ``eps`` along the
        row-normalised loss gradient and the loss at the perturbed point is added.
    adversarial_weight
        Weight of that adversarial loss term.
    extra_negatives
        Extra negative rows sampled per explicit-negative example (see
        :func:`model.sampling.sample_extra_negatives`).
    extra_negative_weight
        Loss weight of a sampled negative relative to the example it came from.
    crosses
        Pairs of id fields (``"user*creator"``; fields ``user``, ``item``, ``creator``,
        ``category``) whose hashed cross gets its own negative-logit bias in the deep part,
        learned per example by Adagrad (see :class:`model.network.Network`). None by default:
        the pair rates of ``rate_crosses`` carry that signal, and user x item / creator /
        category biases on top of them cost 0.018 / 0.008 AUC on the uniform / heavy worlds
        (they learn what the rates learn a batch later, and the sum overshoots).
    cross_buckets
        Hash buckets per cross (row 0: a side is missing), for ``crosses`` and
        ``rate_crosses``. Crosses have far more distinct values than their fields (~10**5
        user x creator pairs on the simulator stream).
    wide_lr
        Learning rate of the cross biases' sparse Adagrad, whose gradient is taken per example
        (not over the batch mean), so a report moves its pair ~20x further than an impression
        without reaction.
    wide_initial_accumulator
        Initial Adagrad accumulator of the cross biases: the first step of a pair is about
        ``wide_lr * g / sqrt(this + g**2)`` for a per-example gradient ``g`` in (-1, 1) x
        severity, close to per-example logistic SGD.
    interaction_init
        Initial weight of the deep part's linear path on the user x item/creator/category dot
        products (negated for engagement), so the embeddings get a gradient from the first
        step.
    rate_columns
        Label columns (of :data:`model.id_rates.RATE_COLUMNS`) whose smoothed per-id rates
        feed the wide part. All four against "negative" alone: +0.016 / +0.005 AUC (uniform /
        heavy).
    rate_crosses
        Id pairs with rate-table rows of their own: "this user on this creator / category".
        user x item added nothing on either world.
    rate_counts
        Also feed ``log1p`` of each id's and pair's impressions, how far its rates can be
        trusted.
    rate_pair_counts
        Also feed ``log1p`` of each pair's label counts ("three dislikes of this creator"):
        +0.004 AUC on the heavy world, +0.000 on the uniform one.
    rate_nested
        Also feed each pair's rates shrunk towards its user's own rates (not the overall
        rate): "this user here against this user elsewhere". +0.001 to +0.005 AUC on the
        heavy world (across runs), +0.000 on the uniform one.
    rate_prior
        Prior strength of the rate smoothing, in impressions: an id seen ``rate_prior`` times
        weighs its own rate and the overall one equally. 3 / 10 / 30 scored within 0.002 AUC
        on both worlds, in no consistent order.
    rate_half_life
        Examples after which a count weighs half (0: counts never fade). 100k scored 0.0005 /
        0.0007 lower on the (stationary) simulated worlds; a real stream that drifts may want
        it.
    logistic_ridge
        Prior precision of the wide regression's weights. 10 against 1: within 0.001 AUC
        after warm-up, +0.004 / +0.002 in the first tenth (uniform / heavy).
    logistic_forget
        Factor on the wide regression's accumulated curvature a batch (1: stationary).
    deep_warmup
        Examples over which the deep part's share of the logits ramps from 0 to 1 (0: whole
        from the start). The wide part is near its all-data fit after a few batches while the
        embeddings need many; 100k lifted the first tenth's AUC by 0.004 / 0.000 (uniform /
        heavy) and left the AUC after warm-up within 0.001.
    """

    buckets: int = 2**18
    embedding_dim: int = 16
    init_std: float = 0.1
    hidden: tuple[int, ...] = (32,)
    features: tuple[str, ...] = DEFAULT_FEATURES
    severity: Mapping[str, float] = field(default_factory=_default_severity)
    lr: float = 0.01
    embedding_lr: float = 0.1
    optimizer: Literal["adagrad+adam", "adam", "adagrad"] = "adagrad+adam"
    seed: int = 0
    device: str = "auto"
    adversarial_eps: float = 0.0
    adversarial_weight: float = 1.0
    extra_negatives: int = 0
    extra_negative_weight: float = 0.5
    crosses: tuple[str, ...] = ()
    cross_buckets: int = 2**20
    wide_lr: float = 1.0
    interaction_init: float = 1.0
    wide_initial_accumulator: float = 0.625
    rate_columns: tuple[str, ...] = (
        "explicit_negative",
        "implicit_negative",
        "engagement",
        "negative",
    )
    rate_crosses: tuple[str, ...] = ("user*creator", "user*category")
    rate_counts: bool = True
    rate_pair_counts: bool = True
    deep_warmup: float = 100_000.0
    rate_nested: bool = True
    rate_prior: float = 10.0
    rate_half_life: float = 0.0
    logistic_ridge: float = 10.0
    logistic_forget: float = 1.0

    def __post_init__(self) -> None:
        if self.buckets < 2 or self.cross_buckets < 2:
            raise ValueError("buckets and cross_buckets must be >= 2")
        if self.embedding_dim < 1:
            raise ValueError("embedding_dim must be >= 1")
        if self.adversarial_eps < 0 or self.extra_negatives < 0:
            raise ValueError("adversarial_eps and extra_negatives must be >= 0")
        if self.rate_prior <= 0 or self.rate_half_life < 0:
            raise ValueError("rate_prior must be > 0 and rate_half_life >= 0")
        if self.logistic_ridge <= 0 or not 0 < self.logistic_forget <= 1:
            raise ValueError("logistic_ridge must be > 0 and 0 < logistic_forget <= 1")
        if self.lr <= 0 or self.embedding_lr <= 0 or self.wide_lr <= 0:
            raise ValueError("lr, embedding_lr and wide_lr must be > 0")
        for cross in (*self.crosses, *self.rate_crosses):
            sides = cross.split("*")
            if len(sides) != 2 or not set(sides) <= set(ID_FIELDS):
                raise ValueError(f"cross {cross!r} is not two of {ID_FIELDS} joined by '*'")
        if self.optimizer not in ("adagrad+adam", "adam", "adagrad"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}")
        # A frozen config must not share a mutable mapping with its caller.
        object.__setattr__(self, "severity", MappingProxyType(dict(self.severity)))
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "crosses", tuple(self.crosses))
        object.__setattr__(self, "rate_crosses", tuple(self.rate_crosses))
        object.__setattr__(self, "rate_columns", tuple(self.rate_columns))

    @property
    def heads(self) -> tuple[str, ...]:
        """Output heads, in column order."""
        return HEADS

    def to_dict(self) -> dict[str, Any]:
        """Plain-container form, safe for ``torch.load(weights_only=True)`` and JSON."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["severity"] = dict(self.severity)
        out["hidden"] = list(self.hidden)
        out["features"] = list(self.features)
        out["crosses"] = list(self.crosses)
        out["rate_crosses"] = list(self.rate_crosses)
        out["rate_columns"] = list(self.rate_columns)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected."""
        kwargs = dict(values)
        kwargs["hidden"] = tuple(kwargs.get("hidden", cls.hidden))
        kwargs["features"] = tuple(kwargs.get("features", DEFAULT_FEATURES))
        for name in ("crosses", "rate_crosses", "rate_columns"):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)
