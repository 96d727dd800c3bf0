"""The deep part: hashed id embeddings, user interactions and an MLP, plus id-cross biases.

It gives the residual logits on top of the wide part (:mod:`model.wide`), in
:data:`LOGITS` order, and starts at exactly zero, so a fresh model is its wide part alone.
"""

from __future__ import annotations

from typing import Final

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ID_FIELDS, ModelConfig

__all__ = ["LOGITS", "Network"]

#: The model's own output logits: any negative reaction, explicit given a negative one, and
#: engagement. :meth:`model.online.OnlineModel.predict_many` turns them into the heads.
LOGITS: Final = ("negative", "explicit_given_negative", "engagement")

_FIELDS = len(ID_FIELDS)
_NEGATIVE = LOGITS.index("negative")
_ENGAGEMENT = LOGITS.index("engagement")


class Network(nn.Module):
    """Hashed id embeddings, three user interactions, dense and wide inputs -> MLP + linear
    -> residual logits, plus a negative-logit bias of each hashed id cross.

    Parameters
    ----------
    config
        Sizes and initialisation.
    inputs
        Width of the wide part's inputs, also fed to the MLP.
    """

    negative: torch.Tensor

    def __init__(self, config: ModelConfig, inputs: int) -> None:
        super().__init__()
        # One table holds all four id fields (field f owns rows f*buckets .. (f+1)*buckets-1):
        # one lookup, one sparse gradient and one optimiser update a step instead of four,
        # which measured ~2x faster on a 2-core CPU. Row 0 of a field is its learned
        # "missing id" vector. sparse=True: a step touches ~4 * batch of 4 * buckets rows,
        # so dense gradients and dense optimiser updates would dominate.
        self.table = nn.Embedding(_FIELDS * config.buckets, config.embedding_dim, sparse=True)
        nn.init.normal_(self.table.weight, std=config.init_std)
        layers: list[nn.Module] = []
        width = _FIELDS * config.embedding_dim + _FIELDS - 1 + inputs
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        last = nn.Linear(width, len(LOGITS))
        # Zero output: the residual starts as a no-op and grows only as far as it helps.
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*layers, last)
        # The user x item/creator/category dot products also reach the logits linearly, with a
        # signed start (a high dot product means a likely negative and an unlikely
        # engagement), so the embeddings get a gradient from the first step.
        self.interactions = nn.Linear(_FIELDS - 1, len(LOGITS), bias=False)
        nn.init.zeros_(self.interactions.weight)
        with torch.no_grad():
            self.interactions.weight[_NEGATIVE] = config.interaction_init
            self.interactions.weight[_ENGAGEMENT] = -config.interaction_init
        # Negative-logit bias of each id cross (``cross_buckets`` rows per cross): a wide
        # model over hashed pairs, which learns "this user hides this creator" from one or two
        # reports. Zeros: it starts as a no-op, and a pair never seen adds nothing.
        rows = max(1, len(config.crosses) * config.cross_buckets)
        self.biases = nn.Embedding(rows, 1, sparse=True)
        nn.init.zeros_(self.biases.weight)
        negative = torch.zeros(1, len(LOGITS))
        negative[0, _NEGATIVE] = 1.0
        self.register_buffer("negative", negative, persistent=False)

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        """``[n, 4]`` table rows -> ``[n, 4, dim]`` embeddings (user, item, creator, category)."""
        return F.embedding(rows, self.table.weight, sparse=True)

    def forward(
        self,
        embedded: torch.Tensor,
        wide: torch.Tensor,
        bias_rows: torch.Tensor,
        rows: int | None = None,
    ) -> torch.Tensor:
        """Residual logits ``[n, len(LOGITS)]``; ``wide`` are the wide part's inputs and
        ``bias_rows`` the ``[n, crosses]`` rows of ``biases``. ``rows``: how many rows the
        loss is a mean over (all ranks' when data-parallel; default ``n``)."""
        # Dot products of the user with item, creator and category give the MLP "does this
        # user dislike this creator/topic" directly instead of making it learn multiplication.
        interactions = (embedded[:, :1] * embedded[:, 1:]).sum(2)
        features = torch.cat([embedded.flatten(1), interactions, wide], dim=1)
        logits: torch.Tensor = self.mlp(features) + self.interactions(interactions)
        biases = F.embedding(bias_rows, self.biases.weight, sparse=True).sum(1)
        return logits + per_example_gradient(biases, rows) * self.negative


def per_example_gradient(values: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """``values`` unchanged, but their gradient scaled by the batch size (``rows``, default
    ``values``' own).

    The loss is a batch mean, so a row's gradient is its example's ``(p - y) * weight`` over
    ``n``. Scaled back to per-example size, the biases' Adagrad (with its initial accumulator)
    steps in proportion to how wrong a pair was, as per-example logistic SGD would: a dislike
    moves its pair's bias ~20x further than an impression without reaction, where plain
    Adagrad's first step is ``lr`` for both.
    """
    scale = float(values.shape[0] if rows is None else rows)
    return values * scale - values.detach() * (scale - 1.0)
