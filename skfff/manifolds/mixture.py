"""Mixtures of kernels on spheres, tori, rotations and their products, fitted by EM.

A point of ``S^1``, ``S^2``, a torus ``T^n``, ``SO(3)`` or a product of those is, in the
embedding, a concatenation of blocks: one unit 3-vector for ``S^2``, one unit 2-vector
``(cos theta, sin theta)`` per angle of a torus or circle, one flattened rotation matrix for
``SO(3)``. Each block has its kernel: the von Mises-Fisher density
``C_d(kappa) exp(kappa <u, mu>)`` on unit vectors (``"vmf"``; on a 2-vector block it is the
von Mises density of the angle, ``"von_mises"``) and, on ``SO(3)``, the blurred rotation
``M exp(hat(w))`` with ``w ~ N(0, I_3 / kappa)`` truncated to ``|w| <= pi`` (``"so3"``,
:func:`~skfff.manifolds.so3.log_rotation_kernel`). A mixture component is a product of one
kernel per block:

    p(u) = sum_k w_k prod_b K_b(u_b; mu_kb, kappa_kb),

w.r.t. the product of the blocks' volume measures (area on ``S^2``, arc length on a circle,
the bi-invariant volume ``8 pi^2`` on ``SO(3)``), which is the manifold's volume measure.
:class:`KernelMixture` is that density as a learnable ``torch`` module (the latent distribution of
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

from .._checks import check_integer
from .base import Manifold
from .distributions import sample_vmf_s2
from .product import Product
from .so3 import SpecialOrthogonal, log_rotation_kernel, sample_rotation_kernel
from .sphere import Sphere
from .torus import Torus

__all__ = [
    "KernelMixture",
    "fit_kernel_mixture",
    "kernel_blocks",
    "kernel_kind",
    "vmf_log_normaliser",
]

#: Candidate numbers of components of ``n_components="auto"``.
AUTO_COMPONENTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: ``"auto"`` tries only counts with at least this many fitting rows per component.
ROWS_PER_COMPONENT = 10
#: Share of the rows held out to choose the number of components.
HOLDOUT_FRACTION = 0.1
#: EM runs (from different k-means++ starts) averaged into the fitted mixture.
N_AVERAGE = 4


#: Embedding size of each kind of block.
BLOCK_SIZE = {"von_mises": 2, "vmf": 3, "so3": 9}
#: Intrinsic dimension of each kind of block.
BLOCK_DIM = {"von_mises": 1, "vmf": 2, "so3": 3}


def kernel_kind(factor: Manifold) -> str | None:
    """``"vmf"`` (``S^2``), ``"von_mises"`` (a torus or circle: angle pairs), ``"so3"``, or
    None (spheres of dimension 3 and up, products: ask their factors)."""
    if isinstance(factor, Torus) or (isinstance(factor, Sphere) and factor.ambient_dim == 2):
        return "von_mises"
    if isinstance(factor, Sphere) and factor.ambient_dim == 3:
        return "vmf"
    if isinstance(factor, SpecialOrthogonal):
        return "so3"
    return None


def block_slices(blocks: Sequence[str]) -> list[slice]:
    """The columns of each block of the embedding, in order (``BLOCK_SIZE`` columns each)."""
    ends = np.cumsum([BLOCK_SIZE[kind] for kind in blocks], dtype=int).tolist()
    return [slice(end - BLOCK_SIZE[kind], end) for kind, end in zip(blocks, ends, strict=True)]


def kernel_blocks(manifold: Manifold) -> list[str] | None:
    """The kinds of the blocks of ``manifold``'s embedding, in order (one ``"von_mises"``
    per angle of a torus), or None where a factor has no kernel here."""
    factors = manifold.factors if isinstance(manifold, Product) else (manifold,)
    out: list[str] = []
    for f in factors:
        kind = kernel_kind(f)
        if kind is None:
            return None
        out += [kind] * (f.dim if isinstance(f, Torus) else 1)
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
    """A learnable mixture of products of kernels, one per block (module docstring).

    Parameters
    ----------
    blocks : sequence of {"von_mises", "vmf", "so3"}
        The kinds of the blocks of the embedding, in order (:func:`kernel_blocks`).
    means : array-like of shape (n_components, embedding dimension)
        Centres: unit vectors (normalised on use) or flattened rotations (projected onto
        ``SO(3)`` on use).
    kappas : array-like of shape (n_components, len(blocks))
        Concentrations, one per component and block (on ``SO(3)``, ``1 / sigma^2``).
    weights : array-like of shape (n_components,)
        Mixture weights (normalised on use).

    Notes
    -----
    Parameters are the raw centres, ``log kappa`` and the weights' logits, all learnt with
    the flow. Sampling is not differentiated.
    """

    def __init__(self, blocks: Sequence[str], means, kappas, weights) -> None:
        super().__init__()
        self.blocks = list(blocks)
        if any(b not in BLOCK_SIZE for b in self.blocks):
            raise ValueError(f"blocks must be among {sorted(BLOCK_SIZE)}, got {self.blocks}")
        self.slices = block_slices(self.blocks)
        start = self.slices[-1].stop if self.slices else 0
        means = torch.as_tensor(np.asarray(means), dtype=torch.float32)
        kappas = torch.as_tensor(np.asarray(kappas), dtype=torch.float32)
        weights = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
        if means.shape[1] != start or kappas.shape != (means.shape[0], len(self.blocks)):
            raise ValueError("means, kappas and blocks do not match")
        self.raw_means = nn.Parameter(means)
        self.log_kappa = nn.Parameter(kappas.clamp_min(1e-6).log())
        self.logits = nn.Parameter(weights.clamp_min(1e-12).log())
        #: Held-out mean log-likelihood of each count tried by fit_kernel_mixture("auto").
        self.selection: dict[int, float] = {}
        #: Components of each averaged EM run (fit_kernel_mixture's n_average).
        self.components_per_run = int(means.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.logits.shape[0])

    def centres(self) -> list[torch.Tensor]:
        """Each block's centres in float64, ``(n_components, block size)``: unit vectors,
        or rotations (the nearest to the raw parameters)."""
        out = []
        for kind, sl in zip(self.blocks, self.slices, strict=True):
            raw = self.raw_means[:, sl].double()
            if kind == "so3":
                out.append(SpecialOrthogonal().project(raw))
            else:
                out.append(raw / raw.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return out

    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log w_k + log p_k(z)`` for every component, shape ``(batch, n_components)``.

        Computed in float64 (cheap: at most a few hundred components), so that a row's value
        does not depend on the batch it comes in (float32 matrix products do), and
        returned in ``z``'s dtype."""
        out = _log_components(z.double(), torch.cat(self.centres(), 1),
                              self.log_kappa.double().exp(),
                              torch.log_softmax(self.logits.double(), 0), self.blocks,
                              self.slices)
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
            for b, (kind, mu) in enumerate(zip(self.blocks, self.centres(), strict=True)):
                mu = mu.detach().cpu()[k]
                if kind == "vmf":
                    parts.append(sample_vmf_s2(mu, kappa[:, b], gen))
                elif kind == "so3":
                    parts.append(torch.from_numpy(sample_rotation_kernel(
                        mu.numpy(), kappa[:, b].rsqrt().numpy(), rng)))
                else:
                    angle = rng.vonmises(np.arctan2(mu[:, 1].numpy(), mu[:, 0].numpy()),
                                         kappa[:, b].numpy())
                    angle = torch.from_numpy(angle)
                    parts.append(torch.stack([torch.cos(angle), torch.sin(angle)], -1))
            out = torch.cat(parts, -1) if parts else torch.empty(n_samples, 0)
        return out.to(device=device or self.logits.device, dtype=dtype)


# ----------------------------------------------------------------------------- EM
def _nearest_rotations(S: np.ndarray) -> np.ndarray:
    """The rotation nearest (Frobenius) to each flattened 3x3 matrix of ``S`` ``(K, 9)``."""
    u, _, vt = np.linalg.svd(S.reshape(-1, 3, 3))
    flip = np.sign(np.linalg.det(u @ vt))
    u[:, :, 2] *= flip[:, None]
    return (u @ vt).reshape(-1, 9)


def _m_step(X: np.ndarray, resp: np.ndarray, blocks: Sequence[str], slices: list[slice],
            max_kappa: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres, concentrations and weights from responsibilities ``(n, K)``.

    On unit vectors: the weighted mean direction and Banerjee et al.'s approximation
    ``kappa = r (d - r^2) / (1 - r^2)`` to the inverse of the mean resultant length ``r``.
    On ``SO(3)``: the rotation nearest the weighted mean matrix and ``1 / kappa =
    sigma^2`` = the weighted mean squared angle from it over 3 (the truncation and the
    volume factor neglected; both vanish for small ``sigma``)."""
    nk = resp.sum(0) + 1e-10
    means = np.empty((resp.shape[1], X.shape[1]))
    kappas = np.empty((resp.shape[1], len(blocks)))
    for b, (kind, sl) in enumerate(zip(blocks, slices, strict=True)):
        s = resp.T @ X[:, sl]
        if kind == "so3":
            means[:, sl] = _nearest_rotations(s)
            cos = np.clip((X[:, sl] @ means[:, sl].T - 1.0) / 2.0, -1.0, 1.0)
            sigma2 = (resp * np.arccos(cos) ** 2).sum(0) / (3.0 * nk)
            # chordal distances in R^9 are sqrt(2) times the angle: hence twice the cap
            kappas[:, b] = np.clip(1.0 / np.maximum(sigma2, 1e-12), 1.0 / math.pi**2,
                                   2.0 * max_kappa)
            continue
        d = BLOCK_SIZE[kind]
        norm = np.linalg.norm(s, axis=1)
        means[:, sl] = s / np.maximum(norm, 1e-12)[:, None]
        r = np.clip(norm / nk, 1e-9, 1 - 1e-12)
        kappas[:, b] = np.clip(r * (d - r**2) / (1 - r**2), 1e-6, max_kappa)
    return means, kappas, nk / nk.sum()


def _log_components(X, means, kappas, log_weights, blocks, slices):
    """``log w_k + log p_k(x)``, ``(n, K)``, for ndarrays (EM) or tensors (the module):
    ``dots`` is ``<u, mu>`` per block, on ``SO(3)`` ``tr(M^T R)``."""
    out = log_weights
    for b, (kind, sl) in enumerate(zip(blocks, slices, strict=True)):
        dots = X[:, sl] @ means[:, sl].T
        if kind == "so3":
            out = out + log_rotation_kernel(dots, kappas[:, b] ** -0.5)
        else:
            out = out + kappas[:, b] * dots + vmf_log_normaliser(kappas[:, b],
                                                                 BLOCK_SIZE[kind])
    return out


def _component_log_prob(X, means, kappas, weights, blocks, slices) -> np.ndarray:
    return _log_components(X, means, kappas, np.log(np.maximum(weights, 1e-300)), blocks,
                           slices)


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
    nearest = _nearest_blocked(X, X[seeds])
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


def _max_kappa(X: np.ndarray, blocks: Sequence[str], n_neighbors: int = 10) -> float:
    """The largest concentration allowed: ``1 / s^2``, ``s`` the median distance from a row to
    its ``n_neighbors``-th nearest neighbour over the square root of the manifold's dimension
    (the narrow bandwidth of :class:`~skfff.manifolds.KernelProposal`), at least 1e-3 rad.
    Without a cap EM puts point masses on repeated rows (recurring events)."""
    dim = sum(BLOCK_DIM[kind] for kind in blocks)
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
    n_average: int = N_AVERAGE,
) -> KernelMixture:
    """Fit a :class:`KernelMixture` to points ``X`` (in the embedding) by EM.

    Parameters
    ----------
    manifold : Manifold
        ``S^1``, ``S^2``, a torus, ``SO(3)`` or a product of those (:func:`kernel_blocks`).
    X : ndarray of shape (n_samples, manifold.ambient_dim)
        Points on the manifold.
    n_components : int or "auto", default="auto"
        ``"auto"`` fits every count of ``AUTO_COMPONENTS`` with at least
        ``ROWS_PER_COMPONENT`` rows per component on 90 % of the rows, keeps the one with
        the best mean log-likelihood on the other 10 %, and refits it on all rows.
    random_state : int or None, default=0
        Seeds the held-out split and the k-means++ starts.
    n_average : int, default=4
        EM runs on all rows, each from its own k-means++ start, whose mixtures are averaged
        (each member's weights divided by ``n_average``): the result has
        ``n_average * n_components`` components.

    Returns
    -------
    KernelMixture
        With the attributes ``n_components`` (the total), ``components_per_run`` (the
        selected or given count) and ``selection`` (the held-out mean log-likelihood of every
        count tried, ``{}`` for a given count).

    Notes
    -----
    Every concentration is capped at ``1 / s^2`` with ``s`` the data's nearest-neighbour
    scale (:func:`_max_kappa`). One EM run lands in one of many local optima, and which
    one moves the held-out log-likelihood by up to 0.17 nats on the earth data of
    ``benchmarks/bench_manifold_flow.py``; the average of 4 runs was better than a single
    run on every data set and seed there (earthquake 0.12 -> 0.01, volcano -0.49 -> -0.90
    nats, 5 seeds; ``benchmarks/README.rst``), as averaging smooths each run's arbitrary
    partition of the data.
    """
    check_integer(n_average, "n_average")
    blocks = kernel_blocks(manifold)
    if blocks is None:
        raise ValueError(f"No kernel mixture on {manifold!r}: only S^1, S^2, tori, SO(3) "
                         "and their products are supported.")
    X = np.asarray(X, dtype=np.float64)
    slices = block_slices(blocks)
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
    runs = [_em(X, blocks, slices, n_components, rng, max_kappa) for _ in range(n_average)]
    means, kappas, weights = (np.concatenate(part) for part in zip(*runs, strict=True))
    mixture = KernelMixture(blocks, means, kappas, weights / n_average)
    mixture.selection = selection
    mixture.components_per_run = n_components
    return mixture
