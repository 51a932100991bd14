"""The maths of manifold free-form flows (M-FFF): tangent-space probes, the
log-determinant surrogate, and the exact log-density w.r.t. the Riemannian volume.

Networks act in the embedding space ``R^m``; the maps handed to these functions are
already composed with the projection, ``f = pi o f~`` and ``g = pi o g~``, and map
batches ``(B, m) -> (B, m)`` sample by sample (no batch coupling such as BatchNorm).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import jvp, vjp, vmap

from ..manifolds.base import Manifold
from .jacobian import logabsdet
from .module import TrainingModule

__all__ = [
    "ManifoldFreeFormFlowModule",
    "manifold_log_abs_det",
    "manifold_log_prob",
    "tangent_probes",
    "tangent_surrogate",
]

BatchMap = Callable[[torch.Tensor], torch.Tensor]


def tangent_probes(manifold: Manifold, z: torch.Tensor, n_probes: int = 1,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Hutchinson probes in the tangent spaces, with ``E[v v^T] = P_z``.

    A standard Gaussian in ``R^m`` is projected onto ``T_z M``, normalised, and scaled
    by ``sqrt(n)`` (``n`` the intrinsic dimension), so that its covariance is the
    tangent projector ``P_z`` (trace ``n``), not ``P_z`` times ``n / m``.

    Parameters
    ----------
    manifold : Manifold
    z : Tensor of shape (B, m)
        Points on the manifold.
    n_probes : int, default=1
    generator : torch.Generator, optional

    Returns
    -------
    Tensor of shape (n_probes, B, m)
    """
    eps = torch.randn((n_probes, *z.shape), generator=generator, dtype=z.dtype,
                      device=z.device)
    v = manifold.project_tangent(z.unsqueeze(0), eps)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return v * math.sqrt(manifold.dim)


def tangent_surrogate(encode: BatchMap, decode: BatchMap, manifold: Manifold,
                      x: torch.Tensor, n_probes: int = 1,
                      generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode, decode and the M-FFF surrogate for ``log|det J_f|`` on the tangent spaces.

    ``surrogate = mean_k  v_k^T J_f(x) . SG(P_x J_g(z) v_k)`` with tangent probes
    ``v_k`` at ``z = f(x)``. Its gradient w.r.t. the encoder parameters is, in
    expectation, ``d log|det(Q_z^T J_f(x) Q_x)|`` when ``g = f^-1`` on the manifold.
    The decoder receives gradient only through the reconstruction ``x_hat``.

    Parameters
    ----------
    encode, decode : callable
        Batched maps onto the manifold, ``(B, m) -> (B, m)``.
    manifold : Manifold
    x : Tensor of shape (B, m)
        Data on the manifold.
    n_probes : int, default=1
    generator : torch.Generator, optional

    Returns
    -------
    z : Tensor of shape (B, m)
        Latent points (with gradient).
    x_hat : Tensor of shape (B, m)
        Reconstruction ``g(z)`` (with gradient to both networks).
    surrogate : Tensor of shape (B,)
    """
    z, encode_vjp = vjp(encode, x)
    probes = tangent_probes(manifold, z.detach(), n_probes, generator)
    x_hat = None
    surrogate = z.new_zeros(z.shape[0])
    for v in probes:
        out, jg_v = jvp(decode, (z,), (v,))
        if x_hat is None:
            x_hat = out
        u = manifold.project_tangent(x, jg_v.detach())
        (vj_f,) = encode_vjp(v)
        surrogate = surrogate + (vj_f * u).sum(-1)
    return z, x_hat, surrogate / n_probes


def _jacobian_on_basis(fn: BatchMap, z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``J_fn(z) @ basis`` for ``basis`` of shape (B, m, n): one jvp per column."""
    def column(t):
        return jvp(fn, (z,), (t,))[1]

    return vmap(column, in_dims=-1, out_dims=-1)(basis)


def manifold_log_abs_det(fn: BatchMap, manifold_in: Manifold, z: torch.Tensor,
                         manifold_out: Manifold | None = None,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """Exact ``log|det(R^T J_fn(z) Q)|`` with orthonormal tangent bases ``Q`` at ``z``
    and ``R`` at ``fn(z)``: the log volume change of ``fn`` between Riemannian volumes.

    Parameters
    ----------
    fn : callable
        Batched map ``(B, m) -> (B, m')`` onto ``manifold_out``.
    manifold_in : Manifold
    z : Tensor of shape (B, m)
    manifold_out : Manifold, optional
        Defaults to ``manifold_in``.
    out : Tensor of shape (B, m'), optional
        ``fn(z)`` when already known.

    Returns
    -------
    Tensor of shape (B,)
    """
    manifold_out = manifold_in if manifold_out is None else manifold_out
    if out is None:
        out = fn(z)
    q = manifold_in.tangent_basis(z)
    r = manifold_out.tangent_basis(out)
    jq = _jacobian_on_basis(fn, z, q)
    return logabsdet(r.transpose(-1, -2) @ jq)


def manifold_log_prob(encode: BatchMap, decode: BatchMap, manifold: Manifold,
                      prior_log_prob: Callable[[torch.Tensor], torch.Tensor],
                      x: torch.Tensor, via: str = "decoder") -> torch.Tensor:
    """Exact log-density of the model w.r.t. the Riemannian volume.

    ``via="decoder"`` (the density of the samples ``g(z)``):
    ``log p(x) = log p_Z(z) - log|det(R^T J_g(z) Q)|`` with ``z = f(x)``.
    ``via="encoder"``: ``log p_Z(f(x)) + log|det(Q^T J_f(x) R)|``.

    Parameters
    ----------
    encode, decode : callable
    manifold : Manifold
    prior_log_prob : callable
        ``(B, m) -> (B,)``.
    x : Tensor of shape (B, m)
    via : {"decoder", "encoder"}

    Returns
    -------
    Tensor of shape (B,)
    """
    z = encode(x)
    if via == "decoder":
        return prior_log_prob(z) - manifold_log_abs_det(decode, manifold, z)
    if via == "encoder":
        return prior_log_prob(z) + manifold_log_abs_det(encode, manifold, x, out=z)
    raise ValueError(f"via must be 'decoder' or 'encoder', got {via!r}.")


class ManifoldFreeFormFlowModule(TrainingModule):
    """Encoder and decoder of a manifold free-form flow, with its losses.

    ``f = pi o f~`` and ``g = pi o g~`` where ``f~, g~`` are networks on the embedding
    space and ``pi`` the manifold's projection. Training loss per sample::

        beta |x - g(z)|^2 - log p_Z(z) - v^T J_f(x) SG(P_x J_g(z) v)
            + distance_weight |f~(x) - f(x)|^2
            + cycle_weight |f(g(z')) - z'|^2,   z = f(x), z' ~ p_Z

    (the last two terms, from the M-FFF reference, keep the raw network outputs near the
    manifold and make ``f`` invert ``g`` where the prior puts mass, which keeps sampling
    reliable). Exact density: :func:`manifold_log_prob`.

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
    """

    def __init__(self, encoder: torch.nn.Module, decoder: torch.nn.Module, manifold: Manifold,
                 prior: torch.nn.Module, beta: float, n_hutchinson: int = 1,
                 distance_weight: float = 1.0, cycle_weight: float = 1.0,
                 uniform_weight: float = 0.0, log_prob_via: str = "decoder"):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.manifold = manifold
        self.prior = prior
        self.beta = float(beta)
        self.n_hutchinson = int(n_hutchinson)
        self.distance_weight = float(distance_weight)
        self.cycle_weight = float(cycle_weight)
        self.uniform_weight = float(uniform_weight)
        if log_prob_via not in ("decoder", "encoder"):
            raise ValueError(f"log_prob_via must be 'decoder' or 'encoder', got {log_prob_via!r}")
        self.log_prob_via = log_prob_via

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``f(x) = pi(f~(x, c))``."""
        return self.manifold.project(self.encoder(x, c))

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``g(z) = pi(g~(z, c))``."""
        return self.manifold.project(self.decoder(z, c))

    def sample(self, n_samples: int, c: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode ``n_samples`` prior draws: one network pass and one projection."""
        device = next(self.parameters()).device
        z = self.prior.sample(n_samples, generator, device=device, dtype=torch.float32)
        return self.decode(z, c)

    def log_prob(self, x: torch.Tensor, c: torch.Tensor | None = None,
                 via: str | None = None) -> torch.Tensor:
        """Exact log-density w.r.t. the manifold's volume, through the decoder's Jacobian
        at ``f(x)`` or the encoder's at ``x`` (``via``, default ``self.log_prob_via``)."""
        return manifold_log_prob(lambda u: self.encode(u, c), lambda u: self.decode(u, c),
                                 self.manifold, self.prior.log_prob, x,
                                 via=via or self.log_prob_via)

    def training_loss(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        z, x_hat, surrogate = tangent_surrogate(
            lambda u: self.encode(u, c), lambda u: self.decode(u, c), self.manifold, x,
            self.n_hutchinson)
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
            x_u_hat = self.decode(self.encode(x_u, c), c)
            loss = loss + self.uniform_weight * (x_u_hat - x_u).pow(2).sum(-1)
        return loss.mean()

    def validation_loss(self, x: torch.Tensor, c: torch.Tensor | None = None
                        ) -> dict[str, torch.Tensor]:
        z = self.encode(x, c)
        x_hat = self.decode(z, c)
        if self.log_prob_via == "decoder":
            log_p = self.prior.log_prob(z) - manifold_log_abs_det(
                lambda u: self.decode(u, c), self.manifold, z, out=x_hat)
        else:
            log_p = self.prior.log_prob(z) + manifold_log_abs_det(
                lambda u: self.encode(u, c), self.manifold, x, out=z)
        return {"loss": -log_p.mean(), "reconstruction": (x - x_hat).pow(2).sum(-1).mean()}
