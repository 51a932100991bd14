"""The flat torus ``T^n``: ``n`` angles, embedded as ``n`` (cos, sin) pairs in ``R^(2n)``."""

from __future__ import annotations

import math

import numpy as np
import torch

from .._checks import check_integer
from .base import Manifold

__all__ = ["Torus"]

_EPS = 1e-12


class Torus(Manifold):
    """The flat torus ``T^n`` as a product of unit circles in ``R^(2n)``.

    Coordinates are angles in radians (``n`` columns, any real value: they are taken
    modulo ``2 pi``); the embedding is ``(cos a_1, sin a_1, ..., cos a_n, sin a_n)``.
    Each circle has radius 1, so the Riemannian volume is the Lebesgue measure of the
    angles: the total volume is ``(2 pi)^n`` and densities are per radian^n.

    Parameters
    ----------
    n : int, default=2
        Number of angles (``n >= 1``).

    Examples
    --------
    >>> import math
    >>> from skfff.manifolds import Torus
    >>> round(Torus(2).log_volume() - 2 * math.log(2 * math.pi), 12)
    0.0
    """

    def __init__(self, n: int = 2):
        self.dim = check_integer(n, "Torus's number of angles n")
        self.ambient_dim = 2 * self.dim
        self.n_coordinates = self.dim

    def _pairs(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], self.dim, 2)

    def project(self, x):
        p = self._pairs(x)
        p = p / p.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        return p.reshape(x.shape)

    def distance_to_manifold(self, x):
        return (self._pairs(x).norm(dim=-1) - 1.0).pow(2).sum(-1).sqrt()

    def project_tangent(self, x, v):
        x, v = torch.broadcast_tensors(x, v)
        p, q = self._pairs(x), self._pairs(v)
        q = q - (q * p).sum(-1, keepdim=True) * p
        return q.reshape(v.shape)

    def tangent_basis(self, x):
        p = self._pairs(x)  # (..., n, 2)
        t = torch.stack([-p[..., 1], p[..., 0]], dim=-1)  # unit tangent of each circle
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        # basis[..., 2i + j, k] = t[..., i, j] * delta_ik
        basis = t.unsqueeze(-1) * eye.unsqueeze(-2)  # (..., n, 2, n)
        return basis.reshape(*x.shape[:-1], self.ambient_dim, self.dim)

    def random_uniform(self, n_samples, generator=None, device=None, dtype=torch.float32):
        angles = (torch.rand(n_samples, self.dim, generator=generator, dtype=dtype,
                             device=device) * 2.0 - 1.0) * math.pi
        return self.angles_to_embedding(angles)

    def log_volume(self):
        return self.dim * math.log(2.0 * math.pi)

    @staticmethod
    def angles_to_embedding(angles: torch.Tensor) -> torch.Tensor:
        """``(..., n)`` angles to ``(..., 2n)`` interleaved (cos, sin)."""
        return torch.stack([torch.cos(angles), torch.sin(angles)], -1).flatten(-2)

    def embedding_to_angles(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., 2n)`` embedding to ``(..., n)`` angles in ``(-pi, pi]``."""
        p = self._pairs(x)
        return torch.atan2(p[..., 1], p[..., 0])

    def to_embedding(self, X):
        X = np.asarray(X, dtype=np.float64)
        return np.stack([np.cos(X), np.sin(X)], axis=-1).reshape(X.shape[0], -1)

    def from_embedding(self, X):
        X = np.asarray(X, dtype=np.float64).reshape(-1, self.dim, 2)
        return np.arctan2(X[..., 1], X[..., 0])

    def coordinates_off_manifold(self, X):
        return np.zeros(np.asarray(X).shape[0])

    def project_coordinates(self, X):
        return np.asarray(X, dtype=np.float64)
