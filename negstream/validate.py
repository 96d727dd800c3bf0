"""``negstream validate``: which events of a replay file the worker would dead-letter, and why."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from schemas.validation import ValidationError, decode_feedback, decode_impression
from streams.settings import Settings

#: The worker's decoder of each input topic (what ``agents.state.ingest.decode_one`` picks;
#: importing the agents would load Faust and torch into a command producers run in CI).
DECODERS = {"impressions": decode_impression, "negative-feedback": decode_feedback}


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a replay file as ``negstream replay`` would send it."""

    line: int
    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event the worker would dead-letter (or one replay could not send to an input)."""

    line: int
    topic: str
    reason: str
    detail: str


def read_jsonl(handle: IO[bytes]) -> Iterator[Event | Rejection]:
    """Events of replay JSONL, read as :func:`negstream.producer.read_event_file` reads them.

    A line that is not a ``{"topic", "key", "value"}`` object is sent as raw bytes to
    ``impressions``, so the worker judges it there. A topic other than the inputs, or a key
    that is not a string, is a fault of the file (``unknown_topic``, ``bad_key``).
    """
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            topic, key, value = record["topic"], record.get("key"), record["value"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            yield Event(number, "impressions", None, line.rstrip(b"\n"))
            continue
        yield _event(number, topic, key, value)


def read_csv(path: str) -> Iterator[Event | Rejection]:
    """Events of a replay CSV file; its header is line 1."""
    from negstream.producer import read_event_file

    for number, (topic, key, value) in enumerate(read_event_file(path), start=2):
        yield _event(number, topic, key, value)


def _event(number: int, topic: Any, key: Any, value: Any) -> Event | Rejection:
    if topic not in DECODERS:
        detail = f"topic {topic!r} is not one of {list(DECODERS)}"
        return Rejection(number, str(topic), "unknown_topic", detail)
    if key is not None and not isinstance(key, str):
        return Rejection(number, topic, "bad_key", f"key {key!r} is not a string or null")
    encoded = None if key is None else key.encode()
    return Event(number, topic, encoded, value if isinstance(value, bytes) else orjson.dumps(value))


def worker_outcomes(
    events: Iterable[Event | Rejection], max_bytes: int, latest: float | None
) -> Iterator[Event | Rejection]:
    """Each event the worker accepts, or its :class:`Rejection` with the worker's reason."""
    for event in events:
        if isinstance(event, Rejection):
            yield event
            continue
        try:
            DECODERS[event.topic](event.value, event.key, max_bytes, latest)
        except ValidationError as error:
            yield Rejection(event.line, event.topic, error.reason, error.detail)
        else:
            yield event


def add_parser(subparsers: Any) -> None:
    """Register ``validate`` on the command line's subparsers."""
    p = subparsers.add_parser(
        "validate",
        help="check a replay file's events as the worker would; exit 1 if any is rejected",
        description="Print each event the worker would dead-letter, with its line number and "
        "reason, then a summary. Exit status 1 when any event is rejected, else 0.",
    )
    p.add_argument(
        "file",
        help="JSONL lines {topic,key,value} (the replay format), a CSV file with a topic "
        "column, or - for stdin",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=None,
        help="largest payload accepted "
        f"(default: NEGSTREAM_MAX_PAYLOAD_BYTES, else {Settings.max_payload_bytes})",
    )
    p.add_argument(
        "--max-future-s",
        type=float,
        default=None,
        help="latest event time accepted, in seconds after now; inf turns the check off "
        f"(default: NEGSTREAM_MAX_FUTURE_S, else {Settings.max_future_s:g})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check ``args.file``; print one line per rejected event and a summary."""
    settings = Settings.from_env(os.environ)
    max_bytes = settings.max_payload_bytes if args.max_bytes is None else args.max_bytes
    future = settings.max_future_s if args.max_future_s is None else args.max_future_s
    latest = time.time() + future
    if args.file == "-":
        name, events = "<stdin>", read_jsonl(sys.stdin.buffer)
        return report(name, worker_outcomes(events, max_bytes, latest), sys.stdout)
    if not os.path.exists(args.file):
        print(f"negstream validate: no such file: {args.file}", file=sys.stderr)
        return 2
    if args.file.endswith(".csv"):
        return report(
            args.file, worker_outcomes(read_csv(args.file), max_bytes, latest), sys.stdout
        )
    with open(args.file, "rb") as handle:
        return report(args.file, worker_outcomes(read_jsonl(handle), max_bytes, latest), sys.stdout)


def report(name: str, outcomes: Iterable[Event | Rejection], out: IO[str]) -> int:
    """Write the rejections and a summary to ``out``; the exit status (1 if any rejected)."""
    reasons: Counter[str] = Counter()
    checked = unkeyed = 0
    for outcome in outcomes:
        checked += 1
        if isinstance(outcome, Rejection):
            reasons[outcome.reason] += 1
            out.write(f"{name}:{outcome.line}: {outcome.topic}: {outcome.reason}: ")
            out.write(f"{outcome.detail}\n")
        elif outcome.key is None:
            unkeyed += 1
    rejected = sum(reasons.values())
    summary = f"{name}: {checked} events, {checked - rejected} accepted, {rejected} rejected"
    if reasons:
        summary += " (" + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) + ")"
    if unkeyed:
        summary += f"; {unkeyed} accepted without a key (the worker re-keys them by user_id)"
    out.write(summary + "\n")
    return 1 if rejected else 0
