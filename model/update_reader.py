"""Model updates read back from their chunks: header peeked, chunks checked, update assembled."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from model.update import (
    CRC_AT,
    DTYPES,
    FORMAT,
    HEADER,
    KINDS,
    MAGIC,
    ROW_DTYPES,
    Array,
    ModelUpdate,
    TableRows,
)

__all__ = ["UpdateAssembler", "UpdateHead", "decode_update", "peek_update"]


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

    >>> from model.update import encode_update
    >>> update = ModelUpdate(lineage=7, version=3, base_version=None, examples_seen=0,
    ...                      config="c0ffee", dense={"bias": np.zeros(2, np.float32)}, tables={})
    >>> peek_update(encode_update(update)[0])
    UpdateHead(kind='snapshot', lineage=7, version=3, index=0, count=1)
    >>> peek_update(b"not a chunk") is None
    True
    """
    if len(chunk) < HEADER.size:
        return None
    magic, version_format, kind, lineage, version, _, index, count = HEADER.unpack_from(chunk)[:8]
    if magic != MAGIC or version_format != FORMAT or kind >= len(KINDS):
        return None
    return UpdateHead(KINDS[kind], lineage, version, index, count)


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
    if data.nbytes < HEADER.size:
        raise ValueError(f"update chunk of {data.nbytes} bytes is shorter than its header")
    fields = HEADER.unpack_from(data)
    magic, version_format, kind, lineage, version, base, index, count = fields[:8]
    offset, total, directory_size, body_size, crc = fields[8:]
    if magic != MAGIC:
        raise ValueError("not a model update chunk (bad magic)")
    if version_format != FORMAT:
        raise ValueError(f"update chunk format {version_format} is not {FORMAT}")
    size = HEADER.size + directory_size + body_size
    if data.nbytes != size:
        problem = "truncated" if data.nbytes < size else "followed by extra bytes"
        raise ValueError(f"update chunk of {data.nbytes} bytes is {problem} (header says {size})")
    if zlib.crc32(data[CRC_AT + 4 :], zlib.crc32(data[:CRC_AT])) != crc:
        raise ValueError("update chunk fails its CRC (corrupted)")
    if kind >= len(KINDS) or (base == -1) != (kind == 0) or base < -1 or base > version:
        raise ValueError(f"update chunk has kind {kind} with base version {base}")
    if version < 0 or not 0 <= index < count:
        raise ValueError(f"update chunk {index} of {count} at version {version}")
    directory = bytes(data[HEADER.size : HEADER.size + directory_size])
    body = data[HEADER.size + directory_size :]
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
        if role not in ("dense", "rows", "values") or dtype not in DTYPES:
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
            indices.dtype.str not in ROW_DTYPES
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
