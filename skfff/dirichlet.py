"""DirichletLatentClassifier: classifiers from the latent mixture weights of a VAE."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp
from sklearn.base import (
    ClassifierMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
    clone,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_non_negative, column_or_1d
from skorch.callbacks import Callback

from ._torch.dirichlet_vae import DirichletVAE
from .base import BaseTorchEstimator

__all__ = ["DirichletLatentClassifier"]

# Reparametrised draws per sample for the Monte-Carlo ELBO of ``score_samples``.
_ELBO_DRAWS = 16


class _KLWarmup(Callback):
    """Ramp the KL weight linearly from 0 to its value over the first ``n_epochs`` epochs."""

    def __init__(self, n_epochs: int) -> None:
        self.n_epochs = n_epochs

    def on_epoch_begin(self, net: Any, **kwargs: Any) -> None:
        epoch = len(net.history) - 1  # the new epoch's row is already in the history
        net.module_.kl_scale = min(1.0, epoch / self.n_epochs) if self.n_epochs > 0 else 1.0

    def on_train_end(self, net: Any, **kwargs: Any) -> None:
        net.module_.kl_scale = 1.0


class DirichletLatentClassifier(
    ClassNamePrefixFeaturesOutMixin, ClassifierMixin, TransformerMixin, BaseTorchEstimator
):
    """Classifier from the mixture weights of a Dirichlet (or Gaussian-mixture) latent VAE.

    Each row of ``X`` (a histogram or image, non-negative, normalised to unit sum inside) is
    encoded into a Gaussian posterior ``N(mean, diag var)`` in ``R^K``; ``r = softmax(z)`` is a
    point of the simplex, the *mixture weights*. The decoder is ``softmax(W r)`` with ``W`` of
    shape (n_features, K) and no bias, so each latent component decodes to a "topic" and a jet
    (or document) is a mixture of topics in logit space. Training maximises the ELBO with the
    cross-entropy reconstruction and the closed-form KL to the Laplace approximation of a
    Dirichlet(alpha) prior in the softmax basis (or, with ``latent="gaussian_mixture"``, a
    closed-form variational bound for a Gaussian-mixture prior with one component per corner).

    Trained without labels on a mixture of two kinds of events, one mixture weight becomes a
    classifier: unlike reconstruction-error anomaly scores it works whichever kind is the more
    complex one. Labels passed to :meth:`fit` only name the components (Hungarian matching of
    components to classes on the training data) unless ``supervised=True``.

    Parameters
    ----------
    n_components : int, default=2
        Number of latent components (topics), at least the number of classes. More components
        than classes let a varied class spread over several of them (see Notes for how they
        are named); 4 with ``alpha=0.1`` finds a rare, simple class that 2 miss.
    alpha : float or sequence of float, default=0.9
        Dirichlet concentrations (one per component, or one for all). ``alpha < 1`` favours
        nearly pure mixtures; with ``alpha=0.1`` the prior (in its Laplace approximation) is wide
        and pulls the latent means only weakly toward the uniform mixture. Used with
        ``latent="dirichlet"``.
    latent : {"dirichlet", "gaussian_mixture"}, default="dirichlet"
        Latent prior. With ``"gaussian_mixture"`` the prior is an equal-weight mixture of unit
        Gaussians at ``3 (e_k - 1/K)`` (the simplex corners in softmax basis) and the mixture
        weights are the posterior responsibilities of its components.
    kl_weight : float, default=0.1
        Weight of the KL term in the training loss (0.1 in the reference). The validation loss
        and :meth:`score_samples` use the unweighted ELBO.
    kl_warmup : float, default=0.2
        Fraction of ``max_epochs`` over which the KL weight ramps up linearly from 0 (KL
        warm-up, which keeps the latent space from collapsing onto the prior early on).
    supervised : bool, default=False
        Train with the labels: add the cross-entropy of the class weights (component ``k`` for
        class ``k``) to the loss. Needs ``y`` in :meth:`fit`.
    hidden_layer_sizes : tuple of int, default=(128, 64)
        Hidden widths of the default encoder (an MLP with SiLU activations).
    encoder : torch.nn.Module, callable or None, default=None
        Custom encoder: a module (deep-copied at each fit) or a factory
        ``encoder(n_features, 2 * n_components, 0) -> torch.nn.Module`` (the signature of
        every skfff network factory; one of two parameters also works). It receives ``sqrt(x)``
        of the normalised rows, standardised per feature, and returns the posterior mean and
        log-variance, concatenated (``2 * n_components`` numbers per row).
    n_init : int, default=1
        Number of trainings from different random initialisations; the one whose mixture
        weights on the training rows are the most decisive (lowest mean entropy, see Notes)
        is kept. Chosen without the labels.
    %(training_parameters)s

    Early stopping is off by default: with ``kl_weight < 1`` the unweighted validation
    ELBO can favour the early, nearly collapsed latent space.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels; ``arange(n_components)`` when fitted without ``y``.
    component_classes_ : ndarray of shape (n_components,)
        Index into ``classes_`` of the class each component stands for.
    components_ : ndarray of shape (n_components, n_features)
        Decoded pure topics ``softmax(W e_k)`` (rows sum to one), like
        :class:`~sklearn.decomposition.LatentDirichletAllocation`'s normalised components.
    net_ : skorch.NeuralNet
        The trained skorch net; ``net_.module_`` is the
        :class:`~skfff._torch.dirichlet_vae.DirichletVAE`.
    history_ : skorch.History
        Per-epoch ``train_loss``, ``valid_loss`` (negative ELBO), ``valid_recon``,
        ``valid_kl``.
    n_iter_ : int
        Epochs run.
    init_entropies_ : ndarray of shape (n_init,)
        Mean entropy (nats) of the training rows' mixture weights after each initialisation;
        the kept one is ``best_init_``.
    best_init_ : int
        Index of the initialisation kept.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    sklearn.decomposition.LatentDirichletAllocation : Topic model on counts.
    sklearn.mixture.GaussianMixture : Mixture responsibilities as soft clusters.
    MLAutoencoder : Density on a learnt manifold (reconstruction-based scores).

    Notes
    -----
    The encoder sees ``sqrt(x)`` of the normalised rows (it tames the dynamic range of
    histogram cells). Rows that are all zero are treated as flat histograms. With more
    components than classes, the components left over by the matching go to the class in
    which their mean weight is largest; a class probability is the summed weight of its
    components.

    A rare class that is also the simpler one (10 % one-prong jets among three-prong jets) is
    not found with two components: the K - 1 = 1 free direction of the latent space then
    describes the largest variation of the data, which is inside the dominant, varied class,
    and the ELBO gains more from splitting that class than from isolating the rare one (AUC
    about 0.5). Two changes within the method fix it: more components than classes, so the
    varied class can take several of them, and a sparse prior, ``alpha`` well below 1 (0.1),
    whose Laplace approximation in the softmax basis is wide (prior variance
    ``(1/alpha)(1 - 2/K) + (1/K^2) sum_j 1/alpha_j``, 7.5 for K = 4 against 0.8 at
    ``alpha=0.9``), so the KL term hardly pulls the encoder's means toward the uniform mixture
    and the distinctive rare rows can move toward a corner of their own (with 4 components
    the sparse prior was needed; with 2, no prior helps).
    With ``n_components=4, alpha=0.1`` the rare one-prong jets get a component of their own
    (see ``benchmarks/README.rst`` for the figures). The components are then named by the
    rule above (labels in :meth:`fit`); without labels, ``transform`` returns the weights of
    all components and ``components_`` shows which topic is which. Check the learnt topics
    before trusting the classifier.

    Which components a training finds depends on its random initialisation, most of all
    for a rare, simple class. With ``n_init`` trainings the one whose mixture weights are
    the most decisive is kept: the lowest mean entropy ``-sum_k w_k log w_k`` over the
    training rows (``init_entropies_``), a rule that needs no labels. The best ELBO is not
    used because it picks the *worse* classifiers (the likelihood prefers splitting the
    varied majority class, the failure above). ``n_init=5`` is the recipe for a rare class,
    at five times the training cost; on balanced classes it changes next to nothing. It
    improves the odds without guaranteeing the best initialisation: the entropies of good
    and poor trainings can differ by only 0.01-0.02 nats. The rule was chosen on the
    rare-signal runs of ``benchmarks/bench_dirichlet.py`` (figures in
    ``benchmarks/README.rst``, "DirichletLatentClassifier").

    References
    ----------
    .. [1] B. M. Dillon, T. Plehn, C. Sauer, P. Sorrenson, "Better latent spaces for better
       autoencoders", SciPost Phys. 11, 061 (2021).

    Examples
    --------
    >>> from skfff import DirichletLatentClassifier
    >>> from skfff.datasets import make_jet_images
    >>> X, y = make_jet_images(400, signal_fraction=0.5, image_size=12, random_state=0)
    >>> clf = DirichletLatentClassifier(max_epochs=5, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:3]).shape
    (3, 2)
    >>> clf.components_.shape
    (2, 144)
    """

    _architecture_params = (
        "n_components", "latent", "supervised", "hidden_layer_sizes", "encoder",
    )

    _parameter_constraints: dict = {
        **BaseTorchEstimator._parameter_constraints,
        "n_components": [Interval(numbers.Integral, 2, None, closed="left")],
        "alpha": [Interval(numbers.Real, 0, None, closed="neither"), "array-like"],
        "latent": [StrOptions({"dirichlet", "gaussian_mixture"})],
        "kl_weight": [Interval(numbers.Real, 0, None, closed="left")],
        "kl_warmup": [Interval(numbers.Real, 0, 1, closed="both")],
        "supervised": ["boolean"],
        "hidden_layer_sizes": [tuple, list],
        "encoder": [torch.nn.Module, callable, None],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        n_components: int = 2,
        *,
        alpha: float | Sequence[float] = 0.9,
        latent: str = "dirichlet",
        kl_weight: float = 0.1,
        kl_warmup: float = 0.2,
        supervised: bool = False,
        hidden_layer_sizes: tuple[int, ...] = (128, 64),
        encoder: Any = None,
        n_init: int = 1,
        lr: float = 1e-2,
        max_epochs: int = 100,
        batch_size: int = 128,
        weight_decay: float = 0.0,
        optimizer: Any = "adam",
        lr_schedule: str = "cosine",
        max_grad_norm: float | None = 10.0,
        device: Any = "auto",
        callbacks: list | None = None,
        validation_fraction: float = 0.1,
        early_stopping: bool = False,
        patience: int = 20,
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
        self.n_components = n_components
        self.alpha = alpha
        self.latent = latent
        self.kl_weight = kl_weight
        self.kl_warmup = kl_warmup
        self.supervised = supervised
        self.hidden_layer_sizes = hidden_layer_sizes
        self.encoder = encoder
        self.n_init = n_init

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None) -> DirichletLatentClassifier:
        """Fit the model to ``X``, ``n_init`` times, keeping the most decisive training.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Non-negative rows (histograms, images or counts).
        y : array-like of shape (n_samples,), default=None
            Labels. They only name the components (unless ``supervised=True``); the choice
            among initialisations does not use them.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        if self.n_init == 1 or self._warm():
            super().fit(X, y)
            self.init_entropies_ = np.array([self._weight_entropy(X)])
            self.best_init_ = 0
            return self
        rng = check_random_state(self.random_state)
        seeds = rng.randint(np.iinfo(np.int32).max, size=self.n_init)
        best, entropies = None, []
        for seed in seeds:
            trial = clone(self).set_params(n_init=1, random_state=int(seed), warm_start=False)
            trial.fit(X, y)
            entropies.append(trial.init_entropies_[0])
            if best is None or entropies[-1] < min(entropies[:-1]):
                best = trial
        params = self.get_params(deep=False)
        self.__dict__.update({k: v for k, v in vars(best).items() if k not in params})
        self.init_entropies_ = np.array(entropies)
        self.best_init_ = int(np.argmin(entropies))
        return self

    def _weight_entropy(self, X: Any) -> float:
        """Mean entropy (nats) of the mixture weights of the rows of ``X``."""
        log_w = self._log_weights(X)
        return float(np.mean(-np.sum(np.exp(log_w) * log_w, axis=1)))

    def _log_weights(self, X: Any) -> np.ndarray:
        """Log mixture weights of the rows of ``X``, normalised over the components."""
        log_w = self._map_rows(self.module_.log_mixture_weights, X)
        return log_w - logsumexp(log_w, axis=1, keepdims=True)

    # ------------------------------------------------------------------ hooks
    def _fit_inputs(self, X: Any, y: Any, *, warm: bool) -> tuple[np.ndarray, np.ndarray | None]:
        X = self._normalise(X, reset=not warm)
        self.classes_, labels = self._labels(y, X.shape[0])
        if self.supervised:
            if labels is None:
                raise ValueError("supervised=True needs the labels y in fit")
            return X, np.eye(len(self.classes_), dtype=np.float32)[labels]
        return X, None

    def _labels(self, y: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Classes and integer labels of ``y`` (``arange(n_components)`` and None without)."""
        if y is None:
            return np.arange(self.n_components), None
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if len(y) != n_rows:
            raise ValueError(f"X has {n_rows} rows but y has {len(y)}")
        classes, labels = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in y; got 1 class"
            )
        if len(classes) > self.n_components:
            raise ValueError(
                f"y has {len(classes)} classes but n_components={self.n_components}; "
                "use at least one component per class"
            )
        return classes, labels

    def _build_module(self, X: np.ndarray, C: np.ndarray | None) -> DirichletVAE:
        alpha = np.asarray(self.alpha, dtype=np.float64).reshape(-1)
        if alpha.size not in (1, self.n_components) or not np.all(alpha > 0):
            raise ValueError(
                f"alpha must be a positive float or {self.n_components} positive floats, "
                f"got {self.alpha!r}"
            )
        module = DirichletVAE(
            X.shape[1],
            self.n_components,
            latent=self.latent,
            alpha=alpha.tolist() if alpha.size > 1 else float(alpha[0]),
            kl_weight=self.kl_weight,
            hidden_layer_sizes=tuple(int(h) for h in self.hidden_layer_sizes),
            encoder=self.encoder,
            n_classes=0 if C is None else C.shape[1],
        )
        module.set_input_scaling(torch.as_tensor(X, dtype=torch.float32))
        return module

    def _after_fit(self, X: np.ndarray, C: np.ndarray | None, y: Any) -> None:
        """Match components to classes; decode the pure topics."""
        labels = self._labels(y, X.shape[0])[1]
        if labels is None:
            self.component_classes_ = np.arange(self.n_components)
        else:
            weights = self._map_batches(self.module_.mixture_weights, X)
            self.component_classes_ = _match_components(
                weights, labels, len(self.classes_), forced=self.supervised
            )
        with torch.no_grad():
            self.components_ = self.module_.components().cpu().double().numpy()

    def _make_callbacks(self, n_train_rows: int, has_valid: bool) -> list:
        callbacks = super()._make_callbacks(n_train_rows, has_valid)
        warmup = int(round(self.kl_warmup * self.max_epochs))
        return [("kl_warmup", _KLWarmup(warmup)), *callbacks]

    def _normalise(self, X: Any, *, reset: bool) -> np.ndarray:
        """Validate ``X`` (finite, non-negative) and scale each row to unit sum."""
        if not reset:
            check_is_fitted(self)
        X = self._validate_X(X, reset=reset)
        check_non_negative(X, type(self).__name__)
        X = np.asarray(X, dtype=np.float64)
        totals = X.sum(axis=1, keepdims=True)
        empty = totals[:, 0] <= 0
        if np.any(empty):
            X = X.copy()
            X[empty] = 1.0
            totals[empty] = X.shape[1]
        return X / totals

    def _map_rows(self, fn: Any, X: Any) -> np.ndarray:
        """Normalise new rows and map them through a module method in batches."""
        return self._map_batches(fn, self._normalise(X, reset=False))

    # -------------------------------------------------------------- sklearn
    def transform(self, X: Any) -> np.ndarray:
        """Latent mixture weights of each row.

        %(parameters_counts)s

        Returns
        -------
        W : ndarray of shape (n_samples, n_components)
            ``softmax(mean(x))`` (Dirichlet latent) or the component responsibilities
            (Gaussian-mixture latent); rows sum to one.
        """
        return np.exp(self._log_weights(X))

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`, computed stably from the log mixture weights.

        %(parameters_counts)s

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        log_w = self._map_rows(self.module_.log_mixture_weights, X)
        out = np.empty((log_w.shape[0], len(self.classes_)))
        for c in range(len(self.classes_)):
            out[:, c] = logsumexp(log_w[:, self.component_classes_ == c], axis=1)
        return out - logsumexp(out, axis=1, keepdims=True)  # exact normalisation in float64

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities: the summed mixture weights of each class's components.

        %(parameters_counts)s

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``; rows sum to one.
        """
        return np.exp(self.predict_log_proba(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """Log-odds of the positive class (binary) or log-probabilities (multiclass).

        %(parameters_counts)s

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
            For two classes, ``log p(classes_[1]) - log p(classes_[0])``.
        """
        log_p = self.predict_log_proba(X)
        if log_p.shape[1] == 2:
            return log_p[:, 1] - log_p[:, 0]
        return log_p

    def predict(self, X: Any) -> np.ndarray:
        """Class with the largest summed mixture weight.

        %(parameters_counts)s

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        log_p = self.predict_log_proba(X)
        return self.classes_[np.argmax(log_p, axis=1)]

    def score_samples(self, X: Any) -> np.ndarray:
        """Evidence lower bound of each (normalised) row; low values flag anomalies.

        Monte-Carlo ELBO with 16 reparametrised draws from a fixed seed, so repeated calls
        agree.

        %(parameters_counts)s

        Returns
        -------
        elbo : ndarray of shape (n_samples,)
            ``E_q[log p(x | z)] - KL(q(z | x) || p(z))`` per row.
        """
        Xn = self._normalise(X, reset=False)
        eps = self._randn((Xn.shape[0], _ELBO_DRAWS, self.n_components), random_state=0)
        module = self.module_
        return self._map_batches(lambda x, e: module.elbo(x, e.transpose(0, 1)), Xn, eps)

    def reconstruction_error(self, X: Any) -> np.ndarray:
        """Cross-entropy ``-sum_j x_j log x_hat_j`` of the reconstruction at the posterior mean.

        %(parameters_counts)s

        Returns
        -------
        error : ndarray of shape (n_samples,)
            The classic autoencoder anomaly score (higher = less typical).
        """
        return self._map_rows(self.module_.reconstruction_error, X)

    @property
    def _n_features_out(self) -> int:
        return self.n_components

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        # Rows are normalised to unit sum (histograms): on sklearn's 2-feature blobs only the
        # ratio x_1 / (x_1 + x_2) is left, too little for the checks' 83 % accuracy bar.
        tags.classifier_tags.poor_score = True
        tags.target_tags.required = False
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags


def _match_components(
    weights: np.ndarray, labels: np.ndarray, n_classes: int, *, forced: bool
) -> np.ndarray:
    """Class index of each component, from the mean weight of each component in each class.

    One component per class by the Hungarian algorithm (or component ``k`` for class ``k`` when
    ``forced``); components left over go to the class where their mean weight is largest.
    """
    n_components = weights.shape[1]
    mean = np.zeros((n_classes, n_components))
    for c in range(n_classes):
        mean[c] = weights[labels == c].mean(axis=0)
    mapping = np.argmax(mean, axis=0)
    if forced:
        mapping[:n_classes] = np.arange(n_classes)
    else:
        rows, cols = linear_sum_assignment(mean, maximize=True)
        mapping[cols] = rows
    return mapping
