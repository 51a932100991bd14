"""GIN: volume-preserving couplings, class-conditional prior, artificial data, GINTransformer."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp
from scipy.stats import norm

from skfff import GINTransformer
from skfff._torch.gin import GINCoupling, GINFlow, GINTrainingModule, soft_clamp
from skfff._torch.priors import ClassConditionalGaussian
from skfff.datasets import make_nonlinear_ica
from skfff.gin import spectrum_knee

FAST = {"max_epochs": 2, "hidden_features": 8, "n_blocks": 2}


# --------------------------------------------------------------------------- coupling blocks
def _flow64(
    features: int, volume_preserving: bool = True, seed: int = 0, gain: float = 1.0
) -> GINFlow:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    flow = GINFlow(
        features,
        n_blocks=4,
        hidden_features=16,
        volume_preserving=volume_preserving,
        zero_init=False,
        generator=gen,
    ).double()
    with torch.no_grad():  # gain > 1: couplings further from the identity
        for p in flow.parameters():
            p.mul_(gain)
    return flow


@pytest.mark.parametrize("features", [2, 3, 7, 10])
def test_gin_log_det_is_zero_against_slogdet(features, assert_volume_preserving):
    flow = _flow64(features)
    # also checks the couplings are far from trivial: the Jacobian is not a permutation
    assert_volume_preserving(flow, 2.0 * torch.randn(16, features, dtype=torch.float64))


@pytest.mark.parametrize("features", [3, 6])
def test_glow_log_det_matches_slogdet(features):
    """Without the zero-sum shift the accumulated log-scales are the true log|det J| (not 0)."""
    flow = _flow64(features, volume_preserving=False)
    x = torch.randn(16, features, dtype=torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(flow.encode))(x)
    _, logabsdet = torch.linalg.slogdet(jac)
    _, log_det = flow(x)
    torch.testing.assert_close(log_det, logabsdet, atol=1e-10, rtol=1e-10)
    assert logabsdet.abs().max() > 0.1


def test_float32_gin_is_volume_preserving_to_float_precision():
    torch.manual_seed(1)
    flow = GINFlow(8, n_blocks=8, hidden_features=32, zero_init=False)
    x = torch.randn(32, 8)
    jac = torch.func.vmap(torch.func.jacrev(flow.encode))(x)
    assert torch.linalg.slogdet(jac)[1].abs().max() < 1e-4


@pytest.mark.parametrize("volume_preserving", [True, False])
def test_flow_inverse_is_exact(volume_preserving):
    flow = _flow64(5, volume_preserving)
    x = 3.0 * torch.randn(64, 5, dtype=torch.float64)
    z, _ = flow(x)
    assert (z - x).abs().max() > 0.1
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-11, rtol=0)
    torch.testing.assert_close(flow(flow.inverse(x))[0], x, atol=1e-11, rtol=0)


def test_coupling_log_scales_are_clamped_and_zero_sum():
    block = GINCoupling(6, hidden_features=8, zero_init=False, clamp=2.0)
    with torch.no_grad():
        for p in block.parameters():
            p.mul_(50.0)  # huge raw log-scales
    x = torch.randn(100, 6)
    s, _ = block._scale_shift(block.net1, x[:, :3], 3)
    assert s.abs().max() < 2 * 2.0  # soft clamp, then a shift by a clamped mean
    torch.testing.assert_close(s.sum(-1), torch.zeros(100), atol=1e-5, rtol=0)
    raw = torch.linspace(-100, 100, 201)
    assert soft_clamp(raw, 2.0).abs().max() < 2.0
    torch.testing.assert_close(soft_clamp(torch.tensor([1e-3]), 2.0), torch.tensor([0.636e-3]))


def test_identity_initialisation_and_too_few_features():
    flow = GINFlow(4, n_blocks=3)  # zero-initialised: a pure permutation
    x = torch.randn(10, 4)
    z = flow.encode(x)
    torch.testing.assert_close(torch.sort(z, dim=1).values, torch.sort(x, dim=1).values)
    with pytest.raises(ValueError, match="at least 2 features"):
        GINCoupling(1)


# --------------------------------------------------------------------------- prior
def test_class_statistics_and_batch_nll_skip_small_classes():
    prior = ClassConditionalGaussian(3, 2).train()
    z = torch.randn(9, 2, dtype=torch.float64)
    c = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2])  # class 2 has a single sample: skipped
    prior = prior.double()
    mean, var, counts = prior.class_statistics(z, c)
    zn, cn = z.numpy(), c.numpy()
    for k in range(2):
        np.testing.assert_allclose(mean[k].numpy(), zn[cn == k].mean(0))
        np.testing.assert_allclose(var[k].numpy(), zn[cn == k].var(0))
    np.testing.assert_array_equal(counts.numpy(), [4, 4, 1])
    expected = np.mean(
        [
            -norm.logpdf(zn[i], zn[cn == cn[i]].mean(0), zn[cn == cn[i]].std(0)).sum()
            for i in range(8)
        ]
    )
    torch.testing.assert_close(prior.batch_nll(z, c), torch.tensor(expected, dtype=torch.float64))
    # running statistics: first update copies the batch values, class 2 left untouched
    np.testing.assert_allclose(prior.running_mean[:2].numpy(), mean[:2].numpy())
    np.testing.assert_allclose(prior.running_var[2].numpy(), [1.0, 1.0])
    # no class with 2 samples: a zero loss that still backpropagates
    zz = torch.randn(3, 2, requires_grad=True)
    loss = ClassConditionalGaussian(3, 2).batch_nll(zz, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0 and zz.grad is not None


def test_prior_densities_normalised_and_match_scipy():
    prior = ClassConditionalGaussian(3, 1).double().eval()
    means = torch.tensor([[-2.0], [0.5], [3.0]], dtype=torch.float64)
    variances = torch.tensor([[0.3], [1.0], [2.0]], dtype=torch.float64)
    prior.set_statistics(means, variances, torch.tensor([1.0, 2.0, 1.0]))
    grid = torch.linspace(-15, 15, 30001, dtype=torch.float64)[:, None]
    dens = prior.mixture_log_prob(grid).exp()
    assert abs(torch.trapezoid(dens, grid[:, 0]).item() - 1.0) < 1e-6
    c = torch.tensor([1] * 5)
    expected = norm.logpdf(grid[:5, 0].numpy(), 0.5, 1.0)
    np.testing.assert_allclose(prior.log_prob(grid[:5], c).numpy(), expected)
    joint = prior.joint_log_prob(grid[:5]).numpy()
    np.testing.assert_allclose(prior.mixture_log_prob(grid[:5]).numpy(), logsumexp(joint, 1))
    s = prior.sample(torch.full((20000,), 2), torch.Generator().manual_seed(0))
    assert abs(s.mean().item() - 3.0) < 0.05 and abs(s.var().item() - 2.0) < 0.1


def test_learnt_prior_has_parameters_and_fit_statistics_pools_small_classes():
    prior = ClassConditionalGaussian(2, 3, empirical=False)
    assert {n for n, _ in prior.named_parameters()} == {"mean", "log_std"}
    z = torch.randn(50, 3)
    loss = prior.train().batch_nll(z, torch.zeros(50, dtype=torch.long))
    loss.backward()
    assert prior.mean.grad is not None
    emp = ClassConditionalGaussian(2, 3)
    c = torch.zeros(50, dtype=torch.long)
    c[0] = 1
    emp.fit_statistics(z, c)
    torch.testing.assert_close(emp.statistics()[1][1], z.var(0, unbiased=False))
    torch.testing.assert_close(emp.log_weights.exp(), torch.tensor([0.98, 0.02]))


def test_training_module_losses():
    torch.manual_seed(0)
    module = GINTrainingModule(GINFlow(4, 2), ClassConditionalGaussian(2, 4), noise_std=0.0)
    x = torch.randn(40, 4)
    c = (torch.arange(40) % 2).float()[:, None]
    loss = module.training_loss(x, c)
    z = module.flow.encode(x)
    expected = module.prior.batch_nll(z, c[:, 0].long()) / 4
    torch.testing.assert_close(loss, expected)
    module.eval()
    val = module.validation_loss(x, c)
    torch.testing.assert_close(val, -module.prior.log_prob(z, c[:, 0].long()).mean())


# --------------------------------------------------------------------------- data
def test_make_nonlinear_ica():
    X, y, latents = make_nonlinear_ica(3000, random_state=0)
    assert X.shape == latents.shape == (3000, 10) and y.shape == (3000,)
    assert X.dtype == np.float64 and set(np.unique(y)) == set(range(5))
    np.testing.assert_allclose(latents[:, 2:].std(0), 0.01, rtol=0.1)
    assert latents[:, :2].std(0).min() > 0.5
    # a non-trivial mixing: no data column is a copy of an informative latent
    corr = np.abs(np.corrcoef(X.T, latents[:, :2].T)[:10, 10:])
    assert corr.max() < 0.999
    X2, y2, l2 = make_nonlinear_ica(3000, random_state=0)
    np.testing.assert_array_equal(X, X2)
    assert not np.allclose(make_nonlinear_ica(3000, random_state=1)[0], X)
    with pytest.raises(ValueError, match="n_informative"):
        make_nonlinear_ica(10, n_informative=11)


# --------------------------------------------------------------------------- estimator
def _mcc(Z: np.ndarray, S: np.ndarray) -> float:
    """Mean |correlation| after the best matching of columns (linear_sum_assignment)."""
    k = S.shape[1]
    corr = np.abs(np.corrcoef(Z.T, S.T)[: Z.shape[1], Z.shape[1] :])
    rows, cols = linear_sum_assignment(-corr)
    assert len(rows) == k
    return float(corr[rows, cols].mean())


@pytest.fixture(scope="module")
def artificial():
    X, y, latents = make_nonlinear_ica(3000, random_state=3)
    gin = GINTransformer(
        hidden_features=10, lr=1e-2, max_epochs=40, batch_size=500, random_state=0
    ).fit(X, y)
    return gin, X, y, latents


def test_artificial_experiment_recovers_informative_latents(artificial):
    gin, X, y, latents = artificial
    assert gin.n_informative_ == 2
    assert gin.spectrum_gap_ > np.log(10.0)  # a sharp knee: > one decade
    Z = gin.transform(X)
    assert _mcc(Z[:, :2], latents[:, :2]) >= 0.9
    # the spectrum is sorted and the transform's columns follow it
    assert np.all(np.diff(gin.latent_std_) <= 0)
    # latent_std_ is measured on the noisy inputs the model was trained on
    rng = np.random.default_rng(0)
    Zn = gin.transform(X + gin.noise_std * rng.standard_normal(X.shape))
    within = np.sqrt(np.mean([Zn[y == k].var(0) for k in range(5)], axis=0))
    np.testing.assert_allclose(within, gin.latent_std_, rtol=0.05)
    # validation NLL improved during training (early stopping has a criterion to follow)
    valid = gin.history_[:, "valid_loss"]
    assert np.isfinite(valid).all() and valid[-1] < valid[0] - 10


def test_round_trip_and_volume_preservation(artificial):
    gin, X, y, _ = artificial
    Z = gin.transform(X[:200])
    np.testing.assert_allclose(gin.inverse_transform(Z), X[:200], atol=1e-4)
    flow = pickle.loads(pickle.dumps(gin.module_.flow)).double()
    x = torch.as_tensor(X[:20])
    jac = torch.func.vmap(torch.func.jacrev(flow.encode))(x)
    assert torch.linalg.slogdet(jac)[1].abs().max() < 1e-9


def test_score_samples_exact_and_mixture(artificial):
    gin, X, y, _ = artificial
    Z = gin.transform(X[:100])
    per_class = np.stack(
        [
            norm.logpdf(Z, gin.class_means_[k], np.sqrt(gin.class_variances_[k])).sum(1)
            for k in range(5)
        ],
        axis=1,
    )
    np.testing.assert_allclose(
        gin.score_samples(X[:100], y[:100]), per_class[np.arange(100), y[:100]]
    )
    mix = logsumexp(per_class + np.log(gin.class_weights_), axis=1)
    np.testing.assert_allclose(gin.score_samples(X[:100]), mix)
    assert gin.score(X[:100], y[:100]) == pytest.approx(per_class[np.arange(100), y[:100]].mean())
    with pytest.raises(ValueError, match="not seen in fit"):
        gin.score_samples(X[:3], [0, 1, 7])


def test_sample_follows_the_class_prior(artificial):
    gin, X, y, _ = artificial
    Xs = gin.sample(2000, y=3, random_state=0)
    assert Xs.shape == (2000, 10) and np.isfinite(Xs).all()
    Zs = gin.transform(Xs)
    sd = np.sqrt(gin.class_variances_[3, :2])
    assert np.all(np.abs(Zs[:, :2].mean(0) - gin.class_means_[3, :2]) < 4 * sd / np.sqrt(2000))
    np.testing.assert_allclose(Zs[:, :2].std(0), sd, rtol=0.1)
    np.testing.assert_array_equal(gin.sample(5, random_state=1), gin.sample(5, random_state=1))
    assert list(gin.get_feature_names_out()) == [f"gintransformer{i}" for i in range(10)]
    with pytest.raises(ValueError, match="positive integer"):
        gin.sample(0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_configuration(seed):
    """The paper's setting: 10 000 points, batch 1000, lr 1e-2, 80 epochs, width-10 couplings."""
    X, y, latents = make_nonlinear_ica(10_000, random_state=seed)
    gin = GINTransformer(
        hidden_features=10, lr=1e-2, max_epochs=80, batch_size=1000, random_state=seed
    ).fit(X, y)
    assert gin.n_informative_ == 2
    assert _mcc(gin.transform(X)[:, :2], latents[:, :2]) >= 0.95


def test_spectrum_knee_and_threshold():
    assert spectrum_knee(np.array([3.0, 2.0, 0.01, 0.009])) == (2, pytest.approx(np.log(200)))
    assert spectrum_knee(np.array([1.0, 0.5]))[0] == 1
    X, y, _ = make_nonlinear_ica(300, random_state=0)
    gin = GINTransformer(**FAST, informative_threshold=0.05, random_state=0).fit(X, y)
    assert gin.n_informative_ == int(np.sum(gin.latent_std_ > 0.05))


def test_fit_without_y_warns_and_is_a_single_gaussian():
    X, _, _ = make_nonlinear_ica(300, random_state=0)
    with pytest.warns(UserWarning, match="identifiab"):
        gin = GINTransformer(**FAST, random_state=0).fit(X)
    assert gin.classes_ is None and gin.class_means_.shape == (1, 10)
    np.testing.assert_allclose(gin.score_samples(X[:5]), gin.score_samples(X[:5]))
    with pytest.raises(ValueError, match="without y"):
        gin.score_samples(X[:5], np.zeros(5))


def test_bad_input():
    X, y, _ = make_nonlinear_ica(100, random_state=0)
    with pytest.raises(ValueError, match="1 feature"):
        GINTransformer(**FAST).fit(X[:, :1], y)
    with pytest.raises(ValueError, match="Unknown label type"):
        GINTransformer(**FAST).fit(X, np.linspace(0, 1, 100))
    with pytest.raises(ValueError, match="clamp"):
        GINTransformer(clamp=0.0).fit(X, y)
    gin = GINTransformer(**FAST, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="rows"):
        gin.score_samples(X[:5], y[:4])


def test_early_stopping_custom_subnet_and_warm_start():
    X, y, _ = make_nonlinear_ica(400, n_features=4, random_state=0)
    gin = GINTransformer(
        subnet=lambda i, o: torch.nn.Sequential(
            torch.nn.Linear(i, 16), torch.nn.Tanh(), torch.nn.Linear(16, o)
        ),
        lr=1e-2,
        max_epochs=200,
        batch_size=100,
        early_stopping=True,
        patience=3,
        random_state=0,
    ).fit(X, y)
    assert gin.n_iter_ < 200  # stopped on the held-out NLL
    assert isinstance(gin.module_.flow.layers[0].net1[1], torch.nn.Tanh)
    best = np.min(gin.history_[:, "valid_loss"])
    assert np.isfinite(best)
    gin.set_params(warm_start=True, max_epochs=1, early_stopping=False)
    with pytest.raises(ValueError, match="warm_start"):
        gin.fit(X, y % 2)
