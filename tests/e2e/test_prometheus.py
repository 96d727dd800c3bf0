"""deploy/ against a real Prometheus scraping a real worker under paced simulated load.

Every dashboard query and every alert rule is evaluated through Prometheus' HTTP API: none
may error, each must return data (the test injects a burst of malformed input for the
alerts and panels that need one), and no alert may be pending or firing but the two
dead-letter alerts that burst provokes.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from negstream.producer import make_producer
from simulator.stream import Simulator, SimulatorConfig
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker, die_with_parent, free_port
from streams.settings import Settings
from tests.support import (
    ALERTS,
    DASHBOARD,
    WorkerProcess,
    alert_rules,
    dashboard_panels,
    isolated_settings,
)
from tests.support import PROMETHEUS_CONFIG as PROMETHEUS

pytestmark = [pytest.mark.broker, pytest.mark.prometheus]

INSTALL = (
    "the prometheus and promtool binaries are not on PATH; install them with "
    "`apt-get install prometheus` (Debian, Ubuntu: `make test` does it where it can), "
    "`brew install prometheus`, or from https://prometheus.io/download/"
)
#: Seconds between scrapes and between rule evaluations (the deployment uses 15 s).
SCRAPE_S = 2
#: What Grafana's $__rate_interval becomes at this scrape interval (at least 4 scrapes).
RATE_INTERVAL = "10s"
#: Seconds of paced load, and the events per second offered.
LOAD_S = 75.0
RATE = 300.0
#: Seconds into the load at which the malformed burst is sent.
BURST_AT_S = 45.0
#: Malformed messages in the burst, as a share of the events sent before it: the
#: dead-lettered share of all input then exceeds the critical alert's 10%.
BURST_SHARE = 0.25
#: The alerts the burst provokes. The test's copy of the rules fires them at once (``for:
#: 0s``) so that the firing-alerts panel and annotation have data; every other rule keeps
#: its ``for`` and must stay inactive, neither pending nor firing.
EXPECTED_ALERTS = frozenset({"NegstreamDeadLetterRateHigh", "NegstreamDeadLetterRateCritical"})

DURATION = re.compile(r"\boffset\s+\d+[smhdwy]\b")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?")
MODIFIERS = re.compile(
    r"^(?:bool\s+)?(?:(?:on|ignoring)\s*\([^)]*\)\s*)?(?:(?:group_left|group_right)\s*(?:\([^)]*\))?\s*)?"
)
WORD_OPERATOR = re.compile(r"(and|or|unless)(?=[\s(])")
COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
LABEL_VALUES = re.compile(r"label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)")


def _binaries() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        pytest.skip(INSTALL)
    return prometheus, promtool


# --- PromQL operands ---------------------------------------------------------------------


def operands(expr: str) -> list[str]:
    """The operands of ``expr``'s top-level comparison and set operators (``expr`` alone
    when it has none), with vector-matching modifiers removed.

    >>> operands('(a > 0) unless on (job) (b{x="<"} == 1)')
    ['(a > 0)', '(b{x="<"} == 1)']
    """
    parts: list[str] = []
    depth, start, index, quote = 0, 0, 0, ""
    while index < len(expr):
        char = expr[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            operator = _operator_at(expr, index)
            if operator:
                parts.append(expr[start:index])
                index += len(operator)
                start = index
                continue
        index += 1
    parts.append(expr[start:])
    return [MODIFIERS.sub("", part.strip()).strip() for part in parts]


def _operator_at(expr: str, index: int) -> str:
    for operator in COMPARISONS:
        if expr.startswith(operator, index):
            return operator
    before = expr[index - 1] if index else " "
    match = WORD_OPERATOR.match(expr, index)
    if match and (before.isspace() or before == ")"):
        return match.group(1)
    return ""


def _unwrapped(expr: str) -> str:
    """``expr`` without parentheses that enclose all of it."""
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for index, char in enumerate(expr):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0 and index < len(expr) - 1:
                return expr
        expr = expr[1:-1].strip()
    return expr


def signals(expr: str) -> Iterator[str]:
    """The leaf operands of ``expr`` that name series (thresholds left out), ``offset``
    removed: an offset only moves the same series back in time, further than a test run.

    >>> list(signals("(a offset 1h) - a > 0.05 and on (job) (b >= 5)"))
    ['(a) - a', 'b']
    """
    parts = operands(expr)
    if len(parts) == 1:
        leaf = _unwrapped(parts[0])
        if leaf != parts[0]:
            yield from signals(leaf)
        elif not NUMBER.fullmatch(leaf):
            yield DURATION.sub("", leaf).replace(" )", ")").strip()
        return
    for part in parts:
        yield from signals(part)


# --- Prometheus --------------------------------------------------------------------------


class Prometheus:
    """A Prometheus server scraping one worker, with the test's copy of the alert rules."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load(PROMETHEUS.read_text())
        config["global"].update(scrape_interval=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s")
        (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "negstream"]
        job.pop("dns_sd_configs")
        job["static_configs"] = [{"targets": [target]}]
        rules = yaml.safe_load(ALERTS.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") in EXPECTED_ALERTS:
                    rule["for"] = "0s"
        (workdir / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config["rule_files"] = ["alerts.yml"]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = workdir / "prometheus.log"
        self.command = [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Prometheus:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("prometheus not ready") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def api(self, path: str, **params: Any) -> dict[str, Any]:
        """The JSON answer of an API call; an error answer is returned, not raised."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                answer: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as error:
            answer = json.loads(error.read() or b"{}")
            answer.setdefault("error", f"HTTP {error.code}")
        return answer

    def query_range(self, expr: str, start: float, end: float) -> dict[str, Any]:
        return self.api("query_range", query=expr, start=start, end=end, step=SCRAPE_S)


def has_data(answer: dict[str, Any]) -> bool:
    """Whether a query_range answer holds at least one value that is a number."""
    return any(
        not math.isnan(float(value))
        for series in answer.get("data", {}).get("result", [])
        for _, value in series.get("values", [])
    )


def dashboard_queries(variables: dict[str, str]) -> list[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard, with Grafana's variables filled."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in dashboard_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    found += [
        (f"annotation {annotation['name']!r}", annotation["expr"])
        for annotation in dashboard["annotations"]["list"]
        if "expr" in annotation
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            # Grafana's label_values(selector, label): the selector must have that label.
            selector, label = LABEL_VALUES.fullmatch(query["query"]).groups()  # type: ignore[union-attr]
            found.append((f"variable ${variable['name']}", f"count by ({label}) ({selector})"))
    filled = []
    for where, expr in found:
        for name, value in variables.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, f"{where}: a Grafana variable the test does not know: {expr}"
        filled.append((where, expr))
    return filled


# --- load --------------------------------------------------------------------------------


def malformed(count: int) -> Iterator[tuple[str, bytes, bytes]]:
    """``count`` small invalid messages, half broken JSON, half an unknown feedback kind."""
    for index in range(count):
        user = f"burst{index % 50}".encode()
        if index % 2:
            yield "impressions", user, b'{"event_id": "burst-' + str(index).encode()
        else:
            value = {"event_id": f"burst-{index}", "user_id": user.decode(), "item_id": "i1",
                     "kind": "meh", "timestamp": time.time()}  # fmt: skip
            yield "feedback", user, orjson.dumps(value)


def paced_load(settings: Settings, stop: threading.Event, sent: dict[str, int]) -> None:
    """Simulated events at :data:`RATE` per second for :data:`LOAD_S` s, with a malformed
    burst at :data:`BURST_AT_S` s."""
    producer = make_producer(settings)
    topics = {"impressions": settings.topic("impressions"), "feedback": settings.topic("feedback")}
    topics["negative-feedback"] = topics["feedback"]
    config = SimulatorConfig(seed=19, malformed_rate=0.002, duplicate_rate=0.01,
                             keep_ground_truth=False)  # fmt: skip
    events = Simulator(config).events(10_000_000)
    started = time.monotonic()
    try:
        for event in events:
            elapsed = time.monotonic() - started
            if stop.is_set() or elapsed > LOAD_S:
                return
            if elapsed > BURST_AT_S and not sent["burst"]:
                sent["burst"] = int(BURST_SHARE * sent["events"])
                for topic, key, value in malformed(sent["burst"]):
                    producer.send(topics[topic], key=key, value=value)
            value = event.value if isinstance(event.value, bytes) else orjson.dumps(event.value)
            producer.send(topics[event.topic], key=event.key.encode(), value=value)
            sent["events"] += 1
            ahead = sent["events"] / RATE - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    finally:
        producer.close(timeout=10)


def wait_until_assigned(worker: WorkerProcess, partitions: int, timeout: float = 60.0) -> None:
    """Until the worker holds its partitions (its fast lane follows every feedback one).

    Events produced before the group join wait for it: their feedback-to-score latency would
    be the join's seconds, which no alert should judge the worker by.
    """
    deadline = time.monotonic() + timeout
    while worker.metrics().get(("negstream_fast_lane_partitions", ())) != partitions:
        assert time.monotonic() < deadline, "the worker was not assigned its partitions"
        time.sleep(0.2)


# --- tests -------------------------------------------------------------------------------


def test_operand_splitting() -> None:
    expr = (
        "(time() - (max by (job) (x > 0) or max by (job) (y)) > 900)\n"
        "and on (job, instance) (rate(z[15m]) > 0)"
    )
    assert list(signals(expr)) == [
        "time() - (max by (job) (x > 0) or max by (job) (y))",
        "rate(z[15m])",
    ]
    assert list(signals("up == 0")) == ["up"]
    assert list(signals("a_or_b unless or_c")) == ["a_or_b", "or_c"]


def test_promtool_accepts_the_config_and_the_rules() -> None:
    _, promtool = _binaries()
    for command in (["check", "config", str(PROMETHEUS)], ["check", "rules", str(ALERTS)]):
        result = subprocess.run([promtool, *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_deploy_expression_on_a_worker_under_load(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    binary, _ = _binaries()
    settings = isolated_settings(
        broker.url,
        tmp_path,
        model_buckets=2**12,
        train_batch_size=256,
        train_max_wait_s=0.5,
        drift_interval_s=5.0,
        checkpoint_every_s=15.0,
    )
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    target = f"{settings.metrics_host}:{settings.metrics_port}"
    (tmp_path / "prometheus").mkdir()
    prometheus = Prometheus(binary, tmp_path / "prometheus", target)
    stop = threading.Event()
    sent = {"events": 0, "burst": 0}
    load = threading.Thread(target=paced_load, args=(settings, stop, sent), daemon=True)
    try:
        wait_until_assigned(worker, settings.partitions)
        # The load first: the first scrape already sees input flowing.
        load.start()
        started = time.time()
        prometheus.start()
        load.join(LOAD_S + 30)
        assert not load.is_alive(), "the load did not finish"
        # Two more evaluations see the end of the load.
        time.sleep(3 * SCRAPE_S)
        ended = time.time()
        problems, checked = evaluate(prometheus, started, ended, target)
        assert worker.process is not None and worker.process.poll() is None, worker.log()[-3000:]
    finally:
        stop.set()
        prometheus.stop()
        worker.stop()
    assert sent["events"] >= 0.8 * RATE * LOAD_S and sent["burst"] > 0, sent
    print(f"{checked} expressions evaluated over {ended - started:.0f} s; sent {sent}")
    assert not problems, "\n".join(problems)
    # Every panel query, variable, annotation, rule and rule operand: about 150.
    assert checked >= 100


def evaluate(
    prometheus: Prometheus, start: float, end: float, target: str
) -> tuple[list[str], int]:
    """Everything wrong with deploy/'s expressions over [start, end], as messages, and how
    many expressions were evaluated."""
    problems: list[str] = []
    checked = 0
    targets = prometheus.api("targets")["data"]["activeTargets"]
    if [t["health"] for t in targets] != ["up"]:
        problems.append(f"scrape target not up: {targets}")

    def check(where: str, expr: str, need_data: bool) -> None:
        nonlocal checked
        checked += 1
        answer = prometheus.query_range(expr, start, end)
        if answer.get("status") != "success":
            problems.append(f"{where}: {expr!r} failed: {answer.get('error')}")
        elif need_data and not has_data(answer):
            problems.append(f"{where}: {expr!r} returned no data")

    variables = {"$job": "negstream", "$instance": target,
                 "$__rate_interval": RATE_INTERVAL}  # fmt: skip
    for where, expr in dashboard_queries(variables):
        check(where, expr, need_data=True)
    for rule in alert_rules():
        name = rule["alert"]
        check(f"alert {name}", rule["expr"], need_data=name in EXPECTED_ALERTS)
        for signal in signals(rule["expr"]):
            check(f"alert {name}, operand", signal, need_data=True)

    for group in prometheus.api("rules")["data"]["groups"]:
        for rule in group["rules"]:
            if rule["health"] != "ok":
                problems.append(f"rule {rule['name']}: {rule['health']} {rule.get('lastError')}")
    states: dict[str, set[str]] = {}
    alerts = prometheus.query_range("ALERTS", start, end)["data"]["result"]
    for series in alerts:
        states.setdefault(series["metric"]["alertname"], set()).add(series["metric"]["alertstate"])
    for name, seen in sorted(states.items()):
        if name not in EXPECTED_ALERTS:
            problems.append(f"alert {name} was {' and '.join(sorted(seen))} without cause")
    for name in sorted(EXPECTED_ALERTS):
        if "firing" not in states.get(name, set()):
            problems.append(f"alert {name} never fired after the malformed burst")
    return problems, checked
