"""The unit sphere ``S^n`` in ``R^(n+1)``, plus latitude/longitude helpers for ``S^2``."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_integer
from .base import Manifold, log_sphere_volume

__all__ = ["Sphere", "latlon_to_unit", "unit_to_latlon"]

_EPS = 1e-12


class Sphere(Manifold):
    """The unit sphere ``S^n = {x in R^(n+1) : |x| = 1}``.

    Coordinates are the unit vectors themselves (``n + 1`` columns). The volume
    measure is the area induced by ``R^(n+1)``: ``4 pi`` for ``S^2``, and in general
    ``2 pi^((n+1)/2) / Gamma((n+1)/2)``.

    Parameters
    ----------
    n : int, default=2
        Intrinsic dimension (``n >= 1``).

    See Also
    --------
    latlon_to_unit : Points on ``S^2`` from latitude and longitude in degrees.

    Examples
    --------
    >>> import math
    >>> from skfff.manifolds import Sphere
    >>> s2 = Sphere(2)
    >>> round(math.exp(s2.log_volume()) / math.pi, 6)
    4.0
    """

    def __init__(self, n: int = 2):
        self.dim = check_integer(n, "Sphere's intrinsic dimension n")
        self.ambient_dim = self.dim + 1
        self.n_coordinates = self.ambient_dim

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)

    def project_tangent(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v - (v * x).sum(-1, keepdim=True) * x

    def distance_to_manifold(self, x: torch.Tensor) -> torch.Tensor:
        return (x.norm(dim=-1) - 1.0).abs()

    def tangent_basis(self, x):
        """Orthonormal basis of ``x^perp`` from a Householder reflection.

        With ``k = argmax |x_k|`` and ``w = x + sign(x_k) e_k``, the reflection
        ``H = I - 2 w w^T / |w|^2`` maps ``e_k`` to ``-sign(x_k) x``; its other columns
        span the tangent space. Smooth in ``x`` away from ties in ``argmax``, so it is
        safe to differentiate (unlike an eigendecomposition of the projector).
        """
        m = self.ambient_dim
        k = x.abs().argmax(dim=-1, keepdim=True)
        sign = torch.where(torch.gather(x, -1, k) >= 0, 1.0, -1.0).to(x.dtype)
        e_k = torch.zeros_like(x).scatter(-1, k, 1.0)
        w = x + sign * e_k
        h = torch.eye(m, dtype=x.dtype, device=x.device) - 2.0 * (
            w.unsqueeze(-1) * w.unsqueeze(-2)) / (w * w).sum(-1)[..., None, None]
        idx = torch.arange(m - 1, device=x.device)
        idx = idx + (idx >= k).long()  # (..., m - 1): every column but k
        idx = idx.unsqueeze(-2).expand(*x.shape[:-1], m, m - 1)
        return torch.gather(h, -1, idx)

    def random_uniform(self, n_samples, generator=None, device=None, dtype=torch.float32):
        g = torch.randn(n_samples, self.ambient_dim, generator=generator, dtype=dtype,
                        device=device)
        return self.project(g)

    def log_volume(self) -> float:
        return log_sphere_volume(self.dim)


def latlon_to_unit(lat: np.ndarray, lon: np.ndarray | None = None) -> np.ndarray:
    """Unit vectors on ``S^2`` from latitude and longitude in degrees.

    Parameters
    ----------
    lat : array-like of shape (n_samples,) or (n_samples, 2)
        Latitudes in degrees; or an array whose columns are (latitude, longitude).
    lon : array-like of shape (n_samples,), optional
        Longitudes in degrees (required unless ``lat`` has two columns).

    Returns
    -------
    ndarray of shape (n_samples, 3)
        ``(cos(lat) cos(lon), cos(lat) sin(lon), sin(lat))``.

    See Also
    --------
    unit_to_latlon : The inverse map.

    Examples
    --------
    >>> from skfff.manifolds import latlon_to_unit
    >>> latlon_to_unit([90.0], [0.0]).round(6)
    array([[0., 0., 1.]])
    """
    lat = np.asarray(lat, dtype=np.float64)
    if lon is None:
        if lat.ndim != 2 or lat.shape[1] != 2:
            raise ValueError("Pass lat and lon, or one array of shape (n_samples, 2).")
        lat, lon = lat[:, 0], lat[:, 1]
    lat = np.deg2rad(np.ravel(lat))
    lon = np.deg2rad(np.ravel(np.asarray(lon, dtype=np.float64)))
    if lat.shape != lon.shape:
        raise ValueError(f"lat and lon have different lengths: {lat.shape} vs {lon.shape}.")
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def unit_to_latlon(X: np.ndarray) -> np.ndarray:
    """Latitude and longitude in degrees from points in ``R^3`` (normalised first).

    Parameters
    ----------
    X : array-like of shape (n_samples, 3)

    Returns
    -------
    ndarray of shape (n_samples, 2)
        Columns (latitude in [-90, 90], longitude in (-180, 180]).
    """
    X = np.asarray(X, dtype=np.float64)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    lat = np.rad2deg(np.arcsin(np.clip(X[:, 2], -1.0, 1.0)))
    lon = np.rad2deg(np.arctan2(X[:, 1], X[:, 0]))
    return np.stack([lat, lon], axis=1)
