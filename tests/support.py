"""Test helpers: settings per test, a real worker process, producing and consuming, and the
generated stream the table and fault tests share."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from prometheus_client.parser import text_string_to_metric_families

from schemas import decode_example
from simulator.stream import Simulator, SimulatorConfig
from streams.broker import BrokerError, die_with_parent, free_port, wait_for_port
from streams.settings import PREFIX, Settings


def isolated_settings(broker_url: str, data_dir: Path, **changes: Any) -> Settings:
    """Settings isolated to one test: own topics, consumer group, data dir and port."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "broker_url": broker_url,
        "app_id": f"negstream-{tag}",
        "topic_prefix": f"t{tag}-",
        "data_dir": str(data_dir),
        "metrics_port": free_port(),
        "label_window_s": 2.0,
        "watermark_delay_s": 0.0,
        "idle_flush_s": 0.5,
        "log_level": "warn",
    }
    values.update(changes)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    for spec in dataclasses.fields(settings):
        env[PREFIX + spec.name.upper()] = str(getattr(settings, spec.name))
    return env


class WorkerProcess:
    """``python -m negstream worker`` (or another serving ``command``, e.g. ``trainer``) as a
    child process with ``settings``."""

    def __init__(self, settings: Settings, log_path: Path, command: str = "worker") -> None:
        self.settings = settings
        self.log_path = log_path
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        return self.launch().wait_up(timeout)

    def launch(self) -> WorkerProcess:
        """Start the process without waiting for it (see :meth:`wait_up`)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "negstream", self.command],
                env=settings_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # a worker never outlives its test run
            )
        return self

    def wait_up(self, timeout: float = 90.0) -> WorkerProcess:
        """Wait until the launched process serves /metrics."""
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.command} exited early:\n{self.log()[-3000:]}")
            try:
                wait_for_port(self.settings.metrics_host, self.settings.metrics_port, 0.5)
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.command} not up:\n{self.log()[-3000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def get(self, path: str, timeout: float = 60.0) -> bytes:
        """GET a worker page; retried while the worker answers 503 (tables recovering)."""
        url = f"http://{self.settings.metrics_host}:{self.settings.metrics_port}{path}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    return bytes(response.read())
            except urllib.error.HTTPError as error:
                if error.code != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, by name and sorted labels."""
        text = self.get("/metrics").decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples


def produce(settings: Settings, messages: Iterable[tuple[str, bytes | None, Any]]) -> int:
    """Send ``(topic setting, key, value)``; dict values are JSON-encoded."""
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, linger_ms=5, max_request_size=16 * 2**20
    )
    count = 0
    for topic, key, value in messages:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        producer.send(settings.topic(topic), key=key, value=raw)
        count += 1
    producer.flush()
    producer.close()
    return count


def consume(
    settings: Settings,
    topic: str,
    done: Callable[[list[tuple[bytes | None, bytes]]], bool],
    timeout: float = 60.0,
    fetch_wait_ms: int = 500,
) -> list[tuple[bytes | None, bytes]]:
    """Read ``topic`` from the start until ``done(messages)`` or ``timeout`` seconds.

    Tansu answers a fetch with what it gathered within ``fetch_wait_ms``: a topic of
    thousands of batches on S3 storage needs seconds (the memory broker holds every fetch
    for the whole wait, so keep it short there)."""
    name = settings.topic(topic)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=None, consumer_timeout_ms=300,
        fetch_max_wait_ms=fetch_wait_ms, request_timeout_ms=max(30_000, fetch_wait_ms + 10_000),
    )  # fmt: skip
    consumer.assign([TopicPartition(name, p) for p in range(settings.partitions)])
    consumer.seek_to_beginning()
    messages: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while not done(messages) and time.monotonic() < deadline:
            for message in consumer:
                messages.append((message.key, message.value))
    finally:
        consumer.close()
    return messages


def assert_once_by_id(examples: list[Any], expected: dict[str, str]) -> int:
    """Every expected example, with its label, exactly once after dedupe by example id.

    At-least-once delivery may publish an example again after a crash (the window between
    its delivery and its state reaching the changelog); such a copy must be identical, so a
    consumer that dedupes by ``example_id`` (the trainer does) sees each example once.
    Returns how many redelivered copies there were.
    """
    by_id: dict[str, list[Any]] = {}
    for example in examples:
        by_id.setdefault(example.example_id, []).append(example)
    missing = sorted(set(expected) - set(by_id))
    assert not missing, f"{len(missing)} of {len(expected)} examples lost: {missing[:10]}"
    unexpected = sorted(set(by_id) - set(expected))
    assert not unexpected, f"unexpected examples: {unexpected[:10]}"
    wrong = {i: (c[0].label, expected[i]) for i, c in by_id.items() if c[0].label != expected[i]}
    assert not wrong, f"wrong labels (got, expected): {dict(list(wrong.items())[:10])}"
    differing = sorted(i for i, copies in by_id.items() if any(c != copies[0] for c in copies))
    assert not differing, f"copies of one example differ: {differing[:10]}"
    return len(examples) - len(by_id)


def memory_users(states: dict[str, Any] | None = None) -> Any:
    """A users store over a plain dict (no Faust app), as the worker's services see it.

    ``states`` may hold typed states or their wire dicts (decoded on first read).
    """
    from types import SimpleNamespace

    from agents.wiring import users_store

    return users_store(SimpleNamespace(data=states if states is not None else {}))


def state_config(**overrides: Any) -> Any:
    """The per-user logic's config of ``Settings(**overrides)``."""
    from agents.wiring import state_config as build

    return build(Settings(**overrides))


def child_process(
    argv: list[str], env: dict[str, str] | None = None, log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a child that never outlives this process, even after a SIGKILL.

    Its output is appended to ``log_path`` (discarded without one). The child dies with the
    *thread* that started it (PR_SET_PDEATHSIG), so start it from one that outlives it.
    """
    if log_path is None:
        quiet = subprocess.DEVNULL
        return subprocess.Popen(
            argv, env=env, stdout=quiet, stderr=quiet, preexec_fn=die_with_parent
        )
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )


def new_topic_named(bootstrap: list[str], name: str, partitions: int = 1) -> str:
    """Create topic ``name`` explicitly (Tansu would auto-create it with 4 partitions)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    except TopicAlreadyExistsError:
        pass  # created by the broker on first use
    finally:
        admin.close()
    return name


# --- the generated stream the table and fault tests check against tests/ground_truth.py ----

#: ``(simulator topic label, event)`` in the order sent.
Stream = list[tuple[str, dict[str, Any]]]
#: How far back the late copies in :func:`generated_stream` land, in seconds of event time.
LATE_BY = 400.0
#: Windows, grace and label window of the table tests: short enough that the generated
#: stream crosses window boundaries and closes label windows.
TABLE_SETTINGS = {
    "window_short_s": 60.0,
    "window_long_s": 600.0,
    "window_step_s": 10.0,
    "grace_s": 150.0,
    "label_window_s": 100.0,
    "batch_size": 200,
}
#: Users whose one far-future event moves every partition's watermark past the stream.
FLUSH_USERS = [f"zz-flush-{n}" for n in range(16)]


def generated_stream(impressions: int = 3000, users: int = 40) -> Stream:
    """Simulated events with duplicates and out-of-order feedback, plus late copies that
    land hundreds of seconds back (across window boundaries), then a far-future event per
    flush user that moves every partition's watermark past the last label window."""
    config = SimulatorConfig(n_users=users, n_items=300, n_creators=30, n_categories=8, seed=7,
                             mean_request_gap_s=0.5, impressions_per_request=2,
                             duplicate_rate=0.05, out_of_order_rate=0.05)  # fmt: skip
    stream: Stream = []
    start = config.start_time
    for n, event in enumerate(Simulator(config).events(impressions)):
        assert isinstance(event.value, dict)
        stream.append((event.topic, event.value))
        if n % 40 == 0 and event.value["timestamp"] > start + LATE_BY + 10:
            late = {**event.value, "event_id": f"late-{n}"}
            late["timestamp"] = event.value["timestamp"] - LATE_BY
            stream.append((event.topic, late))
    end = max(v["timestamp"] for _, v in stream) + 1000
    for n, user in enumerate(FLUSH_USERS):
        base = {"user_id": user, "item_id": "flush", "timestamp": end}
        stream.append(("impressions", {**base, "event_id": f"flush-i{n}"}))
        stream.append(("negative-feedback", {**base, "event_id": f"flush-f{n}", "kind": "click"}))
    return stream


def send_paced(settings: Settings, stream: Stream, rate: float) -> None:
    """Send ``stream`` in order, keyed by user, in chunks of 100 at about ``rate`` events/s."""
    topic = {"impressions": "impressions", "negative-feedback": "feedback"}
    step = 100
    started = time.monotonic()
    for first in range(0, len(stream), step):
        chunk = stream[first : first + step]
        produce(settings, ((topic[t], v["user_id"].encode(), v) for t, v in chunk))
        # Paced from the start, so the time each send takes does not slow the rate.
        time.sleep(max(0.0, started + (first + len(chunk)) / rate - time.monotonic()))


def compare_tables(
    worker: WorkerProcess | Sequence[WorkerProcess], settings: Settings, truth: Any
) -> None:
    """Assert every non-flush user's short and long window counters equal ``truth``'s
    (a :class:`tests.ground_truth.Truth`). With several workers, each user is read from
    the one that owns it (the others answer 404)."""
    workers = [worker] if isinstance(worker, WorkerProcess) else list(worker)
    # The long window's buckets: a whole number of steps, at most 48 of them.
    steps = math.ceil(settings.window_long_s / 48 / settings.window_step_s - 1e-9)
    long_step = max(1, steps) * settings.window_step_s
    for user in truth.impressions:
        if user in FLUSH_USERS:
            continue
        view = orjson.loads(user_page(workers, user))
        expected_short = truth.view(user, settings.window_short_s, settings.window_step_s)
        expected_long = truth.view(user, settings.window_long_s, long_step)
        for name, expected in (("short", expected_short), ("long", expected_long)):
            got = {k: view[name][k] for k in expected}
            assert got == expected, f"{user} {name} window: {got} != {expected}"


def user_page(workers: Sequence[WorkerProcess], user: str) -> bytes:
    """``/users/<user>/`` from whichever of ``workers`` owns the user."""
    for worker in workers:
        try:
            return worker.get(f"/users/{user}/")
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
    raise AssertionError(f"no worker owns {user}")


def distinct_examples(at_least: int) -> Callable[[list[tuple[bytes | None, bytes]]], bool]:
    """A :func:`consume` stop rule: ``at_least`` distinct example ids read (copies of one
    example count once, so copies cannot stop a read before a late example arrives)."""
    ids: set[str] = set()
    read = [0]

    def done(got: list[tuple[bytes | None, bytes]]) -> bool:
        for _, value in got[read[0] :]:
            ids.add(orjson.loads(value)["example_id"])
        read[0] = len(got)
        return len(ids) >= at_least

    return done


def quiet_after(at_least: int, quiet_s: float) -> Callable[[list[Any]], bool]:
    """A :func:`consume` stop rule: ``at_least`` records read, then none new for ``quiet_s``
    (a broker on S3 pauses longer than a consumer's poll)."""
    last = [0, time.monotonic()]

    def done(got: list[Any]) -> bool:
        if len(got) != last[0]:
            last[:] = [len(got), time.monotonic()]
        return len(got) >= at_least and time.monotonic() - last[1] >= quiet_s

    return done


def read_all(settings: Settings, topic: str, partitions: int, idle_ms: int = 2000) -> list[Any]:
    """Every record of the negstream topic ``topic`` so far, partitions ``0..partitions-1``
    (kafka-python records: partition, offset, key, value, timestamp)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                             consumer_timeout_ms=idle_ms, fetch_max_wait_ms=200,
                             max_partition_fetch_bytes=4 * 2**20)  # fmt: skip
    tps = [TopicPartition(settings.topic(topic), p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(tps)
    records: list[Any] = []
    try:
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            records += list(consumer)
    finally:
        consumer.close()
    return records


def examples_by_id(
    settings: Settings, expected: int, timeout: float = 60.0, fetch_wait_ms: int = 500
) -> list[Any]:
    """Every published example, decoded, once ``expected`` distinct ones have arrived."""
    first = consume(settings, "examples", distinct_examples(expected), timeout, fetch_wait_ms)
    # Read again from the start, for copies published since: what came before, then quiet.
    again = quiet_after(len(first), max(3.0, 2 * fetch_wait_ms / 1000))
    messages = consume(settings, "examples", again, timeout, fetch_wait_ms)
    return [decode_example(value) for _, value in messages]


#: A negstream metric name inside a PromQL expression.
METRIC = re.compile(r"\bnegstream_[a-z_]+")
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of ``deploy/prometheus/alerts.yml``."""
    import yaml

    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "negstream.json"


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel of ``panels``, rows' nested panels included."""
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(where, expr, legend) for every query in the Grafana dashboard, templating included."""
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    found = []
    for panel in dashboard_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"], target.get("legendFormat", "")))
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append((f"${variable['name']}", query["query"], ""))
    return found


# --- fault and chaos tests: workers under paced load --------------------------------


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.3) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


class Feeder(threading.Thread):
    """Sends ``stream`` in order at ``rate`` events/s in the background; ``sent`` counts."""

    def __init__(self, settings: Settings, stream: Stream, rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.stream, self.rate = settings, stream, rate
        self.sent = 0
        self.error: BaseException | None = None
        # Held by the sending loop around each chunk, and by pause() until resume().
        self.sending = threading.Lock()

    def run(self) -> None:
        try:
            for first in range(0, len(self.stream), 100):
                chunk = self.stream[first : first + 100]
                with self.sending:
                    send_paced(self.settings, chunk, self.rate)
                    self.sent += len(chunk)
        except BaseException as error:  # reported by finish()
            self.error = error

    def pause(self) -> None:
        """Wait for the chunk being sent, then send nothing until :meth:`resume`."""
        self.sending.acquire()

    def resume(self) -> None:
        self.sending.release()

    def finish(self, timeout: float = 120.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error


def expected_labels(truth: Any, settings: Settings) -> dict[str, str]:
    labels = truth.labels(settings.label_window_s)
    return {i: k for i, k in labels.items() if not i.startswith("flush")}


def check_examples(settings: Settings, expected: dict[str, str]) -> int:
    """No expected example lost or mislabelled; redelivered copies identical. Returns copies."""
    return assert_once_by_id(examples_by_id(settings, len(expected)), expected)


def start_all(workers: list[WorkerProcess], timeout: float = 90.0) -> None:
    """Start worker processes side by side (each start imports torch and Faust).

    Launched from this thread: the children die with the thread that forked them
    (PR_SET_PDEATHSIG), so a helper thread must not start them.
    """
    for worker in workers:
        worker.process = child_process(
            [sys.executable, "-m", "negstream", "worker"],
            env=settings_env(worker.settings),
            log_path=worker.log_path,
        )

    def up(worker: WorkerProcess) -> bool:
        assert worker.process is not None
        assert worker.process.poll() is None, f"worker exited early:\n{worker.log()[-3000:]}"
        try:
            wait_for_port(worker.settings.metrics_host, worker.settings.metrics_port, 0.2)
        except BrokerError:
            return False
        return True

    for worker in workers:
        wait_until(lambda w=worker: up(w), timeout, f"worker {worker.log_path.name} to start")


def strong_negatives(truth: Any) -> dict[str, str]:
    """Item of every accepted strong negative of a :class:`tests.ground_truth.Truth`, by
    event id (the flush users left out)."""
    from schemas.kinds import STRONG_NEGATIVE

    return {
        fb["event_id"]: fb["item_id"]
        for user, events in truth.feedback.items()
        if user not in FLUSH_USERS
        for fb in events
        if fb["kind"] in STRONG_NEGATIVE
    }


def suppressed_by_their_update(
    updates: Iterable[dict[str, Any]], strong: dict[str, str]
) -> set[str]:
    """The strong negatives (event id → item) whose item is suppressed in a fast-path
    ScoreUpdate (decoded) that names them as its trigger."""
    done: set[str] = set()
    for update in updates:
        if update["source"] != "fast_path":
            continue
        items = {s["target_id"] for s in update["suppressions"] if s["target_type"] == "item"}
        done.update(e for e in update["trigger_event_ids"] if strong.get(e) in items)
    return done
