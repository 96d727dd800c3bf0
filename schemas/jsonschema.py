"""JSON Schema (draft 2020-12) of the input events, for producers in any language.

Built from :mod:`schemas.contract`, the declaration the worker validates with.
"""

from __future__ import annotations

from typing import Any

from schemas.contract import FEEDBACK, IMPRESSION


def impression_schema() -> dict[str, Any]:
    """Schema of an ``impressions`` message value."""
    return IMPRESSION.json_schema()


def feedback_schema() -> dict[str, Any]:
    """Schema of a ``negative-feedback`` message value."""
    return FEEDBACK.json_schema()


#: Schema builders by the topic they describe.
SCHEMAS = {"impressions": impression_schema, "negative-feedback": feedback_schema}
