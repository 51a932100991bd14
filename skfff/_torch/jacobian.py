"""Exact Jacobians and log-determinants, batched with ``torch.func`` and chunked.

All functions take a *batched* function ``fn(x, c)`` (``c`` may be ``None``) and evaluate
per-sample Jacobians with ``vmap`` over the batch. The batch is processed in chunks so
that at most about ``max_elements`` Jacobian entries live in memory at once: memory stays
bounded for dimensions in the hundreds. ``torch.func`` ignores an outer ``no_grad``, so
these helpers work inside skorch's validation and prediction steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jacfwd, jacrev, vmap

__all__ = ["batch_jacobian", "logabsdet", "log_abs_det_jacobian", "half_log_det_jtj"]

BatchFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

#: default bound on the number of Jacobian entries computed at once (8 MiB in float32).
#: Forward mode also keeps one tangent per input dimension through every hidden layer, so
#: the peak is about this bound times (hidden width / dimension) times the depth: 2**24
#: gave a 2 GB peak for a width-128 network at D = 64; 2**21 keeps it in the low hundreds
#: of MB at no measurable cost in throughput.
MAX_ELEMENTS = 2**21


def _chunks(n: int, per_sample: int, max_elements: int | None) -> list[slice]:
    size = n if max_elements is None else max(1, max_elements // max(per_sample, 1))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def batch_jacobian(
    fn: BatchFn,
    x: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    mode: str = "auto",
    max_elements: int | None = MAX_ELEMENTS,
) -> torch.Tensor:
    """Per-sample Jacobians of a batched function.

    Parameters
    ----------
    fn : callable
        ``fn(x, c) -> y`` with ``x`` of shape (B, n) and ``y`` of shape (B, m); samples
        must not interact (no batch normalisation).
    x : Tensor of shape (B, n)
        Points.
    c : Tensor of shape (B, k) or None
        Conditions, passed through unchanged.
    mode : {"auto", "forward", "reverse"}
        Forward mode costs ``n`` jvps, reverse mode ``m`` vjps; ``"auto"`` takes the
        cheaper one.
    max_elements : int or None
        Bound on Jacobian entries computed at once; ``None`` for a single pass.

    Returns
    -------
    Tensor of shape (B, m, n)
    """
    if c is None:

        def single(xi: torch.Tensor) -> torch.Tensor:
            return fn(xi.unsqueeze(0), None).squeeze(0)

        args: tuple[torch.Tensor, ...] = (x,)
    else:

        def single(xi: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:  # type: ignore[misc]
            return fn(xi.unsqueeze(0), ci.unsqueeze(0)).squeeze(0)

        args = (x, c)
    n = x.shape[-1]
    if mode == "auto":
        with torch.no_grad():
            m = fn(x[:1], None if c is None else c[:1]).shape[-1]
        mode = "forward" if n <= m else "reverse"
    else:
        m = None
    transform = {"forward": jacfwd, "reverse": jacrev}[mode]
    jac = vmap(transform(single, argnums=0))
    per_sample = n * (m if m is not None else n)
    parts = [jac(*(a[s] for a in args)) for s in _chunks(x.shape[0], per_sample, max_elements)]
    return torch.cat(parts, dim=0)


def logabsdet(matrices: torch.Tensor) -> torch.Tensor:
    """``log |det M|`` of a batch of square matrices, from a float64 QR decomposition.

    Not ``torch.linalg.slogdet``: its batched LU (MKL on CPU, multi-threaded) returns wrong
    values for matrices of size 200 and more on some machines (we measured errors of 0.9
    nats at 256 x 256, with "SLASWP parameter 6" messages), while the QR route agrees with
    per-matrix determinants to 1e-14. QR also degrades more gracefully near singularity.

    Parameters
    ----------
    matrices : Tensor of shape (..., n, n)

    Returns
    -------
    Tensor of shape (...)
        In the dtype of ``matrices``.
    """
    mode = "reduced" if torch.is_grad_enabled() and matrices.requires_grad else "r"
    r = torch.linalg.qr(matrices.double(), mode=mode)[1]
    return torch.log(torch.diagonal(r, dim1=-2, dim2=-1).abs()).sum(-1).to(matrices.dtype)


def log_abs_det_jacobian(
    fn: BatchFn,
    x: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    max_elements: int | None = MAX_ELEMENTS,
) -> torch.Tensor:
    """``log |det J_fn(x)|`` per sample for a dimension-preserving ``fn``.

    Computed exactly from the full Jacobian (see :func:`logabsdet`), chunk by chunk.

    Returns
    -------
    Tensor of shape (B,)
    """
    n = x.shape[-1]
    out = []
    for s in _chunks(x.shape[0], n * n, max_elements):
        jac = batch_jacobian(
            fn, x[s], None if c is None else c[s], mode="forward", max_elements=None
        )
        out.append(logabsdet(jac))
    return torch.cat(out, dim=0)


def half_log_det_jtj(
    fn: BatchFn,
    z: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    max_elements: int | None = MAX_ELEMENTS,
) -> torch.Tensor:
    """``1/2 log det(J^T J)`` per sample for an injective ``fn: R^d -> R^D`` (``d <= D``).

    The Jacobian (``d`` jvps by forward mode) is reduced by a QR decomposition so the
    determinant is taken of a well-conditioned triangular factor.

    Returns
    -------
    Tensor of shape (B,)
    """
    d = z.shape[-1]
    out = []
    with torch.no_grad():
        big_d = fn(z[:1], None if c is None else c[:1]).shape[-1]
    for s in _chunks(z.shape[0], d * big_d, max_elements):
        jac = batch_jacobian(
            fn, z[s], None if c is None else c[s], mode="forward", max_elements=None
        )
        r = torch.linalg.qr(jac, mode="r")[1]
        out.append(torch.log(torch.diagonal(r, dim1=-2, dim2=-1).abs()).sum(-1))
    return torch.cat(out, dim=0)
