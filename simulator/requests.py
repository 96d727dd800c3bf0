"""Blocks of requests drawn in whole arrays: items, affinities, reactions, delays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from schemas.kinds import EXPLICIT_NEGATIVE, IMPLICIT_NEGATIVE, POSITIVE
from simulator.world import (
    EXPLICIT_SHARES,
    IMPLICIT_SHARES,
    POSITIVE_SHARES,
    SimulatorConfig,
    World,
    feedback_probabilities,
)

#: Kinds of the three reaction groups, indexed by group.
GROUP_KINDS: tuple[tuple[str, ...], ...] = (EXPLICIT_NEGATIVE, IMPLICIT_NEGATIVE, POSITIVE)
_GROUP_CDFS = tuple(
    np.cumsum(shares) / sum(shares)
    for shares in (EXPLICIT_SHARES, IMPLICIT_SHARES, POSITIVE_SHARES)
)
#: Reaction group of an explicit negative; ``NO_REACTION`` follows the three feedback groups.
EXPLICIT_GROUP, NO_REACTION = 0, 3


@dataclass(frozen=True, slots=True)
class RequestBlock:
    """Pre-drawn requests: per-row lists for the emit loop, arrays to recompute a row."""

    times: list[float]
    users: list[int]
    items: list[list[int]]
    creators: list[list[int]]
    categories: list[list[int]]
    affinity: NDArray[np.float64]
    negativity: NDArray[np.float64]
    hated: NDArray[np.bool_]
    multiplier: NDArray[np.float64]
    outcome: NDArray[np.float64]
    probabilities: list[list[list[float]]]
    groups: list[list[int]]
    kind_index: list[list[list[int]]]
    kind_draw: list[list[float]]
    delays: list[list[float]]
    dwell_draw: list[list[float]]
    #: Seconds after event time at which each row's impressions and feedback are written.
    impression_lag: list[float]
    feedback_lag: list[float]


def draw_requests(
    config: SimulatorConfig, world: World, rng: np.random.Generator, now: float, rows: int
) -> RequestBlock:
    """Draw the next ``rows`` requests after ``now``, with users that remember nothing yet.

    Probabilities and reaction groups assume no earlier negatives; the simulator recomputes
    a row from the kept arrays and the same ``outcome`` draws when the user remembers some.
    """
    times = now + np.cumsum(rng.exponential(config.mean_request_gap_s, rows))
    users = np.searchsorted(world.user_cdf, rng.random(rows))
    no_lag = [0.0] * rows
    return requests_at(config, world, rng, times, users, (no_lag, no_lag))


def requests_at(
    config: SimulatorConfig,
    world: World,
    rng: np.random.Generator,
    times: NDArray[np.float64],
    users: NDArray[np.int64],
    lags: tuple[list[float], list[float]],
) -> RequestBlock:
    """Draw the items and reactions of requests made by ``users`` at ``times``.

    ``lags`` are each row's topic lags (impressions, feedback), carried into the block.
    """
    rows = len(times)
    k = config.impressions_per_request
    chosen = []
    for row in np.searchsorted(world.item_cdf, rng.random((rows, 2 * k))).tolist():
        unique = list(dict.fromkeys(row))
        while len(unique) < k:
            extra = np.searchsorted(world.item_cdf, rng.random(k)).tolist()
            unique = list(dict.fromkeys(unique + extra))
        chosen.append(unique[:k])
    items = np.array(chosen, dtype=np.int64)
    creators = world.item_creator[items]
    categories = world.item_category[items]
    multiplier = np.ones((rows, k))
    if config.drift_at is not None and config.drift_category is not None:
        drifting = categories == int(config.drift_category.removeprefix("cat"))
        drifting &= times[:, None] >= config.start_time + config.drift_at
        multiplier[drifting] = config.drift_factor
    taste = np.einsum("rkd,rd->rk", world.item_vector[items], world.user_taste[users])
    affinity = taste + world.creator_quality[creators]
    hated = world.hated_creator[users[:, None], creators]
    hated |= world.hated_category[users[:, None], categories]
    negativity = world.user_negativity[users][:, None]
    outcome = rng.random((rows, k))
    kind_draw = rng.random((rows, k))
    delays = rng.exponential(config.feedback_delay_mean_s, (rows, k))
    slow = rng.random((rows, k)) < config.slow_feedback_fraction
    slow_delays = rng.uniform(10.0, config.max_feedback_delay_s, (rows, k))
    delays = np.minimum(np.where(slow, slow_delays, delays), config.max_feedback_delay_s)
    zeros = np.zeros((rows, k))
    probabilities = feedback_probabilities(
        config, affinity, negativity, hated, zeros, zeros.astype(np.bool_), multiplier
    )
    kind_index = [np.searchsorted(cdf, kind_draw, side="right").tolist() for cdf in _GROUP_CDFS]
    return RequestBlock(
        times=times.tolist(),
        users=users.tolist(),
        items=chosen,
        creators=creators.tolist(),
        categories=categories.tolist(),
        affinity=affinity,
        negativity=negativity,
        hated=hated,
        multiplier=multiplier,
        outcome=outcome,
        probabilities=np.stack(probabilities, axis=1).tolist(),
        groups=reaction_groups(probabilities, outcome).tolist(),
        kind_index=kind_index,
        kind_draw=kind_draw.tolist(),
        delays=delays.tolist(),
        dwell_draw=rng.random((rows, k)).tolist(),
        impression_lag=lags[0],
        feedback_lag=lags[1],
    )


def reaction_groups(
    probabilities: tuple[NDArray[np.float64], ...], outcome: NDArray[np.float64]
) -> NDArray[np.int64]:
    """Return each impression's reaction group from its uniform ``outcome`` draw.

    Groups are 0 explicit negative, 1 implicit negative, 2 engagement, 3 no reaction.

    Examples
    --------
    >>> p = (np.array([0.1, 0.1]), np.array([0.2, 0.2]), np.array([0.3, 0.3]))
    >>> reaction_groups(p, np.array([0.05, 0.95])).tolist()
    [0, 3]
    """
    bounds = np.cumsum(np.stack(probabilities), axis=0)
    groups: NDArray[np.int64] = (outcome >= bounds).sum(axis=0)
    return groups


def dwell_seconds(kind: str, draw: float, config: SimulatorConfig) -> float:
    """Return the dwell time of a dwell kind: under 3 s when short, 15 s and more when long."""
    if kind == "short_dwell":
        return 0.3 + 2.7 * draw
    return 15.0 + (min(config.max_feedback_delay_s, 85.0) - 15.0) * draw
