"""The named worlds a run can pick, as ready-made configs."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from simulator.shape import HeavyShape
from simulator.world import SimulatorConfig

#: Names :func:`world_config` accepts, the default first.
WORLD_NAMES: tuple[str, ...] = ("uniform", "heavy")

#: Size of the heavy world unless overridden: room for power users' 6,000-impression days
#: in a run of ~50k impressions, and for a long tail of casual users.
HEAVY_SIZE: dict[str, int] = {
    "n_users": 10_000,
    "n_items": 20_000,
    "n_creators": 300,
    "n_categories": 30,
}

#: Smallest run of the default heavy world with every documented property: a power user's
#: full 6,000-impression day within the binges' half of the run, months of event time.
HEAVY_QUICK_IMPRESSIONS = 50_000

_SHAPE_FIELDS = frozenset(f.name for f in fields(HeavyShape))


def world_config(name: str, **overrides: Any) -> SimulatorConfig:
    """Return the config of the world ``name`` with ``overrides`` applied.

    Overrides name :class:`SimulatorConfig` fields (``seed``, ``n_users``, ...) and, for the
    heavy world, :class:`HeavyShape` fields too (``span_days``, ``power_users``, ...).
    ``world_config("heavy", n_users=100_000)`` is the memory benchmarks' world.

    Examples
    --------
    >>> world_config("uniform", seed=3) == SimulatorConfig(seed=3)
    True
    >>> heavy = world_config("heavy", n_users=100_000, span_days=30.0)
    >>> heavy.n_users, heavy.heavy.span_days, heavy.heavy.power_users
    (100000, 30.0, 3)
    """
    shape_overrides = {key: overrides.pop(key) for key in list(overrides) if key in _SHAPE_FIELDS}
    if name == "uniform":
        if shape_overrides:
            raise ValueError(f"the uniform world has no {sorted(shape_overrides)}")
        return SimulatorConfig(**overrides)
    if name == "heavy":
        shape = overrides.pop("heavy", None) or HeavyShape()
        return SimulatorConfig(
            **{**HEAVY_SIZE, **overrides, "heavy": replace(shape, **shape_overrides)}
        )
    raise ValueError(f"unknown world {name!r}; pick one of {', '.join(WORLD_NAMES)}")
