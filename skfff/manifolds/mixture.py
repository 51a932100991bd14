"""Mixtures of von Mises-Fisher kernels on spheres, tori and their products, fitted by EM.

A point of ``S^1``, ``S^2``, a torus ``T^n`` or a product of those is, in the embedding, a
concatenation of unit vectors ("blocks"): one 3-vector for ``S^2``, one 2-vector
``(cos theta, sin theta)`` per angle of a torus or circle. On each block the von
Mises-Fisher density ``C_d(kappa) exp(kappa <u, mu>)`` is the natural kernel (on a 2-vector
block it is the von Mises density of the angle), and a mixture component is a product of
one such kernel per block:

    p(u) = sum_k w_k prod_b C_d(kappa_kb) exp(kappa_kb <u_b, mu_kb>),

w.r.t. the product of the blocks' volume measures (area on ``S^2``, arc length on a circle),
which is the manifold's volume measure. :class:`KernelMixture` is that density as a
learnable ``torch`` module (the latent distribution of
:class:`~skfff.ManifoldFreeFormFlow` with ``prior="mixture"``); :func:`fit_kernel_mixture`
fits it to data by expectation-maximisation, with the number of components chosen on
held-out rows when asked.

Why start a flow's latent from an EM fit: the flow's networks start at the identity, so the
flow's initial density *is* the fitted mixture, and training refines it. On the earth data
of ``benchmarks/bench_manifold_flow.py`` a mixture with a few dozen components is already
within reach of a tuned kernel density estimate, which a flow from a uniform or randomly
initialised latent did not approach in the budgets we could afford.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import i0e, logsumexp
from sklearn.neighbors import NearestNeighbors
from torch import nn

from .base import Manifold
from .distributions import sample_vmf_s2
from .product import Product
from .sphere import Sphere
from .torus import Torus

__all__ = ["KernelMixture", "fit_kernel_mixture", "kernel_blocks", "vmf_log_normaliser"]

#: Candidate numbers of components of ``n_components="auto"``.
AUTO_COMPONENTS = (1, 2, 4, 8, 16, 32, 64, 128)
#: ``"auto"`` tries only counts with at least this many fitting rows per component.
ROWS_PER_COMPONENT = 10
#: Share of the rows held out to choose the number of components.
HOLDOUT_FRACTION = 0.1


def kernel_blocks(manifold: Manifold) -> list[int] | None:
    """Sizes of the unit-vector blocks of ``manifold``'s embedding, or None where the
    manifold has a factor without a von Mises-Fisher kernel here (``SO(3)``, spheres of
    dimension 3 and up)."""
    factors = manifold.factors if isinstance(manifold, Product) else (manifold,)
    out: list[int] = []
    for f in factors:
        if isinstance(f, Torus):
            out += [2] * f.dim
        elif isinstance(f, Sphere) and f.ambient_dim in (2, 3):
            out.append(f.ambient_dim)
        else:
            return None
    return out


def vmf_log_normaliser(kappa, d: int):
    """``log C_d(kappa)`` of the von Mises-Fisher density ``C_d(kappa) exp(kappa <u, mu>)``
    on the unit sphere of ``R^d`` w.r.t. its volume (``d = 2``: the von Mises density of an
    angle, w.r.t. arc length, total ``2 pi``; ``d = 3``: w.r.t. area, total ``4 pi``),
    stable for large ``kappa``; ``kappa`` an ndarray or a tensor (then differentiable)."""
    if isinstance(kappa, torch.Tensor):
        kappa = kappa.clamp_min(1e-6)
        if d == 2:
            return -math.log(2 * math.pi) - torch.log(torch.special.i0e(kappa)) - kappa
        return (torch.log(kappa) - math.log(2 * math.pi) - kappa
                - torch.log(-torch.expm1(-2 * kappa)))
    kappa = np.maximum(kappa, 1e-6)
    if d == 2:
        return -math.log(2 * math.pi) - np.log(i0e(kappa)) - kappa
    return np.log(kappa) - math.log(2 * math.pi) - kappa - np.log(-np.expm1(-2 * kappa))


class KernelMixture(nn.Module):
    """A learnable mixture of products of von Mises-Fisher kernels (module docstring).

    Parameters
    ----------
    blocks : sequence of int
        Sizes (2 or 3) of the unit-vector blocks of the embedding, in order
        (:func:`kernel_blocks`).
    means : array-like of shape (n_components, sum(blocks))
        Mean directions (each block normalised on use).
    kappas : array-like of shape (n_components, len(blocks))
        Concentrations, one per component and block.
    weights : array-like of shape (n_components,)
        Mixture weights (normalised on use).

    Notes
    -----
    Parameters are the raw means, ``log kappa`` and the weights' logits, all learnt with the
    flow. Sampling is not differentiated.
    """

    def __init__(self, blocks: Sequence[int], means, kappas, weights) -> None:
        super().__init__()
        self.blocks = [int(b) for b in blocks]
        if any(b not in (2, 3) for b in self.blocks):
            raise ValueError(f"blocks must have sizes 2 or 3, got {self.blocks}")
        self.slices = []
        start = 0
        for b in self.blocks:
            self.slices.append(slice(start, start + b))
            start += b
        means = torch.as_tensor(np.asarray(means), dtype=torch.float32)
        kappas = torch.as_tensor(np.asarray(kappas), dtype=torch.float32)
        weights = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
        if means.shape[1] != start or kappas.shape != (means.shape[0], len(self.blocks)):
            raise ValueError("means, kappas and blocks do not match")
        self.raw_means = nn.Parameter(means)
        self.log_kappa = nn.Parameter(kappas.clamp_min(1e-6).log())
        self.logits = nn.Parameter(weights.clamp_min(1e-12).log())

    @property
    def n_components(self) -> int:
        return int(self.logits.shape[0])

    def _unit_means(self) -> list[torch.Tensor]:
        return [self.raw_means[:, sl] / self.raw_means[:, sl].norm(dim=-1, keepdim=True)
                .clamp_min(1e-12) for sl in self.slices]

    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log w_k + log p_k(z)`` for every component, shape ``(batch, n_components)``.

        Computed in float64 (cheap: at most a few hundred components), so that a row's value
        does not depend on the batch it comes in (float32 matrix products do), and
        returned in ``z``'s dtype."""
        zd = z.double()
        kappa = self.log_kappa.double().exp()
        out = torch.log_softmax(self.logits.double(), 0).expand(z.shape[0], -1)
        for b, (d, sl, mu) in enumerate(zip(self.blocks, self.slices, self._unit_means(),
                                            strict=True)):
            k = kappa[:, b]
            out = out + k * (zd[:, sl] @ mu.double().T) + vmf_log_normaliser(k, d)
        return out.to(z.dtype)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of points ``(batch, m)`` w.r.t. the manifold's volume, ``(batch,)``."""
        return torch.logsumexp(self.component_log_prob(z), dim=-1)

    def sample(self, n_samples: int, generator: torch.Generator | None = None,
               device=None, dtype=torch.float32) -> torch.Tensor:
        """``n_samples`` points in the embedding, shape ``(n_samples, m)``."""
        with torch.no_grad():
            probs = torch.softmax(self.logits.detach().double().cpu(), 0)
            gen = generator if generator is not None and generator.device.type == "cpu" else None
            k = torch.multinomial(probs, n_samples, replacement=True, generator=gen)
            seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
            rng = np.random.default_rng(seed)
            kappa = self.log_kappa.detach().double().cpu().exp()[k]
            parts = []
            for b, (d, mu) in enumerate(zip(self.blocks, self._unit_means(), strict=True)):
                mu = mu.detach().double().cpu()[k]
                if d == 3:
                    parts.append(sample_vmf_s2(mu, kappa[:, b], gen))
                else:
                    angle = rng.vonmises(np.arctan2(mu[:, 1].numpy(), mu[:, 0].numpy()),
                                         kappa[:, b].numpy())
                    angle = torch.from_numpy(angle)
                    parts.append(torch.stack([torch.cos(angle), torch.sin(angle)], -1))
            out = torch.cat(parts, -1) if parts else torch.empty(n_samples, 0)
        return out.to(device=device or self.logits.device, dtype=dtype)


# ----------------------------------------------------------------------------- EM
def _m_step(X: np.ndarray, resp: np.ndarray, blocks: Sequence[int], slices: list[slice],
            max_kappa: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted mean directions, concentrations (Banerjee et al.'s approximation
    ``kappa = r (d - r^2) / (1 - r^2)`` to the inverse of the mean resultant length ``r``)
    and weights from responsibilities ``(n, K)``."""
    nk = resp.sum(0) + 1e-10
    means = np.empty((resp.shape[1], X.shape[1]))
    kappas = np.empty((resp.shape[1], len(blocks)))
    for b, (d, sl) in enumerate(zip(blocks, slices, strict=True)):
        s = resp.T @ X[:, sl]
        norm = np.linalg.norm(s, axis=1)
        means[:, sl] = s / np.maximum(norm, 1e-12)[:, None]
        r = np.clip(norm / nk, 1e-9, 1 - 1e-12)
        kappas[:, b] = np.clip(r * (d - r**2) / (1 - r**2), 1e-6, max_kappa)
    return means, kappas, nk / nk.sum()


def _component_log_prob(X, means, kappas, weights, blocks, slices) -> np.ndarray:
    out = np.log(np.maximum(weights, 1e-300))[None, :].repeat(len(X), 0)
    for b, (d, sl) in enumerate(zip(blocks, slices, strict=True)):
        out += kappas[:, b] * (X[:, sl] @ means[:, sl].T) + vmf_log_normaliser(kappas[:, b], d)
    return out


def _em(X, blocks, slices, n_components, rng, max_kappa, max_iter=100, tol=1e-4):
    """One EM run from a k-means++ start; returns (means, kappas, weights)."""
    n = len(X)
    first = int(rng.integers(n))
    seeds = [first]
    closest = ((X - X[first]) ** 2).sum(1)
    for _ in range(n_components - 1):
        p = closest / closest.sum() if closest.sum() > 0 else None
        j = int(rng.choice(n, p=p))
        seeds.append(j)
        closest = np.minimum(closest, ((X - X[j]) ** 2).sum(1))
    # first responsibilities: each row to its nearest seed
    nearest = np.argmin(((X[:, None, :] - X[seeds][None, :, :]) ** 2).sum(-1), axis=1) \
        if n * n_components <= 4_000_000 else _nearest_blocked(X, X[seeds])
    resp = np.zeros((n, n_components))
    resp[np.arange(n), nearest] = 1.0
    params = _m_step(X, resp, blocks, slices, max_kappa)
    previous = -np.inf
    for _ in range(max_iter):
        comp = _component_log_prob(X, *params, blocks, slices)
        total = logsumexp(comp, axis=1, keepdims=True)
        resp = np.exp(comp - total)
        params = _m_step(X, resp, blocks, slices, max_kappa)
        current = float(total.mean())
        if current - previous < tol:
            break
        previous = current
    return params


def _nearest_blocked(X: np.ndarray, C: np.ndarray, block: int = 4096) -> np.ndarray:
    return np.concatenate([np.argmin(((X[s:s + block, None, :] - C[None]) ** 2).sum(-1), 1)
                           for s in range(0, len(X), block)])


def _max_kappa(X: np.ndarray, blocks: Sequence[int], n_neighbors: int = 10) -> float:
    """The largest concentration allowed: ``1 / s^2``, ``s`` the median distance from a row to
    its ``n_neighbors``-th nearest neighbour over the square root of the manifold's dimension
    (the narrow bandwidth of :class:`~skfff.manifolds.KernelProposal`), at least 1e-3 rad.
    Without a cap EM puts point masses on repeated rows (recurring events)."""
    dim = sum(d - 1 for d in blocks)
    k = min(n_neighbors, len(X) - 1)
    if k < 1:
        return 1e6
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    s = max(float(np.median(dist[:, -1])) / math.sqrt(dim), 1e-3)
    return 1.0 / s**2


def fit_kernel_mixture(
    manifold: Manifold,
    X: np.ndarray,
    n_components: int | str = "auto",
    random_state: int | None = 0,
) -> KernelMixture:
    """Fit a :class:`KernelMixture` to points ``X`` (in the embedding) by EM.

    Parameters
    ----------
    manifold : Manifold
        ``S^1``, ``S^2``, a torus or a product of those (:func:`kernel_blocks`).
    X : ndarray of shape (n_samples, manifold.ambient_dim)
        Points on the manifold.
    n_components : int or "auto", default="auto"
        ``"auto"`` fits every count of ``AUTO_COMPONENTS`` with at least
        ``ROWS_PER_COMPONENT`` rows per component on 90 % of the rows, keeps the one with
        the best mean log-likelihood on the other 10 %, and refits it on all rows.
    random_state : int or None, default=0
        Seeds the held-out split and the k-means++ starts.

    Returns
    -------
    KernelMixture
        With the attributes ``n_components`` and ``selection`` (the held-out mean
        log-likelihood of every count tried, ``{}`` for a given count).

    Notes
    -----
    Every concentration is capped at ``1 / s^2`` with ``s`` the data's nearest-neighbour
    scale (:func:`_max_kappa`).
    """
    blocks = kernel_blocks(manifold)
    if blocks is None:
        raise ValueError(f"No kernel mixture on {manifold!r}: only S^1, S^2, tori and their "
                         "products are supported.")
    X = np.asarray(X, dtype=np.float64)
    slices, start = [], 0
    for b in blocks:
        slices.append(slice(start, start + b))
        start += b
    max_kappa = _max_kappa(X, blocks)
    rng = np.random.default_rng(random_state)
    selection: dict[int, float] = {}
    if n_components == "auto":
        perm = rng.permutation(len(X))
        n_out = max(1, int(round(HOLDOUT_FRACTION * len(X))))
        fit_rows, held = X[perm[n_out:]], X[perm[:n_out]]
        for k in AUTO_COMPONENTS:
            if k > 1 and k * ROWS_PER_COMPONENT > len(fit_rows):
                break
            params = _em(fit_rows, blocks, slices, k, rng, max_kappa)
            selection[k] = float(logsumexp(_component_log_prob(held, *params, blocks, slices),
                                           axis=1).mean())
        n_components = max(selection, key=selection.get)
    n_components = int(min(n_components, len(X)))
    means, kappas, weights = _em(X, blocks, slices, n_components, rng, max_kappa)
    mixture = KernelMixture(blocks, means, kappas, weights)
    mixture.selection = selection
    return mixture
