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
    "Time to compute one input micro-batch (its records are delivered after, in order).",
    buckets=BATCH_BUCKETS,
)
UNDELIVERED_BATCHES = Gauge(
    "negstream_undelivered_batches",
    "Computed input micro-batches whose records wait for the broker's acknowledgement.",
)
BATCH_EVENTS = Histogram(
    "negstream_ingest_batch_events",
    "Events in one input micro-batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
INPUT_OFFSET_GAPS = Counter(
    "negstream_input_offset_gaps_total",
    "Input offsets skipped between two messages this worker read from one partition "
    "(records it was never handed; transaction markers of upstream producers count too).",
    ["topic"],
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
REFRESHES_WITHOUT_CANDIDATES = Counter(
    "negstream_refreshes_without_candidates_total",
    "Users queued for a model refresh that still had no candidates after the label window.",
)
FEEDBACK_TO_SCORE = Histogram(
    "negstream_feedback_to_score_seconds",
    "Wall time from feedback produced (broker timestamp) to its ScoreUpdate sent, by path.",
    ["path"],
    buckets=LATENCY_BUCKETS,
)
GC_PAUSE = Histogram(
    "negstream_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector, by generation.",
    ["generation"],
    buckets=LATENCY_BUCKETS,
)
FAST_LANE_PARTITIONS = Gauge(
    "negstream_fast_lane_partitions",
    "Feedback partitions the fast lane follows (0 while it is not running).",
)
FAST_LANE_FAILURES = Counter(
    "negstream_fast_lane_failures_total",
    "Fast-lane ScoreUpdates the broker did not take (the input pipeline publishes them later).",
)
PENDING_IMPRESSIONS = Gauge(
    "negstream_pending_impressions", "Impressions waiting for their label window to close."
)
TRAIN_BATCH_SECONDS = Histogram(
    "negstream_train_batch_seconds",
    "Time to evaluate and learn one training micro-batch (off the event loop).",
    buckets=BATCH_BUCKETS,
)
TRAIN_EXAMPLES = Counter("negstream_train_examples_total", "Examples the model learned from.")
TRAIN_EXAMPLES_PER_SECOND = Gauge(
    "negstream_train_examples_per_second", "Training throughput of the last micro-batch."
)
MODEL_VERSION = Gauge("negstream_model_version", "Version of the online model (batches learned).")
CHECKPOINT_TIMESTAMP = Gauge(
    "negstream_checkpoint_timestamp_seconds", "Unix time of the last model checkpoint written."
)
CHECKPOINT_SECONDS = Histogram(
    "negstream_checkpoint_seconds", "Time to write one checkpoint.", buckets=LATENCY_BUCKETS
)
SCORE_REFRESH_SECONDS = Histogram(
    "negstream_score_refresh_seconds",
    "Time to rescore one coalesced set of users' candidates.",
    buckets=BATCH_BUCKETS,
)
LAST_SCORE_TIMESTAMP = Gauge(
    "negstream_last_score_timestamp_seconds", "Unix time a ScoreUpdate was last published."
)
PREQUENTIAL = Gauge(
    "negstream_prequential",
    "Test-then-train model quality by head and metric (auc, log_loss, ece).",
    ["head", "metric"],
)
DRIFT_PSI = Gauge(
    "negstream_drift_psi",
    "Population stability index against the reference, by distribution.",
    ["distribution"],
)
DRIFT_NEGATIVE_RATE = Gauge(
    "negstream_drift_negative_rate",
    "Negative rate per kind in the current report period and the reference.",
    ["kind", "period"],
)
DRIFT_ALERTS = Gauge(
    "negstream_drift_alert",
    "1 when a drift threshold fired in the last report.",
    ["metric", "level"],
)
DRIFT_REPORTS = Counter("negstream_drift_reports_total", "Drift reports published.")
LABEL_DELAY = Histogram(
    "negstream_label_delay_seconds",
    "Feedback time minus impression time of labelled examples.",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120, 300),
)
