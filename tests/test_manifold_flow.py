"""Tests for the M-FFF maths (skfff._torch.manifold_estimators) and ManifoldFreeFormFlow."""

import math

import pytest
import torch

from skfff._torch.manifold_estimators import (
    manifold_log_abs_det,
    manifold_log_prob,
    tangent_probes,
    tangent_surrogate,
)
from skfff.manifolds import Product, SpecialOrthogonal, Sphere, Torus

MANIFOLDS = [Sphere(2), Torus(2), SpecialOrthogonal(), Product(Sphere(2), Torus(1))]
IDS = [repr(m) for m in MANIFOLDS]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- torch maths
@pytest.mark.parametrize("m", MANIFOLDS, ids=IDS)
def test_probe_covariance_is_tangent_projector(m):
    z = m.random_uniform(3, _gen(), dtype=torch.float64)
    v = tangent_probes(m, z, n_probes=40_000, generator=_gen(1))  # (K, 3, m)
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
    lp_dec = manifold_log_prob(f, g, s2, s2.uniform_log_prob, x, via="decoder")
    lp_enc = manifold_log_prob(f, g, s2, s2.uniform_log_prob, x, via="encoder")
    assert torch.allclose(lp_dec, lp_enc, atol=1e-8)
    assert abs(lp_dec.exp().mean().item() * 4 * math.pi - 1.0) < 0.02
    with pytest.raises(ValueError, match="via"):
        manifold_log_prob(f, g, s2, s2.uniform_log_prob, x[:2], via="both")


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
    z, x_hat, sur = tangent_surrogate(f, g_inv, s2, x, n_probes=4000, generator=_gen(8))
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
