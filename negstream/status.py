"""A worker's status from two scrapes of its /metrics: rates, lag, latency, model version."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from streams.settings import Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a /metrics page, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets, interpolated
    inside the bucket like Prometheus' ``histogram_quantile``; nan without observations.

    Examples
    --------
    >>> histogram_quantile(0.5, [(0.01, 0), (0.02, 10), (math.inf, 10)])
    0.015
    >>> histogram_quantile(0.99, [(0.01, 0), (0.02, 10), (math.inf, 20)])
    0.02
    """
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank and count > below:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


@dataclass(frozen=True)
class Status:
    """The figures of one status line, from two scrapes of the worker's /metrics."""

    events_per_s: float
    examples_per_s: float
    input_lag: float
    training_lag: float
    fast_p50_s: float
    fast_p99_s: float
    model_version: float

    @classmethod
    def between(cls, before: Samples, after: Samples, seconds: float, settings: Settings) -> Status:
        """Rates over the ``seconds`` between two scrapes, gauges as of the second."""

        def rate(name: str) -> float:
            return max(0.0, total(after, name) - total(before, name)) / max(seconds, 1e-9)

        def lag(*topics: str) -> float:
            return sum(
                total(after, "negstream_topic_partition_end_offset", topic=topic)
                - total(after, "negstream_topic_partition_offset_commited", topic=topic)
                for topic in topics
            )

        bucket = "negstream_feedback_to_score_seconds_bucket"
        bounds = {
            dict(labels)["le"]
            for name, labels in after
            if name == bucket and ("path", "fast") in labels
        }
        delta = [
            (
                float(le),
                total(after, bucket, path="fast", le=le)
                - total(before, bucket, path="fast", le=le),
            )
            for le in bounds
        ]
        return cls(
            events_per_s=rate("negstream_events_total"),
            examples_per_s=rate("negstream_examples_total"),
            input_lag=lag(settings.topic("impressions"), settings.topic("feedback")),
            training_lag=lag(settings.topic("examples")),
            fast_p50_s=histogram_quantile(0.5, delta),
            fast_p99_s=histogram_quantile(0.99, delta),
            model_version=total(after, "negstream_model_version"),
        )

    def describe(self) -> str:
        """The line's text (without the elapsed time).

        Examples
        --------
        >>> Status(301.4, 151.0, 37, 240, 0.0213, 0.0581, 164).describe()
        'in 301 events/s | examples 151/s | lag 37 (training 240) | fast path p50 21 ms, p99 58 ms | model v164'
        """  # noqa: E501
        if math.isnan(self.fast_p50_s):
            fast = "fast path -"
        else:
            p50, p99 = self.fast_p50_s * 1000, self.fast_p99_s * 1000
            fast = f"fast path p50 {p50:.0f} ms, p99 {p99:.0f} ms"
        return (
            f"in {self.events_per_s:.0f} events/s | examples {self.examples_per_s:.0f}/s | "
            f"lag {self.input_lag:.0f} (training {self.training_lag:.0f}) | {fast} | "
            f"model v{self.model_version:.0f}"
        )
