"""Does a learnt density on R^D integrate to one? An importance-sampling check.

A free-form flow's exact density reads the decoder's Jacobian at ``f(x)``; it is a normalised
density only where ``g`` inverts ``f``, so it can hold spurious mass (``benchmarks/README.rst``
has fits that integrate to 1.7-3 in 3-D). On a grid this is checked up to D = 3; beyond, the
integral is estimated by importance sampling,

    Z = integral p(u) du = E_q[p(u) / q(u)],

with a proposal ``q`` built from the model's own samples: a Gaussian kernel density on them
(bandwidth by Scott's rule on their covariance), mixed with a broad Gaussian so that mass
away from the samples is also seen. The estimate is only as good as the proposal's cover of
``p``; its standard error says when it is not (the weights then become very unequal).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.special import logsumexp

__all__ = ["importance_integral"]

#: Share of the broad Gaussian N(mean, 4 cov) in the proposal.
BROAD_WEIGHT = 0.2


def _kernel_log_density(points: np.ndarray, centers: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """log of the mean over ``centers`` of N(points; center, L L^T), in blocks of points."""
    d = centers.shape[1]
    log_norm = -0.5 * d * math.log(2 * math.pi) - np.log(np.diag(chol)).sum()
    c = np.linalg.solve(chol, centers.T).T
    out = np.empty(len(points))
    step = max(1, 2**22 // max(len(centers), 1))
    for start in range(0, len(points), step):
        p = np.linalg.solve(chol, points[start : start + step].T).T
        sq = (p**2).sum(1)[:, None] - 2 * p @ c.T + (c**2).sum(1)[None, :]
        out[start : start + step] = logsumexp(-0.5 * np.maximum(sq, 0), axis=1)
    return out + log_norm - math.log(len(centers))


def importance_integral(
    log_density: Callable[[np.ndarray], np.ndarray],
    centers: np.ndarray,
    n_points: int,
    rng: np.random.RandomState,
) -> tuple[float, float]:
    """Importance-sampling estimate of ``integral exp(log_density(u)) du`` over R^D.

    Parameters
    ----------
    log_density : callable
        Log-density of an (n, D) array, returning (n,).
    centers : ndarray of shape (m, D)
        Samples of (roughly) the density itself; the proposal is a kernel density on them.
    n_points : int
        Proposal draws.
    rng : numpy.random.RandomState
        Source of the draws.

    Returns
    -------
    estimate, stderr : float
        ``mean(p / q)`` and its standard error ``std(p / q) / sqrt(n_points)``.
    """
    m, d = centers.shape
    mean = centers.mean(0)
    cov = np.atleast_2d(np.cov(centers.T)) + 1e-9 * np.eye(d)
    bandwidth = m ** (-1.0 / (d + 4))
    chol_kernel = np.linalg.cholesky(bandwidth**2 * cov)
    chol_broad = np.linalg.cholesky(4.0 * cov)
    broad = rng.random_sample(n_points) < BROAD_WEIGHT
    noise = rng.standard_normal((n_points, d))
    points = np.where(
        broad[:, None],
        mean + noise @ chol_broad.T,
        centers[rng.randint(m, size=n_points)] + noise @ chol_kernel.T,
    )
    log_q = np.logaddexp(
        math.log(1 - BROAD_WEIGHT) + _kernel_log_density(points, centers, chol_kernel),
        math.log(BROAD_WEIGHT) + _kernel_log_density(points, mean[None, :], chol_broad),
    )
    w = np.exp(np.asarray(log_density(points), dtype=np.float64) - log_q)
    return float(w.mean()), float(w.std(ddof=1) / math.sqrt(n_points))
