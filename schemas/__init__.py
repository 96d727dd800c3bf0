"""negstream's event records, codecs, validation and JSON Schema export."""

from schemas.codec import (
    decode_dead_letter,
    decode_drift_report,
    decode_example,
    decode_score_update,
    encode,
    make_dead_letter,
)
from schemas.events import (
    FEATURE_NAMES,
    DeadLetter,
    DriftAlert,
    DriftReport,
    Example,
    Feedback,
    Impression,
    ItemScore,
    ScoreUpdate,
    Suppression,
)
from schemas.validation import (
    REASONS,
    ValidationError,
    decode_feedback,
    decode_impression,
    parse_object,
)

__all__ = [
    "FEATURE_NAMES",
    "REASONS",
    "DeadLetter",
    "DriftAlert",
    "DriftReport",
    "Example",
    "Feedback",
    "Impression",
    "ItemScore",
    "ScoreUpdate",
    "Suppression",
    "ValidationError",
    "decode_dead_letter",
    "decode_drift_report",
    "decode_example",
    "decode_feedback",
    "decode_impression",
    "decode_score_update",
    "encode",
    "make_dead_letter",
    "parse_object",
]
