"""Latent distributions used by the estimators."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "LOG_2PI",
    "StudentTLatent",
    "diagonal_gaussian_log_prob",
    "standard_normal_log_prob",
]

#: ``log(2 pi)``, the normalising constant of Gaussian log-densities.
LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Log-density of the standard normal distribution, summed over the last axis.

    Parameters
    ----------
    z : Tensor of shape (..., d)
        Latent points.

    Returns
    -------
    Tensor of shape (...)
        ``log N(z; 0, I)``.
    """
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * LOG_2PI)


def cauchy_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Log-density of the standard multivariate Cauchy distribution (Student-t, one degree of
    freedom): ``log Gamma((d+1)/2) - (d+1)/2 log(pi) - (d+1)/2 log(1 + |z|^2)``.

    Parameters
    ----------
    z : Tensor of shape (..., d)
        Points.

    Returns
    -------
    Tensor of shape (...)
    """
    half = 0.5 * (z.shape[-1] + 1)
    return math.lgamma(half) - half * math.log(math.pi) - half * torch.log1p(z.pow(2).sum(-1))


def diagonal_gaussian_log_prob(
    z: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
) -> torch.Tensor:
    """``log N(z; mean, diag(var))`` summed over the last axis (arguments broadcast).

    Parameters
    ----------
    z : Tensor of shape (..., d)
        Points.
    mean, var : Tensor broadcastable to (..., d)
        Means and variances.

    Returns
    -------
    Tensor of shape (...)
    """
    return -0.5 * ((z - mean).pow(2) / var + var.log() + LOG_2PI).sum(-1)


class StudentTLatent(torch.nn.Module):
    """Independent Student-t distributions, one per latent dimension, with learnt degrees of
    freedom: a latent distribution for heavy-tailed data.

    A flow whose networks grow at most linearly far from the data (residual MLPs) maps a
    Gaussian latent to a density with Gaussian tails, ``log p(x) ~ -|x|^2``, however heavy
    the data's are; with a Student-t latent it has polynomial tails, ``log p(x) ~ -(nu + 1)
    log |x|`` (Jaini et al., ICML 2020; Laszkiewicz et al., ICML 2022 learn ``nu`` per
    dimension as here). Per dimension, with ``nu = 1 + exp(theta)`` (at least the Cauchy's
    1)::

        log t_nu(z) = log Gamma((nu + 1) / 2) - log Gamma(nu / 2) - log(nu pi) / 2
                      - (nu + 1) / 2 log(1 + z^2 / nu)

    Parameters
    ----------
    n_features : int
        Latent dimensions.
    df : float, default=30.0
        Initial degrees of freedom (30: close to the standard normal), greater than 1.
    """

    def __init__(self, n_features: int, df: float = 30.0) -> None:
        super().__init__()
        if df <= 1.0:
            raise ValueError(f"df must be greater than 1, got {df}")
        self.log_df_minus_one = torch.nn.Parameter(
            torch.full((n_features,), math.log(df - 1.0)))

    @property
    def df(self) -> torch.Tensor:
        """Degrees of freedom ``nu`` of each dimension, shape (n_features,)."""
        return 1.0 + self.log_df_minus_one.exp()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density summed over the last axis of ``z`` (shape (..., n_features))."""
        nu = self.df.to(z.dtype)
        log_norm = (torch.lgamma((nu + 1) / 2) - torch.lgamma(nu / 2)
                    - 0.5 * torch.log(nu * math.pi))
        return (log_norm - (nu + 1) / 2 * torch.log1p(z.pow(2) / nu)).sum(-1)


# --- Dirichlet (Laplace approximation) and Gaussian-mixture priors (DirichletLatentClassifier) ---

__all__ += ["diagonal_gaussian_kl", "DirichletLaplacePrior", "GaussianMixturePrior",
            "RotatedLatent", "gaussian_mixture_by_bic"]


def diagonal_gaussian_kl(
    mean_q: torch.Tensor,
    log_var_q: torch.Tensor,
    mean_p: torch.Tensor,
    log_var_p: torch.Tensor,
) -> torch.Tensor:
    """Closed-form ``KL(N(mean_q, diag var_q) || N(mean_p, diag var_p))``, summed over last axis.

    Parameters
    ----------
    mean_q, log_var_q : Tensor of shape (..., d)
        Mean and log-variance of the first Gaussian.
    mean_p, log_var_p : Tensor broadcastable to (..., d)
        Mean and log-variance of the second Gaussian.

    Returns
    -------
    Tensor of shape (...)
        The Kullback-Leibler divergence, non-negative, zero iff the two coincide.
    """
    var_ratio = torch.exp(log_var_q - log_var_p)
    mahalanobis = (mean_q - mean_p).pow(2) * torch.exp(-log_var_p)
    return 0.5 * (var_ratio + mahalanobis - 1.0 - (log_var_q - log_var_p)).sum(-1)


class DirichletLaplacePrior(torch.nn.Module):
    """Laplace approximation of a Dirichlet distribution in the softmax basis.

    A point ``r`` of the simplex is written ``r = softmax(z)``. In these coordinates the
    Dirichlet(alpha) density is ``prod_k r_k^alpha_k`` (the softmax Jacobian adds one to every
    exponent); its mode is ``z_k = log alpha_k - mean_j log alpha_j`` and the inverse Hessian of
    its negative logarithm on the sum-zero plane is ``P diag(1 / alpha) P`` with
    ``P = I - 1 1^T / K``. Keeping the diagonal (MacKay, 1998) gives the logistic-normal
    prior ``N(mean, diag var)`` with::

        mean_k = log alpha_k - (1 / K) sum_j log alpha_j
        var_k  = (1 / alpha_k) (1 - 2 / K) + (1 / K^2) sum_j 1 / alpha_j

    ``alpha < 1`` favours nearly pure mixtures (mass near the simplex corners).

    Parameters
    ----------
    alpha : float or sequence of float
        Concentration parameters, all positive; a float is repeated ``n_components`` times.
    n_components : int, optional
        Number of components K (needed when ``alpha`` is a float).

    Attributes
    ----------
    alpha : Tensor of shape (K,)
        Concentrations (buffer).
    mean, log_var : Tensor of shape (K,)
        Parameters of the Gaussian approximation in the softmax basis (buffers).
    """

    def __init__(self, alpha, n_components: int | None = None) -> None:
        super().__init__()
        floating = isinstance(alpha, torch.Tensor) and alpha.is_floating_point()
        dtype = alpha.dtype if floating else torch.get_default_dtype()
        alpha_t = torch.as_tensor(alpha, dtype=dtype).reshape(-1)
        if alpha_t.numel() == 1 and n_components is not None:
            alpha_t = alpha_t.expand(int(n_components)).clone()
        if n_components is not None and alpha_t.numel() != n_components:
            raise ValueError(f"alpha has {alpha_t.numel()} entries, expected {n_components}.")
        if alpha_t.numel() < 2:
            raise ValueError("A Dirichlet prior needs at least 2 components.")
        if not bool(torch.all(alpha_t > 0)):
            raise ValueError("alpha must be positive.")
        mean, var = self.laplace_parameters(alpha_t)
        self.register_buffer("alpha", alpha_t)
        self.register_buffer("mean", mean)
        self.register_buffer("log_var", torch.log(var))

    @staticmethod
    def laplace_parameters(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the Laplace approximation of Dirichlet(alpha), softmax basis.

        Parameters
        ----------
        alpha : Tensor of shape (K,)
            Positive concentrations.

        Returns
        -------
        mean, var : Tensors of shape (K,)
        """
        k = alpha.shape[-1]
        log_alpha = torch.log(alpha)
        mean = log_alpha - log_alpha.mean(-1, keepdim=True)
        var = (1.0 / alpha) * (1.0 - 2.0 / k) + (1.0 / alpha).sum(-1, keepdim=True) / k**2
        return mean, var

    @property
    def n_components(self) -> int:
        """Number of components K."""
        return int(self.alpha.shape[-1])

    def kl(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """``KL(N(mean, diag exp(log_var)) || prior)`` in closed form.

        Parameters
        ----------
        mean, log_var : Tensor of shape (..., K)
            Posterior parameters from the encoder.

        Returns
        -------
        Tensor of shape (...)
        """
        return diagonal_gaussian_kl(mean, log_var, self.mean, self.log_var)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the Gaussian approximation at ``z`` (shape (..., K) -> (...))."""
        return diagonal_gaussian_log_prob(z, self.mean, self.log_var.exp())

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` latent points ``z`` (``softmax(z)`` lies on the simplex)."""
        eps = torch.randn(n, self.n_components, generator=generator, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.log_var) * eps.to(self.mean.device)


class GaussianMixturePrior(torch.nn.Module):
    """Mixture of K diagonal Gaussians, with a closed-form variational KL bound.

    ``p(z) = sum_k pi_k N(z; means_k, diag exp(log_vars_k))``. For a Gaussian posterior ``q``
    the divergence ``KL(q || p)`` has no closed form; with a categorical ``q(c | x)`` beside it
    (as in VaDE/GMVAE) the ELBO needs ``sum_k gamma_k KL(q || N_k) + KL(gamma || pi)``, which is
    smallest at ``gamma_k = softmax_k(log pi_k - KL(q || N_k))`` (the responsibilities), where it
    equals ``-logsumexp_k(log pi_k - KL(q || N_k))``. This value is an upper bound on
    ``KL(q || p)`` (so the ELBO stays a lower bound) and is exact when the components do not
    overlap.

    Parameters
    ----------
    means : Tensor of shape (K, d)
        Component means.
    log_vars : Tensor broadcastable to (K, d), default=0
        Component log-variances.
    weights : Tensor of shape (K,), optional
        Mixture weights (uniform by default).
    tail_weight : float, default=0
        Weight ``w`` of a standard multivariate Cauchy component (Student-t with one degree
        of freedom, centred at 0 with unit scale) mixed in as
        ``(1 - w) p(z) + w Cauchy(z)``: a safety net whose density falls off polynomially,
        so that points far from every Gaussian component (beyond the range of the rows EM
        saw) get a log-density of tens of nats, not of thousands. It costs ``-log(1 - w)``
        nats where the Gaussians hold the mass. The closed-form KL methods ignore it.

    Attributes
    ----------
    means, log_vars, log_weights : Tensors (buffers)
    tail_weight : float
    """

    tail_weight: float = 0.0  # also what a mixture pickled before the safety net reads

    def __init__(self, means, log_vars=0.0, weights=None, tail_weight: float = 0.0) -> None:
        super().__init__()
        means_t = torch.as_tensor(means, dtype=torch.get_default_dtype())
        if means_t.ndim != 2:
            raise ValueError("means must have shape (n_components, n_latent).")
        log_vars_t = torch.as_tensor(log_vars, dtype=means_t.dtype).expand_as(means_t).clone()
        k = means_t.shape[0]
        if weights is None:
            weights_t = torch.full((k,), 1.0 / k, dtype=means_t.dtype)
        else:
            weights_t = torch.as_tensor(weights, dtype=means_t.dtype).reshape(-1)
            if weights_t.numel() != k or not bool(torch.all(weights_t > 0)):
                raise ValueError(f"weights must be {k} positive numbers.")
            weights_t = weights_t / weights_t.sum()
        self.register_buffer("means", means_t)
        self.register_buffer("log_vars", log_vars_t)
        self.register_buffer("log_weights", torch.log(weights_t))
        if not 0.0 <= tail_weight < 1.0:
            raise ValueError(f"tail_weight must be in [0, 1), got {tail_weight}.")
        self.tail_weight = float(tail_weight)

    @classmethod
    def from_data(
        cls, X: np.ndarray, random_state: int | None = None, max_components: int = 30,
        tail_weight: float = 0.0,
    ) -> GaussianMixturePrior:
        """Diagonal Gaussian mixture fitted to ``X`` by EM, the count chosen by BIC.

        Counts 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30 (at most ``max_components``, and
        at least 5 rows per component) are tried in turn, stopping after three that do not
        lower the lowest BIC; ``reg_covar=1e-4`` keeps the variances of standardised data
        away from zero.

        Parameters
        ----------
        X : ndarray of shape (n_samples, d)
            Rows to fit (standardised).
        random_state : int, optional
            Seed of the EM initialisations.
        max_components : int, default=30
            Largest count tried.
        tail_weight : float, default=0
            Weight of the Cauchy safety net (see the class).

        Returns
        -------
        GaussianMixturePrior
            With ``n_components`` chosen by BIC (float32 buffers).
        """
        counts = [k for k in (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30)
                  if k <= max_components and (k == 1 or 5 * k <= len(X))]
        best = gaussian_mixture_by_bic(X, counts, "diag", random_state, reg_covar=1e-4)
        return cls(best.means_.astype(np.float32), np.log(best.covariances_).astype(np.float32),
                   best.weights_.astype(np.float32), tail_weight=tail_weight)

    @classmethod
    def at_simplex_corners(
        cls, n_components: int, scale: float = 3.0, log_var: float = 0.0
    ) -> GaussianMixturePrior:
        """Components at ``scale * (e_k - 1/K)``: the corners of the simplex in softmax basis.

        With ``scale = 3`` and K = 2, ``softmax`` of a component mean puts 0.95 on its corner.
        """
        eye = torch.eye(n_components, dtype=torch.get_default_dtype())
        return cls(scale * (eye - 1.0 / n_components), log_vars=log_var)

    @property
    def n_components(self) -> int:
        """Number of mixture components K."""
        return int(self.means.shape[0])

    def component_kl(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """``KL(q || N_k)`` for every component: shape (..., d) -> (..., K)."""
        return diagonal_gaussian_kl(
            mean.unsqueeze(-2), log_var.unsqueeze(-2), self.means, self.log_vars
        )

    def responsibilities(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """Optimal ``q(c | x) = softmax_k(log pi_k - KL(q || N_k))``, shape (..., K)."""
        return torch.softmax(self.log_weights - self.component_kl(mean, log_var), dim=-1)

    def kl(self, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """Variational upper bound ``-logsumexp_k(log pi_k - KL(q || N_k)) >= KL(q || p)``."""
        return -torch.logsumexp(self.log_weights - self.component_kl(mean, log_var), dim=-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Exact log-density of the mixture at ``z`` (shape (..., d) -> (...))."""
        comp = diagonal_gaussian_log_prob(z.unsqueeze(-2), self.means, self.log_vars.exp())
        log_p = torch.logsumexp(self.log_weights + comp, dim=-1)
        if not self.tail_weight:
            return log_p
        w = self.tail_weight
        return torch.logaddexp(log_p + math.log1p(-w), cauchy_log_prob(z) + math.log(w))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` points from the mixture."""
        if self.tail_weight:
            noise = torch.randn(n, self.means.shape[1] + 1, generator=generator)
            return self.from_noise(noise)
        idx = torch.multinomial(self.log_weights.exp().cpu(), n, True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype)
        idx, eps = idx.to(self.means.device), eps.to(self.means.device)
        return self.means[idx] + torch.exp(0.5 * self.log_vars[idx]) * eps

    def from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Mixture draws from standard normal noise of shape (n, d + 1), one row per draw.

        The last column picks the component (its normal CDF against the cumulative weights),
        the others are the component's standardised draw: row ``i`` depends on row ``i`` of
        ``noise`` only, so draws from a prefix of the noise are a prefix of the draws. With a
        ``tail_weight`` ``w``, a uniform above ``1 - w`` draws from the Cauchy component
        instead: the standardised draw divided by a half-normal variable read from that
        uniform's excess.
        """
        noise = noise.to(self.means.device, self.means.dtype)
        u = torch.special.ndtr(noise[:, -1].double())
        w = self.tail_weight
        cdf = torch.cumsum(self.log_weights.exp(), 0).double()
        pick = (u / (1.0 - w)).clamp_max(1.0).contiguous()  # u itself when w = 0
        idx = torch.searchsorted(cdf / cdf[-1], pick).clamp_max(self.n_components - 1)
        z = self.means[idx] + torch.exp(0.5 * self.log_vars[idx]) * noise[:, :-1]
        if not w:
            return z
        excess = ((u - (1.0 - w)) / w).clamp(1e-12, 1.0 - 1e-12)
        half_normal = torch.special.ndtri(0.5 + 0.5 * excess).to(z.dtype)
        return torch.where((u > 1.0 - w)[:, None], noise[:, :-1] / half_normal[:, None], z)


def gaussian_mixture_by_bic(
    X: np.ndarray, counts: list[int], covariance_type: str = "full",
    random_state: int | None = None, reg_covar: float = 1e-6, patience: int = 3,
):
    """The :class:`sklearn.mixture.GaussianMixture` of lowest BIC among ``counts``.

    Counts are tried in order, stopping once ``patience`` in a row have not lowered the
    lowest BIC so far.

    Returns
    -------
    sklearn.mixture.GaussianMixture
    """
    from sklearn.mixture import GaussianMixture

    best, best_bic, lowest, rises = None, np.inf, np.inf, 0
    for k in counts:
        gmm = GaussianMixture(k, covariance_type=covariance_type, reg_covar=reg_covar,
                              max_iter=300, random_state=random_state).fit(X)
        bic = gmm.bic(X)
        if bic < best_bic:
            best, best_bic = gmm, bic
        rises = rises + 1 if bic > lowest else 0
        lowest = min(lowest, bic)
        if rises >= patience:
            break
    if best is None:
        raise ValueError("counts must name at least one number of components")
    return best


class RotatedLatent(torch.nn.Module):
    """A latent distribution read in rotated coordinates: ``p(z) = base(z R)``.

    ``R`` is orthogonal, so the rotation changes no volume. With ``R`` the principal axes of
    the data, an axis-aligned (diagonal) mixture ``base`` can describe correlated data with
    one component where it would need several in the original axes.

    Parameters
    ----------
    base : torch.nn.Module
        A distribution with ``log_prob(y)`` and ``from_noise(noise)``
        (:class:`GaussianMixturePrior`).
    rotation : Tensor of shape (d, d)
        Orthogonal matrix ``R``.
    """

    def __init__(self, base: torch.nn.Module, rotation: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("rotation", torch.as_tensor(rotation))

    @property
    def n_components(self) -> int:
        """Components of the base mixture."""
        return int(self.base.n_components)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``base.log_prob(z R)``, shape (..., d) -> (...)."""
        return self.base.log_prob(z @ self.rotation.to(z.dtype))

    def from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """``base.from_noise(noise) R^T``: draws of ``p``, row by row as the base's."""
        y = self.base.from_noise(noise)
        return y @ self.rotation.to(y.dtype).T


# --------------------------------------------------------------------------------------------
# Class-conditional factorised Gaussian (GIN, Sorrenson et al. 2020)
# --------------------------------------------------------------------------------------------

__all__ += ["ClassConditionalGaussian"]


class ClassConditionalGaussian(torch.nn.Module):
    """Factorised Gaussian prior with a mean and a variance per (class, dimension).

    ``z | u ~ N(mu_u, diag(sigma_u^2))``, as in GIN (Sorrenson, Rother and Koethe, ICLR 2020).
    In training with ``empirical=True`` (the paper's default) ``mu_u`` and ``sigma_u^2`` are the
    empirical (biased) mean and variance of each class in the current batch, and gradients flow
    through them; classes with fewer than ``min_class_size`` samples in the batch are skipped.
    Running averages of these batch statistics (``running_mean``, ``running_var``) serve at
    prediction time until :meth:`set_statistics` or :meth:`fit_statistics` replaces them with
    exact full-data values. With ``empirical=False`` the means and log-standard-deviations are
    learnt parameters instead.

    Parameters
    ----------
    n_classes : int
        Number of classes ``K`` (labels are integers in ``[0, K)``).
    n_features : int
        Latent dimension ``D``.
    empirical : bool, default=True
        Use per-batch empirical statistics in training (True) or learnt parameters (False).
    momentum : float, default=0.1
        Weight of a new batch in the running statistics.
    min_class_size : int, default=2
        Classes with fewer samples in a batch are left out of that batch's loss.
    min_var : float, default=1e-12
        Floor on the variances (keeps the log finite when a dimension collapses).

    Attributes
    ----------
    running_mean, running_var : Tensor of shape (K, D)
        Prediction-time statistics (empirical mode).
    log_weights : Tensor of shape (K,)
        Log class frequencies, used by :meth:`mixture_log_prob` and :meth:`sample`.

    Examples
    --------
    >>> import torch
    >>> from skfff._torch.priors import ClassConditionalGaussian
    >>> prior = ClassConditionalGaussian(2, 3)
    >>> z, c = torch.randn(100, 3), torch.arange(100) % 2
    >>> prior.batch_nll(z, c).shape
    torch.Size([])
    >>> prior.eval().log_prob(z, c).shape
    torch.Size([100])
    """

    def __init__(
        self,
        n_classes: int,
        n_features: int,
        *,
        empirical: bool = True,
        momentum: float = 0.1,
        min_class_size: int = 2,
        min_var: float = 1e-12,
    ) -> None:
        super().__init__()
        self.n_classes = int(n_classes)
        self.n_features = int(n_features)
        self.empirical = bool(empirical)
        self.momentum = float(momentum)
        self.min_class_size = int(min_class_size)
        self.min_var = float(min_var)
        k, d = self.n_classes, self.n_features
        self.register_buffer("running_mean", torch.zeros(k, d))
        self.register_buffer("running_var", torch.ones(k, d))
        self.register_buffer("n_updates", torch.zeros(k, dtype=torch.long))
        self.register_buffer("log_weights", torch.full((k,), -math.log(k)))
        if not self.empirical:
            self.mean = torch.nn.Parameter(torch.zeros(k, d))
            self.log_std = torch.nn.Parameter(torch.zeros(k, d))

    # ---- statistics ----------------------------------------------------------------------
    def class_statistics(
        self, z: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Empirical per-class means, biased variances and counts of a batch.

        Parameters
        ----------
        z : Tensor of shape (n, D)
        c : LongTensor of shape (n,)

        Returns
        -------
        mean, var : Tensor of shape (K, D)
            Zero mean and zero variance for classes absent from the batch.
        counts : Tensor of shape (K,)
        """
        onehot = torch.nn.functional.one_hot(c, self.n_classes).to(z.dtype)
        counts = onehot.sum(0)
        denom = counts.clamp_min(1.0).unsqueeze(-1)
        mean = onehot.T @ z / denom
        var = onehot.T @ (z - mean[c]).pow(2) / denom
        return mean, var, counts

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prediction-time ``(mean, var)``, each of shape (K, D)."""
        if self.empirical:
            return self.running_mean, self.running_var.clamp_min(self.min_var)
        return self.mean, torch.exp(2.0 * self.log_std).clamp_min(self.min_var)

    @torch.no_grad()
    def set_statistics(
        self,
        mean: torch.Tensor,
        var: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> None:
        """Overwrite the prediction-time statistics (and optionally the class weights)."""
        mean = torch.as_tensor(mean).to(self.running_mean)
        var = torch.as_tensor(var).to(self.running_var)
        if self.empirical:
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
            self.n_updates.fill_(1)
        else:
            self.mean.copy_(mean)
            self.log_std.copy_(0.5 * var.clamp_min(self.min_var).log())
        if weights is not None:
            w = torch.as_tensor(weights).to(self.log_weights)
            self.log_weights.copy_((w / w.sum()).clamp_min(1e-30).log())

    @torch.no_grad()
    def exact_statistics(
        self, z: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-class means, variances and counts on a whole data set, in ``z``'s dtype.

        A class with fewer than ``min_class_size`` samples gets the pooled variance of all
        samples (its mean is its sample mean, or the pooled mean when it has none);
        variances are floored at the dtype's smallest normal number.

        Returns
        -------
        mean, var : Tensor of shape (K, D)
        counts : Tensor of shape (K,)
        """
        mean, var, counts = self.class_statistics(z, c)
        pooled_mean = z.mean(0)
        pooled_var = z.var(0, unbiased=False)
        small = counts < self.min_class_size
        var = torch.where(small.unsqueeze(-1), pooled_var.expand_as(var), var)
        mean = torch.where((counts == 0).unsqueeze(-1), pooled_mean.expand_as(mean), mean)
        return mean, var.clamp_min(torch.finfo(z.dtype).tiny), counts

    @torch.no_grad()
    def fit_statistics(self, z: torch.Tensor, c: torch.Tensor) -> None:
        """Set means, variances and class weights to :meth:`exact_statistics` on ``(z, c)``."""
        mean, var, counts = self.exact_statistics(z, c)
        self.set_statistics(mean, var, counts.clamp_min(1e-12))

    # ---- densities -------------------------------------------------------------------------
    def log_prob(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``log N(z; mu_c, diag sigma_c^2)`` per sample, shape (n,), prediction-time statistics."""
        mean, var = self.statistics()
        return diagonal_gaussian_log_prob(z, mean[c], var[c])

    def joint_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log pi_k + log N(z; mu_k, sigma_k^2)`` for every class, shape (n, K)."""
        mean, var = self.statistics()
        return diagonal_gaussian_log_prob(z.unsqueeze(-2), mean, var) + self.log_weights

    def mixture_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the class mixture ``sum_k pi_k N(z; mu_k, sigma_k^2)``, shape (n,)."""
        return torch.logsumexp(self.joint_log_prob(z), dim=-1)

    def batch_nll(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of a training batch (a scalar with gradient).

        With ``empirical=True`` in training mode the batch's own class statistics are used (and
        the running statistics updated); samples of classes with fewer than ``min_class_size``
        members are skipped (zero loss when none is left). Otherwise the prediction-time or learnt
        statistics are used.
        """
        if not (self.empirical and self.training):
            return -self.log_prob(z, c).mean()
        mean, var, counts = self.class_statistics(z, c)
        valid = counts >= self.min_class_size
        self._update_running(mean.detach(), var.detach(), valid)
        keep = valid[c]
        if not bool(keep.any()):
            return (z * 0.0).sum()
        var = var.clamp_min(self.min_var)
        nll = -diagonal_gaussian_log_prob(z[keep], mean[c[keep]], var[c[keep]])
        return nll.mean()

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, valid: torch.Tensor) -> None:
        first = (self.n_updates == 0) & valid
        m = torch.where(first, torch.ones_like(valid, dtype=mean.dtype), self.momentum)
        m = torch.where(valid, m, torch.zeros_like(m)).unsqueeze(-1)
        self.running_mean.mul_(1 - m).add_(m * mean)
        self.running_var.mul_(1 - m).add_(m * var)
        self.n_updates.add_(valid.long())

    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``z ~ N(mu_c, sigma_c^2)`` for each label in ``c``; shape (n, D)."""
        mean, var = self.statistics()
        eps = torch.randn(
            c.shape[0], self.n_features, generator=generator, device=mean.device, dtype=mean.dtype
        )
        return mean[c] + var[c].sqrt() * eps
