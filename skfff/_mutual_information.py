"""How much a condition tells about the data: a nearest-neighbour mutual information.

A conditional flow has to resolve ``p(x | y)``, not ``p(x)``: the more ``y`` tells about
``x``, the narrower the conditional density is than the marginal one, and the more exactly
the decoder must invert the encoder for its samples to land where the density is (the
reason :class:`~skfff.FreeFormFlow` scales ``beta`` by it). The mutual information
``I(X; Y)`` measures that: for Gaussians, ``exp(2 I / d)`` is the ratio of the marginal to
the conditional variance, averaged geometrically over the ``d`` dimensions of ``x``.

Estimators: Kraskov, Stoegbauer and Grassberger (2004), "Estimating mutual information",
Phys. Rev. E 69, 066138 (their first estimator, max-norm neighbourhoods) for continuous
``y``; Ross (2014), "Mutual information between discrete and continuous data sets", PLoS ONE
9, e87357 for class labels.
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma
from sklearn.neighbors import KDTree

__all__ = ["mutual_information"]


def _count_within(points: np.ndarray, radii: np.ndarray, *, inclusive: bool = False
                  ) -> np.ndarray:
    """How many other rows lie within ``radii[i]`` (max-norm) of row ``i``: strictly
    closer, or with ``inclusive`` at most that far."""
    bound = radii if inclusive else np.nextafter(radii, 0)
    tree = KDTree(points, metric="chebyshev")
    return tree.query_radius(points, bound, count_only=True) - 1


def _kth_distance(points: np.ndarray, k: int) -> np.ndarray:
    """Max-norm distance from each row of ``points`` to its ``k``-th nearest other row."""
    dist, _ = KDTree(points, metric="chebyshev").query(points, k=k + 1)
    return dist[:, -1]


def mutual_information(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    categorical: bool = False,
    n_neighbors: int = 5,
    max_rows: int = 5000,
    seed: int = 0,
) -> float:
    """Estimate ``I(X; Y)`` in nats from paired rows.

    Parameters
    ----------
    X : ndarray of shape (n_samples, d)
        Continuous data, on comparable scales per column (e.g. standardised).
    Y : ndarray of shape (n_samples, k)
        The condition: continuous columns (standardised), or with ``categorical=True`` a
        one-hot (or any exact) encoding of class labels, one distinct row per class.
    categorical : bool, default=False
        Whether ``Y`` holds class labels (Ross's estimator) rather than numbers (KSG).
    n_neighbors : int, default=5
        ``k`` of the estimators.
    max_rows : int, default=5000
        Larger data are subsampled to this many rows (without replacement).
    seed : int, default=0
        Seed of the subsample and of the ``1e-10``-scale jitter that breaks ties between
        repeated rows. The estimate is a deterministic function of the data and ``seed``.

    Returns
    -------
    float
        The estimate, clipped at 0 (the estimators can go slightly negative for
        independent data); 0 when there are too few rows to estimate.
    """
    rng = np.random.default_rng(seed)
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    Y = np.asarray(Y, dtype=np.float64).reshape(len(Y), -1)
    if len(X) > max_rows:
        keep = rng.choice(len(X), max_rows, replace=False)
        X, Y = X[keep], Y[keep]
    n = len(X)
    X = X + 1e-10 * rng.standard_normal(X.shape)
    if categorical:
        _, labels = np.unique(Y, axis=0, return_inverse=True)
        labels = labels.reshape(-1)
        counts = np.bincount(labels)
        usable = counts[labels] > 1
        if usable.sum() < 2:
            return 0.0
        X, labels = X[usable], labels[usable]
        n, counts = len(X), np.bincount(labels)
        radii = np.empty(n)
        for label in np.flatnonzero(counts):
            rows = labels == label
            radii[rows] = _kth_distance(X[rows], min(n_neighbors, counts[label] - 1))
        k_used = np.minimum(n_neighbors, counts[labels] - 1)
        m = np.maximum(_count_within(X, radii, inclusive=True), 1)
        estimate = (digamma(n) - np.mean(digamma(counts[labels])) + np.mean(digamma(k_used))
                    - np.mean(digamma(m)))
    else:
        if n <= n_neighbors + 1:
            return 0.0
        Y = Y + 1e-10 * rng.standard_normal(Y.shape)
        radii = _kth_distance(np.hstack([X, Y]), n_neighbors)
        n_x, n_y = _count_within(X, radii), _count_within(Y, radii)
        estimate = (digamma(n_neighbors) + digamma(n)
                    - np.mean(digamma(n_x + 1) + digamma(n_y + 1)))
    return max(float(estimate), 0.0)
