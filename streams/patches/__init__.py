"""Every workaround for Faust, aiokafka and Tansu behaviour, installed by one explicit call.

Nothing here is applied at import time: :func:`install` is called by the worker (and by
tests that run Faust in-process) before the app starts. Each module names the upstream
behaviour it works around and how to tell when it can go.
"""

from __future__ import annotations

from streams.patches import (
    bulk_fetch,
    changelog_apply,
    consumer,
    fetch_wait,
    fetcher_close,
    table_start,
)

__all__ = ["install"]


def install() -> None:
    """Install every patch (idempotent)."""
    consumer.install()
    # Table recovery applies a fetch's changelog records at once (wraps ``consumer``'s).
    changelog_apply.install()
    # A short wait stalls a consumer that is behind on Tansu; see ``fetch_wait``.
    fetch_wait.install()
    # The hot topics' records go to batch buffers, not through Faust's per-record path.
    bulk_fetch.install()
    # A consumer whose broker vanished could not be stopped.
    fetcher_close.install()
    # Faust's table manager waited 1 s before the group join of every start.
    table_start.install()
