"""Kernel proposals on manifolds: importance sampling of a density's integral.

The integral of a density ``p`` over a compact manifold of volume ``V`` is
``Z = E_q[p(u) / q(u)]`` for any proposal ``q`` that is positive everywhere. Uniform points
(``q = 1 / V``) give an unbiased estimate whose standard error grows with the density's
concentration: a density that lives on a thousandth of the sphere is seen by a thousandth
of the points. :class:`KernelProposal` puts most of its points where the data are,

    q(u) = w_0 / V + w_1 k_s(u) + w_2 k_4s(u) + w_3 k_16s(u),
    k_s(u) = (1 / m) sum_j K_s(u; c_j),

a mixture of the uniform distribution (the defensive part: the weights ``p / q`` stay below
``p V / w_0`` wherever ``p`` puts mass away from the data) and three kernel density
estimates on ``m`` reference points ``c_j`` (the training rows, at most ``max_centres`` of
them), with a bandwidth ``s`` from the distances between them, and 4 and 16 times wider
(a model density is often broader than the data: an undertrained flow by far). Kernels with an
exact normaliser and an exact sampler: von Mises-Fisher on ``S^2``, von Mises on every angle
of a torus (and on the circle ``S^1``), on ``SO(3)`` the rotation ``C exp(hat(w))`` with
``w ~ N(0, s^2 I_3)`` truncated to ``|w| <= pi`` (the blur of ``make_rotation_mixture``,
exact once truncated), and products of these. Spheres of other dimensions get the uniform
part only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.neighbors import NearestNeighbors

from .base import Manifold
from .distributions import sample_vmf_s2
from .mixture import kernel_kind, vmf_log_normaliser
from .product import Product
from .so3 import log_rotation_kernel, sample_rotation_kernel

__all__ = ["Draw", "KernelProposal"]

#: Bandwidths of the kernel parts, in multiples of the data's scale.
SCALES = (1.0, 4.0, 16.0)
#: Mixture weights of the uniform part and of each kernel part.
WEIGHTS = (0.1, 0.3, 0.3, 0.3)
#: Smallest bandwidth (radians): repeated rows (e.g. recurring events) have zero distance.
MIN_BANDWIDTH = 1e-3


@dataclass
class Draw:
    """Points drawn from a :class:`KernelProposal`, stratified by mixture part.

    Attributes
    ----------
    points : ndarray of shape (n, ambient_dim)
        In the embedding (float64), the parts one after the other.
    log_q : ndarray of shape (n,)
        Log-density of the proposal at ``points`` (w.r.t. the manifold's volume).
    counts : tuple of int
        Points of each part (uniform, then the kernels of ``SCALES``).
    """

    points: np.ndarray
    log_q: np.ndarray
    counts: tuple[int, ...]

    def integral(self, log_p: np.ndarray) -> tuple[float, float]:
        """Estimate of ``integral p`` from ``log p`` at ``points``, and its standard error.

        ``mean(p / q)``; the standard error adds up the parts' variances (stratified
        sampling: the shares of the parts are fixed, not drawn). NaN when ``log p`` is NaN
        or ``+inf`` somewhere.
        """
        log_p = np.asarray(log_p, dtype=np.float64)
        if np.isnan(log_p).any() or np.isposinf(log_p).any():
            return float("nan"), float("nan")
        w = np.exp(log_p - self.log_q)
        n = len(w)
        variance, start = 0.0, 0
        for count in self.counts:
            if count > 1:
                variance += count * float(np.var(w[start : start + count], ddof=1))
            start += count
        return float(w.mean()), math.sqrt(variance) / n


def _factors(manifold: Manifold) -> list[Manifold]:
    return list(manifold.factors) if isinstance(manifold, Product) else [manifold]


class KernelProposal:
    """Importance-sampling proposal on a manifold, fitted to reference points.

    Parameters
    ----------
    manifold : Manifold
    centres : ndarray of shape (n, m)
        Reference points in the embedding (e.g. the training rows).
    max_centres : int, default=1024
        Larger sets are subsampled (without replacement, seed 0): the cost of ``log q`` is
        proportional to it (50 000 points against 1 024 centres: about 4 s on one core).
        Chosen on the fire data of ``benchmarks/bench_manifold_flow.py`` (many small
        clusters), where fewer centres left too large a standard error on the integral of a
        512-component mixture and more cost more than they gained (``benchmarks/README.rst``,
        "ManifoldFreeFormFlow").
    n_neighbors : int, default=10
        The narrow bandwidth is the median distance (in the embedding) from a centre to
        its ``n_neighbors``-th nearest neighbour, divided by the square root of the
        manifold's dimension (a per-coordinate scale), and at least ``MIN_BANDWIDTH``.

    Attributes
    ----------
    centres : ndarray of shape (m, ambient_dim)
    bandwidth : float
        The narrowest kernel's bandwidth (radians); the others are ``SCALES`` times it.
    has_kernels : bool
        False where the manifold has no supported kernel: then ``q`` is uniform.
    """

    def __init__(self, manifold: Manifold, centres: np.ndarray, max_centres: int = 1024,
                 n_neighbors: int = 10) -> None:
        self.manifold = manifold
        centres = np.asarray(centres, dtype=np.float64)
        if len(centres) > max_centres:
            keep = np.random.default_rng(0).choice(len(centres), max_centres, replace=False)
            centres = centres[keep]
        self.centres = centres
        factors = _factors(manifold)
        self.has_kernels = len(centres) > 0 and all(kernel_kind(f) is not None for f in factors)
        self.bandwidth = math.pi
        if self.has_kernels and len(centres) > 1:
            k = min(n_neighbors, len(centres) - 1)
            dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(centres).kneighbors(centres)
            scale = float(np.median(dist[:, -1])) / math.sqrt(manifold.dim)
            self.bandwidth = min(max(scale, MIN_BANDWIDTH), math.pi)

    # ----------------------------------------------------------------- pieces
    def _slices(self) -> list[tuple[Manifold, slice]]:
        out, start = [], 0
        for f in _factors(self.manifold):
            out.append((f, slice(start, start + f.ambient_dim)))
            start += f.ambient_dim
        return out

    @staticmethod
    def _log_normaliser(factor: Manifold, kappa: float) -> float:
        """Log normaliser of the kernel ``exp(kappa <u, c>)`` on ``factor``."""
        if kernel_kind(factor) == "vmf":
            return float(vmf_log_normaliser(np.float64(kappa), 3))
        # von Mises on every angle
        return factor.ambient_dim // 2 * float(vmf_log_normaliser(np.float64(kappa), 2))

    def _dots(self, U: np.ndarray) -> list[tuple[Manifold, np.ndarray]]:
        """Each factor with the dot products of its embeddings of ``U`` and of the centres,
        ``(n, m)``: every kernel is a function of them (``<u, c>`` on ``S^2``, the sum of
        ``cos(theta - mu)`` over a torus's angles, ``tr(C^T R)`` on ``SO(3)``)."""
        return [(factor, U[:, sl] @ self.centres[:, sl].T) for factor, sl in self._slices()]

    def _kernel_log_prob(self, dots: list[tuple[Manifold, np.ndarray]],
                         bandwidth: float) -> np.ndarray:
        """``log k_s``: the kernel density estimate on the centres at the points whose
        :meth:`_dots` are given, shape ``(n,)``."""
        kappa = 1.0 / bandwidth**2
        logits = np.zeros_like(dots[0][1])
        for factor, dot in dots:
            if kernel_kind(factor) == "so3":
                logits += log_rotation_kernel(dot, bandwidth)
            else:
                logits += kappa * dot + self._log_normaliser(factor, kappa)
        return logsumexp(logits, axis=1) - math.log(len(self.centres))

    # -------------------------------------------------------------- public API
    def log_prob(self, U: np.ndarray, weights: tuple[float, ...] = WEIGHTS,
                 block: int = 2048) -> np.ndarray:
        """``log q(U)`` w.r.t. the manifold's volume, for points ``U`` in the embedding,
        with mixture ``weights`` (the uniform part, then the kernels of ``SCALES``)."""
        U = np.asarray(U, dtype=np.float64)
        log_uniform = -self.manifold.log_volume()
        if not self.has_kernels:
            return np.full(len(U), log_uniform)
        with np.errstate(divide="ignore"):
            log_w = np.log(np.asarray(weights, dtype=np.float64))
        out = []
        for s in range(0, len(U), block):
            dots = self._dots(U[s : s + block])  # once for every bandwidth
            parts = [np.full(len(dots[0][1]), log_w[0] + log_uniform)]
            parts += [lw + self._kernel_log_prob(dots, scale * self.bandwidth)
                      for lw, scale in zip(log_w[1:], SCALES, strict=True)]
            out.append(logsumexp(np.stack(parts, 1), axis=1))
        return np.concatenate(out) if out else np.empty(0)

    def sample(self, n_samples: int, seed: int = 0) -> Draw:
        """``n_samples`` points from ``q``, with their ``log q``.

        Stratified: each part of the mixture gets a fixed share of the points (about its
        weight), and ``log q`` is that of the mixture with exactly those shares as weights,
        so that ``mean(p / q)`` is unbiased without the noise of drawing the shares.

        Returns
        -------
        Draw
        """
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31 - 1)))
        weights = np.array(WEIGHTS if self.has_kernels else (1.0,) + (0.0,) * len(SCALES))
        counts = np.floor(n_samples * weights).astype(int)
        counts[0] += n_samples - counts.sum()
        parts = [self.manifold.random_uniform(int(counts[0]), gen,
                                              dtype=torch.float64).numpy()]
        for count, scale in zip(counts[1:], SCALES, strict=True):
            if count:
                centres = self.centres[rng.integers(len(self.centres), size=int(count))]
                parts.append(self._around(centres, scale * self.bandwidth, rng, gen))
        U = np.concatenate(parts)
        return Draw(U, self.log_prob(U, tuple(counts / n_samples)),
                    tuple(int(c) for c in counts))

    def _around(self, centres: np.ndarray, bandwidth: float, rng: np.random.Generator,
                gen: torch.Generator) -> np.ndarray:
        """One kernel draw around each row of ``centres``, factor by factor."""
        out = np.empty_like(centres)
        kappa = 1.0 / bandwidth**2
        for factor, sl in self._slices():
            c = centres[:, sl]
            if kernel_kind(factor) == "so3":
                out[:, sl] = sample_rotation_kernel(np.ascontiguousarray(c), bandwidth, rng)
            elif kernel_kind(factor) == "vmf":
                mu = torch.from_numpy(np.ascontiguousarray(c))
                kap = torch.full((len(c),), kappa, dtype=torch.float64)
                out[:, sl] = sample_vmf_s2(mu, kap, gen).numpy()
            else:
                pairs = c.reshape(len(c), -1, 2)
                angles = rng.vonmises(np.arctan2(pairs[..., 1], pairs[..., 0]), kappa)
                out[:, sl] = np.stack([np.cos(angles), np.sin(angles)], -1).reshape(len(c), -1)
        return out

