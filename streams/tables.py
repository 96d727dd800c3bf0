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
    # Keys use Faust's json codec (orjson when installed). Values are bytes (Faust's raw
    # codec): the JSON of each state's wire form, encoded and decoded by
    # ``streams.users.UsersStore``. A recovered value stays bytes until its user is read, so
    # a restart does not parse every record of the changelog (a user's state is there once
    # for each batch that touched the user).
    return app.Table(
        f"{settings.topic_prefix}users",
        default=None,
        partitions=settings.partitions,
        value_type=bytes,
        help="per-user negative-feedback state",
    )
