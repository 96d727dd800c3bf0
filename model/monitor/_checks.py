"""Input and snapshot checks shared by the drift statistics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

_FloatArray = npt.NDArray[np.float64]


def _finite(values: npt.ArrayLike, name: str) -> _FloatArray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array


def _check_config(state: Mapping[str, Any], config: Mapping[str, Any], owner: str) -> None:
    # A snapshot taken with other bins or parameters would load without error and then report
    # numbers that mean something else; refuse it instead.
    if dict(state["config"]) != dict(config):
        raise ValueError(f"{owner} state has config {state['config']}, this one has {config}")
