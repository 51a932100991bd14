"""MLAutoencoder: an autoencoder trained by maximum likelihood on its learnt manifold."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin, DensityMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._checks import check_integer
from ._torch.mlae import MLAEModule
from ._torch.networks import ResidualMLP, make_network
from .base import BaseTorchEstimator

__all__ = ["MLAutoencoder"]


class MLAutoencoder(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, DensityMixin, BaseTorchEstimator
):
    """Maximum likelihood autoencoder: a density on a learnt low-dimensional manifold.

    A free-form encoder ``f: R^D -> R^d`` and decoder ``g: R^d -> R^D``
    (``d = n_components``) are trained jointly so that the decoder's image is a
    ``d``-dimensional manifold close to the data and the codes ``f(x)`` follow a standard
    normal distribution: the model's samples are ``g(z)``, ``z ~ N(0, I_d)``. Training
    minimises, per sample,

    ``beta * |x - g(f(x))|^2 + 1/2 |f(x)|^2 - v^T J_f(x) SG(J_g(f(x)) v)``,

    where the last term (a Hutchinson probe ``v`` in latent space, ``SG`` = stop-gradient)
    has, when ``f`` is the left inverse of ``g``, the gradient of the log-volume term
    ``1/2 log det(J_g^T J_g)`` of the likelihood, at the cost of one forward-mode and one
    reverse-mode pass whatever ``d`` (the "free-form injective flow" of Sorrenson et al.,
    2024). As in the paper's stable objective, the encoder Jacobian is taken at the data
    point and carries the gradient; the decoder learns through the reconstruction.

    In a pipeline it behaves like :class:`~sklearn.decomposition.PCA`: ``transform``
    encodes, ``inverse_transform`` decodes.

    Parameters
    ----------
    n_components : int, default=2
        Dimension ``d`` of the latent space and of the learnt manifold; must be smaller
        than the number of features.
    beta : float, default=10.0
        Weight of the reconstruction loss (the paper's tabular default). Larger values fit
        the manifold more tightly, smaller ones favour the latent distribution.
    hidden_features : int, default=128
        Width of the default residual MLPs.
    n_blocks : int, default=2
        Residual blocks in each default network.
    n_hutchinson : int, default=1
        Hutchinson probes per sample, at most ``n_components``.
    encoder, decoder : torch.nn.Module, callable or None, default=None
        Custom networks. A module instance is deep-copied at each fit; a callable is
        called as ``factory(in_features, out_features, 0)``: the encoder maps
        ``n_features`` to ``n_components``, the decoder back. ``None`` builds a residual
        MLP. A module must treat samples independently (no batch normalisation) and work
        with :mod:`torch.func` transforms.
    scaling : {"standard", "global"} or None, default="standard"
        How inputs are scaled inside. ``"standard"``: each feature to zero mean and unit
        variance; ``"global"``: centred, then divided by one common standard deviation
        (keeps the relative geometry; suited to images); ``None``: used as given. Outputs
        (``inverse_transform``, ``sample``, ``reconstruction_error``, ``score_samples``) are
        always in the units of ``X``.
    %(training_parameters)s

    Attributes
    ----------
    net_ : skorch.NeuralNet
        The trained skorch net; ``net_.module_`` holds the encoder and decoder.
    history_ : skorch.History
        Per-epoch ``train_loss`` (the surrogate objective) and, on the held-out rows of the
        scaled data, ``valid_loss`` (``beta * reconstruction`` plus the exact manifold
        NLL), ``valid_nll`` and ``valid_reconstruction``.
    n_iter_ : int
        Epochs run.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of features seen during fit, when ``X`` has string column names.
    mean_, scale_ : ndarray of shape (n_features,)
        The inner scaling ``(X - mean_) / scale_``.

    See Also
    --------
    sklearn.decomposition.PCA : The linear, closed-form counterpart (probabilistic PCA).
    FreeFormFlow : Full-dimensional density with the same kind of surrogate.

    Notes
    -----
    ``score_samples`` is the log-density of the projection ``g(f(x))`` on the learnt
    manifold with respect to the manifold's ``d``-dimensional volume measure,
    ``log N(f(x); 0, I) - 1/2 log det(J^T J)`` with ``J`` the Jacobian of the decoder
    (including the inner scaling), computed exactly from ``d`` Jacobian-vector products.
    It is not a density on ``R^D``: it ignores how far ``x`` lies from the manifold, which
    :meth:`reconstruction_error` measures. A full-dimensional log-likelihood under
    isotropic Gaussian noise of variance ``s2`` off the manifold is
    ``score_samples(X) - reconstruction_error(X) / (2 s2) - (D - d) / 2 log(2 pi s2)``;
    for a linear encoder and decoder at the optimum it equals probabilistic PCA's.

    ``beta`` balances the manifold fit against the latent distribution: lower values give
    codes closer to ``N(0, I)`` (better samples) at a larger reconstruction error (see
    ``benchmarks/bench_autoencoder.py`` and ``benchmarks/README.rst``). Check
    ``np.cov(transform(X).T)`` against the identity, and train longer or lower ``beta``
    when it is far off.

    References
    ----------
    .. [1] P. Sorrenson, F. Draxler, A. Rousselot, S. Hummerich, L. Zimmermann,
       U. Köthe, "Lifting architectural constraints of injective flows", ICLR 2024
       (arXiv:2306.01843, "Maximum likelihood training of autoencoders").

    Examples
    --------
    >>> import numpy as np
    >>> from skfff import MLAutoencoder
    >>> rng = np.random.default_rng(0)
    >>> t = rng.normal(size=(300, 1))
    >>> X = np.hstack([t, np.sin(t), np.cos(t)]) + 0.01 * rng.normal(size=(300, 3))
    >>> ae = MLAutoencoder(n_components=1, max_epochs=5, random_state=0).fit(X)
    >>> ae.transform(X[:4]).shape
    (4, 1)
    >>> ae.sample(2, random_state=0).shape
    (2, 3)
    >>> ae.get_feature_names_out()
    array(['mlautoencoder0'], dtype=object)
    """

    _architecture_params = (
        "n_components", "hidden_features", "n_blocks", "encoder", "decoder", "scaling",
    )

    _parameter_constraints: dict = {
        **BaseTorchEstimator._parameter_constraints,
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "beta": [Interval(numbers.Real, 0, None, closed="neither")],
        "hidden_features": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_blocks": [Interval(numbers.Integral, 0, None, closed="left")],
        "n_hutchinson": [Interval(numbers.Integral, 1, None, closed="left")],
        "encoder": [torch.nn.Module, callable, None],
        "decoder": [torch.nn.Module, callable, None],
        "scaling": [StrOptions({"standard", "global"}), None],
    }

    def __init__(
        self,
        n_components: int = 2,
        *,
        beta: float = 10.0,
        hidden_features: int = 128,
        n_blocks: int = 2,
        n_hutchinson: int = 1,
        encoder: Any = None,
        decoder: Any = None,
        scaling: str | None = "standard",
        lr: float = 1e-3,
        max_epochs: int = 300,
        batch_size: int = 256,
        weight_decay: float = 0.0,
        optimizer: Any = "adam",
        lr_schedule: str = "cosine",
        max_grad_norm: float | None = 10.0,
        device: Any = "auto",
        callbacks: list | None = None,
        validation_fraction: float = 0.1,
        early_stopping: bool = True,
        patience: int = 30,
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
        self.beta = beta
        self.hidden_features = hidden_features
        self.n_blocks = n_blocks
        self.n_hutchinson = n_hutchinson
        self.encoder = encoder
        self.decoder = decoder
        self.scaling = scaling

    # ------------------------------------------------------------------ hooks
    def _standardises_inputs(self) -> bool:
        return self.scaling is not None

    def _fit_inputs(self, X: Any, y: Any, *, warm: bool) -> tuple[np.ndarray, None]:
        X = self._validate_X(X, reset=not warm)
        if self.n_components >= X.shape[1]:
            raise ValueError(
                f"n_components={self.n_components} must be smaller than the number of "
                f"features, got {X.shape[1]} feature(s); for a full-dimensional density "
                "use FreeFormFlow"
            )
        if self.n_hutchinson > self.n_components:
            raise ValueError(
                f"n_hutchinson={self.n_hutchinson} must be at most "
                f"n_components={self.n_components}"
            )
        return self._fit_scaled(X, self.scaling, warm=warm), None

    def _build_module(self, X: np.ndarray, C: None) -> MLAEModule:
        D, d = X.shape[1], self.n_components

        def network(spec: Any, n_in: int, n_out: int) -> torch.nn.Module:
            return make_network(spec, n_in, n_out, default=lambda: ResidualMLP(
                n_in, n_out, self.hidden_features, self.n_blocks, skip=False, zero_init=False
            ))

        return MLAEModule(
            network(self.encoder, D, d), network(self.decoder, d, D), self.beta,
            self.n_hutchinson,
        )

    # -------------------------------------------------------------- sklearn
    def transform(self, X: Any) -> np.ndarray:
        """Encode ``X``: latent codes ``f(x)``, standard normal under the model.

        %(parameters_X)s

        Returns
        -------
        Z : ndarray of shape (n_samples, n_components)
        """
        return self._map_batches(self.module_.encode, self._scaled(X))

    def inverse_transform(self, Z: Any) -> np.ndarray:
        """Decode latent codes to points ``g(z)`` on the learnt manifold.

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_components)
            Latent codes.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        Z = self._validate_latent(Z, self.n_components)
        return self._map_batches(self.module_.decode, Z) * self.scale_ + self.mean_

    def reconstruction_error(self, X: Any) -> np.ndarray:
        """Squared distance between each sample and its projection on the manifold.

        %(parameters_X)s

        Returns
        -------
        error : ndarray of shape (n_samples,)
            ``|x - g(f(x))|^2`` in the units of ``X`` (the off-manifold part of ``x``).
        """
        Xs = self._scaled(X)
        X_hat = self._map_batches(self.module_.reconstruct, Xs)
        return (((Xs - X_hat) * self.scale_) ** 2).sum(axis=1)

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density of the projection ``g(f(x))`` of each sample on the learnt manifold.

        %(parameters_X)s

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
            ``log N(f(x); 0, I) - 1/2 log det(J^T J)``, w.r.t. the ``n_components``-
            dimensional volume of the manifold in the units of ``X`` (see Notes of the
            class: it ignores the distance to the manifold).
        """
        Xs = self._scaled(X)
        module = self.module_
        scale = torch.as_tensor(self.scale_, dtype=torch.float32, device=self._torch_device())
        return self._check_finite_scores(
            self._map_batches(lambda x: module.log_prob(x, scale=scale), Xs)
        )

    def score(self, X: Any, y: Any = None) -> float:
        """Mean manifold log-density of ``X`` (see :meth:`score_samples`).

        Densities w.r.t. volumes of different dimension are not comparable: do not use
        this score to choose ``n_components`` (compare full-dimensional likelihoods, see
        the class Notes, or reconstruction errors instead).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points.
        y : None
            Ignored.

        Returns
        -------
        float
        """
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples: int = 1, random_state: Any = None) -> np.ndarray:
        """Draw samples ``g(z)``, ``z ~ N(0, I)``: points on the learnt manifold.

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples.
        random_state : int, RandomState instance or None, default=None
            Seed for the latent draws.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        check_integer(n_samples, "n_samples")
        z = self._randn((n_samples, self.n_components), random_state)
        return self._map_batches(self.module_.decode, z) * self.scale_ + self.mean_

    @property
    def _n_features_out(self) -> int:
        return self.n_components

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        return tags
