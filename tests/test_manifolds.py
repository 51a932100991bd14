"""Tests for skfff.manifolds and the manifold data generators: closed forms only."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch.func import jacfwd, vmap

from skfff.datasets import make_torus_wrapped_normal_mixture, make_vmf_mixture
from skfff.manifolds import (
    Product,
    SpecialOrthogonal,
    Sphere,
    Torus,
    UniformDistribution,
    latlon_to_unit,
    quaternion_to_matrix,
    unit_to_latlon,
)

MANIFOLDS = [Sphere(1), Sphere(2), Sphere(4), Torus(1), Torus(3), SpecialOrthogonal(),
             Product(Sphere(2), Torus(1), SpecialOrthogonal())]
IDS = [repr(m) for m in MANIFOLDS]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("m", MANIFOLDS, ids=IDS)
def test_dimensions_and_projection(m):
    x = torch.randn(64, m.ambient_dim, generator=_gen(), dtype=torch.float64)
    p = m.project(x)
    assert p.shape == x.shape
    assert m.belongs(p, atol=1e-10).all()
    assert torch.allclose(m.project(p), p, atol=1e-10)  # idempotent
    # projection is never farther than another point on the manifold
    other = m.random_uniform(64, _gen(1), dtype=torch.float64)
    assert ((x - p).norm(dim=-1) <= (x - other).norm(dim=-1) + 1e-10).all()
    assert not m.belongs(2.0 * p + 0.3, atol=1e-3).all()
    assert not m.belongs(torch.zeros(1, m.ambient_dim, dtype=torch.float64)).any()
    # the distance to the manifold is the distance to the projection
    assert torch.allclose(m.distance_to_manifold(x), (x - p).norm(dim=-1), atol=1e-10)


@pytest.mark.parametrize("m", MANIFOLDS, ids=IDS)
def test_tangent_projector_and_basis(m):
    x = m.random_uniform(32, _gen(), dtype=torch.float64)
    P = m.tangent_projector(x)
    assert torch.allclose(P, P.transpose(-1, -2), atol=1e-10)
    assert torch.allclose(P @ P, P, atol=1e-10)
    rank = torch.diagonal(P, dim1=-2, dim2=-1).sum(-1)
    assert torch.allclose(rank, torch.full_like(rank, m.dim), atol=1e-10)
    B = m.tangent_basis(x)
    assert B.shape == (32, m.ambient_dim, m.dim)
    eye = torch.eye(m.dim, dtype=torch.float64)
    assert torch.allclose(B.transpose(-1, -2) @ B, eye.expand(32, -1, -1), atol=1e-10)
    assert torch.allclose(B @ B.transpose(-1, -2), P, atol=1e-10)
    # derivative of the closest-point projection on the manifold is the tangent projector
    J = vmap(jacfwd(m.project))(x)
    assert torch.allclose(J, P, atol=1e-7)


@pytest.mark.parametrize("m", MANIFOLDS, ids=IDS)
def test_projection_gradients_are_finite_on_manifold(m):
    x = m.random_uniform(16, _gen()).requires_grad_(True)
    (g,) = torch.autograd.grad((m.project(x) * torch.randn(16, m.ambient_dim)).sum(), x)
    assert torch.isfinite(g).all()


def test_volumes_closed_forms():
    assert math.isclose(math.exp(Sphere(2).log_volume()), 4 * math.pi)
    assert math.isclose(math.exp(Sphere(1).log_volume()), 2 * math.pi)
    assert math.isclose(math.exp(Sphere(3).log_volume()), 2 * math.pi**2)
    assert math.isclose(math.exp(Sphere(4).log_volume()), 8 * math.pi**2 / 3)
    assert math.isclose(math.exp(Torus(3).log_volume()), (2 * math.pi) ** 3)
    assert math.isclose(math.exp(SpecialOrthogonal().log_volume()), 8 * math.pi**2)
    prod = Product(Sphere(2), Torus(2))
    assert math.isclose(prod.log_volume(), math.log(4 * math.pi) + 2 * math.log(2 * math.pi))


def test_sphere_uniform_is_uniform_in_area():
    # Archimedes: the height of a uniform point on S^2 is uniform on [-1, 1]; the area of a
    # cap of geodesic radius r is 2 pi (1 - cos r).
    x = Sphere(2).random_uniform(200_000, _gen(), dtype=torch.float64)
    h = x[:, 2].numpy()
    assert abs(h.mean()) < 0.01 and abs(h.var() - 1 / 3) < 0.01
    r = 0.7
    frac = (h > math.cos(r)).mean()
    assert math.isclose(frac * 4 * math.pi, 2 * math.pi * (1 - math.cos(r)), rel_tol=0.03)


def test_so3_volume_convention():
    # bi-invariant metric with geodesic distance = rotation angle: the ball of angle < r has
    # volume 8 pi (r - sin r) (about 4/3 pi r^3 for small r), total 8 pi^2.  The metric induced
    # by the Frobenius norm of R^9 would give 2^(3/2) times more, which this test rules out.
    so3 = SpecialOrthogonal()
    x = so3.random_uniform(400_000, _gen(), dtype=torch.float64)
    angle = so3.rotation_angle(x).numpy()
    vol = math.exp(so3.log_volume())
    for r in (0.8, 1.5, math.pi / 2 + 1):
        mc = (angle < r).mean() * vol
        assert math.isclose(mc, 8 * math.pi * (r - math.sin(r)), rel_tol=0.03)
    # Haar measure: the angle has density (1 - cos t) / pi on [0, pi], mean pi/2 + 2/pi
    assert abs(angle.mean() - (math.pi / 2 + 2 / math.pi)) < 0.01


def test_so3_uniform_is_invariant():
    so3 = SpecialOrthogonal()
    x = so3.random_uniform(100_000, _gen(), dtype=torch.float64).reshape(-1, 3, 3)
    r0 = so3.random_uniform(1, _gen(3), dtype=torch.float64).reshape(3, 3)
    a1 = so3.rotation_angle((r0 @ x).reshape(-1, 9))
    a0 = so3.rotation_angle(x.reshape(-1, 9))
    # left-translated samples are not the same points but have the same angle law
    assert abs(np.quantile(a1.numpy(), 0.5) - np.quantile(a0.numpy(), 0.5)) < 0.02
    assert torch.allclose(torch.det(x), torch.ones(len(x), dtype=torch.float64), atol=1e-10)


def test_quaternions_match_scipy_and_are_accepted():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((10, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ours = quaternion_to_matrix(torch.as_tensor(q)).numpy()
    np.testing.assert_allclose(ours, Rotation.from_quat(q).as_matrix(), atol=1e-12)
    so3 = SpecialOrthogonal()
    np.testing.assert_allclose(so3.to_embedding(q), ours.reshape(10, 9), atol=1e-12)
    np.testing.assert_allclose(so3.to_embedding(ours), ours.reshape(10, 9))
    with pytest.raises(ValueError, match="SO\\(3\\) inputs"):
        so3.to_embedding(rng.standard_normal((3, 5)))


def test_so3_projection_fixes_determinant_sign():
    so3 = SpecialOrthogonal()
    m = torch.randn(200, 3, 3, generator=_gen(), dtype=torch.float64)
    r = so3.project(m.reshape(-1, 9)).reshape(-1, 3, 3)
    u, _, vh = torch.linalg.svd(m)
    d = torch.det(u @ vh)
    ref = u @ torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)) @ vh
    assert torch.allclose(r, ref, atol=1e-8)
    assert torch.allclose(torch.det(r), torch.ones(200, dtype=torch.float64))


def test_torus_coordinates_round_trip():
    t = Torus(2)
    angles = np.array([[0.1, -3.0], [3.1, 2.0]])
    emb = t.to_embedding(angles)
    np.testing.assert_allclose(emb[0], [np.cos(0.1), np.sin(0.1), np.cos(-3.0), np.sin(-3.0)])
    np.testing.assert_allclose(t.from_embedding(emb), angles)
    np.testing.assert_allclose(t.from_embedding(t.to_embedding(angles + 2 * np.pi)), angles,
                               atol=1e-12)


def test_latlon_round_trip():
    lat = np.array([0.0, 45.0, -89.0, 10.0])
    lon = np.array([0.0, 90.0, 179.0, -120.0])
    u = latlon_to_unit(lat, lon)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0)
    np.testing.assert_allclose(u[1], [0.0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)
    np.testing.assert_allclose(unit_to_latlon(u), np.stack([lat, lon], 1), atol=1e-10)
    np.testing.assert_allclose(latlon_to_unit(np.stack([lat, lon], 1)), u)
    with pytest.raises(ValueError):
        latlon_to_unit(lat)


def test_product_coordinates_and_blocks():
    m = Product(Sphere(2), Product(Torus(1), SpecialOrthogonal()))
    assert len(m.factors) == 3 and (m.dim, m.ambient_dim, m.n_coordinates) == (6, 14, 13)
    x = m.random_uniform(5, _gen(), dtype=torch.float64)
    coords = m.from_embedding(x.numpy())
    assert coords.shape == (5, 13)
    np.testing.assert_allclose(m.to_embedding(coords), x.numpy(), atol=1e-12)
    with pytest.raises(TypeError):
        Product(Sphere(2), "torus")


def test_bad_dimensions():
    with pytest.raises(ValueError):
        Sphere(0)
    with pytest.raises(ValueError):
        Torus(0)
    with pytest.raises(ValueError):
        SpecialOrthogonal(4)


def test_uniform_distribution():
    d = UniformDistribution(Torus(2))
    z = d.sample(7, _gen())
    assert z.shape == (7, 4)
    assert torch.allclose(d.log_prob(z), torch.full((7,), -2 * math.log(2 * math.pi)))


def test_vmf_mixture_data_density():
    X, y, dist = make_vmf_mixture(2000, n_components=3, concentration=10.0, random_state=0,
                                  return_distribution=True)
    assert X.shape == (2000, 3) and y.shape == (2000,) and X.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0)
    u = Sphere(2).random_uniform(200_000, _gen(), dtype=torch.float64).numpy()
    assert abs(np.exp(dist.log_density(u)).mean() * 4 * np.pi - 1.0) < 0.02
    # the samples follow the density: mean log-density of samples = -entropy, estimate it
    # by importance sampling with the uniform proposal
    p = np.exp(dist.log_density(u))
    neg_entropy = np.mean(p * np.log(p)) * 4 * np.pi
    assert abs(dist.log_density(X).mean() - neg_entropy) < 0.05
    X2, _ = make_vmf_mixture(2000, n_components=3, concentration=10.0, random_state=0)
    np.testing.assert_array_equal(X, X2)


def test_wrapped_normal_data_density():
    X, y, dist = make_torus_wrapped_normal_mixture(3000, random_state=0, scale=0.8,
                                                  return_distribution=True)
    assert X.shape == (3000, 2) and (np.abs(X) <= np.pi).all()
    g = np.linspace(-np.pi, np.pi, 201)[:-1] + np.pi / 200
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    integral = np.exp(dist.log_density(grid)).sum() * (2 * np.pi / 200) ** 2
    assert abs(integral - 1.0) < 1e-6
    # periodic
    np.testing.assert_allclose(dist.log_density(X), dist.log_density(X + 2 * np.pi))
    p = np.exp(dist.log_density(grid))
    neg_entropy = np.sum(p * np.log(p)) * (2 * np.pi / 200) ** 2
    assert abs(dist.log_density(X).mean() - neg_entropy) < 0.05
