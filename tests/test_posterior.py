"""A conditional FreeFormFlow as a posterior estimator (issue 17): a Gaussian linear
simulator whose posterior is known in closed form."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from skfff import FreeFormFlow


def test_gaussian_linear_posterior_mean_and_covariance():
    # theta ~ N(0, I_2), x = A theta + N(0, s^2 I_2): the posterior is Gaussian with
    # covariance (I + A^T A / s^2)^-1 and mean cov A^T x / s^2.
    rng = np.random.default_rng(0)
    A, s = np.array([[1.0, 0.5], [-0.3, 1.0]]), 0.5
    theta = rng.standard_normal((3000, 2))
    x = theta @ A.T + s * rng.standard_normal((3000, 2))
    flow = FreeFormFlow(conditional="continuous", max_epochs=25, batch_size=128, lr=3e-3,
                        hidden_features=64, n_blocks=2, random_state=0).fit(theta, x)
    cov = np.linalg.inv(np.eye(2) + A.T @ A / s**2)
    for x_o in (np.array([0.5, -1.0]), np.array([-1.5, 0.8])):
        mean = cov @ A.T @ x_o / s**2
        samples = flow.sample(4000, y=x_o, random_state=1)
        np.testing.assert_allclose(samples.mean(0), mean, atol=0.1)
        np.testing.assert_allclose(np.cov(samples.T), cov, atol=0.05)


class _SpoilAt(Callback):
    """Scrambles the encoder's first layer at the start of one epoch (a density blow-up)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == self.epoch:
            with torch.no_grad():
                net.module_.encoder.inp.weight.mul_(200.0)


class _FreezeAt(Callback):
    """Sets the learning rate to zero from one epoch on (the weights stop changing)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) >= self.epoch:
            for group in net.optimizer_.param_groups:
                group["lr"] = 0.0


def _simulations(n=300, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((n, 2))
    return theta, theta + 0.3 * rng.standard_normal((n, 2))


def test_posterior_fit_brings_back_the_best_epoch_when_the_density_blows_up():
    # the whole schedule is trained (no early stopping), but a validation NLL that ends
    # more than a nat per feature above its best restores the best epoch, with a warning
    theta, x = _simulations()
    kw = dict(conditional="continuous", max_epochs=6, hidden_features=16, random_state=0)
    with pytest.warns(UserWarning, match="overfitted the training rows"):
        spoilt = FreeFormFlow(callbacks=[("spoil", _SpoilAt(6))], **kw).fit(theta, x)
    history = spoilt.history_
    nll = np.array(history[:, "valid_nll"])
    restored = history[-1, "restored_epoch"]
    assert nll[-1] > nll.min() + 2 and restored == int(np.argmin(nll)) + 1
    # the kept weights are the best epoch's: those of a fit that stops learning after it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = FreeFormFlow(callbacks=[("freeze", _FreezeAt(restored + 1))], **kw).fit(theta, x)
    np.testing.assert_allclose(spoilt.score_samples(theta[:20], x[:20]),
                               clean.score_samples(theta[:20], x[:20]), rtol=1e-5)
    assert "restored_epoch" not in clean.history_[-1]


def test_overfit_guard_only_without_early_stopping():
    theta, x = _simulations(120)
    kw = dict(max_epochs=2, hidden_features=8, random_state=0)

    def guarded(flow):
        return "overfit_guard" in dict(flow.net_.callbacks_)

    assert guarded(FreeFormFlow(conditional="continuous", **kw).fit(theta, x))
    assert not guarded(FreeFormFlow(conditional="continuous", early_stopping=True, **kw)
                       .fit(theta, x))
    assert not guarded(FreeFormFlow(**kw).fit(theta))
    assert not guarded(FreeFormFlow(conditional=True, **kw).fit(theta, x[:, 0] > 0))
