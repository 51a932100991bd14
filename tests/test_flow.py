"""FreeFormFlow: exact densities, latent codes, conditioning, the off-data term.

What every estimator shares (sklearn checks, persistence, seeding, bad input, devices) is
in test_common.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skfff import FreeFormFlow
from skfff.datasets import make_gaussian_mixture_2d, make_nonlinear_gaussian

FAST = {"max_epochs": 3, "hidden_features": 16, "n_blocks": 1}

@pytest.fixture(scope="module")
def gaussian_flow():
    """A flow fitted on a correlated 2-D Gaussian (known density)."""
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.8], [0.8, 1.0]]) * 4.0
    mean = np.array([1.0, -2.0])
    X = rng.multivariate_normal(mean, cov, size=2000)
    flow = FreeFormFlow(max_epochs=150, hidden_features=32, n_blocks=2, random_state=0).fit(X)
    return flow, multivariate_normal(mean, cov), rng


def test_heldout_nll_close_to_gaussian_entropy(gaussian_flow):
    flow, dist, rng = gaussian_flow
    Xt = dist.rvs(size=4000, random_state=1)
    nll = -flow.score(Xt)
    assert abs(nll - dist.entropy()) < 0.05
    # pointwise agreement with the true log-density in the bulk
    bulk = Xt[dist.logpdf(Xt) > dist.logpdf(dist.mean) - 2.0][:200]  # within ~2 sigma
    err = np.abs(flow.score_samples(bulk) - dist.logpdf(bulk))
    assert np.median(err) < 0.08 and err.max() < 0.4


def test_density_integrates_to_one(gaussian_flow):
    flow, dist, _ = gaussian_flow
    grid = np.linspace(-12, 12, 161)
    xx, yy = np.meshgrid(grid + 1.0, grid - 2.0)
    pts = np.column_stack([xx.ravel(), yy.ravel()])
    cell = (grid[1] - grid[0]) ** 2
    total = np.exp(flow.score_samples(pts)).sum() * cell
    assert total == pytest.approx(1.0, abs=0.05)


@pytest.fixture(scope="module")
def multimodal_flow():
    X, _ = make_gaussian_mixture_2d(1500, random_state=0)
    return FreeFormFlow(max_epochs=25, hidden_features=64, random_state=0).fit(X)


def _grid_integral(flow) -> float:
    grid = np.linspace(-8, 8, 161)
    pts = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    log_p = flow.score_samples(pts)
    assert np.isfinite(log_p).all()
    return float(np.exp(log_p).sum() * (grid[1] - grid[0]) ** 2)


def test_multimodal_density_integrates_to_one(multimodal_flow):
    assert _grid_integral(multimodal_flow) == pytest.approx(1.0, abs=0.05)


def test_normalization_constant_agrees_with_the_grid(multimodal_flow):
    """The importance-sampling check gives the grid's integral, with an honest error bar."""
    estimate, stderr = multimodal_flow.normalization_constant(20_000, random_state=0)
    assert 0 < stderr < 0.02
    assert abs(estimate - _grid_integral(multimodal_flow)) < 4 * stderr + 0.01
    again = multimodal_flow.normalization_constant(20_000, random_state=0)
    assert again == (estimate, stderr)
    with pytest.raises(ValueError, match="n_points"):
        multimodal_flow.normalization_constant(1)


def test_normalization_constant_sees_missing_mass():
    """A density scaled by 1/2 (shifted log-density) is reported as integrating to 1/2."""
    X = np.random.default_rng(0).normal(size=(800, 3))
    flow = FreeFormFlow(max_epochs=10, hidden_features=16, n_blocks=1, random_state=0).fit(X)
    full, _ = flow.normalization_constant(20_000, random_state=0)
    log_prob = flow.module_.log_prob
    flow.module_.log_prob = lambda x, c=None, via="decoder": log_prob(x, c, via) - np.log(2.0)
    half, stderr = flow.normalization_constant(20_000, random_state=0)
    assert half == pytest.approx(full / 2, rel=1e-5)
    assert abs(full - 1.0) < 5 * stderr * 2 + 0.05


def test_fit_checks_the_normalisation_in_low_dimension(multimodal_flow):
    """``fit`` stores the end-of-fit integral (2-D: checked by default) and it agrees with
    the grid; above 3 features, for conditional flows, or when switched off, it is None."""
    estimate, stderr = multimodal_flow.normalization_
    assert abs(estimate - _grid_integral(multimodal_flow)) < 4 * stderr + 0.01
    X4 = np.random.default_rng(0).normal(size=(200, 4))
    assert FreeFormFlow(**FAST, random_state=0).fit(X4).normalization_ is None
    X2 = X4[:, :2]
    off = FreeFormFlow(**FAST, check_normalization=False, random_state=0).fit(X2)
    assert off.normalization_ is None
    cond = FreeFormFlow(**FAST, conditional=True, random_state=0).fit(X2, X4[:, 2] > 0)
    assert cond.normalization_ is None
    forced = FreeFormFlow(**FAST, check_normalization=True, random_state=0).fit(X4)
    assert forced.normalization_ is not None and np.isfinite(forced.normalization_).all()


def test_fit_warns_when_the_density_does_not_integrate_to_one():
    """A decoder that is not the encoder's inverse (here g = 2 f^-1, frozen by a tiny lr)
    gives a density of total mass 1/4 in 2-D: fit says so."""
    import torch

    def linear(scale):
        net = torch.nn.Linear(2, 2, bias=False)
        torch.nn.init.eye_(net.weight)
        net.weight.data.mul_(scale)
        return net

    X = np.random.default_rng(0).normal(size=(300, 2))
    flow = FreeFormFlow(encoder=linear(1.0), decoder=linear(2.0), lr=1e-9, max_epochs=1,
                        log_prob_via="decoder", renormalize=False, latent="normal",
                        random_state=0)
    with pytest.warns(UserWarning, match=r"integrates to 0\.2[45].*renormalize=True"):
        flow.fit(X)
    assert flow.normalization_[0] == pytest.approx(0.25, rel=0.03)
    assert flow.log_normalizer_ == 0.0
    x = flow._scaled(X[:5])
    true = multivariate_normal(np.zeros(2)).logpdf(x) - np.log(flow.scale_).sum()
    np.testing.assert_allclose(flow.score_samples(X[:5]), true - np.log(4.0), atol=1e-4)
    # renormalize (the default) divides by the measured integral: the true density again,
    # up to the estimate's Monte Carlo error, and without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        flow.set_params(renormalize=True).fit(X)
    assert flow.log_normalizer_ == pytest.approx(np.log(flow.normalization_[0]))
    np.testing.assert_allclose(flow.score_samples(X[:5]), true, atol=0.03)
    # the public integral measures what score_samples returns
    assert flow.normalization_constant(20_000, random_state=1)[0] == pytest.approx(1, abs=0.03)
    # "auto" takes the encoder density instead: f is one-to-one, so it is normalised
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        auto = flow.set_params(log_prob_via="auto", renormalize=False).fit(X)
    assert auto.log_prob_via_ == "encoder"
    assert auto.normalization_[0] == pytest.approx(1.0, abs=0.02)
    np.testing.assert_allclose(auto.score_samples(X[:5]), true, atol=1e-4)


def test_renormalize_only_where_the_check_ran():
    """Above 3 features (no check by default), conditional, or with the check off, nothing
    is divided; a forced check in 4-D divides by its estimate."""
    X = np.random.default_rng(0).normal(size=(200, 4))
    plain = FreeFormFlow(**FAST, random_state=0).fit(X)
    assert plain.normalization_ is None and plain.log_normalizer_ == 0.0
    cond = FreeFormFlow(**FAST, conditional=True, random_state=0).fit(X[:, :2], X[:, 2] > 0)
    assert cond.log_normalizer_ == 0.0
    off = FreeFormFlow(**FAST, check_normalization=False, random_state=0).fit(X[:, :2])
    assert off.log_normalizer_ == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a 3-epoch fit may be imprecise
        forced = FreeFormFlow(**FAST, check_normalization=True, log_prob_via="decoder",
                              random_state=0).fit(X)
        raw = clone(forced).set_params(renormalize=False).fit(X)
    assert forced.log_normalizer_ == pytest.approx(np.log(forced.normalization_[0]))
    np.testing.assert_allclose(forced.score_samples(X[:5]),
                               raw.score_samples(X[:5]) - forced.log_normalizer_, atol=1e-6)


def test_renormalize_warns_when_the_estimate_is_imprecise(monkeypatch):
    """An integral whose standard error is over 1.5 % of it is still divided by, with a
    warning that says how uncertain the log-densities are."""
    X = np.random.default_rng(0).normal(size=(200, 2))
    flow = FreeFormFlow(**FAST, log_prob_via="decoder", random_state=0)
    monkeypatch.setattr(FreeFormFlow, "_integral", lambda self, *a, **k: (2.0, 0.1))
    with pytest.warns(UserWarning, match=r"integrates to 2 \+- 0\.1.*divides.*uncertain"):
        flow.fit(X)
    assert flow.log_normalizer_ == pytest.approx(np.log(2.0))
    # and a precise estimate is divided by silently
    monkeypatch.setattr(FreeFormFlow, "_integral", lambda self, *a, **k: (2.0, 0.01))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        flow.fit(X)
    assert flow.log_normalizer_ == pytest.approx(np.log(2.0))


def test_encoder_and_decoder_densities_agree_when_g_inverts_f(gaussian_flow):
    flow, dist, _ = gaussian_flow
    X = dist.rvs(size=300, random_state=3)
    via = {v: flow.set_params(log_prob_via=v).score_samples(X) for v in ("decoder", "encoder")}
    flow.set_params(log_prob_via="auto")
    assert np.median(np.abs(via["decoder"] - via["encoder"])) < 0.03


@pytest.mark.parametrize(
    ("decoder", "encoder", "chosen"),
    [((1.5, 0.01), (1.2, 0.01), "encoder"), ((1.01, 0.01), (1.01, 0.01), "decoder"),
     ((1.1, 0.01), (0.5, 0.01), "decoder"), ((2.0, 0.1), None, "decoder")],
)
def test_auto_takes_the_better_normalised_density(monkeypatch, decoder, encoder, chosen):
    """The nearer integral to 1 in ratio wins; the decoder's on a tie or when the encoder's
    cannot be computed (None: non-finite log-densities)."""
    X = np.random.default_rng(0).normal(size=(200, 2))
    flow = FreeFormFlow(**FAST, check_normalization=False, random_state=0).fit(X)

    def integral(via, *args, **kwargs):
        if via == "encoder" and encoder is None:
            raise FloatingPointError("not finite")
        return {"decoder": decoder, "encoder": encoder}[via]

    monkeypatch.setattr(flow, "_integral", integral)
    flow.log_prob_via_, flow.normalization_ = "decoder", decoder
    flow._take_the_better_normalised()
    assert flow.log_prob_via_ == chosen
    assert flow.normalization_ == (decoder if chosen == "decoder" else encoder)


@pytest.mark.parametrize(
    ("renormalize", "encoder", "chosen"),
    [(True, (1.2, 0.01), "encoder"), (False, (1.2, 0.01), "decoder"),
     (True, (1.2, 0.1), "decoder")],
)
def test_auto_with_renormalize_prefers_a_precise_encoder(monkeypatch, renormalize, encoder,
                                                         chosen):
    """With ``renormalize`` both densities end normalised, and the encoder's is taken when
    its integral is precise (two standard errors within 3 %), even if the decoder's is the
    nearer to 1; otherwise the nearer to 1 wins as without it."""
    X = np.random.default_rng(0).normal(size=(200, 2))
    decoder = (1.0, 0.001)
    monkeypatch.setattr(FreeFormFlow, "_integral",
                        lambda self, via, *a, **k: {"decoder": decoder, "encoder": encoder}[via])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        flow = FreeFormFlow(**FAST, renormalize=renormalize, random_state=0).fit(X)
    assert flow.log_prob_via_ == chosen
    expected = {"decoder": decoder, "encoder": encoder}[chosen]
    assert flow.normalization_ == expected
    assert flow.log_normalizer_ == pytest.approx(np.log(expected[0]) if renormalize else 0.0)


def test_round_trip_and_shapes(gaussian_flow):
    flow, dist, _ = gaussian_flow
    X = dist.rvs(size=50, random_state=2)
    Z = flow.transform(X)
    assert Z.shape == X.shape and Z.dtype == np.float64
    np.testing.assert_allclose(flow.inverse_transform(Z), X, atol=0.05)
    # latent codes of data follow the latent distribution: with "auto" on Gaussian data a
    # mixture of one component, a Gaussian fitted to the standardised rows
    assert flow.latent_ == "mixture" and flow.n_latent_components_ == 1
    latent = flow.module_.latent
    R = latent.rotation.numpy()
    mean = latent.base.means[0].numpy() @ R.T
    cov = R @ np.diag(latent.base.log_vars[0].exp().numpy()) @ R.T
    Zbig = flow.transform(dist.rvs(size=3000, random_state=3))
    np.testing.assert_allclose(Zbig.mean(0), mean, atol=0.1)
    np.testing.assert_allclose(np.cov(Zbig.T), cov, atol=0.15)
    assert list(flow.get_feature_names_out()) == ["freeformflow0", "freeformflow1"]


def test_samples_follow_the_density(gaussian_flow):
    flow, dist, _ = gaussian_flow
    S = flow.sample(4000, random_state=0)
    assert S.shape == (4000, 2)
    np.testing.assert_allclose(S.mean(0), dist.mean, atol=0.15)
    np.testing.assert_allclose(np.cov(S.T), dist.cov, atol=0.4)
    np.testing.assert_array_equal(S, flow.sample(4000, random_state=0))
    assert not np.array_equal(S, flow.sample(4000, random_state=1))


def test_history_records_exact_validation_nll(gaussian_flow):
    flow, _, _ = gaussian_flow
    valid = np.asarray(flow.history_[:, "valid_nll"])
    rec = np.asarray(flow.history_[:, "valid_reconstruction"])
    assert len(valid) == flow.n_iter_
    assert np.all(np.isfinite(valid))
    assert valid[-1] < valid[0]
    np.testing.assert_allclose(flow.history_[:, "valid_loss"], valid + flow.beta * rec, rtol=1e-5)


def test_default_network_learns_a_curved_4d_density():
    """Regression guard for the defaults: a rotated 4-D chain of bananas (known density).

    The default network and schedule, shortened to 80 epochs (about 10 s), come within
    0.45 nats of the true entropy (0.31 when written) and beat the best single Gaussian by
    more than 0.3 nats; a change that breaks training on curved densities fails here.
    """
    X, log_density = make_nonlinear_gaussian(2000, n_features=4, random_state=0)
    X_test, _ = make_nonlinear_gaussian(5000, n_features=4, random_state=1)
    entropy = -log_density(X_test).mean()
    flow = FreeFormFlow(max_epochs=80, random_state=0).fit(X)
    gap = -flow.score(X_test) - entropy
    gaussian_gap = -multivariate_normal(X.mean(0), np.cov(X.T)).logpdf(X_test).mean() - entropy
    assert 0 < gap < 0.45, gap
    assert gaussian_gap - gap > 0.3, (gap, gaussian_gap)


def test_conditional_continuous_follows_y():
    """x | y ~ N(2y, 0.3^2): the conditional flow's density and samples follow y."""
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, size=2000)
    X = (2 * y + 0.3 * rng.standard_normal(2000))[:, None]
    flow = FreeFormFlow(conditional=True, max_epochs=120, hidden_features=32, random_state=0)
    flow.fit(X, y)
    for y0 in (-0.5, 0.5):
        s = flow.sample(3000, y=[y0], random_state=0)
        assert s.mean() == pytest.approx(2 * y0, abs=0.1)
        assert s.std() == pytest.approx(0.3, abs=0.06)
    xs = np.linspace(-3, 3, 301)[:, None]
    for y0 in (-0.5, 0.5):
        logp = flow.score_samples(xs, y=np.full(301, y0))
        assert xs[np.argmax(logp), 0] == pytest.approx(2 * y0, abs=0.15)
        assert np.exp(logp).sum() * 0.02 == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="pass y"):
        flow.score_samples(xs)


def test_conditional_categorical():
    rng = np.random.default_rng(1)
    y = rng.choice(["a", "b"], size=1500)
    X = np.where(y[:, None] == "a", -2.0, 2.0) + 0.5 * rng.standard_normal((1500, 2))
    flow = FreeFormFlow(conditional=True, max_epochs=80, hidden_features=32, random_state=0)
    flow.fit(X, y)
    assert list(flow.classes_) == ["a", "b"]
    assert flow.sample(1000, y=["a"], random_state=0).mean() == pytest.approx(-2, abs=0.2)
    assert flow.sample(1000, y=["b"], random_state=0).mean() == pytest.approx(2, abs=0.2)
    pts = np.array([[-2.0, -2.0], [2.0, 2.0]])
    la, lb = flow.score_samples(pts, ["a", "a"]), flow.score_samples(pts, ["b", "b"])
    assert la[0] > lb[0] and lb[1] > la[1]
    with pytest.raises(ValueError, match="not seen in fit"):
        flow.score_samples(pts, ["a", "c"])


def test_unconditional_ignores_y_inside_supervised_pipeline():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    y = (X[:, 0] > 0).astype(int)
    pipe = Pipeline([("flow", FreeFormFlow(**FAST, random_state=0)), ("clf", LogisticRegression())])
    assert pipe.fit(X, y).score(X, y) > 0.8


def test_gridsearch_in_parallel():
    X, _ = make_gaussian_mixture_2d(300, random_state=0)
    pipe = Pipeline([("scale", StandardScaler()), ("flow", FreeFormFlow(**FAST, random_state=0))])
    search = GridSearchCV(pipe, {"flow__beta": [5.0, 20.0]}, cv=2, n_jobs=2).fit(X)
    assert np.isfinite(search.best_score_)
    assert np.isfinite(search.best_estimator_.score_samples(X[:20])).all()


def test_custom_encoder_and_decoder_modules():
    import torch

    class Affine(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.lin = torch.nn.Linear(d, d)

        def forward(self, x):
            return self.lin(x)

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 3)) @ np.array([[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]])
    flow = FreeFormFlow(encoder=Affine(3), decoder=lambda i, o, c: Affine(i), max_epochs=20,
                        random_state=0).fit(X)
    assert isinstance(flow.module_.encoder.module, Affine)
    assert np.isfinite(flow.score_samples(X)).all()


def test_scaled_data_density_units():
    """Standardisation inside is undone in the log-density: scaling X by s shifts log p."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 2))
    f1 = FreeFormFlow(**FAST, random_state=0).fit(X)
    f2 = FreeFormFlow(**FAST, random_state=0).fit(10 * X)
    np.testing.assert_allclose(
        f2.score_samples(10 * X[:10]), f1.score_samples(X[:10]) - 2 * np.log(10), atol=1e-4
    )


def test_bad_y_and_parameters_to_fit():
    with pytest.raises(ValueError, match="y has"):
        FreeFormFlow(conditional=True, **FAST).fit(np.ones((10, 2)), np.arange(9.0))
    with pytest.raises(ValueError, match="needs y"):
        FreeFormFlow(conditional=True, **FAST).fit(np.ones((10, 2)))
    with pytest.raises(ValueError, match="beta"):
        FreeFormFlow(beta=-1.0).fit(np.ones((10, 2)))


def test_off_data_reconstruction_keeps_decoder_inverse_near_the_data():
    """Between the modes of a ring, g(f(x)) = x holds only with the off-data term."""
    X, _ = make_gaussian_mixture_2d(1500, random_state=0)
    kw = {"max_epochs": 40, "hidden_features": 64, "latent": "normal", "random_state": 0}
    plain = FreeFormFlow(off_data_weight=0.0, **kw).fit(X)
    guarded = FreeFormFlow(off_data_weight=0.1, **kw).fit(X)
    box = np.random.default_rng(0).uniform(-6, 6, size=(2000, 2))  # data and gaps

    def round_trip(flow):
        return np.linalg.norm(flow.inverse_transform(flow.transform(box)) - box, axis=1)

    err_plain, err_guarded = round_trip(plain), round_trip(guarded)
    assert np.quantile(err_guarded, 0.9) < 0.5 * np.quantile(err_plain, 0.9)
    assert err_guarded.max() < 0.5


def test_auto_epochs_count_optimiser_steps():
    """``max_epochs="auto"``: about 8000 optimiser steps, within 300-1000 epochs."""
    flow = FreeFormFlow()
    # 450 training rows: batches of 56, 9 steps an epoch, ceil(8000 / 9) = 889 epochs
    assert flow._epochs(450) == 889
    assert flow._patience(450) == 150  # about 1350 steps: ceil(1350 / 9)
    assert flow._patience(4500) == 75
    assert flow._epochs(4500) == 445  # batches of 256, 18 steps
    assert flow._epochs(9_000) == 300  # floor (36 steps an epoch)
    assert flow._epochs(45_000) == 137  # at most about 24 000 steps: ceil(24000 / 176)
    assert flow._epochs(10_000_000) == 30  # but at least 30 epochs
    assert flow._epochs(20) == 1000  # cap
    assert flow._patience(45_000) == 50  # floor of the automatic patience
    fixed = FreeFormFlow(max_epochs=7, patience=3)
    assert (fixed._epochs(450), fixed._patience(450)) == (7, 3)
    callbacks = dict(flow._make_callbacks(450, has_valid=True))
    assert callbacks["early_stopping"].patience == 150


def test_auto_epochs_drive_the_loop_and_the_cosine_schedule(monkeypatch):
    """The resolved epoch count is what the loop runs and what the cosine schedule spans."""
    monkeypatch.setattr(FreeFormFlow, "_AUTO_STEPS", 24)
    monkeypatch.setattr(FreeFormFlow, "_AUTO_EPOCH_RANGE", (2, 10))
    X = np.random.default_rng(0).normal(size=(100, 2))
    # 90 training rows, batches of 32: 3 steps an epoch, ceil(24 / 3) = 8 epochs
    flow = FreeFormFlow(
        hidden_features=8, n_blocks=1, early_stopping=False, lr=1e-3, random_state=0
    ).fit(X)
    assert flow.n_iter_ == 8
    epochs = np.arange(8)
    cosine = 1e-5 + (1e-3 - 1e-5) * (1 + np.cos(np.pi * epochs / 8)) / 2
    np.testing.assert_allclose(flow.history_[:, "event_lr"], cosine, rtol=1e-6)


def test_auto_is_a_flow_only_budget():
    """``"auto"`` epochs are FreeFormFlow's; other values and other estimators are refused."""
    from skfff import MLAutoencoder

    X = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(ValueError, match="max_epochs"):
        FreeFormFlow(max_epochs="long").fit(X)
    with pytest.raises(ValueError, match="patience"):
        FreeFormFlow(patience=0).fit(X)
    with pytest.raises(ValueError, match="max_epochs"):
        MLAutoencoder(n_components=1, max_epochs="auto").fit(X)
    assert 'max_epochs : int or "auto"' in FreeFormFlow.__doc__
    assert "max_epochs : int, default=300" in MLAutoencoder.__doc__


def test_student_t_latent_log_prob_matches_scipy():
    """The latent module's log-density is the product of univariate Student-t densities,
    and its degrees of freedom start where asked and stay at least 1."""
    import torch
    from scipy.stats import t as student_t

    from skfff._torch.priors import StudentTLatent

    latent = StudentTLatent(3, df=4.0)
    np.testing.assert_allclose(latent.df.detach().numpy(), 4.0, rtol=1e-6)
    z = torch.linspace(-30, 30, 12, dtype=torch.float64).reshape(4, 3)
    expected = student_t(4.0).logpdf(z.numpy()).sum(-1)
    np.testing.assert_allclose(latent.log_prob(z).detach().numpy(), expected, rtol=1e-10)
    with torch.no_grad():
        latent.log_df_minus_one.fill_(-200.0)  # the Cauchy distribution, at the limit
    assert (latent.df >= 1).all()
    np.testing.assert_allclose(latent.log_prob(z).detach().numpy(),
                               student_t(1.0).logpdf(z.numpy()).sum(-1), rtol=1e-6)
    with pytest.raises(ValueError, match="greater than 1"):
        StudentTLatent(2, df=1.0)


def test_student_t_latent_gives_polynomial_tails():
    """With networks frozen at the identity (zero last layers, a tiny learning rate) the
    density is the latent's, read in the standardised units: the Student-t log-density,
    whose decay far out is logarithmic, where the normal latent's is quadratic. Samples
    are drawn from the same latent (reproducibly) and ``latent_df_`` is reported."""
    from scipy.stats import t as student_t

    X = np.random.default_rng(0).standard_t(3, size=(400, 2))
    kwargs = {"lr": 1e-12, "max_epochs": 1, "random_state": 0}
    flow = FreeFormFlow(latent="student_t", **kwargs).fit(X)
    assert flow.latent_df_.shape == (2,)
    np.testing.assert_allclose(flow.latent_df_, 30.0, rtol=1e-3)
    far = np.array([[0.5, 0.0], [50.0, 0.0], [500.0, 0.0]])
    z = (far - flow.mean_) / flow.scale_
    expected = student_t(flow.latent_df_).logpdf(z).sum(-1) - np.log(flow.scale_).sum()
    np.testing.assert_allclose(flow.score_samples(far), expected, rtol=1e-3)
    normal = FreeFormFlow(latent="normal", **kwargs).fit(X)
    assert normal.latent_df_ is None
    drop_t = flow.score_samples(far[1:2]) - flow.score_samples(far[2:])
    drop_n = normal.score_samples(far[1:2]) - normal.score_samples(far[2:])
    assert drop_t < 100 < drop_n  # about 31 * log(10) against 500^2 / 2 / scale^2
    S = flow.sample(20_000, random_state=1)
    np.testing.assert_array_equal(S[:5], flow.sample(5, random_state=1))
    # the t_30 latent's excess kurtosis is 6 / (30 - 4) = 0.23 (the normal's: 0)
    kurt = ((S - S.mean(0)) ** 4).mean(0) / S.var(0) ** 2 - 3
    assert np.all(kurt > 0.1)


def test_student_t_latent_learns_heavier_tails_on_heavy_tailed_data():
    """A short fit on Student-t data (df 2) moves the degrees of freedom down from 30."""
    X = np.random.default_rng(0).standard_t(2, size=(1000, 2))
    flow = FreeFormFlow(latent="student_t", max_epochs=20, lr=1e-2, hidden_features=16,
                        n_blocks=1, random_state=0).fit(X)
    assert np.all(flow.latent_df_ < 25)
    assert np.isfinite(flow.score_samples(X)).all()
    with pytest.raises(ValueError, match="latent"):
        FreeFormFlow(latent="cauchy").fit(X)


def test_auto_latent_is_the_mixture_for_density_estimation():
    """``latent="auto"`` is the EM mixture for an unconditional flow (in any dimension), and
    the flow says what it chose; the other latents stay available."""
    X = np.random.default_rng(0).normal(size=(100, 3))
    for d in (1, 3):
        auto = FreeFormFlow(**FAST, random_state=0).fit(X[:, :d])
        assert auto.latent_ == "mixture" and auto.n_latent_components_ >= 1
    forced = FreeFormFlow(**FAST, latent="student_t", random_state=0).fit(X)
    assert forced.latent_ == "student_t" and forced.latent_df_.shape == (3,)
    assert forced.n_latent_components_ is None
    normal = FreeFormFlow(**FAST, latent="normal", random_state=0).fit(X)
    assert normal.latent_ == "normal" and normal.latent_df_ is None


def test_auto_latent_is_normal_for_conditional_flows():
    X = np.random.default_rng(0).normal(size=(100, 4))
    cond = FreeFormFlow(**FAST, conditional=True, random_state=0).fit(X[:, :3], X[:, 3])
    assert cond.latent_ == "normal"
    forced = FreeFormFlow(**FAST, conditional=True, latent="student_t",
                          random_state=0).fit(X[:, :3], X[:, 3])
    assert forced.latent_ == "student_t"
    assert forced.sample(5, y=0.0, random_state=0).shape == (5, 3)


def test_student_t_latent_density_integrates_to_one():
    """The encoder density with a Student-t latent is normalised without any division
    (f one-to-one), on heavy-tailed data whose mass reaches far out: on a grid over a wide
    box and by the importance sampler built from the flow's own (Student-t) samples."""
    X = np.random.default_rng(0).standard_t(3, size=(800, 2))
    flow = FreeFormFlow(latent="student_t", renormalize=False, log_prob_via="encoder",
                        max_epochs=30, hidden_features=32, n_blocks=2, random_state=0).fit(X)
    estimate, stderr = flow.normalization_
    assert abs(estimate - 1.0) < 0.03 + 3 * stderr
    grid = np.linspace(-60, 60, 601)
    pts = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    total = np.exp(flow.score_samples(pts)).sum() * (grid[1] - grid[0]) ** 2
    assert total == pytest.approx(1.0, abs=0.05)


def test_mixture_latent_starts_as_the_em_fit():
    """``latent="mixture"``: a Gaussian mixture, diagonal in the principal axes of the
    standardised training rows, fitted by EM (count by BIC). With the networks frozen at
    the identity the density is that mixture's, read in data units; samples come from it,
    reproducibly."""
    from scipy import stats
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-4.0, 0.5, size=(300, 2)), rng.normal(4.0, 1.0, (300, 2))])
    flow = FreeFormFlow(latent="mixture", lr=1e-12, max_epochs=1, validation_fraction=0.0,
                        check_normalization=False, random_state=0).fit(X)
    assert flow.latent_ == "mixture" and flow.latent_df_ is None
    assert flow.n_latent_components_ == 2
    R = flow.module_.latent.rotation.numpy()
    np.testing.assert_allclose(R @ R.T, np.eye(2), atol=1e-6)
    Z = (X - flow.mean_) / flow.scale_ @ R
    em = GaussianMixture(2, covariance_type="diag", reg_covar=1e-4, random_state=0).fit(Z)
    w = flow.module_.latent.base.tail_weight  # the Cauchy safety net
    cauchy = stats.multivariate_t(np.zeros(2), np.eye(2), df=1).logpdf(Z)
    latent = np.logaddexp(np.log1p(-w) + em.score_samples(Z), np.log(w) + cauchy)
    expected = latent - np.log(flow.scale_).sum()
    np.testing.assert_allclose(flow.score_samples(X), expected, atol=1e-3)
    S = flow.sample(4000, random_state=1)
    np.testing.assert_allclose(S[:5], flow.sample(5, random_state=1), rtol=1e-5)
    assert abs((S[:, 0] < 0).mean() - 0.5) < 0.05  # both modes, in proportion
    # spread by the interquartile range: the Cauchy draws (0.1 %) inflate a standard deviation
    iqr = np.subtract(*np.percentile(S[S[:, 0] < 0], [75, 25], axis=0)) / 1.349
    assert iqr == pytest.approx([0.5, 0.5], rel=0.1)


def test_mixture_tail_component_density_and_draws():
    """The latent mixture's Cauchy safety net of weight ``w``: ``log_prob`` is that of
    ``(1 - w) mixture + w Cauchy`` (against scipy), and ``from_noise`` draws from it (a
    Kolmogorov-Smirnov test of 1-D draws against its CDF); bad weights are refused."""
    from scipy import stats

    from skfff._torch.priors import GaussianMixturePrior, cauchy_log_prob

    w = 0.3
    prior = GaussianMixturePrior(torch.tensor([[-2.0], [1.0]]),
                                 torch.log(torch.tensor([[0.25], [0.04]])),
                                 torch.tensor([0.4, 0.6]), tail_weight=w)

    def mixture(f):
        return 0.4 * f(stats.norm(-2.0, 0.5)) + 0.6 * f(stats.norm(1.0, 0.2))

    z = np.linspace(-40.0, 40.0, 81)
    expected = np.log((1 - w) * mixture(lambda d: d.pdf(z)) + w * stats.cauchy.pdf(z))
    got = prior.log_prob(torch.tensor(z[:, None], dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    noise = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0))
    draws = prior.from_noise(noise).numpy().ravel()

    def cdf(x):
        return (1 - w) * mixture(lambda d: d.cdf(x)) + w * stats.cauchy.cdf(x)

    assert stats.kstest(draws, cdf).pvalue > 0.01
    Z = np.random.default_rng(0).standard_cauchy((5, 3))
    np.testing.assert_allclose(
        cauchy_log_prob(torch.tensor(Z)).numpy(),
        stats.multivariate_t(np.zeros(3), np.eye(3), df=1).logpdf(Z), rtol=1e-10)
    with pytest.raises(ValueError, match="tail_weight"):
        GaussianMixturePrior(torch.zeros(2, 1), tail_weight=1.0)


def test_skewed_heavy_tails_get_no_absurd_log_density():
    """Lognormal data (sigma 1.5): test points beyond the training range once got
    log-densities thousands of nats below the truth (every Gaussian of the latent mixture
    was narrow there). With the Cauchy safety net no test point is off by more than tens
    of nats, and the mean gap to the true density is small."""
    from scipy import stats

    rng = np.random.default_rng(1)
    X, X_test = rng.lognormal(0.0, 1.5, (500, 2)), rng.lognormal(0.0, 1.5, (5000, 2))
    flow = FreeFormFlow(max_epochs=40, random_state=1).fit(X)
    assert flow.net_.module_.latent.base.tail_weight > 0
    gap = stats.lognorm(1.5).logpdf(X_test).sum(1) - flow.score_samples(X_test)
    assert (X_test > X.max(0)).any(1).sum() >= 5  # some test points beyond the range
    assert gap.max() < 30.0
    assert gap.mean() < 1.5


def test_mixture_latent_density_integrates_to_one():
    """After training, the mixture-latent flow's density is normalised on a grid; a warm
    refit keeps the fitted mixture's shape; a conditional flow refuses the mixture."""
    X, _ = make_gaussian_mixture_2d(800, random_state=0)
    flow = FreeFormFlow(latent="mixture", renormalize=False, log_prob_via="encoder",
                        max_epochs=30, hidden_features=32, n_blocks=2, random_state=0).fit(X)
    assert flow.n_latent_components_ > 1
    lo, hi = X.min(0) - 3, X.max(0) + 3
    gx, gy = np.linspace(lo[0], hi[0], 301), np.linspace(lo[1], hi[1], 301)
    pts = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
    total = np.exp(flow.score_samples(pts)).sum() * (gx[1] - gx[0]) * (gy[1] - gy[0])
    assert total == pytest.approx(1.0, abs=0.03)
    k = flow.n_latent_components_
    flow.set_params(warm_start=True, max_epochs=2).fit(X[::2])
    assert flow.n_latent_components_ == k and flow.n_iter_ > 2
    with pytest.raises(ValueError, match="unconditional"):
        FreeFormFlow(**FAST, latent="mixture", conditional=True).fit(X, X[:, 0])
