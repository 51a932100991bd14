"""Simulation-based inference benchmark: conditional FreeFormFlow as a posterior estimator.

Single-round neural posterior estimation (NPE) on the tasks of :mod:`sbi_tasks` (two moons,
SLCP, Gaussian linear 10-D, Gaussian mixture, Bernoulli GLM): each method is trained once
per task and simulation budget on pairs ``(theta, x)`` from the prior predictive, then asked
for posterior samples at several observations ``x_o``; the samples are compared with
reference posterior samples by the benchmark's C2ST (0.5 is perfect, 1.0 is useless).

Methods, side by side:

* ``fff``: ``FreeFormFlow(conditional="continuous")`` with its defaults, ``fit(X=theta,
  y=x)`` and ``sample(n, y=x_o[None, :])`` (one row for all samples; older versions read a
  1-D ``x_o`` as a column and reject it, issue 17); constructor settings can be changed with
  ``--fff key=value ...``.
* ``nsf``: zuko's conditional neural spline flow (5 transforms, zuko's other defaults),
  trained by maximum likelihood the way the ``sbi`` package trains NPE: z-scored ``theta``
  and ``x``, Adam at 5e-4, batches of 200, gradient norm clipped at 5, 10 % validation
  split, stop after 20 epochs without improvement, best weights kept.
* ``sbi``: the ``sbi`` package's ``NPE`` with its defaults (a MAF), when ``import sbi``
  works; it rejects samples outside the prior's support, the other two do not (the
  ``out %`` column shows how many of their samples fall outside). ``sbi`` 0.27 installs in
  seconds on top of a CPU torch; pin the installed torch so pip keeps it, e.g. in a
  virtual environment made with ``--system-site-packages``:
  ``pip install sbi -c <(echo "torch==$(python -c 'import torch; print(torch.__version__)')")``.

Columns: mean C2ST over the observations and its spread, fit seconds (training only),
epochs (``889<240``: 889 ran and epoch 240's weights were kept by the overfit guard),
``out %`` (samples outside the prior's support), ``test NLL`` (mean ``-log q(theta | x)``
over 2 000 fresh simulations, the NPE loss on held-out data; not available for ``sbi``),
then the C2ST at each observation.

Run from the repository root (``OMP_NUM_THREADS=1`` on a shared machine)::

    python benchmarks/bench_sbi.py                                   # 10^3, 3 observations
    python benchmarks/bench_sbi.py --budgets 1000 10000 100000       # the three budgets
    python benchmarks/bench_sbi.py --full                            # 10^3-10^5, 10 obs.,
                                                                     # 10 000 samples
    python benchmarks/bench_sbi.py --tasks two_moons slcp --budgets 10000 --methods fff \\
        --fff hidden_features=256 beta=50                            # try other settings

The benchmark prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sbi_tasks import (  # noqa: E402
    TASKS,
    BernoulliGLM,
    GaussianLinear,
    Task,
    c2st,
    get_task,
)

Sampler = Callable[[np.ndarray, int, int], np.ndarray]


# ------------------------------------------------------------------------ methods
def fit_fff(theta: np.ndarray, x: np.ndarray, seed: int, **params) -> tuple[Sampler, dict]:
    """Fit ``FreeFormFlow(conditional="continuous", **params)`` to ``p(theta | x)``.

    Returns
    -------
    sampler : callable
        ``sampler(x_o, n, seed)`` returns ``n`` posterior samples at ``x_o``.
    info : dict
        ``epochs`` run (``"889<240"`` when the overfit guard of a whole-schedule fit
        restored an earlier epoch); ``log_prob(theta, x)``, the posterior log-density.
    """
    from skfff import FreeFormFlow

    flow = FreeFormFlow(conditional="continuous", random_state=seed, **params)
    flow.fit(theta, x)

    def sample(x_o: np.ndarray, n: int, s: int) -> np.ndarray:
        # one observation as one row (a 1-D x_o was read as a column before issue 17)
        return flow.sample(n, y=x_o[None, :], random_state=s)

    # "889<240": all 889 epochs ran, the overfit guard brought back epoch 240's weights
    restored = flow.history_[-1].get("restored_epoch")
    epochs = f"{flow.n_iter_}<{restored}" if restored else flow.n_iter_
    return sample, {"epochs": epochs, "log_prob": flow.score_samples}


def fit_zuko_nsf(
    theta: np.ndarray,
    x: np.ndarray,
    seed: int,
    transforms: int = 5,
    lr: float = 5e-4,
    batch_size: int = 200,
    patience: int = 20,
    max_epochs: int = 10_000,
) -> tuple[Sampler, dict]:
    """NPE with zuko's conditional NSF, trained as the ``sbi`` package trains NPE.

    Returns
    -------
    sampler : callable
        ``sampler(x_o, n, seed)`` returns ``n`` posterior samples at ``x_o``.
    info : dict
        ``epochs`` run; ``log_prob(theta, x)``, the posterior log-density.
    """
    import zuko

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t_mean, t_std = theta.mean(0), theta.std(0)
    x_mean, x_std = x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0)
    ts = torch.tensor((theta - t_mean) / t_std, dtype=torch.float32)
    xs = torch.tensor((x - x_mean) / x_std, dtype=torch.float32)
    perm = torch.as_tensor(rng.permutation(len(ts)))
    n_val = max(1, len(ts) // 10)
    val, train = perm[:n_val], perm[n_val:]
    flow = zuko.flows.NSF(theta.shape[1], x.shape[1], transforms=transforms)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    best, best_state, bad, epochs = np.inf, None, 0, 0
    for epoch in range(1, max_epochs + 1):
        epochs = epoch
        flow.train()
        for idx in train[torch.randperm(len(train))].split(batch_size):
            loss = -flow(xs[idx]).log_prob(ts[idx]).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
            opt.step()
        flow.eval()
        with torch.no_grad():
            v = -flow(xs[val]).log_prob(ts[val]).mean().item()
        if v < best:
            best, bad = v, 0
            best_state = {k: t.detach().clone() for k, t in flow.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    flow.load_state_dict(best_state)

    def sample(x_o: np.ndarray, n: int, s: int) -> np.ndarray:
        torch.manual_seed(s)
        c = torch.tensor((x_o - x_mean) / x_std, dtype=torch.float32)
        with torch.no_grad():
            z = flow(c).sample((n,)).numpy()
        return z * t_std + t_mean

    def log_prob(theta_t: np.ndarray, x_t: np.ndarray) -> np.ndarray:
        t = torch.tensor((theta_t - t_mean) / t_std, dtype=torch.float32)
        c = torch.tensor((x_t - x_mean) / x_std, dtype=torch.float32)
        with torch.no_grad():
            return flow(c).log_prob(t).numpy() - np.log(t_std).sum()

    return sample, {"epochs": epochs, "log_prob": log_prob}


def _torch_prior(task: Task):
    """The task's prior as a torch distribution, for the ``sbi`` package."""
    from torch.distributions import MultivariateNormal

    if isinstance(task, GaussianLinear):
        d = task.theta_dim
        return MultivariateNormal(torch.zeros(d), task.prior_var * torch.eye(d))
    if isinstance(task, BernoulliGLM):
        prec = torch.tensor(task.prior_precision, dtype=torch.float32)
        return MultivariateNormal(torch.zeros(task.theta_dim), precision_matrix=prec)
    from sbi.utils import BoxUniform

    bound = {"two_moons": 1.0, "slcp": 3.0, "gaussian_mixture": 10.0}[task.name]
    ones = torch.ones(task.theta_dim)
    return BoxUniform(-bound * ones, bound * ones)


def fit_sbi_npe(theta: np.ndarray, x: np.ndarray, seed: int, task: Task) -> tuple[Sampler, dict]:
    """NPE from the ``sbi`` package with its defaults.

    Returns
    -------
    sampler : callable
        ``sampler(x_o, n, seed)`` returns ``n`` posterior samples at ``x_o``.
    info : dict
        ``epochs`` run.
    """
    from sbi.inference import NPE

    torch.manual_seed(seed)
    inference = NPE(prior=_torch_prior(task), show_progress_bars=False)
    inference.append_simulations(
        torch.tensor(theta, dtype=torch.float32), torch.tensor(x, dtype=torch.float32)
    )
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line without a newline
        estimator = inference.train(show_train_summary=False)
    posterior = inference.build_posterior(estimator)

    def sample(x_o: np.ndarray, n: int, s: int) -> np.ndarray:
        torch.manual_seed(s)
        xo = torch.tensor(x_o, dtype=torch.float32)
        return posterior.sample((n,), x=xo, show_progress_bars=False).numpy()

    epochs = inference.summary.get("epochs_trained", [None])[-1]
    return sample, {"epochs": epochs}


def _sbi_available() -> bool:
    try:
        import sbi  # noqa: F401
    except ImportError:
        return False
    return True


# -------------------------------------------------------------------------- runner
def _parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    return params


def _out_of_support(task: Task, samples: np.ndarray) -> float:
    return float(np.mean(~np.isfinite(task.log_prior(samples))))


def run(
    tasks: list[str],
    budgets: list[int],
    methods: list[str],
    n_obs: int,
    n_samples: int,
    seed: int,
    fff_params: dict,
    n_test: int = 2000,
) -> list[dict]:
    """Train every method on every task and budget; print and return one row each.

    Besides the C2ST at each observation, each row has ``nll``: the mean of
    ``-log q(theta | x)`` over ``n_test`` fresh simulations, the NPE loss on held-out data
    (lower is better; differences between methods are differences of the expected KL
    divergence from the true posterior, averaged over all ``x``, not only the observations).
    """
    rows = []
    header = (
        f"{'task':<17} {'budget':>7} {'method':<5} {'C2ST':>6} {'(sd)':>6} {'fit s':>7} "
        f"{'epochs':>6} {'out %':>6} {'test NLL':>8}  per observation"
    )
    print(header)
    print("-" * len(header))
    for name in tasks:
        task = get_task(name)
        obs = [task.observation(i)[1] for i in range(n_obs)]
        refs = [
            task.reference_posterior(x_o, n_samples, np.random.default_rng(10_000 + i))
            for i, x_o in enumerate(obs)
        ]
        theta_test, x_test = task.simulate_dataset(n_test, seed=seed + 999)
        for budget in budgets:
            theta, x = task.simulate_dataset(budget, seed=seed)
            for method in methods:
                t0 = time.perf_counter()
                if method == "fff":
                    sampler, info = fit_fff(theta, x, seed, **fff_params)
                elif method == "nsf":
                    sampler, info = fit_zuko_nsf(theta, x, seed)
                else:
                    sampler, info = fit_sbi_npe(theta, x, seed, task)
                fit_s = time.perf_counter() - t0
                nll = np.nan
                if "log_prob" in info:
                    nll = -float(np.mean(info["log_prob"](theta_test, x_test)))
                scores, outs = [], []
                for i, (x_o, ref) in enumerate(zip(obs, refs, strict=True)):
                    samples = sampler(x_o, n_samples, 20_000 + i)
                    outs.append(_out_of_support(task, samples))
                    scores.append(c2st(ref, samples))
                row = {
                    "task": name, "budget": budget, "method": method,
                    "c2st": float(np.mean(scores)), "sd": float(np.std(scores)),
                    "fit_s": fit_s, "epochs": info["epochs"],
                    "out": 100 * float(np.mean(outs)), "nll": nll, "scores": scores,
                }  # fmt: skip
                rows.append(row)
                per_obs = " ".join(f"{s:.3f}" for s in scores)
                print(
                    f"{name:<17} {budget:>7} {method:<5} {row['c2st']:>6.3f} {row['sd']:>6.3f} "
                    f"{fit_s:>7.1f} {str(row['epochs']):>6} {row['out']:>6.2f} {nll:>8.3f}  "
                    f"{per_obs}",
                    flush=True,
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--budgets", nargs="+", type=int, default=[1000], help="simulation budgets (10^3-10^5)"
    )
    parser.add_argument("--methods", nargs="+", default=None, choices=["fff", "nsf", "sbi"])
    parser.add_argument("--observations", type=int, default=3, help="observations per task")
    parser.add_argument("--samples", type=int, default=2000, help="posterior samples for C2ST")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--full", action="store_true", help="budgets 10^3-10^5, 10 observations, 10 000 samples"
    )
    parser.add_argument(
        "--fff", nargs="*", default=[], metavar="KEY=VALUE",
        help="FreeFormFlow constructor settings, e.g. hidden_features=256 beta=50",
    )  # fmt: skip
    args = parser.parse_args()
    if args.full:
        args.budgets, args.observations, args.samples = [1000, 10_000, 100_000], 10, 10_000
    methods = args.methods or ["fff", "nsf", "sbi"]
    if "sbi" in methods and not _sbi_available():
        print("the sbi package is not installed: skipping its NPE (pip install sbi)")
        methods = [m for m in methods if m != "sbi"]
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    fff_params = _parse_params(args.fff)
    print(
        f"tasks {args.tasks}, budgets {args.budgets}, {args.observations} observations, "
        f"{args.samples} samples for C2ST, FreeFormFlow settings {fff_params or 'defaults'}"
    )
    run(args.tasks, args.budgets, methods, args.observations, args.samples, args.seed,
        fff_params)  # fmt: skip


if __name__ == "__main__":
    main()
