"""Tests for the M-FFF maths (skfff._torch.mfff) and ManifoldFreeFormFlow."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation
from sklearn.base import clone

from skfff import ManifoldFreeFormFlow
from skfff._torch.mfff import riemannian_log_abs_det
from skfff._torch.surrogates import tangent_probes, volume_change_surrogate
from skfff.datasets import make_torus_wrapped_normal_mixture, make_vmf_mixture
from skfff.manifolds import Product, SpecialOrthogonal, Sphere, Torus

MANIFOLDS = [Sphere(2), Torus(2), SpecialOrthogonal(), Product(Sphere(2), Torus(1))]
IDS = [repr(m) for m in MANIFOLDS]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def manifold_log_abs_det(f, manifold, x):
    """Exact log volume change of a one-argument map ``f: M -> M``."""
    return riemannian_log_abs_det(lambda u, c: f(u), manifold, x)


# ----------------------------------------------------------------- torch maths
@pytest.mark.parametrize("m", MANIFOLDS, ids=IDS)
def test_probe_covariance_is_tangent_projector(m):
    z = m.random_uniform(3, _gen(), dtype=torch.float64)
    v = tangent_probes(m)(z, 40_000, _gen(1))  # (K, 3, m)
    assert v.shape == (40_000, 3, m.ambient_dim)
    # every probe is tangent and has squared norm n (the intrinsic dimension)
    assert torch.allclose(m.project_tangent(z, v), v, atol=1e-10)
    assert torch.allclose(v.pow(2).sum(-1), torch.full((40_000, 3), float(m.dim),
                                                        dtype=torch.float64))
    cov = torch.einsum("kbi,kbj->bij", v, v) / v.shape[0]
    assert (cov - m.tangent_projector(z)).abs().max() < 0.03


def _sphere_linear_maps(A):
    """x -> Ax/|Ax| on S^2 and its exact inverse z -> A^-1 z/|A^-1 z|."""
    def f(x):
        y = x @ A.T
        return y / y.norm(dim=-1, keepdim=True)

    def g(z):
        y = z @ torch.linalg.inv(A).T
        return y / y.norm(dim=-1, keepdim=True)

    return f, g


def test_exact_log_det_sphere_linear_map():
    # the area change of x -> Ax/|Ax| on S^n is |det A| / |Ax|^(n+1)
    A = torch.randn(3, 3, generator=_gen(), dtype=torch.float64) + 2 * torch.eye(3)
    f, _ = _sphere_linear_maps(A)
    x = Sphere(2).random_uniform(50, _gen(1), dtype=torch.float64)
    expected = torch.log(torch.det(A).abs()) - 3 * torch.log((x @ A.T).norm(dim=-1))
    assert torch.allclose(manifold_log_abs_det(f, Sphere(2), x), expected, atol=1e-10)


def test_exact_log_det_torus_and_so3_maps():
    t = Torus(2)
    a = torch.tensor([0.5, -0.3], dtype=torch.float64)

    def shear(x):  # theta -> theta + a sin(theta), per angle
        th = t.embedding_to_angles(x)
        return t.angles_to_embedding(th + a * torch.sin(th))

    x = t.random_uniform(40, _gen(), dtype=torch.float64)
    th = t.embedding_to_angles(x)
    expected = torch.log(1 + a * torch.cos(th)).sum(-1)
    assert torch.allclose(manifold_log_abs_det(shear, t, x), expected, atol=1e-10)

    so3 = SpecialOrthogonal()
    r0 = so3.random_uniform(1, _gen(2), dtype=torch.float64).reshape(3, 3)

    def left(x):  # an isometry: log det = 0
        return (r0 @ x.reshape(-1, 3, 3)).reshape(-1, 9)

    x = so3.random_uniform(20, _gen(3), dtype=torch.float64)
    assert manifold_log_abs_det(left, so3, x).abs().max() < 1e-10

    def inverse(x):  # R -> R^T, also an isometry of the bi-invariant metric
        return x.reshape(-1, 3, 3).transpose(-1, -2).reshape(-1, 9)

    assert manifold_log_abs_det(inverse, so3, x).abs().max() < 1e-10


def test_exact_log_prob_encoder_decoder_agree_and_integrate():
    A = torch.randn(3, 3, generator=_gen(4), dtype=torch.float64) + 2 * torch.eye(3)
    f, g = _sphere_linear_maps(A)
    s2 = Sphere(2)
    x = s2.random_uniform(100_000, _gen(5), dtype=torch.float64)
    z = f(x)
    lp_dec = s2.uniform_log_prob(z) - manifold_log_abs_det(g, s2, z)
    lp_enc = s2.uniform_log_prob(z) + manifold_log_abs_det(f, s2, x)
    assert torch.allclose(lp_dec, lp_enc, atol=1e-8)
    assert abs(lp_dec.exp().mean().item() * 4 * math.pi - 1.0) < 0.02


def test_surrogate_gradient_matches_exact_log_det_gradient():
    # with g = f^-1 the surrogate's gradient equals that of log|det J_f| in expectation
    s2 = Sphere(2)
    A0 = torch.randn(3, 3, generator=_gen(6), dtype=torch.float64) + 2 * torch.eye(3)
    x = s2.random_uniform(8, _gen(7), dtype=torch.float64)

    A = A0.clone().requires_grad_(True)
    f, g = _sphere_linear_maps(A)
    exact = manifold_log_abs_det(f, s2, x).sum()
    (g_exact,) = torch.autograd.grad(exact, A)

    A = A0.clone().requires_grad_(True)
    f, _ = _sphere_linear_maps(A)
    _, g_inv = _sphere_linear_maps(A0)  # decoder = exact inverse, no gradient to A
    z, x_hat, sur = volume_change_surrogate(
        lambda u, c: f(u), lambda u, c: g_inv(u), x, probes=tangent_probes(s2), n_probes=1500,
        generator=_gen(8), project=s2.project_tangent)
    assert torch.allclose(x_hat, x, atol=1e-10)
    assert torch.allclose(z, f(x), atol=1e-12)
    (g_sur,) = torch.autograd.grad(sur.sum(), A)
    assert (g_sur - g_exact).abs().max() < 0.05 * g_exact.abs().max()
    # its value is the trace of the tangent Jacobian product, n = 2 when g = f^-1
    assert torch.allclose(sur, torch.full_like(sur, 2.0), atol=0.1)


def test_exact_log_det_is_differentiable():
    # the orthonormal tangent bases carry finite derivatives (no eigendecomposition at
    # degenerate eigenvalues), so the exact log-det can be differentiated
    s2 = Sphere(2)
    A = (torch.randn(3, 3, generator=_gen(9), dtype=torch.float64)
         + 2 * torch.eye(3)).requires_grad_(True)
    f, _ = _sphere_linear_maps(A)
    x = s2.random_uniform(16, _gen(10), dtype=torch.float64)
    (grad,) = torch.autograd.grad(manifold_log_abs_det(f, s2, x).sum(), A)
    # d/dA [n log|det A| - 3 sum log|Ax|] = 16 A^-T - 3 sum (Ax) x^T / |Ax|^2
    y = x @ A.detach().T
    expected = 16 * torch.linalg.inv(A.detach()).T - 3 * torch.einsum(
        "bi,bj->ij", y / y.pow(2).sum(-1, keepdim=True), x)
    assert torch.allclose(grad, expected, atol=1e-8)


# ------------------------------------------------------------------- estimator
FAST = {"hidden_features": 32, "n_blocks": 2, "batch_size": 128, "random_state": 0}


def _mc_integral(flow, manifold, n=20_000, seed=0):
    """Monte Carlo integral of the learnt density with uniform points."""
    u = manifold.random_uniform(n, _gen(seed), dtype=torch.float64).numpy()
    coords = manifold.from_embedding(u)
    return float(np.exp(flow.score_samples(coords)).mean() * math.exp(manifold.log_volume()))


@pytest.fixture(scope="module")
def sphere_fit():
    X, _, dist = make_vmf_mixture(1200, n_components=2, concentration=8.0, random_state=0,
                                  return_distribution=True)
    flow = ManifoldFreeFormFlow("sphere", max_epochs=40, lr=3e-3, **FAST).fit(X)
    return flow, dist


@pytest.fixture(scope="module")
def torus_fit():
    X, _, dist = make_torus_wrapped_normal_mixture(1200, n_components=2, scale=0.5,
                                                   random_state=0, return_distribution=True)
    flow = ManifoldFreeFormFlow("torus", max_epochs=40, lr=1e-2, **FAST).fit(X)
    return flow, dist


def _so3_data(n, seed):
    rng = np.random.default_rng(seed)
    centres = Rotation.from_rotvec([[0.0, 0.0, 0.0], [2.0, -1.0, 0.5]])
    k = rng.integers(0, 2, n)
    noise = Rotation.from_rotvec(0.35 * rng.standard_normal((n, 3)))
    return (centres[k] * noise).as_matrix()  # (n, 3, 3)


@pytest.fixture(scope="module")
def so3_fit():
    flow = ManifoldFreeFormFlow("so3", max_epochs=20, lr=3e-3, **FAST).fit(_so3_data(800, 0))
    return flow


def test_sphere_density_integrates_to_one_and_nll_near_truth(sphere_fit):
    flow, dist = sphere_fit
    assert abs(_mc_integral(flow, Sphere(2)) - 1.0) < 0.06
    X_test, _ = dist.sample(1000, random_state=1)
    true_nll = -dist.log_density(X_test).mean()
    nll = -flow.score(X_test)
    assert math.log(4 * math.pi) - nll > 1.0  # learnt a lot beyond uniform
    assert nll - true_nll < 0.15
    assert nll - true_nll > -0.05  # not better than the truth (would mean mass leaks)


def test_encoder_density_agrees_with_decoder_density(sphere_fit):
    import copy

    flow, dist = sphere_fit
    enc = copy.copy(flow).set_params(log_prob_via="encoder")
    X_test, _ = dist.sample(500, random_state=4)
    diff = enc.score_samples(X_test) - flow.score_samples(X_test)
    assert np.median(np.abs(diff)) < 0.1
    assert abs(_mc_integral(enc, Sphere(2)) - 1.0) < 0.06


def test_torus_density_integrates_to_one_and_nll_near_truth(torus_fit):
    flow, dist = torus_fit
    assert abs(_mc_integral(flow, Torus(2)) - 1.0) < 0.1
    A_test, _ = dist.sample(1000, random_state=1)
    true_nll = -dist.log_density(A_test).mean()
    nll = -flow.score(A_test)
    assert 2 * math.log(2 * math.pi) - nll > 1.2
    assert -0.05 < nll - true_nll < 0.25
    # angles are periodic: shifting by 2 pi changes nothing
    np.testing.assert_allclose(flow.score_samples(A_test[:20] + 2 * np.pi),
                               flow.score_samples(A_test[:20]), atol=1e-4)


def test_so3_density_integrates_to_one(so3_fit):
    flow = so3_fit
    assert abs(_mc_integral(flow, SpecialOrthogonal(), n=40_000) - 1.0) < 0.1
    R = _so3_data(500, 1)
    assert -flow.score(R) < math.log(8 * math.pi**2) - 1.0
    # (n, 3, 3), (n, 9) and scalar-last quaternions are the same points
    quats = Rotation.from_matrix(R[:10]).as_quat()
    lp = flow.score_samples(R[:10])
    np.testing.assert_allclose(flow.score_samples(R[:10].reshape(10, 9)), lp)
    np.testing.assert_allclose(flow.score_samples(quats), lp, atol=1e-4)


@pytest.mark.parametrize("which", ["sphere_fit", "torus_fit", "so3_fit"])
def test_samples_on_manifold_and_round_trip(which, request):
    fit = request.getfixturevalue(which)
    flow = fit[0] if isinstance(fit, tuple) else fit
    S = flow.sample(500, random_state=0)
    assert S.shape == (500, flow.n_features_in_) and S.dtype == np.float64
    m = flow.manifold_
    emb = torch.as_tensor(m.to_embedding(S))
    assert m.distance_to_manifold(emb).max() < 1e-6
    np.testing.assert_array_equal(S, flow.sample(500, random_state=0))
    assert not np.array_equal(S, flow.sample(500, random_state=1))
    Z = flow.transform(S[:50])
    assert m.distance_to_manifold(torch.as_tensor(m.to_embedding(Z))).max() < 1e-6
    back = flow.inverse_transform(Z)
    err = np.linalg.norm(m.to_embedding(back) - m.to_embedding(S[:50]), axis=1)
    assert np.median(err) < 0.05 and np.quantile(err, 0.9) < 0.15  # short training


def test_samples_follow_the_learnt_density(sphere_fit):
    # the probability of a region by sampling equals the integral of the learnt density
    # over it (samples and score_samples describe the same distribution), and samples
    # concentrate where the truth does
    flow, dist = sphere_fit
    S = flow.sample(4000, random_state=0)
    u = Sphere(2).random_uniform(40_000, _gen(), dtype=torch.float64).numpy()
    p_model = np.exp(flow.score_samples(u)) * 4 * np.pi
    for c in (dist.means[0], dist.means[1]):
        region_u, region_s = u @ c > 0.8, S @ c > 0.8
        assert abs(np.mean(p_model * region_u) - region_s.mean()) < 0.04
    assert dist.log_density(S).mean() > dist.log_density(u).mean() + 1.5


def test_off_manifold_points_are_rejected_or_projected(sphere_fit):
    flow, _ = sphere_fit
    X = np.array([[0.0, 0.0, 1.0], [0.0, 0.6, 0.6]])
    with pytest.raises(ValueError, match=r"1 of 2 points.*off the manifold.*0\.151"):
        flow.score_samples(X)
    projected = clone(flow).set_params(project_inputs=True)
    projected.__dict__.update({k: v for k, v in flow.__dict__.items() if k.endswith("_")})
    lp = projected.score_samples(X)
    np.testing.assert_allclose(lp[1], flow.score_samples([[0.0, np.sqrt(0.5), np.sqrt(0.5)]])[0],
                               atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=3,
                max_size=3), st.integers(0, 2))
def test_fuzzed_bad_rows_raise_value_error(sphere_fit, row, where):
    flow, _ = sphere_fit
    X = np.array([[1.0, 0.0, 0.0]] * 3)
    X[where] = row
    norm = np.linalg.norm(X[where])
    if np.all(np.isfinite(X)) and abs(norm - 1.0) <= 1e-4:
        assert np.isfinite(flow.score_samples(X)).all()
    else:
        with pytest.raises(ValueError):
            flow.score_samples(X)


def test_bad_parameters_and_manifold_shapes():
    X, _ = make_vmf_mixture(50, random_state=0)
    with pytest.raises(ValueError, match="n_features = 3"):
        ManifoldFreeFormFlow("so3", max_epochs=1).fit(X)
    with pytest.raises(ValueError, match="circles, tori, S\\^2 and SO\\(3\\)"):
        ManifoldFreeFormFlow(Sphere(3), prior="mixture", max_epochs=1).fit(np.eye(4)[[0] * 50])
    with pytest.raises(ValueError, match="takes 4 coordinates"):
        ManifoldFreeFormFlow(Product(Sphere(2), Torus(1)), max_epochs=1).fit(X)
    with pytest.raises(ValueError, match="manifold"):
        ManifoldFreeFormFlow("hyperbolic", max_epochs=1).fit(X)
    with pytest.raises(ValueError, match="n_samples"):
        ManifoldFreeFormFlow(max_epochs=1, **FAST).fit(X).sample(0)


def test_product_manifold_and_vmf_prior_fit():
    X, _ = make_vmf_mixture(300, random_state=0)
    A = np.random.default_rng(0).normal(0.5, 0.3, size=(300, 1))
    m = Product(Sphere(2), Torus(1))
    flow = ManifoldFreeFormFlow(m, max_epochs=3, **FAST).fit(np.hstack([X, A]))
    S = flow.sample(100, random_state=0)
    assert S.shape == (100, 4)
    np.testing.assert_allclose(np.linalg.norm(S[:, :3], axis=1), 1.0, atol=1e-12)
    assert np.isfinite(flow.score_samples(np.hstack([X, A])[:5])).all()
    vmf = ManifoldFreeFormFlow(prior="vmf_mixture", n_prior_components=3, max_epochs=3,
                               **FAST).fit(X)
    assert np.isfinite(vmf.score_samples(X[:5])).all()
    np.testing.assert_allclose(np.linalg.norm(vmf.sample(50, random_state=0), axis=1), 1.0)


def test_default_prior_is_the_em_mixture_the_flow_starts_from():
    X, _ = make_vmf_mixture(600, n_components=3, concentration=40.0, random_state=0)
    # one epoch at a negligible learning rate: the networks stay at the identity, so the
    # density is the mixture fitted by EM (renormalize divides by an integral of ~1)
    flow = ManifoldFreeFormFlow(max_epochs=1, lr=1e-12, **FAST).fit(X)
    assert flow.prior_ == "mixture"
    assert 4 * flow.n_prior_components_ == flow.module_.prior.n_components
    assert flow.n_prior_components_ in flow.prior_selection_
    assert flow.n_prior_components_ == max(flow.prior_selection_,
                                           key=flow.prior_selection_.get)
    with torch.no_grad():
        mixture = flow.module_.prior.log_prob(torch.tensor(X[:50], dtype=torch.float32))
    np.testing.assert_allclose(flow.score_samples(X[:50]), mixture.numpy(), atol=0.03)
    # far better than uniform from the start
    assert -flow.score(X) < math.log(4 * math.pi) - 1.5
    # a row's log-density does not depend on the rows it is scored with (up to float32)
    np.testing.assert_allclose(flow.score_samples(X[7:19]), flow.score_samples(X)[7:19],
                               rtol=0, atol=1e-5)
    # a given count is used as is; a warm refit keeps the fitted mixture's shape
    fixed = ManifoldFreeFormFlow(n_prior_components=5, max_epochs=1, warm_start=True,
                                 **FAST).fit(X)
    assert fixed.n_prior_components_ == 5 and fixed.prior_selection_ == {}
    fixed.fit(X[:300])
    assert fixed.n_prior_components_ == 5 and fixed.n_iter_ == 2


def test_auto_prior_falls_back_to_uniform():
    s3 = ManifoldFreeFormFlow(Sphere(3), max_epochs=1, **FAST).fit(
        Sphere(3).random_uniform(100, _gen(0), dtype=torch.float64).numpy())
    assert s3.prior_ == "uniform" and s3.n_prior_components_ is None
    so3 = ManifoldFreeFormFlow("so3", max_epochs=1, **FAST).fit(_so3_data(100, 0))
    assert so3.prior_ == "mixture"
    X, y = make_vmf_mixture(200, n_components=2, random_state=0)
    conditional = ManifoldFreeFormFlow(conditional=True, max_epochs=1, **FAST).fit(X, y)
    assert conditional.prior_ == "uniform"
    uniform = ManifoldFreeFormFlow(prior="uniform", max_epochs=1, **FAST).fit(X)
    assert uniform.prior_ == "uniform"


def test_conditional_on_labels():
    X, y = make_vmf_mixture(600, n_components=2, concentration=15.0, random_state=0)
    flow = ManifoldFreeFormFlow(conditional=True, max_epochs=40, lr=3e-3, **FAST).fit(X, y)
    assert list(flow.classes_) == [0, 1]
    lp0 = flow.score_samples(X, np.zeros(len(X), dtype=int))
    lp1 = flow.score_samples(X, np.ones(len(X), dtype=int))
    # each point is more likely under its own label
    assert np.mean((lp1 > lp0) == (y == 1)) > 0.9
    means = [X[y == k].mean(0) / np.linalg.norm(X[y == k].mean(0)) for k in (0, 1)]
    for label in (0, 1):
        S = flow.sample(300, y=[label], random_state=0)
        # most samples given a label lie nearer that label's centre
        assert np.mean(S @ means[label] > S @ means[1 - label]) > 0.75
    with pytest.raises(ValueError, match="needs y"):
        clone(flow).fit(X)


def test_auto_epochs_and_patience_count_optimiser_steps():
    """``"auto"``: about 8000 optimiser steps (30-1000 epochs), patience about 1100 steps."""
    flow = ManifoldFreeFormFlow(batch_size=64)
    # volcano's 661 training rows in batches of 64: 11 steps an epoch
    assert (flow._epochs(661), flow._patience(661)) == (728, 100)
    # earthquake's 4 896: 77 steps, ceil(8000 / 77) = 104 epochs, patience floor 30
    assert (flow._epochs(4896), flow._patience(4896)) == (104, 30)
    assert ManifoldFreeFormFlow()._epochs(10_000_000) == 30
    default = ManifoldFreeFormFlow()  # "auto" batch: 82 rows, 9 steps an epoch
    assert (default._epochs(661), default._patience(661)) == (889, 123)
    fixed = ManifoldFreeFormFlow(max_epochs=7, patience=3)
    assert (fixed._epochs(661), fixed._patience(661)) == (7, 3)
