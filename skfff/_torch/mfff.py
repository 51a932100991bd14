"""Manifold free-form flows (M-FFF, Sorrenson et al., 2024) as a trainable torch module.

Networks act in the embedding space ``R^m``; the maps are composed with the projection,
``f = pi o f~`` and ``g = pi o g~``, and map batches ``(B, m) -> (B, m)`` sample by sample
(no batch coupling such as BatchNorm). The log-determinant surrogate is the shared one of
:mod:`~skfff._torch.surrogates` with tangent-space probes; exact densities are w.r.t. the
Riemannian volume, from Jacobians on orthonormal tangent bases.
"""

from __future__ import annotations

import torch
from torch.func import jvp, vmap

from ..manifolds.base import Manifold
from .jacobian import BatchFn, forward_with_tangents, jacobian_on_basis, logabsdet
from .module import EncoderDecoder
from .surrogates import tangent_probes, volume_change_surrogate

__all__ = ["ManifoldFreeFormFlowModule", "Projected", "riemannian_log_abs_det"]


def riemannian_log_abs_det(fn, manifold: Manifold, z: torch.Tensor,
                           c: torch.Tensor | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """Exact ``log|det(R^T J_fn(z) Q)|`` with orthonormal tangent bases ``Q`` at ``z`` and
    ``R`` at ``fn(z)``: the log volume change of ``fn: M -> M`` between Riemannian volumes.

    Parameters
    ----------
    fn : callable
        Batched map ``fn(z, c)`` onto the manifold, ``(B, m) -> (B, m)``.
    manifold : Manifold
    z : Tensor of shape (B, m)
    c : Tensor of shape (B, k) or None
    out : Tensor of shape (B, m), optional
        ``fn(z, c)`` when already known.

    Returns
    -------
    Tensor of shape (B,)
    """
    if out is None:
        out = fn(z, c)
    jq = jacobian_on_basis(fn, z, c, manifold.tangent_basis(z))
    return logabsdet(manifold.tangent_basis(out).transpose(-1, -2) @ jq)


class Projected:
    """The map ``pi o net``: a network followed by the manifold's projection.

    Callable as ``fn(x, c)``; :meth:`forward_with_tangents` pushes tangents through the
    network's own tangent pass (when it has one) and then through the projection, so the
    Jacobian helpers and the surrogate do not differentiate the whole map with
    ``torch.func.jvp``.
    """

    def __init__(self, net: BatchFn, manifold: Manifold) -> None:
        self.net = net
        self.manifold = manifold

    def __call__(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.manifold.project(self.net(x, c))

    def forward_with_tangents(self, x: torch.Tensor, c: torch.Tensor | None,
                              tangents: torch.Tensor, *, tangent_grad: bool = True
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``pi(net(x, c))`` and its Jacobian-vector products, shapes (B, m), (K, B, m)."""
        raw, raw_t = forward_with_tangents(self.net, x, c, tangents, tangent_grad=tangent_grad)
        out = self.manifold.project(raw)
        at = raw if tangent_grad else raw.detach()
        jvps = vmap(lambda t: jvp(self.manifold.project, (at,), (t,))[1])(raw_t)
        return out, jvps if tangent_grad else jvps.detach()


class ManifoldFreeFormFlowModule(EncoderDecoder):
    """Encoder and decoder of a manifold free-form flow, with its losses.

    ``f = pi o f~`` and ``g = pi o g~`` where ``f~, g~`` are networks on the embedding
    space and ``pi`` the manifold's projection. Training loss per sample::

        beta |x - g(z)|^2 - log p_Z(z) - v^T J_f(x) SG(P_x J_g(z) v)
            + distance_weight |f~(x) - f(x)|^2
            + cycle_weight |f(g(z')) - z'|^2,   z = f(x), z' ~ p_Z

    (the last two terms, from the M-FFF reference, keep the raw network outputs near the
    manifold and make ``f`` invert ``g`` where the prior puts mass, which keeps sampling
    reliable). Exact density: :meth:`log_prob`.

    Parameters
    ----------
    encoder, decoder : torch.nn.Module
        Networks ``R^m -> R^m`` called as ``net(x, c)``.
    manifold : Manifold
    prior : torch.nn.Module
        With ``log_prob(z)`` and ``sample(n, generator, device, dtype)``.
    beta : float
    n_hutchinson : int
    distance_weight, cycle_weight : float
    uniform_weight : float
        Weight of ``|x' - g(f(x'))|^2`` for points ``x'`` uniform on the manifold.
    log_prob_via : {"decoder", "encoder"}
        The density :meth:`log_prob` returns by default (and early stopping monitors).
    """

    def __init__(self, encoder: torch.nn.Module, decoder: torch.nn.Module, manifold: Manifold,
                 prior: torch.nn.Module, beta: float, n_hutchinson: int = 1,
                 distance_weight: float = 1.0, cycle_weight: float = 1.0,
                 uniform_weight: float = 0.0, log_prob_via: str = "decoder"):
        super().__init__(encoder, decoder, beta, n_hutchinson)
        self.manifold = manifold
        self.prior = prior
        self.distance_weight = float(distance_weight)
        self.cycle_weight = float(cycle_weight)
        self.uniform_weight = float(uniform_weight)
        if log_prob_via not in ("decoder", "encoder"):
            raise ValueError(f"log_prob_via must be 'decoder' or 'encoder', got {log_prob_via!r}")
        self.log_prob_via = log_prob_via

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``f(x) = pi(f~(x, c))``."""
        return Projected(self.encoder, self.manifold)(x, c)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``g(z) = pi(g~(z, c))``."""
        return Projected(self.decoder, self.manifold)(x=z, c=c)

    def sample(self, n_samples: int, c: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode ``n_samples`` prior draws: one network pass and one projection."""
        device = next(self.parameters()).device
        z = self.prior.sample(n_samples, generator, device=device, dtype=torch.float32)
        return self.decode(z, c)

    def log_prob(self, x: torch.Tensor, c: torch.Tensor | None = None,
                 via: str | None = None) -> torch.Tensor:
        """Exact log-density w.r.t. the manifold's volume (``via``, default
        ``self.log_prob_via``): ``"decoder"``, ``log p_Z(z) - log|det(R^T J_g(z) Q)|``, the
        density of the samples ``g(z)``; ``"encoder"``, ``log p_Z(f(x)) + log|det J_f(x)|``."""
        return self._log_prob(x, c, via or self.log_prob_via)[0]

    def _log_prob(self, x: torch.Tensor, c: torch.Tensor | None, via: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-density and reconstruction ``g(f(x))``."""
        z = self.encode(x, c)
        x_hat = self.decode(z, c)
        if via == "decoder":
            log_det = -riemannian_log_abs_det(Projected(self.decoder, self.manifold),
                                              self.manifold, z, c, out=x_hat)
        elif via == "encoder":
            log_det = riemannian_log_abs_det(Projected(self.encoder, self.manifold),
                                             self.manifold, x, c, out=z)
        else:
            raise ValueError(f"via must be 'decoder' or 'encoder', got {via!r}.")
        return self.prior.log_prob(z) + log_det, x_hat

    def training_loss(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        z, x_hat, surrogate = volume_change_surrogate(
            Projected(self.encoder, self.manifold), Projected(self.decoder, self.manifold),
            x, c, probes=tangent_probes(self.manifold),
            n_probes=self.n_hutchinson, project=self.manifold.project_tangent)
        loss = (self.beta * (x - x_hat).pow(2).sum(-1) - self.prior.log_prob(z)
                - surrogate)
        if self.distance_weight:
            raw = self.encoder(x, c)
            loss = loss + self.distance_weight * (raw - self.manifold.project(raw)).pow(2).sum(-1)
        if self.cycle_weight:
            with torch.no_grad():
                z_prior = self.prior.sample(x.shape[0], device=x.device, dtype=x.dtype)
            z_cycle = self.encode(self.decode(z_prior, c), c)
            loss = loss + self.cycle_weight * (z_cycle - z_prior).pow(2).sum(-1)
        if self.uniform_weight:
            x_u = self.manifold.random_uniform(x.shape[0], device=x.device, dtype=x.dtype)
            x_u_hat = self.reconstruct(x_u, c)
            loss = loss + self.uniform_weight * (x_u_hat - x_u).pow(2).sum(-1)
        return loss.mean()

    def validation_loss(self, x: torch.Tensor, c: torch.Tensor | None = None
                        ) -> dict[str, torch.Tensor]:
        """The training objective with the exact log-density, for early stopping.

        ``loss = nll + beta * reconstruction + uniform_weight * uniform_reconstruction``;
        the last term is the reconstruction error on a fixed set of uniform points (the same
        at every epoch, so the monitor does not fluctuate with them). The exact NLL alone
        picks epochs where ``g`` is not ``f^-1``, and there the density through the decoder
        is not normalised (narrow spikes whose mass is counted twice).
        """
        log_p, x_hat = self._log_prob(x, c, self.log_prob_via)
        nll = -log_p.mean()
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()
        out = {"nll": nll, "reconstruction": reconstruction}
        loss = nll + self.beta * reconstruction
        if self.uniform_weight:
            gen = torch.Generator().manual_seed(0)
            x_u = self.manifold.random_uniform(x.shape[0], gen, dtype=x.dtype).to(x.device)
            err = (self.reconstruct(x_u, c) - x_u).pow(2).sum(-1).mean()
            out["uniform_reconstruction"] = err
            loss = loss + self.uniform_weight * err
        out["loss"] = loss
        return out
