"""The worker: topics created, app built, agents registered, run until stopped."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
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
#: GIL switch interval: how long a thread that wakes with work (the fast lane, the Kafka
#: consumer thread, rescoring, training) may wait for the thread that holds the interpreter
#: to hand it over. Python's default, set here so that it is a choice: against 1 ms, a
#: worker read a backlog about 18 % faster, held its event loop less (worst hold at backfill
#: 30-38 ms against 47-54 ms) and kept the fast path's p99 at 1k events/s (31-41 ms against
#: 36-55 ms); only near its capacity (10k events/s offered) was that p99 higher (118-195 ms
#: against 109-110 ms). The README's "Worker tuning" has the runs.
SWITCH_INTERVAL_S = 0.005
#: Longest a stop may take after the first SIGTERM/SIGINT before the process exits anyway
#: (a healthy worker stops in about 2 s; deployments allow 10 s).
STOP_GRACE_S = 7.0
#: Log lines before Faust sets up its logging: the same shape as Faust's.
LOG_FORMAT = "[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s"
LOG_LEVELS = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING,
              "info": logging.INFO, "debug": logging.DEBUG}  # fmt: skip


def create_app(settings: Settings) -> faust.App:
    """The app with every reader and timer registered and /metrics served."""
    import agents

    patches.install()
    app = build_app(settings)
    agents.register(app, settings)
    setup_prometheus_sensors(app, pattern="/metrics", registry=REGISTRY, name_prefix="negstream")
    for metric in cast(Any, app.monitor)._metrics:
        cache_labels(metric)
    track_changed_end_offsets(app.monitor)

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


def track_changed_end_offsets(monitor: Any) -> None:
    """Pass a partition's end offset on to ``monitor`` only when it changed.

    Faust's consumer reports the end offset of a record's partition for every record it
    reads, the same offset for a whole fetch, and the Prometheus sensor sets a labelled
    gauge each time (measured: 0.8 us a record, about 1 % of a worker's time).
    """
    track = monitor.track_tp_end_offset

    def track_tp_end_offset(tp: Any, offset: int) -> None:
        if monitor.tp_end_offsets.get(tp) != offset:
            track(tp, offset)

    monitor.track_tp_end_offset = track_tp_end_offset


class StopRequested(BaseException):
    """SIGTERM or SIGINT arrived before the Faust worker took over the signals.

    A ``BaseException``, like ``KeyboardInterrupt``: client code that catches ``Exception``
    while it retries must not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into :class:`StopRequested` inside the block."""

    def stop(signum: int, frame: Any) -> None:
        raise StopRequested(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ShutdownWatchdog:
    """Ends the process when a requested stop outlasts ``grace_s``.

    With the broker gone, Faust's stop can wait for ever: the output flush waits on
    deliveries that never come, and aiokafka's ``Fetcher.close`` re-raises the
    ``CancelledError`` of a fetch that was sleeping between retries, so the consumer
    thread never reports itself stopped. A hard exit loses nothing: offsets are committed
    only after delivery, so input that was not acknowledged is read again at restart.
    """

    def __init__(self, root: Any, grace_s: float) -> None:
        self.root = root
        self.grace_s = grace_s
        self._timer: threading.Timer | None = None

    def arm(self, signum: int) -> None:
        """Start the countdown (once; later signals do not extend it)."""
        if self._timer is None:
            self._timer = threading.Timer(self.grace_s, self._expire, args=(signum,))
            self._timer.daemon = True
            self._timer.name = "negstream-shutdown-watchdog"
            self._timer.start()

    def _expire(self, signum: int) -> None:
        try:
            log.error(
                "negstream worker: still stopping %gs after %s; exiting now (%s). "
                "Input not yet acknowledged is read again at restart",
                self.grace_s, signal.Signals(signum).name, self.abandoned(),
            )  # fmt: skip
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:  # whatever the report met (a service tree changing under it), exit
            os._exit(128 + signum)

    def abandoned(self) -> str:
        """What the stop is waiting on: the innermost services still stopping, how many
        were not reached yet, and the threads that would hold the interpreter open."""
        stuck: list[str] = []
        waiting = 0
        pending = [self.root]
        seen: set[int] = set()
        while pending:
            service = pending.pop()
            if id(service) in seen:
                continue
            seen.add(id(service))
            children = list(getattr(service, "_children", ()))
            pending.extend(children)
            state = getattr(service, "state", "shutdown")
            if state == "running":
                waiting += 1
            elif state == "stopping" and not any(c.state == "stopping" for c in children):
                stuck.append(service.shortlabel)
        threads = [
            t.name
            for t in threading.enumerate()
            if not t.daemon and t is not threading.main_thread()
        ]
        return "; ".join([
            f"stuck stopping: {', '.join(stuck) or 'nothing'}",
            f"{waiting} more services not stopped yet",
            f"threads: {', '.join(threads) or 'none'}",
        ])  # fmt: skip


class BoundedStopWorker(faust.Worker):
    """Faust's worker, with a :class:`ShutdownWatchdog` armed by the first SIGTERM/SIGINT."""

    def __init__(self, *services: Any, stop_grace_s: float, **options: Any) -> None:
        super().__init__(*services, **options)
        self.watchdog = ShutdownWatchdog(self, stop_grace_s)

    def _on_sigterm(self) -> None:
        self.watchdog.arm(signal.SIGTERM)
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self.watchdog.arm(signal.SIGINT)
        super()._on_sigint()


def run_worker(settings: Settings) -> int:
    """Create the topics, then run one worker in the foreground until SIGINT/SIGTERM.

    An unreachable broker is waited for (one warning per attempt, see
    :func:`streams.admin.admin_client`); a stop during that wait returns 0. Once the worker
    runs it exits the process itself, within ``STOP_GRACE_S`` of the first signal.
    """
    # Faust replaces this with its own logging when the worker starts.
    level = LOG_LEVELS.get(settings.log_level.lower(), logging.INFO)
    logging.basicConfig(level=level, format=LOG_FORMAT)
    try:
        with stop_on_signals():
            ensure_topics(settings, timeout=None)
            app = create_app(settings)
    except StopRequested as stop:
        log.warning("negstream worker: stopped by %s before it started", stop)
        return 0
    print(
        f"negstream worker: broker {settings.broker_url}, "
        f"metrics http://{settings.metrics_host}:{settings.metrics_port}/metrics",
        flush=True,
    )
    worker = BoundedStopWorker(
        app,
        stop_grace_s=STOP_GRACE_S,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
    )
    # Faust's terminal spinner lowers the root logger to DEBUG so that every log call can
    # spin it: each debug line of Faust and aiokafka would then build a record on the hot
    # path. The worker's output is a log, not a terminal animation.
    worker.spinner = None
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    _time_collections()
    freeze_heap(full=True)
    worker.execute_from_commandline()
