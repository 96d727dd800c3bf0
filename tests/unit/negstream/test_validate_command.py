"""``negstream validate``: one line per event the worker would reject, a summary, an exit status.

(The command lives in ``negstream/validate.py``; it is tested here with the contract it reports.)
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from negstream import validate
from schemas.contract import DEFAULT_MAX_BYTES

NOW = time.time()
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "timestamp": NOW - 60}


def line(topic: str, key: Any, value: Any) -> bytes:
    return orjson.dumps({"topic": topic, "key": key, "value": value}) + b"\n"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="negstream")
    validate.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["validate", *argv])


def run(tmp_path: Path, content: bytes, *options: str, name: str = "events.jsonl") -> int:
    path = tmp_path / name
    path.write_bytes(content)
    args = parse(str(path), *options)
    return int(args.func(args))


@pytest.fixture(autouse=True)
def plain_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEGSTREAM_MAX_PAYLOAD_BYTES", raising=False)
    monkeypatch.delenv("NEGSTREAM_MAX_FUTURE_S", raising=False)


def test_reports_each_rejected_line_with_the_workers_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content = b"".join(
        [
            line("impressions", "u1", GOOD),
            line("negative-feedback", "u1", {**GOOD, "event_id": "e2", "kind": "meh"}),
            b"\n",  # blank lines are skipped but still counted as lines
            line("impressions", "u1", {**GOOD, "timestamp": "2026-01-01T00:00:00"}),
            line("impressions", "someone-else", GOOD),
            b"{not json\n",
            line("negative-feedback", None, {**GOOD, "event_id": "e3", "kind": "hide"}),
            line("scores", "u1", GOOD),
            line("impressions", 7, GOOD),
        ]
    )
    assert run(tmp_path, content) == 1
    name = str(tmp_path / "events.jsonl")
    lines = capsys.readouterr().out.splitlines()
    assert [entry.split(": ")[:3] for entry in lines[:-1]] == [
        [f"{name}:2", "negative-feedback", "unknown_kind"],
        [f"{name}:4", "impressions", "bad_value"],
        [f"{name}:5", "impressions", "key_mismatch"],
        [f"{name}:6", "impressions", "bad_json"],
        [f"{name}:8", "scores", "unknown_topic"],
        [f"{name}:9", "impressions", "bad_key"],
    ]
    assert lines[1].endswith("timestamp string needs a UTC offset (e.g. 'Z')")
    assert lines[-1] == (
        f"{name}: 8 events, 2 accepted, 6 rejected (bad_json 1, bad_key 1, bad_value 1, "
        "key_mismatch 1, unknown_kind 1, unknown_topic 1); 1 accepted without a key "
        "(the worker re-keys them by user_id)"
    )


def test_a_clean_file_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content = line("impressions", "u1", GOOD) + line("impressions", "u2", {**GOOD, "user_id": "u2"})
    assert run(tmp_path, content) == 0
    assert (
        capsys.readouterr().out
        == f"{tmp_path / 'events.jsonl'}: 2 events, 2 accepted, 0 rejected\n"
    )


def test_reads_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(line("impressions", "u1", {**GOOD, "timestamp": True})))
    monkeypatch.setattr(sys, "stdin", stdin)
    args = parse("-")
    assert args.func(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("<stdin>:1: impressions: wrong_type: ")
    assert out[1] == "<stdin>: 1 events, 0 accepted, 1 rejected (wrong_type 1)"


def test_the_clock_and_size_rules_follow_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    future = line("impressions", "u1", {**GOOD, "timestamp": NOW + 7200})
    assert run(tmp_path, future) == 1  # more than the default hour ahead
    assert "timestamp_out_of_range" in capsys.readouterr().out
    assert run(tmp_path, future, "--max-future-s", "inf") == 0
    assert run(tmp_path, future, "--max-future-s", "10800") == 0
    monkeypatch.setenv("NEGSTREAM_MAX_FUTURE_S", "10800")
    assert run(tmp_path, future) == 0
    capsys.readouterr()
    big = line("impressions", "u1", {**GOOD, "padding": "x" * DEFAULT_MAX_BYTES})
    assert run(tmp_path, big) == 1
    assert "oversize" in capsys.readouterr().out
    assert run(tmp_path, big, "--max-bytes", str(2 * DEFAULT_MAX_BYTES)) == 0


def test_reads_replay_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content = (
        "topic,event_id,user_id,item_id,kind,timestamp\n"
        f"negative-feedback,e1,u1,i1,hide,{NOW}\n"
        "negative-feedback,e2,u1,i1,hide,yesterday\n"
    ).encode()
    assert run(tmp_path, content, name="events.csv") == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path / 'events.csv'}:3: negative-feedback: bad_value: ")
    assert out[1].endswith(": 2 events, 1 accepted, 1 rejected (bad_value 1)")


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(str(tmp_path / "absent.jsonl"))
    assert args.func(args) == 2
    assert "no such file" in capsys.readouterr().err


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    usage = " ".join(capsys.readouterr().out.split())
    assert "NEGSTREAM_MAX_PAYLOAD_BYTES, else 65536" in usage
    assert "NEGSTREAM_MAX_FUTURE_S, else 3600" in usage
