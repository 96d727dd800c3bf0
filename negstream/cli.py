"""The ``negstream`` command line: worker, trainer, demo, broker, simulate, replay, schema."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from negstream import validate
from streams.settings import Settings, SettingsError

#: Impressions ``simulate`` generates in the uniform world when not told.
UNIFORM_IMPRESSIONS = 10_000


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    if getattr(args, "broker", None):
        overrides["broker_url"] = args.broker
    return Settings.from_env(os.environ, **overrides)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)  # a bad setting fails before Faust and torch are imported
    from negstream.worker import run_worker

    return run_worker(settings)


def cmd_trainer(args: argparse.Namespace) -> int:
    settings = _settings(args)  # a bad setting fails before torch is imported
    from negstream.trainer import run_trainer

    return run_trainer(settings)


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
    from simulator.stream import Simulator
    from simulator.worlds import world_config

    sizes = {"n_users": args.users, "n_items": args.items}
    config = world_config(
        args.world,
        seed=args.seed,
        malformed_rate=args.malformed_rate,
        duplicate_rate=args.duplicate_rate,
        # Only sizes given on the command line: each world has its own.
        **{name: value for name, value in sizes.items() if value is not None},
    )
    return Simulator(config)


def cmd_simulate(args: argparse.Namespace) -> int:
    from negstream.producer import Progress, send_all
    from simulator.stream import to_jsonl_lines
    from simulator.worlds import HEAVY_QUICK_IMPRESSIONS

    simulator = _simulator(args)
    impressions = args.impressions
    if impressions is None:
        impressions = HEAVY_QUICK_IMPRESSIONS if args.world == "heavy" else UNIFORM_IMPRESSIONS
    events = simulator.events(impressions)
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, except where there is none: an option without one
    says in its help what happens when it is not given."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors print its own usage: a subcommand's mistake shows
    that subcommand's usage, not the top level's, and every ``--help`` shows defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # argparse hands a subcommand's unknown arguments up to the top-level parser, which
        # then reports them with the top-level usage; report them here instead.
        parsed, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = CommandParser(
        prog="negstream",
        description="Streaming negative-feedback processor for search and recommendation. "
        "Settings come from NEGSTREAM_* environment variables (see README).",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=CommandParser
    )

    def broker_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--broker",
            help="Kafka URL, e.g. kafka://127.0.0.1:9092; NEGSTREAM_BROKER_URL when not given",
        )

    def simulation_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--world", choices=("uniform", "heavy"), default="uniform",
                       help="uniform: every user alike; heavy: Zipf users, power users, "
                            "bursts, months of event time, skew between the topics")  # fmt: skip
        p.add_argument("--users", type=int, default=None,
                       help="simulated users (None: 1000 uniform, 10000 heavy)")  # fmt: skip
        p.add_argument("--items", type=int, default=None,
                       help="simulated items (None: 5000 uniform, 20000 heavy)")  # fmt: skip
        p.add_argument("--seed", type=int, default=0, help="random seed")
        p.add_argument("--malformed-rate", type=float, default=0.0,
                       help="fraction of malformed messages to inject")  # fmt: skip
        p.add_argument("--duplicate-rate", type=float, default=0.0,
                       help="fraction of events re-sent as duplicates")  # fmt: skip

    p = sub.add_parser("worker", help="run a stream-processing worker")
    broker_option(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "trainer",
        help="train one model on every partition of training-examples and publish it to "
        "model-updates for workers with NEGSTREAM_MODEL_SOURCE=remote",
    )
    broker_option(p)
    p.set_defaults(func=cmd_trainer)

    p = sub.add_parser("demo", help="embedded broker + worker + simulated stream, printed live")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds; 0 runs until Ctrl-C")  # fmt: skip
    p.add_argument("--rate", type=float, default=300.0, help="simulated events/s")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="port of the worker's /metrics; 0 picks a free one")  # fmt: skip
    p.add_argument("--status-every", type=float, default=5.0,
                   help="seconds between status lines (rates, lag, latency, model)")  # fmt: skip
    p.add_argument("--lines", type=int, default=3,
                   help="most lines of each kind (suppressions, scores, dead letters, drift) "
                        "between two status lines; the rest are counted")  # fmt: skip
    p.add_argument("--keep", action="store_true",
                   help="keep the demo's directory (logs, checkpoints) at exit")  # fmt: skip
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu)")
    p.add_argument("--host", default="127.0.0.1", help="listen address")
    p.add_argument("--port", type=int, default=9092, help="listen port")
    p.add_argument("--storage", default="memory://tansu/",
                   help="memory://tansu/, or s3://bucket/ (durable)")  # fmt: skip
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("simulate", help="produce a simulated event stream")
    broker_option(p)
    simulation_options(p)
    p.add_argument("--impressions", type=int, default=None,
                   help=f"impressions to generate (default: {UNIFORM_IMPRESSIONS} uniform, "
                        "50000 heavy, spread over its 90 days)")  # fmt: skip
    p.add_argument("--rate", type=float, default=None,
                   help="messages/s; as fast as possible when not given")  # fmt: skip
    p.add_argument("--output", help="write JSONL to this file instead of producing")
    p.add_argument("--ground-truth", help="also write the true probabilities as JSONL here")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("replay", help="produce the events of a JSONL or CSV file")
    broker_option(p)
    p.add_argument("file", help="JSONL lines {topic,key,value}, or CSV with a topic column")
    p.add_argument("--rate", type=float, default=None,
                   help="messages/s; as fast as possible when not given")  # fmt: skip
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("schema", help="print the JSON Schema of an input topic's values")
    p.add_argument("topic", choices=["impressions", "negative-feedback"])
    p.set_defaults(func=cmd_schema)

    validate.add_parser(sub)
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
