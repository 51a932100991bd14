"""The interface between a method's torch module and the shared training loop."""

from __future__ import annotations

import torch

__all__ = ["TrainingModule"]


class TrainingModule(torch.nn.Module):
    """A torch module that knows its own training and validation losses.

    Subclasses hold the method's networks and implement :meth:`training_loss` and
    :meth:`validation_loss`. Both take a batch ``x`` of shape (B, D) and optional
    conditions ``c`` of shape (B, k), float32 on the training device.
    """

    def training_loss(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar loss whose gradient trains the model (batch mean)."""
        raise NotImplementedError

    def validation_loss(
        self, x: torch.Tensor, c: torch.Tensor | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Honest held-out criterion, e.g. the exact mean negative log-likelihood.

        Called under ``torch.no_grad()``. Return a scalar, or a dict with the scalar under
        ``"loss"`` and further scalars that are recorded per epoch in the history as
        ``valid_<name>``.
        """
        raise NotImplementedError
