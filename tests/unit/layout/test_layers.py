"""The package layers (README "Layout"), checked with ``ast`` over the real source tree."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("negstream", "simulator", "agents", "streams", "model", "schemas")
THIRD_PARTY_KAFKA = ("faust", "aiokafka", "kafka", "mode")

#: What each layer may import of the project's packages (``agents.state`` is its own layer).
ALLOWED = {
    "negstream": {
        "negstream",
        "simulator",
        "agents",
        "agents.state",
        "streams",
        "model",
        "schemas",
    },
    "agents": {"agents", "agents.state", "streams", "model", "schemas"},
    "agents.state": {"agents.state", "schemas"},
    "streams": {"streams", "schemas"},
    "simulator": {"simulator", "schemas"},
    "model": {"model"},
    "schemas": {"schemas"},
}


def _layer(module: str) -> str:
    return "agents.state" if module.startswith("agents.state") else module.split(".")[0]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _sources() -> list[tuple[str, Path]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found.append((module.removesuffix(".__init__"), path))
    return found


def test_every_layer_imports_only_what_it_may() -> None:
    wrong = []
    for module, path in _sources():
        layer = _layer(module)
        for name in _imports(path):
            target = name.split(".")[0]
            if target not in PACKAGES:
                continue
            target_layer = "agents.state" if name.startswith("agents.state") else target
            if name == "agents" or (name.startswith("agents.") and layer == "agents.state"):
                target_layer = _layer(name)
            if target_layer not in ALLOWED[layer]:
                wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_pure_per_user_logic_imports_no_kafka_client() -> None:
    wrong = [
        f"{module} imports {name}"
        for module, path in _sources()
        if _layer(module) == "agents.state"
        for name in _imports(path)
        if name.split(".")[0] in THIRD_PARTY_KAFKA
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_top_level_packages() -> None:
    graph: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for module, path in _sources():
        source = module.split(".")[0]
        for name in _imports(path):
            target = name.split(".")[0]
            if target in PACKAGES and target != source:
                graph[source].add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = [package for package in PACKAGES if reaches(package, package, {package})]
    assert not cycles, f"packages on an import cycle: {cycles}"


def test_private_faust_attributes_are_read_only_inside_streams() -> None:
    private = ("_committed_offset", "_recovery_ended_at", "_unacked_messages", ".data.get(")
    wrong = []
    for module, path in _sources():
        if _layer(module) == "streams":
            continue
        text = path.read_text()
        wrong += [f"{module}: {name}" for name in private if name in text]
    assert not wrong, "\n".join(wrong)


def test_nothing_patches_faust_at_import_time() -> None:
    # Patches are installed by streams.patches.install(), called by the worker.
    for module, path in _sources():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    assert not (
                        isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id in {"Consumer", "Fetcher", "AIOKafkaConsumerThread"}
                    ), f"{module} patches {target.value.id}.{target.attr} at import"  # fmt: skip


def test_the_model_takes_the_vocabulary_of_schemas() -> None:
    # model/ imports nothing of ours, so its defaults are its own copy: they must match.
    from model import config as model_config
    from schemas import kinds
    from schemas.events import FEATURE_NAMES

    assert model_config.EXPLICIT_NEGATIVE == kinds.EXPLICIT_NEGATIVE
    assert model_config.IMPLICIT_NEGATIVE == kinds.IMPLICIT_NEGATIVE
    assert model_config.ENGAGEMENT == kinds.POSITIVE
    assert model_config.NO_REACTION == kinds.NO_REACTION
    assert dict(model_config.DEFAULT_SEVERITY) == kinds.DEFAULT_SEVERITY
    assert model_config.DEFAULT_FEATURES == FEATURE_NAMES
    assert dict(model_config.ModelConfig().severity) == kinds.DEFAULT_SEVERITY


@pytest.mark.parametrize("name", ["window_short_s", "label_window_s", "dedup_max_per_user"])
def test_the_state_config_defaults_are_the_worker_settings_defaults(name: str) -> None:
    from agents.state.config import StateConfig
    from streams.settings import Settings

    fields = {spec.name for spec in dataclasses.fields(StateConfig) if spec.init}
    fields &= {spec.name for spec in dataclasses.fields(Settings)}
    assert name in fields
    assert all(getattr(StateConfig(), f) == getattr(Settings(), f) for f in fields)
