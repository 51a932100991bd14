"""The artificial nonlinear-ICA data of the GIN paper (Sorrenson, Rother and Koethe, ICLR 2020)."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.utils import check_random_state

from .._checks import check_integer
from .._torch.gin import GINFlow

__all__ = ["make_nonlinear_ica"]


def make_nonlinear_ica(
    n_samples: int = 10_000,
    *,
    n_clusters: int = 5,
    n_informative: int = 2,
    n_features: int = 10,
    noise_std: float = 0.01,
    n_mixing_blocks: int = 8,
    random_state: int | np.random.RandomState | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian clusters in a few latent dimensions, mixed into data by a random invertible network.

    The latent code has ``n_informative`` informative dimensions, drawn from ``n_clusters``
    axis-aligned Gaussian clusters (means uniform in [-5, 5], standard deviations uniform in
    [0.5, 3], per cluster and dimension), and ``n_features - n_informative`` noise dimensions of
    standard deviation ``noise_std``. A randomly initialised (not volume-preserving) GLOW network
    of ``n_mixing_blocks`` affine coupling blocks with random permutations maps the latent code to
    the data. This is the artificial experiment of the GIN paper: a GIN trained with the cluster
    label as auxiliary variable should find ``n_informative`` variables with large standard
    deviation and recover the informative latents up to permutation and element-wise
    transformation.

    Parameters
    ----------
    n_samples : int, default=10000
        Number of points.
    n_clusters : int, default=5
        Number of Gaussian clusters (classes).
    n_informative : int, default=2
        Number of informative latent dimensions.
    n_features : int, default=10
        Total dimension of the latent code and of the data (at least ``n_informative`` and 2).
    noise_std : float, default=0.01
        Standard deviation of the noise dimensions.
    n_mixing_blocks : int, default=8
        Coupling blocks of the random mixing network.
    random_state : int, RandomState instance or None, default=None
        Seed for the clusters, the points and the mixing network.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        The mixed data (float64).
    y : ndarray of shape (n_samples,)
        Cluster labels in ``range(n_clusters)``.
    latents : ndarray of shape (n_samples, n_features)
        The true latent code; its first ``n_informative`` columns are the informative ones.

    See Also
    --------
    skfff.GINTransformer : Recovers the informative latents from ``(X, y)``.

    Examples
    --------
    >>> from skfff.datasets import make_nonlinear_ica
    >>> X, y, latents = make_nonlinear_ica(500, random_state=0)
    >>> X.shape, y.shape, latents.shape
    ((500, 10), (500,), (500, 10))
    """
    n_samples = check_integer(n_samples, "n_samples")
    check_integer(n_clusters, "n_clusters")
    if not 1 <= n_informative <= n_features or n_features < 2:
        raise ValueError(
            "Need 1 <= n_informative <= n_features and n_features >= 2, got "
            f"n_informative={n_informative}, n_features={n_features}."
        )
    rng = check_random_state(random_state)
    means = rng.uniform(-5.0, 5.0, size=(n_clusters, n_informative))
    stds = rng.uniform(0.5, 3.0, size=(n_clusters, n_informative))
    y = rng.randint(n_clusters, size=n_samples)
    informative = means[y] + stds[y] * rng.standard_normal((n_samples, n_informative))
    noise = noise_std * rng.standard_normal((n_samples, n_features - n_informative))
    latents = np.hstack([informative, noise])

    generator = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
    mixer = GINFlow(
        n_features,
        n_mixing_blocks,
        volume_preserving=False,
        zero_init=False,
        generator=generator,
    ).double()
    with torch.no_grad():
        # torch's default nn.Linear initialisation, drawn from our own generator
        for module in mixer.modules():
            if isinstance(module, torch.nn.Linear):
                bound = 1.0 / math.sqrt(module.in_features)
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.uniform_(-bound, bound, generator=generator)
        X = mixer(torch.from_numpy(latents))[0].numpy()
    return X.astype(np.float64), y, latents
