"""The knobs of the heavy-tailed world: activity skew, sessions, power users, topic lag."""

from __future__ import annotations

import math
from dataclasses import dataclass

DAY_S = 86_400.0


@dataclass(frozen=True)
class HeavyShape:
    """How the heavy-tailed world spreads a run's requests over users and event time.

    A run of ``n`` impressions is cut into requests; each power user gets ``power_days``
    binge days of ``power_day_impressions`` impressions (as many binges as fit in
    ``power_share`` of the run, the busiest users first). Of the rest, ``casual_share``
    are one-request visits that go round all users, and the others form sessions of
    Zipf-drawn users; both start at random days of the span and hours of the daily cycle.
    The span stays the same whatever ``n`` is, so a larger run is a denser world, not a
    longer one; a run needs ``n_users / casual_share / (1 - power_share)`` requests or more
    for every user to show up.

    Attributes
    ----------
    span_days : float
        Event-time span of the run, in days.
    user_exponent, user_offset : float
        Session share of the user of activity rank ``r``: ``(r + user_offset) ** -user_exponent``.
    item_exponent, item_offset : float
        Draw weight of the item of popularity rank ``r``, the same law; the head items are
        shown to most users.
    casual_share : float
        Share of the requests outside binges made by casual one-request visits.
    session_median_requests, session_sigma : float
        Requests per session: lognormal with this median and log-scale sigma, at least one.
    request_gap_s : float
        Mean of the exponential gap between two requests of one session.
    power_users : int
        The most active users that also binge.
    power_days : int
        Binge days of each power user.
    power_day_impressions : int
        Impressions of one binge, all inside ``binge_hours`` of one day.
    binge_hours : float
        Hours of a day over which a binge's sessions start.
    power_share : float
        Largest share of a run's requests that binges take; binges beyond it are dropped
        (the last ones first), and a run too small for one binge gets one smaller binge.
    power_negativity : float
        Negative propensity (a logit offset) of every power user, in place of the drawn one
        (normal around 0): the people who scroll all day are the ones who reject the most.
    peak_hour, diurnal_amplitude : float
        Session starts follow ``1 + diurnal_amplitude * cos(2 pi (hour - peak_hour) / 24)``.
    topic_lag_max_s : float
        Each input topic reaches the broker this many seconds after event time at most; the
        two topics' lags wander independently, so feedback is read up to this much before
        or after its impression. Keep it under the worker's grace period.
    topic_lag_step_s : float
        Event time between the independent knots of each topic's lag, linear in between.
    """

    span_days: float = 90.0
    user_exponent: float = 1.0
    user_offset: float = 10.0
    item_exponent: float = 1.1
    item_offset: float = 1.0
    casual_share: float = 0.3
    session_median_requests: float = 3.0
    session_sigma: float = 1.2
    request_gap_s: float = 3.0
    power_users: int = 3
    power_days: int = 2
    power_day_impressions: int = 6_000
    binge_hours: float = 18.0
    power_share: float = 0.5
    power_negativity: float = 0.5
    peak_hour: float = 20.0
    diurnal_amplitude: float = 0.6
    topic_lag_max_s: float = 150.0
    topic_lag_step_s: float = 900.0

    def __post_init__(self) -> None:
        positive = (
            "span_days",
            "user_exponent",
            "user_offset",
            "item_offset",
            "session_median_requests",
            "request_gap_s",
            "binge_hours",
            "topic_lag_step_s",
        )
        for name in positive:
            value = getattr(self, name)
            if not (value > 0.0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number")
        if self.item_exponent < 0.0 or self.session_sigma < 0.0 or self.topic_lag_max_s < 0.0:
            raise ValueError(
                "item_exponent, session_sigma and topic_lag_max_s must not be negative"
            )
        if self.session_median_requests < 1.0:
            raise ValueError("session_median_requests must be at least 1")
        if min(self.power_users, self.power_days) < 0 or self.power_day_impressions < 1:
            raise ValueError("power users and days must not be negative, binges not empty")
        if self.binge_hours > 24.0:
            raise ValueError("binge_hours must fit in one day")
        for name in ("power_share", "casual_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if not 0.0 <= self.diurnal_amplitude <= 1.0:
            raise ValueError("diurnal_amplitude must lie in [0, 1]")
        if self.power_days > self.span_days:
            raise ValueError("power_days exceeds span_days")
