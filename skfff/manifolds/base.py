"""The :class:`Manifold` interface shared by spheres, tori, rotations and products.

A manifold ``M`` of intrinsic dimension ``n`` lives inside an embedding space ``R^m``.
All maths is batched torch on tensors of shape ``(batch, m)``: the networks of
:class:`~skfff.ManifoldFreeFormFlow` act in ``R^m`` and end with :meth:`Manifold.project`.

Users speak in *coordinates* (angles for tori, 3x3 matrices or quaternions for rotations);
:meth:`Manifold.to_embedding` and :meth:`Manifold.from_embedding` translate between
coordinates and embedding points (NumPy, float64).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch

__all__ = ["Manifold"]


class Manifold(ABC):
    """A compact Riemannian manifold embedded in ``R^m``.

    Subclasses fill in the abstract methods; everything else (membership check,
    orthonormal tangent bases, uniform log-density) follows from them.

    Attributes
    ----------
    dim : int
        Intrinsic dimension ``n``.
    ambient_dim : int
        Dimension ``m`` of the embedding space.
    n_coordinates : int
        Number of columns of the user-facing coordinates (see :meth:`to_embedding`).
    """

    dim: int
    ambient_dim: int
    n_coordinates: int

    # ------------------------------------------------------------------ geometry
    @abstractmethod
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Closest-point projection of ambient points ``(..., m)`` onto the manifold."""

    @abstractmethod
    def project_tangent(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection of ambient vectors ``v`` onto the tangent space at ``x``."""

    @abstractmethod
    def random_uniform(self, n_samples: int, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Draw ``n_samples`` points uniformly w.r.t. the Riemannian volume."""

    @abstractmethod
    def log_volume(self) -> float:
        """Log of the total Riemannian volume (see each class for its convention)."""

    # ---------------------------------------------------------- derived methods
    def distance_to_manifold(self, x: torch.Tensor) -> torch.Tensor:
        """Euclidean distance of ambient points to their projection, shape ``(...)``."""
        return (x - self.project(x)).norm(dim=-1)

    def belongs(self, x: torch.Tensor, atol: float = 1e-4) -> torch.Tensor:
        """Boolean mask: is each point within ``atol`` of the manifold."""
        return self.distance_to_manifold(x) <= atol

    def tangent_projector(self, x: torch.Tensor) -> torch.Tensor:
        """Matrix of the tangent projection at each point, shape ``(..., m, m)``."""
        eye = torch.eye(self.ambient_dim, dtype=x.dtype, device=x.device)
        eye = eye.expand(*x.shape[:-1], self.ambient_dim, self.ambient_dim)
        # columns of the projector are projections of the unit vectors
        return self.project_tangent(x.unsqueeze(-2), eye).transpose(-1, -2)

    def tangent_basis(self, x: torch.Tensor) -> torch.Tensor:
        """Orthonormal basis of the tangent space at each point, shape ``(..., m, n)``.

        The columns are Euclidean-orthonormal in ``R^m`` and span ``T_x M``. Computed
        from the eigenvectors of the tangent projector (eigenvalue 1), so it works for
        any manifold that implements :meth:`project_tangent`; subclasses may override
        with a closed form.
        """
        proj = self.tangent_projector(x)
        proj = 0.5 * (proj + proj.transpose(-1, -2))
        _, vecs = torch.linalg.eigh(proj)
        return vecs[..., -self.dim:]

    def uniform_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of the uniform distribution, ``-log_volume()``, shape ``(...)``."""
        return torch.full(x.shape[:-1], -self.log_volume(), dtype=x.dtype, device=x.device)

    def random_tangent(self, x: torch.Tensor, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
        """Gaussian in ``R^m`` projected onto ``T_x M`` (not normalised)."""
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.project_tangent(x, eps)

    # -------------------------------------------------------------- coordinates
    def to_embedding(self, X: np.ndarray) -> np.ndarray:
        """User coordinates ``(n_samples, n_coordinates)`` to embedding ``(n_samples, m)``."""
        return np.asarray(X, dtype=np.float64)

    def from_embedding(self, X: np.ndarray) -> np.ndarray:
        """Embedding points ``(n_samples, m)`` to user coordinates."""
        return np.asarray(X, dtype=np.float64)

    def coordinates_off_manifold(self, X: np.ndarray) -> np.ndarray:
        """Per-row distance of user coordinates to the manifold (0 for angle charts)."""
        emb = torch.tensor(self.to_embedding(X), dtype=torch.float64)
        return self.distance_to_manifold(emb).numpy()

    def project_coordinates(self, X: np.ndarray) -> np.ndarray:
        """Project user coordinates onto the manifold, returned in coordinates."""
        emb = torch.tensor(self.to_embedding(X), dtype=torch.float64)
        return self.from_embedding(self.project(emb).numpy())

    # ------------------------------------------------------------------- python
    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dim})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


def log_sphere_volume(n: int) -> float:
    """Log of the area of the unit sphere ``S^n``: ``2 pi^((n+1)/2) / Gamma((n+1)/2)``."""
    return math.log(2.0) + 0.5 * (n + 1) * math.log(math.pi) - math.lgamma(0.5 * (n + 1))
