"""GINTransformer: nonlinear ICA with general incompressible-flow networks (GIN).

Sorrenson, Rother and Koethe, "Disentanglement by nonlinear ICA with general incompressible-flow
networks (GIN)", ICLR 2020.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.base import ClassNamePrefixFeaturesOutMixin, DensityMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
from skorch.callbacks import Callback

from ._checks import check_integer
from ._torch.gin import ConvGINFlow, GINFlow, GINTrainingModule
from ._torch.networks import make_network
from ._torch.priors import ClassConditionalGaussian, diagonal_gaussian_log_prob
from .base import BaseTorchEstimator, _StopTraining

__all__ = ["GINTransformer"]

def spectrum_knee(latent_std: np.ndarray) -> tuple[int, float]:
    """Number of informative variables from a sorted spectrum of standard deviations.

    The knee is the largest drop in ``log(std)`` between consecutive variables (sorted by
    decreasing standard deviation); the informative variables are those before it.

    Parameters
    ----------
    latent_std : ndarray of shape (d,)
        Standard deviations sorted in decreasing order, ``d >= 2``.

    Returns
    -------
    n_informative : int
        Position of the largest drop (between 1 and ``d - 1``).
    gap : float
        Size of that drop in natural-log units, ``log(std[n - 1] / std[n])``: the knee's
        sharpness.
    """
    log_std = np.log(np.maximum(np.asarray(latent_std, dtype=np.float64), 1e-300))
    drops = log_std[:-1] - log_std[1:]
    i = int(np.argmax(drops))
    return i + 1, float(drops[i])


def _spectrum(module: GINTrainingModule, x: torch.Tensor, c: torch.Tensor) -> np.ndarray:
    """Sorted (decreasing) latent standard deviations of ``(x, c)`` under the current flow."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            z = module.flow.encode(x)
            _, var, _ = module.prior.exact_statistics(z, c)
    finally:
        module.train(was_training)
    std = var.double().mean(0).sqrt().cpu().numpy()
    return np.sort(std)[::-1]


class _SpectrumMonitor(Callback):
    """Record the held-out spectrum's knee every epoch; stop once the spectrum has settled.

    The spectrum is measured on the validation rows (the training rows without a validation
    split; at most ``max_rows`` of them). Each epoch appends ``n_informative`` (the knee) and
    ``spectrum_gap`` (the drop at the knee, natural-log units) to the history. Training stops
    when the knee is at least ``min_gap`` deep and, over the last ``patience`` epochs, has not
    moved, and none of the log-standard-deviations up to the first one after the knee has
    changed by more than ``tol``. A shallow knee is no answer yet: training goes on.
    """

    def __init__(
        self,
        patience: int | None,
        tol: float = 0.1,
        min_gap: float = math.log(10.0),
        max_rows: int = 2000,
    ) -> None:
        self.patience = patience
        self.tol = tol
        self.min_gap = min_gap
        self.max_rows = max_rows

    def on_train_begin(self, net: Any, **kwargs: Any) -> None:
        # a fresh window at every fit (and every warm-started continuation)
        self.log_std_: list[np.ndarray] = []
        self.counts_: list[int] = []

    @staticmethod
    def _rows(dataset: Any, max_rows: int) -> tuple[np.ndarray, np.ndarray | None]:
        if isinstance(dataset, torch.utils.data.Subset):
            idx = np.asarray(dataset.indices)[:max_rows]
            arrays = dataset.dataset.X
        else:
            arrays = dataset.X
            idx = np.arange(min(len(arrays["x"]), max_rows))
        c = arrays.get("c")
        return arrays["x"][idx], None if c is None else c[idx]

    def on_epoch_end(
        self, net: Any, dataset_train: Any = None, dataset_valid: Any = None, **kwargs: Any
    ) -> None:
        dataset = dataset_valid if dataset_valid is not None else dataset_train
        x, c = self._rows(dataset, self.max_rows)
        module = net.module_
        device = next(module.parameters()).device
        xt = torch.as_tensor(x, device=device)
        ct = module._labels(xt, None if c is None else torch.as_tensor(c, device=device))
        std = _spectrum(module, xt, ct)
        n, gap = spectrum_knee(std)
        net.history.record("n_informative", n)
        net.history.record("spectrum_gap", gap)
        self.log_std_.append(np.log(np.maximum(std, 1e-300)))
        self.counts_.append(n)
        if self.patience is None or len(self.counts_) <= self.patience or gap < self.min_gap:
            return
        window = self.counts_[-self.patience - 1 :]
        if any(k != n for k in window):
            return
        moved = np.abs(self.log_std_[-1][: n + 1] - self.log_std_[-self.patience - 1][: n + 1])
        if np.all(moved < self.tol):
            net.history.record("spectrum_settled", True)
            raise _StopTraining


class GINTransformer(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, DensityMixin, BaseTorchEstimator
):
    """Nonlinear ICA with a general incompressible-flow network (GIN).

    GIN is a normalizing flow ``z = f(x)`` built from affine coupling blocks whose log-scales
    are shifted to sum to zero, so that ``|det J_f| = 1`` everywhere: the flow preserves volume.
    The latent prior is a factorised Gaussian whose mean and variance depend on an auxiliary
    variable ``u`` (the class label ``y``): ``z | u ~ N(mu_u, diag sigma_u^2)``; in training,
    ``mu_u`` and ``sigma_u^2`` are the empirical statistics of each class in the batch. Because
    volume is conserved, the flow can only shrink noise directions by stretching informative
    ones: informative variables end up with large standard deviation and noise variables
    collapse, so the spectrum of latent standard deviations tells how many informative
    variables the data has. With the class label as auxiliary variable the informative
    variables are identifiable up to permutation and element-wise transformation.

    Read more in the GIN paper (Sorrenson, Rother and Koethe, ICLR 2020).

    Parameters
    ----------
    n_blocks : int, default=8
        Number of coupling blocks (each followed by a fixed random permutation).
    hidden_features : int, default=64
        Width of the hidden layers of the coupling subnetworks (the paper used 10 on its
        10-dimensional artificial data and 392 on EMNIST).
    n_hidden_layers : int, default=2
        Number of hidden layers of each coupling subnetwork.
    subnet : callable or None, default=None
        Factory ``subnet(in_features, out_features, n_conditions)`` returning a
        ``torch.nn.Module`` for the coupling subnetworks (a free-form architecture;
        ``n_conditions`` is 0, and a factory of two parameters also works); ``None`` uses
        a ReLU MLP of ``n_hidden_layers`` layers of width ``hidden_features`` whose last
        layer starts at zero. With ``coupling="conv"`` it builds the dense couplings that
        follow the convolutional ones.
    clamp : float, default=2.0
        Soft clamp on the log-scales: every coupling scales a coordinate by at most
        ``exp(clamp)``.
    noise_std : float, default=0.01
        Standard deviation of the Gaussian noise added to the inputs in training (the paper's
        0.01; it sets the floor to which noise variables collapse).
    prior : {"empirical", "learnt"}, default="empirical"
        ``"empirical"``: per-batch class means and variances (the paper's default; classes with
        fewer than 2 samples in a batch are skipped). ``"learnt"``: class means and
        log-standard-deviations are trained parameters.
    informative_threshold : float or None, default=None
        How ``n_informative_`` is chosen. ``None``: the knee of the spectrum, the largest drop
        in ``log(latent_std_)`` between consecutive sorted variables. A float: the number of
        latent variables whose standard deviation exceeds it.
    coupling : {"dense", "conv"}, default="dense"
        ``"dense"``: ``n_blocks`` fully connected couplings. ``"conv"``: the shape of the
        paper's EMNIST model for images (rows of ``X`` are flattened images of shape
        ``image_shape``): a squeeze (2 x 2 patches into channels), ``n_conv_blocks``
        convolutional couplings (3 x 3 convolutions, ``conv_channels`` hidden channels),
        another squeeze, ``n_conv_blocks`` couplings with twice the channels, then
        ``n_blocks`` dense couplings on the flattened result. Convolutional couplings split the
        channels in two and shift the log-scales to zero mean over channels and pixels, so
        they preserve volume exactly like the dense ones.
    image_shape : tuple of int or None, default=None
        ``(H, W)`` or ``(C, H, W)`` of the images, row-major as in ``X.reshape(-1, C, H, W)``;
        required with ``coupling="conv"``.
    n_conv_blocks : int, default=4
        Convolutional couplings per resolution (``coupling="conv"``).
    conv_channels : int, default=32
        Hidden channels of the first resolution's convolutional subnetworks, doubled at the
        second (``coupling="conv"``).
    spectrum_patience : int or None, default=10
        Training length chosen from the data: after every epoch the spectrum is measured on
        the held-out rows (see ``validation_fraction``; the training rows without them), and
        training stops once the knee is at least a decade deep and, for
        ``spectrum_patience`` epochs, has not moved while no log-standard-deviation up to the
        first one after the knee has changed by more than 0.1 (about 10 %). ``max_epochs`` is
        then only a cap; a spectrum without such a knee trains for all ``max_epochs``.
        ``None`` always trains for ``max_epochs`` epochs.
    %(training_parameters)s

    The empirical prior estimates a mean and a variance per class in every batch, so
    batches (``batch_size``) should hold several samples of each class.

    Attributes
    ----------
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of the features, when ``X`` has string column names.
    classes_ : ndarray of shape (n_classes,) or None
        Labels of the auxiliary variable seen in ``fit`` (``None`` when fitted without ``y``).
    class_weights_ : ndarray of shape (n_classes,)
        Class frequencies in the training data (the weights of the mixture used when ``y`` is
        not given).
    class_means_ : ndarray of shape (n_classes, n_features)
        Latent mean of each class, columns in :meth:`transform` order.
    class_variances_ : ndarray of shape (n_classes, n_features)
        Latent variance of each class, columns in :meth:`transform` order.
    latent_std_ : ndarray of shape (n_features,)
        The spectrum: ``sqrt(mean over classes of the class variances)`` of each latent
        variable on the training data, in decreasing order.
    latent_order_ : ndarray of shape (n_features,)
        Permutation from the flow's output to the sorted columns of :meth:`transform`.
    n_informative_ : int
        Number of informative latent variables (the first columns of :meth:`transform`).
    spectrum_gap_ : float
        Largest drop in ``log(latent_std_)`` between consecutive variables (the sharpness of
        the knee, natural-log units; divide by ``log(10)`` for decades). The evidence behind
        ``n_informative_``: a knee of one decade or more is a clear separation, a fraction of
        a decade is not.
    net_ : skorch.NeuralNet
        The fitted skorch net; ``module_`` is its :class:`~skfff._torch.gin.GINTrainingModule`.
    history_ : skorch.History
        Per-epoch training loss (``train_loss``), held-out negative log-likelihood
        (``valid_loss``), and the held-out spectrum's knee position (``n_informative``) and
        depth (``spectrum_gap``); ``spectrum_settled`` is set on the epoch where training
        stopped because the spectrum had settled.
    n_iter_ : int
        Number of epochs run.

    See Also
    --------
    sklearn.decomposition.FastICA : Linear independent component analysis.
    sklearn.decomposition.PCA : Linear spectrum of variances.
    skfff.FreeFormFlow : A free-form normalizing flow (not volume preserving).

    Notes
    -----
    The flow has no Jacobian term, so :meth:`score_samples` is exact:
    ``log p(x | y) = log N(f(x); mu_y, diag sigma_y^2)``. After training, the class
    statistics are recomputed on the whole training set (with the training noise).

    How the count is decided: the latent variables are sorted by standard deviation and
    ``n_informative_`` is the position of the largest drop in ``log(latent_std_)`` (the
    knee), unless ``informative_threshold`` is given. The knee only means something once the
    flow has finished compressing the noise directions, so training runs until the held-out
    spectrum has settled with a knee at least a decade deep (``spectrum_patience``), and
    otherwise for all ``max_epochs``, instead of for a fixed number of epochs.
    Check ``spectrum_gap_`` and ``history_[:, "n_informative"]`` before reporting a count:
    a count that kept changing, or a knee of a fraction of a decade, is not a finding. When the
    mixing's volume change varies strongly over the data, a volume-preserving flow with a
    factorised prior can only approximate it, and part of that variation may end up in an
    extra, moderately wide latent variable (see ``benchmarks/bench_gin.py``).

    Input scale matters: the flow preserves volume and ``noise_std`` is absolute, so put
    features on comparable scales (e.g. pixels in [0, 1]).

    References
    ----------
    P. Sorrenson, C. Rother, U. Koethe. Disentanglement by nonlinear ICA with general
    incompressible-flow networks (GIN). ICLR 2020.

    Examples
    --------
    >>> from skfff import GINTransformer
    >>> from skfff.datasets import make_nonlinear_ica
    >>> X, y, latents = make_nonlinear_ica(2000, random_state=0)
    >>> gin = GINTransformer(hidden_features=10, lr=1e-2, max_epochs=40, random_state=0)
    >>> Z = gin.fit(X, y).transform(X)
    >>> Z.shape, gin.n_informative_
    ((2000, 10), 2)
    >>> bool(gin.spectrum_gap_ > np.log(10))  # the knee is more than a decade deep
    True
    """

    _architecture_params = (
        "n_blocks", "hidden_features", "n_hidden_layers", "subnet", "prior",
    )

    _parameter_constraints: dict = {
        **BaseTorchEstimator._parameter_constraints,
        "n_blocks": [Interval(numbers.Integral, 1, None, closed="left")],
        "hidden_features": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_hidden_layers": [Interval(numbers.Integral, 0, None, closed="left")],
        "subnet": [callable, None],
        "clamp": [Interval(numbers.Real, 0, None, closed="neither")],
        "noise_std": [Interval(numbers.Real, 0, None, closed="left")],
        "prior": [StrOptions({"empirical", "learnt"})],
        "informative_threshold": [Interval(numbers.Real, 0, None, closed="left"), None],
        "coupling": [StrOptions({"dense", "conv"})],
        "image_shape": [tuple, list, None],
        "n_conv_blocks": [Interval(numbers.Integral, 0, None, closed="left")],
        "conv_channels": [Interval(numbers.Integral, 1, None, closed="left")],
        "spectrum_patience": [Interval(numbers.Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        *,
        n_blocks: int = 8,
        hidden_features: int = 64,
        n_hidden_layers: int = 2,
        subnet: Callable[[int, int], torch.nn.Module] | None = None,
        clamp: float = 2.0,
        noise_std: float = 0.01,
        prior: str = "empirical",
        informative_threshold: float | None = None,
        coupling: str = "dense",
        image_shape: tuple[int, ...] | None = None,
        n_conv_blocks: int = 4,
        conv_channels: int = 32,
        spectrum_patience: int | None = 10,
        lr: float = 1e-3,
        max_epochs: int = 200,
        batch_size: int = 1000,
        weight_decay: float = 0.0,
        optimizer: str | type = "adam",
        lr_schedule: str = "cosine",
        max_grad_norm: float | None = 10.0,
        device: str | torch.device = "auto",
        callbacks: list | None = None,
        validation_fraction: float = 0.1,
        early_stopping: bool = False,
        patience: int = 10,
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
        self.n_blocks = n_blocks
        self.hidden_features = hidden_features
        self.n_hidden_layers = n_hidden_layers
        self.subnet = subnet
        self.clamp = clamp
        self.noise_std = noise_std
        self.prior = prior
        self.informative_threshold = informative_threshold
        self.coupling = coupling
        self.image_shape = image_shape
        self.n_conv_blocks = n_conv_blocks
        self.conv_channels = conv_channels
        self.spectrum_patience = spectrum_patience

    # ---------------------------------------------------------------- hooks
    def _fit_inputs(self, X: Any, y: Any, *, warm: bool) -> tuple[np.ndarray, np.ndarray]:
        if y is None:
            warnings.warn(
                "GINTransformer was fitted without y: with a single class the latent variables "
                "are not identifiable (any rotation of them fits equally well). Pass the class "
                "label as y to recover the independent components.",
                UserWarning,
                stacklevel=4,
            )
            X = self._validate_X(X, reset=not warm)
            codes, classes = np.zeros(X.shape[0], dtype=np.int64), None
        else:
            X, y = validate_data(
                self, X, y, reset=not warm, dtype=[np.float64, np.float32], ensure_min_samples=2
            )
            self._check_range(X)
            y = column_or_1d(y, warn=True)
            check_classification_targets(y)
            classes, codes = np.unique(y, return_inverse=True)
        n_classes = 1 if classes is None else len(classes)
        if X.shape[1] < 2:
            raise ValueError(
                "GINTransformer needs at least 2 features (coupling blocks split them in two), "
                f"got {X.shape[1]} feature(s)."
            )
        if warm and self.module_.prior.n_classes != n_classes:
            raise ValueError(
                f"warm_start=True: the flow was fitted with {self.module_.prior.n_classes} "
                f"classes, y now has {n_classes}; refit with warm_start=False."
            )
        if np.any(np.bincount(codes, minlength=n_classes) < 2):
            warnings.warn(
                "Some classes have fewer than 2 samples; their variance cannot be estimated and "
                "is replaced by the pooled variance.",
                UserWarning,
                stacklevel=4,
            )
        self.classes_ = classes
        return X, codes.astype(np.int64)

    def _build_module(self, X: np.ndarray, C: np.ndarray) -> GINTrainingModule:
        subnet = None
        if self.subnet is not None:

            def subnet(i: int, o: int) -> torch.nn.Module:
                return make_network(self.subnet, i, o, wrap=False)

        if self.coupling == "conv":
            shape = self._image_shape(X.shape[1])
            flow: torch.nn.Module = ConvGINFlow(
                shape,
                self.n_blocks,
                self.n_conv_blocks,
                self.conv_channels,
                subnet,
                hidden_features=self.hidden_features,
                n_hidden_layers=self.n_hidden_layers,
                clamp=self.clamp,
            )
        else:
            flow = GINFlow(
                X.shape[1],
                self.n_blocks,
                subnet,
                hidden_features=self.hidden_features,
                n_hidden_layers=self.n_hidden_layers,
                clamp=self.clamp,
            )
        n_classes = 1 if self.classes_ is None else len(self.classes_)
        prior = ClassConditionalGaussian(
            n_classes, X.shape[1], empirical=self.prior == "empirical"
        )
        return GINTrainingModule(flow, prior, noise_std=self.noise_std)

    def _make_callbacks(self, n_train_rows: int, has_valid: bool) -> list:
        callbacks = super()._make_callbacks(n_train_rows, has_valid)
        return [*callbacks, ("spectrum", _SpectrumMonitor(self.spectrum_patience))]

    def _image_shape(self, n_features: int) -> tuple[int, ...]:
        """``image_shape`` checked against the number of features."""
        shape = None if self.image_shape is None else tuple(int(v) for v in self.image_shape)
        if shape is None or len(shape) not in (2, 3) or int(np.prod(shape)) != n_features:
            raise ValueError(
                'coupling="conv" needs image_shape=(H, W) or (C, H, W) with H * W * C equal '
                f"to the number of features ({n_features}), got image_shape={self.image_shape!r}."
            )
        return shape

    def _after_fit(self, X: np.ndarray, C: np.ndarray, y: Any) -> None:
        """Exact class statistics on the training data, spectrum, order and knee."""
        module = self.module_
        if self.noise_std > 0:
            # the model is a density of the noisy training inputs: measure it on them
            rng = check_random_state(self._seed())
            X = X + self.noise_std * rng.standard_normal(X.shape)
        z = torch.from_numpy(self._map_batches(module.flow.encode, X))  # float64
        mean, var, counts = module.prior.exact_statistics(z, torch.from_numpy(C))
        module.prior.set_statistics(mean, var, counts.clamp_min(1e-12))
        mean, var, counts = mean.numpy(), var.numpy(), counts.numpy()
        std = np.sqrt(var.mean(0))
        order = np.argsort(-std, kind="stable")
        self.latent_order_ = order
        self.latent_std_ = std[order]
        self.class_means_ = mean[:, order]
        self.class_variances_ = var[:, order]
        self.class_weights_ = counts / counts.sum()
        n_knee, gap = spectrum_knee(self.latent_std_)
        self.spectrum_gap_ = gap
        if self.informative_threshold is None:
            self.n_informative_ = n_knee
        else:
            self.n_informative_ = int(np.sum(self.latent_std_ > self.informative_threshold))

    # ---------------------------------------------------------------- transforms
    def transform(self, X: Any) -> np.ndarray:
        """Latent codes ``z = f(x)``, columns sorted by decreasing standard deviation.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features)
            The first ``n_informative_`` columns are the informative variables.
        """
        check_is_fitted(self, "net_")
        X = self._validate_X(X, reset=False)
        return self._encode(X)

    def _encode(self, X: np.ndarray) -> np.ndarray:
        return self._map_batches(self.module_.flow.encode, X)[:, self.latent_order_]

    def inverse_transform(self, Z: Any) -> np.ndarray:
        """Map latent codes (in :meth:`transform` order) back to data space, exactly.

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_features)

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        Z = self._validate_latent(Z, self.n_features_in_)
        unsorted = np.empty_like(Z)
        unsorted[:, self.latent_order_] = Z
        return self._map_batches(self.module_.flow.inverse, unsorted)

    # ---------------------------------------------------------------- densities
    def _codes(self, y: Any, n: int) -> np.ndarray:
        if self.classes_ is None:
            raise ValueError(
                "This GINTransformer was fitted without y; call without y (the density of a "
                "single class)."
            )
        y = column_or_1d(y)
        if y.shape[0] != n:
            raise ValueError(f"y has {y.shape[0]} entries, but X has {n} rows.")
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(
                f"y contains labels not seen in fit: {unknown.tolist()[:5]}; "
                f"known labels are {self.classes_.tolist()[:20]}."
            )
        return np.searchsorted(self.classes_, y)

    def _class_log_prob(self, Z: np.ndarray) -> np.ndarray:
        """``log N(z; mu_k, sigma_k^2)`` for every class, shape (n, K), float64."""
        z = torch.from_numpy(Z).unsqueeze(-2)
        mean, var = torch.from_numpy(self.class_means_), torch.from_numpy(self.class_variances_)
        return diagonal_gaussian_log_prob(z, mean, var).numpy()

    def score_samples(self, X: Any, y: Any = None) -> np.ndarray:
        """Exact log-density of each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or None
            Class labels. Given: ``log p(x | y)``. ``None``: the class mixture
            ``log sum_k pi_k p(x | k)`` with the training class frequencies ``pi``.

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
        """
        check_is_fitted(self, "net_")
        X = self._validate_X(X, reset=False)
        Z = self._encode(X)
        log_p = self._class_log_prob(Z)
        if y is None:
            with np.errstate(divide="ignore"):
                return logsumexp(log_p + np.log(self.class_weights_), axis=1)
        codes = self._codes(y, X.shape[0])
        return log_p[np.arange(X.shape[0]), codes]

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood of ``X`` (given ``y`` when passed).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or None

        Returns
        -------
        float
        """
        return float(np.mean(self.score_samples(X, y)))

    def sample(self, n_samples: int = 1, y: Any = None, random_state: Any = None) -> np.ndarray:
        """Draw samples ``x = f^{-1}(z)``, ``z ~ N(mu_y, sigma_y^2)``.

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples.
        y : label, array-like of shape (n_samples,) or None
            Class of each sample (a single label is repeated). ``None`` draws classes with
            the training frequencies.
        random_state : int, RandomState instance or None
            Seed of the draw.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "net_")
        check_integer(n_samples, "n_samples")
        rng = check_random_state(random_state)
        if y is None:
            codes = rng.choice(len(self.class_weights_), size=n_samples, p=self.class_weights_)
        else:
            y_arr = np.asarray(y)
            if y_arr.ndim == 0:
                y_arr = np.full(n_samples, y_arr.item(), dtype=y_arr.dtype)
            codes = self._codes(y_arr, n_samples)
        eps = rng.standard_normal((n_samples, self.n_features_in_))
        Z = self.class_means_[codes] + np.sqrt(self.class_variances_[codes]) * eps
        return self.inverse_transform(Z)

    @property
    def _n_features_out(self) -> int:
        return self.n_features_in_

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
