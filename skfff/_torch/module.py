"""The interface between a method's torch module and the shared training loop."""

from __future__ import annotations

import torch

__all__ = ["EncoderDecoder", "TrainingModule"]


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


class EncoderDecoder(TrainingModule):
    """An encoder ``f`` and a decoder ``g`` trained with a reconstruction weight ``beta``.

    The common shape of the free-form methods (FFF, M-FFF, MLAE): both networks are called
    as ``net(x, c)``; ``n_hutchinson`` probes estimate the volume change per sample.
    Subclasses add the method's losses (and may override :meth:`encode` / :meth:`decode`).
    """

    def __init__(
        self, encoder: torch.nn.Module, decoder: torch.nn.Module, beta: float, n_hutchinson: int
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.beta = float(beta)
        self.n_hutchinson = int(n_hutchinson)

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Latent codes ``f(x)``."""
        return self.encoder(x, c)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded points ``g(z)``."""
        return self.decoder(z, c)

    def reconstruct(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Round trips ``g(f(x))``."""
        return self.decode(self.encode(x, c), c)
