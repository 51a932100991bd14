"""Maximum likelihood autoencoder (MLAE, a.k.a. free-form injective flow) in torch.

Model: an encoder ``f: R^D -> R^d`` and a decoder ``g: R^d -> R^D`` (``d < D``); samples are
``g(z)``, ``z ~ N(0, I_d)``. The decoder's image is a ``d``-dimensional manifold and the
log-density of a point ``x_hat = g(z)`` on it, with respect to the manifold's volume
(``d``-dimensional Hausdorff) measure, is

    log p(x_hat) = log N(z; 0, I) - 1/2 log det(J_g(z)^T J_g(z)).

Training (Sorrenson et al., "Lifting architectural constraints of injective flows",
ICLR 2024, arXiv 2306.01843) minimises per sample

    beta ||x - g(f(x))||^2 + 1/2 ||f(x)||^2 - v^T J_f(x) SG(J_g(f(x)) v),

with a probe ``v`` in latent space (``E[v v^T] = I``). Which network the log-determinant
term trains matters; this module follows the paper's *stable* objective and its reference
code (``vislearn/FFF``, ``volume_change_surrogate``): the gradient flows into the
**encoder** through the vector-Jacobian product ``v^T J_f(x)``, taken at the data point
``x``; the decoder's Jacobian-vector product ``J_g v`` is detached, and the decoder learns
through the reconstruction term only.

Why this is maximum likelihood: write ``A = J_g(z)`` and ``B = J_f(x)``. When ``f`` is the
orthogonal left inverse of ``g`` (``B = A^+``, so ``B A = I``), differentiating ``B A = I``
gives ``tr(dB A) = -tr(B dA)``, and ``tr(A^+ dA) = d(1/2 log det A^T A)``. Hence the
gradient of ``-tr(B SG(A))`` is ``d(1/2 log det A^T A)``: minus the surrogate has the
gradient of the exact volume term when the encoder tracks the decoder's pseudo-inverse
(as the reconstruction term enforces). Equivalently, w.r.t. the encoder alone the
surrogate's gradient is ``tr(dB B^+) = d(1/2 log det B B^T)`` and
``1/2 log det B B^T = -1/2 log det A^T A`` there. The alternative ("naive") form
``v^T SG(J_f(x_hat)) J_g v`` trains the decoder and is the direct gradient of
``1/2 log det(J_g^T J_g)``, but the paper (Sec. 4.2) shows it lets the manifold's curvature
diverge. Cost: one jvp and one vjp per probe, independent of ``d``.

The exact log-density needs the full decoder Jacobian: ``d`` jvps, batched here with
``vmap`` over the tangent basis and chunked over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.func import jvp, vmap

from .jacobian import MAX_ELEMENTS
from .module import TrainingModule

__all__ = [
    "MLAEModule",
    "MLAEOutput",
    "sample_probes",
    "mlae_surrogate",
    "decoder_jacobian",
    "half_log_det_gram",
    "manifold_log_prob",
]

BatchFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

_LOG_2PI = math.log(2.0 * math.pi)



class MLAEOutput(NamedTuple):
    """What one surrogate evaluation returns (all per sample)."""

    z: torch.Tensor  #: latent codes ``f(x)``, shape (B, d)
    x_hat: torch.Tensor  #: reconstructions ``g(f(x))``, shape (B, D)
    surrogate: torch.Tensor  #: ``v^T J_f(x) SG(J_g(z) v)`` averaged over probes, shape (B,)


def sample_probes(
    z: torch.Tensor, n_probes: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Hutchinson probes with ``E[v v^T] = I``: scaled orthonormal columns.

    For each sample, ``n_probes`` random orthonormal directions of ``R^d`` scaled by
    ``sqrt(d)``. With ``n_probes == d`` the trace estimate is exact.

    Parameters
    ----------
    z : Tensor of shape (B, d)
        Reference for shape, dtype and device.
    n_probes : int, default=1
        Number of probes, ``1 <= n_probes <= d``.
    generator : torch.Generator, optional
        Source of randomness.

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


def mlae_surrogate(
    encoder: BatchFn,
    decoder: BatchFn,
    x: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    n_probes: int = 1,
    probes: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> MLAEOutput:
    """The MLAE log-determinant surrogate (stable form, gradient into the encoder).

    ``surrogate = v^T J_f(x) SG(J_g(f(x)) v)``; ``-surrogate`` stands in for
    ``+1/2 log det(J_g^T J_g)`` in the negative log-likelihood (see the module docstring).
    ``x_hat`` and ``z`` carry gradients to both networks. Needs grad mode.

    Parameters
    ----------
    encoder, decoder : callable
        Batched networks ``f(x, c) -> z`` (B, d) and ``g(z, c) -> x_hat`` (B, D).
    x : Tensor of shape (B, D)
        Data.
    c : Tensor of shape (B, k) or None
        Conditions, passed to both networks.
    n_probes : int, default=1
        Hutchinson probes per sample (ignored when ``probes`` is given).
    probes : Tensor of shape (K, B, d), optional
        Explicit probes (e.g. ``sqrt(d)`` times an orthonormal basis for an exact trace).
    generator : torch.Generator, optional
        Source of the probes.

    Returns
    -------
    MLAEOutput
    """
    x = x.detach().requires_grad_(True)
    z = encoder(x, c)
    if probes is None:
        probes = sample_probes(z.detach(), n_probes, generator)
    surrogate = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    x_hat = None
    for v in probes:
        # v^T J_f(x): reverse mode through the encoder, graph kept (carries the gradient)
        (v_jf,) = torch.autograd.grad(z, x, v, create_graph=True)
        # J_g(z) v: forward mode through the decoder; the primal output is the reconstruction
        out, jg_v = jvp(lambda zz: decoder(zz, c), (z,), (v,))
        if x_hat is None:
            x_hat = out
        surrogate = surrogate + (v_jf * jg_v.detach()).sum(-1)
    return MLAEOutput(z, x_hat, surrogate / probes.shape[0])


def _batch_chunks(n: int, per_sample: int, max_elements: int | None) -> list[slice]:
    size = n if max_elements is None else max(1, max_elements // max(per_sample, 1))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def decoder_jacobian(
    decoder: BatchFn,
    z: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    max_elements: int | None = MAX_ELEMENTS,
) -> torch.Tensor:
    """Per-sample decoder Jacobians by ``d`` batched jvps (forward mode).

    Parameters
    ----------
    decoder : callable
        Batched ``g(z, c)`` with output (B, D); samples must not interact.
    z : Tensor of shape (B, d)
    c : Tensor of shape (B, k) or None
    max_elements : int or None
        Bound on the Jacobian entries computed at once (chunks the batch).

    Returns
    -------
    Tensor of shape (B, D, d)
    """
    batch, d = z.shape
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    parts = []
    with torch.no_grad():
        big_d = decoder(z[:1], None if c is None else c[:1]).shape[-1]
    for s in _batch_chunks(batch, d * big_d, max_elements):
        zs = z[s]
        cs = None if c is None else c[s]
        basis = eye[:, None, :].expand(d, zs.shape[0], d)

        def column(t: torch.Tensor, zs: torch.Tensor = zs, cs: torch.Tensor | None = cs):
            return jvp(lambda zz: decoder(zz, cs), (zs,), (t,))[1]

        cols = vmap(column)(basis)  # (d, b, D)
        parts.append(cols.permute(1, 2, 0))
    return torch.cat(parts, dim=0)


def half_log_det_gram(jac: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``1/2 log det(J^T S^2 J)`` per sample, computed in float64.

    Parameters
    ----------
    jac : Tensor of shape (B, D, d)
        Jacobians of an injective map (``d <= D``).
    scale : Tensor of shape (D,), optional
        Per-output scale ``S = diag(scale)`` applied after the map (e.g. un-standardising
        the data), so the result is the volume change of ``x = scale * g(z) + mean``.

    Returns
    -------
    Tensor of shape (B,), dtype of ``jac``.
    """
    j = jac.double()
    if scale is not None:
        j = j * scale.double().reshape(1, -1, 1)
    r = torch.linalg.qr(j, mode="r" if not j.requires_grad else "reduced")[1]
    out = torch.log(torch.diagonal(r, dim1=-2, dim2=-1).abs()).sum(-1)
    return out.to(jac.dtype)


def manifold_log_prob(
    encoder: BatchFn,
    decoder: BatchFn,
    x: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    scale: torch.Tensor | None = None,
    max_elements: int | None = MAX_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact log-density of the projection ``g(f(x))`` on the learnt manifold.

    ``log N(f(x); 0, I) - 1/2 log det(J_g^T S^2 J_g)`` (w.r.t. the manifold's volume
    measure). Works under ``torch.no_grad``.

    Parameters
    ----------
    encoder, decoder : callable
        Batched networks.
    x : Tensor of shape (B, D)
    c : Tensor of shape (B, k) or None
    scale : Tensor of shape (D,), optional
        See :func:`half_log_det_gram`.
    max_elements : int or None
        See :func:`decoder_jacobian`.

    Returns
    -------
    log_prob : Tensor of shape (B,)
    z : Tensor of shape (B, d)
    x_hat : Tensor of shape (B, D)
    """
    z = encoder(x, c)
    x_hat = decoder(z, c)
    jac = decoder_jacobian(decoder, z, c, max_elements=max_elements)
    log_pz = -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * _LOG_2PI)
    return log_pz - half_log_det_gram(jac, scale), z, x_hat


class MLAEModule(TrainingModule):
    """Encoder ``f: R^D -> R^d`` and decoder ``g: R^d -> R^D`` of an MLAE with its losses.

    Training loss per sample (stable form, see the module docstring)::

        beta * |x - g(f(x))|^2 + 1/2 |f(x)|^2 - v^T J_f(x) SG(J_g(f(x)) v)

    Validation loss: the same objective with the exact volume term,
    ``beta * |x - g(f(x))|^2 - log p(g(f(x)))``, i.e. (up to a constant) the negative
    log-likelihood of a full-dimensional model that adds isotropic Gaussian noise of
    variance ``1 / (2 beta)`` off the manifold. Its parts are recorded as ``nll`` (exact
    manifold NLL) and ``reconstruction``.

    Parameters
    ----------
    encoder, decoder : torch.nn.Module
        Networks called as ``net(x, c)``.
    beta : float
        Weight of the reconstruction term.
    n_hutchinson : int
        Hutchinson probes per sample (at most ``d``).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, beta: float, n_hutchinson: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.beta = float(beta)
        self.n_hutchinson = int(n_hutchinson)

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Latent codes ``f(x)``."""
        return self.encoder(x, c)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Points ``g(z)`` on the manifold."""
        return self.decoder(z, c)

    def reconstruct(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Projections ``g(f(x))``."""
        return self.decoder(self.encoder(x, c), c)

    def training_loss(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        out = mlae_surrogate(self.encoder, self.decoder, x, c, n_probes=self.n_hutchinson)
        reconstruction = (x - out.x_hat).pow(2).sum(-1)
        nll_surrogate = 0.5 * out.z.pow(2).sum(-1) - out.surrogate
        return (self.beta * reconstruction + nll_surrogate).mean()

    def log_prob(
        self,
        x: torch.Tensor,
        c: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exact log-density of ``g(f(x))`` on the manifold (see :func:`manifold_log_prob`)."""
        return manifold_log_prob(self.encoder, self.decoder, x, c, scale=scale)[0]

    def validation_loss(
        self, x: torch.Tensor, c: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        log_p, _, x_hat = manifold_log_prob(self.encoder, self.decoder, x, c)
        reconstruction = (x - x_hat).pow(2).sum(-1)
        return {
            "loss": (self.beta * reconstruction - log_p).mean(),
            "nll": -log_p.mean(),
            "reconstruction": reconstruction.mean(),
        }
