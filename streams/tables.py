"""Table declarations: the per-user state table and its changelog."""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TableT

from streams.settings import Settings


def declare_users_table(app: faust.App, settings: Settings) -> TableT[str, Any]:
    """Per-user state (windowed counters, dedupe ids, pending labels), keyed by user_id.

    Windows live inside each value as event-time buckets that expire with the user's clock
    (see :mod:`agents.state.windows`), so one batch writes one changelog record per user.
    """
    # Keys and values use Faust's json codec, which is orjson when installed.
    return app.Table(
        f"{settings.topic_prefix}users",
        default=None,
        partitions=settings.partitions,
        help="per-user negative-feedback state",
    )
