"""The incrementally trained multi-task negative-feedback model (hashed embeddings + MLP).

Input contract
--------------
``learn_many`` takes an :class:`~model.batch.ExampleBatch` or a sequence of decoded ``Example``
mappings: ``user_id``, ``item_id``, ``creator_id`` (or None), ``category`` (or None), ``label``
(a feedback kind or ``"none"``), ``kinds`` (every kind observed on the impression), ``weight``
(> 0) and ``features`` (dense per-user table features; missing names are 0). ``predict_many``
also takes a :class:`~model.batch.CandidateBatch` or unlabelled mappings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from model.batch import CandidateBatch, ExampleBatch
from model.config import HEADS, ID_FIELDS, ModelConfig, p_negative, resolve_device
from model.hashing import cross_buckets
from model.lazy_adagrad import LazyAdagrad
from model.lazy_adam import LazyAdam
from model.sampling import sample_extra_negatives

__all__ = ["OnlineModel"]

_EXPLICIT = HEADS.index("explicit_negative")
_IMPLICIT = HEADS.index("implicit_negative")
_FIELDS = len(ID_FIELDS)


class _Network(nn.Module):
    """Hashed id embeddings, three user interactions, dense features -> MLP + linear -> logits,
    plus an explicit-negative bias of each hashed id cross."""

    explicit: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # One table holds all four id fields (field f owns rows f*buckets .. (f+1)*buckets-1):
        # one lookup, one sparse gradient and one optimiser update a step instead of four,
        # which measured ~2x faster on a 2-core CPU. Row 0 of a field is its learned
        # "missing id" vector. sparse=True: a step touches ~4 * batch of 4 * buckets rows,
        # so dense gradients and dense optimiser updates would dominate.
        self.table = nn.Embedding(_FIELDS * config.buckets, config.embedding_dim, sparse=True)
        nn.init.normal_(self.table.weight, std=config.init_std)
        layers: list[nn.Module] = []
        width = _FIELDS * config.embedding_dim + _FIELDS - 1 + len(config.features)
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, len(HEADS)))
        self.mlp = nn.Sequential(*layers)
        # Wide part: the interactions and dense features also reach the logits linearly, so
        # "more past negatives -> more likely negative" needs no ReLU path to be learned first
        # (+0.004 AUC on the 200k simulator stream, 3/3 seeds). Zero weights: it starts as a
        # no-op.
        self.wide = nn.Linear(_FIELDS - 1 + len(config.features), len(HEADS))
        nn.init.zeros_(self.wide.weight)
        # ... except on the user x item/creator/category dot products: with a zero weight there
        # the wide path sends the embeddings no gradient, and they wait for the MLP to find a
        # use for them. A signed start (a high dot product means a likely negative and an
        # unlikely engagement) lets them learn from the first step.
        with torch.no_grad():
            self.wide.weight[:, : _FIELDS - 1] = config.interaction_init
            self.wide.weight[HEADS.index("engagement"), : _FIELDS - 1] *= -1.0
        # Explicit-negative bias of each id cross (``cross_buckets`` rows per cross): a wide
        # model over hashed pairs, which learns "this user hides this creator" from one or two
        # reports. The simulator's explicit negatives carry a +4 logit for a hated creator or
        # category that the dot products take hundreds of steps to find. Only that head: the
        # same biases on all three heads scored no better (AUC 0.6693 against 0.6701, 200k
        # simulator stream). Single ids get none: their embeddings and the MLP already give
        # them one. Zeros: it starts as a no-op, and a pair never seen adds nothing.
        rows = max(1, len(config.crosses)) * config.cross_buckets
        self.biases = nn.Embedding(rows, 1, sparse=True)
        nn.init.zeros_(self.biases.weight)
        explicit = torch.zeros(1, len(HEADS))
        explicit[0, HEADS.index("explicit_negative")] = 1.0
        self.register_buffer("explicit", explicit, persistent=False)

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        """``[n, 4]`` table rows -> ``[n, 4, dim]`` embeddings (user, item, creator, category)."""
        return F.embedding(rows, self.table.weight, sparse=True)

    def head(
        self, embedded: torch.Tensor, dense: torch.Tensor, wide_rows: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[n, heads]``; ``wide_rows`` are the ``[n, k]`` rows of ``biases``."""
        # Dot products of the user with item, creator and category give the MLP "does this
        # user dislike this creator/topic" directly instead of making it learn multiplication.
        interactions = (embedded[:, :1] * embedded[:, 1:]).sum(2)
        features = torch.cat([embedded.flatten(1), interactions, dense], dim=1)
        logits: torch.Tensor = self.mlp(features) + self.wide(torch.cat([interactions, dense], 1))
        biases = F.embedding(wide_rows, self.biases.weight, sparse=True).sum(1)
        return logits + _per_example_gradient(biases) * self.explicit


def _per_example_gradient(values: torch.Tensor) -> torch.Tensor:
    """``values`` unchanged, but their gradient scaled by the batch size.

    The loss is a batch mean, so a row's gradient is its example's ``(p - y) * weight`` over
    ``n``. Scaled back to per-example size, the biases' Adagrad (with its initial accumulator)
    steps in proportion to how wrong a pair was, as per-example logistic SGD would: a dislike
    moves its pair's bias ~20x further than an impression without reaction, where plain
    Adagrad's first step is ``lr`` for both.
    """
    scale = float(values.shape[0])
    return values * scale - values.detach() * (scale - 1.0)


def _weighted_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> Any:
    """Summed per-head BCE; severity weighs only the explicit-negative head's positive rows.

    ``weights`` (record weight x severity) are rescaled to mean 1 over the batch's explicit
    negatives: a report pulls harder than a dislike, but the head's positives as a whole pull
    as hard as unweighted ones, so its probability stays calibrated. Weighting every head by
    severity (as before) inflated p_negative: on the 200k simulator stream the log loss of
    p(negative) was 0.726 against the base rate's 0.523; this gives 0.502 and a higher AUC.
    """
    per_head = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    positive = targets[:, _EXPLICIT]
    # Sums, not boolean indexing: no host sync a step; a batch without positives scales by 1.
    mean = (weights * positive).sum() / positive.sum().clamp_min(1.0)
    scale = positive * (weights / mean.clamp_min(1e-12) - 1.0) + 1.0
    per_row = per_head.sum(1) + (scale - 1.0) * per_head[:, _EXPLICIT]
    return per_row.mean()


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    try:
        # fused: one kernel for all MLP tensors instead of a Python loop over them (~1 ms a
        # step on the benchmark CPU); torch < 2.4 has no fused Adam on cpu.
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr)


def _detached_cpu(value: Any) -> Any:
    """Deep copy with tensors cloned to cpu, so a snapshot never aliases live parameters."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, Mapping):
        return {key: _detached_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_detached_cpu(item) for item in value)
    return value


class OnlineModel:
    """Multi-task online model predicting explicit-negative, implicit-negative and engagement.

    Parameters
    ----------
    config
        All knobs; ``ModelConfig()`` when omitted.

    Examples
    --------
    >>> config = ModelConfig(buckets=2**10, features=())
    >>> model = OnlineModel(config)
    >>> example = {"user_id": "u1", "item_id": "i1", "creator_id": "c1", "category": "news",
    ...            "label": "hide", "kinds": ["hide"], "weight": 1.0, "features": {}}
    >>> for _ in range(30):
    ...     model.learn_many([example])
    >>> model.version, model.examples_seen
    (30, 30)
    >>> p = model.predict_many([example])
    >>> p.shape, p.dtype, bool(p[0, 0] > 0.9), bool(p[0, 2] < 0.1)
    ((1, 3), dtype('float32'), True, True)
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or ModelConfig()
        self.device = resolve_device(self.config.device)
        with torch.random.fork_rng(devices=[]):
            # Seed a forked RNG so building a model never disturbs the caller's torch RNG.
            torch.manual_seed(self.config.seed)
            self._net = _Network(self.config)
        self._net.to(self.device)
        self._rng = np.random.default_rng(self.config.seed)
        self._field_offsets = np.arange(_FIELDS, dtype=np.int64) * self.config.buckets
        self._crosses = [
            (ID_FIELDS.index(left), ID_FIELDS.index(right), cross)
            for left, right, cross in ((*cross.split("*"), cross) for cross in self.config.crosses)
        ]
        self._cross_offsets = (
            np.arange(len(self._crosses), dtype=np.int64) * self.config.cross_buckets
        )
        sparse = list(self._net.table.parameters())
        # Cross biases always use (lazy, sparse) Adagrad at their own ``wide_lr`` and initial
        # accumulator, whichever optimiser the embeddings use.
        biases = {
            "params": list(self._net.biases.parameters()),
            "lr": self.config.wide_lr,
            "initial_accumulator_value": self.config.wide_initial_accumulator,
        }
        dense = [*self._net.mlp.parameters(), *self._net.wide.parameters()]
        lr = self.config.lr
        self._optimizers: list[torch.optim.Optimizer]
        if self.config.optimizer == "adagrad+adam":
            self._optimizers = [
                LazyAdagrad([{"params": sparse}, biases], lr=self.config.embedding_lr),
                _adam(dense, lr),
            ]
        elif self.config.optimizer == "adam":
            self._optimizers = [
                LazyAdam(sparse, lr=lr),
                LazyAdagrad([biases]),
                _adam(dense, lr),
            ]
        else:
            self._optimizers = [torch.optim.Adagrad(sparse + dense, lr=lr), LazyAdagrad([biases])]
        self.version = 0
        self.examples_seen = 0

    def _tensors(self, batch: CandidateBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedding rows ``[n, 4]``, dense features ``[n, F]`` and cross-bias rows ``[n, C]``."""
        fields = (batch.user, batch.item, batch.creator, batch.category)
        rows = np.stack(fields, axis=1)
        rows += self._field_offsets
        crosses = [
            cross_buckets(fields[left], fields[right], name, self.config.cross_buckets)
            for left, right, name in self._crosses
        ]
        wide_rows = (
            np.stack(crosses, axis=1) + self._cross_offsets
            if crosses
            else np.zeros((len(batch), 0), dtype=np.int64)
        )
        device = self.device
        return (
            torch.from_numpy(rows).to(device, non_blocking=True),
            torch.from_numpy(batch.dense).to(device, non_blocking=True),
            torch.from_numpy(wide_rows).to(device, non_blocking=True),
        )

    def _as_examples(self, batch: ExampleBatch | Sequence[Mapping[str, Any]]) -> ExampleBatch:
        if isinstance(batch, ExampleBatch):
            return batch
        return ExampleBatch.from_examples(batch, self.config)

    def _as_candidates(self, batch: CandidateBatch | Sequence[Mapping[str, Any]]) -> CandidateBatch:
        if isinstance(batch, CandidateBatch):
            return batch
        return CandidateBatch.from_rows(batch, self.config)

    def learn_many(self, batch: ExampleBatch | Sequence[Mapping[str, Any]]) -> None:
        """One optimiser step on ``batch`` (only read); bumps ``version``. Empty: a no-op."""
        examples = self._as_examples(batch)
        if len(examples) == 0:
            return
        rows = examples
        if self.config.extra_negatives > 0:
            extra = sample_extra_negatives(
                examples, self.config.extra_negatives, self._rng, self.config.extra_negative_weight
            )
            if len(extra):
                rows = ExampleBatch.concat([examples, extra])
        ids, dense, wide_rows = self._tensors(rows)
        targets = torch.from_numpy(rows.targets).to(self.device, non_blocking=True)
        weights = torch.from_numpy(rows.weights).to(self.device, non_blocking=True)
        net = self._net
        net.train()
        embedded = net.embed(ids)
        loss = _weighted_bce(net.head(embedded, dense, wide_rows), targets, weights)
        if self.config.adversarial_eps > 0:
            loss = loss + self.config.adversarial_weight * self._adversarial_loss(
                loss, ids, embedded, dense, wide_rows, targets, weights
            )
        for optimizer in self._optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Opting out explicitly: the gradients come from autograd, and torch otherwise warns
        # on every sparse Adagrad step that the (costly) invariant checks are off.
        with torch.sparse.check_sparse_tensor_invariants(enable=False):  # type: ignore[no-untyped-call]
            for optimizer in self._optimizers:
                optimizer.step()
        self.version += 1
        self.examples_seen += len(examples)

    def _adversarial_loss(
        self,
        loss: torch.Tensor,
        ids: torch.Tensor,
        embedded: torch.Tensor,
        dense: torch.Tensor,
        wide_rows: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
    ) -> Any:
        """APR (He et al., 2018): the loss after the worst-case ``eps`` step on each embedding.

        The fast-gradient direction is normalised per embedding vector, so every id of every
        example moves by exactly ``eps`` whatever its loss scale; missing ids stay put.
        """
        (grad,) = torch.autograd.grad(loss, embedded, retain_graph=True)
        offsets = torch.from_numpy(self._field_offsets).to(ids.device)
        present = (ids != offsets).unsqueeze(2)
        delta = self.config.adversarial_eps * F.normalize(grad, dim=2) * present
        logits = self._net.head(embedded + delta.detach(), dense, wide_rows)
        return _weighted_bce(logits, targets, weights)

    @torch.no_grad()
    def predict_many(
        self, batch: CandidateBatch | Sequence[Mapping[str, Any]]
    ) -> npt.NDArray[np.float32]:
        """Probabilities ``float32 [n, 3]``, columns in :data:`model.config.HEADS` order."""
        candidates = self._as_candidates(batch)
        if len(candidates) == 0:
            return np.zeros((0, len(HEADS)), dtype=np.float32)
        ids, dense, wide_rows = self._tensors(candidates)
        self._net.eval()
        logits = self._net.head(self._net.embed(ids), dense, wide_rows)
        return torch.sigmoid(logits).to("cpu").numpy().astype(np.float32, copy=False)

    def p_negative(
        self, batch: CandidateBatch | Sequence[Mapping[str, Any]]
    ) -> npt.NDArray[np.float32]:
        """Probability of any negative reaction, ``1 - (1 - p_explicit)(1 - p_implicit)``."""
        return p_negative(self.predict_many(batch)).astype(np.float32, copy=False)

    def state_dict(self) -> dict[str, Any]:
        """Snapshot of weights, optimiser state, RNG, config, ``version`` and ``examples_seen``.

        Tensors are copied to cpu, so the snapshot stays valid while training goes on and loads
        on a machine without the training device.
        """
        return {
            "config": self.config.to_dict(),
            "version": self.version,
            "examples_seen": self.examples_seen,
            "network": _detached_cpu(self._net.state_dict()),
            "optimizers": [_detached_cpu(opt.state_dict()) for opt in self._optimizers],
            "rng": _detached_cpu(self._rng.bit_generator.state),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot exactly; its config must match (device aside)."""
        saved = dict(state["config"])
        current = self.config.to_dict()
        saved.pop("device", None)
        current.pop("device", None)
        if saved != current:
            changed = sorted(key for key in current if saved.get(key) != current[key])
            raise ValueError(f"state was saved with a different config: {changed}")
        self._net.load_state_dict(state["network"])
        for optimizer, optimizer_state in zip(self._optimizers, state["optimizers"], strict=True):
            # Optimisers adopt the loaded tensors as their state; copy so that training never
            # writes into the caller's snapshot (or into a second model loaded from it).
            optimizer.load_state_dict(_detached_cpu(optimizer_state))
        self._rng.bit_generator.state = dict(state["rng"])
        self.version = int(state["version"])
        self.examples_seen = int(state["examples_seen"])

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: str | None = None) -> OnlineModel:
        """Build a model from a snapshot's own config (optionally on another device)."""
        values = dict(state["config"])
        if device is not None:
            values["device"] = device
        model = cls(ModelConfig.from_dict(values))
        model.load_state_dict(state)
        return model
