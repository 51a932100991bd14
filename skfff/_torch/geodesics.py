"""Relaxation of discrete paths towards geodesics of a density-based conformal metric.

The metric is ``p(x)^(-beta) |dx|``. Parametrised at constant Euclidean speed, its geodesics
solve (Sorrenson et al. 2024, with ``s = grad log p``)

    ``phi'' - beta (s . phi') phi' + beta s |phi'|^2 = 0``, i.e. ``phi'' = -beta |phi'|^2 s_perp``,

with ``s_perp`` the part of the score normal to the path. On ``N`` points the residual at an
interior point is ``r_i = (phi_{i+1} - 2 phi_i + phi_{i-1}) + beta |d_i|^2 P_i s(phi_i)``, with
``d_i = (phi_{i+1} - phi_{i-1}) / 2`` and ``P_i`` the projector normal to ``d_i``. The
tangential part of the second difference is the spacing penalty that keeps the points at
constant speed; the normal part straightens the path against the pull of the score. Each
iteration takes an implicit (backward Euler) step in the second difference and an explicit
one in the score term, so a large step relaxes the whole path at once instead of diffusing
corrections point by point. The fixed point is a discrete critical point of the length
``sum_i p(m_i)^(-beta) |phi_{i+1} - phi_i|``. The score drives the iteration; when the
length itself can be evaluated, a per-path step control rejects any step that lengthens the
path, so the relaxation only ever shortens it (sharply peaked, learnt densities make the
explicit score term stiff). Batched over many paths: tensors of shape
``(n_paths, n_points, D)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["relax_paths", "resample_polylines"]

ScoreFn = Callable[[Tensor], Tensor]
LengthFn = Callable[[Tensor], Tensor]


def resample_polylines(points: Tensor, n_points: int) -> Tensor:
    """Resample polylines at constant Euclidean speed.

    Parameters
    ----------
    points : Tensor of shape (B, M, D)
        Vertices of ``B`` polylines; shorter ones may be padded by repeating their last vertex
        (zero-length segments are harmless).
    n_points : int
        Number of output points, end points included.

    Returns
    -------
    Tensor of shape (B, n_points, D)
        Points equally spaced in arc length, first and last vertices kept exactly.
    """
    B, M, D = points.shape
    if M == 1:
        return points.expand(B, n_points, D).clone()
    seg = (points[:, 1:] - points[:, :-1]).norm(dim=-1)  # (B, M-1)
    cum = torch.cat([seg.new_zeros(B, 1), seg.cumsum(dim=1)], dim=1)  # (B, M)
    total = cum[:, -1:]
    u = torch.linspace(0.0, 1.0, n_points, dtype=points.dtype, device=points.device)
    u = u[None, :] * total  # (B, n_points)
    idx = torch.searchsorted(cum.contiguous(), u.contiguous()).clamp(1, M - 1)
    lo = cum.gather(1, idx - 1)
    hi = cum.gather(1, idx)
    frac = ((u - lo) / (hi - lo).clamp_min(torch.finfo(points.dtype).tiny)).clamp(0.0, 1.0)
    p_lo = points.gather(1, (idx - 1)[..., None].expand(B, n_points, D))
    p_hi = points.gather(1, idx[..., None].expand(B, n_points, D))
    out = p_lo + frac[..., None] * (p_hi - p_lo)
    out[:, 0] = points[:, 0]
    out[:, -1] = points[:, -1]
    return out


def _implicit_operator(n_interior: int, step: float, like: Tensor) -> Tensor:
    """Inverse of ``I - step * L`` for the Dirichlet second difference ``L`` (tridiagonal)."""
    eye = torch.eye(n_interior, dtype=torch.float64, device=like.device)
    lap = -2.0 * eye
    if n_interior > 1:
        off = torch.ones(n_interior - 1, dtype=torch.float64, device=like.device)
        lap = lap + torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.inv(eye - step * lap).to(like.dtype)


def relax_paths(
    phi: Tensor,
    score: ScoreFn,
    beta: float,
    *,
    max_iter: int = 200,
    step: float | None = None,
    tol: float = 1e-4,
    length: LengthFn | None = None,
    n_step_levels: int = 12,
) -> tuple[Tensor, int]:
    """Move the interior points of paths towards the metric's geodesics (end points fixed).

    Parameters
    ----------
    phi : Tensor of shape (B, N, D)
        Initial paths, ideally resampled at constant speed (:func:`resample_polylines`).
    score : callable
        ``score(x)`` returns ``grad log p(x)`` for a tensor of shape ``(m, D)``.
    beta : float
        Exponent of the metric ``p^(-beta)``.
    max_iter : int
        Largest number of iterations.
    step : float, optional
        Largest implicit step size, in units of the squared point spacing. The default
        ``(N - 1)^2 / 10`` relaxes the slowest mode of the path by about a half per
        iteration; larger steps are faster and less damped.
    tol : float
        A path stops once no point moves by more than ``tol`` times its chord length.
    length : callable, optional
        ``length(paths) -> (B,)`` metric lengths. When given, every path keeps its own step
        size: a step that lengthens the path is rejected and the step halved, an accepted one
        lets the step grow again. The lengths then never increase, which keeps stiff (sharply
        peaked) densities stable. A path stops when its step has been halved
        ``n_step_levels - 1`` times.
    n_step_levels : int
        Number of step sizes ``step * 2^-k`` available to the step control.

    Returns
    -------
    phi : Tensor of shape (B, N, D)
        The relaxed paths.
    n_iter : int
        Iterations run.
    """
    B, N, D = phi.shape
    if N < 3 or B == 0:
        return phi.clone(), 0
    phi = phi.detach().clone()
    n_int = N - 2
    if step is None:
        step = (N - 1) ** 2 / 10.0
    steps = step * 2.0 ** -torch.arange(n_step_levels, dtype=torch.float64)
    invs = torch.stack([_implicit_operator(n_int, float(s), phi) for s in steps])
    steps = steps.to(phi)
    level = torch.zeros(B, dtype=torch.long, device=phi.device)
    best = length(phi) if length is not None else None
    chord = (phi[:, -1] - phi[:, 0]).norm(dim=-1).clamp_min(1e-12)  # (B,)
    # largest move per point and iteration: the path's initial mean spacing
    spacing = (phi[:, 1:] - phi[:, :-1]).norm(dim=-1).sum(dim=1) / (N - 1)
    active = torch.arange(B, device=phi.device)  # paths not yet converged
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - reported to the caller
        sub = phi[active]
        lv = level[active]
        st = steps[lv][:, None, None]
        x = sub[:, 1:-1]
        d = 0.5 * (sub[:, 2:] - sub[:, :-2])
        d2 = (d * d).sum(dim=-1, keepdim=True)
        t = d / d2.sqrt().clamp_min(1e-12)
        s = score(x.reshape(-1, D)).reshape(x.shape)
        s_perp = s - (s * t).sum(dim=-1, keepdim=True) * t
        rhs = x + st * beta * d2 * s_perp
        rhs[:, 0] += st[:, 0] * sub[:, 0]
        rhs[:, -1] += st[:, 0] * sub[:, -1]
        move = torch.einsum("bij,bjd->bid", invs[lv], rhs).sub_(x).nan_to_num_(0.0, 0.0, 0.0)
        norm = move.norm(dim=-1, keepdim=True)
        move *= (spacing[active, None, None] / norm.clamp_min(1e-30)).clamp(max=1.0)
        small = norm[..., 0].amax(dim=1) <= tol * chord[active]
        if length is None:
            phi[active, 1:-1] = x + move
            done = small
        else:
            cand = sub.clone()
            cand[:, 1:-1] = x + move
            new = length(cand)
            ok = new <= best[active] * (1 + 1e-7)
            phi[active[ok]] = cand[ok]
            best[active[ok]] = new[ok]
            level[active] = torch.where(ok, (lv - 1).clamp_min(0), lv + 1)
            done = (ok & small) | (level[active] >= n_step_levels)
            level.clamp_(max=n_step_levels - 1)
        active = active[~done]
        if active.numel() == 0:
            break
    return phi, n_iter
