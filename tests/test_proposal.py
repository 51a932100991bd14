"""KernelProposal: importance sampling of integrals over manifolds.

The estimates must be unbiased whatever the proposal (the proposal's sampler and its
log-density agree), their standard errors honest, and far smaller than uniform points give
on concentrated densities.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skfff.datasets import make_torus_wrapped_normal_mixture, make_vmf_mixture
from skfff.datasets._manifold import make_rotation_mixture
from skfff.manifolds import (
    Draw,
    KernelProposal,
    Product,
    SpecialOrthogonal,
    Sphere,
    Torus,
)


def _uniform(manifold, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return manifold.random_uniform(n, gen, dtype=torch.float64).numpy()


def _cases():
    X, _ = make_vmf_mixture(600, n_components=3, concentration=500.0, random_state=0)
    A, _ = make_torus_wrapped_normal_mixture(600, n_components=2, scale=0.1, random_state=0)
    T2, T1 = Torus(2), Torus(1)
    R, _ = make_rotation_mixture(600, n_components=2, scale=0.1, random_state=0)
    return {
        "SO(3)": (SpecialOrthogonal(), SpecialOrthogonal().to_embedding(R)),
        "S^2": (Sphere(2), X),
        "T^2": (T2, T2.to_embedding(A)),
        "S^1": (Sphere(1), T1.to_embedding(A[:, :1])),
        "S^2 x T^1": (Product(Sphere(2), T1), np.hstack([X, T1.to_embedding(A[:, :1])])),
    }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_sampler_and_density_agree(name):
    manifold, centres = CASES[name]
    proposal = KernelProposal(manifold, centres)
    assert proposal.has_kernels and 0 < proposal.bandwidth < 0.5
    draw = proposal.sample(20_000, seed=1)
    assert draw.points.shape == (20_000, manifold.ambient_dim) and sum(draw.counts) == 20_000
    assert float(manifold.distance_to_manifold(torch.from_numpy(draw.points)).max()) < 1e-9
    # the uniform density integrates to 1: E_q[(1 / V) / q] = 1 only if q is the density of
    # the points drawn
    estimate, stderr = draw.integral(np.full(20_000, -manifold.log_volume()))
    assert abs(estimate - 1.0) < 4 * stderr + 1e-3
    # and q itself integrates to 1 (uniform points)
    U = _uniform(manifold, 50_000, 2)
    w = np.exp(proposal.log_prob(U) + manifold.log_volume())
    assert abs(w.mean() - 1.0) < 4 * w.std() / math.sqrt(len(w))


def test_concentrated_density_needs_far_fewer_points():
    X, _, dist = make_vmf_mixture(3000, n_components=3, concentration=1000.0, random_state=0,
                                  return_distribution=True)
    s2 = Sphere(2)
    draw = KernelProposal(s2, X).sample(20_000, seed=0)
    estimate, stderr = draw.integral(dist.log_density(draw.points))
    assert abs(estimate - 1.0) < 4 * stderr and stderr < 0.01
    U = _uniform(s2, 20_000, 0)
    w = np.exp(dist.log_density(U) + s2.log_volume())
    assert w.std() / math.sqrt(len(w)) > 10 * stderr  # uniform points: over 10x the error


def test_standard_error_is_honest():
    A, _, dist = make_torus_wrapped_normal_mixture(500, n_components=2, scale=0.2,
                                                   random_state=0, return_distribution=True)
    T2 = Torus(2)
    proposal = KernelProposal(T2, T2.to_embedding(A))
    z = []
    for seed in range(40):
        draw = proposal.sample(400, seed=seed)
        estimate, stderr = draw.integral(dist.log_density(T2.from_embedding(draw.points)))
        z.append((estimate - 1.0) / stderr)
    z = np.array(z)
    assert 0.6 < z.std() < 1.5 and abs(z.mean()) < 0.6


def test_unsupported_manifold_falls_back_to_uniform():
    s3 = Sphere(3)
    proposal = KernelProposal(s3, _uniform(s3, 50, 0))
    assert not proposal.has_kernels
    draw = proposal.sample(1000, seed=0)
    np.testing.assert_allclose(draw.log_q, -s3.log_volume())
    assert draw.integral(np.full(1000, -s3.log_volume())) == pytest.approx((1.0, 0.0))


def test_rotation_kernel_density_is_exact():
    # one centre, one bandwidth: the density of C Exp(omega a) against a histogram of the
    # sampled rotation angles (the Haar measure's angle density is (1 - cos omega) / pi)
    from skfff.manifolds.so3 import log_rotation_kernel, sample_rotation_kernel

    sigma, rng = 0.4, np.random.default_rng(0)
    C = np.eye(3).reshape(1, 9)
    R = sample_rotation_kernel(np.repeat(C, 200_000, axis=0), sigma, rng)
    omega = np.arccos(np.clip((R.reshape(-1, 9)[:, [0, 4, 8]].sum(1) - 1) / 2, -1, 1))
    edges = np.linspace(0.0, math.pi, 41)
    hist, _ = np.histogram(omega, edges, density=True)
    mid = 0.5 * (edges[1:] + edges[:-1])
    # angle density = kernel density (w.r.t. volume) x volume x Haar angle density
    predicted = (np.exp(log_rotation_kernel(1 + 2 * np.cos(mid), sigma)) * 8 * math.pi**2
                 * (1 - np.cos(mid)) / math.pi)
    np.testing.assert_allclose(hist, predicted, atol=0.03 * predicted.max())


def test_nan_or_infinite_log_density_gives_nan():
    draw = Draw(np.zeros((3, 3)), np.zeros(3), (3,))
    assert np.isnan(draw.integral(np.array([0.0, np.nan, 0.0]))).all()
    assert np.isnan(draw.integral(np.array([0.0, np.inf, 0.0]))).all()


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 40), copies=st.integers(1, 5), seed=st.integers(0, 1000))
def test_repeated_and_few_centres_stay_finite(n, copies, seed):
    # repeated rows (recurring events) have zero distances: the bandwidth has a floor
    centres = np.repeat(_uniform(Sphere(2), n, seed), copies, axis=0)
    proposal = KernelProposal(Sphere(2), centres)
    assert proposal.bandwidth >= 1e-3
    draw = proposal.sample(500, seed=seed)
    assert np.isfinite(draw.log_q).all()
    estimate, stderr = draw.integral(np.full(500, -Sphere(2).log_volume()))
    assert abs(estimate - 1.0) < 5 * stderr + 0.05
