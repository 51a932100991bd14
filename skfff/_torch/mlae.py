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

from collections.abc import Callable

import torch

from .jacobian import half_log_det_gram, jacobian_on_basis
from .module import EncoderDecoder
from .priors import standard_normal_log_prob
from .surrogates import orthonormal_probes, volume_change_surrogate

__all__ = ["MLAEModule", "projection_log_prob"]

BatchFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def projection_log_prob(
    encoder: BatchFn,
    decoder: BatchFn,
    x: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact log-density of the projection ``g(f(x))`` on the learnt manifold.

    ``log N(f(x); 0, I) - 1/2 log det(J_g^T S^2 J_g)`` (w.r.t. the manifold's volume
    measure), from the decoder Jacobian (``d`` jvps). Works under ``torch.no_grad``.

    Parameters
    ----------
    encoder, decoder : callable
        Batched networks.
    x : Tensor of shape (B, D)
    c : Tensor of shape (B, k) or None
    scale : Tensor of shape (D,), optional
        See :func:`~skfff._torch.jacobian.half_log_det_gram`.

    Returns
    -------
    log_prob : Tensor of shape (B,)
    z : Tensor of shape (B, d)
    x_hat : Tensor of shape (B, D)
    """
    z = encoder(x, c)
    x_hat = decoder(z, c)
    jac = jacobian_on_basis(decoder, z, c)
    return standard_normal_log_prob(z) - half_log_det_gram(jac, scale), z, x_hat


class MLAEModule(EncoderDecoder):
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

    def training_loss(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        out = volume_change_surrogate(
            self.encoder, self.decoder, x, c, probes=orthonormal_probes, n_probes=self.n_hutchinson
        )
        reconstruction = (x - out.x_hat).pow(2).sum(-1)
        nll_surrogate = 0.5 * out.z.pow(2).sum(-1) - out.surrogate
        return (self.beta * reconstruction + nll_surrogate).mean()

    def log_prob(
        self,
        x: torch.Tensor,
        c: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exact log-density of ``g(f(x))`` on the manifold (see :func:`projection_log_prob`)."""
        return projection_log_prob(self.encoder, self.decoder, x, c, scale=scale)[0]

    def validation_loss(
        self, x: torch.Tensor, c: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        log_p, _, x_hat = projection_log_prob(self.encoder, self.decoder, x, c)
        reconstruction = (x - x_hat).pow(2).sum(-1)
        return {
            "loss": (self.beta * reconstruction - log_p).mean(),
            "nll": -log_p.mean(),
            "reconstruction": reconstruction.mean(),
        }
