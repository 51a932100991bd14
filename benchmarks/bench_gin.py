"""GINTransformer benchmark: nonlinear ICA accuracy and the spectrum of informative variables.

1. The GIN paper's artificial experiment (``make_nonlinear_ica``: 2 informative latents from 5
   Gaussian clusters, 8 noise latents of std 0.01, mixed by a random 8-block GLOW network).
   Mean correlation coefficient (MCC) between the true informative latents and the recovered
   ones, after the best one-to-one matching (``scipy.optimize.linear_sum_assignment`` on
   ``|corr|``), for GIN, FastICA and PCA. "top-2" uses each method's own choice of its two
   leading components (GIN: largest latent std; PCA: largest variance; FastICA: run with
   ``n_components=2``); "best" matches against all 10 components.
2. The spectrum of latent standard deviations on sklearn's digits (8x8, 1 797 images) and on
   the 5 000 MNIST digits in ``../shared/data/mnist`` (if present), with the label as auxiliary
   variable: number of informative variables (knee = largest drop in log std) and how sharp the
   knee is (that drop, in decades). The paper found 22 informative variables on EMNIST digits
   (240 000 images, convolutional couplings, long training).

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/bench_gin.py           # a few minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_gin.py --full    # more seeds, points, epochs
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA, FastICA

from skfff import GINTransformer
from skfff.datasets import make_nonlinear_ica

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist" / "mnist_5k.csv.gz"


def mcc(Z: np.ndarray, S: np.ndarray) -> float:
    """Mean |correlation| of the columns of S with their best-matched columns of Z."""
    corr = np.abs(np.corrcoef(Z.T, S.T)[: Z.shape[1], Z.shape[1] :])
    rows, cols = linear_sum_assignment(-corr)
    return float(corr[rows, cols].mean())


def artificial(n_seeds: int, n_samples: int, max_epochs: int) -> None:
    print(f"\n== Artificial data: {n_samples} points, {n_seeds} seeds, GIN {max_epochs} epochs ==")
    rows = []
    for seed in range(n_seeds):
        X, y, latents = make_nonlinear_ica(n_samples, random_state=seed)
        S = latents[:, :2]
        t0 = time.perf_counter()
        gin = GINTransformer(
            hidden_features=10,
            lr=1e-2,
            max_epochs=max_epochs,
            batch_size=1000,
            random_state=seed,
        ).fit(X, y)
        t_gin = time.perf_counter() - t0
        Z = gin.transform(X)
        pca = PCA(random_state=seed).fit(X)
        Zp = pca.transform(X)
        ica2 = FastICA(2, random_state=seed, max_iter=1000).fit_transform(X)
        ica10 = FastICA(10, random_state=seed, max_iter=1000).fit_transform(X)
        rows.append(
            [
                mcc(Z[:, :2], S),
                mcc(Z, S),
                mcc(Zp[:, :2], S),
                mcc(Zp, S),
                mcc(ica2, S),
                mcc(ica10, S),
                gin.n_informative_,
                gin.spectrum_gap_ / np.log(10),
                t_gin,
            ]
        )
        print(
            f"seed {seed}: GIN n_informative={gin.n_informative_}, "
            f"spectrum {np.array2string(gin.latent_std_[:4], precision=3)}..., {t_gin:.0f} s"
        )
    r = np.array(rows)
    print(f"\n{'method':<10}{'MCC top-2':>14}{'MCC best':>14}")
    for name, a, b in [("GIN", 0, 1), ("PCA", 2, 3), ("FastICA", 4, 5)]:
        print(
            f"{name:<10}{r[:, a].mean():>8.3f} ± {r[:, a].std():.3f}"
            f"{r[:, b].mean():>8.3f} ± {r[:, b].std():.3f}"
        )
    print(
        f"GIN found n_informative = {r[:, 6].astype(int).tolist()} (true 2); knee drop "
        f"{r[:, 7].mean():.2f} decades; fit {r[:, 8].mean():.0f} s per seed"
    )


def spectrum_report(name: str, X: np.ndarray, y: np.ndarray, **params) -> None:
    t0 = time.perf_counter()
    gin = GINTransformer(random_state=0, **params).fit(X, y)
    dt = time.perf_counter() - t0
    s = gin.latent_std_
    n = gin.n_informative_
    log_s = np.log10(s)
    drops = log_s[:-1] - log_s[1:]
    second = np.sort(drops)[-2] if len(drops) > 1 else np.nan
    print(f"\n== {name}: {X.shape[0]} x {X.shape[1]}, GIN {params}, {dt:.0f} s ==")
    print(f"held-out NLL (last epoch): {gin.history_[-1, 'valid_loss']:.1f} nats")
    print(
        f"n_informative_ = {n}; knee drop {gin.spectrum_gap_ / np.log(10):.2f} decades "
        f"(second-largest drop {second:.2f}); std ratio first/last {s[0] / s[-1]:.0f}"
    )
    print("leading stds:", np.array2string(s[: max(n + 3, 10)], precision=3))
    for thr in (0.1, 0.05):
        print(f"variables with std > {thr}: {int(np.sum(s > thr))}")
    pca = PCA().fit(X)
    ps = np.sqrt(pca.explained_variance_)
    ps = ps[ps > 0]
    pd = np.log10(ps[:-1]) - np.log10(ps[1:])
    print(
        f"PCA (for comparison): knee at {int(np.argmax(pd)) + 1} components, "
        f"drop {pd.max():.2f} decades"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="more seeds, points and epochs")
    parser.add_argument("--skip-mnist", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.full:
        artificial(n_seeds=5, n_samples=10_000, max_epochs=80)
    else:
        artificial(n_seeds=3, n_samples=5_000, max_epochs=60)

    digits_X, digits_y = load_digits(return_X_y=True)
    spectrum_report(
        "sklearn digits",
        digits_X / 16.0,
        digits_y,
        hidden_features=64,
        lr=3e-3,
        max_epochs=200 if args.full else 80,
        batch_size=500,
    )
    if args.skip_mnist:
        return
    if not MNIST.exists():
        print(f"\n(MNIST not found at {MNIST}; skipped)")
        return
    with gzip.open(MNIST, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    spectrum_report(
        "MNIST 5k",
        data[:, :-1] / 255.0,
        data[:, -1].astype(int),
        hidden_features=256,
        lr=1e-3,
        max_epochs=100 if args.full else 20,
        batch_size=500,
    )


if __name__ == "__main__":
    main()
