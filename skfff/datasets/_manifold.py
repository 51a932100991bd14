"""Manifold data with exact log-densities: a von Mises-Fisher mixture on ``S^2``, a
wrapped-normal mixture on the torus ``T^d`` and a mixture of blurred rotations on ``SO(3)``."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.utils import check_random_state

from ..manifolds.so3 import log_isotropic_gaussian

__all__ = [
    "RotationMixtureDistribution",
    "VonMisesFisherMixtureDistribution",
    "WrappedNormalMixtureDistribution",
    "make_rotation_mixture",
    "make_torus_wrapped_normal_mixture",
    "make_vmf_mixture",
]


class VonMisesFisherMixtureDistribution:
    """A mixture of von Mises-Fisher distributions on ``S^2`` with an exact density.

    Parameters
    ----------
    means : array-like of shape (n_components, 3)
        Mean directions (normalised).
    concentrations : array-like of shape (n_components,)
        Concentrations ``kappa > 0``.
    weights : array-like of shape (n_components,), optional
        Mixture weights (normalised); uniform by default.

    See Also
    --------
    make_vmf_mixture : Draw a random mixture and samples from it.
    """

    def __init__(self, means, concentrations, weights=None):
        means = np.asarray(means, dtype=np.float64)
        self.means = means / np.linalg.norm(means, axis=1, keepdims=True)
        self.concentrations = np.asarray(concentrations, dtype=np.float64).ravel()
        k = len(self.means)
        w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()

    def log_density(self, X) -> np.ndarray:
        """Log-density w.r.t. the area of ``S^2`` (total ``4 pi``), shape (n_samples,)."""
        X = np.asarray(X, dtype=np.float64)
        k = self.concentrations
        log_c = np.log(k) - np.log(2 * np.pi) - k - np.log(-np.expm1(-2 * k))
        comp = log_c + k * (X @ self.means.T) + np.log(self.weights)
        return logsumexp(comp, axis=1)

    def sample(self, n_samples: int, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Draw points ``(n_samples, 3)`` and their component labels ``(n_samples,)``."""
        rng = check_random_state(random_state)
        y = rng.choice(len(self.weights), size=n_samples, p=self.weights)
        mu, kappa = self.means[y], self.concentrations[y]
        u = rng.uniform(size=n_samples)
        w = 1.0 + np.log(u + (1.0 - u) * np.exp(-2.0 * kappa)) / kappa
        w = np.clip(w, -1.0, 1.0)
        t = rng.standard_normal((n_samples, 3))
        t -= np.sum(t * mu, axis=1, keepdims=True) * mu
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        X = w[:, None] * mu + np.sqrt(1.0 - w**2)[:, None] * t
        return X / np.linalg.norm(X, axis=1, keepdims=True), y


class WrappedNormalMixtureDistribution:
    """A mixture of wrapped normals with diagonal covariance on the torus ``T^d``.

    Parameters
    ----------
    means : array-like of shape (n_components, d)
        Means (angles in radians).
    scales : array-like of shape (n_components, d)
        Standard deviations (radians) of the normals before wrapping.
    weights : array-like of shape (n_components,), optional
    n_wraps : int, default=4
        The density sums ``2 n_wraps + 1`` images per angle (exact to float64 for
        scales up to about 1.5).

    See Also
    --------
    make_torus_wrapped_normal_mixture : Draw a random mixture and samples from it.
    """

    def __init__(self, means, scales, weights=None, n_wraps: int = 4):
        self.means = np.asarray(means, dtype=np.float64)
        self.scales = np.broadcast_to(np.asarray(scales, dtype=np.float64),
                                      self.means.shape).copy()
        k = len(self.means)
        w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self.n_wraps = n_wraps

    def log_density(self, X) -> np.ndarray:
        """Log-density w.r.t. ``d theta`` (total volume ``(2 pi)^d``), shape (n_samples,)."""
        X = np.asarray(X, dtype=np.float64)
        shifts = 2 * np.pi * np.arange(-self.n_wraps, self.n_wraps + 1)
        # (n, K, d, wraps)
        diff = X[:, None, :, None] - self.means[None, :, :, None] + shifts
        s = self.scales[None, :, :, None]
        log_n = -0.5 * (diff / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
        per_dim = logsumexp(log_n, axis=-1).sum(-1)  # (n, K)
        return logsumexp(per_dim + np.log(self.weights), axis=1)

    def sample(self, n_samples: int, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Angles in ``[-pi, pi)`` of shape (n_samples, d) and component labels."""
        rng = check_random_state(random_state)
        y = rng.choice(len(self.weights), size=n_samples, p=self.weights)
        X = self.means[y] + self.scales[y] * rng.standard_normal((n_samples, self.means.shape[1]))
        return np.mod(X + np.pi, 2 * np.pi) - np.pi, y


def make_vmf_mixture(n_samples: int = 1000, *, n_components: int = 4,
                     concentration: float = 20.0, random_state=None,
                     return_distribution: bool = False):
    """Points on the sphere ``S^2`` from a random von Mises-Fisher mixture.

    Means are uniform on the sphere, all concentrations equal ``concentration``,
    weights are equal.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of points.
    n_components : int, default=4
        Number of mixture components.
    concentration : float, default=20.0
        Concentration ``kappa`` of every component (larger is tighter).
    random_state : int, RandomState instance or None
        Seeds both the mixture and the samples.
    return_distribution : bool, default=False
        Also return the :class:`VonMisesFisherMixtureDistribution`, whose
        ``log_density`` gives the exact log-density w.r.t. area.

    Returns
    -------
    X : ndarray of shape (n_samples, 3)
        Unit vectors.
    y : ndarray of shape (n_samples,)
        Component of each point.
    distribution : VonMisesFisherMixtureDistribution
        Only when ``return_distribution=True``.

    Examples
    --------
    >>> from skfff.datasets import make_vmf_mixture
    >>> X, y, dist = make_vmf_mixture(5, random_state=0, return_distribution=True)
    >>> X.shape, dist.log_density(X).shape
    ((5, 3), (5,))
    """
    rng = check_random_state(random_state)
    means = rng.standard_normal((n_components, 3))
    dist = VonMisesFisherMixtureDistribution(means, np.full(n_components, float(concentration)))
    X, y = dist.sample(n_samples, rng)
    return (X, y, dist) if return_distribution else (X, y)


def make_torus_wrapped_normal_mixture(n_samples: int = 1000, *, n_components: int = 3,
                                      scale: float = 0.4, n_dims: int = 2, random_state=None,
                                      return_distribution: bool = False):
    """Angles on the torus ``T^d`` from a random wrapped-normal mixture.

    Means are uniform in ``[-pi, pi)^d``; every component has standard deviation
    ``scale`` in every angle; weights are equal.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of points.
    n_components : int, default=3
        Number of mixture components.
    scale : float, default=0.4
        Standard deviation (radians) of every component in every angle.
    n_dims : int, default=2
        Number of angles.
    random_state : int, RandomState instance or None
        Seeds both the mixture and the samples.
    return_distribution : bool, default=False
        Also return the :class:`WrappedNormalMixtureDistribution`, whose
        ``log_density`` gives the exact log-density w.r.t. ``d theta``.

    Returns
    -------
    X : ndarray of shape (n_samples, n_dims)
        Angles in radians, in ``[-pi, pi)``.
    y : ndarray of shape (n_samples,)
        Component of each point.
    distribution : WrappedNormalMixtureDistribution
        Only when ``return_distribution=True``.

    Examples
    --------
    >>> from skfff.datasets import make_torus_wrapped_normal_mixture
    >>> X, y = make_torus_wrapped_normal_mixture(4, random_state=0)
    >>> X.shape
    (4, 2)
    """
    rng = check_random_state(random_state)
    means = rng.uniform(-np.pi, np.pi, size=(n_components, n_dims))
    dist = WrappedNormalMixtureDistribution(means, np.full((n_components, n_dims), float(scale)))
    X, y = dist.sample(n_samples, rng)
    return (X, y, dist) if return_distribution else (X, y)


class RotationMixtureDistribution:
    """A mixture of blurred rotations on ``SO(3)``: ``R = C_k exp(hat(w))``, ``w ~ N(0, s^2 I)``.

    Parameters
    ----------
    centres : array-like of shape (n_components, 3, 3)
        Rotation matrices.
    scale : float
        Standard deviation ``s`` (radians) of each component of the rotation vector ``w``.
    weights : array-like of shape (n_components,), optional

    Notes
    -----
    The density is w.r.t. the bi-invariant volume of total ``8 pi^2`` used by
    :class:`skfff.manifolds.SpecialOrthogonal` (geodesic distance = rotation angle). In
    exponential coordinates that volume is ``(sin(t/2) / (t/2))^2 d^3w``, ``t = |w|``, so each
    component's density is the Gaussian density of ``w = log(C_k^T R)`` divided by it. Rotation
    vectors longer than ``pi`` (a second preimage) are ignored: exact to about ``1e-8`` for
    ``scale <= 0.5``.

    See Also
    --------
    make_rotation_mixture : Draw a random mixture and samples from it.
    """

    def __init__(self, centres, scale: float, weights=None):
        self.centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3, 3)
        self.scale = float(scale)
        k = len(self.centres)
        w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()

    def log_density(self, X) -> np.ndarray:
        """Log-density of rotations ``(n, 3, 3)`` or ``(n, 9)``, shape (n_samples,)."""
        from scipy.spatial.transform import Rotation

        R = Rotation.from_matrix(np.asarray(X, dtype=np.float64).reshape(-1, 3, 3))
        comps = []
        for centre, weight in zip(self.centres, self.weights, strict=True):
            angle = np.linalg.norm((Rotation.from_matrix(centre).inv() * R).as_rotvec(), axis=1)
            comps.append(log_isotropic_gaussian(angle, self.scale) + np.log(weight))
        return logsumexp(np.stack(comps, axis=1), axis=1)

    def sample(self, n_samples: int, random_state=None) -> tuple[np.ndarray, np.ndarray]:
        """Rotation matrices ``(n_samples, 3, 3)`` and component labels ``(n_samples,)``."""
        from scipy.spatial.transform import Rotation

        rng = check_random_state(random_state)
        y = rng.choice(len(self.weights), size=n_samples, p=self.weights)
        noise = Rotation.from_rotvec(self.scale * rng.standard_normal((n_samples, 3)))
        return (Rotation.from_matrix(self.centres[y]) * noise).as_matrix(), y


def make_rotation_mixture(n_samples: int = 1000, *, n_components: int = 3,
                          scale: float = 0.1, random_state=None,
                          return_distribution: bool = False):
    """Rotations from a random mixture of blurred rotations on ``SO(3)``.

    Centres are uniform (Haar) random rotations; each point is a centre composed with a
    rotation by the vector ``w ~ N(0, scale^2 I)``; weights are equal.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of rotations.
    n_components : int, default=3
        Number of mixture components.
    scale : float, default=0.1
        Standard deviation (radians) of each component of the rotation vector.
    random_state : int, RandomState instance or None
        Seeds both the mixture and the samples.
    return_distribution : bool, default=False
        Also return the :class:`RotationMixtureDistribution`, whose ``log_density`` gives
        the exact log-density w.r.t. the volume of total ``8 pi^2``.

    Returns
    -------
    X : ndarray of shape (n_samples, 3, 3)
        Rotation matrices.
    y : ndarray of shape (n_samples,)
        Component of each rotation.
    distribution : RotationMixtureDistribution
        Only when ``return_distribution=True``.

    Examples
    --------
    >>> from skfff.datasets._manifold import make_rotation_mixture
    >>> X, y, dist = make_rotation_mixture(4, random_state=0, return_distribution=True)
    >>> X.shape, dist.log_density(X).shape
    ((4, 3, 3), (4,))
    """
    from scipy.spatial.transform import Rotation

    rng = check_random_state(random_state)
    centres = Rotation.random(n_components, random_state=rng).as_matrix()
    dist = RotationMixtureDistribution(centres, scale)
    X, y = dist.sample(n_samples, rng)
    return (X, y, dist) if return_distribution else (X, y)
