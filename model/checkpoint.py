"""Atomic, rotated on-disk checkpoints of model state plus caller metadata (e.g. offsets).

A checkpoint is written to a hidden temporary file in the target directory, flushed and
fsynced, then renamed over its final name with ``os.replace`` (atomic on POSIX), and the
directory itself is fsynced so the rename survives a power cut. Readers therefore see either
the previous set of checkpoints or the new one, never half a file. Should the newest file still
be unreadable (disk corruption, a copy tool that is not atomic), :func:`load_latest` falls back
to the next newest. Files are ``checkpoint-<12-digit sequence>.pt``; only the newest ``keep``
are kept.

Examples
--------
>>> import tempfile
>>> with tempfile.TemporaryDirectory() as directory:
...     store = CheckpointStore(directory, keep=2)
...     for version in range(3):
...         _ = store.save({"version": version, "offsets": {"training-examples/0": 41}})
...     [path.name for path in store.paths()], store.load_latest()["version"]
(['checkpoint-000000000001.pt', 'checkpoint-000000000002.pt'], 2)
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointStore", "load_latest", "save_checkpoint"]

_NAME = re.compile(r"^checkpoint-(\d{12})\.pt$")


def _sequence(path: Path) -> int:
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"not a checkpoint file name: {path.name}")
    return int(match.group(1))


class CheckpointStore:
    """Rotating checkpoints in one directory.

    Parameters
    ----------
    directory
        Created if missing.
    keep
        Newest checkpoints kept after each save; at least 1. Keeping two or more is what makes
        the corrupt-newest fallback possible.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [path for path in self.directory.iterdir() if _NAME.match(path.name)]
        return sorted(found, key=lambda path: path.name)

    def save(self, state: Mapping[str, Any]) -> Path:
        """Write ``state`` atomically as the newest checkpoint, then drop the oldest extras.

        ``state`` should hold tensors and plain containers only (what
        :meth:`model.online.OnlineModel.state_dict` returns, plus offsets and the like), because
        :meth:`load_latest` refuses to unpickle arbitrary objects.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = self.paths()
        sequence = _sequence(existing[-1]) + 1 if existing else 0
        final = self.directory / f"checkpoint-{sequence:012d}.pt"
        descriptor, temporary = tempfile.mkstemp(
            prefix=".checkpoint-", suffix=".tmp", dir=self.directory
        )
        try:
            with os.fdopen(descriptor, "wb") as handle:
                torch.save(dict(state), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        self._fsync_directory()
        for stale in self.paths()[: -self.keep]:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        return final

    def load_latest(self) -> dict[str, Any] | None:
        """The newest readable checkpoint, or ``None`` when there is none."""
        for path in reversed(self.paths()):
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # any unreadable file means: try the previous one
                continue
            if isinstance(loaded, dict):
                return loaded
        return None

    def _fsync_directory(self) -> None:
        # Without this the rename itself may be lost on a crash on ext4/xfs.
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def save_checkpoint(
    directory: str | os.PathLike[str], state: Mapping[str, Any], keep: int = 3
) -> Path:
    """Atomically save ``state`` into ``directory``, keeping the newest ``keep`` files."""
    return CheckpointStore(directory, keep).save(state)


def load_latest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Newest readable checkpoint in ``directory``, or ``None``."""
    return CheckpointStore(directory).load_latest()
