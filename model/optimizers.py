"""The optimisers of an :class:`~model.online.OnlineModel`'s network, as its config names them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model.config import ModelConfig
from model.lazy_adagrad import LazyAdagrad
from model.lazy_adam import LazyAdam

__all__ = ["network_optimizers"]


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    try:
        # fused: one kernel for all MLP tensors instead of a Python loop over them (~1 ms a
        # step on the benchmark CPU); torch < 2.4 has no fused Adam on cpu.
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr)


def network_optimizers(
    config: ModelConfig,
    sparse: list[nn.Parameter],
    biases: Sequence[nn.Parameter],
    dense: list[nn.Parameter],
) -> list[torch.optim.Optimizer]:
    """The optimisers of the embedding tables (``sparse``), the cross biases and the
    ``dense`` layers, as ``config.optimizer`` names them (see :class:`model.config.ModelConfig`)."""
    # Cross biases always use (lazy, sparse) Adagrad at their own ``wide_lr`` and initial
    # accumulator, whichever optimiser the embeddings use.
    bias_group = {
        "params": list(biases),
        "lr": config.wide_lr,
        "initial_accumulator_value": config.wide_initial_accumulator,
    }
    lr = config.lr
    if config.optimizer == "adagrad+adam":
        return [
            LazyAdagrad([{"params": sparse}, bias_group], lr=config.embedding_lr),
            _adam(dense, lr),
        ]
    if config.optimizer == "adam":
        return [LazyAdam(sparse, lr=lr), LazyAdagrad([bias_group]), _adam(dense, lr)]
    return [torch.optim.Adagrad(sparse + dense, lr=lr), LazyAdagrad([bias_group])]
