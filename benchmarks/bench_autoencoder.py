"""Benchmark the maximum likelihood autoencoder (MLAE).

Three parts, printed side by side with the alternatives:

1. ``steps``: seconds per training step against the latent dimension ``d`` at fixed ``D``,
   as ratios to a plain autoencoder step with the same networks: the MLAE surrogate step
   (the paper claims about 2x, flat in ``d``) and a brute-force step that backpropagates
   through the exact ``1/2 log det(J_g^T J_g)`` (``d`` jvps; grows with ``d``).
2. ``digits``: sklearn's 8x8 digits and the 5 000 MNIST digits in ``../shared/data/mnist``:
   test reconstruction error (mean squared error per pixel) of PCA, a plain autoencoder and
   the MLAE with the same ``n_components``, and sample quality by a classifier two-sample
   test (C2ST: cross-validated accuracy of a classifier telling samples from held-out data;
   0.5 is perfect, 1.0 is trivially separable; logistic regression and 1-NN). PCA samples
   come from probabilistic PCA restricted to its subspace (``N(0, diag(explained_variance_))``
   decoded); the plain autoencoder's from a Gaussian fitted to its training codes. The MLAE
   runs at the tabular default ``beta=10`` and at ``beta=1``: with images scaled to unit
   variance per pixel on average, the summed reconstruction error dominates at ``beta=10``
   and the codes approach ``N(0, I)`` only slowly.

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/bench_autoencoder.py            # a few minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_autoencoder.py --full     # longer fits
    OMP_NUM_THREADS=1 python benchmarks/bench_autoencoder.py --only steps
    OMP_NUM_THREADS=1 python benchmarks/bench_autoencoder.py --only conv     # conv nets, MNIST
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.func import jvp, vmap

from skfff import MLAutoencoder
from skfff._torch.mlae import MLAEModule
from skfff._torch.networks import ResidualMLP
from skfff._torch.surrogates import orthonormal_probes, volume_change_surrogate

MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist" / "mnist_5k.csv.gz"


# --------------------------------------------------------------------------------------
# 1. step time
# --------------------------------------------------------------------------------------


def _nets(big_d: int, d: int, width: int, blocks: int):
    torch.manual_seed(0)
    enc = ResidualMLP(big_d, d, width, blocks, skip=False, zero_init=False)
    dec = ResidualMLP(d, big_d, width, blocks, skip=False, zero_init=False)
    return enc, dec


def _plain_loss(enc, dec, x, beta=10.0):
    z = enc(x)
    return beta * (dec(z) - x).pow(2).sum(-1).mean()


def _mlae_loss(enc, dec, x, beta=10.0):
    out = volume_change_surrogate(
        lambda a, c: enc(a), lambda a, c: dec(a), x, probes=orthonormal_probes
    )
    nll = 0.5 * out.z.pow(2).sum(-1) - out.surrogate
    return (beta * (out.x_hat - x).pow(2).sum(-1) + nll).mean()


def _exact_loss(enc, dec, x, beta=10.0):
    # brute force: full decoder Jacobian (d batched jvps) and backprop through its log-det
    z = enc(x)
    d = z.shape[-1]
    basis = torch.eye(d)[:, None, :].expand(d, *z.shape)
    x_hat = dec(z)
    cols = vmap(lambda t: jvp(dec, (z,), (t,))[1])(basis)  # (d, B, D)
    jac = cols.permute(1, 2, 0)
    half_logdet = 0.5 * torch.logdet(jac.mT @ jac)
    nll = 0.5 * z.pow(2).sum(-1) + half_logdet
    return (beta * (x_hat - x).pow(2).sum(-1) + nll).mean()


def _time_step(loss_fn, enc, dec, x, repeats: int) -> float:
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-4)

    def step():
        opt.zero_grad()
        loss_fn(enc, dec, x).backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_steps(full: bool) -> None:
    big_d, batch, width, blocks = 128, 256, 256, 2
    repeats = 15 if full else 5
    print(f"\n== step time (D={big_d}, batch={batch}, residual MLPs width {width} x {blocks} "
          f"blocks, median of {repeats}, {torch.get_num_threads()} thread(s)) ==")
    print(f"{'d':>4} {'plain AE ms':>12} {'MLAE ms':>9} {'MLAE/AE':>8} {'exact ms':>9} "
          f"{'exact/AE':>9}")
    x = torch.randn(batch, big_d)
    for d in (2, 8, 32, 64):
        enc, dec = _nets(big_d, d, width, blocks)
        t_ae = _time_step(_plain_loss, enc, dec, x, repeats)
        t_ml = _time_step(_mlae_loss, enc, dec, x, repeats)
        t_ex = _time_step(_exact_loss, enc, dec, x, repeats)
        print(f"{d:>4} {1e3 * t_ae:>12.1f} {1e3 * t_ml:>9.1f} {t_ml / t_ae:>8.2f} "
              f"{1e3 * t_ex:>9.1f} {t_ex / t_ae:>9.2f}")


# --------------------------------------------------------------------------------------
# 2. digits: reconstruction and sample quality
# --------------------------------------------------------------------------------------


class _PlainModule(MLAEModule):
    """The same networks trained on the reconstruction alone (a plain autoencoder)."""

    def training_loss(self, x, c=None):
        return (x - self.reconstruct(x, c)).pow(2).sum(-1).mean()

    def validation_loss(self, x, c=None):
        return (x - self.reconstruct(x, c)).pow(2).sum(-1).mean()


class PlainAutoencoder(MLAutoencoder):
    """MLAutoencoder's networks and training loop without the likelihood terms.

    It has no latent distribution: ``sample`` decodes draws from a Gaussian fitted to the
    training codes (the usual recipe for sampling a plain autoencoder).
    """

    def _build_module(self, n_features, n_conditions):
        module = super()._build_module(n_features, n_conditions)
        return _PlainModule(module.encoder, module.decoder, self.beta, self.n_hutchinson)

    def fit(self, X, y=None):
        super().fit(X, y)
        Z = self.transform(X)
        self.code_mean_, self.code_cov_ = Z.mean(axis=0), np.cov(Z.T)
        return self

    def sample(self, n_samples=1, random_state=None):
        rng = np.random.default_rng(random_state)
        Z = rng.multivariate_normal(self.code_mean_, self.code_cov_, size=n_samples)
        return self.inverse_transform(Z)


def _pca_samples(pca: PCA, n: int, seed: int) -> np.ndarray:
    """Probabilistic PCA's samples restricted to its subspace (no isotropic noise)."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, pca.n_components_)) * np.sqrt(pca.explained_variance_)
    return pca.inverse_transform(Z)


def c2st(samples: np.ndarray, data: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Classifier two-sample tests: 3-fold accuracy telling samples from data (0.5 = ideal).

    Two classifiers: logistic regression on standardised pixels, and 1-nearest-neighbour
    (Lopez-Paz & Oquab, 2017). A gradient-boosted classifier separates every model's
    samples almost perfectly (accuracy > 0.99) here, so it does not rank them.
    """
    n = min(len(samples), len(data))
    X = np.vstack([samples[:n], data[:n]])
    y = np.r_[np.zeros(n), np.ones(n)]
    cv = StratifiedKFold(3, shuffle=True, random_state=seed)
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return (
        float(cross_val_score(logreg, X, y, cv=cv).mean()),
        float(cross_val_score(KNeighborsClassifier(1), X, y, cv=cv).mean()),
    )


def _load(name: str) -> np.ndarray | None:
    if name == "digits":
        return load_digits().data / 16.0
    if not MNIST.exists():
        print(f"(skipping MNIST: {MNIST} not found)")
        return None
    return np.genfromtxt(MNIST, delimiter=",")[:, :-1] / 255.0


def bench_digits(full: bool) -> None:
    settings = {
        # name: (n_components, hidden_features, max_epochs default, max_epochs --full)
        "digits": (8, 128, 100, 500),
        "mnist": (16, 256, 30, 150),
    }
    for name, (k, width, epochs, epochs_full) in settings.items():
        X = _load(name)
        if X is None:
            continue
        X_train, X_test = train_test_split(X, test_size=0.2, random_state=0)
        epochs = epochs_full if full else epochs
        print(f"\n== {name}: {X.shape[1]} pixels in [0, 1], {len(X_train)} train / "
              f"{len(X_test)} test rows, n_components={k}, residual MLPs width {width}, "
              f"<= {epochs} epochs ==")
        print(f"{'model':>16} {'fit s':>7} {'test MSE/pixel':>15} {'C2ST logreg':>12} "
              f"{'C2ST 1-NN':>10}")
        lr_acc, nn_acc = c2st(X_train[: len(X_test)], X_test)
        print(f"{'train rows (ideal)':>16} {'':>7} {'':>15} {lr_acc:>12.3f} {nn_acc:>10.3f}")
        models = {
            "PCA": PCA(k, random_state=0),
            "plain AE": PlainAutoencoder(
                k, hidden_features=width, max_epochs=epochs, scaling="global", lr=1e-3,
                random_state=0,
            ),
        }
        for beta in (10.0, 1.0):
            models[f"MLAE beta={beta:g}"] = MLAutoencoder(
                k, beta=beta, hidden_features=width, max_epochs=epochs, scaling="global",
                lr=1e-3, random_state=0,
            )
        mlaes = []
        for label, model in models.items():
            t0 = time.perf_counter()
            model.fit(X_train)
            fit_s = time.perf_counter() - t0
            X_hat = model.inverse_transform(model.transform(X_test))
            mse = float(np.mean((X_hat - X_test) ** 2))
            if isinstance(model, PCA):
                S = _pca_samples(model, len(X_test), seed=1)
            else:
                S = model.sample(len(X_test), random_state=1)
            lr_acc, nn_acc = c2st(S, X_test)
            print(f"{label:>16} {fit_s:>7.1f} {mse:>15.5f} {lr_acc:>12.3f} {nn_acc:>10.3f}",
                  flush=True)
            if label.startswith("MLAE"):
                mlaes.append((label, model))
        for label, mlae in mlaes:
            nll = -mlae.score(X_test)
            eig = np.linalg.eigvalsh(np.cov(mlae.transform(X_test).T))
            print(f"   {label}: test NLL on the manifold {nll:.2f} nats ({k}-D volume), "
                  f"{mlae.n_iter_} epochs, test codes' covariance eigenvalues in "
                  f"[{eig.min():.2f}, {eig.max():.2f}] (model: all 1)")


# --------------------------------------------------------------------------------------
# 3. MNIST with convolutional networks (opt-in: slow on a CPU)
# --------------------------------------------------------------------------------------


class ConvEncoder(torch.nn.Module):
    """28x28 image (flattened) -> latent, two strided convolutions and a linear layer."""

    def __init__(self, n_in: int, n_out: int, n_conditions: int = 0) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Unflatten(-1, (1, 28, 28)),
            torch.nn.Conv2d(1, 32, 4, stride=2, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(32, 64, 4, stride=2, padding=1),
            torch.nn.SiLU(),
            torch.nn.Flatten(-3),
            torch.nn.Linear(64 * 7 * 7, 256),
            torch.nn.SiLU(),
            torch.nn.Linear(256, n_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(torch.nn.Module):
    """Latent -> 28x28 image (flattened), mirror of :class:`ConvEncoder`."""

    def __init__(self, n_in: int, n_out: int, n_conditions: int = 0) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_in, 256),
            torch.nn.SiLU(),
            torch.nn.Linear(256, 64 * 7 * 7),
            torch.nn.SiLU(),
            torch.nn.Unflatten(-1, (64, 7, 7)),
            torch.nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            torch.nn.SiLU(),
            torch.nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),
            torch.nn.Flatten(-3),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def bench_conv(full: bool) -> None:
    X = _load("mnist")
    if X is None:
        return
    k, epochs = 16, (100 if full else 10)
    X_train, X_test = train_test_split(X, test_size=0.2, random_state=0)
    print(f"\n== mnist, convolutional encoder/decoder, n_components={k}, <= {epochs} epochs ==")
    print(f"{'model':>16} {'fit s':>7} {'test MSE/pixel':>15} {'C2ST logreg':>12} "
          f"{'C2ST 1-NN':>10}")
    common = {"encoder": ConvEncoder, "decoder": ConvDecoder, "max_epochs": epochs,
              "scaling": "global", "random_state": 0}
    models = {
        "conv plain AE": PlainAutoencoder(k, **common),
        "conv MLAE b=1": MLAutoencoder(k, beta=1.0, **common),
    }
    for label, model in models.items():
        t0 = time.perf_counter()
        model.fit(X_train)
        fit_s = time.perf_counter() - t0
        mse = float(np.mean((model.inverse_transform(model.transform(X_test)) - X_test) ** 2))
        lr_acc, nn_acc = c2st(model.sample(len(X_test), random_state=1), X_test)
        print(f"{label:>16} {fit_s:>7.1f} {mse:>15.5f} {lr_acc:>12.3f} {nn_acc:>10.3f}",
              flush=True)


# --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="more repeats and longer fits")
    parser.add_argument("--only", choices=["steps", "digits", "conv"], default=None)
    parser.add_argument("--conv", action="store_true",
                        help="also train convolutional networks on MNIST (slow on a CPU)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.only in (None, "steps"):
        bench_steps(args.full)
    if args.only in (None, "digits"):
        bench_digits(args.full)
    if args.only == "conv" or (args.only is None and args.conv):
        bench_conv(args.full)


if __name__ == "__main__":
    main()
