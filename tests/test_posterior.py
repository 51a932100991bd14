"""A conditional FreeFormFlow as a posterior estimator (issue 17): a Gaussian linear
simulator whose posterior is known in closed form."""

from __future__ import annotations

import numpy as np

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
