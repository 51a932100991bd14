"""Kernel mixtures on manifolds (skfff.manifolds.mixture): densities, samplers, EM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from skfff.datasets import make_vmf_mixture
from skfff.manifolds import (
    KernelMixture,
    Product,
    SpecialOrthogonal,
    Sphere,
    Torus,
    fit_kernel_mixture,
)
from skfff.manifolds.mixture import kernel_blocks, vmf_log_normaliser


def _angles(mixture: KernelMixture, z: torch.Tensor) -> np.ndarray:
    return torch.atan2(z[:, 1], z[:, 0]).numpy()


def test_blocks_of_each_manifold():
    assert kernel_blocks(Sphere(1)) == ["von_mises"]
    assert kernel_blocks(Sphere(2)) == ["vmf"]
    assert kernel_blocks(Torus(3)) == ["von_mises"] * 3
    assert kernel_blocks(Product(Sphere(2), Torus(2), SpecialOrthogonal())) == [
        "vmf", "von_mises", "von_mises", "so3"]
    assert kernel_blocks(Sphere(3)) is None
    assert kernel_blocks(Product(Torus(1), Sphere(3))) is None
    with pytest.raises(ValueError, match="only S\\^1, S\\^2, tori, SO\\(3\\)"):
        fit_kernel_mixture(Sphere(3), np.eye(4)[:1].repeat(20, 0))


def test_normaliser_matches_scipy_and_torch():
    kappa = np.array([1e-4, 0.3, 4.0, 80.0, 3e4])
    # von Mises: log(1 / (2 pi I0(kappa)))
    np.testing.assert_allclose(
        vmf_log_normaliser(kappa, 2), stats.vonmises.logpdf(0.0, kappa) - kappa, rtol=1e-9)
    # S^2: kappa / (4 pi sinh kappa)
    small = kappa[:4]
    np.testing.assert_allclose(
        vmf_log_normaliser(small, 3), np.log(small / (4 * np.pi * np.sinh(small))), rtol=1e-6)
    for d in (2, 3):
        np.testing.assert_allclose(
            vmf_log_normaliser(torch.tensor(kappa), d).numpy(), vmf_log_normaliser(kappa, d),
            rtol=1e-12)


def test_circle_density_is_scipy_von_mises_mixture():
    means = np.array([[1.0, 0.0], [0.0, 2.0]])  # angles 0 and pi/2 (norm ignored)
    kappas = np.array([[3.0], [20.0]])
    mix = KernelMixture(["von_mises"], means, kappas, [0.3, 0.7])
    theta = np.linspace(-np.pi, np.pi, 7)
    z = torch.tensor(np.stack([np.cos(theta), np.sin(theta)], 1), dtype=torch.float32)
    expected = np.logaddexp(np.log(0.3) + stats.vonmises.logpdf(theta, 3.0, loc=0.0),
                            np.log(0.7) + stats.vonmises.logpdf(theta, 20.0, loc=np.pi / 2))
    np.testing.assert_allclose(mix.log_prob(z).detach().numpy(), expected, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("manifold", [Sphere(1), Torus(2), Sphere(2), SpecialOrthogonal(),
                                      Product(Sphere(2), Torus(1))], ids=repr)
def test_density_integrates_to_one(manifold):
    blocks = kernel_blocks(manifold)
    rng = np.random.default_rng(0)
    K = 3
    means = rng.normal(size=(K, manifold.ambient_dim))
    kappas = rng.uniform(0.5, 8.0, size=(K, len(blocks)))
    mix = KernelMixture(blocks, means, kappas, rng.dirichlet(np.ones(K)))
    u = manifold.random_uniform(400_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        p = torch.exp(mix.log_prob(u)).double().numpy()
    estimate = p.mean() * math.exp(manifold.log_volume())
    stderr = p.std() / math.sqrt(len(p)) * math.exp(manifold.log_volume())
    assert abs(estimate - 1.0) < max(4 * stderr, 0.01)


def test_samples_follow_the_density():
    # a von Mises mixture on the circle: sample histogram against the density
    mix = KernelMixture(["von_mises"], [[1.0, 0.0], [-1.0, 0.0]], [[4.0], [1.0]], [0.6, 0.4])
    z = mix.sample(200_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(z.norm(dim=1).numpy(), 1.0, atol=1e-12)
    counts, edges = np.histogram(_angles(mix, z), bins=36, range=(-np.pi, np.pi))
    mid = torch.tensor(0.5 * (edges[1:] + edges[:-1]))
    with torch.no_grad():
        dens = mix.log_prob(torch.stack([torch.cos(mid), torch.sin(mid)], 1)).exp().numpy()
    expected = dens * (edges[1] - edges[0]) * len(z)
    assert np.max(np.abs(counts - expected) / np.sqrt(expected)) < 5
    # S^2 with one component: mean resultant length coth(kappa) - 1 / kappa
    single = KernelMixture(["vmf"], [[0.0, 0.0, 1.0]], [[4.0]], [1.0])
    s = single.sample(100_000, torch.Generator().manual_seed(2))
    assert abs(s[:, 2].mean().item() - (1 / math.tanh(4.0) - 0.25)) < 0.01
    # reproducible from the generator
    first, again = (mix.sample(5, torch.Generator().manual_seed(7)) for _ in range(2))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, mix.sample(5, torch.Generator().manual_seed(8)))


def test_rotation_mixture_samples_and_em():
    # two blurred rotations (sigma 0.1 and 0.3 rad): samples have the kernel's angle spread,
    # EM finds both centres and scales back from the samples
    from scipy.spatial.transform import Rotation

    centres = Rotation.from_rotvec([[0.0, 0.0, 0.0], [2.0, -1.0, 0.5]]).as_matrix().reshape(2, 9)
    mix = KernelMixture(["so3"], centres, [[100.0], [1 / 0.09]], [0.5, 0.5])
    R = mix.sample(20_000, torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    np.testing.assert_allclose(R.reshape(-1, 3, 3) @ R.reshape(-1, 3, 3).transpose(0, 2, 1),
                               np.broadcast_to(np.eye(3), (len(R), 3, 3)), atol=1e-10)
    fitted = fit_kernel_mixture(SpecialOrthogonal(), R[:15_000], 2, random_state=0,
                                n_average=1)
    sigma = np.sort(fitted.log_kappa.exp().detach().numpy().ravel() ** -0.5)
    np.testing.assert_allclose(sigma, [0.1, 0.3], rtol=0.05)
    with torch.no_grad():
        held = torch.tensor(R[15_000:])
        gap = (mix.log_prob(held) - fitted.log_prob(held.float()).double()).mean().item()
    assert abs(gap) < 0.02
    # the gradient is finite at a centre itself (the angle is 0 there)
    z = torch.tensor(centres[:1], dtype=torch.float64, requires_grad=True)
    mix.log_prob(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_em_recovers_a_von_mises_mixture_on_the_torus():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [2.0, -2.0], [-2.0, 2.5]])
    kappa = 25.0
    label = rng.integers(3, size=4000)
    angles = rng.vonmises(centres[label], kappa)
    torus = Torus(2)
    X = torus.to_embedding(angles)
    mix = fit_kernel_mixture(torus, X[:3000], "auto", random_state=0)
    # 4 and 8 components score within 0.002 nats of each other on the held-out rows (8 a
    # hair better); fewer than 3 cannot fit
    assert mix.components_per_run in (4, 8)
    assert mix.selection[2] < mix.selection[4] - 1.0
    assert max(mix.selection, key=mix.selection.get) == mix.components_per_run
    truth = np.log(np.mean([np.exp(stats.vonmises.logpdf(angles[3000:], kappa,
                                                          loc=c).sum(1)) for c in centres],
                           axis=0))
    with torch.no_grad():
        fitted = mix.log_prob(torch.tensor(X[3000:], dtype=torch.float32)).numpy()
    assert abs(fitted.mean() - truth.mean()) < 0.05


def test_averaged_em_runs_are_one_normalised_mixture():
    X, _ = make_vmf_mixture(1500, n_components=4, concentration=30.0, random_state=2)
    single = fit_kernel_mixture(Sphere(2), X, 6, random_state=5, n_average=1)
    mix = fit_kernel_mixture(Sphere(2), X, 6, random_state=5)
    assert mix.n_components == 24 and mix.components_per_run == 6
    # the first run is the single fit; the runs differ (own starts) and weigh 1/4 each
    np.testing.assert_allclose(mix.raw_means[:6].detach(), single.raw_means.detach())
    assert not torch.allclose(mix.raw_means[6:12], mix.raw_means[:6])
    weights = torch.softmax(mix.logits.double(), 0).detach().numpy()
    np.testing.assert_allclose(weights.reshape(4, 6).sum(1), 0.25, rtol=1e-5)
    # the density is the mean of the four members' densities ...
    z = torch.tensor(X[:40], dtype=torch.float32)
    with torch.no_grad():
        members = [KernelMixture(["vmf"], mix.centres()[0][6 * r:6 * r + 6],
                                 mix.log_kappa.exp()[6 * r:6 * r + 6],
                                 weights[6 * r:6 * r + 6]).log_prob(z) for r in range(4)]
        np.testing.assert_allclose(mix.log_prob(z),
                                   torch.logsumexp(torch.stack(members), 0) - math.log(4),
                                   atol=1e-4)
        # ... so it integrates to one over the sphere (4 pi times the uniform mean)
        u = Sphere(2).random_uniform(200_000, torch.Generator().manual_seed(0))
        integral = 4 * math.pi * mix.log_prob(u).double().exp().mean().item()
    assert abs(integral - 1.0) < 0.03
    # reproducible from random_state
    again = fit_kernel_mixture(Sphere(2), X, 6, random_state=5)
    torch.testing.assert_close(again.raw_means, mix.raw_means)
    with pytest.raises(ValueError, match="n_average"):
        fit_kernel_mixture(Sphere(2), X, 6, n_average=0)


def test_repeated_rows_do_not_make_point_masses():
    # recurring events: EM would shrink a component onto a repeated row without the cap
    rng = np.random.default_rng(1)
    spread = Sphere(2).project(torch.tensor(rng.normal(size=(300, 3)))).numpy()
    X = np.concatenate([spread, np.repeat(spread[:5], 40, axis=0)])
    mix = fit_kernel_mixture(Sphere(2), X, 16, random_state=0)
    kappa = mix.log_kappa.exp().detach().numpy()
    assert np.isfinite(kappa).all() and kappa.max() < 1e4
    fresh = Sphere(2).random_uniform(100, torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.isfinite(mix.log_prob(fresh)).all()


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 60), n_angles=st.integers(1, 3), sphere=st.booleans(),
       components=st.one_of(st.just("auto"), st.integers(1, 6)), seed=st.integers(0, 1000))
def test_fit_on_any_small_input(n, n_angles, sphere, components, seed):
    manifold = Product(Sphere(2), Torus(n_angles)) if sphere else Torus(n_angles)
    X = manifold.random_uniform(n, torch.Generator().manual_seed(seed),
                                dtype=torch.float64).numpy()
    if seed % 3 == 0:
        X[n // 2:] = X[0]  # repeated rows
    mix = fit_kernel_mixture(manifold, X, components, random_state=seed)
    assert 1 <= mix.components_per_run <= n
    assert mix.n_components == 4 * mix.components_per_run
    weights = torch.softmax(mix.logits, 0).detach().numpy()
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    with torch.no_grad():
        lp = mix.log_prob(torch.tensor(X, dtype=torch.float32))
        assert torch.isfinite(lp).all()
        S = mix.sample(7, torch.Generator().manual_seed(0))
    assert S.shape == (7, manifold.ambient_dim)
    np.testing.assert_allclose(
        manifold.distance_to_manifold(S.double()).numpy(), 0.0, atol=1e-5)
