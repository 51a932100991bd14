"""Tests for the maximum likelihood autoencoder: torch maths and the sklearn estimator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skfff import MLAutoencoder
from skfff._torch.jacobian import half_log_det_gram, jacobian_on_basis
from skfff._torch.mlae import projection_log_prob
from skfff._torch.surrogates import orthonormal_probes, volume_change_surrogate


def mlae_surrogate(encoder, decoder, x, **kwargs):
    """The shared surrogate with the MLAE's scaled orthonormal probes."""
    kwargs.setdefault("probes", orthonormal_probes)
    return volume_change_surrogate(encoder, decoder, x, **kwargs)

torch.set_num_threads(1)

FAST = {"max_epochs": 3, "hidden_features": 16, "n_blocks": 1}


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

    jac = jacobian_on_basis(decoder, z0)
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
    jac = jacobian_on_basis(lambda z, c: dec(z), z)
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
    chunked = jacobian_on_basis(lambda z, c: dec(z), z, max_elements=21)
    torch.testing.assert_close(chunked, jac)


def test_projection_log_prob_linear_gaussian_closed_form():
    # g(z) = A z: the pushforward of N(0, I) is N(0, A A^T) on the column space of A, whose
    # density w.r.t. the subspace's volume is N(Q^T x; 0, Q^T A A^T Q) for an orthonormal Q
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(5, 2, dtype=torch.float64, generator=gen)
    b = torch.linalg.pinv(a)
    encoder, decoder = _linear_pair(a, b, torch.zeros(5, dtype=torch.float64))
    x = torch.randn(30, 2, dtype=torch.float64, generator=gen) @ a.T
    with torch.no_grad():
        logp, z, x_hat = projection_log_prob(encoder, decoder, x)
    q = torch.linalg.qr(a).Q
    cov = q.T @ a @ a.T @ q
    ref = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov)
    torch.testing.assert_close(logp, ref.log_prob(x @ q))
    torch.testing.assert_close(x_hat, x)


def test_orthonormal_probes():
    z = torch.zeros(6, 4)
    v = orthonormal_probes(z, 4, torch.Generator().manual_seed(0))
    assert v.shape == (4, 6, 4)
    outer = torch.einsum("kbi,kbj->bij", v, v)  # sum_k v v^T = d I
    torch.testing.assert_close(outer, 4 * torch.eye(4).expand(6, 4, 4), atol=1e-5, rtol=0)
    v1 = orthonormal_probes(z, 1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(v1.norm(dim=-1), torch.full((1, 6), 2.0))
    with pytest.raises(ValueError, match="n_probes"):
        orthonormal_probes(z, 5)
    with pytest.raises(ValueError, match="n_probes"):
        orthonormal_probes(z, 0)
    assert np.isfinite(v.numpy()).all()


# --------------------------------------------------------------------------------------
# estimator
# --------------------------------------------------------------------------------------


def _curve(n: int, noise: float, seed: int = 0):
    """A 1-D manifold in 3-D, t ~ N(0, 1), plus isotropic Gaussian noise."""
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((n, 1))
    X = np.hstack([t, np.sin(t), 0.5 * t**2])
    return X + noise * rng.standard_normal(X.shape), t[:, 0]


@pytest.fixture(scope="module")
def curve_model():
    noise = 0.05
    X, t = _curve(1500, noise)
    ae = MLAutoencoder(
        n_components=1, hidden_features=64, lr=3e-3, max_epochs=80, patience=20,
        random_state=0,
    ).fit(X)
    return ae, X, t, noise


def test_known_manifold_reconstruction_and_latent(curve_model):
    ae, X, t, noise = curve_model
    X_test, t_test = _curve(1000, noise, seed=1)
    # the off-manifold noise lives in 2 of 3 directions: E|x - proj x|^2 = 2 noise^2
    err = ae.reconstruction_error(X_test)
    assert err.shape == (1000,)
    assert err.mean() < 1.6 * (2 * noise**2)
    # the codes are standard normal (the model's latent) and track the true coordinate
    z = ae.transform(X_test)[:, 0]
    assert stats.kstest(z, "norm").pvalue > 0.01
    assert abs(np.corrcoef(z, t_test)[0, 1]) > 0.99
    # decoding the codes lands close to the noiseless curve
    clean, _ = _curve(1000, 0.0, seed=1)
    X_hat = ae.inverse_transform(ae.transform(clean))
    assert np.mean(np.sum((X_hat - clean) ** 2, axis=1)) < 2 * noise**2
    # samples lie on the learnt manifold: f(g(z)) ~ z, so re-projecting a sample moves it
    # far less than the noise
    S = ae.sample(500, random_state=0)
    assert S.shape == (500, 3)
    np.testing.assert_allclose(ae.sample(5, random_state=3), ae.sample(5, random_state=3))
    assert ae.reconstruction_error(S).mean() < 0.2 * noise**2


def test_history_records_exact_validation_terms(curve_model):
    ae = curve_model[0]
    row = ae.history_[-1]
    for key in ("train_loss", "valid_loss", "valid_nll", "valid_reconstruction"):
        assert np.isfinite(row[key])
    assert row["valid_loss"] == pytest.approx(
        ae.beta * row["valid_reconstruction"] + row["valid_nll"], rel=1e-4
    )


def test_linear_model_matches_probabilistic_pca():
    # Gaussian data, linear encoder and decoder: the MLAE manifold density plus an
    # isotropic Gaussian off the manifold is probabilistic PCA's log-likelihood
    rng = np.random.default_rng(0)
    n, big_d, d = 1500, 5, 2
    rot = np.linalg.qr(rng.standard_normal((big_d, big_d)))[0]
    X = (rng.standard_normal((n, big_d)) * [3.0, 1.5, 0.3, 0.25, 0.2]) @ rot.T + 1.0
    pca = PCA(d).fit(X)

    def linear(n_in, n_out, n_cond):
        return torch.nn.Linear(n_in, n_out)

    ae = MLAutoencoder(
        n_components=d, encoder=linear, decoder=linear, scaling="global", lr=1e-2,
        max_epochs=150, patience=150, random_state=0,
    ).fit(X)
    manifold = ae.score_samples(X)
    err = ae.reconstruction_error(X)
    s2 = err.mean() / (big_d - d)
    full = manifold - err / (2 * s2) - (big_d - d) / 2 * np.log(2 * np.pi * s2)
    ref = pca.score_samples(X)
    assert s2 == pytest.approx(pca.noise_variance_, rel=0.05)
    assert full.mean() == pytest.approx(ref.mean(), abs=0.05)
    assert np.mean(np.abs(full - ref)) < 0.15
    # the in-subspace part alone: log N(U^T (x - mean); 0, diag(explained variance))
    proj = (X - pca.mean_) @ pca.components_.T
    in_plane = stats.multivariate_normal(np.zeros(d), np.diag(pca.explained_variance_))
    assert manifold.mean() == pytest.approx(in_plane.logpdf(proj).mean(), abs=0.05)
    # the latent codes are whitened
    np.testing.assert_allclose(np.cov(ae.transform(X).T), np.eye(d), atol=0.1)


def test_scaling_options():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((100, 3)) * [1.0, 10.0, 0.1] + [5.0, 0.0, -1.0]
    X[:, 2] = 7.0  # a constant column keeps scale 1
    fitted = {
        scaling: MLAutoencoder(n_components=1, scaling=scaling, **FAST, random_state=0).fit(X)
        for scaling in ("standard", "global", None)
    }
    np.testing.assert_allclose(fitted["standard"].mean_, X.mean(axis=0))
    np.testing.assert_allclose(fitted["standard"].scale_, np.r_[X.std(axis=0)[:2], 1.0])
    glob = fitted["global"].scale_
    assert np.ptp(glob) == 0.0
    assert glob[0] == pytest.approx(np.sqrt(X.var(axis=0).sum() / 3))
    np.testing.assert_array_equal(fitted[None].mean_, 0.0)
    np.testing.assert_array_equal(fitted[None].scale_, 1.0)
    for ae in fitted.values():
        assert np.isfinite(ae.score_samples(X)).all()


def test_score_samples_units_follow_the_scaling():
    # rescaling the data by c rescales a 1-D manifold's length by c: log-density - log c
    X, _ = _curve(400, 0.01, seed=2)
    ae = MLAutoencoder(n_components=1, hidden_features=16, max_epochs=5, random_state=0)
    s1 = ae.fit(X).score_samples(X)
    s2 = ae.fit(10.0 * X).score_samples(10.0 * X)
    np.testing.assert_allclose(s2, s1 - np.log(10.0), atol=1e-3)
    np.testing.assert_allclose(ae.reconstruction_error(10.0 * X),
                               100.0 * MLAutoencoder(n_components=1, hidden_features=16,
                                                     max_epochs=5, random_state=0)
                               .fit(X).reconstruction_error(X), rtol=1e-3, atol=1e-6)


def test_pipeline_with_logistic_regression():
    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]
    pipe = make_pipeline(
        StandardScaler(),
        MLAutoencoder(
            n_components=10, max_epochs=15, hidden_features=64, lr=3e-3, batch_size=64,
            random_state=0,
        ),
        LogisticRegression(max_iter=500),
    )
    acc = cross_val_score(pipe, X, y, cv=3).mean()
    assert acc > 0.8  # chance is 0.1


def test_warm_start_keeps_the_first_scaling():
    X, _ = _curve(100, 0.05)
    ae = MLAutoencoder(n_components=1, **FAST, warm_start=True, random_state=0).fit(X)
    mean, scale = ae.mean_.copy(), ae.scale_.copy()
    ae.fit(3.0 * X + 1.0)
    np.testing.assert_array_equal(ae.mean_, mean)  # the net keeps the units it learnt in
    np.testing.assert_array_equal(ae.scale_, scale)


def test_bad_parameters_to_fit():
    X = np.random.default_rng(0).standard_normal((20, 3))
    with pytest.raises(ValueError, match="smaller than the number of features"):
        MLAutoencoder(n_components=3, **FAST).fit(X)
    with pytest.raises(ValueError, match="n_hutchinson"):
        MLAutoencoder(n_components=1, n_hutchinson=2, **FAST).fit(X)
    with pytest.raises(ValueError, match="beta"):
        MLAutoencoder(beta=0.0).fit(X)
    with pytest.raises(ValueError, match="scaling"):
        MLAutoencoder(scaling="minmax").fit(X)
    with pytest.raises(ValueError, match="n_samples"):
        MLAutoencoder(n_components=1, **FAST).fit(X).sample(0)
