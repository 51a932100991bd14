"""Free-form flows (Draxler et al., AISTATS 2024) as a trainable torch module."""

from __future__ import annotations

import torch
from torch import nn

from .jacobian import log_abs_det_jacobian
from .module import EncoderDecoder
from .priors import standard_normal_log_prob
from .surrogates import volume_change_surrogate

__all__ = ["FreeFormFlowModule"]


class FreeFormFlowModule(EncoderDecoder):
    """Encoder ``f`` and decoder ``g`` of a free-form flow with its losses.

    Training loss per sample (Draxler et al., 2024)::

        beta * |x - g(f(x))|^2 - log N(f(x); 0, I) - v^T J_f(x) SG(J_g(f(x)) v)

    Exact log-density of the model (samples are ``g(z)``, ``z ~ N(0, I)``)::

        log p(x) = log N(f(x); 0, I) - log |det J_g(f(x))|

    Parameters
    ----------
    encoder, decoder : torch.nn.Module
        Dimension-preserving networks called as ``net(x, c)``.
    beta : float
        Weight of the reconstruction term.
    n_hutchinson : int
        Hutchinson probes per sample.
    off_data_weight : float, default=0.0
        Weight, relative to ``beta``, of the reconstruction of ``x + N(0, I)``.
    latent : torch.nn.Module or None, default=None
        The latent distribution: a module with ``log_prob(z)`` summed over the last axis
        (e.g. :class:`~skfff._torch.priors.StudentTLatent`); None is the standard normal
        ``N(0, I)`` of the formulas above.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        beta: float,
        n_hutchinson: int,
        off_data_weight: float = 0.0,
        latent: nn.Module | None = None,
    ):
        super().__init__(encoder, decoder, beta, n_hutchinson)
        self.off_data_weight = float(off_data_weight)
        self.latent = latent

    def latent_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p_Z(z)``: the standard normal's, or the ``latent`` module's."""
        if self.latent is None:
            return standard_normal_log_prob(z)
        return self.latent.log_prob(z)

    def training_loss(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        out = volume_change_surrogate(self.encoder, self.decoder, x, c, n_probes=self.n_hutchinson)
        reconstruction = (x - out.x_hat).pow(2).sum(-1)
        nll_surrogate = -self.latent_log_prob(out.z) - out.surrogate
        loss = (self.beta * reconstruction + nll_surrogate).mean()
        if self.off_data_weight > 0:
            # Keep g close to f^-1 around the data too (points x + N(0, I)), where nothing
            # else constrains it: spurious density ridges form there otherwise.
            x_off = x + torch.randn_like(x)
            off = (x_off - self.reconstruct(x_off, c)).pow(2).sum(-1).mean()
            loss = loss + self.off_data_weight * self.beta * off
        return loss

    def log_prob(self, x: torch.Tensor, c: torch.Tensor | None = None,
                 via: str = "decoder") -> torch.Tensor:
        """Exact log-density: through the decoder's Jacobian at ``f(x)`` (``via="decoder"``,
        the density of the samples ``g(z)`` when ``g = f^-1``), or through the encoder's,
        ``log N(f(x); 0, I) + log|det J_f(x)|`` (``via="encoder"``, normalised whenever
        ``f`` is one-to-one, whatever ``g``)."""
        z = self.encoder(x, c)
        if via == "decoder":
            return self.latent_log_prob(z) - log_abs_det_jacobian(self.decoder, z, c)
        if via == "encoder":
            return self.latent_log_prob(z) + log_abs_det_jacobian(self.encoder, x, c)
        raise ValueError(f"via must be 'decoder' or 'encoder', got {via!r}.")

    def validation_loss(
        self, x: torch.Tensor, c: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        nll = -self.log_prob(x, c).mean()
        x_hat = self.reconstruct(x, c)
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()
        # The exact NLL alone can look good when g is not f^-1 (spurious likelihoods), so the
        # monitored loss is the training objective with the exact log-determinant.
        return {
            "loss": nll + self.beta * reconstruction,
            "nll": nll,
            "reconstruction": reconstruction,
        }
