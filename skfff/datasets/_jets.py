"""Synthetic calorimeter-like jet images (a stand-in for top-tagging data)."""

from __future__ import annotations

import numpy as np
from sklearn.utils import check_random_state

from .._checks import check_integer

__all__ = ["make_jet_images"]

# Half-width of the image in the (eta, phi) plane, in units of the jet radius R = 0.8.
_HALF_WIDTH = 1.0
# Particles generated per prong; their energy shares follow a spiky Dirichlet, so the number of
# visible deposits varies from jet to jet.
_PARTICLES_PER_PRONG = 24


def _prong_particles(
    rng: np.random.Generator | np.random.RandomState,
    centres: np.ndarray,
    energies: np.ndarray,
    spread: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shower each prong into particles around its axis.

    Parameters
    ----------
    rng : RandomState
        Random number generator.
    centres : ndarray of shape (n, P, 2)
        Prong axes in the (eta, phi) plane.
    energies : ndarray of shape (n, P)
        Energy fraction carried by each prong.
    spread : ndarray of shape (n, P)
        Largest angle of an emission from the prong axis.

    Returns
    -------
    eta, phi, energy : ndarrays of shape (n, P * M)
        Particle positions and energies (M particles per prong).
    """
    n, n_prongs = energies.shape
    m = _PARTICLES_PER_PRONG
    # Energy sharing inside a prong: a hard leading particle and a soft tail.
    shares = rng.gamma(0.35, size=(n, n_prongs, m))
    shares /= shares.sum(-1, keepdims=True)
    # Collinear enhancement: angles log-uniform between theta_min and the prong's spread, softer
    # particles at larger angles on average (sort both and pair them with some shuffling).
    theta_min = 0.01
    u = rng.uniform(size=(n, n_prongs, m))
    theta = theta_min * (spread[..., None] / theta_min) ** u
    order_e = np.argsort(-shares, axis=-1)
    theta_sorted = np.sort(theta + rng.uniform(0.0, 0.15, size=theta.shape), axis=-1)
    theta_paired = np.empty_like(theta_sorted)
    np.put_along_axis(theta_paired, order_e, theta_sorted, axis=-1)
    azimuth = rng.uniform(0.0, 2.0 * np.pi, size=(n, n_prongs, m))
    eta = centres[..., 0:1] + theta_paired * np.cos(azimuth)
    phi = centres[..., 1:2] + theta_paired * np.sin(azimuth)
    energy = energies[..., None] * shares
    return eta.reshape(n, -1), phi.reshape(n, -1), energy.reshape(n, -1)


def _qcd_jets(rng, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-prong jets: a hard core and, often, a soft wide-angle emission."""
    centres = np.zeros((n, 2, 2))
    # Gluon emission: momentum fraction z ~ 1/z on [0.02, 0.5], angle log-uniform.
    z = 0.02 * (0.5 / 0.02) ** rng.uniform(size=n)
    z *= rng.uniform(size=n) < 0.8  # a fifth of the jets have no resolved second prong
    angle = 0.05 * (0.8 / 0.05) ** rng.uniform(size=n)
    centres[:, 1, 1] = angle  # preprocessing rotates the second prong onto the +phi axis
    energies = np.stack([1.0 - z, z], axis=1)
    spread = np.stack([rng.uniform(0.15, 0.45, size=n), rng.uniform(0.05, 0.2, size=n)], axis=1)
    return _prong_particles(rng, centres, energies, spread)


def _top_jets(rng, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three-prong jets: t -> b W -> b q q', hardest prong at the centre.

    The prong geometry is drawn at random and then scaled so that the jet mass matches the top
    mass: ``sum_{i<j} z_i z_j dR_ij^2 = (m / pT)^2`` with ``m / pT ~ N(0.29, 0.03)`` (a 175 GeV
    top at pT 550-650 GeV), prongs kept inside the jet radius 0.8.
    """
    shares = rng.dirichlet([2.0, 2.0, 2.0], size=n)
    shares = -np.sort(-shares, axis=1)
    centres = np.zeros((n, 3, 2))
    # Second prong rotated onto the +phi axis, the third flipped into the upper-right quadrant.
    centres[:, 1, 1] = 1.0
    r3 = rng.uniform(0.5, 1.5, size=n)
    a3 = rng.uniform(0.0, 0.45 * np.pi, size=n)
    centres[:, 2, 0] = r3 * np.cos(a3)
    centres[:, 2, 1] = r3 * np.sin(a3)
    d2 = ((centres[:, :, None, :] - centres[:, None, :, :]) ** 2).sum(-1)
    zz = shares[:, :, None] * shares[:, None, :]
    mass2 = 0.5 * (zz * d2).sum((1, 2))  # sum over pairs i < j
    target = rng.normal(0.29, 0.03, size=n).clip(0.2, 0.4)
    scale = target / np.sqrt(mass2)
    scale = np.minimum(scale, 0.8 / np.maximum(1.0, r3))
    centres *= scale[:, None, None]
    spread = rng.uniform(0.05, 0.25, size=(n, 3))
    return _prong_particles(rng, centres, shares, spread)


def make_jet_images(
    n_samples: int = 1000,
    signal_fraction: float = 0.5,
    image_size: int = 40,
    random_state: int | np.random.RandomState | None = None,
    *,
    signal: str = "top",
) -> tuple[np.ndarray, np.ndarray]:
    """Generate synthetic calorimeter-like jet images, QCD-like vs top-like.

    A stand-in for the top-tagging data sets (which cannot be downloaded here) used by
    Dillon, Plehn, Sauer and Sorrenson (2021). Each jet is a set of particles showered around
    its prongs and deposited on an ``image_size x image_size`` grid covering
    ``|eta|, |phi| <= 1`` (jet radius 0.8), after the usual preprocessing: the hardest prong is at
    the centre, the second one on the +phi axis, the third (if any) flipped into the upper-right
    quadrant.

    - *QCD-like* (one prong): a hard core at the centre with a wide soft spray and, in four jets
      out of five, a soft wide-angle emission (energy fraction ``z ~ 1/z`` on [0.02, 0.5]).
    - *Top-like* (three prongs, ``t -> b q q'``): energy shared by three prongs from a Dirichlet
      distribution, at random positions scaled so that the jet mass is near the top mass
      (``m / pT ~ 0.29``), each prong showering with its own spread.

    Within a prong, energy is shared by a spiky Dirichlet (a hard leading particle and a soft
    tail) with angles log-uniform around the axis (collinear enhancement); each deposit is
    smeared by about half a cell (detector resolution). Images are normalised to unit sum.
    These images are simpler than real jets: treat figures measured on them as a sanity check,
    not as physics results.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of jets.
    signal_fraction : float, default=0.5
        Fraction of signal jets, in [0, 1]; the signal count is rounded to the nearest integer.
    image_size : int, default=40
        Number of cells along each axis.
    random_state : int, RandomState instance or None, default=None
        Seed for reproducible output.
    signal : {"top", "qcd"}, default="top"
        Which kind of jet is labelled 1: the more complex (three-prong) class, or the simpler one.

    Returns
    -------
    X : ndarray of shape (n_samples, image_size ** 2)
        Flattened images (row-major, rows along phi), non-negative, each row summing to 1.
    y : ndarray of shape (n_samples,)
        1 for signal, 0 for background (int).

    Examples
    --------
    >>> from skfff.datasets import make_jet_images
    >>> X, y = make_jet_images(200, signal_fraction=0.1, image_size=20, random_state=0)
    >>> X.shape, int(y.sum())
    ((200, 400), 20)
    """
    check_integer(n_samples, "n_samples")
    if not 0.0 <= float(signal_fraction) <= 1.0:
        raise ValueError(f"signal_fraction must be in [0, 1], got {signal_fraction!r}.")
    check_integer(image_size, "image_size", minimum=2)
    if signal not in ("top", "qcd"):
        raise ValueError(f"signal must be 'top' or 'qcd', got {signal!r}.")
    rng = check_random_state(random_state)
    n_signal = int(round(n_samples * float(signal_fraction)))
    n_top = n_signal if signal == "top" else n_samples - n_signal
    is_top = np.zeros(n_samples, dtype=bool)
    is_top[rng.permutation(n_samples)[:n_top]] = True

    n_part = 3 * _PARTICLES_PER_PRONG
    eta = np.zeros((n_samples, n_part))
    phi = np.zeros((n_samples, n_part))
    energy = np.zeros((n_samples, n_part))
    for mask, gen, width in ((is_top, _top_jets, 3), (~is_top, _qcd_jets, 2)):
        n = int(mask.sum())
        if n:
            e, p, w = gen(rng, n)
            k = width * _PARTICLES_PER_PRONG
            eta[mask, :k], phi[mask, :k], energy[mask, :k] = e, p, w
    # Underlying event: a little uniform soft energy.
    n_ue = 6
    eta = np.concatenate([eta, rng.uniform(-1, 1, (n_samples, n_ue))], axis=1)
    phi = np.concatenate([phi, rng.uniform(-1, 1, (n_samples, n_ue))], axis=1)
    energy = np.concatenate([energy, rng.exponential(0.004, (n_samples, n_ue))], axis=1)

    # Detector: smear by half a cell, then deposit energies in cells (out-of-image deposits lost).
    cell = 2.0 * _HALF_WIDTH / image_size
    eta = eta + rng.normal(0.0, 0.5 * cell, size=eta.shape)
    phi = phi + rng.normal(0.0, 0.5 * cell, size=phi.shape)
    ix = np.floor((eta + _HALF_WIDTH) / cell).astype(np.int64)
    iy = np.floor((_HALF_WIDTH - phi) / cell).astype(np.int64)
    inside = (ix >= 0) & (ix < image_size) & (iy >= 0) & (iy < image_size)
    rows = np.broadcast_to(np.arange(n_samples)[:, None], ix.shape)
    flat = rows * image_size**2 + iy * image_size + ix
    X = np.bincount(flat[inside], weights=energy[inside], minlength=n_samples * image_size**2)
    X = X.reshape(n_samples, image_size**2)
    X /= X.sum(axis=1, keepdims=True)
    y = (is_top if signal == "top" else ~is_top).astype(np.int64)
    return X, y
