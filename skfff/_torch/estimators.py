"""Gradient estimators for the log-determinant term of free-form flows.

The free-form flow surrogate (Draxler et al., AISTATS 2024): for an encoder ``f`` and a
decoder ``g`` close to its inverse,

    grad_theta log|det J_f(x)| = tr(J_f^-1 grad_theta J_f) ~ tr(SG(J_g(f(x))) grad_theta J_f),

and the trace is estimated with Hutchinson probes ``v`` (``E[v v^T] = I``):
``surrogate = v^T J_f(x) SG(J_g(z) v)``. ``J_g v`` costs one forward-mode pass through the
decoder, ``v^T J_f`` one reverse-mode pass through the encoder, whatever the dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.func import jvp

__all__ = ["SurrogateOutput", "fff_surrogate"]

BatchFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class SurrogateOutput(NamedTuple):
    """What one surrogate evaluation returns (all per sample)."""

    z: torch.Tensor  #: latent codes ``f(x)``, shape (B, d)
    x_hat: torch.Tensor  #: reconstructions ``g(f(x))``, shape (B, D)
    surrogate: torch.Tensor  #: ``v^T J_f SG(J_g v)`` averaged over probes, shape (B,)


def fff_surrogate(
    encoder: BatchFn,
    decoder: BatchFn,
    x: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    n_probes: int = 1,
    generator: torch.Generator | None = None,
) -> SurrogateOutput:
    """Free-form flow log-determinant surrogate.

    Gradients of ``surrogate`` w.r.t. the encoder's parameters estimate those of
    ``log|det J_f(x)|`` (exactly, in expectation, when ``g = f^-1``); the decoder gets no
    gradient from it (it learns from reconstruction). ``x_hat`` carries gradients to both
    networks. Needs grad mode (a training step).

    Parameters
    ----------
    encoder, decoder : callable
        Batched networks ``f(x, c)`` and ``g(z, c)``.
    x : Tensor of shape (B, D)
    c : Tensor of shape (B, k) or None
    n_probes : int, default=1
        Hutchinson probes per sample.
    generator : torch.Generator, optional
        Source of the probes.

    Returns
    -------
    SurrogateOutput
    """
    x = x.detach().requires_grad_(True)
    z = encoder(x, c)
    surrogate = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    x_hat = None
    for k in range(n_probes):
        v = torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
        (v_jf,) = torch.autograd.grad(z, x, v, create_graph=True)
        out, jg_v = jvp(lambda zz: decoder(zz, c), (z,), (v,))
        if k == 0:
            x_hat = out
        surrogate = surrogate + (v_jf * jg_v.detach()).sum(-1)
    return SurrogateOutput(z, x_hat, surrogate / n_probes)
