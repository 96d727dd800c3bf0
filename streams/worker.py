"""The worker: topics created, app built, agents registered, run until stopped."""

from __future__ import annotations

import logging
from typing import Any, cast

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import REGISTRY

from streams.admin import ensure_topics
from streams.app import build_app
from streams.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> faust.App:
    """The app with every agent registered and /metrics served."""
    import agents

    app = build_app(settings)
    agents.register(app, settings)
    setup_prometheus_sensors(app, pattern="/metrics", registry=REGISTRY, name_prefix="negstream")
    for metric in cast(Any, app.monitor)._metrics:
        cache_labels(metric)
    return app


def cache_labels(metric: Any) -> None:
    """Memoise ``metric.labels``: Faust's sensor looks up labelled children for every
    message in and out, and prometheus_client validates and locks on each lookup."""
    if not getattr(metric, "_labelnames", ()):
        return
    lookup = metric.labels
    children: dict[tuple[Any, ...], Any] = {}

    def labels(*values: Any, **named: Any) -> Any:
        key = (values, tuple(named.items()))
        child = children.get(key)
        if child is None:
            child = children[key] = lookup(*values, **named)
        return child

    metric.labels = labels


def run_worker(settings: Settings) -> None:
    """Create the topics, then run one worker in the foreground until SIGINT/SIGTERM."""
    ensure_topics(settings)
    app = create_app(settings)
    print(
        f"negstream worker: broker {settings.broker_url}, "
        f"metrics http://{settings.metrics_host}:{settings.metrics_port}/metrics",
        flush=True,
    )
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    # Faust's terminal spinner lowers the root logger to DEBUG so that every log call can
    # spin it: each debug line of Faust and aiokafka would then build a record on the hot
    # path. The worker's output is a log, not a terminal animation.
    worker.spinner = None
    worker.execute_from_commandline()
