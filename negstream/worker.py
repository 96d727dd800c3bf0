"""The worker: topics created, app built, agents registered, run until stopped."""

from __future__ import annotations

import gc
import logging
import sys
import time
from typing import Any, cast

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import REGISTRY

from streams import metrics, patches
from streams.admin import ensure_topics
from streams.app import build_app
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between moves of the surviving heap out of the cyclic collector's reach.
GC_FREEZE_EVERY_S = 30.0
#: Every this many freezes the whole heap is collected once (about hourly): cyclic garbage
#: that was frozen is freed then, at the cost of one full pause.
GC_FULL_EVERY = 120
#: Automatic full collections are left to :func:`freeze_heap`. With the heap frozen, the
#: collector's own rule (a full pass once survivors reach a quarter of the last full pass's
#: heap) fired every few seconds, each pass walking everything that survived since the last
#: freeze (measured: 8 pauses of about 70 ms in 35 s at 1k events/s).
GC_GEN2_THRESHOLD = 1_000_000_000
#: GIL switch interval: a thread that wakes with work (the fast lane, the Kafka consumer
#: thread) waits at most this long for a busy event loop to hand over (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.001


def create_app(settings: Settings) -> faust.App:
    """The app with every reader and timer registered and /metrics served."""
    import agents

    patches.install()
    app = build_app(settings)
    agents.register(app, settings)
    setup_prometheus_sensors(app, pattern="/metrics", registry=REGISTRY, name_prefix="negstream")
    for metric in cast(Any, app.monitor)._metrics:
        cache_labels(metric)

    ticks = iter(range(1, sys.maxsize))

    @app.timer(GC_FREEZE_EVERY_S, name="negstream.gc_freeze")  # type: ignore[untyped-decorator]
    async def gc_freeze() -> None:
        freeze_heap(full=next(ticks) % GC_FULL_EVERY == 0)

    return app


def freeze_heap(full: bool) -> None:
    """Collect young garbage, then exempt every surviving object from later full passes.

    The worker's heap is mostly user states: JSON-like dicts without reference cycles,
    freed by reference counting as soon as a newer state replaces them. A full pass of the
    cyclic collector walks every one of them (measured: 200-300 ms pauses at 10k users, on
    the event loop). Frozen objects are still freed by reference counting; only cyclic
    garbage that outlived the young generations is kept, until the next ``full`` call
    thaws the heap and collects all of it. Automatic full passes are turned off: these calls
    are the only ones.
    """
    if full:
        gc.unfreeze()
    gc.collect(2 if full else 1)
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, GC_GEN2_THRESHOLD)


def _time_collections() -> None:
    started: list[float] = []

    def on_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            metrics.GC_PAUSE.labels(str(info["generation"])).observe(
                time.perf_counter() - started[0]
            )

    gc.callbacks.append(on_collection)


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
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    _time_collections()
    freeze_heap(full=True)
    worker.execute_from_commandline()
