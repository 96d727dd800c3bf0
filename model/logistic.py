"""Online logistic regression by Laplace updates: a few dense inputs, near the batch fit fast.

Each batch's weights minimise its log loss plus the quadratic that the earlier batches left
(their curvature ``H = ridge + sum X' diag(p(1-p)) X``, faded by ``forget`` a batch), found by
a few Newton steps; the batch's curvature at the result then joins ``H``. That is the Laplace
(assumed-density) update of Bayesian logistic regression: the first batches move the weights
as far as their evidence allows, later ones only as far as what they add, so the fit is near
the all-data one after a few batches where first-order optimisers need hundreds of steps.
Cost: a ``d x d`` solve per Newton step and output; meant for tens of inputs.

Examples
--------
>>> torch.manual_seed(0) is not None
True
>>> x = torch.randn(4096, 2, dtype=torch.float64)
>>> y = (torch.rand(4096, dtype=torch.float64) < torch.sigmoid(2 * x[:, 0] - 1)).double()
>>> model = OnlineLogistic(inputs=2, outputs=1)
>>> for start in range(0, 4096, 512):
...     model.learn(x[start : start + 512], y[start : start + 512, None])
>>> [round(w, 1) for w in model.weights[:, 0].tolist()]
[1.9, -0.0, -1.1]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["OnlineLogistic"]

#: Most halvings of one Newton step that does not lower the objective.
_HALVINGS = 12


class OnlineLogistic:
    """``outputs`` independent logistic regressions over the same ``inputs`` columns (plus an
    intercept), each learnt by online Newton steps.

    Parameters
    ----------
    inputs
        Input columns (the intercept is added).
    outputs
        Independent outputs (e.g. one per head).
    ridge
        Gaussian prior precision on every weight: the curvature before any data.
    forget
        Factor on the accumulated curvature each batch; below 1 keeps the fit able to move
        (an effective memory of ``1 / (1 - forget)`` batches). 1: a stationary fit.
    iterations, tolerance
        Most Newton steps a batch, and the Newton decrement (half the objective a full step
        would still gain, at most) below which no further step is taken.
    device
        Where the weights live.
    """

    def __init__(
        self,
        inputs: int,
        outputs: int,
        ridge: float = 1.0,
        forget: float = 1.0,
        iterations: int = 8,
        tolerance: float = 1e-3,
        device: torch.device | None = None,
    ) -> None:
        if inputs < 0 or outputs < 1 or ridge <= 0 or not 0 < forget <= 1:
            raise ValueError("need inputs >= 0, outputs >= 1, ridge > 0 and 0 < forget <= 1")
        self.ridge, self.forget, self.iterations = ridge, forget, iterations
        self.tolerance = tolerance
        width = inputs + 1
        options: dict[str, Any] = {"dtype": torch.float64, "device": device}
        self.weights = torch.zeros(width, outputs, **options)
        self.curvature = torch.zeros(outputs, width, width, **options)
        self._eye = torch.eye(width, **options)

    def _design(self, x: torch.Tensor) -> torch.Tensor:
        # Per-example work in float32 (half the time of float64 at these sizes); the weights,
        # the d x d curvature and the solves stay in float64.
        x = x.to(torch.float32)
        return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``float32 [n, outputs]`` of inputs ``[n, inputs]``."""
        return self._design(x) @ self.weights.to(torch.float32)

    def learn(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        weights: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
    ) -> None:
        """Fold a batch in: inputs ``[n, inputs]``, 0/1 targets ``[n, outputs]``, optional
        example weights ``[n]`` or ``[n, outputs]``, and an optional fixed ``offset``
        ``[n, outputs]`` added to the logits (what another part of a model predicts).

        The new weights minimise the batch's log loss plus the quadratic the earlier batches
        left (``(w - w0)' H (w - w0) / 2``), by up to ``iterations`` Newton steps (fewer once
        a step would gain less than ``tolerance`` on every output); the batch's
        curvature at the result then joins ``H``.
        """
        if x.shape[0] == 0:
            return
        design = self._design(x)
        target = y.to(torch.float32)
        shift = 0.0 if offset is None else offset.to(torch.float32)
        ones = torch.ones(design.shape[0], self.weights.shape[1], device=design.device)
        if weights is not None and weights.dim() == 1:
            weights = weights.unsqueeze(1)
        scale = ones if weights is None else weights.to(torch.float32).expand_as(ones)
        start = self.weights
        prior = self.forget * self.curvature + self.ridge * self._eye

        def objective(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Each output's batch log loss plus the prior's quadratic, and the logits."""
            logits = design @ w.to(torch.float32) + shift
            # Summed in float64, so that rounding of a 1024-row sum does not read as "worse".
            loss = scale.double() * F.binary_cross_entropy_with_logits(
                logits.double(), target.double(), reduction="none"
            )
            delta = (w - start).T.unsqueeze(2)
            quadratic = 0.5 * (delta.transpose(1, 2) @ prior @ delta).flatten()
            return loss.sum(0) + quadratic, logits

        value, logits = objective(start)
        p = torch.sigmoid(logits)
        # The batch's curvature at the start point serves every Newton step: within one batch
        # the weights move little once a few batches are in, and the d x d products are most
        # of a step's cost. A step that does not lower an output's objective is halved until
        # it does (rows saturated at the start point have no curvature there, and a new
        # extreme input, e.g. a power user's first counts, would otherwise overshoot).
        factor = torch.linalg.cholesky(prior + self._curvature(design, scale * p * (1.0 - p)))
        current = start
        for _ in range(self.iterations):
            gradient = (design.T @ (scale * (p - target))).to(torch.float64)
            gradient += (prior @ (current - start).T.unsqueeze(2)).squeeze(2).T
            direction = torch.cholesky_solve(gradient.T.unsqueeze(2), factor).squeeze(2).T
            # Newton decrement: what a full step would still gain, at most; stop once it is
            # below the objective's noise (the first batches take more steps, later ones one).
            if bool(((gradient * direction).sum(0) < self.tolerance).all()):
                break
            length = torch.ones_like(value)
            for _ in range(_HALVINGS):
                candidate = current - direction * length
                trial, logits = objective(candidate)
                # The logits are float32: differences below ~1e-7 of the objective are noise.
                worse = trial > value + 1e-6 * value.abs()
                if not bool(worse.any()):
                    break
                length = torch.where(worse, length / 2, length)
            else:
                # Still no better: stay put on those outputs.
                candidate = current - direction * torch.where(worse, 0.0, length)
                trial, logits = objective(candidate)
            current, value, p = candidate, trial, torch.sigmoid(logits)
        self.curvature = prior - self.ridge * self._eye
        self.curvature += self._curvature(design, scale * p * (1.0 - p))
        self.weights = current

    @staticmethod
    def _curvature(design: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
        """``X' diag(spread[:, k]) X`` for each output ``k``: ``float64 [outputs, d, d]``."""
        curvature = design.T.unsqueeze(0) @ (spread.T.unsqueeze(2) * design.unsqueeze(0))
        return curvature.to(torch.float64)

    def state_dict(self, *, copy: bool = True) -> dict[str, Any]:
        """Weights and curvature (copied to cpu; ``copy=False``: cpu tensors shared)."""
        return {
            "weights": self.weights.detach().to("cpu", copy=copy),
            "curvature": self.curvature.detach().to("cpu", copy=copy),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (copying)."""
        for name in ("weights", "curvature"):
            saved = state[name]
            if saved.shape != getattr(self, name).shape:
                raise ValueError(f"{name} has shape {tuple(saved.shape)}")
            setattr(self, name, saved.to(self.weights.device, torch.float64, copy=True))
