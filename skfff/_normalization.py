"""Does a learnt density on R^D integrate to one? An importance-sampling check.

A free-form flow's exact density reads the decoder's Jacobian at ``f(x)``; it is a normalised
density only where ``g`` inverts ``f``, so it can hold spurious mass (``benchmarks/README.rst``
has fits that integrate to 1.7-3 in 3-D). The integral is estimated by importance sampling,

    Z = integral p(u) du = E_q[p(u) / q(u)],

with a proposal ``q`` fitted to reference points (the training rows, or the model's own
samples): a Gaussian mixture (up to 10 full-covariance components, covariances widened by
1.5^2) mixed 9:1 with one Gaussian three times as wide as the points. It resolves narrow modes
that a uniform grid misses and stays honest for a density that puts its mass where the points
are; mass far outside the proposal is underestimated, and the standard error grows when the
proposal covers the density badly (the weights then become very unequal). The density
benchmark (``benchmarks/density_suite.py``) uses the same estimator.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats
from scipy.special import logsumexp

__all__ = [
    "FIT_CHECK_POINTS",
    "RENORMALIZE_TOL",
    "TwoDensities",
    "importance_integral",
    "is_normalised",
    "is_precise",
    "nearer_to_one",
]

#: Points of the normalisation check that ``fit`` runs (FreeFormFlow, ManifoldFreeFormFlow).
FIT_CHECK_POINTS = 20_000
#: ``renormalize=True`` warns when two standard errors of the integral exceed this fraction.
RENORMALIZE_TOL = 0.03


def is_normalised(estimate: float, stderr: float, tol: float = 0.03) -> bool:
    """Whether a Monte Carlo integral is 1 to within ``tol`` plus two standard errors
    (False for NaN)."""
    return bool(abs(estimate - 1.0) <= tol + 2.0 * stderr)


def is_precise(estimate: float, stderr: float) -> bool:
    """Whether an integral's estimate is finite, positive, and has two standard errors
    within ``RENORMALIZE_TOL`` of it: good enough to divide a density by."""
    return bool(math.isfinite(estimate) and estimate > 0
                and 2.0 * stderr <= RENORMALIZE_TOL * estimate)


def nearer_to_one(candidate: tuple[float, float], current: tuple[float, float]) -> bool:
    """Whether the integral ``candidate`` is nearer to 1 than ``current``, or is finite
    where ``current`` is not; False on a tie.

    Both are ``(estimate, stderr)``; the distance is ``|log Z| + 2 stderr / Z``: the ratio to
    1, plus two relative standard errors, so that of two estimates equally near 1 the more
    precise wins (a density with narrow spikes has a noisy integral, and its estimate can
    look near 1 by chance).
    """
    def distance(z: tuple[float, float]) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(abs(np.log(z[0])) + 2.0 * z[1] / z[0])

    a, b = distance(candidate), distance(current)
    return bool(a < b) or (not np.isfinite(b) and bool(np.isfinite(a)))


class TwoDensities:
    """The two exact densities of a free-form flow and the choice between them.

    For estimators whose module has ``log_prob(x, c, via=...)`` with ``via`` in
    ``{"decoder", "encoder"}``, ``log_prob_via`` and ``renormalize`` parameters, the
    attributes ``log_prob_via_`` / ``normalization_`` / ``log_normalizer_`` set in ``fit``,
    and an ``_integral(via, n_points, random_state)`` returning ``(estimate, stderr)``
    (FreeFormFlow, ManifoldFreeFormFlow).
    """

    #: Points of the integral in the end-of-fit check.
    _check_points: int = FIT_CHECK_POINTS
    #: The texts of :meth:`_warn_about` that differ between the flows: the space the
    #: density is integrated over (with a leading space, or empty), what follows "uncertain
    #: by about as much" for an imprecise estimate, why each density is not normalised, and
    #: the advice for it.
    _integral_over: str = ""
    _imprecise_hint: str = ""
    _not_normalised_causes: dict[str, str] = {}
    _not_normalised_advice: str = ""

    def _via(self) -> str:
        """The density in use: ``log_prob_via``, or what ``"auto"`` chose in ``fit``."""
        if self.log_prob_via != "auto":
            return self.log_prob_via
        return getattr(self, "log_prob_via_", "decoder")

    def _log_prob(self, via: str) -> Callable:
        """``(x, c) -> log p(x | c)`` through the module, by ``via``."""
        module = self.module_
        return lambda x, c: module.log_prob(x, c, via=via)

    def _take_the_better_normalised(self, encoder: tuple[float, float] | None = None) -> None:
        """Switch to the encoder density if its integral is the nearer to 1
        (:func:`nearer_to_one`; the decoder's is kept on a tie or when the encoder's cannot
        be computed): it needs only ``f`` one-to-one, not ``g = f^-1`` everywhere.
        ``encoder``: that integral when the caller has already measured it (same points)."""
        if encoder is None:
            try:
                encoder = self._integral("encoder", self._check_points, 0)
            except FloatingPointError:
                return
        if nearer_to_one(encoder, self.normalization_):
            self.log_prob_via_, self.normalization_ = "encoder", encoder

    def _measure_normalization(self) -> str | None:
        """The end-of-fit check: measure the integral, choose the density (``"auto"``) and
        divide by the integral (``renormalize``); return what the caller should warn about
        (see :meth:`_renormalize`).

        With ``log_prob_via="auto"`` and ``renormalize`` the encoder density is taken when
        its integral is precise: the division normalises either density, and the encoder's
        needs only ``f`` one-to-one, while the decoder's can have narrow spikes (near folds
        of ``g``) that the importance sampler misses, so that its estimate is too low and
        its standard error too small (``benchmarks/README.rst``). Otherwise the density is
        the one whose integral is nearer to 1 (:meth:`_take_the_better_normalised`).
        ``log_prob_via_`` must hold the density to measure first (``"decoder"`` for
        ``"auto"``). Raises ``FloatingPointError`` when a log-density is not finite.
        """
        encoder = None
        if self.log_prob_via == "auto" and self.renormalize:
            encoder = self._integral("encoder", self._check_points, 0)
            if is_precise(*encoder):
                self.log_prob_via_, self.normalization_ = "encoder", encoder
                return self._renormalize()
        self.normalization_ = self._integral(self.log_prob_via_, self._check_points, 0)
        if self.log_prob_via == "auto":
            self._take_the_better_normalised(encoder)
        return self._renormalize()

    def _warn_about(self, problem: str | None) -> None:
        """Warn (from ``_after_fit``) that the density was divided by an imprecise
        integral, or is not normalised (``problem``, from :meth:`_measure_normalization`)."""
        if problem is None:
            return
        estimate, stderr = self.normalization_
        where = (f"(importance sampling with {self._check_points} points; "
                 f"log_prob_via_={self.log_prob_via_!r})")
        head = (f"The density learnt by {type(self).__name__} integrates to {estimate:.3g} "
                f"+- {stderr:.2g}{self._integral_over}")
        if problem == "imprecise":
            message = (f"{head} {where}; score_samples divides it by that estimate, whose "
                       "standard error is more than 1.5 % of it, so the log-densities are "
                       f"uncertain by about as much{self._imprecise_hint}")
        else:
            message = (f"{head} instead of 1 {where}, so score_samples is not a normalised "
                       f"log-density: {self._not_normalised_causes[self.log_prob_via_]}. "
                       f"{self._not_normalised_advice}; check with normalization_constant(). "
                       "Pass check_normalization=False to skip this check.")
        # warn -> _warn_about -> _after_fit -> fit -> sklearn's fit wrapper -> the caller
        warnings.warn(message, UserWarning, stacklevel=5)

    def _renormalize(self) -> str | None:
        """Set ``log_normalizer_`` from ``normalization_`` and say what the caller should
        warn about: ``"imprecise"`` (divided by an estimate whose two standard errors exceed
        ``RENORMALIZE_TOL`` of it), ``"not normalised"`` (not divided, and off 1 by more than
        :func:`is_normalised` allows), or None."""
        self.log_normalizer_ = 0.0
        if self.normalization_ is None:
            return None
        estimate, stderr = self.normalization_
        if self.renormalize and math.isfinite(estimate) and estimate > 0:
            self.log_normalizer_ = math.log(estimate)
            return None if is_precise(estimate, stderr) else "imprecise"
        return None if is_normalised(estimate, stderr) else "not normalised"


#: Rows of log-density evaluated at once.
_BLOCK = 20_000


def importance_integral(
    log_density: Callable[[np.ndarray], np.ndarray],
    X_ref: np.ndarray,
    n_samples: int = 50_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Importance-sampling estimate of ``integral exp(log_density(u)) du`` over R^D.

    Parameters
    ----------
    log_density : callable
        Log-density of an (n, D) array, returning (n,).
    X_ref : ndarray of shape (m, D)
        Points the proposal is fitted to (where the density should hold its mass).
    n_samples : int, default=50_000
        Proposal draws.
    seed : int, default=0
        Seed of the proposal fit and draws.

    Returns
    -------
    estimate, stderr : float
        ``mean(p / q)`` and its standard error ``std(p / q) / sqrt(n_samples)``; both NaN
        when the log-density is NaN or ``+inf`` somewhere.
    """
    from sklearn.mixture import GaussianMixture

    d = X_ref.shape[1]
    gmm = GaussianMixture(min(10, max(1, len(X_ref) // 50)), random_state=seed).fit(X_ref)
    means = [*gmm.means_, X_ref.mean(0)]
    covs = [*(2.25 * gmm.covariances_), 9.0 * np.atleast_2d(np.cov(X_ref.T))]
    weights = np.array([*(0.9 * gmm.weights_), 0.1])
    comps = [stats.multivariate_normal(m, c) for m, c in zip(means, covs, strict=True)]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_samples, weights)
    Z = np.concatenate(
        [c.rvs(size=k, random_state=rng).reshape(k, d) for c, k in zip(comps, counts, strict=True)]
    )
    log_q = logsumexp(
        np.stack([c.logpdf(Z).reshape(-1) for c in comps], 1) + np.log(weights), axis=1
    )
    log_p = np.concatenate(
        [log_density(Z[s : s + _BLOCK]) for s in range(0, len(Z), _BLOCK)]
    ).astype(np.float64)
    if np.isnan(log_p).any() or np.isposinf(log_p).any():
        return float("nan"), float("nan")
    log_w = log_p - log_q
    estimate = float(np.exp(logsumexp(log_w) - np.log(n_samples)))
    w = np.exp(log_w - log_w.max())
    stderr = estimate * float(w.std(ddof=1) / w.mean()) / math.sqrt(n_samples)
    return estimate, stderr
