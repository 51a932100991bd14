"""ManifoldFreeFormFlow: the learnt density integrates to one, and we say so when it does not.

Small budgets on concentrated synthetic data (one case per manifold), the warning at the end of
``fit``, and the honesty of :meth:`ManifoldFreeFormFlow.normalization_constant`'s standard error
on a map whose integral is known in closed form.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from skfff import ManifoldFreeFormFlow
from skfff.datasets import make_torus_wrapped_normal_mixture, make_vmf_mixture
from skfff.datasets._manifold import make_rotation_mixture
from skfff.manifold_flow import concentration
from skfff.manifolds import SpecialOrthogonal, Sphere

SMALL = {"hidden_features": 32, "n_blocks": 2, "batch_size": 64, "lr": 1e-2, "max_epochs": 15,
         "random_state": 0}


CASES = {
    "sphere": lambda: (make_vmf_mixture(600, n_components=3, concentration=300.0,
                                        random_state=0)[0], math.log(4 * math.pi)),
    "torus": lambda: (make_torus_wrapped_normal_mixture(600, n_components=2, scale=0.05,
                                                        random_state=0)[0],
                      2 * math.log(2 * math.pi)),
    "so3": lambda: (make_rotation_mixture(400, n_components=2, scale=0.1, random_state=0)[0],
                    math.log(8 * math.pi**2)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_concentrated_data_gives_a_normalised_density(name):
    X, uniform_nll = CASES[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the end-of-fit check must stay silent
        flow = ManifoldFreeFormFlow(name, **SMALL).fit(X)
    assert flow.concentration_ > 5 * 5.0  # measured as concentrated ...
    assert flow.beta_scale_ > 5.0  # ... so the reconstruction weight went up
    estimate, stderr = flow.normalization_constant(n_points=40_000, random_state=1)
    assert stderr < 0.02
    assert abs(estimate - 1.0) < 0.03 + 2 * stderr
    raw, raw_stderr = flow.normalization_  # before renormalize divided by it
    assert abs(raw - 1.0) < 0.03 + 2 * raw_stderr
    # and not by staying near uniform: half a nat better at least. (With beta_scale=1, the old
    # default, the same fits integrate to 2.4-2.8 and the end-of-fit check warns.)
    assert -flow.score(X) < uniform_nll - 0.5


def test_concentration_measure():
    s2 = Sphere(2)
    U = s2.random_uniform(2000, torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    assert 0.7 < concentration(U, s2) < 1.4
    broad, _ = make_vmf_mixture(2000, concentration=5.0, random_state=0)
    tight, _ = make_vmf_mixture(2000, concentration=500.0, random_state=0)
    assert 1.4 < concentration(broad, s2) < concentration(tight, s2)
    assert concentration(tight, s2) == concentration(tight, s2)  # deterministic


def test_rotation_mixture_density_is_normalised():
    so3 = SpecialOrthogonal()
    U = so3.random_uniform(100_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    _, _, dist = make_rotation_mixture(10, scale=0.3, random_state=0, return_distribution=True)
    w = np.exp(dist.log_density(U.numpy()) + so3.log_volume())
    assert abs(w.mean() - 1.0) < 4 * w.std() / math.sqrt(len(w))


# ----------------------------------------------------- a flow whose integral is known
A_DIAG = (2.0, 1.0, 1.0)


class _Identity(torch.nn.Module):
    """``f(x) = x`` (with one unused parameter so the optimiser has something to hold)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x


class _Stretch(_Identity):
    """``g~(z) = A z``, so ``g(z) = A z / |A z|``: a diffeomorphism of S^2, not ``f^-1``."""

    def forward(self, z):
        return z * torch.tensor(A_DIAG, dtype=z.dtype, device=z.device)


def _stretched_flow(**params):
    X = Sphere(2).random_uniform(64, torch.Generator().manual_seed(0), dtype=torch.float64)
    params = {"max_epochs": 1, "prior": "uniform", **params}  # the densities below assume it
    return ManifoldFreeFormFlow(
        "sphere", encoder=_Identity(), decoder=_Stretch(), beta_scale=1.0, random_state=0,
        **params,
    ).fit(X.numpy())


def _stretched_integral():
    """Integral over S^2 of ``p_Z(f(x)) / |det J_g(f(x))| = |A x|^3 / (4 pi det A)``.

    ``x_1 = t`` is uniform on [-1, 1] for x uniform on S^2, and ``|A x|^2 = 1 + 3 t^2``.
    """
    a = A_DIAG[0]
    value, _ = quad(lambda t: (1.0 + (a * a - 1.0) * t * t) ** 1.5, -1.0, 1.0)
    return 0.5 * value / float(np.prod(A_DIAG))


def test_warns_when_the_decoder_is_not_the_inverse():
    truth = _stretched_integral()
    assert truth > 1.3  # the decoder density evaluated at f(x) = x is far from normalised
    with pytest.warns(UserWarning, match=r"integrates to 1\.[0-9]+ .*instead of 1"):
        flow = _stretched_flow(log_prob_via="decoder", renormalize=False)
    estimate, stderr = flow.normalization_
    assert abs(estimate - truth) < 4 * stderr + 1e-3
    assert flow.log_normalizer_ == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        skipped = _stretched_flow(log_prob_via="decoder", check_normalization=False)
    assert skipped.normalization_ is None


def test_auto_falls_back_to_the_normalised_encoder_density():
    # f is the identity, so the encoder density is exactly uniform; the decoder's is not
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        flow = _stretched_flow()  # log_prob_via="auto"
    assert flow.log_prob_via_ == "encoder"
    estimate, stderr = flow.normalization_  # importance sampling: exact up to its error
    assert abs(estimate - 1.0) < 4 * stderr + 1e-6 and stderr < 0.01
    assert flow.normalization_constant(1000, random_state=0, proposal="uniform") == (
        pytest.approx(flow.normalization_[0] ** -1, rel=1e-5), pytest.approx(0.0, abs=1e-6))
    U = Sphere(2).random_uniform(5, torch.Generator().manual_seed(1), dtype=torch.float64)
    np.testing.assert_allclose(flow.score_samples(U.numpy()), -math.log(4 * math.pi),
                               atol=4 * stderr + 1e-5)  # divided by the estimate
    # an explicit choice is honoured after fit, e.g. through set_params
    decoder = flow.set_params(log_prob_via="decoder").score_samples(U.numpy())
    assert np.all(np.abs(decoder + math.log(4 * math.pi)) > 1e-3)


@pytest.mark.parametrize(
    ("decoder", "encoder", "chosen"),
    [((1.5, 0.01), (1.2, 0.01), "encoder"),  # neither normalised: the nearer to 1
     ((1.02, 0.01), (1.004, 0.01), "encoder"),  # both pass: still the nearer
     ((1.01, 0.01), (1.01, 0.01), "decoder"),  # a tie keeps the density of the samples
     ((1.1, 0.01), (0.5, 0.01), "decoder"),  # nearer in ratio: |log 1.1| < |log 0.5|
     ((1.01, 0.05), (1.02, 0.001), "encoder"),  # as near, far more precise (not spiky)
     ((2.0, 0.01), (float("nan"), float("nan")), "decoder"),
     ((float("nan"), float("nan")), (1.3, 0.01), "encoder")],
)
def test_auto_takes_the_better_normalised_density(monkeypatch, decoder, encoder, chosen):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        flow = _stretched_flow()
    integrals = {"decoder": decoder, "encoder": encoder}
    monkeypatch.setattr(flow, "_integral", lambda via, *args, **kwargs: integrals[via])
    flow.set_params(renormalize=False)
    if abs(integrals[chosen][0] - 1) <= 0.05:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # normalised: no warning
            flow._after_fit(flow.proposal_.centres, None, None)
    else:
        with pytest.warns(UserWarning, match=f"log_prob_via_='{chosen}'"):
            flow._after_fit(flow.proposal_.centres, None, None)
    assert flow.log_prob_via_ == chosen
    assert flow.normalization_ == integrals[chosen]


def test_renormalize_divides_by_the_integral():
    truth = _stretched_integral()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # renormalised: no warning
        flow = _stretched_flow(log_prob_via="decoder")
    raw, stderr = flow.normalization_
    assert abs(raw - truth) < 4 * stderr + 1e-3  # the network's own density, not divided
    assert flow.log_normalizer_ == pytest.approx(math.log(raw))
    estimate, stderr = flow.normalization_constant(n_points=40_000, random_state=3)
    assert abs(estimate - 1.0) < 4 * stderr + 0.01  # the density score_samples gives
    U = Sphere(2).random_uniform(5, torch.Generator().manual_seed(1), dtype=torch.float64)
    plain = flow.set_params(renormalize=False)  # a parameter: read in fit, not after
    np.testing.assert_allclose(plain.score_samples(U.numpy()) + math.log(raw),
                               _stretched_flow(log_prob_via="decoder", renormalize=False)
                               .score_samples(U.numpy()), atol=1e-6)


@pytest.mark.parametrize(
    ("decoder", "encoder", "chosen"),
    [((1.0, 0.001), (1.3, 0.01), "encoder"),  # renormalised anyway: the monitored density
     ((1.0, 0.001), (1.3, 0.1), "decoder"),  # unless its integral is too uncertain
     ((1.0, 0.001), (float("nan"), float("nan")), "decoder")],
)
def test_renormalize_prefers_the_encoder_density(monkeypatch, decoder, encoder, chosen):
    flow = _stretched_flow()
    integrals = {"decoder": decoder, "encoder": encoder}
    monkeypatch.setattr(flow, "_integral", lambda via, *args, **kwargs: integrals[via])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a precise estimate to divide by
        flow._after_fit(flow.proposal_.centres, None, None)
    assert flow.log_prob_via_ == chosen
    assert flow.log_normalizer_ == pytest.approx(math.log(integrals[chosen][0]))


def test_renormalize_warns_when_the_integral_is_uncertain(monkeypatch):
    flow = _stretched_flow()
    monkeypatch.setattr(flow, "_integral", lambda via, *args, **kwargs: (1.3, 0.03))
    with pytest.warns(UserWarning, match="standard error is more than 1.5 %"):
        flow._after_fit(flow.proposal_.centres, None, None)
    assert flow.log_normalizer_ == pytest.approx(math.log(1.3))
    monkeypatch.setattr(flow, "_integral", lambda via, *args, **kwargs: (1.3, 0.019))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # 2 x 0.019 < 3 % of 1.3: silent
        flow._after_fit(flow.proposal_.centres, None, None)
    monkeypatch.setattr(flow, "_integral",
                        lambda via, *args, **kwargs: (float("nan"), float("nan")))
    with pytest.warns(UserWarning, match="instead of 1"):  # nothing to divide by
        flow._after_fit(flow.proposal_.centres, None, None)
    assert flow.log_normalizer_ == 0.0


def test_normalization_constant_standard_error_is_honest():
    flow = _stretched_flow(log_prob_via="decoder", check_normalization=False)
    truth = _stretched_integral()
    z = []
    for seed in range(40):
        estimate, stderr = flow.normalization_constant(n_points=500, random_state=seed)
        z.append((estimate - truth) / stderr)
    z = np.array(z)
    assert 0.6 < z.std() < 1.5  # standard errors neither too small nor too large
    assert abs(z.mean()) < 0.6  # and the estimate is unbiased
    assert np.mean(np.abs(z) < 2) > 0.85
    with pytest.raises(ValueError, match="n_points"):
        flow.normalization_constant(n_points=1)


# ------------------------------------------- early stopping on the normalised likelihood
def test_monitor_divides_the_validation_likelihood_by_the_integral():
    # "auto": the monitor takes the encoder density; f is the identity, so it is uniform
    # (log Z = 0 up to the importance sampler's error, the same at every epoch)
    flow = _stretched_flow(max_epochs=2)
    assert flow.monitor_ == "valid_normalised_nll"
    h = flow.history_
    np.testing.assert_allclose(h[:, "valid_log_z"], 0.0, atol=0.01)
    assert h[0, "valid_log_z"] == h[1, "valid_log_z"]
    np.testing.assert_allclose(h[:, "valid_nll"], math.log(4 * math.pi), atol=1e-5)
    # the decoder density: its integral is known in closed form, and the criterion is the
    # NLL of p / Z, whatever spurious mass p holds
    flow = _stretched_flow(log_prob_via="decoder", check_normalization=False,
                           n_monitor_points=40_000)
    h = flow.history_
    assert abs(math.exp(h[-1, "valid_log_z"]) - _stretched_integral()) < 0.02
    np.testing.assert_allclose(h[:, "valid_normalised_nll"],
                               np.add(h[:, "valid_nll"], h[:, "valid_log_z"]), rtol=1e-12)


def test_early_stopping_keeps_the_epoch_of_best_normalised_nll():
    X, _ = make_vmf_mixture(500, n_components=3, concentration=50.0, random_state=0)
    # a large constant learning rate, so that the criterion goes up and down (from a
    # uniform latent: the fitted mixture starts too close to the data for that); the first
    # seed whose best epoch is not the last (which seed that is depends on the machine's
    # floating point, so several are tried)
    for seed in range(3, 9):
        flow = ManifoldFreeFormFlow("sphere", **{**SMALL, "max_epochs": 8, "lr": 0.2,
                                                  "random_state": seed}, prior="uniform",
                                    lr_schedule="constant", patience=3, n_monitor_points=4000,
                                    check_normalization=False).fit(X)
        h = flow.history_
        crit = np.asarray(h[:, "valid_normalised_nll"])
        assert np.all(np.isfinite(crit))
        best = int(np.argmin(crit))
        if best < len(h) - 1:
            break
    assert best < len(h) - 1  # the premise: the best epoch is not the last one
    # the weights kept are those of that epoch: the same uniform points give the same integral
    estimate, _ = flow._integral("encoder", 4000, 1)
    assert abs(math.log(estimate) - h[best, "valid_log_z"]) < 1e-4
    assert flow.n_iter_ == len(h)


@pytest.mark.parametrize("params", [{"n_monitor_points": 0}, {"early_stopping": False},
                                    {"conditional": True}])
def test_monitor_falls_back_to_the_validation_loss(params):
    X, y = make_vmf_mixture(300, n_components=2, random_state=0)
    flow = ManifoldFreeFormFlow("sphere", **{**SMALL, "max_epochs": 2},
                                check_normalization=False, **params)
    flow.fit(X, y if params.get("conditional") else None)
    assert flow.monitor_ == "valid_loss"
    assert "valid_log_z" not in flow.history_[-1]
