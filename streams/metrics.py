"""Every Prometheus metric negstream exports, created in one place."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

EVENTS = Counter(
    "negstream_events_total",
    "Input messages by type (impression, feedback) and outcome "
    "(accepted, duplicate, late, repartitioned, dead_letter).",
    ["type", "outcome"],
)
DEAD_LETTERS = Counter(
    "negstream_dead_letters_total", "Messages sent to dead-letters, by reason.", ["reason"]
)
BATCH_SECONDS = Histogram(
    "negstream_ingest_batch_seconds",
    "Time to process one input micro-batch.",
    buckets=BATCH_BUCKETS,
)
BATCH_EVENTS = Histogram(
    "negstream_ingest_batch_events",
    "Events in one input micro-batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
EXAMPLES = Counter(
    "negstream_examples_total", "Training examples published, by label group.", ["label_group"]
)
EXCLUDED_EXAMPLES = Counter(
    "negstream_examples_excluded_total", "Examples withheld from training, by reason.", ["reason"]
)
UNMATCHED_FEEDBACK = Counter(
    "negstream_unmatched_feedback_total", "Feedback whose impression never arrived in time."
)
FLAGGED_USERS = Counter(
    "negstream_flagged_users_total", "Users flagged by the abuse guard (negative-rate cap)."
)
SCORE_UPDATES = Counter(
    "negstream_score_updates_total", "ScoreUpdates published, by source.", ["source"]
)
FEEDBACK_TO_SCORE = Histogram(
    "negstream_feedback_to_score_seconds",
    "Wall time from feedback produced (broker timestamp) to its ScoreUpdate sent, by path.",
    ["path"],
    buckets=LATENCY_BUCKETS,
)
PENDING_IMPRESSIONS = Gauge(
    "negstream_pending_impressions", "Impressions waiting for their label window to close."
)
