"""Simulator configuration, synthetic world and the true feedback probability model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from simulator.shape import HeavyShape

DWELL_KINDS: frozenset[str] = frozenset({"short_dwell", "long_dwell"})

#: Fixed share of each kind within its group, in the order of the group's tuple.
EXPLICIT_SHARES: tuple[float, ...] = (0.35, 0.25, 0.22, 0.06, 0.12)
IMPLICIT_SHARES: tuple[float, ...] = (0.55, 0.30, 0.15)
POSITIVE_SHARES: tuple[float, ...] = (0.50, 0.20, 0.20, 0.10)

#: Logit added to explicit negatives when the item's creator or category is one the user hates.
HATED_LOGIT = 4.0
#: Logit added per earlier explicit negative the user gave the item's creator.
CREATOR_PENALTY_LOGIT = 0.8
#: Earlier explicit negatives beyond this count add nothing more.
CREATOR_PENALTY_CAP = 4
#: Upper bound on the total negative probability once drift multiplies it.
MAX_NEGATIVE_PROBABILITY = 0.95


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything that shapes a simulated event stream; the seed makes it reproducible.

    Attributes
    ----------
    n_users, n_items, n_creators, n_categories, latent_dim : int
        Size of the world and of the latent taste space.
    seed : int
        Seed of every random draw; equal configs give identical streams.
    start_time : float
        Event time of the stream start, epoch seconds (default 2026-01-01T00:00:00Z).
    impressions_per_request : int
        Items shown per recommendation request.
    mean_request_gap_s : float
        Mean of the exponential gap between requests (all users together).
    feedback_delay_mean_s : float
        Mean of the exponential delay of most feedback after its impression.
    slow_feedback_fraction : float
        Share of feedback instead delayed uniformly between 10 s and ``max_feedback_delay_s``.
    max_feedback_delay_s : float
        Longest delay between an impression and its feedback.
    explicit_bias, implicit_bias, engagement_bias : float
        Logit intercepts of the three reaction groups; the defaults give about 20 % of
        impressions a negative reaction and about 25 % a positive one.
    hated_creators_per_user, hated_categories_per_user : int
        Creators and categories each user reacts to with strong explicit negatives.
    duplicate_rate : float
        Chance that a valid event is emitted a second time with the same ``event_id``.
    out_of_order_rate : float
        Chance that an impression with feedback is emitted after that feedback.
    late_rate, late_delay_s : float
        Chance that an event is emitted ``late_delay_s`` after its event time.
    malformed_rate : float
        Chance per valid event that a malformed raw payload is injected beside it.
    drift_at : float or None
        Seconds after ``start_time`` from which ``drift_category`` drifts.
    drift_category : str or None
        Category (``"cat07"``) whose negative probabilities get multiplied by ``drift_factor``.
    drift_factor : float
        Multiplier on the negative probabilities of the drifting category.
    flood_users : int
        Bot users that send only negative feedback, with no impressions.
    flood_rate : float
        Events per second of event time sent by each bot.
    keep_ground_truth : bool
        Record each impression's true probabilities; turn off for long runs (a demo) so
        memory stays flat.
    heavy : HeavyShape or None
        ``None`` is the uniform world (one Poisson stream of requests from alike users,
        both topics written at event time). A shape makes it the heavy-tailed world of
        ``simulator.heavy``, where ``mean_request_gap_s`` plays no part and ``flood_users``
        must be 0 (a bot's rate over months of event time would swamp the run).
    """

    n_users: int = 1000
    n_items: int = 5000
    n_creators: int = 200
    n_categories: int = 20
    latent_dim: int = 8
    seed: int = 0
    start_time: float = 1_767_225_600.0
    impressions_per_request: int = 10
    mean_request_gap_s: float = 0.05
    feedback_delay_mean_s: float = 2.0
    slow_feedback_fraction: float = 0.1
    max_feedback_delay_s: float = 90.0
    explicit_bias: float = -3.8
    implicit_bias: float = -2.0
    engagement_bias: float = -1.15
    hated_creators_per_user: int = 3
    hated_categories_per_user: int = 1
    duplicate_rate: float = 0.0
    out_of_order_rate: float = 0.0
    late_rate: float = 0.0
    late_delay_s: float = 600.0
    malformed_rate: float = 0.0
    drift_at: float | None = None
    drift_category: str | None = None
    drift_factor: float = 1.0
    flood_users: int = 0
    flood_rate: float = 50.0
    keep_ground_truth: bool = True
    heavy: HeavyShape | None = None

    def __post_init__(self) -> None:
        counts = ("n_users", "n_items", "n_creators", "n_categories", "latent_dim")
        for name in (*counts, "impressions_per_request"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("duplicate_rate", "out_of_order_rate", "late_rate", "malformed_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if not 0.0 <= self.slow_feedback_fraction <= 1.0:
            raise ValueError("slow_feedback_fraction must lie in [0, 1]")
        if self.max_feedback_delay_s <= 10.0 or self.feedback_delay_mean_s <= 0.0:
            raise ValueError("feedback delays must be positive, max_feedback_delay_s over 10 s")
        if self.mean_request_gap_s <= 0.0 or self.late_delay_s < 0.0:
            raise ValueError("mean_request_gap_s must be positive and late_delay_s not negative")
        if self.hated_creators_per_user > self.n_creators:
            raise ValueError("hated_creators_per_user exceeds n_creators")
        if self.hated_categories_per_user > self.n_categories:
            raise ValueError("hated_categories_per_user exceeds n_categories")
        if self.flood_users < 0 or self.flood_rate <= 0.0:
            raise ValueError("flood_users must not be negative and flood_rate must be positive")
        if self.drift_factor < 0.0 or not math.isfinite(self.drift_factor):
            raise ValueError("drift_factor must be a finite non-negative number")
        if (self.drift_at is None) != (self.drift_category is None):
            raise ValueError("drift_at and drift_category are set together")
        names = {category_name(index) for index in range(self.n_categories)}
        if self.drift_category is not None and self.drift_category not in names:
            raise ValueError(f"drift_category {self.drift_category!r} is not a category")
        if self.heavy is not None and self.flood_users:
            raise ValueError("the heavy world takes no flood_users")


def user_name(index: int) -> str:
    """Return the ``user_id`` of user ``index``."""
    return f"u{index:05d}"


def item_name(index: int) -> str:
    """Return the ``item_id`` of item ``index``."""
    return f"i{index:06d}"


def creator_name(index: int) -> str:
    """Return the ``creator_id`` of creator ``index``."""
    return f"c{index:04d}"


def category_name(index: int) -> str:
    """Return the ``category`` of category ``index``."""
    return f"cat{index:02d}"


def zipf_weights(n: int, exponent: float, offset: float) -> NDArray[np.float64]:
    """Return the weights ``(rank + offset) ** -exponent`` of ranks ``0 .. n - 1``."""
    weights: NDArray[np.float64] = 1.0 / (np.arange(n, dtype=np.float64) + offset) ** exponent
    return weights


def weights_cdf(weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return the normalised cumulative sum of ``weights``, for ``np.searchsorted`` draws."""
    cdf: NDArray[np.float64] = np.cumsum(weights)
    normalised: NDArray[np.float64] = cdf / cdf[-1]
    return normalised


def _hated_mask(
    rng: np.random.Generator, n_users: int, n_targets: int, k: int
) -> NDArray[np.bool_]:
    # argsort of uniform noise gives k distinct targets per user in one vectorised step.
    chosen = np.argsort(rng.random((n_users, n_targets)), axis=1)[:, :k]
    mask = np.zeros((n_users, n_targets), dtype=np.bool_)
    np.put_along_axis(mask, chosen, True, axis=1)
    return mask


@dataclass(frozen=True, eq=False)
class World:
    """Users, items, creators and categories with the latent factors behind their affinity.

    Item and user popularity follow a Zipf-like law, so popular items come back to the same
    user and remembered negatives matter.
    """

    user_taste: NDArray[np.float64]
    user_negativity: NDArray[np.float64]
    user_cdf: NDArray[np.float64]
    hated_creator: NDArray[np.bool_]
    hated_category: NDArray[np.bool_]
    item_vector: NDArray[np.float64]
    item_creator: NDArray[np.int64]
    item_category: NDArray[np.int64]
    item_cdf: NDArray[np.float64]
    creator_quality: NDArray[np.float64]
    #: Users that binge (the heavy world's busiest), busiest first; none in the uniform world.
    power_users: tuple[int, ...] = ()

    @classmethod
    def generate(cls, config: SimulatorConfig, rng: np.random.Generator) -> World:
        """Draw a world of the configured size from ``rng``."""
        user_taste, user_negativity = draw_users(config, rng)
        items = draw_items(config, rng, 0.8, 20.0)
        return cls(
            user_taste=user_taste,
            user_negativity=user_negativity,
            user_cdf=weights_cdf(rng.lognormal(0.0, 0.5, config.n_users)),
            hated_creator=_hated_mask(
                rng, config.n_users, config.n_creators, config.hated_creators_per_user
            ),
            hated_category=_hated_mask(
                rng, config.n_users, config.n_categories, config.hated_categories_per_user
            ),
            item_vector=items.vector,
            item_creator=items.creator,
            item_category=items.category,
            item_cdf=items.cdf,
            creator_quality=items.creator_quality,
        )


class ItemSpace(NamedTuple):
    """Items (latent vector, creator, category, popularity CDF) and each creator's quality."""

    vector: NDArray[np.float64]
    creator: NDArray[np.int64]
    category: NDArray[np.int64]
    cdf: NDArray[np.float64]
    creator_quality: NDArray[np.float64]


def _taste_scale(config: SimulatorConfig) -> float:
    # Scales chosen so that u . v has unit variance whatever latent_dim is.
    scale: float = config.latent_dim**-0.25
    return scale


def draw_users(
    config: SimulatorConfig, rng: np.random.Generator
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Draw each user's taste vector and negative propensity (a logit offset)."""
    user_taste = rng.normal(0.0, _taste_scale(config), (config.n_users, config.latent_dim))
    return user_taste, rng.normal(0.0, 0.5, config.n_users)


def draw_items(
    config: SimulatorConfig, rng: np.random.Generator, exponent: float, offset: float
) -> ItemSpace:
    """Draw items and creators; item popularity is Zipf-like with this exponent and offset."""
    dim, taste_scale = config.latent_dim, _taste_scale(config)
    creator_offset = rng.normal(0.0, math.sqrt(0.2) * taste_scale, (config.n_creators, dim))
    category_offset = rng.normal(0.0, math.sqrt(0.2) * taste_scale, (config.n_categories, dim))
    creator_quality = rng.normal(0.0, 0.3, config.n_creators)
    creator_cdf = weights_cdf(zipf_weights(config.n_creators, 0.7, 5.0))
    item_creator = np.searchsorted(creator_cdf, rng.random(config.n_items)).astype(np.int64)
    item_category = rng.integers(0, config.n_categories, config.n_items, dtype=np.int64)
    own = rng.normal(0.0, math.sqrt(0.6) * taste_scale, (config.n_items, dim))
    item_vector = own + creator_offset[item_creator] + category_offset[item_category]
    item_weights = zipf_weights(config.n_items, exponent, offset)[rng.permutation(config.n_items)]
    return ItemSpace(
        item_vector, item_creator, item_category, weights_cdf(item_weights), creator_quality
    )


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))


def feedback_probabilities(
    config: SimulatorConfig,
    affinity: NDArray[np.float64],
    negativity: float | NDArray[np.float64],
    hated: NDArray[np.bool_],
    creator_negatives: NDArray[np.float64],
    blocked: NDArray[np.bool_],
    negative_multiplier: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Return the true (explicit negative, implicit negative, engagement) probabilities.

    The three reactions are exclusive; what is left is no reaction. Lower affinity, a
    hated creator or category and earlier explicit negatives on the creator raise the
    negatives; an item the user already gave an explicit negative is never engaged with.

    Parameters
    ----------
    config : SimulatorConfig
        Supplies the logit intercepts.
    affinity : ndarray of float
        Affinity of the user for each item.
    negativity : float or ndarray of float
        The user's negative propensity, a logit offset.
    hated : ndarray of bool
        Whether the item's creator or category is hated by the user.
    creator_negatives : ndarray of float
        Earlier explicit negatives of the user on each item's creator.
    blocked : ndarray of bool
        Whether the user already gave the item an explicit negative.
    negative_multiplier : ndarray of float
        Drift multiplier on both negative probabilities.

    Examples
    --------
    >>> cfg = SimulatorConfig()
    >>> one = np.ones(2)
    >>> p_e, p_i, p_g = feedback_probabilities(
    ...     cfg, np.array([-2.0, 2.0]), 0.0, np.zeros(2, bool), 0 * one, np.zeros(2, bool), one
    ... )
    >>> bool(p_e[0] > p_e[1] and p_g[0] < p_g[1] and (p_e + p_i + p_g <= 1).all())
    True
    """
    penalty = CREATOR_PENALTY_LOGIT * np.minimum(creator_negatives, CREATOR_PENALTY_CAP)
    p_explicit = _sigmoid(
        config.explicit_bias - 1.0 * affinity + negativity + HATED_LOGIT * hated + penalty
    )
    p_implicit = (1.0 - p_explicit) * _sigmoid(
        config.implicit_bias - 0.8 * affinity + negativity + 0.5 * penalty
    )
    p_negative = (p_explicit + p_implicit) * negative_multiplier
    # Rescale rather than clip so both negative groups keep their ratio under drift.
    scale = np.where(
        p_negative > MAX_NEGATIVE_PROBABILITY,
        MAX_NEGATIVE_PROBABILITY / np.maximum(p_negative, 1e-12),
        1.0,
    )
    p_explicit = p_explicit * negative_multiplier * scale
    p_implicit = p_implicit * negative_multiplier * scale
    engage = _sigmoid(config.engagement_bias + 1.2 * affinity - 0.5 * negativity)
    p_engagement = np.where(blocked, 0.0, (1.0 - p_explicit - p_implicit) * engage)
    return p_explicit, p_implicit, p_engagement
