"""Benchmark FermatDistance: accuracy against an exact ground truth, and cost of full matrices.

Accuracy. Data: ``n`` samples of N(0, I_D). For two points on one ray from the mode the
Fermat distance with ``beta = 1/D`` is known exactly: ``integral_{r1}^{r2} p(r)^(-beta) dr``.
We place pairs on random rays around the typical radius ``sqrt(D)`` (``gap`` apart), add them
to the sample, and compare

* ``relaxed`` : FermatDistance, true density, true score (graph paths relaxed);
* ``relaxed-dsm`` : the same with the score learnt by denoising score matching;
* ``graph`` : FermatDistance with ``relax=False`` (Dijkstra on the density-weighted graph);
* ``fermat-pkg`` : the ``fermat`` package (Groisman, Jonckheere, Sapienza: sum of hop lengths
  to the power ``alpha = 1 + beta D = 2``, Dijkstra on its k-NN graph);
* ``euclidean`` : straight-line distance.

The sample Fermat distance and the Euclidean distance only match the truth up to a constant,
so every method is also scored after the best single scale factor (``scaled``: median of
truth / estimate). Figures: median relative error in percent.

Cost. Full training matrix (``pairwise()``) at n = 1 000 and 5 000 (and 20 000 with
``--full``) in D = 2 with the exact density: wall time and peak traced memory for the graph
estimate (1 and 2 jobs), the ``fermat`` package at equal n, and the relaxed matrix at
n = 1 000.

Run (a few minutes on 2 cores)::

    OMP_NUM_THREADS=1 python benchmarks/bench_fermat.py [--full]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import warnings

import numpy as np
import torch
from scipy.integrate import quad
from sklearn.metrics import pairwise_distances

from skfff.fermat import FermatDistance

try:
    from fermat import Fermat
except ImportError:  # pragma: no cover - optional comparison
    Fermat = None


class StandardNormal:
    """N(0, I_D): exact log-density and score."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        return -0.5 * np.sum(X**2, axis=1) - 0.5 * self.dim * np.log(2 * np.pi)

    @staticmethod
    def grad(X: np.ndarray) -> np.ndarray:
        return -X


def exact_ray(r1: float, r2: float, dim: int) -> float:
    beta = 1.0 / dim
    c = (2 * np.pi) ** (beta * dim / 2)
    return quad(lambda r: c * np.exp(beta * r * r / 2), r1, r2)[0]


def ray_pairs(dim: int, n_pairs: int, gap: float, rng: np.random.Generator):
    u = rng.normal(size=(n_pairs, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    mid = np.sqrt(dim) + rng.uniform(-0.5, 0.5, n_pairs)
    half = 0.5 * gap * rng.uniform(0.8, 1.2, n_pairs)
    r1, r2 = np.maximum(mid - half, 0.0), mid + half
    truth = np.array([exact_ray(a, b, dim) for a, b in zip(r1, r2, strict=True)])
    return r1[:, None] * u, r2[:, None] * u, truth


def errors(est: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    raw = 100 * np.median(np.abs(est / truth - 1))
    c = np.median(truth / est)
    return raw, 100 * np.median(np.abs(c * est / truth - 1))


def accuracy(dims, n, n_pairs, gaps, k, seed):
    print(f"\n== accuracy: N(0, I_D), n = {n}, {n_pairs} ray pairs, k = {k}")
    print("median relative error in % (raw / after best scale); time in s")
    header = f"{'D':>3} {'gap':>4} | " + " | ".join(
        f"{m:>18}" for m in ["relaxed", "relaxed-dsm", "graph", "fermat-pkg", "euclidean"]
    )
    print(header)
    print("-" * len(header))
    for dim in dims:
        for gap in gaps:
            rng = np.random.default_rng(seed)
            X = rng.normal(size=(n, dim))
            A, B, truth = ray_pairs(dim, n_pairs, gap, rng)
            Xall = np.vstack([X, A, B])
            ia, ib = n + np.arange(n_pairs), n + n_pairs + np.arange(n_pairs)
            g = StandardNormal(dim)
            cells = []
            for kind in ["relaxed", "relaxed-dsm", "graph"]:
                fd = FermatDistance(
                    density=g,
                    prefit=True,
                    n_neighbors=k,
                    relax=kind != "graph",
                    score_function="dsm" if kind == "relaxed-dsm" else g.grad,
                    random_state=seed,
                )
                t0 = time.perf_counter()
                fd.fit(Xall)
                est = np.array([fd(Xall[i], Xall[j]) for i, j in zip(ia, ib, strict=True)])
                dt = time.perf_counter() - t0
                raw, scaled = errors(est, truth)
                cells.append(f"{raw:5.1f} /{scaled:5.1f} {dt:5.1f}s")
            if Fermat is not None:
                t0 = time.perf_counter()
                E = pairwise_distances(Xall)
                f = Fermat(alpha=2.0, path_method="D", k=k + 1).fit(E)
                est = np.array([f.get_distance(i, j) for i, j in zip(ia, ib, strict=True)])
                dt = time.perf_counter() - t0
                raw, scaled = errors(est, truth)
                cells.append(f"{'--':>5} /{scaled:5.1f} {dt:5.1f}s")
            else:
                cells.append(f"{'n/a':>18}")
            raw, scaled = errors(np.linalg.norm(A - B, axis=1), truth)
            cells.append(f"{'--':>5} /{scaled:5.1f} {0.0:5.1f}s")
            print(f"{dim:>3} {gap:>4} | " + " | ".join(f"{c:>18}" for c in cells), flush=True)


def measure(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, dt, peak / 2**20


def cost(sizes, k, seed):
    print(f"\n== cost of the full training matrix, D = 2, k = {k} (time s / peak traced MiB)")
    print(f"{'n':>6} | {'graph 1 job':>16} | {'graph 2 jobs':>16} | {'fermat-pkg':>16} | relaxed")
    g = StandardNormal(2)
    for n in sizes:
        X = np.random.default_rng(seed).normal(size=(n, 2))
        cells = []
        for n_jobs in [None, 2]:
            fd = FermatDistance(density=g, prefit=True, n_neighbors=k, relax=False, n_jobs=n_jobs)
            _, dt, mem = measure(lambda fd=fd, X=X: fd.fit(X).pairwise())
            cells.append(f"{dt:7.1f} /{mem:7.0f}")
        if Fermat is not None and n <= 5000:
            _, dt, mem = measure(
                lambda X=X: (
                    Fermat(alpha=2.0, path_method="D", k=k + 1)
                    .fit(pairwise_distances(X))
                    .get_distances()
                )
            )
            cells.append(f"{dt:7.1f} /{mem:7.0f}")
        else:
            cells.append(f"{'skipped':>16}")
        if n <= 1000:
            fd = FermatDistance(
                density=g, prefit=True, n_neighbors=k, relax=True, score_function=g.grad
            )
            _, dt, mem = measure(lambda fd=fd, X=X: fd.fit(X).pairwise())
            cells.append(f"{dt:7.1f} /{mem:7.0f}  ({n * (n - 1) // 2} paths)")
        else:
            cells.append("skipped")
        print(f"{n:>6} | " + " | ".join(cells[:3]) + " | " + cells[3], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="also n = 20 000 and more pairs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", UserWarning)
    n_pairs = 60 if args.full else 25
    accuracy([2, 5, 10, 20], n=2000, n_pairs=n_pairs, gaps=[2.0, 4.0], k=10, seed=0)
    cost([1000, 5000, 20000] if args.full else [1000, 5000], k=10, seed=0)


if __name__ == "__main__":
    main()
