"""``make bench``: run every ``tests/benchmarks/bench_*.py`` module's ``main()`` in turn."""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def discover() -> list[str]:
    """Names of the benchmark modules (``bench_`` dropped), sorted, found by file name."""
    folder = Path(__file__).resolve().parent
    return sorted(path.stem.removeprefix("bench_") for path in folder.glob("bench_*.py"))


def run(name: str, quick: bool) -> None:
    """Import ``bench_<name>`` and call its ``main``, passing ``--quick`` where it takes argv."""
    module = importlib.import_module(f"tests.benchmarks.bench_{name}")
    argv = ["--quick"] if quick else []
    if inspect.signature(module.main).parameters:
        module.main(argv)
        return
    # A main() without argv parses sys.argv itself: hand it a clean one (it has no --quick).
    saved = sys.argv
    sys.argv = [f"bench_{name}.py"]
    try:
        module.main()
    finally:
        sys.argv = saved


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks (all by default); return the exit status."""
    names = discover()
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument("--only", action="append", choices=names, help="run only this one")
    parser.add_argument("--quick", action="store_true", help="smaller runs where supported")
    args = parser.parse_args(argv)
    selected = args.only or names
    for name in selected:
        print(f"\n=== bench_{name} ===", flush=True)
        started = time.perf_counter()
        run(name, args.quick)
        print(f"--- bench_{name}: {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
