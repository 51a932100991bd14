"""Beyond one process: Dask searches, data-parallel (DDP) fits, and the GPU-ready loop.

The Dask tests run sklearn's ``GridSearchCV`` unchanged under joblib's Dask backend on a
``LocalCluster`` of two single-threaded worker processes and compare it with the serial
search. The DDP tests launch two CPU processes on the gloo backend with
``torch.multiprocessing.spawn`` (what ``torchrun`` does, minus the launcher) and fit every
torch-backed estimator inside :func:`skfff.data_parallel`. The last tests cover what the
training loop does for GPUs (no per-batch host synchronisation, non-finite batches decided on
the device, float32 log-determinants) on the CPU, and on CUDA under ``-m cuda``.
"""

from __future__ import annotations

import math
import os
import pickle
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import skfff
from skfff._torch.jacobian import half_log_det_gram, qr_dtype
from skfff.base import BaseTorchEstimator, TrainingModule
from skfff.datasets import make_jet_images, make_nonlinear_ica


# --------------------------------------------------------------------------- helpers
@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the serial reference with the workers' single torch thread (bitwise-comparable)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _blobs(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes in 3-D that a linear model separates once it is allowed to."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.standard_normal((n, 3)) * 0.6
    X[:, 0] += 2.0 * y - 1.0
    return X, y


def _correlated(n: int, seed: int = 0) -> np.ndarray:
    """Two strongly correlated columns: a density worth learning."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 1))
    return np.hstack([z, z + 0.2 * rng.standard_normal((n, 1))])


def _gaussian(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2)) @ np.array([[1.0, 0.5], [0.0, 0.7]]) + 3.0


class _MeanModule(TrainingModule):
    """Learns the mean; the loss of a batch holding a row beyond 100 is NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.unused = torch.nn.Parameter(torch.zeros(1))  # never in a loss: DDP must cope

    def training_loss(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        loss = ((x - self.w) ** 2).mean()
        return torch.where((x[:, 0] > 100).any(), torch.full_like(loss, float("nan")), loss)

    def validation_loss(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return ((x - self.w) ** 2).mean()


class _Mean(BaseTorchEstimator):
    """The smallest estimator on the shared training loop: fits :class:`_MeanModule`."""

    def _fit_inputs(self, X: Any, y: Any, *, warm: bool) -> tuple[np.ndarray, None]:
        return np.asarray(X, dtype=float), None

    def _build_module(self, X: np.ndarray, C: Any) -> TrainingModule:
        return _MeanModule()


# ------------------------------------------------------------------------------ Dask
@pytest.fixture(scope="module")
def client():
    # imported here: the DDP ranks import this module too, and need no Dask
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, Client(cluster) as client:
        yield client


def test_torch_threads_plugin_sets_the_workers_thread_count(client):
    # a worker whose torch inherited more threads than the worker has (e.g. no
    # OMP_NUM_THREADS in its environment) would oversubscribe the machine's cores
    client.run(torch.set_num_threads, 2)
    assert set(client.run(torch.get_num_threads).values()) == {2}
    client.register_plugin(skfff.TorchThreads())
    assert set(client.run(torch.get_num_threads).values()) == {1}
    assert client.submit(torch.get_num_threads, pure=False).result() == 1  # inside tasks too
    with pytest.raises(ValueError, match="positive integer"):
        skfff.TorchThreads(n_threads=0)


def test_pipeline_search_on_dask_equals_serial_search(client):
    X, y = _blobs()
    pipe = make_pipeline(
        StandardScaler(),
        skfff.MLAutoencoder(
            n_components=2, hidden_features=8, n_blocks=1, max_epochs=3, device="cpu",
            random_state=0,
        ),
        LogisticRegression(),
    )
    grid = {"logisticregression__C": [1e-4, 1.0]}
    cv = KFold(2, shuffle=True, random_state=0)
    with _one_torch_thread():
        serial = GridSearchCV(pipe, grid, cv=cv, n_jobs=1).fit(X, y)
    with joblib.parallel_backend("dask"):
        search = GridSearchCV(pipe, grid, cv=cv, n_jobs=2).fit(X, y)
    np.testing.assert_allclose(
        search.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"], rtol=1e-6
    )
    assert search.best_params_ == {"logisticregression__C": 1.0}
    assert search.best_score_ > 0.8 > search.cv_results_["mean_test_score"][0]
    # the refitted pipeline came back from the cluster and predicts here
    assert search.score(X, y) == pytest.approx(serial.score(X, y), rel=1e-6)


def test_density_search_on_dask_by_held_out_log_likelihood(client):
    X = _correlated(160)
    flow = skfff.FreeFormFlow(
        hidden_features=8, n_blocks=1, max_epochs=8, batch_size=16, early_stopping=False,
        device="cpu", random_state=0, latent="normal",  # the EM mixture is good untrained
    )
    grid = {"lr": [1e-6, 3e-2]}  # barely trained against trained
    cv = KFold(2, shuffle=True, random_state=0)
    with _one_torch_thread():
        serial = GridSearchCV(flow, grid, cv=cv, n_jobs=1, refit=False).fit(X)
    with joblib.parallel_backend("dask"):
        search = GridSearchCV(flow, grid, cv=cv, n_jobs=2).fit(X)
    scores = search.cv_results_["mean_test_score"]  # held-out mean log-likelihood
    np.testing.assert_allclose(scores, serial.cv_results_["mean_test_score"], rtol=1e-6)
    assert search.best_params_ == {"lr": 3e-2}
    assert scores[1] > scores[0] + 0.05  # deterministic: the serial search agrees
    assert np.isfinite(search.best_estimator_.score_samples(X)).all()


# ------------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_estimators() -> dict[str, tuple[Any, np.ndarray, np.ndarray | None]]:
    """Every torch-backed estimator, a tiny budget, and data it accepts."""
    tiny = {"hidden_features": 8, "max_epochs": 3, "device": "cpu", "random_state": 0}
    rng = np.random.default_rng(1)
    sphere = rng.standard_normal((80, 3)) + [2.0, 0.0, 0.0]
    t = rng.standard_normal((80, 1))
    curve = np.hstack([t, np.sin(t), 0.5 * t**2]) + 0.05 * rng.standard_normal((80, 3))
    X_ica, y_ica, _ = make_nonlinear_ica(80, n_clusters=3, n_features=4, random_state=0)
    X_jets, y_jets = make_jet_images(80, 0.5, image_size=6, random_state=0)
    return {
        "ManifoldFreeFormFlow": (
            skfff.ManifoldFreeFormFlow(n_blocks=1, **tiny),
            sphere / np.linalg.norm(sphere, axis=1, keepdims=True),
            None,
        ),
        "MLAutoencoder": (skfff.MLAutoencoder(n_blocks=1, n_components=1, **tiny), curve, None),
        "GINTransformer": (skfff.GINTransformer(n_blocks=2, **tiny), X_ica, y_ica),
        "DirichletLatentClassifier": (
            skfff.DirichletLatentClassifier(
                hidden_layer_sizes=(16,), max_epochs=3, device="cpu", random_state=0
            ),
            X_jets,
            y_jets,
        ),
    }


#: The density fitted on one process and on two: 600 rows, 60 of them validation.
FLOW = {  # the normal latent: the validation NLL then shows what the networks learnt
    "hidden_features": 16, "n_blocks": 1, "max_epochs": 40, "lr": 1e-2,
    "early_stopping": False, "device": "cpu", "random_state": 0, "latent": "normal",
}


def _ddp_rank(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    results = {}
    with skfff.data_parallel(backend="gloo") as dp:
        assert (dp.rank, dp.world_size, dp.backend) == (rank, world_size, "gloo")
        flow = skfff.FreeFormFlow(**FLOW).fit(_gaussian(600))
        results["FreeFormFlow"] = flow
        for name, (est, X, y) in _ddp_estimators().items():
            results[name] = est.fit(X, y)
        results["_Mean"] = _Mean(batch_size=16, max_epochs=3, device="cpu", random_state=0)
        results["_Mean"].fit(_gaussian(64))
    with open(Path(out) / f"rank{rank}.pkl", "wb") as fh:
        pickle.dump(results, fh)


@pytest.fixture(scope="module")
def ddp_fits(tmp_path_factory) -> list[dict[str, Any]]:
    """The fitted estimators of both ranks of one 2-process data-parallel run."""
    out = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_ddp_rank, args=(2, _free_port(), str(out)), nprocs=2)
    return [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(2)]


@pytest.mark.parametrize(
    "name",
    ["FreeFormFlow", "ManifoldFreeFormFlow", "MLAutoencoder", "GINTransformer",
     "DirichletLatentClassifier", "_Mean"],
)
def test_ddp_ranks_end_with_identical_weights(ddp_fits, name):
    est0, est1 = ddp_fits[0][name], ddp_fits[1][name]
    s0, s1 = est0.module_.state_dict(), est1.module_.state_dict()
    assert s0.keys() == s1.keys()
    for key in s0:
        torch.testing.assert_close(s0[key], s1[key], rtol=0, atol=0, msg=key)
    # both ranks report the same, gathered, finite learning curve ...
    train0 = np.asarray(est0.history_[:, "train_loss"])
    np.testing.assert_array_equal(train0, est1.history_[:, "train_loss"])
    assert np.isfinite(train0).all() and len(train0) == est0.max_epochs
    # ... from batches of different rows: the weights agree because gradients were averaged
    batches = [[b["train_loss"] for b in est.history_[0]["batches"] if "train_loss" in b]
               for est in (est0, est1)]
    assert batches[0] != batches[1]


def test_ddp_shards_the_rows_and_gathers_the_validation_nll(ddp_fits):
    X = _gaussian(600)
    flow = ddp_fits[0]["FreeFormFlow"]  # unpickled here, an ordinary fitted estimator
    train_idx, valid_idx = (s.indices for s in flow.net_.train_split(np.arange(600)))
    assert len(valid_idx) == 60
    # each rank trained on half the training rows per epoch, in steps of half a batch
    last = flow.history_[-1]
    sizes = [b["train_batch_size"] for b in last["batches"] if "train_batch_size" in b]
    # batch_size="auto": 540 // 8 = 67 rows globally, ceil(67 / 2) = 34 per rank
    assert sum(sizes) == math.ceil(len(train_idx) / 2) and max(sizes) == 34
    # the recorded validation NLL is that of all validation rows, not of one rank's half
    # (the decoder density the validation step reads, before any end-of-fit renormalisation)
    nll = -flow._map_batches(flow._log_prob("decoder"), flow._scaled(X[valid_idx]), None).mean()
    assert last["valid_nll"] == pytest.approx(nll, abs=1e-4)
    assert flow.net_.batch_size == 67  # the net was restored after the fit


def test_ddp_validation_nll_matches_one_process(ddp_fits):
    X = _gaussian(600)
    single = skfff.FreeFormFlow(**FLOW).fit(X)
    ddp = ddp_fits[0]["FreeFormFlow"]
    nll_single = np.asarray(single.history_[:, "valid_nll"])
    nll_ddp = np.asarray(ddp.history_[:, "valid_nll"])
    assert nll_ddp[-1] < nll_ddp[0] - 0.15  # it learnt
    assert abs(nll_ddp[-1] - nll_single[-1]) < 0.05  # as much as one process, within noise


def test_data_parallel_without_torchrun_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    X = _gaussian(100)
    plain = skfff.FreeFormFlow(hidden_features=8, n_blocks=1, max_epochs=2, device="cpu",
                               random_state=0).fit(X)
    with skfff.data_parallel() as dp:
        assert (dp.rank, dp.world_size, dp.backend, dp.is_main) == (0, 1, None, True)
        with pytest.raises(RuntimeError, match="nested"), skfff.data_parallel():
            pass
        inside = clone(plain).fit(X)
    np.testing.assert_array_equal(inside.score_samples(X), plain.score_samples(X))


# ------------------------------------------------------------------------- GPU paths
def test_a_nonfinite_batch_is_skipped_and_the_history_holds_numbers():
    X = np.random.default_rng(0).standard_normal((64, 2)) + 5.0
    X[0] = [1e3, 0.0]  # one batch per epoch has a NaN loss
    est = _Mean(batch_size=16, max_epochs=5, lr=0.1, validation_fraction=0.0, device="cpu",
                random_state=0)
    with pytest.warns(UserWarning, match="5 training batches had a non-finite loss"):
        est.fit(X)
    assert [row["n_nonfinite"] for row in est.history_] == [1] * 5
    assert np.isfinite(est.module_.w.detach().numpy()).all()
    assert est.module_.w.detach().numpy()[1] > 0.5  # the finite batches trained it
    # per-batch losses and flags were read back once per epoch, as plain Python numbers
    for row in est.history_:
        for batch in row["batches"]:
            assert not any(torch.is_tensor(v) for v in batch.values())
            assert isinstance(batch["nonfinite"], bool)
            assert isinstance(batch["train_loss"], float)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_nonfinite_step_never_reaches_the_weights(device):
    X = np.random.default_rng(0).standard_normal((32, 2))
    net = _Mean(max_epochs=1, device=device, random_state=0).fit(X).net_
    params = list(net.module_.parameters())
    for loss, grad in [(float("nan"), 1.0), (1.0, float("inf")), (1.0, 2.0)]:
        for p in params:
            p.grad = torch.full_like(p, grad)
        skipped = net._clip_or_skip(torch.tensor(loss, device=device))
        assert skipped.device.type == device  # decided on the device
        bad = not (np.isfinite(loss) and np.isfinite(grad))
        assert bool(skipped) is bad
        for p in params:
            if device == "cpu" and bad:
                assert p.grad is None  # the step is skipped outright: no optimiser update
            else:  # on a GPU: zeroed on the device, no host synchronisation
                expected = 0.0 if bad else grad
                torch.testing.assert_close(p.grad, torch.full_like(p, expected))


@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_training_step_clips_the_total_gradient_norm(max_grad_norm):
    X = np.random.default_rng(0).standard_normal((32, 2))
    net = _Mean(max_epochs=1, max_grad_norm=max_grad_norm, random_state=0).fit(X).net_
    params = list(net.module_.parameters())
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    before = torch.linalg.vector_norm(torch.cat([p.grad.ravel() for p in params]))
    assert not net._clip_or_skip(torch.tensor(1.0))
    after = torch.linalg.vector_norm(torch.cat([p.grad.ravel() for p in params]))
    expected = before if max_grad_norm is None else torch.tensor(max_grad_norm)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


def test_float32_log_determinant_error_is_below_the_documented_bound():
    gen = torch.Generator().manual_seed(0)
    for d in (2, 16, 64):
        q1 = torch.linalg.qr(torch.randn(32, d, d, dtype=torch.float64, generator=gen))[0]
        q2 = torch.linalg.qr(torch.randn(32, d, d, dtype=torch.float64, generator=gen))[0]
        s = 10 ** (4 * torch.rand(32, d, dtype=torch.float64, generator=gen))  # cond <= 1e4
        jac = ((q1 * s[:, None, :]) @ q2.mT).float().double()  # float32-representable
        exact = half_log_det_gram(jac, dtype=torch.float64)
        fast = half_log_det_gram(jac, dtype=torch.float32)  # returned in jac's float64
        assert torch.log(torch.linalg.svdvals(jac)).sum(-1).sub(exact).abs().max() < 1e-9
        assert 0 < (fast - exact).abs().max() < 3e-4
    assert qr_dtype(torch.device("cpu")) == torch.float64


@pytest.mark.cuda
def test_cuda_fit_reads_the_history_back_per_epoch():
    X = _gaussian(300)
    flow = skfff.FreeFormFlow(hidden_features=16, n_blocks=1, max_epochs=3, device="cuda",
                              random_state=0).fit(X)
    assert next(flow.module_.parameters()).is_cuda
    for row in flow.history_:
        assert isinstance(row["valid_nll"], float) and np.isfinite(row["valid_nll"])
        for batch in row["batches"]:
            assert not any(torch.is_tensor(v) for v in batch.values())
    flow_cpu = skfff.FreeFormFlow(hidden_features=16, n_blocks=1, max_epochs=3, device="cpu",
                                  random_state=0).fit(X)
    assert flow.score(X) == pytest.approx(flow_cpu.score(X), abs=0.05)
