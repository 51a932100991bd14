"""The volume-change surrogate shared by every free-form method, and its probe samplers.

For an encoder ``f`` and a decoder ``g`` close to its inverse (a left inverse, for an
injective ``g``), the gradient of the log volume change is a trace that Hutchinson probes
``v`` (``E[v v^T] = I``, or the tangent projector on a manifold) estimate without any
Jacobian being formed:

    grad log|det J_f(x)| = tr(J_f^-1 grad J_f) ~ tr(SG(J_g(f(x))) grad J_f)
                        = E_v[ grad v^T J_f(x) SG(J_g(f(x)) v) ].

``surrogate = v^T J_f(x) SG(J_g(f(x)) v)`` costs one reverse-mode pass through the encoder
(``v^T J_f``, gradient kept) and one forward-mode pass through the decoder (``J_g v``,
detached), whatever the dimension. Its primal output ``g(f(x))`` is the reconstruction and
carries gradient to both networks.

- Free-form flows (Draxler et al., 2024): ``f, g: R^D -> R^D``, Gaussian probes;
  ``+surrogate`` stands in for ``log|det J_f|``.
- Maximum likelihood autoencoders (Sorrenson et al., 2024): ``f: R^D -> R^d`` and
  ``g: R^d -> R^D``, probes in the latent space; when ``f`` is the orthogonal left inverse of
  ``g``, ``-surrogate`` has the gradient of ``1/2 log det(J_g^T J_g)`` (differentiate
  ``J_f J_g = I``). The encoder carries the gradient, taken at the data point: the paper's
  stable form. Scaled orthonormal probes lower the variance (``n_probes = d`` is exact).
- Manifold free-form flows: ``f, g`` end with the projection onto the manifold; probes are
  drawn in the tangent space at ``z = f(x)`` (covariance: the tangent projector) and
  ``J_g v`` is projected onto the tangent space at ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from .jacobian import forward_with_tangents

__all__ = [
    "ProbeSampler",
    "SurrogateOutput",
    "gaussian_probes",
    "orthonormal_probes",
    "tangent_probes",
    "volume_change_surrogate",
]

BatchFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
#: ``sampler(z, n_probes, generator) -> probes`` of shape (n_probes, B, d).
ProbeSampler = Callable[[torch.Tensor, int, torch.Generator | None], torch.Tensor]


class SurrogateOutput(NamedTuple):
    """What one surrogate evaluation returns (all per sample)."""

    z: torch.Tensor  #: latent codes ``f(x)``, shape (B, d)
    x_hat: torch.Tensor  #: reconstructions ``g(f(x))``, shape (B, D)
    surrogate: torch.Tensor  #: ``v^T J_f(x) SG(J_g v)`` averaged over probes, shape (B,)


def gaussian_probes(
    z: torch.Tensor, n_probes: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard normal probes, shape (n_probes, B, d)."""
    return torch.randn((n_probes, *z.shape), dtype=z.dtype, device=z.device, generator=generator)


def orthonormal_probes(
    z: torch.Tensor, n_probes: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per sample, ``n_probes`` random orthonormal directions of ``R^d`` scaled by ``sqrt(d)``.

    ``E[v v^T] = I``, with less variance than Gaussian probes; ``n_probes == d`` gives the
    exact trace.

    Returns
    -------
    Tensor of shape (n_probes, B, d)
    """
    batch, d = z.shape
    if not 1 <= n_probes <= d:
        raise ValueError(f"n_probes must be in [1, {d}], got {n_probes}")
    g = torch.randn(batch, d, n_probes, dtype=z.dtype, device=z.device, generator=generator)
    if n_probes == 1:
        q = g / g.norm(dim=1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
    else:
        q = torch.linalg.qr(g).Q
    return q.permute(2, 0, 1) * math.sqrt(d)


def tangent_probes(manifold) -> ProbeSampler:
    """Probe sampler on the tangent spaces of ``manifold``, with ``E[v v^T] = P_z``.

    A standard Gaussian in ``R^m`` is projected onto ``T_z M``, normalised, and scaled by
    ``sqrt(n)`` (``n`` the intrinsic dimension), so that its covariance is the tangent
    projector ``P_z`` (trace ``n``), not ``P_z`` times ``n / m``.

    Parameters
    ----------
    manifold : skfff.manifolds.Manifold

    Returns
    -------
    callable
        ``sampler(z, n_probes, generator)`` returning (n_probes, B, m).
    """

    def sample(
        z: torch.Tensor, n_probes: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        v = manifold.project_tangent(z.unsqueeze(0), gaussian_probes(z, n_probes, generator))
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return v * math.sqrt(manifold.dim)

    return sample


def volume_change_surrogate(
    encoder: BatchFn,
    decoder: BatchFn,
    x: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    probes: ProbeSampler | torch.Tensor = gaussian_probes,
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    project: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> SurrogateOutput:
    """``v^T J_f(x) SG(J_g(f(x)) v)`` averaged over probes, with ``f(x)`` and ``g(f(x))``.

    Gradients of ``surrogate`` reach the encoder only; ``x_hat`` carries gradients to both
    networks. Needs grad mode (a training step).

    Parameters
    ----------
    encoder, decoder : callable
        Batched networks ``f(x, c) -> z`` (B, d) and ``g(z, c) -> x_hat`` (B, D).
    x : Tensor of shape (B, D)
        Data.
    c : Tensor of shape (B, k) or None
        Conditions, passed to both networks.
    probes : callable or Tensor of shape (K, B, d), default=gaussian_probes
        A :data:`ProbeSampler` called on ``f(x)`` (detached), or explicit probes.
    n_probes : int, default=1
        Probes per sample drawn by the sampler.
    generator : torch.Generator, optional
        Source of the probes.
    project : callable, optional
        ``project(x, u)`` applied to ``J_g v`` before the product (the tangent projection
        at ``x`` on a manifold).

    Returns
    -------
    SurrogateOutput
    """
    x = x.detach().requires_grad_(True)
    z = encoder(x, c)
    if callable(probes):
        probes = probes(z.detach(), n_probes, generator)
    # J_g(z) v for every probe: forward mode through the decoder, as constants; the primal
    # output is the reconstruction and keeps its graph
    x_hat, jg_v = forward_with_tangents(decoder, z, c, probes, tangent_grad=False,
                                        vectorize=False)
    if project is not None:
        jg_v = project(x.detach(), jg_v)
    surrogate = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for v, u in zip(probes, jg_v, strict=True):
        # v^T J_f(x): reverse mode through the encoder, graph kept (carries the gradient)
        (v_jf,) = torch.autograd.grad(z, x, v, create_graph=True)
        surrogate = surrogate + (v_jf * u).sum(-1)
    return SurrogateOutput(z, x_hat, surrogate / probes.shape[0])
