"""GINTransformer benchmark: is the count of informative variables right on every seed?

Sections (``--sections``, comma-separated; all by default):

``check``
    The independent check of issue 16. Data of the GIN paper's kind, generated here without
    any skfff code: 2 informative latents from a 5-class Gaussian mixture (means uniform in
    [-5, 5], standard deviations uniform in [0.5, 3]), 8 noise latents of standard deviation
    0.01, mixed into 10 features by a random non-volume-preserving coupling network written in
    NumPy (8 two-sided affine couplings whose log-scales are soft-clamped with
    ``2 * 0.636 * atan(s / 2)``, subnetworks of width 10 with PyTorch's default uniform
    initialisation, a random permutation after each block), 10 000 points. ``--mixings``
    independently drawn mixings times ``--seeds`` seeds of ``GINTransformer()`` with its
    defaults. Reported per fit: ``n_informative_``, the knee (``spectrum_gap_``, in decades),
    the mean correlation coefficient (MCC) of the two leading latents with the true
    informative ones after the best matching, epochs run and fit seconds.
``stress``
    The same with a stronger mixing (one-sided couplings with tanh subnetworks, Gaussian
    weights and biases, log-scales up to 1 per coordinate and block: ``log|det J|`` of the
    mixing varies over the data with a standard deviation of 1-3 nats, against 0.3-0.6 for the
    paper-like mixing). Not a goal of the issue; reported to show where the method stops.
``paper``
    The paper's setting: ``skfff.datasets.make_nonlinear_ica`` and the paper's
    hyper-parameters (subnetwork width 10, lr 1e-2, batch 1000), several seeds; MCC against
    PCA and FastICA.
``mnist``
    The spectrum of latent standard deviations on the 5 000 MNIST digits in
    ``../shared/data/mnist`` (label as auxiliary variable), with dense and with convolutional
    couplings; short runs (``--mnist-epochs``, default 10), far from the paper's long EMNIST
    training (22 informative variables).

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/bench_gin.py --sections check --jobs 2
    OMP_NUM_THREADS=1 python benchmarks/bench_gin.py --sections mnist --mnist-epochs 10
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
from joblib import Parallel, delayed
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA, FastICA

from skfff import GINTransformer
from skfff.datasets import make_nonlinear_ica

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist" / "mnist_5k.csv.gz"


# ------------------------------------------------------------------ independent data
def _random_subnet(rng: np.random.Generator, n_in: int, n_out: int, width: int, strong: bool):
    """A random MLP ``n_in -> width -> width -> n_out`` as a NumPy function."""
    sizes = [(n_in, width), (width, width), (width, n_out)]
    layers = []
    for a, b in sizes:
        if strong:
            layers.append((rng.normal(0, 1 / np.sqrt(a), (a, b)), rng.normal(0, 0.5, b)))
        else:  # PyTorch's default nn.Linear initialisation
            bound = 1 / np.sqrt(a)
            layers.append((rng.uniform(-bound, bound, (a, b)), rng.uniform(-bound, bound, b)))
    act = np.tanh if strong else (lambda h: np.maximum(h, 0.0))

    def f(h: np.ndarray) -> np.ndarray:
        for i, (W, b) in enumerate(layers):
            h = h @ W + b
            if i < len(layers) - 1:
                h = act(h)
        return h

    return f


def random_coupling_mixing(
    latents: np.ndarray, rng: np.random.Generator, n_blocks: int = 8, strong: bool = False
) -> np.ndarray:
    """Mix ``latents`` with a random (not volume-preserving) affine coupling network.

    Paper-like (``strong=False``): two-sided couplings, log-scales ``2 * 0.636 * atan(s / 2)``,
    ReLU subnetworks with PyTorch's default initialisation, a permutation after each block.
    ``strong=True``: a permutation, then a one-sided coupling with log-scales ``tanh(s)``
    (up to 1 per coordinate and block) from tanh subnetworks with Gaussian weights and biases.
    """
    x = np.array(latents, dtype=np.float64)
    d = x.shape[1]
    d1, d2 = d // 2, d - d // 2
    for _ in range(n_blocks):
        if strong:
            x = x[:, rng.permutation(d)]
            o = _random_subnet(rng, d1, 2 * d2, 10, strong)(x[:, :d1])
            x = np.hstack([x[:, :d1], x[:, d1:] * np.exp(np.tanh(o[:, :d2])) + o[:, d2:]])
            continue
        f2 = _random_subnet(rng, d1, 2 * d2, 10, strong)
        f1 = _random_subnet(rng, d2, 2 * d1, 10, strong)
        x1, x2 = x[:, :d1], x[:, d1:]
        o = f2(x1)
        x2 = x2 * np.exp(2.0 * 0.636 * np.arctan(o[:, :d2] / 2.0)) + o[:, d2:]
        o = f1(x2)
        x1 = x1 * np.exp(2.0 * 0.636 * np.arctan(o[:, :d1] / 2.0)) + o[:, d1:]
        x = np.hstack([x1, x2])[:, rng.permutation(d)]
    return x


def independent_data(
    n_samples: int, mixing_seed: int, strong: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, S)``: mixed data, class labels, true informative latents (n, 2)."""
    mixing_rng = np.random.default_rng([16, mixing_seed, int(strong)])
    means = mixing_rng.uniform(-5, 5, (5, 2))
    stds = mixing_rng.uniform(0.5, 3, (5, 2))
    rng = np.random.default_rng([17, mixing_seed])
    y = rng.integers(5, size=n_samples)
    S = means[y] + stds[y] * rng.standard_normal((n_samples, 2))
    latents = np.hstack([S, 0.01 * rng.standard_normal((n_samples, 8))])
    return random_coupling_mixing(latents, mixing_rng, strong=strong), y, S


def mcc(Z: np.ndarray, S: np.ndarray) -> float:
    """Mean |correlation| of the columns of S with their best-matched columns of Z."""
    corr = np.abs(np.corrcoef(Z.T, S.T)[: Z.shape[1], Z.shape[1] :])
    rows, cols = linear_sum_assignment(-corr)
    return float(corr[rows, cols].mean())


def _fit_one(mixing: int, seed: int, n_samples: int, strong: bool, params: dict) -> dict:
    torch.set_num_threads(1)
    X, y, S = independent_data(n_samples, mixing, strong)
    t0 = time.perf_counter()
    gin = GINTransformer(random_state=seed, **params).fit(X, y)
    seconds = time.perf_counter() - t0
    return {
        "mixing": mixing,
        "seed": seed,
        "n": gin.n_informative_,
        "gap": gin.spectrum_gap_ / np.log(10),
        "mcc": mcc(gin.transform(X)[:, :2], S),
        "epochs": gin.n_iter_,
        "seconds": seconds,
        "log10_std": np.log10(gin.latent_std_[:4]),
    }


def check(n_mixings: int, n_seeds: int, n_samples: int, strong: bool, jobs: int) -> None:
    kind = "stronger mixing (stress test)" if strong else "paper-like mixing"
    print(f"\n== Independent check, {kind}: {n_mixings} mixings x {n_seeds} seeds, "
          f"{n_samples} points, GINTransformer() defaults ==", flush=True)
    runs = Parallel(n_jobs=jobs)(
        delayed(_fit_one)(m, s, n_samples, strong, {})
        for m in range(n_mixings)
        for s in range(n_seeds)
    )
    print(f"{'mixing':>6} {'seed':>4} {'n_inf':>5} {'knee dec':>8} {'MCC':>6} {'epochs':>6} "
          f"{'fit s':>6}  leading log10 std")
    for r in runs:
        print(f"{r['mixing']:>6} {r['seed']:>4} {r['n']:>5} {r['gap']:>8.2f} {r['mcc']:>6.3f} "
              f"{r['epochs']:>6} {r['seconds']:>6.0f}  "
              f"{np.array2string(r['log10_std'], precision=2)}")
    n_right = sum(r["n"] == 2 for r in runs)
    m = np.array([r["mcc"] for r in runs])
    sec = np.array([r["seconds"] for r in runs])
    ep = np.array([r["epochs"] for r in runs])
    print(f"n_informative_ == 2 in {n_right} of {len(runs)} fits; MCC mean {m.mean():.3f}, "
          f"min {m.min():.3f}; epochs {ep.min()}-{ep.max()} (median {np.median(ep):.0f}); "
          f"fit {np.median(sec):.0f} s median, {sec.max():.0f} s max", flush=True)


# ------------------------------------------------------------------ the paper's setting
def paper(n_seeds: int, n_samples: int) -> None:
    print(f"\n== make_nonlinear_ica (the paper's setting): {n_samples} points, {n_seeds} seeds, "
          "GIN with width 10, lr 1e-2, batch 1000 ==", flush=True)
    rows = []
    for seed in range(n_seeds):
        X, y, latents = make_nonlinear_ica(n_samples, random_state=seed)
        S = latents[:, :2]
        t0 = time.perf_counter()
        gin = GINTransformer(hidden_features=10, lr=1e-2, random_state=seed).fit(X, y)
        t_gin = time.perf_counter() - t0
        Zp = PCA(random_state=seed).fit_transform(X)
        ica2 = FastICA(2, random_state=seed, max_iter=1000).fit_transform(X)
        rows.append([
            mcc(gin.transform(X)[:, :2], S), mcc(Zp[:, :2], S), mcc(ica2, S),
            gin.n_informative_, gin.spectrum_gap_ / np.log(10), gin.n_iter_, t_gin,
        ])
        print(f"seed {seed}: n_informative_={gin.n_informative_}, knee "
              f"{rows[-1][4]:.2f} decades, {gin.n_iter_} epochs, {t_gin:.0f} s", flush=True)
    r = np.array(rows)
    print(f"MCC of the two leading components: GIN {r[:, 0].mean():.3f} +- {r[:, 0].std():.3f}, "
          f"PCA {r[:, 1].mean():.3f} +- {r[:, 1].std():.3f}, FastICA "
          f"{r[:, 2].mean():.3f} +- {r[:, 2].std():.3f}; GIN n_informative_ = "
          f"{r[:, 3].astype(int).tolist()}")


# ------------------------------------------------------------------ MNIST spectra
def spectrum_report(name: str, X: np.ndarray, y: np.ndarray, **params) -> None:
    t0 = time.perf_counter()
    gin = GINTransformer(random_state=0, **params).fit(X, y)
    dt = time.perf_counter() - t0
    s = gin.latent_std_
    log_s = np.log10(s)
    drops = log_s[:-1] - log_s[1:]
    print(f"\n== {name}: {X.shape[0]} x {X.shape[1]}, {params}, {gin.n_iter_} epochs, "
          f"{dt:.0f} s ==")
    print(f"held-out NLL (last epoch): {gin.history_[-1, 'valid_loss']:.1f} nats")
    print(f"n_informative_ = {gin.n_informative_}; knee {gin.spectrum_gap_ / np.log(10):.2f} "
          f"decades (second-largest drop {np.sort(drops)[-2]:.2f}); std ratio first/last "
          f"{s[0] / s[-1]:.0f}")
    print("leading stds:", np.array2string(s[:25], precision=3))
    for thr in (0.1, 0.05):
        print(f"variables with std > {thr}: {int(np.sum(s > thr))}", flush=True)


def mnist(epochs: int) -> None:
    if not MNIST.exists():
        print(f"\n(MNIST not found at {MNIST}; skipped)")
        return
    with gzip.open(MNIST, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    X, y = data[:, :-1] / 255.0, data[:, -1].astype(int)
    common = {"max_epochs": epochs, "batch_size": 250, "spectrum_patience": None}
    spectrum_report("MNIST 5k, dense couplings", X, y, n_blocks=8, hidden_features=256, **common)
    spectrum_report(
        "MNIST 5k, convolutional couplings", X, y, coupling="conv", image_shape=(28, 28),
        n_conv_blocks=2, conv_channels=16, n_blocks=2, hidden_features=256, **common,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="check,stress,paper,mnist")
    parser.add_argument("--mixings", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=1, help="parallel fits (joblib)")
    parser.add_argument("--mnist-epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sections = args.sections.split(",")
    if "check" in sections:
        check(args.mixings, args.seeds, args.samples, False, args.jobs)
    if "stress" in sections:
        check(1, min(args.seeds, 4), args.samples, True, args.jobs)
    if "paper" in sections:
        paper(min(args.seeds, 5), args.samples)
    if "mnist" in sections:
        mnist(args.mnist_epochs)


if __name__ == "__main__":
    main()
