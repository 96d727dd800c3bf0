"""The ``negstream`` command line: worker, demo, broker, simulate, replay, schema."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from streams.settings import Settings, SettingsError


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    if getattr(args, "broker", None):
        overrides["broker_url"] = args.broker
    return Settings.from_env(os.environ, **overrides)


def cmd_worker(args: argparse.Namespace) -> int:
    from negstream.worker import run_worker

    run_worker(_settings(args))
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from streams.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port, host=args.host, storage=args.storage)
    broker.start()
    print(f"embedded broker (Tansu) on {broker.url}  storage {args.storage}; Ctrl-C stops it")
    print(f"point workers at it with NEGSTREAM_BROKER_URL={broker.url}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        broker.stop()
    return 0


def _simulator(args: argparse.Namespace) -> Any:
    from simulator.stream import Simulator, SimulatorConfig

    config = SimulatorConfig(
        n_users=args.users,
        n_items=args.items,
        seed=args.seed,
        malformed_rate=args.malformed_rate,
        duplicate_rate=args.duplicate_rate,
    )
    return Simulator(config)


def cmd_simulate(args: argparse.Namespace) -> int:
    from negstream.producer import Progress, send_all
    from simulator.stream import to_jsonl_lines

    simulator = _simulator(args)
    events = simulator.events(args.impressions)
    if args.output:
        with open(args.output, "wb") as handle:
            handle.writelines(to_jsonl_lines(events))
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        settings = _settings(args)
        messages = ((e.topic, e.key, e.value) for e in events)
        sent = send_all(settings, messages, rate=args.rate, progress=Progress("simulate"))
        print(f"sent {sent} messages to {settings.broker_url}", file=sys.stderr)
    if args.ground_truth:
        rows = simulator.write_ground_truth(args.ground_truth)
        print(f"wrote {rows} ground-truth rows to {args.ground_truth}", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from negstream.producer import Progress, count_lines, read_event_file, send_all

    if not os.path.exists(args.file):
        print(f"negstream replay: no such file: {args.file}", file=sys.stderr)
        return 2
    settings = _settings(args)
    progress = Progress(f"replay {os.path.basename(args.file)}", total=count_lines(args.file))
    sent = send_all(settings, read_event_file(args.file), rate=args.rate, progress=progress)
    print(f"replayed {sent} events to {settings.broker_url}", file=sys.stderr)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from schemas.jsonschema import SCHEMAS

    sys.stdout.write(orjson.dumps(SCHEMAS[args.topic](), option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from negstream.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="negstream",
        description="Streaming negative-feedback processor for search and recommendation. "
        "Settings come from NEGSTREAM_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def broker_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--broker",
            help="Kafka URL, e.g. kafka://127.0.0.1:9092 (default: NEGSTREAM_BROKER_URL)",
        )

    def simulation_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--users", type=int, default=1000, help="simulated users (default 1000)")
        p.add_argument("--items", type=int, default=5000, help="simulated items (default 5000)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--malformed-rate", type=float, default=0.0,
                       help="fraction of malformed messages to inject (default 0)")  # fmt: skip
        p.add_argument("--duplicate-rate", type=float, default=0.0,
                       help="fraction of events re-sent as duplicates (default 0)")  # fmt: skip

    p = sub.add_parser("worker", help="run a stream-processing worker")
    broker_option(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("demo", help="embedded broker + worker + simulated stream, printed live")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (default: run until Ctrl-C)")  # fmt: skip
    p.add_argument("--rate", type=float, default=300.0, help="simulated events/s (default 300)")
    p.add_argument("--metrics-port", type=int, default=0, help="port of /metrics (default free)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9092, help="listen port (default 9092)")
    p.add_argument("--storage", default="memory://tansu/",
                   help="memory://tansu/ (default) or s3://bucket/ (durable)")  # fmt: skip
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("simulate", help="produce a simulated event stream")
    broker_option(p)
    simulation_options(p)
    p.add_argument("--impressions", type=int, default=10_000, help="impressions to generate")
    p.add_argument("--rate", type=float, default=None,
                   help="messages/s (default: as fast as possible)")  # fmt: skip
    p.add_argument("--output", help="write JSONL to this file instead of producing")
    p.add_argument("--ground-truth", help="also write the true probabilities as JSONL here")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("replay", help="produce the events of a JSONL or CSV file")
    broker_option(p)
    p.add_argument("file", help="JSONL lines {topic,key,value}, or CSV with a topic column")
    p.add_argument("--rate", type=float, default=None, help="messages/s (default: fastest)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("schema", help="print the JSON Schema of an input topic's values")
    p.add_argument("topic", choices=["impressions", "negative-feedback"])
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``negstream`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as error:
        print(f"negstream: bad setting: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
