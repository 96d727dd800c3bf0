"""Data-parallel learning: several trainer processes, one model.

Each rank of a ``torch.distributed`` process group learns from its own examples, and every
step of :meth:`model.online.OnlineModel.learn_many` exchanges what makes the step the one a
single process would take on all ranks' examples together, in two rounds:

- before the forward pass, every rank's sizes (examples and rows) and explicit negatives'
  weights: the loss is a mean over all ranks' rows, and a step with no examples anywhere is
  skipped by every rank, so ranks with and without examples stay in step;
- after the backward pass, one gather of every rank's gradients (dense ones are then added
  in rank order, sparse embedding ones concatenated: every rank updates the rows any rank
  touched), its wide batch (inputs, targets, weights, the deep part's logits, rate-table
  rows), folded by every rank into its regression and rate tables, and its embedding rows,
  so the rows marked for model updates are the whole model's changes.

The ranks start from the same state (rank 0's, broadcast) and apply the same values in the
same order, so their models stay equal bit for bit. Every rank must call ``learn_many``
the same number of times, with an empty batch when it has nothing.

:data:`LOCAL` is the group of one process: every exchange is the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["LOCAL", "Collective", "DataParallel", "gradients_of", "join", "set_gradients"]


class Collective:
    """The exchanges among the ranks; this base is one process alone."""

    rank = 0
    world = 1

    def gather_values(self, values: Sequence[float]) -> list[list[float]]:
        """Every rank's ``values`` (as many on each), in rank order."""
        return [list(values)]

    def gather_tensors(self, tensors: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Every rank's ``tensors``, in rank order. The ranks send the same number, of the
        same dtypes and trailing shapes; the first dimension may differ."""
        return [list(tensors)]

    def any(self, *flags: bool) -> list[bool]:
        """Each flag: whether any rank set it."""
        return list(flags)

    def gather_objects(self, value: Any) -> list[Any] | None:
        """On rank 0 every rank's ``value`` in rank order; None on the others."""
        return [value]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (picklable)."""
        return value

    def barrier(self) -> None:
        """Return once every rank has called it."""


LOCAL = Collective()


def gradients_of(
    dense: Sequence[nn.Parameter], sparse: Sequence[nn.Parameter]
) -> list[torch.Tensor]:
    """A rank's gradients as tensors to send: per sparse parameter its rows and values (an
    embedding's uncoalesced COO gradient; none: empty), then every dense gradient laid end to
    end (none: zeros)."""
    parts = []
    for param in sparse:
        if param.grad is None:
            parts += [param.new_zeros(0, dtype=torch.int64), param.new_zeros((0, *param.shape[1:]))]
        else:
            parts += [param.grad._indices()[0], param.grad._values()]
    flat = [
        param.new_zeros(param.numel()) if param.grad is None else param.grad.reshape(-1)
        for param in dense
    ]
    return [*parts, torch.cat(flat) if flat else torch.zeros(0)]


def set_gradients(
    dense: Sequence[nn.Parameter],
    sparse: Sequence[nn.Parameter],
    every_rank: Sequence[Sequence[torch.Tensor]],
) -> None:
    """Set each parameter's gradient to the ranks' sum, from every rank's
    :func:`gradients_of`: sparse rows and values concatenated in rank order, dense ones
    added in rank order (the same result on every rank)."""
    for index, param in enumerate(sparse):
        rows = torch.cat([parts[2 * index] for parts in every_rank])
        values = torch.cat([parts[2 * index + 1] for parts in every_rank])
        param.grad = torch.sparse_coo_tensor(
            rows.unsqueeze(0), values, param.shape, check_invariants=False
        )
    total = every_rank[0][2 * len(sparse)].clone()
    for parts in every_rank[1:]:
        total += parts[2 * len(sparse)]
    start = 0
    for param in dense:
        param.grad = total[start : start + param.numel()].view_as(param)
        start += param.numel()


class DataParallel(Collective):
    """The exchanges over the default ``torch.distributed`` process group (see :func:`join`).

    Parameters
    ----------
    device
        Where the exchanged tensors live: the model's device (cuda with nccl, cpu with gloo).
    """

    def __init__(self, device: torch.device) -> None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call join() first")
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.device = device

    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        every = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(every, tensor)
        return every

    def gather_values(self, values: Sequence[float]) -> list[list[float]]:
        mine = torch.tensor(values, dtype=torch.float64, device=self.device)
        return [part.tolist() for part in self._all_gather(mine)]

    def gather_tensors(self, tensors: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        # Two exchanges whatever the number of tensors: each rank's first dimensions, then
        # every rank's tensors as one buffer of bytes (padded to the longest rank's).
        tensors = [tensor.detach().contiguous() for tensor in tensors]
        firsts = torch.tensor([t.shape[0] for t in tensors], dtype=torch.int64, device=self.device)
        shapes = [part.tolist() for part in self._all_gather(firsts)]
        sizes = [
            [
                first * math.prod(tensor.shape[1:]) * tensor.element_size()
                for first, tensor in zip(ranks, tensors, strict=True)
            ]
            for ranks in shapes
        ]
        longest = max(sum(rank) for rank in sizes)
        buffer = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        if tensors:
            mine = torch.cat([tensor.reshape(-1).view(torch.uint8) for tensor in tensors])
            buffer[: mine.numel()] = mine
        every_rank = []
        for rank, part in enumerate(self._all_gather(buffer)):
            received, start = [], 0
            for first, size, tensor in zip(shapes[rank], sizes[rank], tensors, strict=True):
                # A copy: a view of the buffer need not be aligned for the dtype.
                raw = part[start : start + size].clone()
                received.append(raw.view(tensor.dtype).reshape(first, *tensor.shape[1:]))
                start += size
            every_rank.append(received)
        return every_rank

    def any(self, *flags: bool) -> list[bool]:
        raised = torch.tensor([int(flag) for flag in flags], dtype=torch.int64, device=self.device)
        dist.all_reduce(raised, op=dist.ReduceOp.MAX)
        return [bool(value) for value in raised.tolist()]

    def gather_objects(self, value: Any) -> list[Any] | None:
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, value)
        return every if self.rank == 0 else None

    def broadcast(self, value: Any) -> Any:
        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()


def join(
    address: str, rank: int, world: int, device: torch.device, timeout_s: float
) -> DataParallel:
    """Join the process group of ``world`` trainers at ``address`` (``tcp://host:port``, rank
    0's; every rank waits until all have joined) as ``rank``: gloo on cpu, nccl on cuda.
    A collective that waits longer than ``timeout_s`` for a rank raises."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of {world}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method=address,
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )
    return DataParallel(device)
