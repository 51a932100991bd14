"""Known-density tasks for benchmarking density estimators (issue 11).

Every synthetic task has a sampler and an exact log-density, so a model's held-out negative
log-likelihood minus the Monte Carlo entropy ``-mean(log p(X_test))`` of the same test rows
estimates the Kullback-Leibler divergence ``KL(p || q)``: the *gap*, zero for a perfect model.
The small real tables shipped with scikit-learn have no true density; on them models are
compared by held-out NLL alone.

The tasks are split in two parts, so that defaults can be chosen on one and reported on the
other without flattering themselves:

``TUNE``
    ring of 8 Gaussians (2-D), checkerboard (2-D), banana chain (4-D), gentle sine chain (4-D),
    Neal's funnel (4-D), Student-t (4-D), mixture of very different scales (3-D), rotated
    nonlinear chain (8-D; with the ring, the two data sets the pre-issue defaults were chosen
    on); tables: diabetes, wine.
``REPORT``
    grid of 25 Gaussians (2-D), two spirals (2-D), steep sine chain (8-D, the density of
    issue 11's complaint), banana chain (6-D), funnel (8-D), Student-t (8-D), mixture of very
    different scales (6-D), rotated nonlinear chain (16-D); tables: breast cancer, digits.

Each report task is either a family absent from the tune part (grid, spirals) or a harder
member of a tuned family (higher dimension, steeper or thinner), so it tests whether a setting
carries over.

Use from other benchmarks::

    from density_suite import TASKS, get_tasks
    task = TASKS["sine_steep_8d"]
    X_train, X_test = task.train_test(500, 5000, seed=0)
    entropy = task.entropy(X_test)            # None for real tables

Real tables are split 2:1 into train and test rows per seed (``n_train`` is capped by what is
available); their discrete columns are dequantised (see :func:`_dequantise`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from scipy.special import logsumexp

__all__ = [
    "DensityTask",
    "REPORT_TASKS",
    "TASKS",
    "TUNE_TASKS",
    "get_tasks",
    "grid_integral",
    "importance_integral",
    "normalisation",
]

Sampler = Callable[[int, np.random.Generator], np.ndarray]
LogDensity = Callable[[np.ndarray], np.ndarray]
_LOG_2PI = float(np.log(2 * np.pi))


@dataclass(frozen=True)
class DensityTask:
    """One benchmark task: a density to learn from samples.

    Parameters
    ----------
    name : str
        Short identifier, used on the command line.
    n_features : int
        Dimension of the samples.
    part : {"tune", "report"}
        Which half of the suite the task belongs to.
    character : str
        One line on what makes the task hard.
    sampler : callable or None
        ``sampler(n, rng)`` returns ``n`` samples; ``None`` for a real table.
    log_density : callable or None
        Exact ``log p(X)``, shape ``(n,)``; ``None`` for a real table.
    table : callable or None
        For a real table, returns the (dequantised) data matrix.
    gaussian_mixture : bool
        True when the true density is itself a Gaussian mixture (GMM should be near
        perfect there).
    """

    name: str
    n_features: int
    part: str
    character: str
    sampler: Sampler | None = field(default=None, repr=False)
    log_density: LogDensity | None = field(default=None, repr=False)
    table: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    gaussian_mixture: bool = False

    @property
    def has_density(self) -> bool:
        """Whether the task has a known density (False for real tables)."""
        return self.log_density is not None

    def sample(self, n_samples: int, seed: int) -> np.ndarray:
        """Draw ``n_samples`` rows with a seeded generator (synthetic tasks only).

        Parameters
        ----------
        n_samples : int
            Number of rows.
        seed : int
            Seed of :func:`numpy.random.default_rng`.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        if self.sampler is None:
            raise ValueError(f"{self.name} is a real table; use train_test")
        return self.sampler(n_samples, np.random.default_rng(seed))

    def train_test(self, n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Training and test rows for one seed.

        Synthetic tasks draw the two sets with independent streams of ``seed``. Real tables
        are shuffled with ``seed`` and split 2:1; ``n_train`` and ``n_test`` then only cap
        the sizes.

        Parameters
        ----------
        n_train, n_test : int
            Requested sizes.
        seed : int
            Seed.

        Returns
        -------
        X_train, X_test : ndarray
        """
        if self.sampler is not None:
            train_seed, test_seed = np.random.SeedSequence([seed, 11]).spawn(2)
            X_train = self.sampler(n_train, np.random.default_rng(train_seed))
            X_test = self.sampler(n_test, np.random.default_rng(test_seed))
            return X_train, X_test
        assert self.table is not None
        X = self.table()
        perm = np.random.default_rng(seed).permutation(len(X))
        n_tr = (2 * len(X)) // 3
        return X[perm[: min(n_train, n_tr)]], X[perm[n_tr:][:n_test]]

    def entropy(self, X_test: np.ndarray) -> float | None:
        """Monte Carlo entropy ``-mean log p(X_test)`` (``None`` for real tables)."""
        if self.log_density is None:
            return None
        return float(-np.mean(self.log_density(X_test)))


# --------------------------------------------------------------------- Gaussian mixtures
def _isotropic_mixture(
    means: np.ndarray, stds: np.ndarray, weights: np.ndarray
) -> tuple[Sampler, LogDensity]:
    """Sampler and log-density of a mixture of isotropic Gaussians."""
    means = np.asarray(means, dtype=float)
    stds = np.asarray(stds, dtype=float)
    log_w = np.log(np.asarray(weights, dtype=float) / np.sum(weights))
    k, d = means.shape

    def sampler(n: int, rng: np.random.Generator) -> np.ndarray:
        lab = rng.choice(k, size=n, p=np.exp(log_w))
        return means[lab] + stds[lab, None] * rng.standard_normal((n, d))

    def log_density(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        sq = ((X[:, None, :] - means[None]) ** 2).sum(-1)
        log_c = -0.5 * sq / stds**2 - d * np.log(stds) - 0.5 * d * _LOG_2PI
        return logsumexp(log_c + log_w, axis=1)

    return sampler, log_density


def _ring(n_modes: int = 8, radius: float = 4.0, std: float = 0.5):
    """Isotropic Gaussians on a circle (the pre-issue tuning set of bench_flow)."""
    ang = 2 * np.pi * np.arange(n_modes) / n_modes
    means = radius * np.stack([np.cos(ang), np.sin(ang)], 1)
    return _isotropic_mixture(means, np.full(n_modes, std), np.ones(n_modes))


def _grid(per_side: int = 5, spacing: float = 1.0, std: float = 0.15):
    """Isotropic Gaussians on a square grid."""
    ticks = spacing * (np.arange(per_side) - (per_side - 1) / 2)
    means = np.stack(np.meshgrid(ticks, ticks), -1).reshape(-1, 2)
    return _isotropic_mixture(means, np.full(len(means), std), np.ones(len(means)))


def _scales(n_features: int):
    """A broad, a medium and a very narrow Gaussian: scales 3, 0.5 and 0.05 (60x apart)."""
    means = np.zeros((3, n_features))
    means[1, 0] = 2.0
    means[2, :2] = [-1.0, 1.5]
    return _isotropic_mixture(means, np.array([3.0, 0.5, 0.05]), np.array([0.4, 0.35, 0.25]))


# ------------------------------------------------------------------- 2-D special shapes
def _checkerboard():
    """Uniform on the 8 dark squares of a 4 x 4 board on [-2, 2]^2: density 1/8 there."""

    def on_board(X: np.ndarray) -> np.ndarray:
        inside = np.all(np.abs(X) < 2, axis=1)
        cells = np.floor(X + 2).astype(int)
        return inside & ((cells.sum(1) % 2) == 0)

    def sampler(n: int, rng: np.random.Generator) -> np.ndarray:
        col = rng.integers(0, 4, n)
        row = 2 * rng.integers(0, 2, n) + (col % 2)  # row + col even
        return np.stack([col, row], 1) - 2 + rng.random((n, 2))

    def log_density(X: np.ndarray) -> np.ndarray:
        return np.where(on_board(np.asarray(X, dtype=float)), -np.log(8.0), -np.inf)

    return sampler, log_density


def _two_spirals(turns: float = 1.5, noise: float = 0.1, n_quad: int = 4000):
    """Two interleaved spiral arms with Gaussian noise.

    The angle is ``theta = theta_max sqrt(u)``, ``u ~ U(0, 1)`` (uniform along the arm's
    area), the arm point ``+-(theta / pi) (cos theta, sin theta)``, and ``noise`` isotropic
    Gaussian noise is added. The log-density integrates the noise over ``theta`` by the
    midpoint rule on ``n_quad`` nodes: neighbouring nodes are under 0.01 apart on the curve,
    a tenth of the noise, so the quadrature error is far below the gaps reported.
    """
    theta_max = 2 * np.pi * turns

    def arm(theta: np.ndarray) -> np.ndarray:
        r = theta / np.pi
        return np.stack([r * np.cos(theta), r * np.sin(theta)], -1)

    def sampler(n: int, rng: np.random.Generator) -> np.ndarray:
        theta = theta_max * np.sqrt(rng.random(n))
        sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)[:, None]
        return sign * arm(theta) + noise * rng.standard_normal((n, 2))

    nodes = (np.arange(n_quad) + 0.5) / n_quad * theta_max
    log_wq = np.log(2 * nodes / theta_max**2 * (theta_max / n_quad))  # p(theta) d theta
    centres = np.concatenate([arm(nodes), -arm(nodes)])
    log_wc = np.concatenate([log_wq, log_wq]) + np.log(0.5)

    def log_density(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        out = np.empty(len(X))
        for s in range(0, len(X), 512):
            sq = ((X[s : s + 512, None, :] - centres[None]) ** 2).sum(-1)
            log_c = -0.5 * sq / noise**2 - 2 * np.log(noise) - _LOG_2PI
            out[s : s + 512] = logsumexp(log_c + log_wc, axis=1)
        return out

    return sampler, log_density


# ---------------------------------------------------------------- triangular chains
def _chain(
    n_features: int,
    link: Callable[[np.ndarray], np.ndarray],
    noise: float,
    rotation_seed: int | None = None,
):
    """``u_1 ~ N(0, 1)``, ``u_d = link(u_{d-1}) + noise e_d``, optionally ``x = Q u``.

    The map from ``e`` to ``u`` is triangular with diagonal ``noise``, so
    ``log p(x) = sum_d log N(e_d) - (D - 1) log(noise)`` exactly (a rotation has unit
    determinant).
    """
    q = None
    if rotation_seed is not None:
        q, _ = np.linalg.qr(np.random.RandomState(rotation_seed).standard_normal((n_features,) * 2))

    def sampler(n: int, rng: np.random.Generator) -> np.ndarray:
        e = rng.standard_normal((n, n_features))
        u = np.empty_like(e)
        u[:, 0] = e[:, 0]
        for d in range(1, n_features):
            u[:, d] = link(u[:, d - 1]) + noise * e[:, d]
        return u if q is None else u @ q.T

    def log_density(X: np.ndarray) -> np.ndarray:
        u = np.asarray(X, dtype=float)
        if q is not None:
            u = u @ q
        e = np.empty_like(u)
        e[:, 0] = u[:, 0]
        e[:, 1:] = (u[:, 1:] - link(u[:, :-1])) / noise
        return -0.5 * (e**2).sum(1) - 0.5 * n_features * _LOG_2PI - (n_features - 1) * np.log(noise)

    return sampler, log_density


def _banana_link(strength: float) -> Callable[[np.ndarray], np.ndarray]:
    """``strength (h(t)^2 - 1)`` with ``h(t) = 2 tanh(t / 2)``: a parabola, kept bounded so
    the chain does not blow up along its length."""

    def link(t: np.ndarray) -> np.ndarray:
        return strength * ((2 * np.tanh(t / 2)) ** 2 - 1)

    return link


def _sine_link(amplitude: float, frequency: float) -> Callable[[np.ndarray], np.ndarray]:
    """``amplitude sin(frequency t)``."""

    def link(t: np.ndarray) -> np.ndarray:
        return amplitude * np.sin(frequency * t)

    return link


# ------------------------------------------------------------------- funnel, Student-t
def _funnel(n_features: int, scale_std: float = 1.5):
    """Neal's funnel: ``v ~ N(0, scale_std^2)``, ``x_i | v ~ N(0, exp(v))`` for i >= 2.

    Neal uses ``scale_std = 3`` in 10-D; 1.5 keeps the neck (std ``exp(v / 2)``, 0.22 to 4.5
    at two standard deviations of ``v``) within reach of a few thousand samples.
    """

    def sampler(n: int, rng: np.random.Generator) -> np.ndarray:
        v = scale_std * rng.standard_normal(n)
        x = np.exp(v / 2)[:, None] * rng.standard_normal((n, n_features - 1))
        return np.column_stack([v, x])

    def log_density(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        v, x = X[:, 0], X[:, 1:]
        log_v = -0.5 * (v / scale_std) ** 2 - np.log(scale_std) - 0.5 * _LOG_2PI
        log_x = -0.5 * (x**2).sum(1) * np.exp(-v) - 0.5 * (n_features - 1) * (v + _LOG_2PI)
        return log_v + log_x

    return sampler, log_density


def _student_t(n_features: int, df: float = 3.0):
    """Multivariate Student-t with ``df`` degrees of freedom and a fixed correlated shape."""
    rs = np.random.RandomState(100 + n_features)
    a = rs.standard_normal((n_features, n_features))
    shape = a @ a.T / n_features + 0.3 * np.eye(n_features)
    dist = stats.multivariate_t(loc=np.zeros(n_features), shape=shape, df=df)

    def sampler(n: int, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(dist.rvs(size=n, random_state=rng)).reshape(n, n_features)

    def log_density(X: np.ndarray) -> np.ndarray:
        return np.atleast_1d(dist.logpdf(np.asarray(X, dtype=float)))

    return sampler, log_density


def _rotated_chain(n_features: int):
    """The rotated 8-D-style chain of :func:`skfff.datasets.make_nonlinear_gaussian`
    (``u_d = 0.5 e_d + sin(1.5 u_{d-1})``, fixed rotation), rebuilt here on the
    triangular-chain helper with the same rotation seed, so train and test share it."""
    return _chain(n_features, _sine_link(1.0, 1.5), 0.5, rotation_seed=n_features)


# ------------------------------------------------------------------------ real tables
def _dequantise(X: np.ndarray, seed: int = 0, max_levels: int = 20) -> np.ndarray:
    """Spread discrete columns into continuous ones.

    A column with at most ``max_levels`` distinct values (diabetes' sex, the digits' 17
    grey levels, a constant pixel) has no density: a model can put unbounded mass on its
    few values. Such a column gets uniform noise as wide as its smallest gap between
    levels (1 for a constant column), the usual dequantisation, so every model sees the
    same continuous data. The noise is drawn once, with a fixed seed.
    """
    X = np.asarray(X, dtype=float).copy()
    rng = np.random.default_rng(seed)
    for j in range(X.shape[1]):
        levels = np.unique(X[:, j])
        if len(levels) <= max_levels:
            width = np.diff(levels).min() if len(levels) > 1 else 1.0
            X[:, j] += width * (rng.random(len(X)) - 0.5)
    return X


def _sklearn_table(loader_name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn import datasets

        return _dequantise(getattr(datasets, loader_name)().data)

    return load


# ----------------------------------------------------------------------------- registry
def _synthetic(
    name: str, d: int, part: str, character: str, pair, gaussian_mixture: bool = False
) -> DensityTask:
    sampler, log_density = pair
    return DensityTask(name, d, part, character, sampler, log_density, None, gaussian_mixture)


def _real(name: str, loader: str, d: int, part: str, character: str) -> DensityTask:
    return DensityTask(name, d, part, character, None, None, _sklearn_table(loader))


_ALL: list[DensityTask] = [
    # ---- tune
    _synthetic("ring8_2d", 2, "tune", "8 separated modes on a circle (true GMM)", _ring(), True),
    _synthetic("checkerboard_2d", 2, "tune", "uniform squares, sharp edges", _checkerboard()),
    _synthetic(
        "banana_chain_4d",
        4,
        "tune",
        "curved ridges, parabola links",
        _chain(4, _banana_link(0.8), 0.35),
    ),
    _synthetic(
        "sine_gentle_4d",
        4,
        "tune",
        "gentle sine chain x_d = sin(x_{d-1}) + 0.4 e",
        _chain(4, _sine_link(1.0, 1.0), 0.4),
    ),
    _synthetic("funnel_4d", 4, "tune", "Neal's funnel, scale varies with v", _funnel(4)),
    _synthetic("student_t_4d", 4, "tune", "heavy tails, df=3, correlated", _student_t(4)),
    _synthetic("scales_3d", 3, "tune", "stds 3, 0.5, 0.05 mixed (true GMM)", _scales(3), True),
    _synthetic(
        "rotated_chain_8d",
        8,
        "tune",
        "rotated sine chain (pre-issue tuning set)",
        _rotated_chain(8),
    ),
    _real("diabetes", "load_diabetes", 10, "tune", "442 rows, sex dequantised"),
    _real("wine", "load_wine", 13, "tune", "178 rows, 13 chemistry columns"),
    # ---- report
    _synthetic("grid25_2d", 2, "report", "5 x 5 grid of tight modes (true GMM)", _grid(), True),
    _synthetic("two_spirals_2d", 2, "report", "two thin interleaved arms", _two_spirals()),
    _synthetic(
        "sine_steep_8d",
        8,
        "report",
        "steep sine chain x_d = sin(2 x_{d-1}) + 0.2 e",
        _chain(8, _sine_link(1.0, 2.0), 0.2),
    ),
    _synthetic(
        "banana_chain_6d",
        6,
        "report",
        "longer, thinner banana chain",
        _chain(6, _banana_link(1.0), 0.25),
    ),
    _synthetic("funnel_8d", 8, "report", "Neal's funnel in 8-D", _funnel(8)),
    _synthetic("student_t_8d", 8, "report", "heavy tails, df=3, correlated", _student_t(8)),
    _synthetic("scales_6d", 6, "report", "stds 3, 0.5, 0.05 in 6-D (true GMM)", _scales(6), True),
    _synthetic("rotated_chain_16d", 16, "report", "rotated sine chain, 16-D", _rotated_chain(16)),
    _real("breast_cancer", "load_breast_cancer", 30, "report", "569 rows, 30 skewed columns"),
    _real("digits", "load_digits", 64, "report", "1 797 8x8 images, dequantised"),
]

TASKS: dict[str, DensityTask] = {t.name: t for t in _ALL}
"""Every task by name, tune part first."""
TUNE_TASKS: list[str] = [t.name for t in _ALL if t.part == "tune"]
"""Names of the tasks that defaults may be tuned on."""
REPORT_TASKS: list[str] = [t.name for t in _ALL if t.part == "report"]
"""Names of the held-back tasks that figures are reported on."""


def get_tasks(names: Iterable[str] | str) -> list[DensityTask]:
    """Resolve task names; ``"tune"``, ``"report"`` and ``"all"`` select whole parts.

    Parameters
    ----------
    names : str or iterable of str
        Task names or part names; a string may be comma-separated.

    Returns
    -------
    tasks : list of DensityTask
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n]
    out: list[DensityTask] = []
    for name in names:
        if name in ("tune", "report", "all"):
            picked = [t for t in _ALL if name == "all" or t.part == name]
        elif name in TASKS:
            picked = [TASKS[name]]
        else:
            raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
        out.extend(t for t in picked if t not in out)
    return out


def grid_integral(
    log_density: LogDensity,
    X_ref: np.ndarray,
    n_per_dim: int | None = None,
    pad: float = 0.25,
) -> float:
    """Integral of ``exp(log_density)`` over a box around ``X_ref`` (midpoint rule).

    A normalised density gives a value just under 1 (the mass outside the box is lost);
    apply the same box to the true density to see how much. Meant for 2 or 3 dimensions.

    Parameters
    ----------
    log_density : callable
        Vectorised log-density.
    X_ref : ndarray of shape (n, d)
        Points that set the box: their range, widened by ``pad`` of it on each side.
    n_per_dim : int, default=None
        Grid nodes per axis (default 300 in 2-D, 60 in 3-D).
    pad : float, default=0.25
        Padding as a fraction of the range.

    Returns
    -------
    integral : float
    """
    d = X_ref.shape[1]
    if n_per_dim is None:
        n_per_dim = {1: 2000, 2: 300, 3: 60}.get(d, 20)
    lo, hi = X_ref.min(0), X_ref.max(0)
    lo, hi = lo - pad * (hi - lo), hi + pad * (hi - lo)
    step = (hi - lo) / n_per_dim
    axes = [lo[i] + step[i] * (np.arange(n_per_dim) + 0.5) for i in range(d)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    log_p = np.concatenate([log_density(pts[s : s + 20000]) for s in range(0, len(pts), 20000)])
    if np.isnan(log_p).any() or np.isposinf(log_p).any():
        return float("nan")  # a model that answers nan/inf somewhere is not normalised
    return float(np.exp(logsumexp(log_p) + np.log(step).sum()))


def importance_integral(
    log_density: LogDensity, X_ref: np.ndarray, n_samples: int = 50000, seed: int = 0
) -> float:
    """Importance-sampling estimate of ``integral exp(log_density)`` (any dimension).

    The estimator of :meth:`skfff.FreeFormFlow.normalization_constant`
    (``skfff._normalization``), with the proposal fitted to ``X_ref`` (the training rows):
    a Gaussian mixture, covariances widened by 1.5^2, mixed 9:1 with one Gaussian three
    times as wide as the data. It resolves narrow modes that a uniform grid misses (the
    0.05-wide component of ``scales_3d`` in a 60^3 grid). NaN when the model answers NaN or
    ``+inf`` somewhere.
    """
    from skfff._normalization import importance_integral as estimate

    return estimate(log_density, X_ref, n_samples, seed)[0]


def normalisation(log_density: LogDensity, X_ref: np.ndarray, seed: int = 0) -> float | None:
    """The density's total mass: grid integral in 1-D and 2-D, importance sampling in 3-D.

    Parameters
    ----------
    log_density : callable
        Vectorised log-density.
    X_ref : ndarray of shape (n, d)
        Reference points (training rows) that set the box or the proposal.
    seed : int, default=0
        Seed of the importance sampler.

    Returns
    -------
    integral : float or None
        ``None`` above three dimensions.
    """
    d = X_ref.shape[1]
    if d <= 2:
        return grid_integral(log_density, X_ref)
    if d == 3:
        return importance_integral(log_density, X_ref, seed=seed)
    return None
