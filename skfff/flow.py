"""FreeFormFlow: any dimension-preserving network pair as a normalizing flow."""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from typing import Any

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin, DensityMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._checks import check_integer
from ._conditioning import ConditionalMixin
from ._mutual_information import mutual_information
from ._normalization import TwoDensities, importance_integral
from ._torch.fff import FreeFormFlowModule
from ._torch.networks import ResidualMLP, make_network
from ._torch.priors import GaussianMixturePrior, RotatedLatent, StudentTLatent
from .base import BaseTorchEstimator, _OverfitGuard

__all__ = ["FreeFormFlow"]

#: ``beta_scale="auto"``: ``beta`` is kept up to this variance ratio ``exp(2 I / d)`` of the
#: data to the conditional density, and multiplied by the excess (at most
#: :data:`_MAX_BETA_SCALE` times) beyond it.
_REFERENCE_VARIANCE_RATIO = 5.0
_MAX_BETA_SCALE = 10.0
#: What the ``"auto"`` settings of the networks and the training resolve to, for a density
#: estimator (unconditional, or conditioned on labels; chosen on the density suite) and for
#: a posterior estimator (conditioned on continuous ``y``; chosen on
#: ``benchmarks/bench_sbi.py``). See the class Notes.
_AUTO_SETTINGS: dict[str, dict[str, Any]] = {
    "density": {
        "hidden_features": 128, "n_blocks": 3, "off_data_weight": 0.1, "early_stopping": True,
    },
    "posterior": {
        "hidden_features": 256, "n_blocks": 2, "off_data_weight": 0.0, "early_stopping": False,
    },
}
#: ``max_epochs="auto"`` of a posterior estimator: at most the epochs that give about this
#: many optimiser steps (what the density rule gives at 10 000 simulations: 300 epochs of 36
#: batches), at least 30 (``_AUTO_MIN_EPOCHS``); never more than the density rule.
_POSTERIOR_STEPS = 10_800
#: Weight of the Cauchy safety net in the ``"mixture"`` latent (chosen on the density
#: suite's tuning half, 500 rows, seeds 0-1, against 0.01; ``benchmarks/README.rst``).
_LATENT_TAIL_WEIGHT = 1e-3


class FreeFormFlow(
    TwoDensities,
    ConditionalMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    DensityMixin,
    BaseTorchEstimator,
):
    """Free-form flow: a normalizing flow from any dimension-preserving network.

    An encoder ``f`` maps data to a latent space with a simple distribution ``p_Z`` (a
    Gaussian mixture fitted to the data, the standard normal, or independent Student-t
    distributions: ``latent``) and a decoder ``g`` maps back. Both are free-form networks
    (residual MLPs by default, or any ``torch.nn.Module`` you pass). Training minimises,
    per sample,

    ``beta * |x - g(f(x))|^2 - log p_Z(f(x)) - v^T J_f(x) SG(J_g(f(x)) v)``,

    whose last term has the gradient of ``log|det J_f(x)|`` when ``g = f^-1``, estimated
    with Hutchinson probes ``v`` at the cost of one forward-mode and one reverse-mode pass,
    whatever the dimension (Draxler et al., 2024). Densities are exact:
    ``log p(x) = log p_Z(f(x)) - log|det J_g(f(x))|`` from the full decoder Jacobian.

    Inputs are standardised inside (the log-density is corrected for it). With
    ``conditional`` set, ``fit(X, y)`` learns ``p(x | y)``.

    Parameters
    ----------
    hidden_features : int or "auto", default="auto"
        Width of the default residual MLPs. ``"auto"``: 256 for a flow conditioned on
        continuous ``y`` (a posterior estimator; see Notes), 128 otherwise.
    n_blocks : int or "auto", default="auto"
        Residual blocks in each default network. ``"auto"``: 2 for a flow conditioned on
        continuous ``y``, 3 otherwise.
    beta : float, default=100.0
        Weight of the reconstruction loss, which keeps ``g`` close to ``f^-1``.
    beta_scale : "auto" or float, default="auto"
        Factor applied to ``beta`` (the weight used is ``beta * beta_scale_``). Samples
        ``g(z)`` follow the density only where ``g`` inverts ``f`` to well within the
        density's length scale, and a conditional density ``p(x | y)`` can be far narrower
        than the spread of ``x``. ``"auto"``: for a conditional flow,
        ``clip(r / 5, 1, 10)`` with ``r = exp(2 I / n_features)``, where ``I`` is a
        nearest-neighbour estimate of the mutual information between ``x`` and ``y`` on the
        training rows (``mutual_information_``; for Gaussians ``r`` is the ratio of the
        marginal to the conditional variance, geometrically averaged over the features);
        1 for an unconditional flow. Chosen on ``benchmarks/bench_sbi.py``: on two moons
        and the Gaussian mixture (``r`` of 48 and 82) a larger ``beta`` made the samples
        match the posterior, on SLCP, Gaussian linear and the GLM (``r`` of 1.4-2) it made
        them worse (``benchmarks/README.rst``, "Simulation-based inference").
    n_hutchinson : int, default=1
        Hutchinson probe vectors per sample (1 is the reference default).
    off_data_weight : float or "auto", default="auto"
        Weight, relative to ``beta``, of an extra reconstruction loss on points
        ``x + N(0, I)`` (in standardised units) around the data. The exact density uses
        ``g``'s Jacobian at ``f(x)``, which is only right where ``g`` inverts ``f``; nothing
        else constrains them off the data, and thin spurious ridges of density formed there.
        0 gives the paper's loss. ``"auto"``: 0.1, or 0 for a flow conditioned on continuous
        ``y`` (it did not change the posterior samples and costs a third of each step).
    encoder, decoder : torch.nn.Module, callable or None, default=None
        Custom networks. A module instance is deep-copied at each fit; a callable is
        called as ``factory(n_features, n_features, n_conditions)``. Modules whose
        ``forward`` takes two arguments receive ``(x, c)``; one-argument modules receive
        ``x`` (or ``cat([x, c])`` when conditional). ``None`` builds a residual MLP whose
        last layer starts at zero, so ``f`` and ``g`` start as the identity.
    check_normalization : bool or "auto", default="auto"
        At the end of ``fit``, estimate the integral of the learnt density with
        :meth:`normalization_constant` (20 000 points, seeded) and warn when it is off 1
        by more than 3 % plus two standard errors: the exact density is normalised only
        where ``g`` inverts ``f``, and fits that put extra mass elsewhere exist (the density
        benchmark's ``scales_3d`` fits integrated to 1.3-1.9). ``"auto"`` checks
        unconditional flows of up to 3 features (about half a second), where the
        importance-sampling estimate is reliable; ``True`` checks any dimension (the
        estimate is then a rough lower bound: see :meth:`normalization_constant`);
        ``False`` never checks. The result is ``normalization_``.
    renormalize : bool, default=True
        Divide the density by the integral the end-of-fit check measured
        (``normalization_``), so that ``score_samples`` is a normalised log-density up to
        that estimate's Monte Carlo error, and held-out log-likelihoods can be compared
        honestly with other density estimators. A standard error above 1.5 % of the
        estimate is warned about (the density then has narrow spikes the proposal does not
        resolve). Only when the check ran (``check_normalization``; by default unconditional
        flows of up to 3 features): nothing is divided otherwise. Samples from
        :meth:`sample` are unaffected (they follow the decoder). ``False`` keeps the
        network's density as it is and warns when it is off 1. On the density suite's
        2-D tasks at 500 rows the raw integrals were 1.00-1.49 (``benchmarks/README.rst``).
    latent : {"auto", "normal", "student_t", "mixture"}, default="auto"
        The latent distribution. ``"normal"``: ``N(0, I)``, the paper's. ``"student_t"``:
        independent Student-t distributions with degrees of freedom learnt per dimension
        (starting at 30, at least 1; ``latent_df_``), for heavy-tailed data: residual
        networks grow at most linearly far from the data, so a Gaussian latent gives the
        density Gaussian tails whatever the data's, a Student-t latent polynomial ones.
        ``"mixture"``: a Gaussian mixture fitted by EM to the standardised training rows
        before training, diagonal in their principal axes, its number of components chosen
        by BIC (1 to 30, ``n_latent_components_``), then kept fixed: the networks start at
        the identity, so the flow starts as that mixture and learns what it misses
        (unconditional flows only). A standard Cauchy component of weight 0.001 is mixed
        in: EM's Gaussians are narrow where the training rows are sparse, and without it a
        point beyond the rows' range (the far tail of skewed data) got a log-density
        thousands of nats too low. ``"auto"``: the mixture for unconditional flows, the
        normal for conditional ones (the choice is ``latent_``; see Notes). ``transform``
        and ``sample`` use the chosen latent space.
    log_prob_via : {"auto", "decoder", "encoder"}, default="auto"
        The exact density ``score_samples`` returns. ``"decoder"``: ``log p_Z(f(x)) -
        log|det J_g(f(x))|``, the density of the samples ``g(z)`` (the paper's choice).
        ``"encoder"``: ``log p_Z(f(x)) + log|det J_f(x)|``, the flow defined by ``f``,
        normalised whenever ``f`` is one-to-one, whatever ``g``. They agree when ``g =
        f^-1``. ``"auto"``: with ``renormalize``, the encoder's whenever the end-of-fit check
        estimates its integral precisely (then both would be normalised by the division,
        and the decoder's can have narrow spikes that the check misses); otherwise the one
        whose integral is the nearer to 1 (the decoder's on a tie, and without the check).
        The choice is ``log_prob_via_``. On the density suite's 2-3-D tasks the encoder
        density was the better normalised in every fit, and the better on held-out data
        once both were normalised (``benchmarks/README.rst``).
    conditional : bool or {"categorical", "continuous"}, default=False
        Learn ``p(x | y)`` from ``fit(X, y)``: ``"categorical"`` one-hot encodes labels
        (a column of labels is taken as 1-D), ``"continuous"`` standardises numbers (one
        or several columns). ``True`` infers the kind: strings, booleans, or integer
        values with at most 20 distinct values are categorical, anything else
        continuous. The encoding of the first fit is kept on warm refits. At prediction
        time ``y`` is one row per sample or one for all (a scalar, or a 1-D array of the
        condition's columns such as one observation). With ``False`` a ``y`` passed to
        ``fit`` is ignored, as :class:`~sklearn.decomposition.PCA` does, so the flow can
        sit inside a supervised :class:`~sklearn.pipeline.Pipeline`.
    %(training_parameters)s

    Attributes
    ----------
    net_ : skorch.NeuralNet
        The trained skorch net; ``net_.module_`` holds the encoder and decoder.
    history_ : skorch.History
        Per epoch: ``train_loss`` (the surrogate objective), ``valid_nll`` (exact negative
        log-likelihood of the standardised validation rows), ``valid_reconstruction``
        (squared error of ``g(f(x))``) and ``valid_loss = valid_nll + beta *
        valid_reconstruction``, the training objective with the exact log-determinant,
        which early stopping monitors (the NLL alone can look good while ``g`` drifts
        from ``f^-1``).
    normalization_ : tuple of (float, float) or None
        ``(estimate, stderr)`` of the integral of the network's density from the end-of-fit
        check (see ``check_normalization``), before ``renormalize`` divides by it; None when
        it did not run.
    log_normalizer_ : float
        What ``score_samples`` subtracts: the log of ``normalization_``'s estimate with
        ``renormalize=True`` (when the check ran), else 0.
    log_prob_via_ : {"decoder", "encoder"}
        The density ``score_samples`` uses when ``log_prob_via="auto"``.
    latent_ : {"normal", "student_t", "mixture"}
        The latent distribution in use (what ``latent="auto"`` chose).
    latent_df_ : ndarray of shape (n_features,) or None
        The learnt degrees of freedom of the Student-t latent, None for the others.
    n_latent_components_ : int or None
        Components of the mixture latent (chosen by BIC), None for the others.
    beta_scale_ : float
        The factor applied to ``beta`` (what ``beta_scale="auto"`` chose).
    mutual_information_ : float or None
        The estimate of ``I(x; y)`` in nats behind ``beta_scale="auto"`` (conditional flows
        only; None otherwise).
    n_iter_ : int
        Epochs run.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of features seen during fit, when ``X`` has string column names.
    mean_, scale_ : ndarray of shape (n_features,)
        Standardisation of the inputs.
    classes_ : ndarray
        Class labels of ``y`` (categorical conditioning only).

    See Also
    --------
    sklearn.neighbors.KernelDensity : Kernel density estimation.
    sklearn.mixture.GaussianMixture : Gaussian mixture density.
    MLAutoencoder : Free-form injective flow onto a lower-dimensional manifold.

    Notes
    -----
    The defaults were chosen on benchmark suites and checked on data they were not tuned
    on; the runs, and where the defaults still lose, are in ``benchmarks/README.rst``.
    ``beta=100``, width 128, 3 blocks, the cosine schedule, early stopping on the exact
    validation NLL plus reconstruction and an off-data weight of 0.1 (the ``"auto"`` values
    of a density estimator) come from ``benchmarks/bench_flow.py``; ``batch_size``,
    ``max_epochs``, ``patience`` and ``latent`` (``"auto"``) from the tuning half of the
    density suite (``benchmarks/bench_density.py``), checked on its report half: small data
    sets need small batches and many epochs (about 8000 optimiser steps), large ones no
    more than about 24 000 steps (at 50 000 rows: 0.025 nats for 2.2x less time, the
    scaling table there). The mixture latent (``latent="auto"``) replaced a normal one
    (Student-t from 3 features) on the same suite: at 500 rows it was better on 5 of the
    tuning half's 10 tasks and 8 of the report half's 10 (9 on a second seed), by up to
    0.8 nats on synthetic data (mixtures of very different scales, heavy tails) and 7 on
    the breast cancer table; at 5 000 rows it halved the gap on the steep sine chain
    (1.37 to 0.62). It lost 0.01-0.16 nats on six synthetic tasks, most of them smooth
    curved densities (banana and gentle sine chains, two spirals), and 0.25 on wine; a
    grid search over ``latent`` picks per data set. Its Cauchy component (weight 0.001,
    against 0.01 on the same tuning half) keeps far-out points from absurd log-densities:
    on 2-D lognormal data (sigma 1.5, two seeds) the mean test gap fell from 4.3 and 20.8
    nats (one point 10 000 nats off) to 0.53 and 0.72. ``beta_scale="auto"`` comes from the
    simulation-based inference tasks (``benchmarks/bench_sbi.py``). Watch
    ``valid_reconstruction`` in ``history_``: when ``g`` is far from ``f^-1`` the exact
    density is unreliable; raise ``beta`` then.

    As a posterior estimator (conditioned on continuous ``y``: ``theta`` as ``X``, the
    simulations as ``y``) the flow is judged by its samples, which follow the density only
    as far as ``g`` inverts ``f``. Hence the ``"auto"`` rules there, chosen on
    ``benchmarks/bench_sbi.py``: ``beta`` scaled by the information ``y`` carries
    (``beta_scale``); wider, shallower networks (width 256, 2 blocks); no off-data term; and
    the whole cosine schedule without early stopping (stopping restored mid-schedule
    weights whose samples were worse). With them the samples were at least as close to the
    reference posteriors (C2ST) as those of a neural spline flow trained as neural
    posterior estimation on all five of the benchmark's tasks at 10 000 simulations, at
    3-8 times its fit time on one CPU thread. With 1 000 simulations the whole schedule
    overfits the density on some tasks (SLCP, Gaussian linear, GLM: validation NLL tens to
    hundreds of nats above its best); the best epoch is then restored (see
    ``early_stopping``). Larger budgets train about as many steps as 10 000 simulations
    do (``max_epochs``: 31 epochs at 100 000): on two moons at 100 000 simulations, 30
    epochs gave C2ST 0.530 against the spline flow's 0.522, in 0.7 times its fit time (the
    only task run at that size).

    References
    ----------
    .. [1] F. Draxler, P. Sorrenson, L. Zimmermann, A. Rousselot, U. Köthe, "Free-form
       flows: Make any architecture a normalizing flow", AISTATS 2024.

    Examples
    --------
    >>> import numpy as np
    >>> from skfff import FreeFormFlow
    >>> X = np.random.default_rng(0).normal(size=(500, 2))
    >>> flow = FreeFormFlow(max_epochs=5, random_state=0).fit(X)
    >>> flow.score_samples(X[:3]).shape
    (3,)
    >>> flow.sample(4, random_state=0).shape
    (4, 2)
    """

    _imprecise_hint = (": the density has narrow spikes or mass far from its samples. Train "
                       "longer (max_epochs, patience) or raise beta; check with "
                       "normalization_constant(n_points=...).")
    _not_normalised_causes = {
        "decoder": "the decoder does not invert the encoder everywhere the density has mass",
        "encoder": "the encoder is not one-to-one where the density has mass",
    }
    _not_normalised_advice = (
        "Pass renormalize=True, train longer (max_epochs, patience) or raise beta")

    _architecture_params = ("hidden_features", "n_blocks", "encoder", "decoder", "conditional")

    _training_parameter_docs: dict[str, tuple[str, str]] = {
        "max_epochs": (
            'int or "auto"',
            "Maximum number of passes over the training data (the cosine schedule spans "
            'them). ``"auto"``: enough epochs for about 8000 optimiser steps, between 300 and '
            '1000 (with the ``"auto"`` batch size: 889-1000 up to 2300 rows, 445 at 5000, 300 '
            "from 7600 rows up), but no more than about 24 000 steps, which caps it from about "
            "22 800 rows up (137 epochs at 50 000 rows, at least 30); for a flow conditioned on "
            "continuous ``y``, no more than about 10 800 steps from 9 200 training rows up (31 "
            "epochs at 90 000), at least 30.",
        ),
        "patience": (
            'int or "auto"',
            'Epochs without improvement before early stopping. ``"auto"``: about 1350 '
            "optimiser steps (150 epochs at 500 rows, 75 at 5000 with the ``\"auto\"`` batch "
            "size), at least 50.",
        ),
        "early_stopping": (
            'bool or "auto"',
            "Stop when the validation loss has not improved for ``patience`` epochs and restore "
            'the best weights. Needs ``validation_fraction > 0``. ``"auto"``: on, except for '
            "a flow conditioned on continuous ``y``, which trains the whole schedule and keeps "
            "the last weights, unless its validation NLL ended more than a nat per feature "
            "above its best: then the best epoch's weights are restored, with a warning (see "
            "Notes).",
        ),
    }

    _parameter_constraints: dict = {
        **BaseTorchEstimator._parameter_constraints,
        **BaseTorchEstimator._AUTO_LENGTH_CONSTRAINTS,
        "hidden_features": [Interval(numbers.Integral, 1, None, closed="left"),
                            StrOptions({"auto"})],
        "early_stopping": ["boolean", StrOptions({"auto"})],
        "n_blocks": [Interval(numbers.Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "beta": [Interval(numbers.Real, 0, None, closed="neither")],
        "beta_scale": [StrOptions({"auto"}), Interval(numbers.Real, 0, None, closed="neither")],
        "n_hutchinson": [Interval(numbers.Integral, 1, None, closed="left")],
        "off_data_weight": [Interval(numbers.Real, 0, None, closed="left"),
                            StrOptions({"auto"})],
        "check_normalization": ["boolean", StrOptions({"auto"})],
        "renormalize": ["boolean"],
        "latent": [StrOptions({"auto", "normal", "student_t", "mixture"})],
        "log_prob_via": [StrOptions({"auto", "decoder", "encoder"})],
        "encoder": [torch.nn.Module, callable, None],
        "decoder": [torch.nn.Module, callable, None],
        "conditional": ["boolean", StrOptions({"categorical", "continuous"})],
    }

    def __init__(
        self,
        *,
        hidden_features: int | str = "auto",
        n_blocks: int | str = "auto",
        beta: float = 100.0,
        beta_scale: str | float = "auto",
        n_hutchinson: int = 1,
        off_data_weight: float | str = "auto",
        check_normalization: bool | str = "auto",
        renormalize: bool = True,
        latent: str = "auto",
        log_prob_via: str = "auto",
        encoder: Any = None,
        decoder: Any = None,
        conditional: bool | str = False,
        lr: float = 1e-3,
        max_epochs: int | str = "auto",
        batch_size: int | str = "auto",
        weight_decay: float = 0.0,
        optimizer: Any = "adam",
        lr_schedule: str = "cosine",
        max_grad_norm: float | None = 10.0,
        device: Any = "auto",
        callbacks: list | None = None,
        validation_fraction: float = 0.1,
        early_stopping: bool | str = "auto",
        patience: int | str = "auto",
        random_state: Any = None,
        verbose: int = 0,
        warm_start: bool = False,
    ) -> None:
        super().__init__(
            lr=lr, max_epochs=max_epochs, batch_size=batch_size, weight_decay=weight_decay,
            optimizer=optimizer, lr_schedule=lr_schedule, max_grad_norm=max_grad_norm,
            device=device, callbacks=callbacks, validation_fraction=validation_fraction,
            early_stopping=early_stopping, patience=patience, random_state=random_state,
            verbose=verbose, warm_start=warm_start,
        )
        self.hidden_features = hidden_features
        self.n_blocks = n_blocks
        self.beta = beta
        self.beta_scale = beta_scale
        self.n_hutchinson = n_hutchinson
        self.off_data_weight = off_data_weight
        self.check_normalization = check_normalization
        self.renormalize = renormalize
        self.latent = latent
        self.log_prob_via = log_prob_via
        self.encoder = encoder
        self.decoder = decoder
        self.conditional = conditional

    # ------------------------------------------------------------------ hooks
    def _standardises_inputs(self) -> bool:
        return True

    def _fit_inputs(self, X: Any, y: Any, *, warm: bool) -> tuple[np.ndarray, np.ndarray | None]:
        X = self._validate_X(X, reset=not warm)
        C = self._fit_conditions(y, X.shape[0], warm=warm)
        return self._fit_scaled(X, "standard", warm=warm), C

    def _build_module(self, X: np.ndarray, C: np.ndarray | None) -> FreeFormFlowModule:
        d, k = X.shape[1], 0 if C is None else C.shape[1]

        def default() -> ResidualMLP:
            return ResidualMLP(d, d, self._auto("hidden_features"), self._auto("n_blocks"), k,
                               skip=True)

        self._set_beta_scale(X, C)
        return FreeFormFlowModule(
            make_network(self.encoder, d, d, k, default=default),
            make_network(self.decoder, d, d, k, default=default),
            self.beta * self.beta_scale_, self.n_hutchinson,
            off_data_weight=self._auto("off_data_weight"),
            latent=self._build_latent(X, C),
        )

    def _build_latent(self, X: np.ndarray, C: np.ndarray | None) -> torch.nn.Module | None:
        """The latent distribution of this fit (None: the standard normal)."""
        kind = self.latent
        if kind == "auto":  # the mixture for a density, the normal for a conditional flow
            kind = "normal" if C is not None else "mixture"
        if kind == "student_t":
            return StudentTLatent(X.shape[1])
        if kind != "mixture":
            return None
        if C is not None:
            raise ValueError("latent='mixture' is for unconditional flows; a conditional flow "
                             "takes latent='normal' or 'student_t'.")
        if self._warm() and isinstance(self.net_.module_.latent, RotatedLatent):
            return copy.deepcopy(self.net_.module_.latent)  # its shape, for the weights to load
        # the mixture's axes are the data's principal axes: correlated data need no more
        # components than uncorrelated ones
        rotation = np.linalg.eigh(np.cov(X, rowvar=False).reshape(X.shape[1], -1))[1]
        mixture = GaussianMixturePrior.from_data(X @ rotation, random_state=self._seed(),
                                                 tail_weight=_LATENT_TAIL_WEIGHT)
        return RotatedLatent(mixture, torch.as_tensor(rotation, dtype=torch.float32))

    def _posterior_estimator(self) -> bool:
        """Whether this fit is conditioned on continuous ``y`` (the ``"auto"`` rules)."""
        return self.conditional is not False and self.condition_kind_ == "continuous"

    def _auto(self, name: str) -> Any:
        """The parameter ``name``, with ``"auto"`` resolved (``_AUTO_SETTINGS``)."""
        value = getattr(self, name)
        if isinstance(value, str) and value == "auto":
            return _AUTO_SETTINGS["posterior" if self._posterior_estimator() else "density"][name]
        return value

    def _early_stopping(self) -> bool:
        return bool(self._auto("early_stopping"))

    def _auto_max_steps(self) -> int:
        return _POSTERIOR_STEPS if self._posterior_estimator() else super()._auto_max_steps()

    def _make_callbacks(self, n_train_rows: int, has_valid: bool) -> list:
        callbacks = super()._make_callbacks(n_train_rows, has_valid)
        if self._early_stopping() or not has_valid or not self._posterior_estimator():
            return callbacks
        # the whole schedule is trained, but not into an overfit density: a validation NLL
        # that ends more than a nat per feature above its best brings the best epoch back
        guard = _OverfitGuard(
            "valid_nll", float(self.n_features_in_),
            "Pass early_stopping=True, or a smaller max_epochs or hidden_features.",
        )
        return [*callbacks, ("overfit_guard", guard)]

    def _set_beta_scale(self, X: np.ndarray, C: np.ndarray | None) -> None:
        """``beta_scale_`` and ``mutual_information_`` (see ``beta_scale``)."""
        self.mutual_information_ = None
        if self.beta_scale != "auto":
            self.beta_scale_ = float(self.beta_scale)
            return
        if C is None:
            self.beta_scale_ = 1.0
            return
        self.mutual_information_ = mutual_information(
            X, C, categorical=self.condition_kind_ == "categorical"
        )
        ratio = math.exp(2.0 * self.mutual_information_ / X.shape[1])
        self.beta_scale_ = float(np.clip(ratio / _REFERENCE_VARIANCE_RATIO, 1.0, _MAX_BETA_SCALE))

    def _after_fit(self, X: np.ndarray, C: np.ndarray | None, y: Any) -> None:
        latent = self.module_.latent
        student_t = isinstance(latent, StudentTLatent)
        mixture = isinstance(latent, RotatedLatent)
        self.latent_ = "student_t" if student_t else "mixture" if mixture else "normal"
        self.latent_df_ = latent.df.detach().cpu().numpy() if student_t else None
        self.n_latent_components_ = latent.n_components if mixture else None
        self.normalization_ = None
        self.log_normalizer_ = 0.0
        self.log_prob_via_ = "encoder" if self.log_prob_via == "encoder" else "decoder"
        check = self.check_normalization
        if C is not None or not check or (check == "auto" and X.shape[1] > 3):
            return
        try:
            with warnings.catch_warnings():  # the proposal's fit; the advice is given below
                warnings.simplefilter("ignore", ConvergenceWarning)
                problem = self._measure_normalization()
        except FloatingPointError as err:
            self.normalization_ = (float("nan"), float("nan"))
            warnings.warn(
                f"The normalisation check of {type(self).__name__} could not run: {err}",
                UserWarning,
                stacklevel=4,
            )
            return
        self._warn_about(problem)

    # -------------------------------------------------------------- sklearn
    def score_samples(self, X: Any, y: Any = None) -> np.ndarray:
        """Exact log-density of each sample.

        %(parameters_X_y)s

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
            ``log p(x)`` (or ``log p(x | y)``) in the units of the original ``X``.
        """
        Xs = self._scaled(X)
        C = self._conditions(y, Xs.shape[0])
        log_p = self._map_batches(self._log_prob(self._via()), Xs, C)
        return self._check_finite_scores(
            log_p - np.log(self.scale_).sum() - self.log_normalizer_)

    def transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Encode ``X`` into the latent space (normal, Student-t or mixture: ``latent_``).

        %(parameters_X_y)s

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features)
        """
        Xs = self._scaled(X)
        C = self._conditions(y, Xs.shape[0])
        return self._map_batches(self.module_.encode, Xs, C)

    def inverse_transform(self, Z: Any, y: Any = None) -> np.ndarray:
        """Decode latent codes back to data space.

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_features)
            Latent codes.
        y : array-like, default=None
            Conditions (required for a conditional flow).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        Z = self._validate_latent(Z, self.n_features_in_)
        C = self._conditions(y, Z.shape[0])
        return self._map_batches(self.module_.decode, Z, C) * self.scale_ + self.mean_

    def sample(
        self,
        n_samples: int = 1,
        y: Any = None,
        random_state: Any = None,
        *,
        bounds: tuple[Any, Any] | None = None,
    ) -> np.ndarray:
        """Draw samples ``g(z)``, ``z`` from the latent distribution, optionally in a box.

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples.
        y : array-like, default=None
            Conditions (required for a conditional flow): one per sample, or one for all
            (a scalar, or a 1-D array of the condition's columns, e.g. one observation).
        random_state : int, RandomState instance or None, default=None
            Seed for the latent draws.
        bounds : (low, high) or None, default=None
            A bounded support, e.g. a prior's box in simulation-based inference: arrays of
            shape (n_features,) or scalars (``-inf`` / ``inf`` leave a side open). Samples
            outside are rejected and redrawn (for the same ``y``); a ``UserWarning`` says when
            fewer than 10 % were accepted, and a ``ValueError`` when fewer than 0.1 % were.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        check_integer(n_samples, "n_samples")
        C = self._conditions(y, n_samples)
        rng = check_random_state(random_state)
        if bounds is None:
            return self._decode_latent(n_samples, C, rng)
        low, high = (np.broadcast_to(np.asarray(b, dtype=np.float64), (self.n_features_in_,))
                     for b in bounds)
        if np.any(low >= high):
            raise ValueError("bounds must satisfy low < high in every feature")
        out = np.empty((n_samples, self.n_features_in_))
        todo, drawn = np.arange(n_samples), 0
        while len(todo):
            if drawn >= 1000 * n_samples:
                raise ValueError(
                    f"fewer than 0.1 % of {drawn} samples fell inside the bounds: the flow "
                    "puts almost no mass there. Check the bounds against the training data."
                )
            X = self._decode_latent(len(todo), None if C is None else C[todo], rng)
            drawn += len(todo)
            inside = np.all((X >= low) & (X <= high), axis=1)
            out[todo[inside]] = X[inside]
            todo = todo[~inside]
        if n_samples / drawn < 0.1:
            warnings.warn(
                f"only {n_samples / drawn:.1%} of the samples fell inside the bounds; the "
                "flow puts most of its mass outside them (train longer, or fit a transformed "
                "variable, e.g. the logit of a bounded parameter).",
                UserWarning,
                stacklevel=2,
            )
        return out

    def normalization_constant(
        self, n_points: int = 100_000, random_state: Any = None, y: Any = None
    ) -> tuple[float, float]:
        """Importance-sampling estimate of the integral of ``exp(score_samples)``.

        The exact density is normalised only where the decoder inverts the encoder; this
        checks it. The proposal is a Gaussian mixture fitted to 2 000 of the flow's own
        samples, widened and mixed with a broad Gaussian (``skfff._normalization``, the
        estimator of the density benchmark's 3-D column). About 1 for a
        normalised density; a standard error that is large against the estimate means the
        proposal does not cover the density (which happens in high dimension): raise
        ``n_points`` then, or read the result as a lower bound. With ``renormalize=True``
        this measures the density after the division by ``normalization_`` (about 1, within
        the two estimates' Monte Carlo errors).

        Parameters
        ----------
        n_points : int, default=100_000
            Proposal draws (each costs one exact log-density).
        random_state : int, RandomState instance or None, default=None
            Seed for the samples and the proposal draws.
        y : array-like of shape (1, n_conditions) or scalar, default=None
            The condition to integrate ``p(x | y)`` at (required for a conditional flow).

        Returns
        -------
        estimate : float
            The estimated integral.
        stderr : float
            Its standard error.
        """
        check_is_fitted(self)
        n_points = check_integer(n_points, "n_points", minimum=2)
        estimate, stderr = self._integral(self._via(), n_points, random_state, y)
        scale = math.exp(-self.log_normalizer_)
        return estimate * scale, stderr * scale

    def _integral(self, via: str, n_points: int, random_state: Any,
                  y: Any = None) -> tuple[float, float]:
        rng = check_random_state(random_state)
        n_ref = min(2000, max(2, n_points // 10))
        reference = self._map_batches(
            self.module_.decode,
            self._draw_latent(n_ref, rng),
            self._conditions(y, n_ref),
        )

        def log_density(U: np.ndarray) -> np.ndarray:
            log_p = self._map_batches(self._log_prob(via), U, self._conditions(y, len(U)))
            return self._check_finite_scores(log_p)

        return importance_integral(log_density, reference, n_points, self._seed(rng))

    def _draw_latent(self, n: int, rng: np.random.RandomState) -> torch.Tensor:
        """``n`` latent points from the latent distribution (NumPy draws, as ``_randn``)."""
        if self.latent_ == "mixture":
            return self.net_.module_.latent.from_noise(self._randn((n, self.n_features_in_ + 1),
                                                                   rng))
        if self.latent_df_ is None:
            return self._randn((n, self.n_features_in_), rng)
        z = rng.standard_t(self.latent_df_, size=(n, self.n_features_in_)).astype(np.float32)
        return torch.from_numpy(z).to(self._torch_device())

    def _decode_latent(self, n: int, C: np.ndarray | None, rng: np.random.RandomState
                       ) -> np.ndarray:
        z = self._draw_latent(n, rng)
        return self._map_batches(self.module_.decode, z, C) * self.scale_ + self.mean_

    @property
    def _n_features_out(self) -> int:
        return self.n_features_in_

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        return tags

