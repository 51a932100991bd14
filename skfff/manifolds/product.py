"""Cartesian products of manifolds, e.g. ``Product(Sphere(2), Torus(1))``."""

from __future__ import annotations

import numpy as np
import torch

from .base import Manifold

__all__ = ["Product"]


class Product(Manifold):
    """The product ``M_1 x ... x M_k``; embeddings and coordinates are concatenated.

    The volume measure is the product measure, so ``log_volume`` is the sum of the
    factors' and densities are per product of the factors' volume elements.

    Parameters
    ----------
    *factors : Manifold
        At least one manifold. Nested products are flattened.

    Examples
    --------
    >>> from skfff.manifolds import Product, Sphere, Torus
    >>> m = Product(Sphere(2), Torus(1))
    >>> m.dim, m.ambient_dim, m.n_coordinates
    (3, 5, 4)
    """

    def __init__(self, *factors: Manifold):
        flat: list[Manifold] = []
        for f in factors:
            if isinstance(f, Product):
                flat.extend(f.factors)
            elif isinstance(f, Manifold):
                flat.append(f)
            else:
                raise TypeError(f"Product factors must be Manifold instances, got {f!r}.")
        if not flat:
            raise ValueError("Product needs at least one factor.")
        self.factors = tuple(flat)
        self.dim = sum(f.dim for f in flat)
        self.ambient_dim = sum(f.ambient_dim for f in flat)
        self.n_coordinates = sum(f.n_coordinates for f in flat)
        self._amb = np.cumsum([0] + [f.ambient_dim for f in flat]).tolist()
        self._crd = np.cumsum([0] + [f.n_coordinates for f in flat]).tolist()

    def __repr__(self):
        return "Product(" + ", ".join(repr(f) for f in self.factors) + ")"

    def _split(self, x):
        return [x[..., a:b] for a, b in zip(self._amb[:-1], self._amb[1:], strict=True)]

    def project(self, x):
        return torch.cat([f.project(p) for f, p in zip(self.factors, self._split(x),
                                                         strict=True)], -1)

    def distance_to_manifold(self, x):
        parts = [f.distance_to_manifold(p) for f, p in zip(self.factors, self._split(x),
                                                          strict=True)]
        return torch.stack(parts, -1).pow(2).sum(-1).sqrt()

    def project_tangent(self, x, v):
        x, v = torch.broadcast_tensors(x, v)
        return torch.cat([f.project_tangent(p, q) for f, p, q in
                          zip(self.factors, self._split(x), self._split(v), strict=True)], -1)

    def tangent_basis(self, x):
        blocks = [f.tangent_basis(p) for f, p in zip(self.factors, self._split(x), strict=True)]
        out = x.new_zeros(*x.shape[:-1], self.ambient_dim, self.dim)
        col = 0
        for f, a, b in zip(self.factors, self._amb[:-1], self._amb[1:], strict=True):
            out[..., a:b, col:col + f.dim] = blocks.pop(0)
            col += f.dim
        return out

    def random_uniform(self, n_samples, generator=None, device=None, dtype=torch.float32):
        return torch.cat([f.random_uniform(n_samples, generator, device, dtype)
                          for f in self.factors], -1)

    def log_volume(self):
        return float(sum(f.log_volume() for f in self.factors))

    def to_embedding(self, X):
        X = np.asarray(X, dtype=np.float64)
        return np.concatenate([f.to_embedding(X[:, a:b]) for f, a, b in
                               zip(self.factors, self._crd[:-1], self._crd[1:], strict=True)],
                              axis=1)

    def from_embedding(self, X):
        X = np.asarray(X, dtype=np.float64)
        return np.concatenate([f.from_embedding(X[:, a:b]) for f, a, b in
                               zip(self.factors, self._amb[:-1], self._amb[1:], strict=True)],
                              axis=1)
