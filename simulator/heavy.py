"""The heavy-tailed world: Zipf users in sessions over months, binging power users, lagged topics.

Everything here is drawn in whole arrays: the world once, a run's request schedule once,
then the items and reactions block by block through :func:`simulator.requests.requests_at`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulator.requests import RequestBlock, requests_at
from simulator.shape import DAY_S, HeavyShape
from simulator.world import (
    SimulatorConfig,
    World,
    draw_items,
    draw_users,
    weights_cdf,
    zipf_weights,
)

_MINUTES_PER_DAY = 1440


def heavy_shape(config: SimulatorConfig) -> HeavyShape:
    """Return the config's heavy shape; raise ``ValueError`` for a uniform config."""
    if config.heavy is None:
        raise ValueError("not a heavy-world config (heavy is None)")
    return config.heavy


def heavy_world(config: SimulatorConfig, rng: np.random.Generator) -> World:
    """Draw a heavy-tailed world: Zipf user activity and item popularity, pickier power users."""
    shape = heavy_shape(config)
    user_taste, user_negativity = draw_users(config, rng)
    items = draw_items(config, rng, shape.item_exponent, shape.item_offset)
    ranks = rng.permutation(config.n_users)
    user_weights = zipf_weights(config.n_users, shape.user_exponent, shape.user_offset)[ranks]
    # Rank r went to the user u with ranks[u] == r; the power users hold the lowest ranks.
    power = np.argsort(ranks)[: shape.power_users]
    user_negativity[power] = shape.power_negativity
    return World(
        user_taste=user_taste,
        user_negativity=user_negativity,
        user_cdf=weights_cdf(user_weights),
        hated_creator=distinct_mask(
            rng, config.n_users, config.n_creators, config.hated_creators_per_user
        ),
        hated_category=distinct_mask(
            rng, config.n_users, config.n_categories, config.hated_categories_per_user
        ),
        item_vector=items.vector,
        item_creator=items.creator,
        item_category=items.category,
        item_cdf=items.cdf,
        creator_quality=items.creator_quality,
        power_users=tuple(power.tolist()),
    )


def distinct_mask(rng: np.random.Generator, rows: int, targets: int, k: int) -> NDArray[np.bool_]:
    """Mark ``k`` distinct random targets in each of ``rows`` rows.

    Redraws only the rows that drew a target twice, so it needs ``rows * k`` draws rather
    than ``rows * targets`` (100k users by hundreds of creators).

    Examples
    --------
    >>> mask = distinct_mask(np.random.default_rng(0), 1000, 30, 3)
    >>> mask.shape, set(mask.sum(axis=1).tolist())
    ((1000, 30), {3})
    """
    if 2 * k > targets:
        chosen = np.argsort(rng.random((rows, targets)), axis=1)[:, :k]
    else:
        chosen = rng.integers(0, targets, (rows, k))
        while True:
            ordered = np.sort(chosen, axis=1)
            repeated = (np.diff(ordered, axis=1) == 0).any(axis=1)
            if not repeated.any():
                break
            chosen[repeated] = rng.integers(0, targets, (int(repeated.sum()), k))
    mask = np.zeros((rows, targets), dtype=np.bool_)
    np.put_along_axis(mask, chosen, True, axis=1)
    return mask


@dataclass(frozen=True, eq=False)
class Schedule:
    """A run's requests in event-time order with each one's user and topic lags."""

    times: NDArray[np.float64]
    users: NDArray[np.int64]
    impression_lag: NDArray[np.float64]
    feedback_lag: NDArray[np.float64]


def session_lengths(
    rng: np.random.Generator, total: int, median: float, sigma: float
) -> NDArray[np.int64]:
    """Return lognormal session lengths (at least 1 each) that add up to exactly ``total``.

    Examples
    --------
    >>> lengths = session_lengths(np.random.default_rng(1), 1000, 3.0, 1.2)
    >>> int(lengths.sum()), bool(lengths.min() >= 1)
    (1000, True)
    """
    parts: list[NDArray[np.int64]] = []
    left = total
    mean = median * math.exp(sigma * sigma / 2.0)
    while left > 0:
        count = int(left / mean) + 16
        draws = median * np.exp(sigma * rng.standard_normal(count))
        lengths = np.maximum(1, np.rint(draws)).astype(np.int64)
        ends = np.cumsum(lengths)
        cut = int(np.searchsorted(ends, left))
        if cut < count:
            lengths = lengths[: cut + 1]
            lengths[-1] -= int(ends[cut]) - left
            parts.append(lengths)
            break
        parts.append(lengths)
        left -= int(ends[-1])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _time_of_day(rng: np.random.Generator, shape: HeavyShape, count: int) -> NDArray[np.float64]:
    minutes = np.arange(_MINUTES_PER_DAY + 1, dtype=np.float64)
    hours = minutes / 60.0
    density = 1.0 + shape.diurnal_amplitude * np.cos(2.0 * np.pi * (hours - shape.peak_hour) / 24)
    cdf = np.concatenate(([0.0], np.cumsum(density[:-1])))
    seconds: NDArray[np.float64] = np.interp(rng.random(count), cdf / cdf[-1], minutes * 60.0)
    return seconds


def _binges(
    config: SimulatorConfig, world: World, rng: np.random.Generator, n_requests: int
) -> tuple[list[int], list[int], list[float]]:
    """Return each binge's request count, power user and start of its day (seconds)."""
    shape = heavy_shape(config)
    n_days = max(1, math.floor(shape.span_days))
    days = [
        rng.choice(n_days, min(shape.power_days, n_days), replace=False).tolist()
        for _ in world.power_users
    ]
    # Every power user's first binge before anyone's second one.
    slots = [
        (user, DAY_S * per_user[day])
        for day in range(shape.power_days)
        for user, per_user in zip(world.power_users, days, strict=True)
        if day < len(per_user)
    ]
    per_binge = math.ceil(shape.power_day_impressions / config.impressions_per_request)
    budget = math.floor(shape.power_share * n_requests)
    fits = min(len(slots), budget // per_binge)
    sizes = [per_binge] * fits if fits or not slots or budget == 0 else [budget]
    chosen = slots[: len(sizes)]
    return sizes, [user for user, _ in chosen], [start for _, start in chosen]


def heavy_schedule(
    config: SimulatorConfig, world: World, rng: np.random.Generator, n_requests: int
) -> Schedule:
    """Draw the event times, users and topic lags of a run of ``n_requests`` requests."""
    shape = heavy_shape(config)
    sizes, binge_users, binge_days = _binges(config, world, rng, n_requests)
    binge_window_s = shape.binge_hours * 3600.0
    lengths, users, starts = [], [], []
    for size, user, day_start in zip(sizes, binge_users, binge_days, strict=True):
        binge = session_lengths(rng, size, shape.session_median_requests, shape.session_sigma)
        lengths.append(binge)
        users.append(np.full(len(binge), user, dtype=np.int64))
        starts.append(day_start + rng.uniform(0.0, binge_window_s, len(binge)))
    left = n_requests - sum(sizes)
    casual = math.floor(shape.casual_share * left)
    regular = session_lengths(
        rng, left - casual, shape.session_median_requests, shape.session_sigma
    )
    lengths += [regular, np.ones(casual, dtype=np.int64)]
    users.append(np.searchsorted(world.user_cdf, rng.random(len(regular))).astype(np.int64))
    # Casual visits go round all users in a random order, each once before anyone twice.
    users.append(np.resize(rng.permutation(config.n_users), casual).astype(np.int64))
    day = np.floor(rng.random(len(regular) + casual) * shape.span_days)
    starts.append(day * DAY_S + _time_of_day(rng, shape, len(day)))
    session_length = np.concatenate(lengths)
    session = np.repeat(np.arange(len(session_length)), session_length)
    first = np.cumsum(session_length) - session_length
    gaps = rng.exponential(shape.request_gap_s, len(session))
    gaps[first] = 0.0
    elapsed = np.cumsum(gaps)
    offsets = np.concatenate(starts)[session] + elapsed - elapsed[first][session]
    order = np.argsort(offsets, kind="stable")
    offsets = offsets[order]
    knots = np.arange(0.0, offsets[-1] + 2.0 * shape.topic_lag_step_s, shape.topic_lag_step_s)
    lags = rng.uniform(0.0, shape.topic_lag_max_s, (2, len(knots)))
    return Schedule(
        times=config.start_time + offsets,
        users=np.concatenate(users)[session][order],
        impression_lag=np.interp(offsets, knots, lags[0]),
        feedback_lag=np.interp(offsets, knots, lags[1]),
    )


def heavy_blocks(
    config: SimulatorConfig, world: World, rng: np.random.Generator, n_requests: int, rows: int
) -> Iterator[RequestBlock]:
    """Yield a run's requests in blocks of ``rows``, drawn lazily after the schedule."""
    if n_requests <= 0:
        return
    schedule = heavy_schedule(config, world, rng, n_requests)
    for begin in range(0, n_requests, rows):
        part = slice(begin, begin + rows)
        lags = (schedule.impression_lag[part].tolist(), schedule.feedback_lag[part].tolist())
        yield requests_at(config, world, rng, schedule.times[part], schedule.users[part], lags)
