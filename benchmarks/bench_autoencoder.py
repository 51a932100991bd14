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
   0.5 is perfect, 1.0 is trivially separable). PCA samples come from probabilistic PCA
   restricted to its subspace (``N(0, diag(explained_variance_))`` decoded).

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/bench_autoencoder.py            # a few minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_autoencoder.py --full     # longer fits
    OMP_NUM_THREADS=1 python benchmarks/bench_autoencoder.py --only steps
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import jvp, vmap

from skfff._torch.mlae import mlae_surrogate
from skfff._torch.networks import ResidualMLP

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
    out = mlae_surrogate(lambda a, c: enc(a), lambda a, c: dec(a), x)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="more repeats and longer fits")
    parser.add_argument("--only", choices=["steps", "digits"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.only in (None, "steps"):
        bench_steps(args.full)


if __name__ == "__main__":
    main()
