"""Tests for the maximum likelihood autoencoder: torch maths and the sklearn estimator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skfff._torch.mlae import (
    decoder_jacobian,
    half_log_det_gram,
    manifold_log_prob,
    mlae_surrogate,
    sample_probes,
)

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------
# torch layer
# --------------------------------------------------------------------------------------


def _linear_pair(a: torch.Tensor, b: torch.Tensor, shift: torch.Tensor):
    """Decoder g(z) = a z + shift and encoder f(x) = b (x - shift)."""

    def decoder(z, c=None):
        return z @ a.T + shift

    def encoder(x, c=None):
        return (x - shift) @ b.T

    return encoder, decoder


def _exact_probes(batch: int, d: int, dtype=torch.float64) -> torch.Tensor:
    """sqrt(d) times the standard basis, for every sample: the trace estimate is exact."""
    eye = torch.eye(d, dtype=dtype) * d**0.5
    return eye[:, None, :].expand(d, batch, d).clone()


@pytest.mark.parametrize("big_d, d", [(5, 2), (7, 3), (4, 1)])
def test_surrogate_gradient_equals_exact_gradient_decoder_side(big_d, d):
    # f is the exact (orthogonal) left inverse of a linear g, parametrised by the decoder
    # matrix A alone: gradient of -surrogate == gradient of 1/2 log det(A^T A) == A (A^T A)^-1
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(big_d, d, dtype=torch.float64, generator=gen).requires_grad_(True)
    shift = torch.randn(big_d, dtype=torch.float64, generator=gen)
    z0 = torch.randn(16, d, dtype=torch.float64, generator=gen)
    x = (z0 @ a.detach().T + shift).detach()

    def encoder(x, c=None):
        return (x - shift) @ torch.linalg.pinv(a).T

    def decoder(z, c=None):
        return z @ a.T + shift

    out = mlae_surrogate(encoder, decoder, x, probes=_exact_probes(16, d))
    (grad_surrogate,) = torch.autograd.grad(-out.surrogate.mean(), a)

    jac = decoder_jacobian(decoder, z0)
    exact = half_log_det_gram(jac).mean()
    (grad_exact,) = torch.autograd.grad(exact, a)

    a0 = a.detach()
    closed_form = a0 @ torch.linalg.inv(a0.T @ a0)
    torch.testing.assert_close(grad_exact, closed_form)
    torch.testing.assert_close(grad_surrogate, grad_exact)
    # on the manifold, f(g(z)) = z and x_hat = x
    torch.testing.assert_close(out.z, z0)
    torch.testing.assert_close(out.x_hat, x)


def test_surrogate_gradient_equals_exact_gradient_encoder_side():
    # The encoder's own parameters B (initialised at A^+): gradient of -surrogate is
    # -A^T, the gradient of -1/2 log det(B B^T), which equals +1/2 log det(A^T A) at B = A^+.
    gen = torch.Generator().manual_seed(1)
    big_d, d = 6, 3
    a = torch.randn(big_d, d, dtype=torch.float64, generator=gen)
    b = torch.linalg.pinv(a).clone().requires_grad_(True)
    shift = torch.zeros(big_d, dtype=torch.float64)
    encoder, decoder = _linear_pair(a, b, shift)
    x = torch.randn(8, d, dtype=torch.float64, generator=gen) @ a.T

    out = mlae_surrogate(encoder, decoder, x, probes=_exact_probes(8, d))
    (grad_b,) = torch.autograd.grad(-out.surrogate.mean(), b)
    (grad_exact,) = torch.autograd.grad(-0.5 * torch.logdet(b @ b.T), b)
    torch.testing.assert_close(grad_b, -a.T)
    torch.testing.assert_close(grad_b, grad_exact)
    torch.testing.assert_close(-0.5 * torch.logdet(b @ b.T), 0.5 * torch.logdet(a.T @ a))
    # surrogate value at a left inverse: tr(B A) = d
    torch.testing.assert_close(out.surrogate, torch.full((8,), float(d), dtype=torch.float64))


def test_surrogate_random_probes_unbiased():
    # one random probe per sample: the batch-mean gradient approaches the exact one
    gen = torch.Generator().manual_seed(2)
    big_d, d, n = 5, 3, 20000
    a = torch.randn(big_d, d, dtype=torch.float64, generator=gen).requires_grad_(True)
    shift = torch.zeros(big_d, dtype=torch.float64)

    def encoder(x, c=None):
        return x @ torch.linalg.pinv(a).T

    def decoder(z, c=None):
        return z @ a.T

    x = (torch.randn(n, d, dtype=torch.float64, generator=gen) @ a.detach().T + shift).detach()
    out = mlae_surrogate(encoder, decoder, x, n_probes=1, generator=gen)
    (grad,) = torch.autograd.grad(-out.surrogate.mean(), a)
    a0 = a.detach()
    expected = a0 @ torch.linalg.inv(a0.T @ a0)
    assert torch.linalg.norm(grad - expected) < 0.05 * torch.linalg.norm(expected)


def test_surrogate_trains_encoder_only_through_volume_term():
    # the log-det surrogate gives the decoder no gradient; the reconstruction gives both
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))
    dec = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.SiLU(), torch.nn.Linear(8, 4))
    x = torch.randn(10, 4)
    out = mlae_surrogate(lambda x, c: enc(x), lambda z, c: dec(z), x)
    grads = torch.autograd.grad(out.surrogate.sum(), list(dec.parameters()), allow_unused=True)
    assert all(g is None or torch.all(g == 0) for g in grads)
    # (the encoder's last bias does not enter J_f: unused)
    grads = torch.autograd.grad(
        out.surrogate.sum(), list(enc.parameters()), retain_graph=True, allow_unused=True
    )
    grads = [g for g in grads if g is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    rec = (out.x_hat - x).pow(2).sum()
    for net in (enc, dec):
        grads = torch.autograd.grad(rec, list(net.parameters()), retain_graph=True)
        assert any(g.abs().sum() > 0 for g in grads)


def test_exact_half_log_det_matches_slogdet_nonlinear():
    torch.manual_seed(3)
    dec = torch.nn.Sequential(
        torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 7)
    ).double()
    z = torch.randn(5, 3, dtype=torch.float64)
    scale = torch.rand(7, dtype=torch.float64) + 0.5
    jac = decoder_jacobian(lambda z, c: dec(z), z)
    expected_jac = torch.stack(
        [torch.autograd.functional.jacobian(dec, zi) for zi in z]
    )  # (5, 7, 3)
    torch.testing.assert_close(jac, expected_jac)
    got = half_log_det_gram(jac)
    expected = 0.5 * torch.linalg.slogdet(expected_jac.mT @ expected_jac)[1]
    torch.testing.assert_close(got, expected)
    # scale: the Jacobian of scale * g(z)
    got_s = half_log_det_gram(jac, scale)
    js = scale[None, :, None] * expected_jac
    torch.testing.assert_close(got_s, 0.5 * torch.linalg.slogdet(js.mT @ js)[1])
    # chunking changes nothing
    chunked = decoder_jacobian(lambda z, c: dec(z), z, max_elements=21)
    torch.testing.assert_close(chunked, jac)


def test_manifold_log_prob_linear_gaussian_closed_form():
    # g(z) = A z: the pushforward of N(0, I) is N(0, A A^T) on the column space of A, whose
    # density w.r.t. the subspace's volume is N(Q^T x; 0, Q^T A A^T Q) for an orthonormal Q
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(5, 2, dtype=torch.float64, generator=gen)
    b = torch.linalg.pinv(a)
    encoder, decoder = _linear_pair(a, b, torch.zeros(5, dtype=torch.float64))
    x = torch.randn(30, 2, dtype=torch.float64, generator=gen) @ a.T
    with torch.no_grad():
        logp, z, x_hat = manifold_log_prob(encoder, decoder, x)
    q = torch.linalg.qr(a).Q
    cov = q.T @ a @ a.T @ q
    ref = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov)
    torch.testing.assert_close(logp, ref.log_prob(x @ q))
    torch.testing.assert_close(x_hat, x)


def test_sample_probes():
    z = torch.zeros(6, 4)
    v = sample_probes(z, 4, torch.Generator().manual_seed(0))
    assert v.shape == (4, 6, 4)
    outer = torch.einsum("kbi,kbj->bij", v, v)  # sum_k v v^T = d I
    torch.testing.assert_close(outer, 4 * torch.eye(4).expand(6, 4, 4), atol=1e-5, rtol=0)
    v1 = sample_probes(z, 1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(v1.norm(dim=-1), torch.full((1, 6), 2.0))
    with pytest.raises(ValueError, match="n_probes"):
        sample_probes(z, 5)
    with pytest.raises(ValueError, match="n_probes"):
        sample_probes(z, 0)
    assert np.isfinite(v.numpy()).all()
