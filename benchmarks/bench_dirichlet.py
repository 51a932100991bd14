"""Benchmark: unsupervised jet tagging with DirichletLatentClassifier and the alternatives.

On synthetic jet images (``skfff.datasets.make_jet_images``, one-prong QCD-like vs three-prong
top-like) mixed at several signal fractions, with the signal being the more complex class
("top") or the simpler one ("qcd"), we compare on a balanced test set:

- ``DirichletLatentClassifier`` (Dirichlet latent with K = 2 components; K = 4 with
  ``alpha=0.1``, one training (``dvae4``) or the lowest-entropy of five (``dvae4n``,
  ``n_init=5``); the Gaussian-mixture variant with K = 2 and 4): trained without labels; the
  training labels only name the components (Hungarian matching, extra components to their
  majority class);
- sklearn's ``LatentDirichletAllocation`` (2 topics) on pseudo-counts ``round(200 x)``, topic
  weight as the score, named the same way;
- a reconstruction-error autoencoder (sklearn ``MLPRegressor`` ``x -> x`` with an 8-unit
  bottleneck, on ``sqrt(x)``): the error is the anomaly score, always read as
  "high error = signal", as in an anomaly search;
- a supervised ``MLPClassifier`` trained with the labels: the upper bound.

Figures: ROC AUC and background rejection ``1 / eps_B`` at signal efficiency 0.5 and 0.8
(capped at the number of background test jets when none passes).

Run ``python benchmarks/bench_dirichlet.py`` (about 3 minutes on one CPU core) or with
``--full`` (40 x 40 images, more jets and epochs, all four settings with 3 seeds).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import LatentDirichletAllocation
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler

from skfff.datasets import make_jet_images
from skfff.dirichlet import DirichletLatentClassifier


def rejection_at(y: np.ndarray, score: np.ndarray, eff: float = 0.5) -> float:
    """Background rejection 1 / eps_B at signal efficiency ``eff``.

    Capped at the number of background jets (``eps_B`` of one jet) when no background passes.
    """
    fpr, tpr, _ = roc_curve(y, score)
    eps_b = np.interp(eff, tpr, fpr)
    return float(1.0 / max(eps_b, 1.0 / np.sum(y == 0)))


def matched_column(weights: np.ndarray, y: np.ndarray) -> int:
    """Column of ``weights`` matched to class 1 by the Hungarian algorithm on training labels."""
    mean = np.stack([weights[y == c].mean(0) for c in (0, 1)])
    rows, cols = linear_sum_assignment(mean, maximize=True)
    return int(cols[list(rows).index(1)])


#: Variants of DirichletLatentClassifier: (label, keyword arguments).
DVAE_VARIANTS = {
    "dvae2": ("DVAE mixture weight (K=2)", {}),
    "dvae4": ("DVAE mixture weight (K=4, alpha=0.1)", {"n_components": 4, "alpha": 0.1}),
    "dvae4n": (
        "DVAE (K=4, alpha=0.1, n_init=5)",
        {"n_components": 4, "alpha": 0.1, "n_init": 5},
    ),
    "gm2": ("GMVAE responsibility (K=2)", {"latent": "gaussian_mixture"}),
    "gm4": ("GMVAE responsibility (K=4)", {"latent": "gaussian_mixture", "n_components": 4}),
}
BASELINES = ("lda", "ae", "mlp")


def run_setting(fraction, signal, image_size, n_train, n_test, epochs, seed, methods):
    X, y = make_jet_images(n_train, fraction, image_size, random_state=seed, signal=signal)
    Xt, yt = make_jet_images(n_test, 0.5, image_size, random_state=seed + 1000, signal=signal)
    scores: dict[str, np.ndarray] = {}
    times: dict[str, float] = {}

    for key, (name, params) in DVAE_VARIANTS.items():
        if key not in methods:
            continue
        t = time.perf_counter()
        clf = DirichletLatentClassifier(
            max_epochs=epochs, random_state=seed, device="cpu", **params
        ).fit(X, y)
        scores[name] = clf.predict_proba(Xt)[:, 1]
        times[name] = time.perf_counter() - t
        if key == "dvae2":
            scores["DVAE reconstruction error"] = clf.reconstruction_error(Xt)
            times["DVAE reconstruction error"] = times[name]

    if "lda" in methods:
        t = time.perf_counter()
        lda = LatentDirichletAllocation(n_components=2, random_state=seed, max_iter=30)
        w = lda.fit_transform(np.round(200 * X))
        col = matched_column(w, y)
        scores["LDA topic weight"] = lda.transform(np.round(200 * Xt))[:, col]
        times["LDA topic weight"] = time.perf_counter() - t

    if "ae" in methods:
        t = time.perf_counter()
        # Autoencoder on sqrt(x) (the Hellinger embedding of the histograms): standardising each
        # cell instead gives rarely lit cells huge weight and a much worse score.
        S, St = np.sqrt(X), np.sqrt(Xt)
        ae = MLPRegressor(
            hidden_layer_sizes=(64, 8, 64), max_iter=epochs, random_state=seed, early_stopping=True
        )
        ae.fit(S, S)
        scores["AE reconstruction error"] = ((ae.predict(St) - St) ** 2).mean(1)
        times["AE reconstruction error"] = time.perf_counter() - t

    if "mlp" in methods:
        t = time.perf_counter()
        sup = MLPClassifier(
            hidden_layer_sizes=(128, 64), max_iter=epochs, random_state=seed, early_stopping=True
        )
        S, St = np.sqrt(X), np.sqrt(Xt)
        scaler = StandardScaler().fit(S)
        Z, Zt = scaler.transform(S), scaler.transform(St)
        sup.fit(Z, y)
        scores["supervised MLP (upper bound)"] = sup.predict_proba(Zt)[:, 1]
        times["supervised MLP (upper bound)"] = time.perf_counter() - t

    return {
        k: (roc_auc_score(yt, s), rejection_at(yt, s, 0.5), rejection_at(yt, s, 0.8), times[k])
        for k, s in scores.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="bigger images, more data, 3 seeds")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds")
    parser.add_argument(
        "--methods",
        default=",".join([*DVAE_VARIANTS, *BASELINES]),
        help="comma-separated subset of " + ", ".join([*DVAE_VARIANTS, *BASELINES]),
    )
    parser.add_argument(
        "--settings", default="top-0.5,top-0.1,qcd-0.5,qcd-0.1", help="signal-fraction pairs"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.full:
        image_size, n_train, n_test, epochs, n_seeds = 40, 10000, 4000, 100, 3
    else:
        image_size, n_train, n_test, epochs, n_seeds = 20, 3000, 2000, 60, 1
    seeds = tuple(range(args.seeds if args.seeds is not None else n_seeds))
    methods = set(args.methods.split(","))
    settings = [(float(f), sig) for sig, f in (x.split("-") for x in args.settings.split(","))]
    print(f"jet images {image_size}x{image_size}, {n_train} training jets, {n_test} test jets "
          f"(balanced), seeds {seeds}\nAUC (mean +- std over seeds, min); R@e = background "
          "rejection 1/eps_B at signal efficiency e (capped at the number of test background "
          "jets), means over seeds\n")
    for fraction, signal in settings:
        results = [
            run_setting(fraction, signal, image_size, n_train, n_test, epochs, s, methods)
            for s in seeds
        ]
        print(f"signal = {signal} ({'more complex' if signal == 'top' else 'simpler'}), "
              f"signal fraction {fraction}")
        print(f"  {'method':38s} {'AUC':>15s} {'min':>6s} {'R@0.5':>8s} {'R@0.8':>8s} "
              f"{'fit s':>7s}")
        for name in results[0]:
            r = np.array([res[name] for res in results])
            auc, rej5, rej8, sec = r.mean(axis=0)
            print(f"  {name:38s} {auc:6.3f} +- {r[:, 0].std():.3f} {r[:, 0].min():6.3f} "
                  f"{rej5:8.1f} {rej8:8.1f} {sec:7.1f}")
        print(flush=True)


if __name__ == "__main__":
    main()
