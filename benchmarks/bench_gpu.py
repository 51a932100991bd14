"""One command for a GPU check, and the CPU scaling figures.

``gpu`` (the default)
    A short fit of each of the six estimators on CUDA and on the CPU, side by side: seconds
    per training step (median over epochs after the first, which holds the warm-up), fit
    throughput (training rows per second over the whole fit), ``score_samples`` and
    ``sample`` throughput where the estimator has them (``transform`` for
    ``FermatDistance``), and the peak GPU memory of the fit and of the predictions. Then
    ``pytest -m cuda``. On a machine without a GPU only the CPU column is printed and the
    CUDA tests report as skipped. Sized to stay well under 8 minutes on one GPU (not yet
    run on one: no GPU was at hand when it was written).
``scaling``
    CPU only: wall time of one ``GridSearchCV`` on a Dask ``LocalCluster`` of 1 and of 2
    single-threaded worker processes, and seconds per step and final validation NLL of one
    ``FreeFormFlow`` trained by 1 and by 2 data-parallel processes (gloo,
    :func:`skfff.data_parallel`).

Run from the repository root::

    python benchmarks/bench_gpu.py                 # GPU check (CPU column only without GPU)
    python benchmarks/bench_gpu.py gpu --no-tests  # the table only
    OMP_NUM_THREADS=1 python benchmarks/bench_gpu.py scaling
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import skfff
from skfff.datasets import make_jet_images, make_nonlinear_ica

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- gpu
def _cases(n: int, device: str) -> dict[str, tuple[Callable[[], Any], np.ndarray, Any]]:
    """(estimator factory, X, y) per estimator: a few epochs at a realistic width."""
    rng = np.random.default_rng(0)
    common = {"max_epochs": 6, "batch_size": 256, "early_stopping": False, "device": device,
              "random_state": 0}
    X8 = rng.standard_normal((n, 8)) @ rng.standard_normal((8, 8))
    sphere = rng.standard_normal((n, 3)) + [1.5, 0.0, 0.0]
    t = rng.standard_normal((n, 2))
    curve = np.hstack([t, np.sin(t), t**2, np.cos(t)]) + 0.05 * rng.standard_normal((n, 8))
    X_ica, y_ica, _ = make_nonlinear_ica(n, n_clusters=5, n_features=10, random_state=0)
    X_jets, y_jets = make_jet_images(n, 0.5, image_size=10, random_state=0)
    return {
        "FreeFormFlow": (lambda: skfff.FreeFormFlow(**common), X8, None),
        "ManifoldFreeFormFlow": (
            lambda: skfff.ManifoldFreeFormFlow(**common),
            sphere / np.linalg.norm(sphere, axis=1, keepdims=True),
            None,
        ),
        "MLAutoencoder": (lambda: skfff.MLAutoencoder(n_components=2, **common), curve, None),
        "GINTransformer": (lambda: skfff.GINTransformer(**common), X_ica, y_ica),
        "DirichletLatentClassifier": (
            lambda: skfff.DirichletLatentClassifier(**common), X_jets, y_jets
        ),
        "FermatDistance": (
            lambda: skfff.FermatDistance(
                skfff.FreeFormFlow(**common), relax="auto", n_calibration_pairs=128,
                max_relax_pairs=500, random_state=0,
            ),
            X8[: n // 4, :3],
            None,
        ),
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _peak_mb(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else np.nan


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _measure(name: str, make: Callable[[], Any], X: np.ndarray, y: Any, device: str) -> dict:
    est = make()
    _reset_peak(device)
    fit_s, _ = _timed(device, lambda: est.fit(X, y))
    row: dict[str, float] = {"fit_s": fit_s, "fit_peak_mb": _peak_mb(device)}
    trained = est.density_ if name == "FermatDistance" else est
    history = trained.history_
    durations = np.asarray(history[:, "dur"])
    batches = history[-1]["train_batch_count"]
    row["step_ms"] = 1e3 * float(np.median(durations[1:] if len(durations) > 1 else durations))
    row["step_ms"] /= batches
    n_train = sum(b["train_batch_size"] for b in history[-1]["batches"] if "train_batch_size" in b)
    row["fit_rows_s"] = n_train * len(history) / float(np.sum(durations))
    _reset_peak(device)
    m = min(len(X), 2000)
    if name == "FermatDistance":
        secs, _ = _timed(device, lambda: est.transform(X[:50]))
        row["score_rows_s"] = 50 / secs
    elif hasattr(est, "score_samples"):
        secs, _ = _timed(device, lambda: est.score_samples(X[:m]))
        row["score_rows_s"] = m / secs
    if hasattr(est, "sample"):
        secs, _ = _timed(device, lambda: est.sample(m, random_state=0))
        row["sample_rows_s"] = m / secs
    row["predict_peak_mb"] = _peak_mb(device)
    return row


def run_gpu(n: int, tests: bool) -> None:
    cuda = torch.cuda.is_available()
    devices = ["cuda", "cpu"] if cuda else ["cpu"]
    if cuda:
        props = torch.cuda.get_device_properties(0)
        print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
              f"compute capability {props.major}.{props.minor}; "
              f"matmul fp32 precision {torch.get_float32_matmul_precision()!r}")
    else:
        print("no CUDA GPU here: CPU column only")
    print(f"CPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
          f"{n} rows, 6 epochs, batch 256\n")
    cols = ["step_ms", "fit_rows_s", "score_rows_s", "sample_rows_s", "fit_peak_mb",
            "predict_peak_mb"]
    header = f"{'estimator':26s} {'device':6s} " + " ".join(f"{c:>15s}" for c in cols)
    print(header)
    print("-" * len(header))
    failures = []
    for device in devices:  # fits of one device together: its warm-up is paid once
        for name, (make, X, y) in _cases(n, device).items():
            try:
                row = _measure(name, make, X, y, device)
            except Exception as exc:  # a GPU check reports every failure, then carries on
                failures.append(f"{name} on {device}: {type(exc).__name__}: {exc}")
                print(f"{name:26s} {device:6s} FAILED ({type(exc).__name__})")
                continue
            cells = " ".join(
                f"{row[c]:15.4g}" if c in row and np.isfinite(row[c]) else f"{'-':>15s}"
                for c in cols
            )
            print(f"{name:26s} {device:6s} {cells}", flush=True)
    for line in failures:
        print("FAILED:", line)
    if tests:
        print("\npytest -m cuda:", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
            cwd=ROOT,
        )
        failures += ["pytest -m cuda"] if proc.returncode not in (0, 5) else []
    sys.exit(1 if failures else 0)


# --------------------------------------------------------------------------- scaling
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, world_size: int, port: int, params: dict, n: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    X = _flow_data(n)
    with skfff.data_parallel(backend="gloo"):
        skfff.FreeFormFlow(**{**params, "max_epochs": 2}).fit(X)  # warm-up (TorchScript)
        flow = skfff.FreeFormFlow(**params).fit(X)
    if rank == 0:
        durations = np.asarray(flow.history_[:, "dur"])
        steps = flow.history_[-1]["train_batch_count"]
        result = (1e3 * float(np.median(durations[1:])) / steps,
                  float(flow.history_[-1, "valid_nll"]), float(durations.sum()))
        Path(out).write_text(json.dumps(result))


def _flow_data(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, 4))
    return np.hstack([z, np.tanh(z) + 0.1 * rng.standard_normal((n, 4))])


def run_scaling(n: int) -> None:
    import joblib
    from distributed import Client, LocalCluster
    from sklearn.model_selection import GridSearchCV, KFold

    torch.set_num_threads(1)
    X = _flow_data(n)
    flow = skfff.FreeFormFlow(hidden_features=32, n_blocks=1, max_epochs=10, device="cpu",
                              early_stopping=False, random_state=0)
    grid = {"lr": [1e-3, 3e-3, 1e-2, 3e-2]}
    print(f"GridSearchCV: FreeFormFlow, {len(grid['lr'])} candidates x 2 folds, {n} rows")
    for workers in (1, 2):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        with cluster, Client(cluster) as client:
            client.register_plugin(skfff.TorchThreads())
            client.run(lambda: skfff.FreeFormFlow)  # workers import skfff before the clock
            with joblib.parallel_backend("dask"):
                start = time.perf_counter()
                search = GridSearchCV(flow, grid, cv=KFold(2, shuffle=True, random_state=0),
                                      refit=False, n_jobs=-1).fit(X)
                wall = time.perf_counter() - start
        print(f"  {workers} worker(s): {wall:6.1f} s, best lr {search.best_params_['lr']}, "
              f"held-out log-likelihood {search.best_score_:.3f}", flush=True)

    params = {"hidden_features": 64, "n_blocks": 2, "max_epochs": 20, "batch_size": 256,
              "device": "cpu", "early_stopping": False, "random_state": 0}
    print(f"\nDDP: FreeFormFlow, {n} rows, global batch 256, 20 epochs, gloo")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            out = str(Path(tmp) / f"w{world}")
            torch.multiprocessing.spawn(_ddp_rank, args=(world, _free_port(), params, n, out),
                                        nprocs=world)
            step_ms, nll, secs = json.loads(Path(out).read_text())
            print(f"  {world} process(es): {step_ms:6.1f} ms/step, fit {secs:5.1f} s, "
                  f"validation NLL {nll:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="gpu", choices=["gpu", "scaling"])
    parser.add_argument("--rows", type=int, default=None,
                        help="training rows (default: 8000 for gpu, 4000 for scaling)")
    parser.add_argument("--no-tests", action="store_true", help="skip pytest -m cuda")
    args = parser.parse_args()
    if args.mode == "gpu":
        run_gpu(args.rows or 8000, tests=not args.no_tests)
    else:
        run_scaling(args.rows or 4000)


if __name__ == "__main__":
    main()
