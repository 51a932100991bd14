"""Exact Jacobian helpers and the free-form flow surrogate estimator."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skfff._torch.jacobian import (
    batch_jacobian,
    forward_with_tangents,
    half_log_det_gram,
    jacobian_on_basis,
    log_abs_det_jacobian,
    logabsdet,
)
from skfff._torch.networks import ResidualMLP
from skfff._torch.surrogates import volume_change_surrogate as fff_surrogate


def _random_net(d_in, d_out, n_cond=0, skip=False):
    net = ResidualMLP(d_in, d_out, 16, 2, n_cond, skip=skip, zero_init=False)
    return lambda x, c=None: net(x, c)


@pytest.mark.parametrize("max_elements", [None, 50, 2**24])
@pytest.mark.parametrize("conditional", [False, True])
def test_log_abs_det_matches_slogdet(max_elements, conditional):
    d = 5
    fn = _random_net(d, d, 2 if conditional else 0)
    x = torch.randn(13, d)
    c = torch.randn(13, 2) if conditional else None
    got = log_abs_det_jacobian(fn, x, c, max_elements=max_elements)
    full = torch.stack([
        torch.autograd.functional.jacobian(
            lambda xi, i=i: fn(xi[None], None if c is None else c[i : i + 1])[0], x[i]
        )
        for i in range(len(x))
    ])
    torch.testing.assert_close(got, torch.linalg.slogdet(full)[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
def test_batch_jacobian_modes_agree(mode):
    fn = _random_net(4, 6)
    x = torch.randn(7, 4)
    jac = batch_jacobian(fn, x, mode=mode, max_elements=30)
    assert jac.shape == (7, 6, 4)
    ref = torch.autograd.functional.jacobian(lambda xi: fn(xi[None])[0], x[3])
    torch.testing.assert_close(jac[3], ref, atol=1e-5, rtol=1e-5)


def test_half_log_det_gram_matches_slogdet():
    fn = _random_net(3, 7)
    z = torch.randn(9, 3)
    jac = batch_jacobian(fn, z)
    ref = 0.5 * torch.linalg.slogdet(jac.transpose(1, 2) @ jac)[1]
    got = half_log_det_gram(jacobian_on_basis(fn, z, max_elements=40))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    # a per-output scale S multiplies the Jacobian's rows: 1/2 log det(J^T S^2 J)
    scale = torch.linspace(0.5, 2.0, 7)
    sj = scale[:, None] * jac
    ref_s = 0.5 * torch.linalg.slogdet(sj.transpose(1, 2) @ sj)[1]
    torch.testing.assert_close(half_log_det_gram(jac, scale), ref_s, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("max_elements", [None, 10])
def test_jacobian_on_basis_is_jacobian_times_basis(max_elements):
    net = ResidualMLP(4, 5, 16, 2, skip=False, zero_init=False).double()
    fn64 = lambda u, c: net(u, c)  # noqa: E731
    x = torch.randn(6, 4, dtype=torch.float64)
    full = batch_jacobian(fn64, x)
    torch.testing.assert_close(jacobian_on_basis(fn64, x, max_elements=max_elements), full)
    basis = torch.linalg.qr(torch.randn(6, 4, 2, dtype=torch.float64)).Q
    got = jacobian_on_basis(fn64, x, basis=basis, max_elements=max_elements)
    torch.testing.assert_close(got, full @ basis)


def test_jacobian_works_under_no_grad():
    fn = _random_net(3, 3)
    x = torch.randn(4, 3)
    with torch.no_grad():
        a = log_abs_det_jacobian(fn, x)
    torch.testing.assert_close(a, log_abs_det_jacobian(fn, x))


def test_surrogate_gradient_equals_logdet_gradient_linear():
    """With g = f^-1 exactly, E[grad surrogate] = grad log|det J_f| = W^-T."""
    torch.manual_seed(1)
    d = 4
    w = torch.nn.Parameter(torch.randn(d, d) + 3 * torch.eye(d))

    def enc(x, c=None):
        return x @ w.T

    def dec(z, c=None):
        return z @ torch.linalg.inv(w.detach()).T

    x = torch.randn(40000, d)
    out = fff_surrogate(enc, dec, x)
    out.surrogate.mean().backward()
    expected = torch.linalg.inv(w.detach()).T
    torch.testing.assert_close(w.grad, expected, atol=0.03, rtol=0.03)
    # the reconstruction is exact and carries no error
    torch.testing.assert_close(out.x_hat, x, atol=1e-4, rtol=1e-4)


def test_surrogate_gradient_equals_logdet_gradient_nonlinear():
    """f(x) = W sinh(a * x): an analytic bijection with known log-det gradient."""
    torch.manual_seed(2)
    d = 3
    w = torch.randn(d, d) + 3 * torch.eye(d)
    a = torch.nn.Parameter(torch.tensor([0.5, 1.0, 1.5]))

    def enc(x, c=None):
        return torch.sinh(a * x) @ w.T

    def dec(z, c=None):
        return torch.asinh(z @ torch.linalg.inv(w).T) / a.detach()

    x0 = torch.randn(32, d)
    x = x0.repeat(1000, 1)
    fff_surrogate(enc, dec, x).surrogate.mean().backward()
    # d/da_i [log a_i + log cosh(a_i x_i)] = 1/a_i + x_i tanh(a_i x_i)
    exact = (1 / a.detach() + x0 * torch.tanh(a.detach() * x0)).mean(0)
    torch.testing.assert_close(a.grad, exact, atol=0.05, rtol=0.05)


def test_surrogate_decoder_gets_no_logdet_gradient():
    enc_net, dec_net = ResidualMLP(3, 3, 8, 1), ResidualMLP(3, 3, 8, 1, zero_init=False)
    out = fff_surrogate(enc_net, dec_net, torch.randn(10, 3))
    out.surrogate.sum().backward()
    assert all(p.grad is None for p in dec_net.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc_net.parameters())


@pytest.mark.parametrize("n", [3, 64, 256])
def test_logabsdet_matches_per_matrix_determinants(n):
    """Batched determinants equal one-at-a-time ones, also at sizes where batched LU fails."""
    torch.manual_seed(n)
    mats = torch.randn(6, n, n) / n**0.5 + torch.eye(n)
    expected = torch.stack([torch.linalg.slogdet(m.double())[1] for m in mats]).float()
    torch.testing.assert_close(logabsdet(mats), expected, atol=1e-3, rtol=1e-5)
    # identical matrices in a batch give identical values
    same = logabsdet(mats[:1].expand(8, n, n).contiguous())
    torch.testing.assert_close(same, same[:1].expand(8), atol=1e-6, rtol=0)


def _generic_jvps(fn, x, c, tangents):
    """Reference: one ``torch.func.jvp`` per tangent."""
    from torch.func import jvp

    pairs = [jvp(lambda u: fn(u, c), (x,), (t,)) for t in tangents]
    return pairs[0][0], torch.stack([p[1] for p in pairs])


@settings(max_examples=25, deadline=None)
@given(
    d_in=st.integers(1, 5),
    d_out=st.integers(1, 5),
    n_cond=st.sampled_from([0, 2]),
    n_blocks=st.integers(0, 2),
    k=st.integers(1, 3),
    activation=st.sampled_from([torch.nn.SiLU, torch.nn.Tanh, torch.nn.GELU, torch.nn.Softplus]),
    seed=st.integers(0, 2**16),
)
def test_residual_mlp_tangent_pass_matches_jvp(d_in, d_out, n_cond, n_blocks, k, activation, seed):
    """The hand-written tangent pass equals torch.func.jvp, for any shape and activation."""
    torch.manual_seed(seed)
    skip = d_in == d_out
    net = ResidualMLP(d_in, d_out, 8, n_blocks, n_cond, skip=skip, activation=activation,
                      zero_init=False).double()
    x = torch.randn(5, d_in, dtype=torch.float64)
    c = torch.randn(5, n_cond, dtype=torch.float64) if n_cond else None
    tangents = torch.randn(k, 5, d_in, dtype=torch.float64)
    out, jvps = net.forward_with_tangents(x, c, tangents)
    ref_out, ref_jvps = _generic_jvps(lambda u, cc: net(u, cc), x, c, tangents)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(jvps, ref_jvps)


def test_tangent_pass_gradients():
    """``tangent_grad=True`` differentiates like torch.func.jvp; ``False`` gives constants
    while the primal output keeps its graph."""
    torch.manual_seed(0)
    net = ResidualMLP(3, 3, 8, 2, 1, zero_init=False).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    c = torch.randn(4, 1, dtype=torch.float64)
    tangents = torch.randn(2, 4, 3, dtype=torch.float64)
    _, jvps = net.forward_with_tangents(x, c, tangents)
    params = list(net.parameters())
    grads = torch.autograd.grad(jvps.pow(2).sum(), params, allow_unused=True)
    _, ref = _generic_jvps(lambda u, cc: net(u, cc), x, c, tangents)
    ref_grads = torch.autograd.grad(ref.pow(2).sum(), params, allow_unused=True)
    for p, g, r in zip(params, grads, ref_grads, strict=True):  # the last bias: no gradient
        zero = torch.zeros_like(p)
        torch.testing.assert_close(zero if g is None else g, zero if r is None else r)
    out, const = net.forward_with_tangents(x, c, tangents, tangent_grad=False)
    assert out.requires_grad and not const.requires_grad
    torch.testing.assert_close(const, jvps.detach())


def test_dispatch_uses_the_networks_tangent_pass_and_falls_back():
    """``forward_with_tangents`` takes a network's own pass, else torch.func; both agree, and
    the Jacobian helpers give the same matrices either way."""
    torch.manual_seed(1)
    net = ResidualMLP(4, 4, 16, 2, zero_init=False).double()
    wrapped = lambda u, c=None: net(u, c)  # noqa: E731 - hides the method
    x = torch.randn(6, 4, dtype=torch.float64)
    tangents = torch.randn(3, 6, 4, dtype=torch.float64)
    a = forward_with_tangents(net, x, None, tangents)
    b = forward_with_tangents(wrapped, x, None, tangents)
    one_by_one = forward_with_tangents(wrapped, x, None, tangents, vectorize=False)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(one_by_one, b)
    torch.testing.assert_close(log_abs_det_jacobian(net, x), log_abs_det_jacobian(wrapped, x))
    torch.testing.assert_close(jacobian_on_basis(net, x), batch_jacobian(wrapped, x))


@pytest.mark.parametrize("name", ["sphere", "torus", "so3"])
def test_projected_tangent_pass_matches_jvp(name):
    """``pi o net`` pushes tangents through the network's pass, then the projection."""
    from skfff._torch.mfff import Projected
    from skfff.manifolds import SpecialOrthogonal, Sphere, Torus

    torch.manual_seed(2)
    manifold = {"sphere": Sphere(2), "torus": Torus(2), "so3": SpecialOrthogonal()}[name]
    m = manifold.ambient_dim
    net = ResidualMLP(m, m, 16, 1, zero_init=False).double()
    x = manifold.random_uniform(5, dtype=torch.float64)
    tangents = manifold.project_tangent(x.unsqueeze(0), torch.randn(2, 5, m, dtype=torch.float64))
    got = Projected(net, manifold).forward_with_tangents(x, None, tangents)
    ref = _generic_jvps(lambda u, c: manifold.project(net(u, c)), x, None, tangents)
    torch.testing.assert_close(got, ref)
