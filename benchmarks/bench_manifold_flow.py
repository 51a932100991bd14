"""Benchmark ManifoldFreeFormFlow: NLL against the truth and a vMF kernel density
estimate, earth-science data on S^2, and sampling speed against an ODE-based flow.

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/bench_manifold_flow.py          # ~5 min on a CPU
    OMP_NUM_THREADS=1 python benchmarks/bench_manifold_flow.py --full   # all four earth
                                             # sets, 3 seeds, 1000 epochs: meant for a GPU

Sections
--------
1. Known densities: a von Mises-Fisher mixture on S^2 and a wrapped-normal mixture on
   T^2 (``skfff.datasets``). Held-out NLL of the flow, of a kernel density estimate
   (von Mises-Fisher kernel on S^2, wrapped-normal kernel on T^2, bandwidth picked on a
   validation split) and of the truth.
2. Earth data (``../shared/data/earth``, latitude/longitude in degrees): random
   80/10/10 split per seed (``numpy.random.default_rng(seed).permutation``). The flow is
   fitted on train+validation with ``validation_fraction=1/9`` for early stopping
   (``prior="vmf_mixture"`` with 16 components, ``beta=500``, batch 64: these data are
   very concentrated); the
   KDE puts kernels on the train rows and picks its concentration on the validation rows.
   Test NLL in nats w.r.t. area on the unit sphere (the convention of the published
   figures: M-FFF volcano -2.25, earthquake -0.23, flood 0.51, fire -1.19), with the
   density through the decoder's Jacobian (default) and the encoder's, and a Monte Carlo
   check of the normalisation of each.
3. Sampling: wall time for 100 000 samples from the fitted flow (one network pass and a
   projection) and from zuko's CNF (FFJORD, an ODE solve per sample batch) trained
   briefly on the same S^2 data in R^3 and projected onto the sphere. Sample quality is
   compared through the true log-density of each model's samples.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp

from skfff import ManifoldFreeFormFlow
from skfff.datasets import make_torus_wrapped_normal_mixture, make_vmf_mixture
from skfff.manifolds import Sphere, latlon_to_unit

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "earth"
EARTH = {  # file, header lines to skip
    "volcano": ("volerup.csv", 2),
    "earthquake": ("quakes_all.csv", 4),
    "flood": ("flood.csv", 2),
    "fire": ("fire.csv", 1),
}
PUBLISHED = {"volcano": -2.25, "earthquake": -0.23, "flood": 0.51, "fire": -1.19}


# ----------------------------------------------------------------- baselines
def vmf_kde_log_density(X, centres, kappa, block=2048):
    """Log-density on S^2 of a vMF kernel density estimate (kernels at ``centres``)."""
    log_c = math.log(kappa) - math.log(2 * math.pi) - kappa - math.log(-math.expm1(-2 * kappa))
    out = []
    for s in range(0, len(X), block):
        dots = X[s:s + block] @ centres.T
        out.append(logsumexp(kappa * dots, axis=1) + log_c - math.log(len(centres)))
    return np.concatenate(out)


def wrapped_kde_log_density(A, centres, sigma, n_wraps=2, block=1024):
    """Log-density on T^d of a wrapped-normal kernel density estimate."""
    shifts = 2 * np.pi * np.arange(-n_wraps, n_wraps + 1)
    out = []
    for s in range(0, len(A), block):
        d = A[s:s + block, None, :, None] - centres[None, :, :, None] + shifts
        per_dim = logsumexp(-0.5 * (d / sigma) ** 2, axis=-1) - math.log(
            sigma * math.sqrt(2 * math.pi))
        out.append(logsumexp(per_dim.sum(-1), axis=1) - math.log(len(centres)))
    return np.concatenate(out)


def fit_kde(score, train, valid, grid):
    """Pick the bandwidth on the validation rows; return (best parameter, scorer)."""
    vals = [score(valid, train, g).mean() for g in grid]
    best = grid[int(np.argmax(vals))]
    return best, (lambda X: score(X, train, best))


def split(n, seed):
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(0.8 * n), int(0.9 * n)
    return perm[:a], perm[a:b], perm[b:]


# ------------------------------------------------------------------ sections
def known_densities(epochs, seed):
    print("\n== 1. known densities: held-out NLL (nats), lower is better ==")
    print(f"{'data':<28}{'truth':>9}{'M-FFF':>9}{'KDE':>9}{'uniform':>9}{'fit s':>8}")
    X, _, dist = make_vmf_mixture(3000, n_components=4, concentration=20.0,
                                  random_state=seed, return_distribution=True)
    X_val, _ = dist.sample(500, random_state=seed + 1)
    X_te, _ = dist.sample(2000, random_state=seed + 2)
    t = time.perf_counter()
    flow = ManifoldFreeFormFlow("sphere", max_epochs=epochs, lr=3e-3, hidden_features=64,
                                n_blocks=2, random_state=seed).fit(X)
    fit_s = time.perf_counter() - t
    _, kde = fit_kde(vmf_kde_log_density, X, X_val, list(np.geomspace(5, 500, 12)))
    print(f"{'S^2 vMF mixture (4 x k=20)':<28}{-dist.log_density(X_te).mean():9.3f}"
          f"{-flow.score(X_te):9.3f}{-kde(X_te).mean():9.3f}{math.log(4 * math.pi):9.3f}"
          f"{fit_s:8.1f}")

    A, _, tdist = make_torus_wrapped_normal_mixture(3000, n_components=3, scale=0.4,
                                                    random_state=seed,
                                                    return_distribution=True)
    A_val, _ = tdist.sample(500, random_state=seed + 1)
    A_te, _ = tdist.sample(2000, random_state=seed + 2)
    t = time.perf_counter()
    tflow = ManifoldFreeFormFlow("torus", max_epochs=epochs, lr=3e-3, hidden_features=64,
                                 n_blocks=2, random_state=seed).fit(A)
    fit_s = time.perf_counter() - t
    _, tkde = fit_kde(wrapped_kde_log_density, A, A_val, list(np.geomspace(0.05, 1.0, 12)))
    print(f"{'T^2 wrapped normals (3 x .4)':<28}{-tdist.log_density(A_te).mean():9.3f}"
          f"{-tflow.score(A_te):9.3f}{-tkde(A_te).mean():9.3f}"
          f"{2 * math.log(2 * math.pi):9.3f}{fit_s:8.1f}")
    return flow, dist, X


def earth(names, epochs, seeds):
    print("\n== 2. earth data on S^2: test NLL (nats, per unit area), lower is better ==")
    if not DATA.exists():
        print(f"(skipped: {DATA} not found)")
        return
    print(f"{'data':<12}{'rows':>6}{'M-FFF dec':>11}{'M-FFF enc':>11}{'vMF KDE':>9}"
          f"{'published':>11}{'int dec':>9}{'int enc':>9}{'fit s':>7}")
    uniform = Sphere(2).random_uniform(200_000, torch.Generator().manual_seed(0))
    uniform = uniform.double().numpy()
    for name in names:
        fname, skip = EARTH[name]
        latlon = np.genfromtxt(DATA / fname, delimiter=",", skip_header=skip)
        X = latlon_to_unit(latlon[:, 0], latlon[:, 1])
        rows = {k: [] for k in ("dec", "enc", "kde", "int_dec", "int_enc")}
        fit_s = 0.0
        for seed in seeds:
            tr, va, te = split(len(X), seed)
            t = time.perf_counter()
            flow = ManifoldFreeFormFlow(
                "sphere", prior="vmf_mixture", n_prior_components=16, beta=500.0,
                max_epochs=epochs, batch_size=64, lr=2e-3, validation_fraction=1 / 9,
                patience=50, random_state=seed,
            ).fit(X[np.concatenate([tr, va])])
            fit_s += time.perf_counter() - t
            enc = copy.copy(flow).set_params(log_prob_via="encoder")
            rows["dec"].append(-flow.score(X[te]))
            rows["enc"].append(-enc.score(X[te]))
            rows["int_dec"].append(np.exp(flow.score_samples(uniform)).mean() * 4 * np.pi)
            rows["int_enc"].append(np.exp(enc.score_samples(uniform)).mean() * 4 * np.pi)
            _, kde = fit_kde(vmf_kde_log_density, X[tr], X[va], list(np.geomspace(5, 5e4, 16)))
            rows["kde"].append(-kde(X[te]).mean())
        m = {k: np.mean(v) for k, v in rows.items()}
        print(f"{name:<12}{len(X):>6}{m['dec']:11.3f}{m['enc']:11.3f}{m['kde']:9.3f}"
              f"{PUBLISHED[name]:11.2f}{m['int_dec']:9.2f}{m['int_enc']:9.2f}"
              f"{fit_s / len(seeds):7.1f}")
    print("(int dec / int enc: Monte Carlo integral of each density over the sphere with "
          "200 000 uniform points; 1 for a normalised density)")


def sampling(flow, dist, X, cnf_steps, n=100_000):
    print(f"\n== 3. sampling {n} points on S^2 ==")
    import zuko

    torch.manual_seed(0)
    flow.sample(1000, random_state=0)  # warm-up
    t = time.perf_counter()
    S = flow.sample(n, random_state=0)
    mfff_s = time.perf_counter() - t

    cnf = zuko.flows.CNF(3, hidden_features=(64, 64))
    opt = torch.optim.Adam(cnf.parameters(), lr=3e-3)
    Xt = torch.as_tensor(X, dtype=torch.float32)
    t = time.perf_counter()
    for _ in range(cnf_steps):
        batch = Xt[torch.randint(len(Xt), (256,))]
        loss = -cnf().log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    cnf_train_s = time.perf_counter() - t
    with torch.no_grad():
        cnf().sample((1000,))  # warm-up
        t = time.perf_counter()
        C = cnf().sample((n,)).double().numpy()
        cnf_s = time.perf_counter() - t
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    print(f"{'model':<34}{'seconds':>9}{'samples/s':>12}{'E[log p_true]':>15}")
    print(f"{'ManifoldFreeFormFlow':<34}{mfff_s:9.2f}{n / mfff_s:12.0f}"
          f"{dist.log_density(S).mean():15.3f}")
    print(f"{f'zuko CNF, R^3 + projection ({cnf_steps} st.)':<34}{cnf_s:9.2f}{n / cnf_s:12.0f}"
          f"{dist.log_density(C).mean():15.3f}")
    print(f"{'truth':<34}{'':>9}{'':>12}{dist.log_density(dist.sample(n, 9)[0]).mean():15.3f}")
    print(f"speed-up {cnf_s / mfff_s:.0f}x (CNF trained {cnf_train_s:.0f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="all four earth data sets, 3 seeds, longer training")
    parser.add_argument("--cnf-steps", type=int, default=None,
                        help="training steps of the CNF baseline (default 100, --full 2000)")
    parser.add_argument("--only", choices=["known", "earth", "sampling"], default=None,
                        help="run one section (sampling also fits the S^2 flow)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.full:
        names, earth_epochs, seeds, epochs, cnf_steps = list(EARTH), 1000, [0, 1, 2], 300, 2000
    else:
        names, earth_epochs, seeds, epochs, cnf_steps = ["volcano"], 600, [0], 80, 100
    cnf_steps = args.cnf_steps or cnf_steps
    if args.only in (None, "known", "sampling"):
        flow, dist, X = known_densities(epochs, seed=0)
    if args.only in (None, "earth"):
        earth(names, earth_epochs, seeds)
    if args.only in (None, "sampling"):
        sampling(flow, dist, X, cnf_steps)


if __name__ == "__main__":
    main()
