"""Toy densities with exact log-densities, for tests, examples and benchmarks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import logsumexp
from sklearn.utils import check_random_state

__all__ = ["make_gaussian_mixture_2d", "make_nonlinear_gaussian"]

LogDensity = Callable[[np.ndarray], np.ndarray]


def make_gaussian_mixture_2d(
    n_samples: int = 1000,
    *,
    n_components: int = 8,
    radius: float = 4.0,
    std: float = 0.5,
    random_state=None,
) -> tuple[np.ndarray, LogDensity]:
    """Isotropic Gaussians on a ring: a multimodal 2-D density with known log-density.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of points.
    n_components : int, default=8
        Number of equally weighted Gaussians, centred on a circle.
    radius : float, default=4.0
        Radius of the circle.
    std : float, default=0.5
        Standard deviation of each Gaussian.
    random_state : int, RandomState instance or None
        Seed.

    Returns
    -------
    X : ndarray of shape (n_samples, 2)
        Samples.
    log_density : callable
        ``log_density(X)`` returns the exact log-density of the mixture, shape (n,).

    Examples
    --------
    >>> from skfff.datasets import make_gaussian_mixture_2d
    >>> X, log_p = make_gaussian_mixture_2d(100, random_state=0)
    >>> X.shape, log_p(X).shape
    ((100, 2), (100,))
    """
    rng = check_random_state(random_state)
    angles = 2 * np.pi * np.arange(n_components) / n_components
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = rng.randint(n_components, size=n_samples)
    X = means[labels] + std * rng.standard_normal((n_samples, 2))

    def log_density(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        sq = ((points[:, None, :] - means[None]) ** 2).sum(-1)
        log_comp = -0.5 * sq / std**2 - np.log(2 * np.pi * std**2)
        return logsumexp(log_comp, axis=1) - np.log(n_components)

    return X, log_density


def make_nonlinear_gaussian(
    n_samples: int = 1000,
    *,
    n_features: int = 8,
    random_state=None,
) -> tuple[np.ndarray, LogDensity]:
    """A curved, non-Gaussian density in ``n_features`` dimensions with known log-density.

    ``u_1 ~ N(0, 1)``, ``u_i = 0.5 e_i + sin(1.5 u_{i-1})`` with ``e_i ~ N(0, 1)``: each
    coordinate bends along the previous one (a chain of "bananas"). The sample is
    ``x = Q u`` for a fixed random rotation ``Q``, so no coordinate is simple on its own.
    The map is triangular, and the log-density is exact:
    ``log p(x) = sum_i log N(e_i) - (n - 1) log 0.5``.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of points.
    n_features : int, default=8
        Dimension (at least 2).
    random_state : int, RandomState instance or None
        Seed for the samples; the rotation is fixed by ``n_features`` alone, so train and
        test sets drawn with different seeds share one density.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        Samples.
    log_density : callable
        ``log_density(X)`` returns the exact log-density, shape (n,).
    """
    if n_features < 2:
        raise ValueError("n_features must be at least 2")
    rng = check_random_state(random_state)
    q, _ = np.linalg.qr(np.random.RandomState(n_features).standard_normal((n_features,) * 2))
    e = rng.standard_normal((n_samples, n_features))
    u = np.empty_like(e)
    u[:, 0] = e[:, 0]
    for i in range(1, n_features):
        u[:, i] = 0.5 * e[:, i] + np.sin(1.5 * u[:, i - 1])
    X = u @ q.T

    def log_density(points: np.ndarray) -> np.ndarray:
        uu = np.asarray(points, dtype=np.float64) @ q
        ee = np.empty_like(uu)
        ee[:, 0] = uu[:, 0]
        ee[:, 1:] = (uu[:, 1:] - np.sin(1.5 * uu[:, :-1])) / 0.5
        log_n = -0.5 * (ee**2).sum(1) - 0.5 * n_features * np.log(2 * np.pi)
        return log_n - (n_features - 1) * np.log(0.5)

    return X, log_density
