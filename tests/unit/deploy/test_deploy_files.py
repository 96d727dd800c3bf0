"""deploy/ is consistent: files parse, references resolve, and every metric queried exists."""

from __future__ import annotations

import itertools
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from faust.sensors.prometheus import FaustMetrics
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

import streams.metrics
from streams.settings import PREFIX, Settings
from tests.support import METRIC, alert_rules, dashboard_exprs, dashboard_panels

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "negstream.json"
K8S = DEPLOY / "k8s"
README = ROOT / "README.md"

#: Labels Prometheus attaches to every scraped series (job and instance from the scrape).
TARGET_LABELS = frozenset({"job", "instance"})
#: Series a scrape of one metric exposes, by metric type (prometheus_client naming).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
SELECTOR = re.compile(r"\b(negstream_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def _exposed(metrics: list[MetricWrapperBase]) -> dict[str, frozenset[str]]:
    """Series name -> label names, for every series these metrics put on /metrics."""
    series: dict[str, frozenset[str]] = {}
    for metric in metrics:
        # prometheus_client keeps no public accessor for these; they are stable since 0.4.
        name, kind = metric._name, metric._type
        labels = frozenset(metric._labelnames)
        for suffix in SUFFIXES[kind]:
            series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def _negstream_metrics() -> list[MetricWrapperBase]:
    return [m for m in vars(streams.metrics).values() if isinstance(m, MetricWrapperBase)]


def _faust_metrics() -> list[MetricWrapperBase]:
    # A fresh registry: the worker registers these under the same prefix in the global one.
    return list(FaustMetrics.create(CollectorRegistry(), "negstream"))


KNOWN = {**_exposed(_faust_metrics()), **_exposed(_negstream_metrics())}


def expr_problems(expr: str, known: dict[str, frozenset[str]] = KNOWN) -> list[str]:
    """What in a PromQL expression names a negstream series or label that does not exist."""
    problems: list[str] = []
    names = set(METRIC.findall(expr))
    for name in sorted(names - known.keys()):
        problems.append(f"unknown metric {name}")
    for name, matchers in SELECTOR.findall(expr):
        for label in MATCHER.findall(matchers):
            if name in known and label not in known[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
    available = TARGET_LABELS.union(*(known.get(name, frozenset()) for name in names))
    for group in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in available:
                problems.append(f"no metric in the expression has label {label!r}")
    depth = 0
    for char in expr:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            break
    if depth != 0 or expr.count("{") != expr.count("}") or expr.count("[") != expr.count("]"):
        problems.append("unbalanced brackets")
    return problems


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})


@cache
def _load(path: Path) -> Any:
    # Cached: tests only read these documents; parametrised ones would parse them repeatedly.
    return yaml.safe_load(path.read_text())


def _k8s_documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _k8s_of(docs: list[dict[str, Any]], kind: str, component: str) -> list[dict[str, Any]]:
    """The documents of ``kind`` for the worker or the trainer."""
    return [
        doc
        for doc in docs
        if doc["kind"] == kind
        and doc["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]


def _compose_env(environment: dict[str, Any]) -> dict[str, str]:
    """Compose environment with ``${VAR:-default}`` replaced by its default."""
    default = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")
    return {key: default.sub(r"\1", str(value)) for key, value in environment.items()}


# --- everything parses ------------------------------------------------------------------


def test_deploy_has_the_expected_files() -> None:
    for path in (COMPOSE, ALERTS, PROMETHEUS, DASHBOARD, DEPLOY / "Dockerfile"):
        assert path.is_file(), path


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents, f"{path} holds no YAML document"


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.json")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


# --- the metric checker itself ----------------------------------------------------------


def test_known_metrics_cover_both_sources() -> None:
    assert "negstream_events_total" in KNOWN
    assert KNOWN["negstream_feedback_to_score_seconds_bucket"] == {"path", "le"}
    # Faust names its counters without _total; the exposition format adds it.
    assert "negstream_messages_received_total" in KNOWN
    assert KNOWN["negstream_topic_partition_end_offset"] == {"topic", "partition"}


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(negstream_made_up_total[5m]) > 0", "unknown metric negstream_made_up_total"),
        # The registry name without the exposed suffix is not a series Prometheus stores.
        ("rate(negstream_events[5m])", "unknown metric negstream_events"),
        ("rate(negstream_messages_received[5m])", "unknown metric negstream_messages_received"),
        ('negstream_drift_psi{flavour="x"}', "negstream_drift_psi has no label 'flavour'"),
        ("sum by (reason) (negstream_drift_psi)", "no metric in the expression has label 'reason'"),
        ("sum(rate(negstream_events_total[5m])", "unbalanced brackets"),
    ],
)
def test_checker_rejects_bad_expressions(expr: str, problem: str) -> None:
    assert problem in expr_problems(expr)


def test_checker_accepts_a_good_expression() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, path, job) "
        '(rate(negstream_feedback_to_score_seconds_bucket{instance=~"$instance"}[5m])))'
    )
    assert expr_problems(expr) == []


# --- Prometheus -------------------------------------------------------------------------


def test_prometheus_loads_the_alert_rules_and_scrapes_the_worker() -> None:
    config = _load(PROMETHEUS)
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).is_file(), rule_file
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "negstream"]
    assert job["metrics_path"] == "/metrics"
    targets = [
        f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for name in sd["names"]
    ] + [t for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert "negstream-worker:6066" in targets


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert len(rules) >= 7
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    runbook = (DEPLOY / "README.md").read_text()
    for rule in rules:
        assert rule.get("expr"), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"info", "warning", "critical"}
        assert rule.get("annotations", {}).get("summary"), rule["alert"]
        assert rule["annotations"].get("description"), rule["alert"]
        # The runbook hint must point at a section that exists.
        assert rule["annotations"]["runbook"].endswith("#" + rule["alert"].lower())
        assert f"### {rule['alert']}\n" in runbook, f"no runbook section for {rule['alert']}"


#: Signals an operator needs both an alert and a panel for.
REQUIRED_SIGNALS = (
    "negstream_events_total",
    "negstream_drift_psi",
    "negstream_prequential",
    "negstream_dead_letters_total",
    "negstream_topic_partition_end_offset",
    "negstream_checkpoint_timestamp_seconds",
    "negstream_score_updates_total",
    "negstream_last_score_timestamp_seconds",
    "negstream_flagged_users_total",
    "negstream_input_offset_gaps_total",
    "negstream_undelivered_batches",
    "negstream_fast_lane_partitions",
    "negstream_fast_lane_failures_total",
    "negstream_gc_pause_seconds",
    "negstream_output_errors_total",
)
#: Faust's per-record sensor metrics: bulk reading (streams/bulk.py) bypasses the sensor, so
#: they stay 0 on a busy worker and must not drive an alert or a panel.
BLIND_METRICS = (
    "negstream_messages_received_total",
    "negstream_messages_received_per_topic_total",
    "negstream_messages_received_per_topics_partition",
    "negstream_active_messages",
    "negstream_events_runtime_ms",
    "negstream_total_events_total",
    "negstream_total_active_events",
    "negstream_total_events_per_stream_total",
)
#: Examples a worker learns from before its model quality and drift alerts may fire.
MIN_EXAMPLES_GUARD = re.compile(r"negstream_train_examples_total >= (\d+)\)")
REFERENCE_GUARD = re.compile(r"negstream_drift_reports_total > (\d+)\)")


def test_alerts_cover_the_required_signals() -> None:
    exprs = " ".join(rule["expr"] for rule in alert_rules())
    for metric in REQUIRED_SIGNALS:
        assert metric in exprs, metric


def test_dashboard_covers_the_required_signals() -> None:
    exprs = " ".join(expr for _, expr, _ in dashboard_exprs())
    outputs = ("records_total", "bytes_total", "send_seconds_bucket")
    for metric in (*REQUIRED_SIGNALS, *(f"negstream_output_{name}" for name in outputs)):
        assert metric in exprs, metric


def test_nothing_reads_the_metrics_bulk_reading_bypasses() -> None:
    exprs = [rule["expr"] for rule in alert_rules()] + [e for _, e, _ in dashboard_exprs()]
    for expr in exprs:
        used = set(METRIC.findall(expr))
        assert not used & set(BLIND_METRICS), expr


def test_quality_and_drift_alerts_wait_for_warm_up() -> None:
    settings = Settings()
    guarded = 0
    for rule in alert_rules():
        expr = rule["expr"]
        if "negstream_prequential" in expr or "negstream_drift_" in expr:
            guarded += 1
            (examples, *_) = MIN_EXAMPLES_GUARD.findall(expr) or ["none"]
            assert examples.isdigit() and int(examples) >= 10_000, rule["alert"]
        if "negstream_drift_" in expr:
            # A full rolling reference: NEGSTREAM_DRIFT_REFERENCE_PERIODS reports and one more.
            assert REFERENCE_GUARD.findall(expr) == [str(settings.drift_reference_periods)]
    assert guarded >= 5


def test_checkpoint_alert_needs_a_checkpoint_or_a_process_old_enough() -> None:
    (rule,) = [r for r in alert_rules() if r["alert"] == "NegstreamCheckpointStale"]
    # The gauge is 0 until the first checkpoint: time() minus it would be about 1.8e9 s.
    assert "negstream_checkpoint_timestamp_seconds > 0" in rule["expr"]
    assert "process_start_time_seconds" in rule["expr"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_expressions_use_existing_metrics_and_labels(rule: dict[str, Any]) -> None:
    assert expr_problems(rule["expr"]) == []


# --- Grafana ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expr", "legend"), dashboard_exprs(), ids=lambda value: str(value)[:60]
)
def test_dashboard_queries_use_existing_metrics_and_labels(
    where: str, expr: str, legend: str
) -> None:
    assert expr_problems(expr) == [], where
    if "ALERTS" in expr:
        return
    labels = TARGET_LABELS.union(*(KNOWN.get(name, frozenset()) for name in METRIC.findall(expr)))
    for label in LEGEND.findall(legend):
        assert label in labels, f"{where}: legend {{{{{label}}}}} names no label of the query"


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "negstream"
    assert 36 <= dashboard["schemaVersion"] <= 41
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    for row in ("Throughput", "Outputs", "Consumer lag", "Latency", "Dead letters",
                "Model quality", "Drift", "Flagged users", "Worker health"):  # fmt: skip
        assert row in rows
    ids = [p["id"] for p in dashboard_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        uid = panel["datasource"]["uid"]
        assert uid.strip("${}") in variables, f"{panel['title']}: datasource {uid}"


def test_dashboard_panels_do_not_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    taken: set[tuple[int, int]] = set()
    for panel in dashboard_panels(dashboard["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    datasources = _load(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    (prometheus,) = datasources["datasources"]
    assert prometheus["uid"] == "prometheus" and prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    providers = _load(DEPLOY / "grafana/provisioning/dashboards/negstream.yml")["providers"]
    mounts = dict(
        volume.split(":")[1::-1]
        for volume in _load(COMPOSE)["services"]["grafana"]["volumes"]
        if volume.startswith("./")
    )
    for provider in providers:
        source = mounts[provider["options"]["path"]]
        assert (DEPLOY / source / DASHBOARD.name).is_file()
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


# --- compose ----------------------------------------------------------------------------


def test_compose_references_existing_files() -> None:
    services = _load(COMPOSE)["services"]
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            assert (context / "pyproject.toml").is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


def test_compose_services_and_start_order() -> None:
    services = _load(COMPOSE)["services"]
    assert {"kafka", "topics", "negstream-worker", "prometheus", "grafana"} <= services.keys()
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]
    assert (
        "PLAINTEXT://kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    )
    worker = services["negstream-worker"]
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    for name in ("kafka", "negstream-worker", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name


@pytest.mark.parametrize("service", ["topics", "negstream-worker"])
def test_compose_worker_environment_is_valid_settings(service: str) -> None:
    environment = _compose_env(_load(COMPOSE)["services"][service]["environment"])
    _assert_valid_settings(environment)
    settings = Settings.from_env(environment)
    assert settings.broker_url == "kafka://kafka:9092"
    assert settings.metrics_host == "0.0.0.0"
    assert settings.session_timeout_s == 45 and settings.heartbeat_s == 3
    assert settings.producer_max_batch_size == 65536


def _assert_valid_settings(environment: dict[str, str]) -> None:
    fields = {PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    unknown = {key for key in environment if key.startswith(PREFIX)} - fields
    assert not unknown, f"not negstream settings: {sorted(unknown)}"
    Settings.from_env(environment)


def test_compose_has_nothing_compose_1_29_rejects() -> None:
    compose = _load(COMPOSE)
    allowed = {"services", "volumes", "networks", "configs", "secrets"}
    extra = {key for key in compose if key not in allowed and not key.startswith("x-")}
    # `name:` (Compose v2 only) made docker-compose 1.29 reject the whole file.
    assert not extra, f"top-level keys docker-compose 1.29 rejects: {sorted(extra)}"
    conditions = {
        condition["condition"]
        for service in compose["services"].values()
        for condition in (service.get("depends_on") or {}).values()
        if isinstance(condition, dict)
    }
    # Conditions both 1.29 (the first release with service_completed_successfully) and v2 know.
    assert conditions <= {"service_started", "service_healthy", "service_completed_successfully"}


def test_compose_file_validates_with_docker_compose() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose (1.29, e.g. Debian's docker-compose package) is not installed")
    result = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr


def _readme_kafka_settings() -> dict[str, str]:
    """The ``export NEGSTREAM_X=value`` settings of the README's Apache Kafka section."""
    section = README.read_text().split("## Production: Apache Kafka", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    words = shlex.split(block.replace("\\\n", " "), comments=True)
    return dict(
        word.partition("=")[::2] for word in words if word.startswith(PREFIX) and "=" in word
    )


def _dockerfile_env() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(word.partition("=")[::2] for word in shlex.split(line[4:]) if "=" in word)
    return env


def _configmap_env() -> dict[str, str]:
    (configmap,) = [doc for doc in _k8s_documents() if doc["kind"] == "ConfigMap"]
    return {key: str(value) for key, value in configmap["data"].items()}


#: The README's Apache Kafka client tuning: every deployment file must carry it unchanged.
KAFKA_TUNING = (
    "NEGSTREAM_SESSION_TIMEOUT_S",
    "NEGSTREAM_HEARTBEAT_S",
    "NEGSTREAM_PRODUCER_MAX_BATCH_SIZE",
    "NEGSTREAM_FETCH_MAX_WAIT_MS",
    "NEGSTREAM_RECOVERY_CONSISTENCY_CHECK",
)


def test_readme_kafka_section_names_the_tuning() -> None:
    readme = _readme_kafka_settings()
    assert set(KAFKA_TUNING) <= readme.keys()
    _assert_valid_settings(readme)


@pytest.mark.parametrize("source", ["compose", "configmap", "dockerfile"])
def test_deployments_carry_the_readme_kafka_tuning(source: str) -> None:
    readme = _readme_kafka_settings()
    environment = {
        "compose": lambda: _compose_env(
            _load(COMPOSE)["services"]["negstream-worker"]["environment"]
        ),
        "configmap": _configmap_env,
        "dockerfile": _dockerfile_env,
    }[source]()
    _assert_valid_settings(environment)
    for name in KAFKA_TUNING:
        assert environment.get(name) == readme[name], f"{source}: {name}"


def test_configmap_is_the_readme_production_setup() -> None:
    readme, configmap = _readme_kafka_settings(), _configmap_env()
    for name in ("NEGSTREAM_PARTITIONS", "NEGSTREAM_REPLICATION_FACTOR",
                 "NEGSTREAM_SECURITY_PROTOCOL", "NEGSTREAM_SASL_MECHANISM"):  # fmt: skip
        assert configmap[name] == readme[name], name


def test_container_settings_agree() -> None:
    compose = _load(COMPOSE)["services"]
    worker = _compose_env(compose["negstream-worker"]["environment"])
    sources = {"compose": worker, "configmap": _configmap_env(), "dockerfile": _dockerfile_env()}
    for name in ("NEGSTREAM_METRICS_HOST", "NEGSTREAM_METRICS_PORT", "NEGSTREAM_DATA_DIR"):
        values = {source: env.get(name) for source, env in sources.items()}
        assert len(set(values.values())) == 1, f"{name}: {values}"
    port = worker["NEGSTREAM_METRICS_PORT"]
    assert f"EXPOSE {port}" in (DEPLOY / "Dockerfile").read_text()
    assert f":{port}/metrics" in " ".join(compose["negstream-worker"]["healthcheck"]["test"])
    (job,) = _load(PROMETHEUS)["scrape_configs"]
    assert [str(sd["port"]) for sd in job["dns_sd_configs"]] == [port]
    assert compose["negstream-worker"]["volumes"] == [worker["NEGSTREAM_DATA_DIR"]]


def test_readme_settings_table_shows_the_defaults() -> None:
    table = README.read_text().split("| variable | default | meaning |", 1)[1]
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), table.splitlines()[2:]))
    defaults = Settings()
    checked = 0
    for row in rows:
        names_cell, values_cell = (cell.strip() for cell in row.strip("|").split("|")[:2])
        names = re.findall(r"`(NEGSTREAM_[A-Z0-9_]+)`", names_cell)
        values = [value.strip().strip("`") for value in values_cell.split(" / ")]
        assert len(names) == len(values), row
        for name, shown in zip(names, values, strict=True):
            field = name.removeprefix(PREFIX).lower()
            parsed = Settings.from_env({name: shown})
            assert getattr(parsed, field) == getattr(defaults, field), f"{name}: README {shown}"
            checked += 1
    assert checked >= 10


def test_dockerfile_copies_every_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\S+) ", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE))
    for pattern in packages:
        assert pattern.rstrip("*") in copied, f"the image lacks the {pattern} package"


def test_dockerfile_installs_cpu_torch_and_runs_the_worker() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert "torch==2.13.0" in dockerfile
    assert 'CMD ["negstream", "worker"]' in dockerfile
    for source in re.findall(r"^COPY (\S+)", dockerfile, flags=re.MULTILINE):
        assert (ROOT / source).exists(), source


# --- Kubernetes -------------------------------------------------------------------------


def test_k8s_has_the_required_kinds() -> None:
    kinds = {doc["kind"] for doc in _k8s_documents()}
    assert {"ConfigMap", "Secret", "StatefulSet", "Service", "PodDisruptionBudget"} <= kinds


def test_kustomization_lists_existing_files() -> None:
    kustomization = _load(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"]


def test_k8s_configmap_is_valid_settings() -> None:
    (configmap,) = [doc for doc in _k8s_documents() if doc["kind"] == "ConfigMap"]
    environment = {key: str(value) for key, value in configmap["data"].items()}
    _assert_valid_settings(environment)
    settings = Settings.from_env(environment)
    assert settings.metrics_host == "0.0.0.0" and settings.replication_factor == 3
    (secret,) = [doc for doc in _k8s_documents() if doc["kind"] == "Secret"]
    _assert_valid_settings({key: str(value) for key, value in secret["stringData"].items()})


def test_k8s_statefulset() -> None:
    docs = _k8s_documents()
    (configmap,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    (statefulset,) = _k8s_of(docs, "StatefulSet", "worker")
    (service,) = _k8s_of(docs, "Service", "worker")
    (budget,) = [doc for doc in docs if doc["kind"] == "PodDisruptionBudget"]
    spec = statefulset["spec"]
    settings = Settings.from_env({k: str(v) for k, v in configmap["data"].items()})
    assert 1 <= spec["replicas"] <= settings.partitions
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = spec["template"]["metadata"]["labels"]
    for selector in (spec["selector"]["matchLabels"], service["spec"]["selector"],
                     budget["spec"]["selector"]["matchLabels"]):  # fmt: skip
        assert selector.items() <= pod_labels.items()
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.session_timeout_s
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == settings.metrics_port
    for probe in ("livenessProbe", "readinessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/metrics" and check["port"] in ("metrics", settings.metrics_port)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == settings.data_dir
    references = {
        ref["configMapRef"]["name"] for ref in container["envFrom"] if "configMapRef" in ref
    }
    assert configmap["metadata"]["name"] in references


def test_no_yaml_file_holds_tabs() -> None:
    # YAML forbids tab indentation; an editor that inserts one breaks a file silently.
    for path in _yaml_files():
        assert "\t" not in path.read_text(), path


def test_deploy_readme_covers_the_basics() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for needle in ("docker compose", "kubectl apply -k", "NEGSTREAM_BROKER_URL", "3000"):
        assert needle in readme, needle


def test_k8s_trainers_are_the_ranks_of_one_model() -> None:
    docs = _k8s_documents()
    (configmap,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    (statefulset,) = _k8s_of(docs, "StatefulSet", "trainer")
    (service,) = _k8s_of(docs, "Service", "trainer")
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["negstream", "trainer"]
    values = {e["name"]: e.get("value") for e in container["env"]}
    sources = {e["name"]: e.get("valueFrom") for e in container["env"]}
    # Pod i is rank i of as many ranks as replicas, and rank 0 is where they meet.
    assert int(values["NEGSTREAM_TRAINER_WORLD"]) == spec["replicas"]
    assert sources["NEGSTREAM_TRAINER_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    name, namespace = statefulset["metadata"]["name"], statefulset["metadata"]["namespace"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    rendezvous = f"tcp://{name}-0.{spec['serviceName']}.{namespace}.svc:{ports['rendezvous']}"
    assert values["NEGSTREAM_TRAINER_RENDEZVOUS"] == rendezvous
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {k: str(v) for k, v in configmap["data"].items()}
    env |= {k: v for k, v in values.items() if v is not None} | {"NEGSTREAM_TRAINER_RANK": "0"}
    settings = Settings.from_env(env)
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == settings.data_dir
