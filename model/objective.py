"""The objective over the model's logits: their targets and loss weights, the loss, the heads."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from model.config import HEADS
from model.network import LOGITS

__all__ = ["heads_array", "heads_of", "internal_targets", "internal_weights", "weighted_loss"]

_EXPLICIT = HEADS.index("explicit_negative")
_IMPLICIT = HEADS.index("implicit_negative")
_ENGAGEMENT = HEADS.index("engagement")
_NEGATIVE = LOGITS.index("negative")
_EXPLICIT_GIVEN_NEGATIVE = LOGITS.index("explicit_given_negative")
_ENGAGED = LOGITS.index("engagement")
#: Logits are clipped here before becoming probabilities, which stay inside (0, 1) in float32.
_LOGIT_LIMIT = 15.0


def internal_targets(targets: torch.Tensor) -> torch.Tensor:
    """Head targets ``[n, HEADS]`` -> targets of :data:`~model.network.LOGITS`."""
    negative = torch.maximum(targets[:, _EXPLICIT], targets[:, _IMPLICIT])
    return torch.stack([negative, targets[:, _EXPLICIT], targets[:, _ENGAGEMENT]], dim=1)


def internal_weights(
    internal: torch.Tensor, weights: torch.Tensor, mean: float | None = None
) -> torch.Tensor:
    """Loss weight of each row and logit ``[n, len(LOGITS)]``.

    Severity (the example's ``weight``) weighs the explicit-given-negative logit's positives,
    rescaled to mean 1 over the batch's explicit negatives (``mean``: their mean weight over
    every rank's batch when data-parallel): a report pulls harder than a
    dislike, but explicit negatives as a whole pull as hard as unweighted ones, so the head
    stays calibrated. That logit learns from negative rows only. The negative and engagement
    logits weigh every row 1: severity on p(negative) itself cost 0.003-0.006 AUC of "any
    negative" on both simulated worlds (it ranks a report above a skip, not one user's
    negatives above another's).
    """
    negative, explicit = internal[:, _NEGATIVE], internal[:, _EXPLICIT_GIVEN_NEGATIVE]
    if mean is None:
        # Sums, not boolean indexing: no host sync a step; a batch without positives scales by 1.
        local = (weights * explicit).sum() / explicit.sum().clamp_min(1.0)
        severity = explicit * (weights / local.clamp_min(1e-12) - 1.0) + 1.0
    else:
        severity = explicit * (weights / max(mean, 1e-12) - 1.0) + 1.0
    ones = torch.ones_like(negative)
    return torch.stack([ones, negative * severity, ones], dim=1)


def weighted_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, rows: int | None = None
) -> Any:
    """Mean weighted loss of a row; ``rows``: the rows of every rank when data-parallel (the
    ranks' gradients then sum to the gradient of the mean over all of them)."""
    per_logit = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    per_row = (per_logit * weights).sum(1)
    return per_row.mean() if rows is None else per_row.sum() / rows


def heads_of(logits: torch.Tensor) -> torch.Tensor:
    """Per-head probabilities ``[n, HEADS]`` of :data:`~model.network.LOGITS` logits.

    With ``q = p(negative)`` and ``r = p(explicit | negative)``: explicit ``q r``, implicit
    ``q (1 - r) / (1 - q r)`` (implicit given no explicit one), so that
    ``1 - (1 - explicit)(1 - implicit)``, :func:`~model.config.p_negative`, is ``q`` exactly.

    Examples
    --------
    >>> heads = heads_of(torch.tensor([[0.0, 0.0, 1.0]]))
    >>> [round(p, 4) for p in heads[0].tolist()]
    [0.25, 0.3333, 0.7311]
    >>> round(float(1 - (1 - heads[0, 0]) * (1 - heads[0, 1])), 4)
    0.5
    """
    z = logits.to(torch.float64).clamp(-_LOGIT_LIMIT, _LOGIT_LIMIT)
    q = torch.sigmoid(z[:, _NEGATIVE])
    explicit = q * torch.sigmoid(z[:, _EXPLICIT_GIVEN_NEGATIVE])
    implicit = q * torch.sigmoid(-z[:, _EXPLICIT_GIVEN_NEGATIVE]) / (1.0 - explicit)
    engagement = torch.sigmoid(z[:, _ENGAGED])
    columns = {_EXPLICIT: explicit, _IMPLICIT: implicit, _ENGAGEMENT: engagement}
    return torch.stack([columns[index] for index in range(len(HEADS))], dim=1)


def heads_array(logits: torch.Tensor) -> npt.NDArray[np.float32]:
    """:func:`heads_of` the (detached) ``logits``, as a ``float32`` array on the host."""
    return heads_of(logits).to("cpu").numpy().astype(np.float32)
