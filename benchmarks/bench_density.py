"""Density benchmark suite (issue 11): FreeFormFlow against the estimators a user would pick.

Run from the repository root, one thread per process on a shared machine::

    OMP_NUM_THREADS=1 python benchmarks/bench_density.py                      # report part
    OMP_NUM_THREADS=1 python benchmarks/bench_density.py --tasks tune --sizes 500
    OMP_NUM_THREADS=1 python benchmarks/bench_density.py --tasks sine_steep_8d,grid25_2d \\
        --seeds 0,1 --sizes 500,5000 --models fff,kde,gmm,nsf
    # several FreeFormFlow settings side by side (each --fff is one more model):
    OMP_NUM_THREADS=1 python benchmarks/bench_density.py --tasks tune --sizes 500 \\
        --models fff --fff "" --fff beta=50,max_epochs=200

For every task, seed and training size it prints one row per model: held-out NLL (nats per
row, in the units of the raw data), the *gap* to the true entropy of the same test rows
(an estimate of KL(p || q); real tables have no truth and show NLL only), fit seconds, and
where D <= 3 the model density's total mass (grid integral in 2-D, importance sampling in
3-D; the truth row shows what the same box or proposal gives for the true density). A
summary averaged over seeds follows.

Models
------
``fff``
    :class:`skfff.FreeFormFlow` with its defaults, or the overrides of each ``--fff``.
``kde``
    :class:`~sklearn.neighbors.KernelDensity`, Gaussian kernel, bandwidth by 5-fold CV
    over 16 values from 0.01 to 3 (standardised units).
``gmm``
    :class:`~sklearn.mixture.GaussianMixture`, full or diagonal covariances and 1 to 50
    components chosen by BIC (a covariance type stops growing after BIC rose three times).
``nsf``
    zuko's neural spline flow (5 transforms, 2 x 128 hidden), Adam 1e-3 halved after 10
    epochs without validation progress, batch size n/16 clipped to [64, 256], early stopping
    after 30 epochs on a 10 % validation split, best weights restored, up to 1 000 epochs.

Every model sees the same standardised data (training mean and standard deviation); the
log-density is mapped back with ``- sum(log std)``. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from density_suite import DensityTask, get_tasks, normalisation  # noqa: E402

LogDensity = Callable[[np.ndarray], np.ndarray]
FitResult = tuple[LogDensity, str]


# ----------------------------------------------------------------------------- models
def parse_overrides(spec: str) -> dict[str, object]:
    """Parse ``"beta=50,lr_schedule=plateau"`` into constructor keyword arguments.

    Values are read as Python literals when they parse as one (numbers, ``None``,
    ``True``), else kept as strings.

    Parameters
    ----------
    spec : str
        Comma-separated ``key=value`` pairs; empty for the defaults.

    Returns
    -------
    overrides : dict
    """
    out: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def fit_fff(X: np.ndarray, seed: int, overrides: dict[str, object]) -> FitResult:
    """FreeFormFlow with its defaults updated by ``overrides``."""
    from skfff import FreeFormFlow

    flow = FreeFormFlow(random_state=seed, **overrides).fit(X)
    hist = flow.history_
    best = int(np.argmin(hist[:, "valid_loss"])) + 1 if "valid_loss" in hist[-1] else flow.n_iter_
    return flow.score_samples, f"epochs={flow.n_iter_} best={best}"


def fit_kde(X: np.ndarray, seed: int) -> FitResult:
    """Gaussian KernelDensity, bandwidth by 5-fold cross-validation."""
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neighbors import KernelDensity

    search = GridSearchCV(
        KernelDensity(),
        {"bandwidth": np.logspace(-2, math.log10(3.0), 16)},
        cv=KFold(5, shuffle=True, random_state=seed),
    ).fit(X)
    return search.best_estimator_.score_samples, f"bw={search.best_params_['bandwidth']:.3g}"


def fit_gmm(X: np.ndarray, seed: int) -> FitResult:
    """GaussianMixture with the number of components and covariance type chosen by BIC."""
    from skfff._torch.priors import gaussian_mixture_by_bic

    ks = [k for k in (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50) if 5 * k <= len(X)]
    fits = [gaussian_mixture_by_bic(X, ks, cov, seed) for cov in ("full", "diag")]
    best = min(fits, key=lambda gmm: gmm.bic(X))  # the full one on a tie, as before
    return best.score_samples, f"k={best.n_components} {best.covariance_type}"


def fit_nsf(X: np.ndarray, seed: int) -> FitResult:
    """zuko NSF by maximum likelihood with early stopping on a 10 % validation split."""
    import zuko

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = torch.as_tensor(X, dtype=torch.float32)
    perm = torch.as_tensor(rng.permutation(len(data)))
    n_val = max(1, math.ceil(0.1 * len(data)))
    valid, train = data[perm[:n_val]], data[perm[n_val:]]
    flow = zuko.flows.NSF(X.shape[1], transforms=5, hidden_features=(128, 128))
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batch = int(np.clip(len(train) // 16, 64, 256))
    best, best_state, bad, epoch = np.inf, None, 0, 0
    for epoch in range(1, 1001):  # noqa: B007 - reported below
        flow.train()
        for idx in torch.randperm(len(train)).split(batch):
            loss = -flow().log_prob(train[idx]).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
            opt.step()
        flow.eval()
        with torch.no_grad():
            v = -flow().log_prob(valid).mean().item()
        sched.step(v)
        if v < best:
            best, bad = v, 0
            best_state = {k: t.clone() for k, t in flow.state_dict().items()}
        else:
            bad += 1
        if bad >= 30:
            break
    assert best_state is not None
    flow.load_state_dict(best_state)
    flow.eval()

    def log_density(Z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.as_tensor(Z, dtype=torch.float32)
            return np.concatenate([flow().log_prob(c).double().numpy() for c in t.split(20000)])

    return log_density, f"epochs={epoch} best={epoch - bad}"


# ------------------------------------------------------------------------------ runner
def run_one(
    task: DensityTask,
    n_train: int,
    seed: int,
    models: list[tuple[str, Callable[[np.ndarray, int], FitResult]]],
    n_test: int,
    with_norm: bool,
    json_path: str | None = None,
) -> list[dict[str, object]]:
    """Fit every model on one (task, size, seed) and return one record per model.

    Each record is printed, and appended to ``json_path`` (one JSON line) when given, as
    soon as it is measured.
    """
    X_train, X_test = task.train_test(n_train, n_test, seed)
    mean, scale = X_train.mean(0), X_train.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    Xs, Xts = (X_train - mean) / scale, (X_test - mean) / scale
    log_jac = -float(np.log(scale).sum())
    entropy = task.entropy(X_test)
    base = {
        "task": task.name,
        "part": task.part,
        "D": task.n_features,
        "n": len(X_train),
        "seed": seed,
    }
    records = []
    if entropy is not None:
        norm = None
        if with_norm and task.n_features <= 3:
            norm = normalisation(
                lambda Z: task.log_density(Z * scale + mean) - log_jac, Xs, seed=seed
            )
        records.append(
            {
                **base,
                "model": "truth",
                "nll": entropy,
                "gap": 0.0,
                "fit_s": 0.0,
                "norm": norm,
                "info": "",
            }
        )
        _emit(records[-1], json_path)
    for name, fit in models:
        t0 = time.perf_counter()
        try:
            log_q, info = fit(Xs, seed)
            fit_s = time.perf_counter() - t0
            lq = log_q(Xts)
            bad = int((~np.isfinite(lq)).sum())
            nll = -float(np.mean(lq)) - log_jac if bad == 0 else math.inf
            if bad:
                info += f" nonfinite={bad}"
            norm = normalisation(log_q, Xs, seed=seed) if with_norm and Xs.shape[1] <= 3 else None
        except Exception as exc:  # a benchmark reports a failure and goes on
            fit_s, nll, norm = time.perf_counter() - t0, math.nan, None
            info = f"error: {type(exc).__name__}: {exc}"[:200]
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc()
        gap = nll - entropy if entropy is not None else None
        records.append(
            {
                **base,
                "model": name,
                "nll": nll,
                "gap": gap,
                "fit_s": fit_s,
                "norm": norm,
                "info": info,
            }
        )
        _emit(records[-1], json_path)
    return records


def _fmt(value: object, spec: str, width: int) -> str:
    if value is None:
        return " " * (width - 1) + "-"
    return format(value, spec).rjust(width)


_HEADER = (
    f"{'task':<18} {'D':>3} {'n':>5} {'seed':>4} {'model':<28} {'NLL':>8} {'gap':>7} "
    f"{'fit s':>7} {'norm':>6}  info"
)


def _emit(record: dict[str, object], json_path: str | None) -> None:
    _print_record(record)
    if json_path:
        with open(json_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def _print_record(r: dict[str, object]) -> None:
    print(
        f"{r['task']:<18} {r['D']:>3} {r['n']:>5} {r['seed']:>4} {r['model']:<28} "
        f"{_fmt(r['nll'], '.3f', 8)} {_fmt(r['gap'], '.3f', 7)} {_fmt(r['fit_s'], '.1f', 7)} "
        f"{_fmt(r['norm'], '.3f', 6)}  {r['info']}",
        flush=True,
    )


def print_summary(records: list[dict[str, object]]) -> None:
    """Mean (and spread over seeds) of gap or NLL and fit seconds per task, size and model."""
    print(
        "\n== Summary: mean over seeds (gap for synthetic tasks, NLL for real tables; "
        "+- half the range) =="
    )
    print(f"{'task':<18} {'n':>5} {'model':<28} {'gap/NLL':>8} {'+-':>6} {'fit s':>7} {'seeds':>5}")
    keys = dict.fromkeys((r["task"], r["n"], r["model"]) for r in records if r["model"] != "truth")
    for task, n, model in keys:
        rows = [r for r in records if (r["task"], r["n"], r["model"]) == (task, n, model)]
        vals = np.array([r["gap"] if r["gap"] is not None else r["nll"] for r in rows], float)
        secs = np.mean([r["fit_s"] for r in rows])
        half = (vals.max() - vals.min()) / 2 if len(vals) > 1 else 0.0
        print(
            f"{task:<18} {n:>5} {model:<28} {vals.mean():>8.3f} {half:>6.3f} {secs:>7.1f} "
            f"{len(vals):>5}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tasks", default="report", help="comma-separated task names, or tune / report / all"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--sizes", default="500,5000", help="comma-separated training sizes")
    parser.add_argument("--models", default="fff,kde,gmm,nsf", help="subset of fff,kde,gmm,nsf")
    parser.add_argument(
        "--fff",
        action="append",
        default=None,
        metavar="KEY=VAL,...",
        help="FreeFormFlow constructor overrides; repeat for several settings",
    )
    parser.add_argument("--n-test", type=int, default=5000, help="test rows (synthetic tasks)")
    parser.add_argument("--no-norm", action="store_true", help="skip the normalisation check")
    parser.add_argument("--json", default=None, help="append one JSON record per row here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--list", action="store_true", help="list the tasks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for t in get_tasks("all"):
            print(f"{t.name:<18} {t.part:<7} D={t.n_features:<3} {t.character}")
        return

    torch.set_num_threads(args.threads)
    tasks = get_tasks(args.tasks)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(wanted) - {"fff", "kde", "gmm", "nsf"}
    if unknown:
        parser.error(f"unknown models: {sorted(unknown)}")
    models: list[tuple[str, Callable[[np.ndarray, int], FitResult]]] = []
    for m in wanted:
        if m == "fff":
            for spec in args.fff or [""]:
                over = parse_overrides(spec)
                label = "FreeFormFlow" + (f"[{spec}]" if over else " (defaults)")

                def fit(X: np.ndarray, seed: int, over: dict = over) -> FitResult:
                    return fit_fff(X, seed, over)

                models.append((label, fit))
        else:
            label = {
                "kde": "KernelDensity (CV)",
                "gmm": "GaussianMixture (BIC)",
                "nsf": "zuko NSF (early stop)",
            }[m]
            models.append((label, {"kde": fit_kde, "gmm": fit_gmm, "nsf": fit_nsf}[m]))

    print(
        f"# bench_density: tasks={','.join(t.name for t in tasks)} seeds={seeds} "
        f"sizes={sizes} n_test={args.n_test} threads={args.threads}"
    )
    print(_HEADER)
    records: list[dict[str, object]] = []
    for task in tasks:
        for n in sizes if task.has_density else sizes[:1]:
            for seed in seeds:
                records += run_one(task, n, seed, models, args.n_test, not args.no_norm, args.json)
    print_summary(records)


if __name__ == "__main__":
    main()
