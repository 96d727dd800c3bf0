"""Data-parallel learning in separate processes, one per rank, for the tests.

:func:`run_ranks` starts ``world`` spawned processes that join one gloo group on this
machine; each runs a function of this module as its rank and saves what it returns.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from model import ModelConfig, OnlineModel
from model.distributed import join
from model.touched import TouchedRows
from streams.broker import free_port

#: Longest a rank waits for another in one exchange before it fails the test.
TIMEOUT_S = 60.0


def free_address() -> str:
    """A ``tcp://127.0.0.1:port`` rendezvous on a port free now."""
    return f"tcp://127.0.0.1:{free_port()}"


def learn_steps(
    rank: int,
    world: int,
    address: str,
    configs: Sequence[dict[str, Any]],
    steps: Sequence[Sequence[Any]],
) -> list[dict[str, Any]]:
    """For each of ``configs``, a model on which rank ``rank`` learns ``steps[i][rank]`` at
    step ``i`` (an empty list: nothing), with rows marked: its state and its marked rows."""
    torch.set_num_threads(1)
    group = join(address, rank, world, torch.device("cpu"), TIMEOUT_S)
    results = []
    for config in configs:
        model = OnlineModel(ModelConfig.from_dict(config), changes=TouchedRows(), group=group)
        for step in steps:
            model.learn_many(list(step[rank]))
        assert model.changes is not None
        _, touched = model.changes.take(model.version)
        results.append({"state": model.state_dict(), "touched": touched})
    return results


def _rank(
    target: Callable[..., Any],
    rank: int,
    world: int,
    address: str,
    out: Path,
    args: tuple[Any, ...],
) -> None:
    result = target(rank, world, address, *args)
    torch.save(result, out / f"rank-{rank}.pt")
    torch.distributed.destroy_process_group()


def run_ranks(
    target: Callable[..., Any], world: int, out: Path, *args: Any, timeout_s: float = 180.0
) -> list[Any]:
    """Each rank's return value of ``target(rank, world, address, *args)``, run in ``world``
    spawned processes; a rank that fails or outlasts ``timeout_s`` raises."""
    context = multiprocessing.get_context("spawn")
    address = free_address()
    processes = [
        context.Process(target=_rank, args=(target, rank, world, address, out, args))
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout_s)
            if process.exitcode != 0:
                raise RuntimeError(f"rank process {process.name} ended with {process.exitcode}")
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out / f"rank-{rank}.pt", weights_only=False) for rank in range(world)]
