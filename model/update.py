"""Versioned model updates (a full snapshot or the delta since the previous update) and
their binary wire form: chunks that each fit one broker record.

Wire form
---------
An update's payload is its arrays' raw little-endian bytes (C order), one after another in
the order its directory lists them. The payload is cut into chunks; every chunk is

* a fixed header, ``struct`` ``<4sBBQqqIIQQIII``: magic ``b"NSMU"``, format version, kind
  (0 snapshot, 1 delta), lineage, version, base version (-1 for a snapshot), chunk index,
  chunk count, offset of the chunk's bytes in the payload, payload size, directory size,
  size of the chunk's bytes and a CRC-32 of everything in the chunk but the CRC itself;
* the directory, JSON: the config digest, ``examples_seen``, ``created`` (when the update
  was taken, Unix seconds; left out when not known), ``learned`` (per partition of the
  training examples, the last offset the model had learned from, keys as strings; left out
  when not known, and absent from updates written before it existed) and
  ``[role, name, dtype, shape]`` of every array (role ``dense``, ``rows`` or ``values``);
* the chunk's slice of the payload.

Every chunk carries the whole directory, so any one of them says what it belongs to and the
assembler checks that consecutive chunks agree. A table without a ``rows`` array (a snapshot)
carries every row, in order.

Examples
--------
>>> update = ModelUpdate(
...     lineage=7, version=3, base_version=2, examples_seen=96, config="c0ffee",
...     dense={"bias": np.array([0.5, -1.0], dtype=np.float32)},
...     tables={"embeddings": TableRows(np.array([4, 9], dtype=np.int32),
...                                     np.ones((2, 3), dtype=np.float32))},
...     learned={0: 41, 3: 17},
... )
>>> from model.update_reader import UpdateAssembler, decode_update
>>> chunks = encode_update(update, max_chunk_bytes=260)
>>> len(chunks), max(len(chunk) for chunk in chunks) <= 260
(2, True)
>>> assembler = UpdateAssembler()
>>> assembler.add(chunks[0]) is None
True
>>> decoded = assembler.add(chunks[1])
>>> decoded.kind, decoded.tables["embeddings"].rows.tolist(), decoded.dense["bias"].tolist()
('delta', [4, 9], [0.5, -1.0])
>>> decoded.learned
{0: 41, 3: 17}
>>> decode_update([chunks[0][:-1] + b"x", chunks[1]])
Traceback (most recent call last):
    ...
ValueError: update chunk fails its CRC (corrupted)
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_MAX_CHUNK_BYTES", "ModelUpdate", "TableRows", "encode_update"]

#: 900 KiB: a chunk and its record overhead fit Kafka's default 1 MiB record size.
DEFAULT_MAX_CHUNK_BYTES: Final = 900 * 1024

#: A chunk's magic, format version and fixed header (see the wire form).
MAGIC = b"NSMU"
FORMAT = 1
HEADER = struct.Struct("<4sBBQqqIIQQIII")
#: Where the header's CRC sits: it closes the header.
CRC_AT = HEADER.size - 4
#: Update kinds, by their number on the wire.
KINDS: Final = ("snapshot", "delta")
#: Array dtypes the wire carries (little-endian); anything else is refused both ways.
DTYPES: Final = frozenset({"<f2", "<f4", "<f8", "<i4", "<i8", "|u1"})
ROW_DTYPES: Final = frozenset({"<i4", "<i8"})

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class TableRows:
    """Rows of one row table: their indices (None: every row, in order) and new values."""

    rows: Array | None
    values: Array


@dataclass(frozen=True)
class ModelUpdate:
    """What a scoring replica needs to predict like the model at ``version``.

    Parameters
    ----------
    lineage
        Id of the unbroken run of model states this update belongs to; a delta applies only
        on top of a state of the same lineage.
    version
        Model version the update brings a replica to.
    base_version
        Version a delta applies on top of; None for a full snapshot.
    examples_seen
        The model's example count (the deep part's warm-up blend reads it).
    config
        Digest of the model config (device aside); replicas refuse another config's updates.
    dense
        Every tensor predictions read that is not a row table, whole, by name.
    tables
        Per row table (by name) the rows the update carries.
    created
        When the update was taken off the model (Unix seconds; 0 when not known): a replica's
        model is as old as the newest update it applied.
    learned
        Per partition of the training examples, the last offset the model had learned (or
        skipped) when the update was taken: every example at or below it is in the update.
        Empty when not known.
    """

    lineage: int
    version: int
    base_version: int | None
    examples_seen: int
    config: str
    dense: Mapping[str, Array] = field(default_factory=dict)
    tables: Mapping[str, TableRows] = field(default_factory=dict)
    created: float = 0.0
    learned: Mapping[int, int] = field(default_factory=dict)

    @property
    def kind(self) -> Literal["snapshot", "delta"]:
        """``"snapshot"`` (replaces a replica's whole state) or ``"delta"``."""
        return "snapshot" if self.base_version is None else "delta"

    @property
    def nbytes(self) -> int:
        """Bytes of all its arrays (its payload on the wire)."""
        arrays = [*self.dense.values()]
        for table in self.tables.values():
            arrays += [table.values] if table.rows is None else [table.rows, table.values]
        return sum(array.nbytes for array in arrays)


def _wire_dtype(array: Array) -> str:
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    name = dtype.str
    if name not in DTYPES:
        raise ValueError(f"dtype {array.dtype} cannot be sent (allowed: {sorted(DTYPES)})")
    return name


def _arrays(update: ModelUpdate) -> list[tuple[str, str, Array]]:
    """``(role, name, array)`` in payload order: dense arrays, then each table's rows, values."""
    arrays = [("dense", name, array) for name, array in update.dense.items()]
    for name, table in update.tables.items():
        if table.rows is not None:
            if table.rows.ndim != 1 or table.rows.shape[0] != table.values.shape[0]:
                raise ValueError(f"table {name}: rows must be 1-D, one per row of values")
            if _wire_dtype(table.rows) not in ROW_DTYPES:
                raise ValueError(f"table {name}: rows must be int32 or int64")
            arrays.append(("rows", name, table.rows))
        arrays.append(("values", name, table.values))
    return arrays


def encode_update(
    update: ModelUpdate, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
) -> list[bytes]:
    """Chunks of at most ``max_chunk_bytes`` each that
    :class:`~model.update_reader.UpdateAssembler` puts back together, bit for bit (see the
    module's wire form)."""
    arrays = _arrays(update)
    if not math.isfinite(update.created):
        raise ValueError(f"creation time {update.created} does not make an update")
    meta: dict[str, Any] = {"config": update.config, "examples_seen": update.examples_seen}
    if update.created:
        meta["created"] = update.created
    if update.learned:
        meta["learned"] = {str(p): int(o) for p, o in sorted(update.learned.items())}
    meta["arrays"] = [
        [role, name, _wire_dtype(array), list(array.shape)] for role, name, array in arrays
    ]
    directory = json.dumps(meta, separators=(",", ":")).encode()
    views = [
        np.ascontiguousarray(array, dtype=_wire_dtype(array)).reshape(-1).data.cast("B")
        for _, _, array in arrays
    ]
    total = sum(view.nbytes for view in views)
    capacity = max_chunk_bytes - HEADER.size - len(directory)
    if capacity < 1:
        raise ValueError(
            f"max_chunk_bytes={max_chunk_bytes} leaves no room for data after the "
            f"{HEADER.size + len(directory)}-byte header"
        )
    count = max(1, -(-total // capacity))
    if count >= 2**32:
        raise ValueError(f"an update of {total} bytes needs too many chunks")
    base = -1 if update.base_version is None else update.base_version
    kind = KINDS.index(update.kind)
    if not (0 <= update.lineage < 2**64 and 0 <= base + 1 <= update.version + 1 < 2**63):
        raise ValueError(
            f"lineage {update.lineage}, version {update.version} and base version "
            f"{update.base_version} do not make an update"
        )
    chunks: list[bytes] = []
    pieces = iter(_slices(views, capacity))
    for index in range(count):
        body = next(pieces, b"")
        fields = (update.lineage, update.version, base, index, count, index * capacity, total)
        header = HEADER.pack(MAGIC, FORMAT, kind, *fields, len(directory), len(body), 0)
        crc = zlib.crc32(body, zlib.crc32(directory, zlib.crc32(header[:CRC_AT])))
        chunks.append(b"".join([header[:CRC_AT], struct.pack("<I", crc), directory, body]))
    return chunks


def _slices(views: list[memoryview], capacity: int) -> Iterable[bytes]:
    """The concatenated views, ``capacity`` bytes at a time (the last piece may be shorter)."""
    piece: list[memoryview] = []
    room = capacity
    for view in views:
        start = 0
        while start < view.nbytes:
            taken = view[start : start + room]
            piece.append(taken)
            start += taken.nbytes
            room -= taken.nbytes
            if room == 0:
                yield b"".join(piece)
                piece, room = [], capacity
    if piece:
        yield b"".join(piece)
