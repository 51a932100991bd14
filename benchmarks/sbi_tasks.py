"""Tasks of the simulation-based inference benchmark, with reference posteriors and C2ST.

Written from the published definitions of the SBI benchmark (Lueckmann et al., "Benchmarking
simulation-based inference", AISTATS 2021, and the papers each task comes from); the code is
our own and uses NumPy only. Each task has a prior sampler, a simulator, an unnormalised
log-posterior (every task here has a tractable likelihood) and a sampler of reference
posterior samples for an observation ``x_o``:

================  =======  =====  ==============================================================
task              theta    x      reference posterior
================  =======  =====  ==============================================================
two_moons         2        2      exact: the simulator's noise is drawn and inverted (two
                                  branches), then samples outside the prior box are rejected
slcp              5        8      importance sampling: the means are integrated out analytically,
                                  a fine grid over the 3 covariance parameters is the proposal,
                                  exact weights, then rejection against the largest weight
gaussian_linear   10       10     exact: Gaussian, N(x_o / 2, 0.05 I)
gaussian_mixture  2        2      exact: the two-component mixture centred at x_o, truncated
                                  to the prior box by rejection
bernoulli_glm     10       10     importance sampling from a Student-t around the (log-concave)
                                  posterior's mode; the summaries are sufficient statistics, so
                                  this is the posterior given the whole spike train
================  =======  =====  ==============================================================

:func:`mcmc_posterior` is an independent check of every reference: many random-walk
Metropolis chains on :meth:`Task.log_posterior`, with the task's exact symmetries as extra
moves; ``python benchmarks/sbi_tasks.py`` prints the C2ST between the two samplers for each
task (0.5 when they agree).

:func:`c2st` is the benchmark's classifier two-sample test: an MLP with two hidden layers of
width ``10 x dim``, 5-fold cross-validated accuracy on samples z-scored with the reference's
mean and standard deviation. 0.5 means the samples cannot be told apart, 1.0 that they are
told apart perfectly.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from scipy.special import expit, log_expit

__all__ = [
    "Task",
    "TwoMoons",
    "SLCP",
    "GaussianLinear",
    "GaussianMixture",
    "BernoulliGLM",
    "TASKS",
    "get_task",
    "c2st",
    "mcmc_posterior",
]

Array = np.ndarray


class Task:
    """An SBI task: prior, simulator, likelihood and reference posterior.

    Subclasses set ``name``, ``theta_dim``, ``x_dim`` and implement the methods below.
    Every method takes a :class:`numpy.random.Generator` where it draws random numbers.
    """

    name: str = ""
    theta_dim: int = 0
    x_dim: int = 0
    #: involutions ``theta -> theta'`` with unit Jacobian that leave every posterior of the
    #: task unchanged (used as extra moves by :func:`mcmc_posterior`)
    symmetries: tuple[Callable[[Array], Array], ...] = ()

    def sample_prior(self, n: int, rng: np.random.Generator) -> Array:
        """Draw ``n`` parameter vectors from the prior, shape ``(n, theta_dim)``."""
        raise NotImplementedError

    def log_prior(self, theta: Array) -> Array:
        """Prior log-density up to a constant (``-inf`` outside the support)."""
        raise NotImplementedError

    def simulate(self, theta: Array, rng: np.random.Generator) -> Array:
        """One simulation per row of ``theta``, shape ``(n, x_dim)``."""
        raise NotImplementedError

    def log_likelihood(self, theta: Array, x_o: Array) -> Array:
        """``log p(x_o | theta)`` up to a constant, one value per row of ``theta``."""
        raise NotImplementedError

    def reference_posterior(self, x_o: Array, n: int, rng: np.random.Generator) -> Array:
        """``n`` samples of the true posterior ``p(theta | x_o)``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- shared helpers
    def log_posterior(self, theta: Array, x_o: Array) -> Array:
        """Unnormalised log-posterior, ``-inf`` outside the prior's support."""
        theta = np.atleast_2d(theta)
        lp = self.log_prior(theta)
        out = np.full(len(theta), -np.inf)
        ok = np.isfinite(lp)
        if ok.any():
            out[ok] = lp[ok] + self.log_likelihood(theta[ok], x_o)
        return out

    def simulate_dataset(self, n: int, seed: int = 0) -> tuple[Array, Array]:
        """``n`` pairs ``(theta, x)`` with ``theta`` from the prior, for training.

        Returns
        -------
        theta : ndarray of shape (n, theta_dim)
        x : ndarray of shape (n, x_dim)
        """
        rng = np.random.default_rng(seed)
        theta = self.sample_prior(n, rng)
        return theta, self.simulate(theta, rng)

    def observation(self, index: int) -> tuple[Array, Array]:
        """The ``index``-th benchmark observation: ``(theta_true, x_o)``, fixed by seed.

        Observations are drawn from the prior predictive with seed ``1_000_000 + index``
        (our own seeds, not the sbibm package's files).
        """
        rng = np.random.default_rng(1_000_000 + index)
        theta = self.sample_prior(1, rng)
        return theta[0], self.simulate(theta, rng)[0]


def _uniform_box_log_prior(theta: Array, low: float, high: float) -> Array:
    inside = np.all((theta >= low) & (theta <= high), axis=1)
    return np.where(inside, 0.0, -np.inf)


def _rejection_from_weights(
    propose: Callable[[int], tuple[Array, Array]],
    n: int,
    pool: int,
    rng: np.random.Generator,
    max_rounds: int = 200,
) -> tuple[Array, float]:
    """Exact-in-the-limit sampling from importance weights by rejection.

    ``propose(m)`` returns ``m`` proposals and their log-weights (``-inf`` for none). Each
    round accepts a proposal with probability ``w / w_max``, ``w_max`` the largest weight
    seen so far over all rounds (a first large round fixes it). Returns the samples and the
    effective sample size fraction of the first round (1 for a perfect proposal).
    """
    first, logw = propose(pool)
    w_max = np.max(logw)
    w = np.exp(logw - w_max)
    ess = w.sum() ** 2 / (w**2).sum() / len(w)
    rounds = [(first, logw)]
    accepted: list[Array] = []
    total = 0
    for r in range(max_rounds):
        if r > 0:
            rounds = [propose(pool)]
        for samples, lw in rounds:
            if lw.max() > w_max:  # a larger weight raises the bound (a slight bias, see ess)
                w_max = lw.max()
            keep = rng.random(len(lw)) < np.exp(lw - w_max)
            accepted.append(samples[keep])
            total += int(keep.sum())
        if total >= n:
            break
    out = np.concatenate(accepted)
    if len(out) < n:
        raise RuntimeError(f"rejection sampling produced {len(out)} of {n} samples")
    return out[:n], float(ess)


# ------------------------------------------------------------------------ two moons
class TwoMoons(Task):
    """Two moons (Greenberg, Nonnenmacher and Macke, 2019).

    ``theta ~ U(-1, 1)^2``; ``a ~ U(-pi/2, pi/2)``, ``r ~ N(0.1, 0.01^2)``,
    ``p = (r cos a + 0.25, r sin a)``;
    ``x = p + (-|theta_1 + theta_2| / sqrt 2, (-theta_1 + theta_2) / sqrt 2)``.

    The map ``theta -> x - p`` is piecewise linear with unit Jacobian, so the posterior is
    the law of ``p`` pushed back through its two branches (``theta_1 + theta_2`` of either
    sign, equally likely), restricted to the prior box: sampled exactly.
    """

    name = "two_moons"
    theta_dim = 2
    x_dim = 2
    symmetries = (lambda t: np.stack([-t[:, 1], -t[:, 0]], axis=1),)

    def sample_prior(self, n: int, rng: np.random.Generator) -> Array:
        return rng.uniform(-1.0, 1.0, size=(n, 2))

    def log_prior(self, theta: Array) -> Array:
        return _uniform_box_log_prior(theta, -1.0, 1.0)

    @staticmethod
    def _noise(n: int, rng: np.random.Generator) -> Array:
        a = rng.uniform(-np.pi / 2, np.pi / 2, size=n)
        r = rng.normal(0.1, 0.01, size=n)
        return np.stack([r * np.cos(a) + 0.25, r * np.sin(a)], axis=1)

    def simulate(self, theta: Array, rng: np.random.Generator) -> Array:
        p = self._noise(len(theta), rng)
        shift = np.stack(
            [-np.abs(theta[:, 0] + theta[:, 1]), -theta[:, 0] + theta[:, 1]], axis=1
        ) / np.sqrt(2.0)
        return p + shift

    def log_likelihood(self, theta: Array, x_o: Array) -> Array:
        shift = np.stack(
            [-np.abs(theta[:, 0] + theta[:, 1]), -theta[:, 0] + theta[:, 1]], axis=1
        ) / np.sqrt(2.0)
        p = x_o[None, :] - shift
        u, v = p[:, 0] - 0.25, p[:, 1]
        r = np.hypot(u, v)
        # density of p in polar coordinates: U(a) N(r) / r, for a in (-pi/2, pi/2), i.e. u > 0
        logn = -0.5 * ((r - 0.1) / 0.01) ** 2
        return np.where(u > 0, logn - np.log(np.maximum(r, 1e-300)), -np.inf)

    def reference_posterior(self, x_o: Array, n: int, rng: np.random.Generator) -> Array:
        out: list[Array] = []
        total = 0
        while total < n:
            m = 4 * (n - total) + 1000
            d = x_o[None, :] - self._noise(m, rng)  # = the shift
            s = -np.sqrt(2.0) * d[:, 0]  # |theta_1 + theta_2|, needs d_0 <= 0
            ok = s >= 0
            s = s * rng.choice([-1.0, 1.0], size=m)  # theta_1 + theta_2
            t = np.sqrt(2.0) * d[:, 1]  # theta_2 - theta_1
            theta = np.stack([(s - t) / 2, (s + t) / 2], axis=1)
            ok &= np.all(np.abs(theta) <= 1.0, axis=1)
            out.append(theta[ok])
            total += int(ok.sum())
        return np.concatenate(out)[:n]


# ----------------------------------------------------------------------------- SLCP
class SLCP(Task):
    """Simple likelihood, complex posterior (Papamakarios, Sterratt and Murray, 2019).

    ``theta ~ U(-3, 3)^5``; ``m = (theta_1, theta_2)``, ``s_1 = theta_3^2``,
    ``s_2 = theta_4^2``, ``rho = tanh(theta_5)``; ``x`` is 4 independent draws of
    ``N(m, [[s_1^2, rho s_1 s_2], [rho s_1 s_2, s_2^2]])`` (plus ``1e-6`` on the diagonal,
    as in the benchmark), flattened to 8 numbers.

    Reference: the posterior factorises as ``L(Sigma) N(m; xbar, Sigma / 4)`` on the prior
    box, with ``L(Sigma) = |Sigma|^{-3/2} exp(-tr(Sigma^-1 S) / 2)`` and ``S`` the scatter
    matrix of the 4 points. ``(|theta_3|, |theta_4|, theta_5)`` are proposed from a
    piecewise-constant density fitted to ``L`` on a fine grid (plus a 2 % uniform part),
    ``m`` from ``N(xbar, Sigma / 4)``; exact weights, rejection against the largest; the
    signs of ``theta_3`` and ``theta_4`` (exact symmetries) are drawn at random.
    """

    name = "slcp"
    theta_dim = 5
    x_dim = 8
    n_draws = 4
    eps = 1e-6
    symmetries = (
        lambda t: t * np.array([1.0, 1.0, -1.0, 1.0, 1.0]),
        lambda t: t * np.array([1.0, 1.0, 1.0, -1.0, 1.0]),
    )

    def sample_prior(self, n: int, rng: np.random.Generator) -> Array:
        return rng.uniform(-3.0, 3.0, size=(n, 5))

    def log_prior(self, theta: Array) -> Array:
        return _uniform_box_log_prior(theta, -3.0, 3.0)

    def _cov(self, t3: Array, t4: Array, t5: Array) -> tuple[Array, Array, Array]:
        s1, s2, rho = t3**2, t4**2, np.tanh(t5)
        return s1**2 + self.eps, rho * s1 * s2, s2**2 + self.eps

    def simulate(self, theta: Array, rng: np.random.Generator) -> Array:
        a, b, c = self._cov(theta[:, 2], theta[:, 3], theta[:, 4])
        # Cholesky of [[a, b], [b, c]]
        l11 = np.sqrt(a)
        l21 = b / l11
        l22 = np.sqrt(np.maximum(c - l21**2, 0.0))
        e = rng.standard_normal((len(theta), self.n_draws, 2))
        x0 = theta[:, None, 0] + l11[:, None] * e[..., 0]
        x1 = theta[:, None, 1] + l21[:, None] * e[..., 0] + l22[:, None] * e[..., 1]
        return np.stack([x0, x1], axis=-1).reshape(len(theta), 2 * self.n_draws)

    def log_likelihood(self, theta: Array, x_o: Array) -> Array:
        a, b, c = self._cov(theta[:, 2], theta[:, 3], theta[:, 4])
        det = a * c - b**2
        d = x_o.reshape(self.n_draws, 2)[None] - theta[:, None, :2]  # (n, 4, 2)
        quad = (
            c[:, None] * d[..., 0] ** 2
            - 2 * b[:, None] * d[..., 0] * d[..., 1]
            + a[:, None] * d[..., 1] ** 2
        ) / det[:, None]
        return -0.5 * quad.sum(1) - 0.5 * self.n_draws * np.log(det)

    def _log_marginal(self, u: Array, scatter: Array) -> Array:
        """``log L(Sigma)`` with the means integrated out, for ``u = (t3, t4, t5)`` rows."""
        a, b, c = self._cov(u[:, 0], u[:, 1], u[:, 2])
        det = a * c - b**2
        tr = (c * scatter[0, 0] - 2 * b * scatter[0, 1] + a * scatter[1, 1]) / det
        return -0.5 * (self.n_draws - 1) * np.log(det) - 0.5 * tr

    def reference_posterior(
        self, x_o: Array, n: int, rng: np.random.Generator, grid: int = 120
    ) -> Array:
        pts = x_o.reshape(self.n_draws, 2)
        xbar = pts.mean(0)
        scatter = (pts - xbar).T @ (pts - xbar)
        # piecewise-constant proposal over (|t3|, |t4|, t5) in [0, 3] x [0, 3] x [-3, 3]
        lo = np.array([0.0, 0.0, -3.0])
        width = np.array([3.0, 3.0, 6.0]) / np.array([grid, grid, 2 * grid])
        axes = [
            lo[k] + width[k] * (np.arange(m) + 0.5) for k, m in enumerate((grid, grid, 2 * grid))
        ]
        centres = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        log_l = self._log_marginal(centres, scatter)
        p_cell = np.exp(log_l - log_l.max())
        p_cell = 0.98 * p_cell / p_cell.sum() + 0.02 / len(p_cell)
        log_q_cell = np.log(p_cell / np.prod(width))
        cdf = np.cumsum(p_cell)
        cdf /= cdf[-1]

        def propose(m: int) -> tuple[Array, Array]:
            cell = np.minimum(np.searchsorted(cdf, rng.random(m)), len(cdf) - 1)
            u = centres[cell] + (rng.random((m, 3)) - 0.5) * width
            logw = self._log_marginal(u, scatter) - log_q_cell[cell]
            a, b, c = self._cov(u[:, 0], u[:, 1], u[:, 2])
            l11 = np.sqrt(a / self.n_draws)
            l21 = b / self.n_draws / l11
            l22 = np.sqrt(np.maximum(c / self.n_draws - l21**2, 0.0))
            e = rng.standard_normal((m, 2))
            mean = np.stack(
                [xbar[0] + l11 * e[:, 0], xbar[1] + l21 * e[:, 0] + l22 * e[:, 1]], axis=1
            )
            logw = np.where(np.all(np.abs(mean) <= 3.0, axis=1), logw, -np.inf)
            theta = np.concatenate([mean, u], axis=1)
            return theta, logw

        theta, self.last_ess_ = _rejection_from_weights(
            propose, n, pool=max(20 * n, 200_000), rng=rng
        )
        signs = rng.choice([-1.0, 1.0], size=(n, 2))
        theta[:, 2:4] *= signs
        return theta


# ------------------------------------------------------------------ Gaussian linear
class GaussianLinear(Task):
    """Gaussian linear in 10-D: ``theta ~ N(0, 0.1 I)``, ``x ~ N(theta, 0.1 I)``.

    The posterior is Gaussian: ``N(x_o / 2, 0.05 I)``.
    """

    name = "gaussian_linear"
    theta_dim = 10
    x_dim = 10
    prior_var = 0.1
    noise_var = 0.1

    def sample_prior(self, n: int, rng: np.random.Generator) -> Array:
        return rng.normal(0.0, np.sqrt(self.prior_var), size=(n, self.theta_dim))

    def log_prior(self, theta: Array) -> Array:
        return -0.5 * (theta**2).sum(1) / self.prior_var

    def simulate(self, theta: Array, rng: np.random.Generator) -> Array:
        return theta + rng.normal(0.0, np.sqrt(self.noise_var), size=theta.shape)

    def log_likelihood(self, theta: Array, x_o: Array) -> Array:
        return -0.5 * ((x_o[None] - theta) ** 2).sum(1) / self.noise_var

    def reference_posterior(self, x_o: Array, n: int, rng: np.random.Generator) -> Array:
        var = 1.0 / (1.0 / self.prior_var + 1.0 / self.noise_var)
        mean = var * x_o / self.noise_var
        return mean[None] + np.sqrt(var) * rng.standard_normal((n, self.theta_dim))


# ----------------------------------------------------------------- Gaussian mixture
class GaussianMixture(Task):
    """Gaussian mixture (Sisson, Fan and Tanaka, 2007) in 2-D.

    ``theta ~ U(-10, 10)^2``; ``x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I)``. The posterior
    is the same mixture centred at ``x_o``, truncated to the prior box (sampled exactly by
    rejection).
    """

    name = "gaussian_mixture"
    theta_dim = 2
    x_dim = 2
    scales = (1.0, 0.1)

    def sample_prior(self, n: int, rng: np.random.Generator) -> Array:
        return rng.uniform(-10.0, 10.0, size=(n, 2))

    def log_prior(self, theta: Array) -> Array:
        return _uniform_box_log_prior(theta, -10.0, 10.0)

    def simulate(self, theta: Array, rng: np.random.Generator) -> Array:
        scale = np.where(rng.random(len(theta)) < 0.5, *self.scales)
        return theta + scale[:, None] * rng.standard_normal(theta.shape)

    def log_likelihood(self, theta: Array, x_o: Array) -> Array:
        r2 = ((x_o[None] - theta) ** 2).sum(1)
        comps = [-0.5 * r2 / s**2 - 2 * np.log(s) for s in self.scales]
        return np.logaddexp(*comps)

    def reference_posterior(self, x_o: Array, n: int, rng: np.random.Generator) -> Array:
        out: list[Array] = []
        total = 0
        while total < n:
            theta = self.simulate(np.repeat(x_o[None], 2 * n, 0), rng)  # symmetric kernel
            theta = theta[np.all(np.abs(theta) <= 10.0, axis=1)]
            out.append(theta)
            total += len(theta)
        return np.concatenate(out)[:n]


# -------------------------------------------------------------------- Bernoulli GLM
class BernoulliGLM(Task):
    """Bernoulli generalised linear model (Lueckmann et al., 2017; SBI benchmark).

    A neuron's spikes in 100 time bins, ``y_t ~ Bernoulli(sigmoid(v_t . theta))``, with
    ``v_t = (1, I_t, I_{t-1}, ..., I_{t-8})`` built from one white-noise stimulus ``I``
    (fixed by ``stimulus_seed``; our own draw, not the benchmark's file). Prior: offset
    ``N(0, 2)``, filter Gaussian with precision ``F^T F``, ``F = D^2 + diag(sqrt(i / 9))``,
    ``D`` the first-difference matrix (smooth filters). ``x = V^T y``: the spike count and
    the spike-triggered sum, which are sufficient statistics of the logistic likelihood, so
    ``p(theta | x) = p(theta | y)``, which is log-concave. Reference: importance sampling
    from a multivariate Student-t (5 degrees of freedom) at the mode with the inverse
    Hessian as scale, exact weights, rejection against the largest weight.
    """

    name = "bernoulli_glm"
    theta_dim = 10
    x_dim = 10
    n_bins = 100

    def __init__(self, stimulus_seed: int = 42) -> None:
        m = self.theta_dim - 1
        d = np.eye(m) - np.eye(m, k=-1)
        f = d @ d + np.diag(np.sqrt(np.arange(m) / m))
        prec = np.zeros((m + 1, m + 1))
        prec[0, 0] = 0.5
        prec[1:, 1:] = f.T @ f
        self.prior_precision = prec
        self.prior_chol = np.linalg.cholesky(np.linalg.inv(prec))
        stim = np.random.default_rng(stimulus_seed).standard_normal(self.n_bins)
        design = np.zeros((self.n_bins, m + 1))
        design[:, 0] = 1.0
        for j in range(m):
            design[j:, j + 1] = stim[: self.n_bins - j]
        self.design = design

    def sample_prior(self, n: int, rng: np.random.Generator) -> Array:
        return rng.standard_normal((n, self.theta_dim)) @ self.prior_chol.T

    def log_prior(self, theta: Array) -> Array:
        return -0.5 * np.einsum("ni,ij,nj->n", theta, self.prior_precision, theta)

    def simulate(self, theta: Array, rng: np.random.Generator) -> Array:
        p = expit(theta @ self.design.T)
        y = (rng.random(p.shape) < p).astype(float)
        return y @ self.design

    def log_likelihood(self, theta: Array, x_o: Array) -> Array:
        eta = theta @ self.design.T
        # sum_t y_t eta_t - log(1 + e^eta_t) = x . theta + sum_t log sigmoid(-eta_t)
        return theta @ x_o + log_expit(-eta).sum(1)

    def _mode(self, x_o: Array) -> tuple[Array, Array]:
        theta = np.zeros(self.theta_dim)
        for _ in range(100):
            p = expit(self.design @ theta)
            grad = x_o - self.design.T @ p - self.prior_precision @ theta
            hess = self.prior_precision + (self.design.T * (p * (1 - p))) @ self.design
            step = np.linalg.solve(hess, grad)
            theta = theta + step
            if np.abs(step).max() < 1e-10:
                break
        p = expit(self.design @ theta)
        hess = self.prior_precision + (self.design.T * (p * (1 - p))) @ self.design
        return theta, hess

    def reference_posterior(self, x_o: Array, n: int, rng: np.random.Generator) -> Array:
        mode, hess = self._mode(x_o)
        chol = np.linalg.cholesky(np.linalg.inv(hess))
        df, dim = 5.0, self.theta_dim

        def propose(m: int) -> tuple[Array, Array]:
            z = rng.standard_normal((m, dim))
            g = rng.chisquare(df, size=m) / df
            theta = mode + (z / np.sqrt(g)[:, None]) @ chol.T
            u = np.linalg.solve(chol, (theta - mode).T).T
            log_q = -0.5 * (df + dim) * np.log1p((u**2).sum(1) / df)
            return theta, self.log_posterior(theta, x_o) - log_q

        theta, self.last_ess_ = _rejection_from_weights(
            propose, n, pool=max(5 * n, 50_000), rng=rng
        )
        return theta


TASKS: dict[str, type[Task]] = {
    t.name: t for t in (TwoMoons, SLCP, GaussianLinear, GaussianMixture, BernoulliGLM)
}


def get_task(name: str) -> Task:
    """A task by its benchmark name (see :data:`TASKS`)."""
    return TASKS[name]()


# --------------------------------------------------------------------------- C2ST
def c2st(reference: Array, samples: Array, seed: int = 1, n_folds: int = 5) -> float:
    """Classifier two-sample test accuracy, as in the SBI benchmark.

    Both sample sets are z-scored with the mean and standard deviation of ``reference``;
    an :class:`~sklearn.neural_network.MLPClassifier` (ReLU, two hidden layers of width
    ``10 x dim``, Adam, up to 10 000 iterations) is scored by ``n_folds``-fold
    cross-validated accuracy.

    Parameters
    ----------
    reference, samples : ndarray of shape (n, dim) and (m, dim)
        The two samples (the benchmark uses 10 000 of each).
    seed : int, default=1
        Seed for the folds and the classifier.
    n_folds : int, default=5
        Cross-validation folds.

    Returns
    -------
    float
        Mean accuracy: 0.5 when indistinguishable, 1.0 when perfectly separated.
    """
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    reference = np.asarray(reference, dtype=float)
    samples = np.asarray(samples, dtype=float)
    if not np.all(np.isfinite(samples)):
        return 1.0  # non-finite samples are told apart trivially
    mean, std = reference.mean(0), reference.std(0)
    std = np.where(std > 0, std, 1.0)
    data = np.concatenate([(reference - mean) / std, (samples - mean) / std])
    target = np.concatenate([np.zeros(len(reference)), np.ones(len(samples))])
    dim = data.shape[1]
    clf = MLPClassifier(
        hidden_layer_sizes=(10 * dim, 10 * dim),
        activation="relu",
        solver="adam",
        max_iter=10_000,
        random_state=seed,
    )
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, data, target, cv=folds, scoring="accuracy").mean())


# --------------------------------------------------------------------------- MCMC
def mcmc_posterior(
    task: Task,
    x_o: Array,
    n: int,
    rng: np.random.Generator,
    n_chains: int = 1000,
    n_burn: int = 6000,
    thin: int = 100,
) -> Array:
    """Posterior samples by many random-walk Metropolis chains (an independent check).

    The chains start from prior draws resampled by likelihood. During burn-in each chain
    adapts its own Gaussian step: the shape from its own history (adaptive Metropolis,
    ``2.38^2 / dim`` times the chain's covariance), the scale towards 30 % acceptance; both
    are frozen afterwards, so the kept part is a plain Metropolis chain. The task's exact
    symmetries are proposed as extra moves (accepted up to rounding; they mix the modes).

    Returns
    -------
    ndarray of shape (n, theta_dim)
    """
    # start from prior draws resampled by their likelihood (sampling-importance-resampling)
    pool = task.sample_prior(100 * n_chains, rng)
    logw = task.log_posterior(pool, x_o) - task.log_prior(pool)
    w = np.exp(logw - logw.max())
    theta = pool[rng.choice(len(pool), size=n_chains, p=w / w.sum())]
    logp = task.log_posterior(theta, x_o)
    dim = task.theta_dim
    scale = np.full(n_chains, 1.0)
    chol = np.broadcast_to(0.05 * np.linalg.cholesky(np.cov(theta.T) + 1e-9 * np.eye(dim)),
                           (n_chains, dim, dim)).copy()  # fmt: skip
    s1 = np.zeros((n_chains, dim))
    s2 = np.zeros((n_chains, dim, dim))
    n_acc = 0
    out: list[Array] = []
    n_steps = n_burn + -(-n // n_chains) * thin
    acc_window = np.zeros(n_chains)
    for step in range(n_steps):
        if step < n_burn and step % 250 == 249:
            scale *= np.exp(np.clip(acc_window / 250 - 0.3, -0.3, 0.3) * 3)
            acc_window[:] = 0
            if step >= n_burn // 3 and n_acc > 10 * dim:
                mean = s1 / n_acc
                cov = s2 / n_acc - mean[:, :, None] * mean[:, None, :]
                cov = 2.38**2 / dim * cov + 1e-10 * np.eye(dim)
                chol = np.linalg.cholesky(cov)
                scale[:] = 1.0
        prop = theta + scale[:, None] * np.einsum("cij,cj->ci", chol, rng.standard_normal(
            (n_chains, dim)))  # fmt: skip
        lp = task.log_posterior(prop, x_o)
        with np.errstate(invalid="ignore"):
            accept = np.log(rng.random(n_chains)) < lp - logp
        theta[accept], logp[accept] = prop[accept], lp[accept]
        acc_window += accept
        for sym in task.symmetries:
            prop = sym(theta)
            lp = task.log_posterior(prop, x_o)
            with np.errstate(invalid="ignore"):
                accept = np.log(rng.random(n_chains)) < lp - logp
            theta[accept], logp[accept] = prop[accept], lp[accept]
        if n_burn // 6 <= step < n_burn:  # history for the adapted shapes
            s1 += theta
            s2 += theta[:, :, None] * theta[:, None, :]
            n_acc += 1
        if step >= n_burn and (step - n_burn) % thin == thin - 1:
            out.append(theta.copy())
    return np.concatenate(out)[:n]


def _self_check(names: list[str], n: int, n_obs: int) -> None:
    """Print, per task and observation, the C2ST between the reference and MCMC."""
    print(
        f"{'task':<18} {'obs':>3} {'C2ST ref vs MCMC':>17} {'C2ST ref vs ref':>16} "
        f"{'IS ess':>7} {'ref s':>6} {'mcmc s':>7}"
    )
    for name in names:
        task = get_task(name)
        for i in range(n_obs):
            _, x_o = task.observation(i)
            t0 = time.perf_counter()
            ref = task.reference_posterior(x_o, n, np.random.default_rng(i))
            t_ref = time.perf_counter() - t0
            ess = getattr(task, "last_ess_", float("nan"))
            ref2 = task.reference_posterior(x_o, n, np.random.default_rng(100 + i))
            t0 = time.perf_counter()
            mc = mcmc_posterior(task, x_o, n, np.random.default_rng(200 + i))
            t_mc = time.perf_counter() - t0
            print(
                f"{name:<18} {i:>3} {c2st(ref, mc):>17.3f} {c2st(ref, ref2):>16.3f} "
                f"{ess:>7.3f} {t_ref:>6.1f} {t_mc:>7.1f}",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--n", type=int, default=5000, help="samples per sampler")
    parser.add_argument("--observations", type=int, default=2)
    args = parser.parse_args()
    _self_check(args.tasks, args.n, args.observations)
