"""The command line: every subcommand exists and documents itself; schema export works."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from negstream.cli import build_parser, main
from streams.settings import Settings, SettingsError

SUBCOMMANDS = ("worker", "trainer", "demo", "broker", "simulate", "replay", "schema", "validate")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "negstream", *args], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_help_lists_every_subcommand() -> None:
    result = run("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([name, "--help"])
    assert exited.value.code == 0
    assert "usage: negstream " + name in capsys.readouterr().out


@pytest.mark.parametrize("topic", ["impressions", "negative-feedback"])
def test_schema_prints_json_schema(topic: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", topic]) == 0
    schema = orjson.loads(capsys.readouterr().out)
    assert schema["type"] == "object" and "user_id" in schema["required"]


def test_replay_of_a_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "/nonexistent/events.jsonl"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_settings_come_from_the_environment() -> None:
    settings = Settings.from_env({"NEGSTREAM_PARTITIONS": "8", "NEGSTREAM_DEVICE": "cpu"})
    assert settings.partitions == 8 and settings.device == "cpu"
    assert Settings.from_env({}) == Settings()
    with pytest.raises(SettingsError, match="NEGSTREAM_PARTITIONS"):
        Settings.from_env({"NEGSTREAM_PARTITIONS": "many"})
    with pytest.raises(SettingsError, match="NEGSTREAM_DEVICE"):
        Settings.from_env({"NEGSTREAM_DEVICE": "tpu"})


def test_bad_setting_exits_with_a_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "negstream", "worker"],
        capture_output=True, text=True, timeout=60,
        env={"NEGSTREAM_PARTITIONS": "zero", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "NEGSTREAM_PARTITIONS" in result.stderr
