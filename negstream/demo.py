"""``negstream demo``: embedded broker, a worker and a simulated stream, its output printed."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Hashable, Iterable
from typing import Any

import orjson
from kafka import KafkaConsumer

from negstream.producer import make_producer
from negstream.status import Samples, Status, parse_metrics
from streams.admin import ensure_topics
from streams.broker import (
    BrokerError,
    EmbeddedBroker,
    die_with_parent,
    free_port,
    wait_for_port,
)
from streams.settings import Settings

#: Demo settings: short label windows and report periods so output shows up in seconds.
DEMO_ENV = {
    "NEGSTREAM_LABEL_WINDOW_S": "10",
    "NEGSTREAM_IDLE_FLUSH_S": "1",
    "NEGSTREAM_DRIFT_INTERVAL_S": "10",
    "NEGSTREAM_TRAIN_BATCH_SIZE": "256",
    # 2^15 embedding rows instead of 2^18: the simulated world's 1,000 users and 5,000 items
    # fit (README, The model path) and a checkpoint is about 20 MB instead of 153 MB.
    "NEGSTREAM_MODEL_BUCKETS": str(2**15),
    "NEGSTREAM_LOG_LEVEL": "warn",
}

#: Kinds of printed lines, each limited to ``--lines`` between two status lines.
KINDS = ("suppression", "scores", "dead-letter", "drift")
#: Plural names of the kinds, for the "not shown" count of the status line.
PLURALS = {
    "suppression": "suppressions",
    "scores": "score updates",
    "dead-letter": "dead letters",
    "drift": "drift reports",
}
#: Suppressions remembered to print each once: the fast lane and the input pipeline both
#: publish a strong negative's update, and every later update of the user repeats it.
SEEN_SUPPRESSIONS = 100_000


def run_demo(args: argparse.Namespace) -> int:
    """Run until Ctrl-C (or ``--duration`` seconds); leave nothing running, and nothing on
    disk unless ``--keep``."""
    data_dir = tempfile.mkdtemp(prefix="negstream-demo-")
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    broker = EmbeddedBroker(log_path=os.path.join(data_dir, "broker.log"))
    worker: subprocess.Popen[bytes] | None = None
    producer: threading.Thread | None = None
    stop = threading.Event()
    try:
        broker.start()
        metrics_port = args.metrics_port or free_port()
        env = {
            **os.environ,
            **DEMO_ENV,
            "NEGSTREAM_BROKER_URL": broker.url,
            "NEGSTREAM_DATA_DIR": data_dir,
            "NEGSTREAM_METRICS_PORT": str(metrics_port),
        }
        settings = Settings.from_env(env)
        ensure_topics(settings)
        worker_log = os.path.join(data_dir, "worker.log")
        with open(worker_log, "ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "negstream", "worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        kept = "kept at exit" if args.keep else "removed at exit; --keep keeps them"
        print("negstream demo")
        print(f"  broker   {broker.url} (embedded Tansu, memory storage)")
        print(f"  metrics  http://{settings.metrics_host}:{metrics_port}/metrics")
        print(f"  files    {data_dir} (worker.log, broker.log, checkpoints; {kept})")
        print(f"  stream   simulated users, {args.rate:.0f} events/s, ~1% malformed on purpose")
        print(f"  output   at most {args.lines} lines of each kind, then a status line, every "
              f"{args.status_every:g} s")  # fmt: skip
        print("  Ctrl-C stops worker and broker.\n", flush=True)
        _wait_ready(worker, settings.metrics_host, metrics_port, worker_log)
        producer = threading.Thread(
            target=_produce, args=(settings, args.rate, stop), name="simulator", daemon=True
        )
        producer.start()
        metrics_url = f"http://{settings.metrics_host}:{metrics_port}/metrics"
        view = DemoView(settings, metrics_url, args.lines, args.status_every)
        view.run(worker, stop, args.duration)
        return 0
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        stop.set()
        if producer is not None:
            producer.join(10)
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        broker.stop()
        signal.signal(signal.SIGTERM, previous_sigterm)
        if args.keep:
            print(f"demo stopped: worker and broker are down; files kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
            print(f"demo stopped: worker and broker are down; {data_dir} removed")
        sys.stdout.flush()


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM ends the demo like Ctrl-C: through the cleanup above.
    raise KeyboardInterrupt


def _wait_ready(worker: subprocess.Popen[bytes], host: str, port: int, log: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited with status {worker.returncode}; see {log}")
        try:
            wait_for_port(host, port, timeout=0.5)
            return
        except BrokerError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker did not come up in 90 s; see {log}") from None


def _produce(settings: Settings, rate: float, stop: threading.Event) -> None:
    from simulator.stream import Simulator, SimulatorConfig

    producer = make_producer(settings)
    topics = {"impressions": settings.topic("impressions")}
    topics["negative-feedback"] = settings.topic("feedback")
    config = SimulatorConfig(malformed_rate=0.01, duplicate_rate=0.02, keep_ground_truth=False)
    simulator = Simulator(config)
    started, sent = time.monotonic(), 0
    try:
        for event in simulator.events(10_000_000):
            if stop.is_set():
                return
            value = event.value if isinstance(event.value, bytes) else orjson.dumps(event.value)
            producer.send(topics[event.topic], key=event.key.encode(), value=value)
            sent += 1
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    finally:
        producer.close(timeout=5)


class LineBudget:
    """At most ``per_period`` lines of each kind between two status lines; counts the rest."""

    def __init__(self, per_period: int) -> None:
        self.per_period = per_period
        self.shown: Counter[str] = Counter()
        self.hidden: Counter[str] = Counter()

    def allow(self, kind: str) -> bool:
        """Whether a line of ``kind`` may be printed now (counted either way)."""
        if self.shown[kind] < self.per_period:
            self.shown[kind] += 1
            return True
        self.hidden[kind] += 1
        return False

    def close_period(self) -> str:
        """What was not shown in the period now ending (``""`` when nothing); starts anew."""
        text = ", ".join(
            f"{self.hidden[kind]} {PLURALS[kind]}" for kind in KINDS if self.hidden[kind]
        )
        self.shown.clear()
        self.hidden.clear()
        return text


class FirstSeen:
    """Remembers the last ``size`` keys it was shown."""

    def __init__(self, size: int = SEEN_SUPPRESSIONS) -> None:
        self.size = size
        self.keys: dict[Hashable, None] = {}

    def new(self, keys: Iterable[Hashable]) -> list[Hashable]:
        """The ``keys`` not seen before, in order; remembers them all.

        Examples
        --------
        >>> seen = FirstSeen()
        >>> seen.new(["a", "b"]), seen.new(["b", "c"]), seen.new(["a"])
        (['a', 'b'], ['c'], [])
        """
        fresh = [key for key in dict.fromkeys(keys) if key not in self.keys]
        self.keys.update(dict.fromkeys(fresh))
        while len(self.keys) > self.size:
            del self.keys[next(iter(self.keys))]
        return fresh


class DemoView:
    """Prints the worker's outputs, each kind rate-limited, and a status line periodically."""

    def __init__(
        self, settings: Settings, metrics_url: str, lines: int, status_every: float
    ) -> None:
        self.settings = settings
        self.metrics_url = metrics_url
        self.status_every = status_every
        self.budget = LineBudget(lines)
        self.suppressions = FirstSeen()
        self.kinds = {
            settings.topic("scores"): "scores",
            settings.topic("dead_letters"): "dead-letter",
            settings.topic("drift"): "drift",
        }

    def run(self, worker: subprocess.Popen[bytes], stop: threading.Event, duration: float) -> None:
        """Until ``stop``, ``duration`` seconds (0: for ever) or the worker's exit."""
        consumer = KafkaConsumer(
            *self.kinds,
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,
            auto_offset_reset="earliest",
        )
        started = time.monotonic()
        deadline = started + duration if duration else math.inf
        scraped = (started, self._scrape())
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                if worker.poll() is not None:
                    print(f"worker exited with status {worker.returncode}; see its log", flush=True)
                    return
                for records in consumer.poll(timeout_ms=200, max_records=1000).values():
                    for record in records:
                        self.show(self.kinds[record.topic], orjson.loads(record.value))
                if time.monotonic() - scraped[0] >= self.status_every:
                    scraped = self._status(started, scraped)
        finally:
            consumer.close()

    def show(self, kind: str, value: dict[str, Any]) -> None:
        """Print one output record, unless its kind has used up its lines."""
        if kind == "scores" and value["source"] == "fast_path":
            user = value["user_id"]
            fresh = self.suppressions.new(
                (user, s["target_type"], s["target_id"]) for s in value.get("suppressions", [])
            )
            if not fresh:
                return
            kind = "suppression"
            value = {**value, "suppressions": [
                s for s in value["suppressions"]
                if (user, s["target_type"], s["target_id"]) in fresh
            ]}  # fmt: skip
        if self.budget.allow(kind):
            print(describe(kind, value), flush=True)

    def _scrape(self) -> Samples:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
                return parse_metrics(response.read().decode())
        except OSError:
            return {}

    def _status(self, started: float, last: tuple[float, Samples]) -> tuple[float, Samples]:
        now, samples = time.monotonic(), self._scrape()
        if samples and last[1]:
            line = Status.between(last[1], samples, now - last[0], self.settings).describe()
        else:
            line = "worker metrics unavailable"
        hidden = self.budget.close_period()
        suffix = f" | not shown: {hidden}" if hidden else ""
        print(f"[status {now - started:5.0f}s] {line}{suffix}", flush=True)
        return now, samples


def describe(kind: str, value: dict[str, Any]) -> str:
    """One line for an output record of ``kind`` (see :data:`KINDS`)."""
    if kind == "dead-letter":
        return (
            f"[dead-letter] {value['reason']:<22} from {value['topic']}/{value['partition']}"
            f"@{value['offset']}: {value['detail'][:70]}"
        )
    if kind == "drift":
        return _describe_drift(value)
    if kind == "suppression":
        suppressions = ", ".join(
            f"{s['target_type']} {s['target_id']} ({s['reason']})"
            for s in value.get("suppressions", [])[:3]
        )
        return f"[suppress] {value['user_id']}: {suppressions}"
    top = ", ".join(f"{s['item_id']} p_neg={s['p_negative']:.2f}" for s in value["scores"][:3])
    return f"[scores] {value['user_id']} model v{value['model_version']}: {top}"


#: Drift figures shown, with their label and format.
DRIFT_FIGURES = (
    ("examples", "examples", "{:,.0f}"),
    ("negative_rate", "negative rate", "{:.3f}"),
    ("psi_p_negative", "PSI p_negative", "{:.3f}"),
    ("psi_user_negative_rate", "PSI user rates", "{:.3f}"),
    ("prequential:negative/auc", "AUC", "{:.3f}"),
)


def _describe_drift(value: dict[str, Any]) -> str:
    """
    Examples
    --------
    >>> _describe_drift({"model_version": 7, "alerts": [], "metrics": {
    ...     "examples": 1670.0, "negative_rate": 0.2, "prequential:negative/auc": 0.61}})
    '[drift] model v7: examples 1,670 | negative rate 0.200 | AUC 0.610'
    """
    figures = value["metrics"]
    shown = " | ".join(
        f"{label} {form.format(figures[name])}"
        for name, label, form in DRIFT_FIGURES
        if name in figures
    )
    alerts = ", ".join(
        f"{a['metric']} {a['value']:.3f} > {a['threshold']:g} ({a['level']})"
        for a in value["alerts"]
    )
    return f"[drift] model v{value['model_version']}: {shown}" + (
        f"  ALERT {alerts}" if alerts else ""
    )
