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

from model.batch import CandidateBatch, ExampleBatch
from model.config import HEADS, ID_FIELDS, ModelConfig, p_negative, resolve_device
from model.distributed import Collective, gradients_of, set_gradients
from model.hashing import cross_buckets
from model.network import LOGITS, Network
from model.objective import (
    heads_array,
    heads_of,
    internal_targets,
    internal_weights,
    weighted_loss,
)
from model.optimizers import network_optimizers
from model.sampling import sample_extra_negatives
from model.touched import TouchedRows
from model.wide import RateRegression

__all__ = ["CROSS_BIAS_ROWS", "EMBEDDING_ROWS", "RATE_ROWS", "OnlineModel", "heads_of"]

#: Names of the id embeddings, cross biases and rate table in :attr:`OnlineModel.changes`.
EMBEDDING_ROWS, CROSS_BIAS_ROWS, RATE_ROWS = "network.table", "network.biases", "wide.table"

_EXPLICIT_GIVEN_NEGATIVE = LOGITS.index("explicit_given_negative")
_FIELDS = len(ID_FIELDS)


def _detached_cpu(value: Any, copy: bool = True) -> Any:
    """Deep copy with tensors cloned to cpu, so a snapshot never aliases live parameters
    (``copy=False``: tensors already on cpu are shared, not cloned)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=copy)
    if isinstance(value, Mapping):
        return {key: _detached_cpu(item, copy) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_detached_cpu(item, copy) for item in value)
    return value


class OnlineModel:
    """Multi-task online model predicting explicit-negative, implicit-negative and engagement.

    Its logits (:data:`~model.network.LOGITS`: any negative, explicit given negative,
    engagement) are the sum of a wide part, :class:`~model.wide.RateRegression` over
    smoothed per-id and per-pair label rates and the dense features, updated by Laplace
    (Newton) steps, and a deep part, :class:`~model.network.Network`, that starts at zero,
    blends in over ``deep_warmup`` examples and learns what the wide part leaves; the wide
    part in turn fits around the deep part's logits, so neither counts what the other has.
    :func:`~model.objective.heads_of` turns the logits into the heads.

    Parameters
    ----------
    config
        All knobs; ``ModelConfig()`` when omitted.
    changes
        Where each learned batch marks the table rows it wrote (for publishing updates, see
        :mod:`model.sync`); None: nothing is tracked.
    group
        The ranks learning this model together (:class:`model.distributed.DataParallel`);
        None: this process alone.

    Examples
    --------
    >>> config = ModelConfig(buckets=2**10, cross_buckets=2**10, features=())
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

    def __init__(
        self,
        config: ModelConfig | None = None,
        changes: TouchedRows | None = None,
        group: Collective | None = None,
    ) -> None:
        self.config = config or ModelConfig()
        self.changes = changes
        self.group = group
        self.device = resolve_device(self.config.device)
        self._wide = RateRegression(
            self.config,
            columns=self.config.rate_columns,
            crosses=self.config.rate_crosses,
            counts=self.config.rate_counts,
            nested=self.config.rate_nested,
            pair_counts=self.config.rate_pair_counts,
            outputs=len(LOGITS),
        )
        with torch.random.fork_rng(devices=[]):
            # Seed a forked RNG so building a model never disturbs the caller's torch RNG.
            torch.manual_seed(self.config.seed)
            self._net = Network(self.config, self._wide.width)
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
        biases = list(self._net.biases.parameters())
        dense = [*self._net.mlp.parameters(), *self._net.interactions.parameters()]
        self._sparse = [*sparse, *biases]
        self._dense = dense
        self._optimizers = network_optimizers(self.config, sparse, biases, dense)
        self.version = 0
        self.examples_seen = 0

    @property
    def network(self) -> Network:
        """The deep part (embeddings, MLP, cross biases); read it, learning owns it."""
        return self._net

    @property
    def wide(self) -> RateRegression:
        """The wide part (rate tables and their regression); read it, learning owns it."""
        return self._wide

    def _blend(self) -> float:
        """Share of the deep part in the logits: 0 to 1 over the first ``deep_warmup``
        examples, while the wide part, near its all-data fit from the first batches, leads."""
        warmup = self.config.deep_warmup
        return 1.0 if warmup <= 0 else min(1.0, self.examples_seen / warmup)

    def _tensors(self, batch: CandidateBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedding rows ``[n, 4]`` and cross-bias rows ``[n, C]``."""
        fields = (batch.user, batch.item, batch.creator, batch.category)
        rows = np.stack(fields, axis=1)
        rows += self._field_offsets
        crosses = [
            cross_buckets(fields[left], fields[right], name, self.config.cross_buckets)
            for left, right, name in self._crosses
        ]
        bias_rows = (
            np.stack(crosses, axis=1) + self._cross_offsets
            if crosses
            else np.zeros((len(batch), 0), dtype=np.int64)
        )
        device = self.device
        return (
            torch.from_numpy(rows).to(device, non_blocking=True),
            torch.from_numpy(bias_rows).to(device, non_blocking=True),
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
        """One step on ``batch`` (only read); bumps ``version``. Empty: a no-op.

        The deep part takes one optimiser step on the loss of the summed logits, the wide
        part's regression folds the batch in, and only then are the batch's labels counted
        into the rate tables: every input the batch was learned on predates it.

        Data-parallel (``group``), the step is over every rank's batch, and every rank calls
        this once a step, with an empty batch when it has nothing (see
        :mod:`model.distributed`); with none anywhere it is a no-op on every rank.
        """
        self._learn(self._as_examples(batch), predict=False)

    def predict_then_learn(
        self, batch: ExampleBatch | Sequence[Mapping[str, Any]]
    ) -> npt.NDArray[np.float32]:
        """Test-then-train: :meth:`predict_many` of ``batch``, then :meth:`learn_many` of it;
        returns the predictions, made before the batch was learned.

        The batch is featurised once, and on one process (no ``group``) without sampled extra
        negatives its forward pass gives both the predictions and the step's loss: the same
        numbers as the two calls, for about the cost of the second.
        """
        examples = self._as_examples(batch)
        predictions = self._learn(examples, predict=True)
        assert predictions is not None
        return predictions

    def _learn(self, examples: ExampleBatch, predict: bool) -> npt.NDArray[np.float32] | None:
        """:meth:`learn_many`; with ``predict``, the batch's predictions made before it."""
        group = self.group
        if group is None and len(examples) == 0:
            return self.predict_many(examples) if predict else None
        n = len(examples)
        wide_rows = self._wide.rows(examples)
        inputs = self._wide.inputs(examples, wide_rows)
        rows, wide = examples, inputs
        if self.config.extra_negatives > 0 and n:
            extra = sample_extra_negatives(
                examples, self.config.extra_negatives, self._rng, self.config.extra_negative_weight
            )
            if len(extra):
                rows = ExampleBatch.concat([examples, extra])
                wide = torch.cat([inputs, self._wide.inputs(extra, self._wide.rows(extra))])
        predictions: npt.NDArray[np.float32] | None = None
        # The step's forward pass over this batch alone, on this process alone, is the
        # prediction's; with other rows in the step, the prediction is its own pass.
        shared_forward = group is None and rows is examples
        if predict and not shared_forward:
            predictions = self.predict_many(examples)
        ids, bias_rows = self._tensors(rows)
        targets = internal_targets(torch.from_numpy(rows.targets).to(self.device))
        row_weights = torch.from_numpy(rows.weights).to(self.device)
        all_rows: int | None = None
        mean: float | None = None
        learned = n
        if group is not None:
            # Every rank's sizes and explicit-negative weights: the step is over all of them.
            explicit = targets[:, _EXPLICIT_GIVEN_NEGATIVE]
            mine = [n, len(rows), float((row_weights * explicit).sum()), float(explicit.sum())]
            sizes = group.gather_values(mine)
            learned, all_rows = (int(sum(rank[k] for rank in sizes)) for k in range(2))
            if learned == 0:
                return predictions
            weighted, count = (sum(rank[k] for rank in sizes) for k in (2, 3))
            mean = weighted / max(count, 1.0)
        weights = internal_weights(targets, row_weights, mean)
        base = self._wide.logits(wide)
        net = self._net
        net.train()
        embedded = net.embed(ids)
        residual = net(embedded, wide, bias_rows, all_rows) * self._blend()
        logits = base + residual
        if predict and shared_forward:
            predictions = heads_array(logits.detach())
        loss = weighted_loss(logits, targets, weights, all_rows)
        if self.config.adversarial_eps > 0:
            loss = loss + self.config.adversarial_weight * self._adversarial_loss(
                loss, ids, embedded, wide, bias_rows, base, targets, weights, all_rows
            )
        for optimizer in self._optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        labels = torch.from_numpy(examples.targets).to(self.device, non_blocking=True)
        learnt = [inputs, targets[:n], weights[:n], residual[:n].detach(), wide_rows, labels]
        if group is not None:
            # One exchange: every rank's gradients, wide batch and rows. The gradients become
            # the ranks' sum; every rank folds all ranks' examples, in rank order, into its
            # wide part, and marks all ranks' rows (the whole model's changes).
            gradients = gradients_of(self._dense, self._sparse)
            every_rank = group.gather_tensors([*gradients, *learnt, ids, bias_rows])
            set_gradients(self._dense, self._sparse, every_rank)
            first = len(gradients)
            *learnt, ids, bias_rows = (
                torch.cat([parts[k] for parts in every_rank])
                for k in range(first, first + len(learnt) + 2)
            )
        # Opting out explicitly: the gradients come from autograd, and torch otherwise warns
        # on every sparse Adagrad step that the (costly) invariant checks are off.
        with torch.sparse.check_sparse_tensor_invariants(enable=False):  # type: ignore[no-untyped-call]
            for optimizer in self._optimizers:
                optimizer.step()
        inputs, logit_targets, row_weights, offset, wide_rows, labels = learnt
        self._wide.learn(inputs, logit_targets, row_weights, offset)
        self._wide.count_targets(wide_rows, labels)
        if self.changes is not None:
            self.changes.mark(EMBEDDING_ROWS, ids)
            self.changes.mark(CROSS_BIAS_ROWS, bias_rows)
            self.changes.mark(RATE_ROWS, wide_rows)
        self.version += 1
        self.examples_seen += learned
        return predictions

    def _adversarial_loss(
        self,
        loss: torch.Tensor,
        ids: torch.Tensor,
        embedded: torch.Tensor,
        wide: torch.Tensor,
        bias_rows: torch.Tensor,
        base: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
        rows: int | None = None,
    ) -> Any:
        """APR (He et al., 2018): the loss after the worst-case ``eps`` step on each embedding.

        The fast-gradient direction is normalised per embedding vector, so every id of every
        example moves by exactly ``eps`` whatever its loss scale; missing ids stay put.
        """
        (grad,) = torch.autograd.grad(loss, embedded, retain_graph=True)
        offsets = torch.from_numpy(self._field_offsets).to(ids.device)
        present = (ids != offsets).unsqueeze(2)
        delta = self.config.adversarial_eps * F.normalize(grad, dim=2) * present
        residual = self._net(embedded + delta.detach(), wide, bias_rows, rows) * self._blend()
        return weighted_loss(base + residual, targets, weights, rows)

    @torch.no_grad()
    def predict_many(
        self, batch: CandidateBatch | Sequence[Mapping[str, Any]]
    ) -> npt.NDArray[np.float32]:
        """Probabilities ``float32 [n, 3]``, columns in :data:`model.config.HEADS` order."""
        candidates = self._as_candidates(batch)
        if len(candidates) == 0:
            return np.zeros((0, len(HEADS)), dtype=np.float32)
        wide = self._wide.inputs(candidates, self._wide.rows(candidates))
        ids, bias_rows = self._tensors(candidates)
        self._net.eval()
        residual = self._net(self._net.embed(ids), wide, bias_rows) * self._blend()
        logits = self._wide.logits(wide) + residual
        return heads_array(logits)

    def p_negative(
        self, batch: CandidateBatch | Sequence[Mapping[str, Any]]
    ) -> npt.NDArray[np.float32]:
        """Probability of any negative reaction, ``1 - (1 - p_explicit)(1 - p_implicit)``."""
        return p_negative(self.predict_many(batch)).astype(np.float32, copy=False)

    def state_dict(self, *, copy: bool = True) -> dict[str, Any]:
        """Snapshot of weights, optimiser state, RNG, config, ``version`` and ``examples_seen``.

        Tensors are copied to cpu, so the snapshot stays valid while training goes on and loads
        on a machine without the training device. With ``copy=False`` tensors already on cpu
        are the model's own: the same contents for a caller done with the snapshot before the
        model learns again (a checkpoint written on the thread that trains it), without
        copying the tables.
        """
        return {
            "config": self.config.to_dict(),
            "version": self.version,
            "examples_seen": self.examples_seen,
            "network": _detached_cpu(self._net.state_dict(), copy),
            "wide": self._wide.state_dict(copy=copy),
            "optimizers": [_detached_cpu(opt.state_dict(), copy) for opt in self._optimizers],
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
        if self.changes is not None:
            # Before any tensor is replaced: a load that fails half-way leaves a new state too.
            self.changes.restart()
        self._net.load_state_dict(state["network"])
        self._wide.load_state_dict(state["wide"])
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
