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

__all__ = [
    "DEFAULT_MAX_CHUNK_BYTES",
    "ModelUpdate",
    "TableRows",
    "UpdateAssembler",
    "UpdateHead",
    "decode_update",
    "encode_update",
    "peek_update",
]

#: 900 KiB: a chunk and its record overhead fit Kafka's default 1 MiB record size.
DEFAULT_MAX_CHUNK_BYTES: Final = 900 * 1024

_MAGIC = b"NSMU"
_FORMAT = 1
_HEADER = struct.Struct("<4sBBQqqIIQQIII")
_CRC_AT = _HEADER.size - 4
_KINDS: Final = ("snapshot", "delta")
#: Array dtypes the wire carries (little-endian); anything else is refused both ways.
_DTYPES: Final = frozenset({"<f2", "<f4", "<f8", "<i4", "<i8", "|u1"})
_ROW_DTYPES: Final = frozenset({"<i4", "<i8"})

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
    if name not in _DTYPES:
        raise ValueError(f"dtype {array.dtype} cannot be sent (allowed: {sorted(_DTYPES)})")
    return name


def _arrays(update: ModelUpdate) -> list[tuple[str, str, Array]]:
    """``(role, name, array)`` in payload order: dense arrays, then each table's rows, values."""
    arrays = [("dense", name, array) for name, array in update.dense.items()]
    for name, table in update.tables.items():
        if table.rows is not None:
            if table.rows.ndim != 1 or table.rows.shape[0] != table.values.shape[0]:
                raise ValueError(f"table {name}: rows must be 1-D, one per row of values")
            if _wire_dtype(table.rows) not in _ROW_DTYPES:
                raise ValueError(f"table {name}: rows must be int32 or int64")
            arrays.append(("rows", name, table.rows))
        arrays.append(("values", name, table.values))
    return arrays


def encode_update(
    update: ModelUpdate, max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
) -> list[bytes]:
    """Chunks of at most ``max_chunk_bytes`` each that :class:`UpdateAssembler` puts back
    together, bit for bit (see the module's wire form)."""
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
    capacity = max_chunk_bytes - _HEADER.size - len(directory)
    if capacity < 1:
        raise ValueError(
            f"max_chunk_bytes={max_chunk_bytes} leaves no room for data after the "
            f"{_HEADER.size + len(directory)}-byte header"
        )
    count = max(1, -(-total // capacity))
    if count >= 2**32:
        raise ValueError(f"an update of {total} bytes needs too many chunks")
    base = -1 if update.base_version is None else update.base_version
    kind = _KINDS.index(update.kind)
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
        header = _HEADER.pack(_MAGIC, _FORMAT, kind, *fields, len(directory), len(body), 0)
        crc = zlib.crc32(body, zlib.crc32(directory, zlib.crc32(header[:_CRC_AT])))
        chunks.append(b"".join([header[:_CRC_AT], struct.pack("<I", crc), directory, body]))
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


@dataclass(frozen=True)
class UpdateHead:
    """What a chunk's fixed header says of its update, read without checking the chunk."""

    kind: Literal["snapshot", "delta"]
    lineage: int
    version: int
    index: int
    count: int


def peek_update(chunk: bytes) -> UpdateHead | None:
    """The header of ``chunk`` when it looks like an update chunk, else None.

    Only the fixed header is read (no CRC, no directory): enough for a reader to decide to
    skip an update it does not need without receiving the rest of its chunks. What it then
    does read is checked in full by :class:`UpdateAssembler`.

    >>> update = ModelUpdate(lineage=7, version=3, base_version=None, examples_seen=0,
    ...                      config="c0ffee", dense={"bias": np.zeros(2, np.float32)}, tables={})
    >>> peek_update(encode_update(update)[0])
    UpdateHead(kind='snapshot', lineage=7, version=3, index=0, count=1)
    >>> peek_update(b"not a chunk") is None
    True
    """
    if len(chunk) < _HEADER.size:
        return None
    magic, version_format, kind, lineage, version, _, index, count = _HEADER.unpack_from(chunk)[:8]
    if magic != _MAGIC or version_format != _FORMAT or kind >= len(_KINDS):
        return None
    return UpdateHead(_KINDS[kind], lineage, version, index, count)


@dataclass(frozen=True)
class _Chunk:
    """One parsed chunk: its update's identity, its place, its directory and its bytes."""

    identity: tuple[int, int, int, int, int, int, bytes]
    index: int
    count: int
    offset: int
    total: int
    directory: bytes
    body: memoryview


def _parse(chunk: bytes) -> _Chunk:
    """A chunk's header, checked; ValueError for anything that is not a whole, intact chunk."""
    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise ValueError(f"an update chunk is bytes, not {type(chunk).__name__}")
    # Held by the update being assembled: bytes, so that the caller cannot change it since.
    data = memoryview(chunk if isinstance(chunk, bytes) else bytes(chunk))
    if data.nbytes < _HEADER.size:
        raise ValueError(f"update chunk of {data.nbytes} bytes is shorter than its header")
    fields = _HEADER.unpack_from(data)
    magic, version_format, kind, lineage, version, base, index, count = fields[:8]
    offset, total, directory_size, body_size, crc = fields[8:]
    if magic != _MAGIC:
        raise ValueError("not a model update chunk (bad magic)")
    if version_format != _FORMAT:
        raise ValueError(f"update chunk format {version_format} is not {_FORMAT}")
    size = _HEADER.size + directory_size + body_size
    if data.nbytes != size:
        problem = "truncated" if data.nbytes < size else "followed by extra bytes"
        raise ValueError(f"update chunk of {data.nbytes} bytes is {problem} (header says {size})")
    if zlib.crc32(data[_CRC_AT + 4 :], zlib.crc32(data[:_CRC_AT])) != crc:
        raise ValueError("update chunk fails its CRC (corrupted)")
    if kind >= len(_KINDS) or (base == -1) != (kind == 0) or base < -1 or base > version:
        raise ValueError(f"update chunk has kind {kind} with base version {base}")
    if version < 0 or not 0 <= index < count:
        raise ValueError(f"update chunk {index} of {count} at version {version}")
    directory = bytes(data[_HEADER.size : _HEADER.size + directory_size])
    body = data[_HEADER.size + directory_size :]
    if offset + body.nbytes > total:
        raise ValueError("update chunk runs past its update's payload")
    identity = (kind, lineage, version, base, count, total, directory)
    return _Chunk(identity, index, count, offset, total, directory, body)


Layout = list[tuple[str, str, str, tuple[int, ...]]]


def _layout(directory: bytes, total: int) -> tuple[dict[str, Any], Layout]:
    """The directory's fields and ``(role, name, dtype, shape)`` of each array, checked
    against ``total`` payload bytes."""
    try:
        parsed = json.loads(directory)
        arrays = [
            (str(role), str(name), str(dtype), tuple(int(size) for size in shape))
            for role, name, dtype, shape in parsed["arrays"]
        ]
        created = float(parsed.get("created", 0.0))
        meta = {
            "config": str(parsed["config"]),
            "examples_seen": int(parsed["examples_seen"]),
            "created": created,
            "learned": {int(p): int(o) for p, o in dict(parsed.get("learned", {})).items()},
        }
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as error:
        raise ValueError(f"update directory is malformed: {error}") from error
    if not math.isfinite(created):
        raise ValueError(f"update directory has creation time {created}")
    size = 0
    for role, name, dtype, shape in arrays:
        if role not in ("dense", "rows", "values") or dtype not in _DTYPES:
            raise ValueError(f"update array {name!r} has role {role!r} and dtype {dtype!r}")
        if any(dimension < 0 for dimension in shape):
            raise ValueError(f"update array {name!r} has shape {shape}")
        size += np.dtype(dtype).itemsize * math.prod(shape)
    if size != total:
        raise ValueError(f"update directory describes {size} bytes, the chunks {total}")
    return meta, arrays


def _update(first: _Chunk, payload: bytearray) -> ModelUpdate:
    """The update a complete payload holds (its arrays are views of ``payload``)."""
    kind, lineage, version, base = first.identity[:4]
    meta, layout = _layout(first.directory, first.total)
    dense: dict[str, Array] = {}
    rows: dict[str, Array] = {}
    values: dict[str, Array] = {}
    offset = 0
    for role, name, dtype, shape in layout:
        array = np.frombuffer(payload, dtype, math.prod(shape), offset).reshape(shape)
        offset += array.nbytes
        target = {"dense": dense, "rows": rows, "values": values}[role]
        if name in target:
            raise ValueError(f"update carries {role} array {name!r} twice")
        target[name] = array
    orphans = sorted(set(rows) - set(values))
    if orphans:
        raise ValueError(f"update carries rows without values for {orphans}")
    tables = {}
    for name, table in values.items():
        indices = rows.get(name)
        if indices is not None and (
            indices.dtype.str not in _ROW_DTYPES
            or indices.ndim != 1
            or table.ndim < 1
            or indices.shape[0] != table.shape[0]
        ):
            raise ValueError(f"update table {name!r}: rows do not index its values")
        tables[name] = TableRows(indices, table)
    return ModelUpdate(
        lineage=lineage,
        version=version,
        base_version=None if kind == 0 else base,
        examples_seen=meta["examples_seen"],
        config=meta["config"],
        dense=dense,
        tables=tables,
        created=meta["created"],
        learned=meta["learned"],
    )


class UpdateAssembler:
    """Puts updates back together from their chunks, fed in order.

    :meth:`add` returns the update its last chunk completes, else None. A chunk 0 starts a new
    update (a partly received one is dropped and counted in ``dropped``); any other chunk must
    continue the update being received. A chunk that is malformed, corrupted or out of place
    raises ValueError and drops the partly received update; the assembler stays usable.

    Each chunk's bytes are appended to the payload as it arrives: no step copies a whole
    update at once, which would hold the interpreter (and every other thread's work, an
    event loop's included) for the length of that copy.
    """

    def __init__(self) -> None:
        self._first: _Chunk | None = None
        self._payload = bytearray()
        self._chunks = 0
        self.dropped = 0

    @property
    def _received(self) -> int:
        return len(self._payload)

    def _drop(self) -> None:
        if self._first is not None:
            self.dropped += 1
        self._first, self._payload, self._chunks = None, bytearray(), 0

    def add(self, chunk: bytes) -> ModelUpdate | None:
        """Take the next chunk; the whole update once this was its last chunk."""
        try:
            parsed = _parse(chunk)
            if parsed.index == 0:
                self._drop()
                _layout(parsed.directory, parsed.total)
                self._first = parsed
            elif (
                self._first is None
                or parsed.identity != self._first.identity
                or parsed.index != self._chunks
            ):
                raise ValueError(
                    f"update chunk {parsed.index} of {parsed.count} arrived without the chunks "
                    "before it"
                )
            if parsed.offset != self._received:
                raise ValueError(
                    f"update chunk {parsed.index} starts at byte {parsed.offset}, "
                    f"not {self._received}"
                )
            self._payload += parsed.body
            self._chunks += 1
            if parsed.index + 1 < parsed.count:
                return None
            first = self._first
            assert first is not None
            if self._received != first.total:
                raise ValueError(f"update chunks hold {self._received} bytes of {first.total}")
            payload = self._payload
            self._first, self._payload, self._chunks = None, bytearray(), 0
            return _update(first, payload)
        except ValueError:
            self._drop()
            raise


def decode_update(chunks: Iterable[bytes]) -> ModelUpdate:
    """The one update that ``chunks`` (all of its chunks, in order, nothing else) make up."""
    assembler = UpdateAssembler()
    update: ModelUpdate | None = None
    for chunk in chunks:
        if update is not None:
            raise ValueError("chunks continue past the end of their update")
        update = assembler.add(chunk)
    if update is None:
        raise ValueError("chunks end before their update is complete")
    return update
