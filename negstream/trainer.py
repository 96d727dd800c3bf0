"""The trainer process (``negstream trainer``): topics created, /metrics served, the shared
trainer run until SIGTERM/SIGINT, which it answers with a checkpoint."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

from prometheus_client import start_http_server

from agents.trainer_service import TrainerService
from model.config import resolve_device
from model.distributed import LOCAL, Collective, join
from negstream.worker import LOG_FORMAT, LOG_LEVELS, StopRequested, stop_on_signals
from streams.admin import ensure_topics
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Longest a stop may take after the first SIGTERM/SIGINT before the process exits anyway
#: (a checkpoint of the default model takes about a second; deployments allow 10 s).
STOP_GRACE_S = 9.0


def run_trainer(settings: Settings) -> int:
    """Create the topics, then learn and publish in the foreground until stopped."""
    level = LOG_LEVELS.get(settings.log_level.lower(), logging.INFO)
    logging.basicConfig(level=level, format=LOG_FORMAT)
    # aiokafka logs every failed fetch; the trainer logs what it does about them.
    logging.getLogger("aiokafka").setLevel(max(level, logging.WARNING))
    try:
        with stop_on_signals():
            ensure_topics(settings, timeout=None)
            service = TrainerService(settings, group=_group(settings))
    except StopRequested as stop:
        log.warning("negstream trainer: stopped by %s before it started", stop)
        return 0
    start_http_server(settings.metrics_port, addr=settings.metrics_host)
    print(
        f"negstream trainer: broker {settings.broker_url}, "
        f"metrics http://{settings.metrics_host}:{settings.metrics_port}/metrics",
        flush=True,
    )
    asyncio.run(_serve(service))
    return 0


def _group(settings: Settings) -> Collective:
    """This process alone, or its rank of NEGSTREAM_TRAINER_WORLD (waits for all to join)."""
    if settings.trainer_world == 1:
        return LOCAL
    log.info(
        "negstream trainer: rank %d of %d joining at %s",
        settings.trainer_rank, settings.trainer_world, settings.trainer_rendezvous,
    )  # fmt: skip
    return join(
        settings.trainer_rendezvous,
        settings.trainer_rank,
        settings.trainer_world,
        resolve_device(settings.device),
        settings.trainer_peer_timeout_s,
    )


async def _serve(service: TrainerService) -> None:
    loop = asyncio.get_running_loop()
    timer: list[threading.Timer] = []

    def stop(signum: int) -> None:
        if not timer:
            # With the broker gone a client's stop can wait for ever; the checkpoint was
            # written first, so exiting loses nothing.
            timer.append(threading.Timer(STOP_GRACE_S, _exit, args=(signum,)))
            timer[0].daemon = True
            timer[0].start()
        service.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    await service.run()


def _exit(signum: int) -> None:
    log.error(
        "negstream trainer: still stopping %gs after %s; exiting now",
        STOP_GRACE_S, signal.Signals(signum).name,
    )  # fmt: skip
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(128 + signum)
