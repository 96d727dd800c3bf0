"""Streaming a learning model to scoring replicas: versioned updates taken from the model and
a replica that applies them in order.

The model learns with a :class:`~model.touched.TouchedRows` (``OnlineModel(config,
changes=TouchedRows())``); :func:`take_update` then hands out either a full snapshot or the
delta since the previous update: every dense tensor predictions read, whole, and of each row
table (embeddings, cross biases, rate counts) only the rows learning wrote since. Optimiser
state and the wide regression's curvature stay behind: a replica only predicts.
:func:`~model.update.encode_update` turns an update into broker-sized chunks.

A :class:`ModelReplica` applies a snapshot whatever it held, and a delta only on top of the
exact state it was taken against (same lineage, ``base_version`` equal to the replica's
version); anything else is refused and counted, and the replica keeps predicting with what
it has until the next snapshot.

Examples
--------
>>> from model.config import ModelConfig
>>> config = ModelConfig(buckets=2**8, cross_buckets=2**8, features=(), device="cpu")
>>> trainer = OnlineModel(config, changes=TouchedRows())
>>> replica = ModelReplica(config)
>>> example = {"user_id": "u1", "item_id": "i1", "creator_id": "c1", "category": "news",
...            "label": "hide", "kinds": ["hide"], "weight": 1.0, "features": {}}
>>> replica.apply(take_update(trainer, full=True)), replica.version
(True, 0)
>>> trainer.learn_many([example])
>>> delta = take_update(trainer, full=False)
>>> delta.kind, delta.base_version, delta.version, len(delta.tables["network.table.weight"].rows)
('delta', 0, 1, 4)
>>> replica.apply(delta)
True
>>> bool((replica.predict_many([example]) == trainer.predict_many([example])).all())
True
>>> replica.apply(delta), replica.refused_stale
(False, 1)
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from model.batch import CandidateBatch
from model.config import ModelConfig, p_negative
from model.online import CROSS_BIAS_ROWS, EMBEDDING_ROWS, RATE_ROWS, OnlineModel
from model.touched import TouchedRows
from model.update import ModelUpdate, TableRows

__all__ = [
    "ModelReplica",
    "ModelUpdate",
    "TableRows",
    "TouchedRows",
    "config_digest",
    "take_update",
]

_RATE_CLOCK = "wide.table.seen"


def config_digest(config: ModelConfig) -> str:
    """Digest of everything in ``config`` but the device: what a replica must share."""
    values = config.to_dict()
    values.pop("device", None)
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _tables(model: OnlineModel) -> dict[str, tuple[str, torch.Tensor]]:
    """Row tables by array name: the :class:`TouchedRows` table marking them, the tensor."""
    network, rates = model.network, model.wide.table
    tables = {
        "network.table.weight": (EMBEDDING_ROWS, network.table.weight),
        "network.biases.weight": (CROSS_BIAS_ROWS, network.biases.weight),
        "wide.table.counts": (RATE_ROWS, rates.counts),
    }
    if rates.half_life > 0:
        # Row write times, read by the lazy decay; an empty tensor without decay.
        tables["wide.table.touched"] = (RATE_ROWS, rates.touched)
    return tables


def _dense(model: OnlineModel) -> dict[str, torch.Tensor]:
    """Every other tensor predictions read, by name (live, not copies)."""
    network, wide = model.network, model.wide
    rows = {id(tensor) for _, tensor in _tables(model).values()}
    dense = {
        f"network.{name}": tensor
        for name, tensor in [*network.named_parameters(), *network.named_buffers()]
        if id(tensor) not in rows
    }
    dense["wide.regression.weights"] = wide.regression.weights
    dense["wide.table.totals"] = wide.table.totals
    return dense


def _numpy(tensor: torch.Tensor) -> npt.NDArray[Any]:
    """A cpu copy that shares nothing with the model (a later step never changes it)."""
    return tensor.detach().to("cpu", copy=True).numpy()


def take_update(model: OnlineModel, full: bool) -> ModelUpdate:
    """The model's update since the previous one taken, or a full snapshot.

    A delta unless ``full`` is asked for or none can be made: nothing was taken since the
    model's changes started (or restarted on a state load). Every take starts the next
    delta's rows afresh, so each update taken must reach the replicas (or be followed by a
    snapshot). Call it from the thread that trains the model. The update's ``created`` is
    the wall-clock time of the call.
    """
    changes = model.changes
    touched: dict[str, torch.Tensor] = {}
    if changes is None:
        if not full:
            raise ValueError("a delta needs a model built with changes=TouchedRows()")
        # No continuity to name: a lineage of its own, so no delta ever applies on top.
        lineage, base = secrets.randbits(63), None
    else:
        lineage = changes.lineage
        base, touched = changes.take(model.version)
    if full:
        base = None
    tables: dict[str, TableRows] = {}
    for name, (marked, tensor) in _tables(model).items():
        if base is None:
            tables[name] = TableRows(None, _numpy(tensor))
            continue
        rows = touched.get(marked)
        if rows is None or rows.numel() == 0:
            continue
        dtype = np.int32 if tensor.shape[0] < 2**31 else np.int64
        values = _numpy(tensor.index_select(0, rows.to(tensor.device)))
        tables[name] = TableRows(_numpy(rows).astype(dtype), values)
    dense = {name: _numpy(tensor) for name, tensor in _dense(model).items()}
    dense[_RATE_CLOCK] = np.array(model.wide.table.seen, dtype=np.float64)
    return ModelUpdate(
        lineage=lineage,
        version=model.version,
        base_version=base,
        examples_seen=model.examples_seen,
        config=config_digest(model.config),
        dense=dense,
        tables=tables,
        created=time.time(),
    )


class ModelReplica:
    """A scoring copy of a model, kept current by the updates of its trainer.

    :meth:`apply` takes a snapshot whatever the replica held, and a delta only on top of the
    state it was taken against; it refuses (returns False and counts) a delta after a gap, an
    update of another lineage, and an update older than what the replica holds. Applying and
    predicting take a lock: :meth:`apply` can run on any thread, no event loop involved, and
    a prediction never sees half an update (predict through the replica, not its ``model``).

    Parameters
    ----------
    config
        The trainer model's config (its device may differ).
    """

    def __init__(self, config: ModelConfig) -> None:
        self.model = OnlineModel(config)
        self._digest = config_digest(config)
        self._lock = threading.Lock()
        self.lineage: int | None = None
        #: Version of the state held; None until the first snapshot.
        self.version: int | None = None
        #: When the update that brought the replica to :attr:`version` was taken (Unix s).
        self.created: float | None = None
        self.applied = 0
        #: Deltas refused for a missing predecessor (a gap, another lineage, no snapshot yet).
        self.refused_gaps = 0
        #: Updates refused for being older than the state held.
        self.refused_stale = 0

    def _accepts(self, update: ModelUpdate) -> bool:
        same_lineage = self.version is not None and update.lineage == self.lineage
        if update.base_version is None:
            if same_lineage and self.version is not None and update.version < self.version:
                self.refused_stale += 1
                return False
            return True
        if same_lineage and update.base_version == self.version:
            return True
        if same_lineage and self.version is not None and update.version <= self.version:
            self.refused_stale += 1
        else:
            self.refused_gaps += 1
        return False

    def apply(self, update: ModelUpdate) -> bool:
        """Bring the replica to ``update.version``; False (and counted) when refused.

        Raises ValueError, leaving the replica as it was, for an update of another config or
        whose arrays do not fit the model.
        """
        if update.config != self._digest:
            raise ValueError(f"update of config {update.config}, the replica's is {self._digest}")
        with self._lock:
            if not self._accepts(update):
                return False
            writes = self._checked(update)
            with torch.no_grad():
                for write in writes:
                    write()
            self.model.wide.table.seen = float(update.dense[_RATE_CLOCK])
            self.model.examples_seen = update.examples_seen
            self.model.version = update.version
            self.version, self.lineage = update.version, update.lineage
            self.created = update.created
            self.applied += 1
            return True

    def _checked(self, update: ModelUpdate) -> list[Callable[[], object]]:
        """The writes ``update`` makes, each checked to fit before any is made."""
        writes: list[Callable[[], object]] = []
        full = update.base_version is None
        dense, tables = _dense(self.model), _tables(self.model)
        expected = {*dense, _RATE_CLOCK}
        names = set(update.dense)
        if names != expected:
            raise ValueError(f"update dense arrays differ: {sorted(names ^ expected)}")
        for name, tensor in dense.items():
            writes.append(_copy(tensor, _fitting(name, update.dense[name], tensor, tensor.shape)))
        if _fitting(_RATE_CLOCK, update.dense[_RATE_CLOCK], None, ()).dtype != np.float64:
            raise ValueError(f"{_RATE_CLOCK} must be float64")
        unknown = set(update.tables) - set(tables)
        missing = set(tables) - set(update.tables) if full else set()
        if unknown or missing:
            raise ValueError(f"update tables differ: {sorted(unknown | missing)}")
        for name, table in update.tables.items():
            tensor = tables[name][1]
            if table.rows is None:
                if not full:
                    raise ValueError(f"delta carries all of table {name!r}")
                writes.append(_copy(tensor, _fitting(name, table.values, tensor, tensor.shape)))
                continue
            shape = (table.rows.shape[0], *tensor.shape[1:])
            values = _fitting(name, table.values, tensor, shape)
            rows = torch.from_numpy(table.rows.astype(np.int64))
            if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= tensor.shape[0]):
                raise ValueError(f"update rows of {name!r} fall outside its {tensor.shape[0]} rows")
            writes.append(_copy_rows(tensor, rows.to(tensor.device), values))
        return writes

    def predict_many(
        self, batch: CandidateBatch | Sequence[Mapping[str, Any]]
    ) -> npt.NDArray[np.float32]:
        """The model's :meth:`~model.online.OnlineModel.predict_many` at :attr:`version`."""
        with self._lock:
            return self.model.predict_many(batch)

    def p_negative(
        self, batch: CandidateBatch | Sequence[Mapping[str, Any]]
    ) -> npt.NDArray[np.float32]:
        """Probability of any negative reaction (see :func:`~model.config.p_negative`)."""
        return p_negative(self.predict_many(batch)).astype(np.float32, copy=False)


def _fitting(
    name: str, array: npt.NDArray[Any], tensor: torch.Tensor | None, shape: Sequence[int]
) -> npt.NDArray[Any]:
    """``array`` when its shape is ``shape`` and its dtype the tensor's, else ValueError."""
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"update array {name!r} has shape {array.shape}, expected {tuple(shape)}")
    if tensor is not None and torch.from_numpy(np.empty(0, array.dtype)).dtype != tensor.dtype:
        raise ValueError(f"update array {name!r} is {array.dtype}, the model's is {tensor.dtype}")
    return array


def _copy(tensor: torch.Tensor, array: npt.NDArray[Any]) -> Callable[[], object]:
    return lambda: tensor.copy_(torch.from_numpy(array))


def _copy_rows(
    tensor: torch.Tensor, rows: torch.Tensor, array: npt.NDArray[Any]
) -> Callable[[], object]:
    return lambda: tensor.index_copy_(0, rows, torch.from_numpy(array).to(tensor.device))
