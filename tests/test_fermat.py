"""Tests for FermatDistance, its graph machinery and the geodesic relaxation."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from sklearn.base import clone
from sklearn.cluster import DBSCAN, AgglomerativeClustering
from sklearn.datasets import make_moons
from sklearn.metrics import adjusted_rand_score, pairwise_distances
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from skfff._torch.geodesics import relax_paths, resample_polylines
from skfff._torch.score_matching import fit_denoising_score
from skfff.fermat import FermatDistance, _default_density


# ---------------------------------------------------------------- analytic densities
class StandardNormal:
    """N(0, I_D) with its exact log-density and score."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        return -0.5 * np.sum(X**2, axis=1) - 0.5 * self.dim * np.log(2 * np.pi)

    @staticmethod
    def grad(X: np.ndarray) -> np.ndarray:
        return -X


class UniformBox:
    """Uniform density on [0, side]^D: log p = -D log(side) inside, -inf outside."""

    def __init__(self, dim: int, side: float = 1.0) -> None:
        self.dim, self.side = dim, side

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        inside = np.all((X >= 0) & (X <= self.side), axis=1)
        return np.where(inside, -self.dim * np.log(self.side), -np.inf)

    @staticmethod
    def grad(X: np.ndarray) -> np.ndarray:
        return np.zeros_like(X)


def ray_distance(r1: float, r2: float, dim: int, beta: float) -> float:
    """Exact Fermat distance between two points on one ray of N(0, I_D)."""
    c = (2 * np.pi) ** (beta * dim / 2)
    return quad(lambda r: c * np.exp(beta * r * r / 2), r1, r2)[0]


def ray_pairs(dim: int, n: int, gap: float, rng: np.random.Generator):
    u = rng.normal(size=(n, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    mid = np.sqrt(dim) + rng.uniform(-0.5, 0.5, n)
    half = 0.5 * gap * rng.uniform(0.8, 1.2, n)
    r1, r2 = np.maximum(mid - half, 0.0), mid + half
    exact = np.array([ray_distance(a, b, dim, 1.0 / dim) for a, b in zip(r1, r2, strict=True)])
    return r1[:, None] * u, r2[:, None] * u, exact


def gaussian_fd(dim: int, **kw) -> FermatDistance:
    g = StandardNormal(dim)
    return FermatDistance(density=g, prefit=True, score_function=g.grad, **kw)


# ---------------------------------------------------------------- accuracy
def test_uniform_density_gives_scaled_euclidean():
    rng = np.random.default_rng(0)
    side = 2.0
    X = rng.uniform(0, side, size=(150, 2))
    box = UniformBox(2, side)
    fd = FermatDistance(density=box, prefit=True, score_function=box.grad, relax=True).fit(X)
    E = pairwise_distances(X)
    # p = 1 / side^2, beta = 1/2: metric factor p^(-1/2) = side
    np.testing.assert_allclose(fd.pairwise(), side * E, rtol=1e-4, atol=1e-9)
    graph_only = fd.set_params(relax=False).pairwise()
    off = ~np.eye(len(X), dtype=bool)
    ratio = graph_only[off] / (side * E[off])
    assert ratio.min() >= 1 - 1e-9  # graph paths are never shorter than straight lines
    assert np.median(ratio) < 1.1


def test_gaussian_ray_accuracy_2d():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 2))
    A, B, exact = ray_pairs(2, 20, 2.0, rng)
    fd = gaussian_fd(2, relax=True).fit(X)
    relaxed = np.array([fd(a, b) for a, b in zip(A, B, strict=True)])
    graph = np.array([fd.set_params(relax=False)(a, b) for a, b in zip(A, B, strict=True)])
    assert np.median(np.abs(relaxed / exact - 1)) < 0.01
    assert np.median(np.abs(graph / exact - 1)) < 0.1
    assert np.all(relaxed <= graph + 1e-12)


@pytest.mark.parametrize(("dim", "gap"), [(5, 3.0), (10, 4.0)])
def test_relaxation_beats_graph_in_higher_dimension(dim, gap):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1000, dim))
    A, B, exact = ray_pairs(dim, 15, gap, rng)
    fd = gaussian_fd(dim, relax=True, n_neighbors=10).fit(X)
    relaxed = np.diag(fd.pairwise(A, B))
    graph = np.diag(fd.set_params(relax=False).pairwise(A, B))
    err_relaxed = np.median(np.abs(relaxed / exact - 1))
    err_graph = np.median(np.abs(graph / exact - 1))
    assert err_graph > 0.1  # graph paths zig-zag in high dimension
    assert err_relaxed < 0.02
    # no path is shorter than the geodesic (up to quadrature error)
    assert np.all(relaxed >= exact * (1 - 1e-3))


@pytest.mark.slow
def test_dsm_score_model_guides_relaxation():
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(1000, 3))
    model = fit_denoising_score(X, n_steps=600, seed=0)
    x = torch.as_tensor(rng.normal(size=(200, 3)), dtype=torch.float32)
    with torch.no_grad():
        s = model(x).numpy()
    rel = np.linalg.norm(s + x.numpy(), axis=1) / np.linalg.norm(x.numpy(), axis=1)
    assert np.median(rel) < 0.25  # near the exact score -x (a short fit, a noisy target)
    fd = FermatDistance(
        density=StandardNormal(3), prefit=True, score_function="dsm", relax=True, random_state=0
    ).fit(X)
    A, B, exact = ray_pairs(3, 8, 2.5, rng)
    assert np.median(np.abs(np.diag(fd.pairwise(A, B)) / exact - 1)) < 0.03


def test_finite_difference_score_relaxation():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(800, 3))
    fd = FermatDistance(
        density=StandardNormal(3), prefit=True, score_function="finite_difference", relax=True
    ).fit(X)
    assert fd.score_model_ is None and fd.surrogate_ is None
    A, B, exact = ray_pairs(3, 10, 2.5, rng)
    est = np.diag(fd.pairwise(A, B))
    graph = np.diag(fd.set_params(relax=False).pairwise(A, B))
    assert np.median(np.abs(est / exact - 1)) < 0.005 < np.median(np.abs(graph / exact - 1))


def test_surrogate_is_the_default_guide_and_matches_the_score():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(800, 3))
    fd = FermatDistance(density=StandardNormal(3), prefit=True, random_state=0).fit(X)
    assert fd.score_function_ == "surrogate" and fd.score_model_ is None
    x = torch.as_tensor(rng.normal(size=(300, 3)), dtype=torch.float32)
    value, score = fd.surrogate_.value_and_score(x)
    exact = StandardNormal(3).score_samples(x.numpy().astype(np.float64))
    assert np.median(np.abs(value.numpy() - exact)) < 0.05
    rel = np.linalg.norm(score.numpy() + x.numpy(), axis=1) / np.linalg.norm(x.numpy(), axis=1)
    assert np.median(rel) < 0.05
    A, B, truth = ray_pairs(3, 10, 2.5, rng)
    est = np.diag(fd.set_params(relax=True).pairwise(A, B))  # relaxed one by one
    graph = np.diag(fd.set_params(relax=False).pairwise(A, B))
    assert np.median(np.abs(est / truth - 1)) < 0.005 < np.median(np.abs(graph / truth - 1))


def test_calibrated_distances_for_all_pairs_5d():
    # pairs on rays are part of the training set; every pair of the matrix is calibrated
    rng = np.random.default_rng(8)
    A, B, truth = ray_pairs(5, 20, 3.0, rng)
    X = np.vstack([rng.normal(size=(800, 5)), A, B])
    ia, ib = 800 + np.arange(20), 820 + np.arange(20)
    fd = gaussian_fd(5, n_neighbors=10, n_calibration_pairs=600, random_state=0).fit(X)
    cal = fd.calibration_
    assert np.all(np.diff(cal.ratios) >= 0) and cal.ratios.max() <= 1.0
    assert cal(np.array([1.0]))[0] > 0.98  # a straight path needs no correction
    assert cal(np.array([0.5]))[0] < 0.9  # a zig-zag path is shortened
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D = fd.pairwise()
    G = fd.set_params(relax=False).pairwise()
    err_cal = np.median(np.abs(D[ia, ib] / truth - 1))
    err_graph = np.median(np.abs(G[ia, ib] / truth - 1))
    assert err_graph > 0.08 and err_cal < 0.04
    np.testing.assert_array_equal(D, D.T)
    np.testing.assert_array_equal(np.diag(D), 0.0)
    assert (D <= G * (1 + 1e-12)).all()


def test_step_control_never_lengthens_paths_in_a_stiff_density():
    # a narrow ridge along y = 0: the explicit score term is stiff, free steps oscillate
    width = 0.02

    def score(x):
        return torch.stack([torch.zeros_like(x[:, 0]), -x[:, 1] / width**2], dim=1)

    def length(phi):
        mid = 0.5 * (phi[:, 1:] + phi[:, :-1])
        w = torch.exp(0.5 * mid[..., 1] ** 2 / width**2)  # p^(-1/2), p ~ exp(-y^2 / 2 w^2)
        return (w * (phi[:, 1:] - phi[:, :-1]).norm(dim=-1)).sum(dim=1)

    gen = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, 20)
    base = torch.stack([t, torch.zeros_like(t)], dim=1)
    phi = base[None] + 0.01 * torch.randn(16, 20, 2, generator=gen)
    phi[:, 0], phi[:, -1] = base[0], base[-1]
    phi = resample_polylines(phi, 20)
    before = length(phi)
    free, _ = relax_paths(phi, score, beta=0.5, max_iter=30)
    controlled, _ = relax_paths(phi, score, beta=0.5, max_iter=30, length=length)
    after = length(controlled)
    assert (after <= before * (1 + 1e-6)).all()
    # the geodesic is the segment on the ridge, of length 1
    assert (after < 1.01).all() and (before > 1.04).all()
    assert (length(free) > before).any()  # without the control the iteration is unstable


def test_relax_paths_straightens_zigzag_without_score():
    t = torch.linspace(0, 1, 33)
    phi = torch.stack([t, 0.2 * torch.sin(12 * torch.pi * t)], dim=1)[None]
    phi = resample_polylines(phi, 33)
    out, n_iter = relax_paths(phi, lambda x: torch.zeros_like(x), beta=0.5, max_iter=500)
    assert n_iter < 500
    assert out[0, :, 1].abs().max() < 1e-3
    spacing = (out[0, 1:] - out[0, :-1]).norm(dim=1)
    assert torch.allclose(spacing, torch.full_like(spacing, 1 / 32), atol=1e-3)
    assert torch.equal(out[0, 0], phi[0, 0]) and torch.equal(out[0, -1], phi[0, -1])


def test_resample_polylines_constant_speed_with_padding():
    poly = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]])
    out = resample_polylines(poly, 5)
    expected = torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0], [1.0, 0.5], [1.0, 1.0]])
    torch.testing.assert_close(out[0], expected)


# ---------------------------------------------------------------- metric properties
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(8, 30),
    dim=st.integers(1, 3),
    k=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_symmetry_zero_diagonal_triangle_inequality(n, dim, k, seed):
    X = np.random.default_rng(seed).normal(size=(n, dim))
    fd = gaussian_fd(dim, n_neighbors=k, relax=False).fit(X)
    D = fd.pairwise()
    assert np.isfinite(D).all() and (D >= 0).all()
    np.testing.assert_array_equal(D, D.T)
    np.testing.assert_array_equal(np.diag(D), 0.0)
    # d(i, j) <= d(i, m) + d(m, j) for every triple
    assert (D[:, None, :] <= D[:, :, None] + D[None, :, :] + 1e-9 * D.max()).all()
    # relaxed distances: symmetric, zero diagonal, never above graph distances
    R = fd.set_params(relax=True).pairwise()
    np.testing.assert_array_equal(R, R.T)
    np.testing.assert_array_equal(np.diag(R), 0.0)
    assert (R <= D + 1e-12).all()


def test_disconnected_components_give_finite_ordered_distances():
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(size=(40, 2)), rng.normal(size=(40, 2)) + [30.0, 0.0]])
    kde = KernelDensity(bandwidth=0.5)
    fd = FermatDistance(density=kde, n_neighbors=5, relax=False).fit(X)
    assert fd.n_components_ == 2
    assert len(set(fd.component_labels_[:40])) == 1
    D = fd.pairwise()
    assert np.isfinite(D).all()
    assert D[:40, 40:].min() > 10 * max(D[:40, :40].max(), D[40:, 40:].max())
    assert (D[:, None, :] <= D[:, :, None] + D[None, :, :] + 1e-9 * D.max()).all()


def _dbscan_success_fraction(M: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    scores = []
    for q in np.linspace(0.002, 0.3, 60):
        eps = np.quantile(M[np.triu_indices_from(M, 1)], q)
        labels = DBSCAN(eps=eps, min_samples=10, metric="precomputed").fit_predict(M)
        scores.append(adjusted_rand_score(y, labels[: len(y)]))
    scores = np.asarray(scores)
    return float(scores.max()), float(np.mean(scores > 0.9))


def test_dbscan_two_moons_in_background_noise():
    rng = np.random.default_rng(0)
    X, y = make_moons(400, noise=0.08, random_state=0)
    Z = np.vstack([X, rng.uniform([-1.5, -1.0], [2.5, 1.5], size=(120, 2))])
    # beta = 1 in 2-D is the classic sample Fermat distance with alpha = 3
    fd = FermatDistance(density=KernelDensity(bandwidth=0.1), beta=1.0, relax=False)
    best_f, frac_f = _dbscan_success_fraction(fd.fit_transform(Z), y)
    best_e, frac_e = _dbscan_success_fraction(pairwise_distances(Z), y)
    assert best_f > 0.99
    # background points sit in low density: Fermat distances push them away, so many more
    # eps values separate the moons than with Euclidean distances
    assert frac_f > 2 * frac_e


# ---------------------------------------------------------------- API
@pytest.fixture(scope="module")
def moons_fd():
    X, _ = make_moons(120, noise=0.05, random_state=0)
    kde = KernelDensity(bandwidth=0.2)
    return FermatDistance(density=kde, n_neighbors=8, random_state=0).fit(X), X


def test_transform_pairwise_call_consistency(moons_fd):
    fd, X = moons_fd
    fd = fd.set_params(relax=False)
    D = fd.pairwise()
    np.testing.assert_allclose(fd.transform(X), D, rtol=1e-12)
    Z = np.random.default_rng(0).normal(scale=0.5, size=(7, 2)) + [0.5, 0.25]
    T = fd.transform(Z)
    assert T.shape == (7, 120) and T.dtype == np.float64 and np.isfinite(T).all()
    np.testing.assert_allclose(fd.pairwise(None, Z), T.T)
    np.testing.assert_allclose(fd.pairwise(Z, X), T)
    P = fd.pairwise(Z)
    np.testing.assert_array_equal(P, P.T)
    np.testing.assert_array_equal(np.diag(P), 0.0)
    assert fd(Z[0], Z[1]) == pytest.approx(P[0, 1])
    np.testing.assert_allclose(fd(Z), P)
    assert fd(X[3], X[3]) == 0.0


def test_pipeline_and_callable_metric(moons_fd):
    fd, X = moons_fd
    labels = make_pipeline(
        FermatDistance(density=KernelDensity(bandwidth=0.2), relax=False),
        DBSCAN(eps=0.3, min_samples=5, metric="precomputed"),
    ).fit_predict(X)
    assert labels.shape == (120,)
    agg = AgglomerativeClustering(n_clusters=2, metric=fd.set_params(relax=False))
    assert agg.set_params(linkage="average").fit_predict(X).shape == (120,)


def test_geodesic_endpoints_length_and_ray():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(800, 2))
    fd = gaussian_fd(2, n_path_points=24, relax=True).fit(X)
    a, b = np.array([0.3, 0.3]), np.array([1.5, 1.5])
    path, length = fd.geodesic(a, b, return_length=True)
    assert path.shape == (24, 2)
    np.testing.assert_array_equal(path[0], a)
    np.testing.assert_array_equal(path[-1], b)
    assert length == pytest.approx(fd(a, b), rel=1e-6)
    # the geodesic of N(0, I) between two points on a ray is the ray itself
    assert np.abs(path[:, 0] - path[:, 1]).max() < 1e-3
    assert length == pytest.approx(ray_distance(0.3 * 2**0.5, 1.5 * 2**0.5, 2, 0.5), rel=1e-3)


def test_pandas_output(moons_fd):
    pd = pytest.importorskip("pandas")
    fd, X = moons_fd
    fd = clone(fd).set_params(relax=False).set_output(transform="pandas").fit(X)
    out = fd.transform(X[:4])
    assert isinstance(out, pd.DataFrame) and out.shape == (4, 120)
    assert list(out.columns[:2]) == ["fermatdistance0", "fermatdistance1"]


def test_relax_auto_calibrates_every_request_without_warning(moons_fd):
    fd, X = moons_fd
    fd = clone(fd).set_params(relax="auto").fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D = fd.pairwise(X[:10])  # calibrated graph distances
    G = fd.set_params(relax=False).pairwise(X[:10])
    T = fd.set_params(relax="auto").transform(X[:10])[:, :10]
    np.testing.assert_allclose(D, np.minimum(T, T.T), rtol=1e-10)
    off = ~np.eye(10, dtype=bool)
    assert (D[off] <= G[off]).all() and (D[off] < G[off]).any()
    # the same numbers whatever else is asked in the call (sklearn's subset invariance)
    full = fd.transform(X[:10])
    np.testing.assert_allclose(fd.transform(X[3:5]), full[3:5], rtol=1e-12)
    R = fd.set_params(relax=True).pairwise(X[:10])  # relaxed pair by pair
    assert np.median(np.abs(D[off] / R[off] - 1)) < 0.05


def test_user_density_is_cloned_with_its_random_state():
    from skfff.flow import FreeFormFlow

    X, _ = make_moons(100, noise=0.05, random_state=0)
    density = FreeFormFlow(max_epochs=2, hidden_features=8, n_blocks=1, random_state=123)
    before = density.get_params()
    fd = FermatDistance(density=density, relax=False, random_state=0).fit(X)
    assert fd.density_ is not density and fd.density_.random_state == 123
    assert density.get_params() == before and not hasattr(density, "module_")


def test_kneighbors_graph_sparse_and_accepted_by_sklearn():
    from sklearn.cluster import HDBSCAN
    from sklearn.manifold import TSNE

    X, y = make_moons(300, noise=0.05, random_state=0)
    fd = FermatDistance(density=KernelDensity(bandwidth=0.15), beta=1.0, random_state=0)
    fd.set_params(n_calibration_pairs=200).fit(X)
    K = fd.kneighbors_graph(n_neighbors=15)
    assert K.format == "csr" and K.shape == (300, 300) and K.nnz == 300 * 15
    D = fd.pairwise()  # same (calibrated) distances, dense
    Dn = D + np.diag(np.full(300, np.inf))
    expected = np.sort(Dn, axis=1)[:, :15]
    np.testing.assert_allclose(K.data.reshape(300, 15), expected, rtol=1e-6)
    np.testing.assert_allclose(
        np.take_along_axis(D, K.indices.reshape(300, 15), axis=1), expected, rtol=1e-6
    )
    assert (K.indices.reshape(300, 15) != np.arange(300)[:, None]).all()
    # many neighbours: the cut-short Dijkstra runs must widen their search, still exact
    K = fd.kneighbors_graph(n_neighbors=250)
    np.testing.assert_allclose(K.data.reshape(300, 250), np.sort(Dn, axis=1)[:, :250], rtol=1e-6)
    K = fd.kneighbors_graph(n_neighbors=15)
    labels = DBSCAN(eps=np.quantile(K.data, 0.9), min_samples=5, metric="precomputed").fit(K)
    assert adjusted_rand_score(y, labels.labels_) > 0.9
    sym = K.maximum(K.T)  # HDBSCAN wants a symmetric sparse matrix
    hdb = HDBSCAN(metric="precomputed", min_cluster_size=20, min_samples=5, copy=True).fit(sym)
    assert adjusted_rand_score(y, hdb.labels_) > 0.9
    emb = TSNE(
        metric="precomputed", init="random", perplexity=4, max_iter=250, random_state=0
    ).fit_transform(K)
    assert emb.shape == (300, 2) and np.isfinite(emb).all()
    C = fd.kneighbors_graph(X[:7], n_neighbors=3, mode="connectivity")
    assert C.shape == (7, 300) and (C.data == 1).all()
    np.testing.assert_array_equal(C.indices.reshape(7, 3)[:, 0], np.arange(7))  # itself
    with pytest.raises(ValueError, match="n_neighbors"):
        fd.kneighbors_graph(n_neighbors=300)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 40), density=st.floats(0.05, 0.6), k=st.integers(1, 6),
       seed=st.integers(0, 10_000))
def test_undirected_graph_and_kth_edge(n, density, k, seed):
    from scipy.sparse import random as sparse_random

    from skfff._graph import _kth_edge, _undirected

    A = sparse_random(n, n, density=density, random_state=seed, format="csr")
    A.setdiag(0)
    A.eliminate_zeros()
    U = _undirected(A)
    D = A.toarray()
    # each edge both ways, at the smaller weight where both directions are stored
    both = np.where((D > 0) & (D.T > 0), np.minimum(D, D.T), np.maximum(D, D.T))
    np.testing.assert_array_equal(U.toarray(), both)
    out = _kth_edge(U, k)
    for i in range(n):
        w = np.sort(both[i][both[i] > 0])
        assert out[i] == (w[k - 1] if len(w) >= k else np.inf)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(20, 90),
    dim=st.integers(1, 8),
    k=st.integers(2, 8),
    frac=st.floats(0.0, 1.0),
    calibrated=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_kneighbors_graph_matches_sorted_pairwise(n, dim, k, frac, calibrated, seed):
    # The cut-short searches (limits from each source's k-th edge, blocks grouped by that
    # limit, searches on the subgraph within reach) must give the exact k nearest of the
    # dense matrix, for graph and calibrated distances, in any dimension and for any count.
    rng = np.random.default_rng(seed)
    # a scale mixture: very unequal k-th edges (far tails would make distances of 1e17,
    # where ties between paths leave the calibrated i -> j and j -> i apart by 1e-4)
    X = rng.normal(size=(n, dim)) * np.exp(rng.uniform(-1.5, 0.5, size=(n, 1)))
    relax = "auto" if calibrated else False
    fd = gaussian_fd(dim, n_neighbors=k, relax=relax, n_calibration_pairs=60, random_state=0)
    fd.fit(X)
    m = 1 + int(frac * (n - 2))
    K = fd.kneighbors_graph(n_neighbors=m)
    Dn = fd.pairwise() + np.diag(np.full(n, np.inf))
    expected = np.sort(Dn, axis=1)[:, :m]
    np.testing.assert_allclose(K.data.reshape(n, m), expected, rtol=1e-9, atol=1e-12)
    got = np.take_along_axis(Dn, K.indices.reshape(n, m), axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_pairwise_out_memmap(moons_fd, tmp_path):
    fd, X = moons_fd
    fd = fd.set_params(relax="auto")
    D = fd.pairwise()
    mm = np.lib.format.open_memmap(tmp_path / "d.npy", mode="w+", dtype=np.float64, shape=D.shape)
    assert fd.pairwise(out=mm) is mm
    np.testing.assert_array_equal(np.asarray(mm), D)
    Z = X[:5] + 0.01
    out = np.empty((5, 120))
    fd.pairwise(Z, X, out=out)
    np.testing.assert_allclose(out, fd.transform(Z))
    with pytest.raises(ValueError, match="shape"):
        fd.pairwise(out=np.empty((3, 3)))
    with pytest.raises(ValueError, match="float64"):
        fd.pairwise(out=np.empty((120, 120), dtype=np.float32))


def test_dask_backend_gives_serial_numbers(moons_fd):
    distributed = pytest.importorskip("dask.distributed")
    from joblib import parallel_backend

    fd, X = moons_fd
    fd = fd.set_params(relax="auto", n_jobs=2)
    serial = fd.set_params(n_jobs=None).pairwise()
    knn = fd.kneighbors_graph(n_neighbors=5)
    fd.set_params(n_jobs=2)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
        parallel_backend("dask"),
    ):
        np.testing.assert_array_equal(fd.pairwise(), serial)
        np.testing.assert_array_equal(fd.kneighbors_graph(n_neighbors=5).toarray(), knn.toarray())


def test_memory_is_bounded_in_high_dimension():
    import tracemalloc

    rng = np.random.default_rng(9)
    X = rng.normal(size=(1000, 784))
    Z = rng.normal(size=(300, 784))
    fd = FermatDistance(density=StandardNormal(784), prefit=True, relax=False).fit(X)
    tracemalloc.start()
    T = fd.transform(Z)  # a rows x n_train x D temporary would be 1.9 GB
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert T.shape == (300, 1000) and np.isfinite(T).all()
    assert peak < 300 * 2**20


@pytest.mark.cuda
def test_cuda_density_relaxes_on_gpu_and_pickles_to_cpu():
    from skfff.flow import FreeFormFlow

    X, _ = make_moons(200, noise=0.05, random_state=0)
    density = FreeFormFlow(max_epochs=3, device="cuda", random_state=0)
    fd = FermatDistance(density=density, random_state=0).fit(X)
    assert fd.device_.type == "cuda"
    assert next(fd.surrogate_.buffers()).device.type == "cuda"
    state = fd.__getstate__()
    assert next(state["surrogate_"].buffers()).device.type == "cpu"
    assert np.isfinite(fd.pairwise(X[:20])).all()


def test_n_jobs_and_pickle_round_trip(moons_fd):
    fd, X = moons_fd
    fd = fd.set_params(relax=False)
    D = fd.pairwise()
    np.testing.assert_allclose(fd.set_params(n_jobs=2).pairwise(), D)
    loaded = pickle.loads(pickle.dumps(fd.set_params(n_jobs=None)))
    np.testing.assert_allclose(loaded.pairwise(), D)
    # the relaxation guide travels too (on the CPU) and relaxes the same way
    assert fd.surrogate_ is not None and fd.calibration_ is not None
    R = fd.set_params(relax=True).pairwise(X[:12])
    loaded = pickle.loads(pickle.dumps(fd))
    np.testing.assert_allclose(loaded.pairwise(X[:12]), R, rtol=1e-6)
    fd.set_params(relax=False)


def test_beta_zero_is_graph_euclidean():
    X = np.random.default_rng(5).uniform(size=(60, 2))
    fd = FermatDistance(density=StandardNormal(2), prefit=True, beta=0.0, relax=False).fit(X)
    E = pairwise_distances(X)
    D = fd.pairwise()
    assert (D >= E - 1e-12).all()
    nn = np.argsort(E, axis=1)[:, 1]
    np.testing.assert_allclose(D[np.arange(60), nn], E[np.arange(60), nn])


def test_default_density_is_freeformflow():
    from skfff.flow import FreeFormFlow

    X, _ = make_moons(200, noise=0.05, random_state=0)
    fd = FermatDistance(relax=False, random_state=0)
    fd.set_params(density=FreeFormFlow(max_epochs=3, hidden_features=16, n_blocks=1))
    fd.fit(X)
    assert isinstance(fd.density_, FreeFormFlow)
    assert fd.density is not fd.density_  # cloned, the parameter is untouched
    assert np.isfinite(fd.pairwise()).all()
    default = _default_density()
    assert isinstance(default, FreeFormFlow)
    # a distance does not depend on the density's total mass: no normalisation check
    assert default.check_normalization is False
    # the budget and latent the clustering figures were measured with
    assert (default.max_epochs, default.patience, default.latent) == (300, 50, "normal")


# ---------------------------------------------------------------- errors
class NaNDensity:
    def score_samples(self, X):
        return np.full(len(X), np.nan)


def test_errors(moons_fd):
    fd, X = moons_fd
    with pytest.raises(ValueError, match="finite log-density"):
        FermatDistance(density=NaNDensity(), prefit=True).fit(X)
    with pytest.raises(ValueError, match="needs a density"):
        FermatDistance(prefit=True).fit(X)
    with pytest.raises(ValueError, match="features"):
        fd.transform(np.zeros((3, 5)))
    with pytest.raises(ValueError):
        FermatDistance(n_neighbors=0).fit(X)


@settings(max_examples=20, deadline=None)
@given(
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    row=st.integers(0, 4),
    col=st.integers(0, 1),
)
def test_non_finite_input_is_rejected(moons_fd, bad, row, col):
    fd, X = moons_fd
    Z = np.zeros((5, 2))
    Z[row, col] = bad
    with pytest.raises(ValueError):
        fd.transform(Z)
    with pytest.raises(ValueError):
        FermatDistance(density=KernelDensity(), relax=False).fit(Z)


# ---------------------------------------------------------------- sklearn checks
# (without relaxation they run over all six estimators in tests/test_common.py)
@pytest.mark.slow
@parametrize_with_checks([FermatDistance(density=KernelDensity(bandwidth=0.5), n_neighbors=3)])
def test_sklearn_compatible_with_relaxation(estimator, check):
    # the default relax="auto": surrogate guide and calibration fitted in every check
    check(estimator)
