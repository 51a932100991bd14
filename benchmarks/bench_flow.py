"""FreeFormFlow benchmarks: density quality, training-step cost against dimension, and
``score_samples`` throughput / memory.

Run from the repository root::

    python benchmarks/bench_flow.py            # all three parts, default sizes (~15 min, 2 cores)
    python benchmarks/bench_flow.py nll        # one part: nll | step | score
    python benchmarks/bench_flow.py --quick    # smaller sizes, for a smoke run

Figures are printed side by side with the alternatives a user would otherwise pick:
KernelDensity (bandwidth by 5-fold CV), GaussianMixture (components by BIC) and zuko's
neural spline flow (exact likelihood), on data whose true density is known.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def _fit_nsf(X: np.ndarray, seconds_budget: float, seed: int = 0):
    """zuko NSF trained by exact maximum likelihood with early stopping on a 10 % split."""
    import zuko

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean, std = X.mean(0), X.std(0)
    Xs = torch.tensor((X - mean) / std, dtype=torch.float32)
    perm = rng.permutation(len(Xs))
    n_val = len(Xs) // 10
    val, train = Xs[perm[:n_val]], Xs[perm[n_val:]]
    flow = zuko.flows.NSF(X.shape[1], transforms=3, hidden_features=(128, 128))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    best, best_state, bad, t0 = np.inf, None, 0, time.perf_counter()
    for _epoch in range(1000):
        for idx in torch.randperm(len(train)).split(256):
            loss = -flow().log_prob(train[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            v = -flow().log_prob(val).mean().item()
        if v < best - 1e-3:
            best, bad = v, 0
            best_state = {k: t.clone() for k, t in flow.state_dict().items()}
        else:
            bad += 1
        if bad >= 30 or time.perf_counter() - t0 > seconds_budget:
            break
    flow.load_state_dict(best_state)

    def score(Xt: np.ndarray) -> float:
        with torch.no_grad():
            t = torch.tensor((Xt - mean) / std, dtype=torch.float32)
            return flow().log_prob(t).mean().item() - np.log(std).sum()

    return score


def bench_nll(quick: bool) -> None:
    from sklearn.mixture import GaussianMixture
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity

    from skfff import FreeFormFlow
    from skfff.datasets import make_gaussian_mixture_2d, make_nonlinear_gaussian

    n = 1500 if quick else 3000
    datasets = {
        "ring of 8 Gaussians, 2-D": lambda rs, m: make_gaussian_mixture_2d(m, random_state=rs),
        "nonlinear chain, 8-D": lambda rs, m: make_nonlinear_gaussian(m, n_features=8,
                                                                      random_state=rs),
    }
    print(f"\n== Held-out NLL (nats, lower is better), n_train={n}, n_test=5000 ==")
    print(f"{'data':<28} {'model':<24} {'NLL':>8} {'gap':>7} {'fit s':>7}")
    for name, gen in datasets.items():
        X, log_p = gen(0, n)
        Xt, _ = gen(1, 5000)
        truth = -log_p(Xt).mean()
        rows = [("true density", truth, 0.0)]
        t = time.perf_counter()
        flow = FreeFormFlow(random_state=0).fit(X)
        rows.append(("FreeFormFlow (defaults)", -flow.score(Xt), time.perf_counter() - t))
        t = time.perf_counter()
        kde = GridSearchCV(KernelDensity(), {"bandwidth": np.logspace(-1.5, 0.5, 15)}, cv=5)
        kde.fit(X)
        rows.append(("KernelDensity (CV)", -kde.score(Xt) / len(Xt), time.perf_counter() - t))
        t = time.perf_counter()
        gmms = [GaussianMixture(k, random_state=0).fit(X) for k in range(1, 16)]
        gmm = min(gmms, key=lambda g: g.bic(X))
        rows.append((f"GaussianMixture (BIC k={gmm.n_components})", -gmm.score(Xt),
                     time.perf_counter() - t))
        t = time.perf_counter()
        nsf = _fit_nsf(X, seconds_budget=300 if not quick else 60)
        rows.append(("zuko NSF", -nsf(Xt), time.perf_counter() - t))
        for model, nll, sec in rows:
            print(f"{name:<28} {model:<24} {nll:>8.3f} {nll - truth:>7.3f} {sec:>7.1f}",
                  flush=True)


def _step_times(dim: int, n_steps: int, batch: int = 256, hidden: int = 256) -> dict:
    """Seconds per training step of a plain AE, the FFF surrogate and exact log-det."""
    from skfff._torch.jacobian import batch_jacobian, logabsdet
    from skfff._torch.networks import ResidualMLP
    from skfff._torch.priors import standard_normal_log_prob
    from skfff._torch.surrogates import volume_change_surrogate

    torch.manual_seed(0)
    enc = ResidualMLP(dim, dim, hidden, 2, zero_init=False)
    dec = ResidualMLP(dim, dim, hidden, 2, zero_init=False)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-4)
    x = torch.randn(batch, dim)

    def plain():
        return (x - dec(enc(x))).pow(2).sum(-1).mean()

    def fff():
        out = volume_change_surrogate(enc, dec, x)
        rec = (x - out.x_hat).pow(2).sum(-1)
        return (rec - standard_normal_log_prob(out.z) - out.surrogate).mean()

    def exact():
        z = enc(x)
        rec = (x - dec(z)).pow(2).sum(-1)
        jac = batch_jacobian(enc, x, mode="forward", max_elements=None)
        logdet = logabsdet(jac)  # float64 QR: batched LU is unreliable at D >= 200 here
        return (rec - standard_normal_log_prob(z) - logdet).mean()

    # interleave the three kinds of step and keep the median of each, so that a burst of
    # load on a shared machine does not land on one of them only
    times: dict[str, list[float]] = {"plain": [], "fff": [], "exact": []}
    fns = {"plain": plain, "fff": fff, "exact": exact}
    for i in range(n_steps + 2):
        for name, loss_fn in fns.items():
            t = time.perf_counter()
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
            if i >= 2:
                times[name].append(time.perf_counter() - t)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def bench_step(quick: bool) -> None:
    dims = [2, 8, 32, 64, 128] if quick else [2, 8, 16, 32, 64, 128, 256]
    print("\n== Seconds per training step (batch 256, width 256) vs dimension D ==")
    print(f"{'D':>5} {'plain AE ms':>12} {'FFF ms':>8} {'exact ms':>9} {'FFF/AE':>7} "
          f"{'exact/AE':>9}")
    for d in dims:
        t = _step_times(d, n_steps=10 if d >= 128 else 30)
        print(f"{d:>5} {1e3 * t['plain']:>12.2f} {1e3 * t['fff']:>8.2f} {1e3 * t['exact']:>9.2f}"
              f" {t['fff'] / t['plain']:>7.2f} {t['exact'] / t['plain']:>9.2f}", flush=True)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB. ``VmHWM`` on Linux: ``ru_maxrss`` is
    carried over ``exec``, so a worker started by a large parent would report the parent's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _score_worker(dim: int, n: int) -> dict:
    from skfff import FreeFormFlow

    X = np.random.default_rng(0).standard_normal((2000, dim))
    flow = FreeFormFlow(max_epochs=2, random_state=0).fit(X)
    Xt = np.random.default_rng(1).standard_normal((n, dim))
    flow.score_samples(Xt[:100])
    rss0 = _peak_rss_mb()
    t = time.perf_counter()
    flow.score_samples(Xt)
    sec = time.perf_counter() - t
    rss1 = _peak_rss_mb()
    return {"per_s": n / sec, "rss_mb": rss1, "delta_mb": rss1 - rss0}


def bench_score(quick: bool) -> None:
    print("\n== score_samples (exact log-det, chunked) throughput and peak memory ==")
    print(f"{'D':>5} {'n':>6} {'points/s':>10} {'peak RSS MB':>12} {'RSS growth MB':>14}")
    for dim in (64, 256):
        n = 2000 if quick else 10000
        res = subprocess.run(
            [sys.executable, __file__, "_score_worker", str(dim), str(n)],
            capture_output=True, text=True, check=True,
        )
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{dim:>5} {n:>6} {r['per_s']:>10.0f} {r['rss_mb']:>12.0f} {r['delta_mb']:>14.0f}",
              flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_score_worker":
        torch.set_num_threads(2)
        print(json.dumps(_score_worker(int(sys.argv[2]), int(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("parts", nargs="*", default=["nll", "step", "score"])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for part in args.parts:
        {"nll": bench_nll, "step": bench_step, "score": bench_score}[part](args.quick)


if __name__ == "__main__":
    main()
