"""The worker's start and stop without a broker: a bad broker URL is a one-line error, and
the shutdown watchdog ends a stop that hangs, naming what it abandoned."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from streams.settings import PREFIX

#: A stop that hangs in a service, with a non-daemon thread still running (as the input
#: flush and the fast lane do with the broker gone).
HANGING_STOP = textwrap.dedent(
    """
    import asyncio, logging, signal, threading
    import mode
    from negstream.worker import ShutdownWatchdog

    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    class OutputFlush(mode.Service):
        async def on_stop(self):
            await asyncio.sleep(3600)

    class Root(mode.Service):
        def on_init_dependencies(self):
            return [OutputFlush()]

    async def main():
        root = Root()
        await root.start()
        threading.Thread(target=threading.Event().wait, name="lane-thread").start()
        ShutdownWatchdog(root, grace_s=0.5).arm(signal.SIGTERM)
        await root.stop()

    asyncio.run(main())
    print("stopped cleanly")
    """
)


def test_a_non_kafka_broker_url_is_a_one_line_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env["NEGSTREAM_BROKER_URL"] = "http://x"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "negstream", "worker"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "NEGSTREAM_BROKER_URL='http://x'" in lines[0] and "kafka://" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert elapsed < 10, f"took {elapsed:.1f}s"


def test_the_watchdog_ends_a_hanging_stop_and_names_what_it_abandoned() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", HANGING_STOP], capture_output=True, text=True, timeout=60
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 128 + 15  # SIGTERM's conventional status
    assert "stopped cleanly" not in result.stdout
    (line,) = [x for x in result.stderr.splitlines() if "still stopping" in x]
    assert "after SIGTERM" in line
    assert "stuck stopping: OutputFlush" in line
    assert "threads: lane-thread" in line
    assert "read again at restart" in line
    assert elapsed < 10, f"took {elapsed:.1f}s"  # a process start plus the 0.5 s grace
