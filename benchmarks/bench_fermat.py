"""Benchmark FermatDistance: accuracy over all pairs, cost, relaxation speed and clustering.

Accuracy. Data: ``n`` samples of N(0, I_D) plus pairs placed on random rays around the
typical radius ``sqrt(D)`` (2 and 4 apart). For two points on one ray the Fermat distance
with ``beta = 1/D`` is known exactly, ``integral_{r1}^{r2} p(r)^(-beta) dr``. The pairs are
part of the training set and their distances are read from the full matrix
``pairwise()`` (all pairs computed the same way). With the true density and score:

* ``graph``: Dijkstra on the k-NN graph (``relax=False``, the default k = 15);
* ``graph k=30``: a longer-range graph (straight edges), the "relax the edges of a longer
  range graph" candidate (edges this short are already geodesic to < 1 %);
* ``calibrated``: the default ``relax="auto"``: ``n_calibration_pairs = 1024`` graph paths
  relaxed at fit, graph lengths corrected by their straightness (O(1) relaxations);
* ``relaxed``: every ray pair relaxed on its own (``relax=True``: what relaxing every pair
  would give);
* ``fermat-pkg``: the ``fermat`` package (sample Fermat distance, alpha = 2; after the best
  single scale) and ``euclidean`` (after the best scale).

A second check, not limited to rays: calibrated against relaxed distances on 300 random
pairs of the same data (median relative difference).

Cost: fit + full matrix at n = 1 000 / 5 000 (``--n-cost`` for more) in 2-D with the true
density: seconds and peak traced memory, calibrated and graph-only, beside the ``fermat``
package. Sparse: ``kneighbors_graph(15)`` at ``--n-sparse`` points (20 000 by default,
100 000 is about 10 CPU minutes) in 2-D and 10-D with the true density, and DBSCAN on it
(not in the default sections). Speed: the issue's new-user case, FreeFormFlow density on
500 two-moons points, then ``pairwise`` of 60 of them (1 770 relaxed pairs). Clustering:
ARI of DBSCAN (best eps on a grid, for every metric alike), HDBSCAN and average linkage on
moons, circles and a 10-D set of two curved clusters, Fermat (default density) against Euclidean.

Times are CPU seconds of this (single-threaded) process, ``time.process_time``: on a shared
machine they are what an idle core would take, where wall time is not.

Run (about 10 minutes on an idle 2-core machine)::

    OMP_NUM_THREADS=1 python benchmarks/bench_fermat.py [--n 10000] [--dims 2 5 10]
        [--n-cost 1000 5000 20000] [--n-sparse 100000]
        [--sections accuracy cost sparse speed clustering]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import warnings

import numpy as np
import torch
from scipy.integrate import quad
from sklearn.cluster import DBSCAN, HDBSCAN, AgglomerativeClustering
from sklearn.datasets import make_circles, make_moons
from sklearn.metrics import adjusted_rand_score, pairwise_distances

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


def rel_err(est: np.ndarray, truth: np.ndarray, scaled: bool = False) -> float:
    c = np.median(truth / est) if scaled else 1.0
    return 100 * float(np.median(np.abs(c * est / truth - 1)))


def measure(fn):
    tracemalloc.start()
    t0 = time.process_time()
    out = fn()
    dt = time.process_time() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, dt, peak / 2**20


def ray_data(dim: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    A, B, truth = [], [], []
    for gap in (2.0, 4.0):
        a, b, t = ray_pairs(dim, 25, gap, rng)
        A.append(a)
        B.append(b)
        truth.append(t)
    A, B, truth = np.vstack(A), np.vstack(B), np.concatenate(truth)
    X = np.vstack([rng.normal(size=(n, dim)), A, B])
    ia, ib = n + np.arange(len(A)), n + len(A) + np.arange(len(A))
    return X, ia, ib, truth


def accuracy(dims, n, seed):
    print(f"\n== accuracy over all pairs: N(0, I_D), n = {n} (+100 ray points), true density")
    print("median relative error on the 50 ray pairs, read from the full matrix, in %;")
    print("time = fit + pairwise() in s; 'vs relaxed' = calibrated against relaxed distances")
    print("on 300 random pairs")
    cols = ["graph", "graph k=30", "calibrated", "relaxed", "fermat-pkg*", "euclid*"]
    print(f"{'D':>3} | " + " | ".join(f"{c:>14}" for c in cols) + " | vs relaxed")
    for dim in dims:
        X, ia, ib, truth = ray_data(dim, n, seed)
        g = StandardNormal(dim)
        cells = []
        for kind in ["graph", "graph k=30", "calibrated"]:
            fd = FermatDistance(
                density=g,
                prefit=True,
                score_function=g.grad,
                n_neighbors=30 if kind == "graph k=30" else 15,
                relax=kind == "calibrated" and "auto",
                random_state=seed,
            )
            M, dt, mem = measure(lambda fd=fd, X=X: fd.fit(X).pairwise())
            cells.append(f"{rel_err(M[ia, ib], truth):5.1f} {dt:6.1f}s")
            if kind == "calibrated":
                rng = np.random.default_rng(seed + 1)
                i, j = rng.integers(0, len(X), (2, 300))
                keep = i != j
                i, j = i[keep], j[keep]
                fd.set_params(relax=True)  # relax pair by pair
                ref = np.array([fd(X[a], X[b]) for a, b in zip(i, j, strict=True)])
                vs_relaxed = rel_err(M[i, j], ref)
                relaxed = np.array([fd(X[a], X[b]) for a, b in zip(ia, ib, strict=True)])
                cells.append(f"{rel_err(relaxed, truth):5.1f} {'':>7}")
                del M
        if Fermat is not None and n <= 5000:
            t0 = time.process_time()
            f = Fermat(alpha=2.0, path_method="D", k=16).fit(pairwise_distances(X))
            est = np.array([f.get_distance(a, b) for a, b in zip(ia, ib, strict=True)])
            cells.append(f"{rel_err(est, truth, True):5.1f} {time.process_time() - t0:6.1f}s")
        else:
            cells.append(f"{'skipped':>14}")
        eu = np.linalg.norm(X[ia] - X[ib], axis=1)
        cells.append(f"{rel_err(eu, truth, True):5.1f} {'':>7}")
        print(f"{dim:>3} | " + " | ".join(cells) + f" | {vs_relaxed:5.1f}", flush=True)
    print("* after the best single scale factor (these estimate the distance up to a constant)")


def cost(sizes, seed):
    print("\n== cost, D = 2, true density: fit + pairwise() (s / peak traced MiB)")
    print(f"{'n':>6} | {'graph':>14} | {'calibrated':>14} | {'fermat-pkg':>14}")
    g = StandardNormal(2)
    for n in sizes:
        X = np.random.default_rng(seed).normal(size=(n, 2))
        cells = []
        for relax in [False, "auto"]:
            fd = FermatDistance(density=g, prefit=True, score_function=g.grad, relax=relax)
            _, dt, mem = measure(lambda fd=fd, X=X: fd.fit(X).pairwise())
            cells.append(f"{dt:6.1f} /{mem:6.0f}")
        if Fermat is not None and n <= 5000:
            _, dt, mem = measure(
                lambda X=X: (
                    Fermat(alpha=2.0, path_method="D", k=16)
                    .fit(pairwise_distances(X))
                    .get_distances()
                )
            )
            cells.append(f"{dt:6.1f} /{mem:6.0f}")
        else:
            cells.append(f"{'skipped':>14}")
        print(f"{n:>6} | " + " | ".join(cells), flush=True)


def sparse(sizes, dims, seed):
    print("\n== sparse: kneighbors_graph(15), true density, calibrated (CPU s / peak traced MiB)")
    print(f"{'n':>7} {'D':>3} | {'fit':>14} | {'kneighbors':>14} | DBSCAN s")
    for n in sizes:
        for dim in dims:
            X = np.random.default_rng(seed).normal(size=(n, dim))
            g = StandardNormal(dim)
            fd = FermatDistance(density=g, prefit=True, score_function=g.grad, random_state=0)
            _, t_fit, m_fit = measure(lambda fd=fd, X=X: fd.fit(X))
            K, t_k, m_k = measure(lambda fd=fd: fd.kneighbors_graph(n_neighbors=15))
            t0 = time.process_time()
            DBSCAN(eps=float(np.quantile(K.data, 0.5)), metric="precomputed").fit(K)
            print(
                f"{n:>7} {dim:>3} | {t_fit:6.1f} /{m_fit:6.0f} | {t_k:6.1f} /{m_k:6.0f} | "
                f"{time.process_time() - t0:.1f}",
                flush=True,
            )


def speed(seed):
    print("\n== speed, default density (FreeFormFlow) on 500 two-moons points")
    X, _ = make_moons(500, noise=0.05, random_state=seed)
    t0 = time.process_time()
    fd = FermatDistance(random_state=seed).fit(X)
    t_fit = time.process_time() - t0
    t0 = time.process_time()
    fd.set_params(relax=True).pairwise(X[:60])
    t_60 = time.process_time() - t0
    fd.set_params(relax="auto")
    t0 = time.process_time()
    fd.pairwise()
    t_all = time.process_time() - t0
    print(f"fit {t_fit:.1f} s; pairwise of 60 points (1 770 relaxed pairs) {t_60:.1f} s;")
    print(f"pairwise of all 500 (calibrated) {t_all:.1f} s")


def curved_10d(n: int, seed: int):
    """Two interleaved half circles, bent through 8 more dimensions, randomly rotated."""
    rng = np.random.default_rng(seed)
    X2, y = make_moons(n, noise=0.06, random_state=seed)
    t = np.where(y == 0, np.arctan2(X2[:, 1], X2[:, 0]), np.arctan2(0.5 - X2[:, 1], 1 - X2[:, 0]))
    freqs = np.arange(1, 9)
    bend = 0.25 * np.sin(freqs[None, :] * t[:, None] + freqs[None, :])
    X = np.hstack([X2, bend + 0.03 * rng.normal(size=(n, 8))])
    Q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    return X @ Q, y


def clustering(seed):
    print("\n== clustering ARI: Fermat (default density, beta = 1/D) vs Euclidean")
    print("DBSCAN: best over 40 eps quantiles and min_samples 5/10 (oracle, same for both)")
    sets = {
        "moons": make_moons(500, noise=0.08, random_state=seed),
        "circles": make_circles(500, noise=0.05, factor=0.5, random_state=seed),
        "curved 10-D": curved_10d(500, seed),
    }
    print(f"{'data':>12} | {'metric':>9} | {'DBSCAN':>6} | {'HDBSCAN':>7} | {'average':>7} | s")
    for name, (X, y) in sets.items():
        t0 = time.process_time()
        F = FermatDistance(random_state=seed).fit_transform(X)
        dt = time.process_time() - t0
        for metric, M in [("fermat", F), ("euclidean", pairwise_distances(X))]:
            tri = M[np.triu_indices_from(M, 1)]
            best = 0.0
            for q in np.linspace(0.002, 0.2, 40):
                for ms in (5, 10):
                    lab = DBSCAN(eps=np.quantile(tri, q), min_samples=ms, metric="precomputed")
                    best = max(best, adjusted_rand_score(y, lab.fit_predict(M)))
            hdb = HDBSCAN(metric="precomputed", min_cluster_size=25, copy=True).fit_predict(M)
            avg = AgglomerativeClustering(2, metric="precomputed", linkage="average")
            ari_h = adjusted_rand_score(y, hdb)
            ari_a = adjusted_rand_score(y, avg.fit_predict(M))
            s = f"{dt:.0f}" if metric == "fermat" else ""
            print(
                f"{name:>12} | {metric:>9} | {best:6.2f} | {ari_h:7.2f} | {ari_a:7.2f} | {s}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="sample size of the accuracy runs")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--n-cost", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--n-sparse", type=int, nargs="+", default=[20000])
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["accuracy", "cost", "speed", "clustering"],
        choices=["accuracy", "cost", "sparse", "speed", "clustering"],
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", UserWarning)
    if "accuracy" in args.sections:
        accuracy(args.dims, args.n, seed=0)
    if "cost" in args.sections:
        cost(args.n_cost, seed=0)
    if "sparse" in args.sections:
        sparse(args.n_sparse, [2, 10], seed=0)
    if "speed" in args.sections:
        speed(seed=0)
    if "clustering" in args.sections:
        clustering(seed=0)


if __name__ == "__main__":
    main()
