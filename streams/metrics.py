"""Every Prometheus metric negstream exports, created in one place."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from schemas.kinds import ALL_KINDS, NO_REACTION, kind_group
from schemas.validation import REASONS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

EVENTS = Counter(
    "negstream_events_total",
    "Input messages by type (impression, feedback) and outcome "
    "(accepted, duplicate, late, repartitioned, dead_letter).",
    ["type", "outcome"],
)
#: The ``type`` and ``outcome`` labels of :data:`EVENTS` (and ``topic`` of input gaps).
INPUT_TYPES = ("impression", "feedback")
EVENT_OUTCOMES = ("accepted", "duplicate", "late", "repartitioned", "dead_letter")
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
    "Input offsets the consumer skipped, after the last one handed to the input pipeline "
    "or the committed one (each such partition is read again from the first one skipped; "
    "transaction markers of upstream producers count too).",
    ["topic"],
)
EXAMPLES = Counter(
    "negstream_examples_total", "Training examples published, by label group.", ["label_group"]
)
LABEL_GROUPS = (*sorted({kind_group(kind) for kind in ALL_KINDS}), NO_REACTION)
EXCLUDED_EXAMPLES = Counter(
    "negstream_examples_excluded_total", "Examples withheld from training, by reason.", ["reason"]
)
EXCLUSION_REASONS = ("abuse_guard",)
UNMATCHED_FEEDBACK = Counter(
    "negstream_unmatched_feedback_total", "Feedback whose impression never arrived in time."
)
FLAGGED_USERS = Counter(
    "negstream_flagged_users_total", "Users flagged by the abuse guard (negative-rate cap)."
)
SCORE_UPDATES = Counter(
    "negstream_score_updates_total", "ScoreUpdates published, by source.", ["source"]
)
SCORE_SOURCES = ("fast_path", "model")
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
SCORE_PATHS = ("fast", "model")
GC_PAUSE = Histogram(
    "negstream_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector, by generation.",
    ["generation"],
    buckets=LATENCY_BUCKETS,
)
GC_GENERATIONS = ("0", "1", "2")
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

# --- the output producer (streams/output.py): every record negstream writes but the fast
# lane's, which has a producer of its own (negstream_fast_lane_failures_total).
OUTPUT_RECORDS = Counter(
    "negstream_output_records_total",
    "Output records the broker acknowledged, by topic (a record sent again after an error "
    "counts again).",
    ["topic"],
)
OUTPUT_BYTES = Counter(
    "negstream_output_bytes_total",
    "Key and value bytes of the output records the broker acknowledged, by topic.",
    ["topic"],
)
OUTPUT_ERRORS = Counter(
    "negstream_output_errors_total",
    "Output records not acknowledged because a send failed, by topic and reason; they are "
    "sent again until the broker takes them.",
    ["topic", "reason"],
)
#: The ``reason`` label of :data:`OUTPUT_ERRORS` (see ``streams.output.error_reason``).
OUTPUT_ERROR_REASONS = (
    "timeout",
    "unreachable",
    "no_leader",
    "not_enough_replicas",
    "too_large",
    "unauthorized",
    "other",
)
OUTPUT_SEND_SECONDS = Histogram(
    "negstream_output_send_seconds",
    "Time from handing one delivery's records to the producer until the broker acknowledged "
    "all of them, by topic.",
    ["topic"],
    buckets=LATENCY_BUCKETS,
)


def start_output_topic(topic: str) -> None:
    """Create ``topic``'s output series at 0, errors of every reason included."""
    OUTPUT_RECORDS.labels(topic)
    OUTPUT_BYTES.labels(topic)
    OUTPUT_SEND_SECONDS.labels(topic)
    for reason in OUTPUT_ERROR_REASONS:
        OUTPUT_ERRORS.labels(topic, reason)


STATE_CAPPED = Counter(
    "negstream_state_capped_total",
    "Entries a per-user cap left out or dropped, by collection (README: Per-user state).",
    ["collection"],
)
CAPPED_COLLECTIONS = ("pending", "reactions", "suppressions", "dedupe_ids", "window_names")
for _collection in CAPPED_COLLECTIONS:
    STATE_CAPPED.labels(_collection)
OUTPUT_RESENDS = Counter(
    "negstream_output_resends_total",
    "Deliveries sent again, unchanged, after the broker did not acknowledge them, by producer.",
    ["producer"],
)
for _producer in ("outputs", "changelog"):
    OUTPUT_RESENDS.labels(_producer)
EVENT_LOOP_LAG_MAX = Gauge(
    "negstream_event_loop_lag_max_seconds", "The longest the event loop was held since start."
)
PARTITION_ASSIGNMENTS = Counter(
    "negstream_partition_assignments_total",
    "Partition assignments this worker received (the first one, then one a rebalance).",
)
EVENT_LOOP_LAG = Histogram(
    "negstream_event_loop_lag_seconds",
    "How late the event loop ran a callback due now: the longest any task held it.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# --- the shared model: ``negstream trainer`` publishes updates to model-updates, workers with
# NEGSTREAM_MODEL_SOURCE=remote apply them (agents/trainer_updates.py, agents/model_follower.py).
MODEL_UPDATE_KINDS = ("snapshot", "delta")
MODEL_UPDATES_PUBLISHED = Counter(
    "negstream_model_updates_published_total",
    "Model updates the trainer published (every chunk acknowledged), by kind.",
    ["kind"],
)
MODEL_UPDATE_BYTES = Counter(
    "negstream_model_update_bytes_total",
    "Bytes of the chunks of the model updates the trainer published, by kind.",
    ["kind"],
)
MODEL_UPDATE_PUBLISH_SECONDS = Histogram(
    "negstream_model_update_publish_seconds",
    "Time from handing a model update's chunks to the producer until the broker acknowledged "
    "the last one, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
TRAIN_DUPLICATES = Counter(
    "negstream_train_duplicates_total",
    "Training examples skipped because an example of the same id was read already (a copy "
    "published again).",
)
TRAINER_LAG = Gauge(
    "negstream_trainer_lag_records",
    "Records of training-examples the trainer has not read yet, over all its partitions.",
)
MODEL_UPDATES_APPLIED = Counter(
    "negstream_model_updates_applied_total",
    "Model updates this worker's scoring replica applied, by kind.",
    ["kind"],
)
MODEL_SNAPSHOTS_SKIPPED = Counter(
    "negstream_model_snapshots_skipped_total",
    "Snapshots this worker's replica skipped unread: it held their version already, from "
    "the deltas before them.",
)
MODEL_UPDATES_REFUSED = Counter(
    "negstream_model_updates_refused_total",
    "Model updates (or chunks) this worker's replica did not apply, by reason: gap (a delta "
    "whose predecessor it lacks), stale (older than the model held), invalid (another model "
    "config, arrays that do not fit), chunk (a malformed or out-of-place chunk), incomplete "
    "(an update cut off by the start of the next one).",
    ["reason"],
)
MODEL_REFUSAL_REASONS = ("gap", "stale", "invalid", "chunk", "incomplete")
MODEL_APPLY_SECONDS = Histogram(
    "negstream_model_apply_seconds",
    "Time to put one model update together from its chunks and apply it to the scoring "
    "replica (off the event loop), by kind.",
    ["kind"],
    buckets=(*BATCH_BUCKETS, 5.0, 10.0),
)
UNLEARNED_DROPPED = Counter(
    "negstream_unlearned_examples_dropped_total",
    "Examples a remote-model worker stopped waiting for the model to learn (past the cap a "
    "partition): their users are not rescored for them.",
)
MODEL_AGE = Gauge(
    "negstream_model_age_seconds",
    "Seconds since the scoring model's newest applied update was taken off the trainer's "
    "model (remote model source; counted from the process start until the first one; 0 on "
    "a worker that trains its own model).",
)
MODEL_MAX_AGE = Gauge(
    "negstream_model_max_age_seconds",
    "NEGSTREAM_MODEL_MAX_AGE_S: the model age above which NegstreamModelStale fires.",
)
MODEL_REMOTE = Gauge(
    "negstream_model_remote",
    "1 when this worker scores with the trainer's shared model (NEGSTREAM_MODEL_SOURCE=remote), "
    "0 when it trains its own.",
)


def _start_at_zero() -> None:
    # A labelled series exists only once its labels are used: without this, a panel of
    # dead letters by reason says "No data" instead of 0 until the first one, and a rate
    # over it cannot tell "none yet" from "not scraped".
    for kind in INPUT_TYPES:
        INPUT_OFFSET_GAPS.labels(kind)
        for outcome in EVENT_OUTCOMES:
            EVENTS.labels(kind, outcome)
    for reason in REASONS:
        DEAD_LETTERS.labels(reason)
    for group in LABEL_GROUPS:
        EXAMPLES.labels(group)
    for reason in EXCLUSION_REASONS:
        EXCLUDED_EXAMPLES.labels(reason)
    for source in SCORE_SOURCES:
        SCORE_UPDATES.labels(source)
    for path in SCORE_PATHS:
        FEEDBACK_TO_SCORE.labels(path)
    for generation in GC_GENERATIONS:
        GC_PAUSE.labels(generation)
    for kind in MODEL_UPDATE_KINDS:
        MODEL_UPDATES_PUBLISHED.labels(kind)
        MODEL_UPDATE_BYTES.labels(kind)
        MODEL_UPDATES_APPLIED.labels(kind)
    for reason in MODEL_REFUSAL_REASONS:
        MODEL_UPDATES_REFUSED.labels(reason)


_start_at_zero()
