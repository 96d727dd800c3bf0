"""``negstream worker`` with default settings starts in an empty directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port, wait_for_port
from streams.settings import PREFIX

pytestmark = pytest.mark.broker


def test_a_worker_with_default_settings_starts_in_an_empty_directory(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    # Only what points it at the test's broker, and keeps it apart from other tests, is set;
    # every other setting (the data dir "negstream-data" among them) is the default.
    tag = uuid.uuid4().hex[:8]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env |= {
        PREFIX + "BROKER_URL": broker.url,
        PREFIX + "METRICS_PORT": str(port),
        PREFIX + "APP_ID": f"negstream-{tag}",
        PREFIX + "TOPIC_PREFIX": f"t{tag}-",
    }
    assert list(tmp_path.iterdir()) == []
    log = tmp_path.parent / f"worker-{tag}.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "negstream", "worker"], cwd=tmp_path, env=env,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert worker.poll() is None, f"the worker exited:\n{log.read_text()[-3000:]}"
            try:
                wait_for_port("127.0.0.1", port, 0.5)
                break
            except Exception:
                assert time.monotonic() < deadline, f"not up:\n{log.read_text()[-3000:]}"
        assert (tmp_path / "negstream-data" / "faust").is_dir()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    assert "Traceback" not in log.read_text()
