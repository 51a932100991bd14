"""Benchmark ManifoldFreeFormFlow: held-out NLL against the truth and kernel density
estimates, the normalisation of the learnt density, earth-science data on S^2, and sampling
speed against an ODE-based flow.

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/bench_manifold_flow.py             # every section
    OMP_NUM_THREADS=1 python benchmarks/bench_manifold_flow.py --only earth --seeds 0 1 2 3 4

Sections
--------
1. Known densities: a von Mises-Fisher mixture on S^2 and a wrapped-normal mixture on
   T^2 (``skfff.datasets``). Held-out NLL of the flow, of a kernel density estimate
   (von Mises-Fisher kernel on S^2, wrapped-normal kernel on T^2, bandwidth picked on a
   validation split) and of the truth, and the Monte Carlo integral of the flow's density.
2. Concentrated data (the normalisation bar): a vMF mixture with kappa = 1000 on S^2,
   wrapped normals with sigma = 0.05 on T^2 and a mixture of rotations blurred by 0.1 rad
   on SO(3), with defaults (``beta_scale="auto"``). Integral of ``exp(score_samples)`` over
   the manifold with 100 000 uniform points (``normalization_constant``), +- its standard
   error; held-out NLL against the truth and a kernel density (SO(3): a Gaussian kernel
   on the rotation angle).
3. Earth data (``../shared/data/earth``, latitude/longitude in degrees), all four sets:
   random 80/10/10 split per seed (``numpy.random.default_rng(seed).permutation``). The flow
   is fitted on train+validation with ``validation_fraction=1/9`` for early stopping,
   the default prior (a kernel mixture fitted by EM, its size chosen on held-out rows),
   batch 64 and the default ``max_epochs="auto"`` / ``patience="auto"`` (about 8 000
   optimiser steps, patience about 1 100 steps: volcano 728 epochs / 100, earthquake 104 /
   30, flood 132 / 30, fire 50 / 30; the "epochs" column is the mean of the epochs run);
   the KDE puts kernels on the train rows and picks its concentration on the validation
   rows. Test NLL in nats w.r.t. area on the unit sphere (the convention
   of the published figures: M-FFF volcano -2.25, earthquake -0.23, flood 0.51, fire
   -1.19), Monte Carlo integral of the density, fit seconds.
4. Sampling: wall time for 100 000 samples from the fitted flow (one network pass and a
   projection) and from zuko's CNF (FFJORD, an ODE solve per sample batch) trained
   briefly on the same S^2 data in R^3 and projected onto the sphere. Sample quality is
   compared through the true log-density of each model's samples.
"""

from __future__ import annotations

import argparse
import inspect
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp

from skfff import ManifoldFreeFormFlow
from skfff.datasets import make_torus_wrapped_normal_mixture, make_vmf_mixture
from skfff.datasets._manifold import make_rotation_mixture
from skfff.manifolds import Torus, latlon_to_unit

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


def rotation_kde_log_density(R, centres, sigma, block=1024):
    """Log-density on SO(3) (volume 8 pi^2) of a kernel density with kernels
    ``exp(-angle^2 / (2 sigma^2))`` on the relative rotation angle, normalised numerically."""
    angles = np.linspace(0.0, np.pi, 20001)
    # volume of the rotations at angle < t is 8 pi (t - sin t): density 8 pi (1 - cos t) dt
    norm = np.trapezoid(np.exp(-0.5 * (angles / sigma) ** 2) * 8 * np.pi * (1 - np.cos(angles)),
                        angles)
    R = R.reshape(-1, 9)
    C = centres.reshape(-1, 9)
    out = []
    for s in range(0, len(R), block):
        trace = R[s:s + block] @ C.T  # tr(A^T B) = sum of the products of the entries
        ang = np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0))
        out.append(logsumexp(-0.5 * (ang / sigma) ** 2, axis=1) - math.log(norm * len(C)))
    return np.concatenate(out)


def fit_kde(score, train, valid, grid):
    """Pick the bandwidth on the validation rows; return (best parameter, scorer)."""
    vals = [score(valid, train, g).mean() for g in grid]
    best = grid[int(np.argmax(vals))]
    return best, (lambda X: score(X, train, best))


#: Batch size of the earth fits.
EARTH_BATCH = 64


def split(n, seed):
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(0.8 * n), int(0.9 * n)
    return perm[:a], perm[a:b], perm[b:]


# ------------------------------------------------------------------ sections
def _integral(flow):
    """Integral of exp(score_samples) (100 000 uniform points) and, in brackets, that of
    the network's own density before ``renormalize`` divided it (``normalization_``)."""
    uniform = ({"proposal": "uniform"} if "proposal" in
               inspect.signature(flow.normalization_constant).parameters else {})
    estimate, stderr = flow.normalization_constant(100_000, random_state=0, **uniform)
    return f"{estimate:.3f}+-{stderr:.3f} ({flow.normalization_[0]:.3f})"


def known_densities(epochs, seed):
    print("\n== 1. known densities: held-out NLL (nats), lower is better ==")
    print(f"{'data':<28}{'truth':>9}{'M-FFF':>9}{'KDE':>9}{'uniform':>9}{'integral (raw)':>22}"
          f"{'fit s':>8}")
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
          f"{_integral(flow):>22}{fit_s:8.1f}")

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
          f"{2 * math.log(2 * math.pi):9.3f}{_integral(tflow):>22}{fit_s:8.1f}")
    return flow, dist, X


def concentrated(epochs, seed):
    print("\n== 2. concentrated data: normalisation and held-out NLL (nats) ==")
    print(f"{'data':<30}{'truth':>8}{'M-FFF':>8}{'KDE':>8}{'integral (raw)':>22}{'beta x':>8}"
          f"{'fit s':>7}")
    cases = [
        ("S^2 vMF mixture (3 x k=1000)", "sphere",
         lambda n, r: make_vmf_mixture(n, n_components=3, concentration=1000.0,
                                       random_state=r, return_distribution=True),
         vmf_kde_log_density, np.geomspace(50, 1e5, 16)),
        ("T^2 wrapped normals (3 x .05)", "torus",
         lambda n, r: make_torus_wrapped_normal_mixture(n, n_components=3, scale=0.05,
                                                        random_state=r,
                                                        return_distribution=True),
         wrapped_kde_log_density, np.geomspace(0.005, 0.3, 16)),
        ("T^4 wrapped normals (3 x .1)", Torus(4),
         lambda n, r: make_torus_wrapped_normal_mixture(n, n_components=3, scale=0.1,
                                                        n_dims=4, random_state=r,
                                                        return_distribution=True),
         wrapped_kde_log_density, np.geomspace(0.01, 0.5, 16)),
        ("SO(3) rotations (3 x .1 rad)", "so3",
         lambda n, r: make_rotation_mixture(n, n_components=3, scale=0.1, random_state=r,
                                            return_distribution=True),
         rotation_kde_log_density, np.geomspace(0.02, 0.5, 16)),
    ]
    for label, name, make, kde_score, grid in cases:
        X, _, dist = make(3000, seed)
        X_val, _ = dist.sample(500, random_state=seed + 1)
        X_te, _ = dist.sample(2000, random_state=seed + 2)
        t = time.perf_counter()
        flow = ManifoldFreeFormFlow(name, max_epochs=epochs, lr=3e-3, hidden_features=64,
                                    n_blocks=2, random_state=seed).fit(X)
        fit_s = time.perf_counter() - t
        _, kde = fit_kde(kde_score, X, X_val, list(grid))
        print(f"{label:<30}{-dist.log_density(X_te).mean():8.3f}{-flow.score(X_te):8.3f}"
              f"{-kde(X_te).mean():8.3f}{_integral(flow):>22}{flow.beta_scale_:8.1f}"
              f"{fit_s:7.1f}")


def earth(names, seeds, beta_scale="auto", max_epochs="auto", patience="auto"):
    print("\n== 3. earth data on S^2: test NLL (nats, per unit area), lower is better ==")
    if not DATA.exists():
        print(f"(skipped: {DATA} not found)")
        return
    print(f"{'data':<12}{'rows':>6}{'epochs':>7}{'M-FFF':>16}{'+ log Z':>16}{'vMF KDE':>16}"
          f"{'published':>10}{'integral':>16}{'kernel int.':>16}{'raw integral':>16}"
          f"{'beta x':>7}{'fit s':>7}")
    for name in names:
        fname, skip = EARTH[name]
        latlon = np.genfromtxt(DATA / fname, delimiter=",", skip_header=skip)
        X = latlon_to_unit(latlon[:, 0], latlon[:, 1])
        rows = {k: [] for k in ("nll", "honest", "kde", "int", "se", "kint", "raw", "fit", "scale",
                                 "encoder", "decoder", "epochs")}
        for seed in seeds:
            tr, va, te = split(len(X), seed)
            t = time.perf_counter()
            flow = ManifoldFreeFormFlow(
                "sphere", max_epochs=max_epochs,
                batch_size=EARTH_BATCH, validation_fraction=1 / 9, beta_scale=beta_scale,
                patience=patience,
                random_state=seed,
            ).fit(X[np.concatenate([tr, va])])
            rows["fit"].append(time.perf_counter() - t)
            rows["epochs"].append(flow.n_iter_)
            rows["nll"].append(-flow.score(X[te]))
            estimate, stderr = flow.normalization_constant(100_000, random_state=0,
                                                           proposal="uniform")
            rows["int"].append(estimate)
            # the same by importance sampling (other points than fit's check)
            kernel, kernel_se = flow.normalization_constant(100_000, random_state=12345)
            rows["kint"].append(kernel)
            # both exact densities, each divided by its own integral (importance sampling)
            both = {}
            if hasattr(flow, "proposal_"):
                E = X[te]
                for via in ("encoder", "decoder"):
                    log_p = flow._map_batches(flow._log_prob(via), E, None)
                    z, _ = flow._integral(via, 100_000, 12345)
                    both[via] = float(-log_p.mean() + math.log(z))
                    rows[via].append(both[via])
            # the network's own density, before renormalize divided it (fit's check)
            rows["raw"].append(flow.normalization_[0])
            rows["honest"].append(rows["nll"][-1] + math.log(estimate))
            rows["se"].append(stderr)
            rows["scale"].append(flow.beta_scale_)
            _, kde = fit_kde(vmf_kde_log_density, X[tr], X[va], list(np.geomspace(5, 5e4, 16)))
            rows["kde"].append(-kde(X[te]).mean())
            print(f"  {name} seed {seed}: NLL {rows['nll'][-1]:.3f} (+ log Z: "
                  f"{rows['honest'][-1]:.3f}), KDE {rows['kde'][-1]:.3f}, "
                  f"integral {estimate:.3f}+-{stderr:.3f} (kernel {kernel:.3f}+-{kernel_se:.3f}, "
                  f"raw {rows['raw'][-1]:.3f}, "
                  f"{flow.log_prob_via_}), "
                  + "".join(f"{k} {v:.3f}, " for k, v in both.items())
                  + f"epochs {flow.n_iter_}, {rows['fit'][-1]:.0f} s", flush=True)

        def pm(v, d=3):
            return f"{np.mean(v):.{d}f}+-{np.std(v):.{d}f}"

        print(f"{name:<12}{len(X):>6}{np.mean(rows['epochs']):>7.0f}{pm(rows['nll']):>16}{pm(rows['honest']):>16}"
              f"{pm(rows['kde']):>16}"
              f"{PUBLISHED[name]:10.2f}{pm(rows['int']):>16}{pm(rows['kint']):>16}"
              f"{pm(rows['raw']):>16}"
              f"{np.mean(rows['scale']):7.1f}"
              f"{np.mean(rows['fit']):7.0f}", flush=True)
        if rows["encoder"]:
            print(f"{'':<12}each density divided by its own integral: encoder "
                  f"{pm(rows['encoder'])}, decoder {pm(rows['decoder'])}", flush=True)
    print(f"(mean +- std over seeds {list(seeds)}; integral: normalization_constant with "
          "100 000 uniform points, 1 for a normalised density; '+ log Z': the test NLL of the "
          "density divided by that integral; kernel int.: the same integral with 100 000 "
          "importance-sampled points; raw integral: the network's density before "
          "renormalize divides it, normalization_ from fit's check with 50 000 points)")


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


def _int_or_auto(value):
    return value if value == "auto" else int(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["known", "concentrated", "earth", "sampling"],
                        default=None, help="run one section (sampling also fits the S^2 flow)")
    parser.add_argument("--data", nargs="+", choices=list(EARTH), default=list(EARTH),
                        help="earth data sets (default: all four)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="seeds of the earth splits (the published figures use 5)")
    parser.add_argument("--beta-scale", default="auto",
                        help="beta_scale of the earth fits: 'auto' or a number (10 is what "
                             "the docstring recommends for geographic data)")
    parser.add_argument("--max-epochs", type=_int_or_auto, default="auto",
                        help="max_epochs of the earth fits (default: the estimator's 'auto')")
    parser.add_argument("--patience", type=_int_or_auto, default="auto",
                        help="early-stopping patience of the earth fits (default 'auto')")
    parser.add_argument("--epochs", type=int, default=80,
                        help="epochs of the synthetic fits (sections 1, 2)")
    parser.add_argument("--cnf-steps", type=int, default=100,
                        help="training steps of the CNF baseline")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.only in (None, "known", "sampling"):
        flow, dist, X = known_densities(args.epochs, seed=0)
    if args.only in (None, "concentrated"):
        concentrated(args.epochs, seed=0)
    if args.only in (None, "earth"):
        scale = args.beta_scale if args.beta_scale == "auto" else float(args.beta_scale)
        earth(args.data, args.seeds, scale, args.max_epochs, args.patience)
    if args.only in (None, "sampling"):
        sampling(flow, dist, X, args.cnf_steps)


if __name__ == "__main__":
    main()
