"""Rows of a model's row tables that learning changed since the last update was taken.

A model that publishes updates marks, after each learned batch, the rows of each row table
(embeddings, biases, rate counts) the batch wrote; :meth:`TouchedRows.take` hands over the
distinct rows marked since the previous take. Marking appends the batch's row indices
(duplicates and all) and merges them into a sorted set of distinct rows only once the pending
ones outnumber it, so a batch costs amortised O(rows it touched log rows touched), and never a
pass over a whole table.

Every take also records the model version it was taken at: the next take reports it as the
version its rows apply on top of. :meth:`TouchedRows.restart` (the model's state was replaced
wholesale, e.g. loaded from a checkpoint) starts a new lineage: rows marked before say nothing
about the new state, so the next update has to be a full one.

Examples
--------
>>> touched = TouchedRows()
>>> touched.take(version=0)
(None, {})
>>> touched.mark("embeddings", torch.tensor([[7, 3], [3, 9]]))
>>> touched.mark("embeddings", torch.tensor([9, 1]))
>>> base, rows = touched.take(version=2)
>>> base, rows["embeddings"].tolist()
(0, [1, 3, 7, 9])
>>> touched.take(version=2)
(2, {})
"""

from __future__ import annotations

import secrets

import torch

__all__ = ["TouchedRows"]

#: Pending row indices of a table merged into its distinct set once they exceed both this and
#: the set's size: small batches then merge every few dozen batches, not every one.
_MERGE_AT = 1 << 16


def _new_lineage() -> int:
    """A random 63-bit id: two trainers (or one trainer before and after a restart) never
    share one, so a replica never applies one's rows on top of the other's state."""
    return secrets.randbits(63)


class TouchedRows:
    """Distinct rows of each named table marked since the last :meth:`take`.

    ``lineage`` names the unbroken run of states the marks describe; it changes on
    :meth:`restart`. Not thread-safe: mark and take from the thread that trains the model.
    """

    def __init__(self) -> None:
        self.lineage = _new_lineage()
        self._merged: dict[str, torch.Tensor] = {}
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._pending_rows: dict[str, int] = {}
        self._taken_version: int | None = None

    def mark(self, table: str, rows: torch.Tensor) -> None:
        """Record that learning wrote ``rows`` (integer indices, any shape) of ``table``."""
        flat = rows.detach().reshape(-1)
        if flat.numel() == 0:
            return
        self._pending.setdefault(table, []).append(flat)
        pending = self._pending_rows.get(table, 0) + flat.numel()
        self._pending_rows[table] = pending
        merged = self._merged.get(table)
        if pending > max(_MERGE_AT, 0 if merged is None else merged.numel()):
            self._merged[table] = self._distinct(table)

    def _distinct(self, table: str) -> torch.Tensor:
        """Sorted distinct rows of ``table`` marked so far; empties its pending marks."""
        parts = self._pending.pop(table, [])
        self._pending_rows.pop(table, None)
        merged = self._merged.pop(table, None)
        if merged is not None:
            parts.append(merged)
        if len(parts) == 1 and merged is not None:
            return merged
        distinct: torch.Tensor = torch.unique(torch.cat(parts))
        return distinct

    def take(self, version: int) -> tuple[int | None, dict[str, torch.Tensor]]:
        """``(base_version, rows)``: the version of the previous take in this lineage (None
        when there was none) and, per table, the sorted distinct rows marked since (int64, on
        the device they were marked on); then start over from ``version``."""
        tables = set(self._merged) | set(self._pending)
        rows = {table: self._distinct(table) for table in sorted(tables)}
        base, self._taken_version = self._taken_version, version
        return base, rows

    def restart(self) -> None:
        """Forget every mark and start a new lineage: the model's state was replaced."""
        self.lineage = _new_lineage()
        self._merged.clear()
        self._pending.clear()
        self._pending_rows.clear()
        self._taken_version = None
