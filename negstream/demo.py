"""``negstream demo``: embedded broker, a worker and a simulated stream, its output printed."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import orjson
from kafka import KafkaConsumer

from negstream.producer import make_producer
from streams.admin import ensure_topics
from streams.broker import (
    BrokerError,
    EmbeddedBroker,
    _die_with_parent,
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
    "NEGSTREAM_LOG_LEVEL": "warn",
}


def run_demo(args: argparse.Namespace) -> int:
    """Run until Ctrl-C (or ``--duration`` seconds); leave nothing running."""
    data_dir = tempfile.mkdtemp(prefix="negstream-demo-")
    broker = EmbeddedBroker(log_path=os.path.join(data_dir, "broker.log"))
    worker: subprocess.Popen[bytes] | None = None
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
                preexec_fn=_die_with_parent,
            )
        print("negstream demo")
        print(f"  broker   {broker.url} (embedded Tansu, memory storage)")
        print(f"  metrics  http://{settings.metrics_host}:{metrics_port}/metrics")
        print(f"  logs     {worker_log}")
        print(f"  stream   simulated users, {args.rate:.0f} events/s, ~1% malformed on purpose")
        print("  Ctrl-C stops worker and broker.\n", flush=True)
        _wait_ready(worker, settings.metrics_host, metrics_port, worker_log)
        producer = threading.Thread(
            target=_produce, args=(settings, args.rate, stop), name="simulator", daemon=True
        )
        producer.start()
        _show(settings, worker, stop, args.duration)
        return 0
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        stop.set()
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        broker.stop()
        print("demo stopped: worker and broker are down.", flush=True)


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


def _show(
    settings: Settings, worker: subprocess.Popen[bytes], stop: threading.Event, duration: float
) -> None:
    names = {
        settings.topic("scores"): "scores",
        settings.topic("dead_letters"): "dead-letter",
        settings.topic("drift"): "drift",
        settings.topic("examples"): "examples",
    }
    consumer = KafkaConsumer(
        *names,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=500,
    )
    deadline = time.monotonic() + duration if duration else None
    labels: Counter[str] = Counter()
    shown: Counter[tuple[str, int]] = Counter()
    last_summary = time.monotonic()
    try:
        while not stop.is_set():
            if worker.poll() is not None:
                print(f"worker exited with status {worker.returncode}; see its log", flush=True)
                return
            if deadline and time.monotonic() > deadline:
                return
            for message in consumer:
                kind = names[message.topic]
                value = orjson.loads(message.value)
                if kind == "examples":
                    labels[value["label"]] += 1
                    continue
                second = int(time.monotonic())
                if shown[(kind, second)] < 3 or kind != "scores":
                    shown[(kind, second)] += 1
                    print(_describe(kind, value), flush=True)
                if time.monotonic() - last_summary > 5:
                    break
            if time.monotonic() - last_summary > 5:
                last_summary = time.monotonic()
                total = sum(labels.values())
                top = ", ".join(f"{k} {v}" for k, v in labels.most_common(5))
                print(f"[training-examples] {total} published ({top})", flush=True)
    finally:
        consumer.close()


def _describe(kind: str, value: dict[str, Any]) -> str:
    if kind == "dead-letter":
        return (
            f"[dead-letter] {value['reason']:<22} from {value['topic']}/{value['partition']}"
            f"@{value['offset']}: {value['detail'][:70]}"
        )
    if kind == "drift":
        alerts = ", ".join(
            f"{a['metric']}={a['value']:.3f}>{a['threshold']}" for a in value["alerts"]
        )
        figures = ", ".join(f"{k}={v:.3f}" for k, v in list(value["metrics"].items())[:6])
        return f"[drift] {value['scope']} v{value['model_version']}: {figures}" + (
            f"  ALERT {alerts}" if alerts else ""
        )
    suppressions = ", ".join(
        f"{s['target_type']} {s['target_id']} (penalty {s['penalty']:.1f}, {s['reason']})"
        for s in value.get("suppressions", [])[:3]
    )
    if value["source"] == "fast_path":
        return f"[scores] {value['user_id']} fast path: suppress {suppressions}"
    top = ", ".join(f"{s['item_id']} p_neg={s['p_negative']:.2f}" for s in value["scores"][:3])
    return f"[scores] {value['user_id']} model v{value['model_version']}: {top}"
