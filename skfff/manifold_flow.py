"""ManifoldFreeFormFlow: free-form flows on spheres, tori, SO(3) and their products."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin, DensityMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted

from ._conditioning import ConditionalMixin
from ._torch.mfff import ManifoldFreeFormFlowModule
from ._torch.networks import ResidualMLP, make_network
from .base import BaseTorchEstimator
from .manifolds import (
    Manifold,
    SpecialOrthogonal,
    Sphere,
    Torus,
    UniformDistribution,
    VonMisesFisherMixture,
)

__all__ = ["ManifoldFreeFormFlow"]

_MANIFOLD_NAMES = {"sphere", "torus", "so3"}


class ManifoldFreeFormFlow(
    ConditionalMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    DensityMixin,
    BaseTorchEstimator,
):
    """Free-form flow on a Riemannian manifold: sphere, torus, SO(3) or a product.

    An encoder ``f = pi o f~`` maps data on the manifold ``M`` to latent points on ``M``
    (distributed as the prior, uniform by default) and a decoder ``g = pi o g~`` maps
    back; ``f~`` and ``g~`` are free-form networks on the embedding space ``R^m`` and
    ``pi`` projects onto ``M``. Training minimises, per sample,

    ``beta |x - g(z)|^2 - log p_Z(z) - v^T J_f(x) SG(J_g(z) v)``, ``z = f(x)``,

    with Hutchinson probes ``v`` drawn in the tangent space at ``z`` (covariance: the
    tangent projector), plus two small regularisers (raw encoder outputs near ``M``, and
    ``f(g(z')) = z'`` for prior draws ``z'``). Sampling is one decoder pass and a
    projection, no ODE solve (Sorrenson et al., 2024). Densities are exact, w.r.t. the
    manifold's Riemannian volume: ``log p(x) = log p_Z(z) - log|det(R^T J_g(z) Q)|`` with
    orthonormal tangent bases ``Q`` at ``z`` and ``R`` at ``g(z)``.

    Input conventions (``X``):

    - ``"sphere"`` (``S^(d-1)`` for ``d`` columns): unit vectors. Use
      :func:`skfff.manifolds.latlon_to_unit` for latitude/longitude in degrees.
      Densities are per unit area (``S^2`` has area ``4 pi``).
    - ``"torus"`` (``T^d`` for ``d`` columns): angles in radians, any range (taken modulo
      ``2 pi``); densities per radian^d (total volume ``(2 pi)^d``). Outputs are in
      ``(-pi, pi]``.
    - ``"so3"``: rotation matrices of shape ``(n, 3, 3)`` or ``(n, 9)`` (row-major), or
      unit quaternions ``(n, 4)`` in SciPy's ``(x, y, z, w)`` order. Outputs are
      ``(n, 9)``. Densities are w.r.t. the bi-invariant volume with total ``8 pi^2``
      (geodesic distance = rotation angle).
    - a :class:`~skfff.manifolds.Manifold` instance, e.g.
      ``Product(Sphere(2), Torus(1))``: the columns of its factors' conventions, side by
      side.

    Points farther than ``tol`` from the manifold raise a ``ValueError`` that says how far
    off they are, unless ``project_inputs=True``.

    Parameters
    ----------
    manifold : {"sphere", "torus", "so3"} or Manifold, default="sphere"
        The manifold; with a name, its dimension follows from the number of columns.
    hidden_features : int, default=128
        Width of the default residual MLPs.
    n_blocks : int, default=3
        Residual blocks per default network.
    beta : float, default=50.0
        Weight of the reconstruction loss, which keeps ``g`` close to ``f^-1``.
    n_hutchinson : int, default=1
        Tangent-space Hutchinson probes per sample.
    prior : {"uniform", "vmf_mixture"}, default="uniform"
        Latent distribution; ``"vmf_mixture"`` (a learnable von Mises-Fisher mixture,
        ``S^2`` only) suits very concentrated data.
    n_prior_components : int, default=8
        Components of the ``"vmf_mixture"`` prior.
    distance_weight : float, default=1.0
        Weight of ``|f~(x) - pi(f~(x))|^2``.
    cycle_weight : float, default=1.0
        Weight of ``|f(g(z')) - z'|^2`` for prior draws ``z'``.
    uniform_weight : float, default=10.0
        Weight of ``|x' - g(f(x'))|^2`` for points ``x'`` drawn uniformly on the
        manifold: keeps ``f`` invertible away from the data too, so that the density
        integrates to one over the whole manifold. Without it (0) the encoder folds the
        empty parts of the manifold onto the data and the density can integrate to 1.4;
        with 1, 10 and 50 the Monte Carlo integral was 1.05, 1.03 and 1.01 on a 4-component
        vMF mixture, at held-out NLLs 0.02, 0.05 and 0.08 nats above the truth.
    log_prob_via : {"decoder", "encoder"}, default="decoder"
        Which network's Jacobian gives the density (also the validation NLL used for
        early stopping). ``"decoder"``: ``log p_Z(f(x)) - log|det J_g(f(x))|``, the density
        of the samples ``g(z)`` (the paper's choice). ``"encoder"``:
        ``log p_Z(f(x)) + log|det J_f(x)|``, the flow defined by ``f``. They agree when
        ``g = f^-1``; where ``g`` is not yet the inverse (short training on very
        concentrated data) the decoder density can show narrow spikes and integrate to
        well over 1, while the encoder density stays close to normalised (see
        ``benchmarks/bench_manifold_flow.py``).
    project_inputs : bool, default=False
        Project inputs onto the manifold instead of rejecting points off it.
    tol : float, default=1e-4
        Largest accepted distance of an input point from the manifold (in the embedding).
    encoder, decoder : torch.nn.Module, callable or None, default=None
        Custom networks ``R^m -> R^m`` (``m`` the embedding dimension), as in
        :class:`FreeFormFlow`; their outputs are projected onto the manifold.
    conditional : bool or {"categorical", "continuous"}, default=False
        Learn ``p(x | y)`` from ``fit(X, y)``, exactly as :class:`FreeFormFlow` does.
    %(training_parameters)s

    Attributes
    ----------
    manifold_ : Manifold
        The manifold the flow lives on.
    net_ : skorch.NeuralNet
        The trained skorch net; ``net_.module_`` holds encoder, decoder and prior.
    history_ : skorch.History
        Per-epoch ``train_loss`` (surrogate), ``valid_loss`` (exact NLL) and
        ``valid_reconstruction``.
    n_iter_ : int
        Epochs run.
    n_features_in_ : int
        Number of input columns (9 for SO(3), whatever the input form).
    feature_names_in_ : ndarray of shape (n_features,)
        Names of features seen during fit, when ``X`` has string column names.
    classes_ : ndarray
        Class labels of ``y`` (categorical conditioning only).

    See Also
    --------
    FreeFormFlow : The same method on ``R^d``.
    skfff.manifolds : The manifolds, their conventions and volume measures.
    sklearn.neighbors.KernelDensity : Kernel density estimation (``metric="haversine"``
        for latitude/longitude on the sphere).

    Notes
    -----
    Defaults were picked on the von Mises-Fisher and wrapped-normal mixtures of
    ``skfff.datasets`` (see ``benchmarks/bench_manifold_flow.py``). As for
    :class:`FreeFormFlow`, watch ``valid_reconstruction`` in ``history_``: a poor
    reconstruction makes the likelihood unreliable; raise ``beta`` then. On very
    concentrated data check the normalisation: the mean of ``exp(score_samples(U))``
    times the volume, ``U`` uniform on the manifold, should be close to 1; if it is not,
    train longer or use ``log_prob_via="encoder"``.

    References
    ----------
    .. [1] P. Sorrenson, F. Draxler, A. Rousselot, S. Hummerich, U. Köthe, "Learning
       distributions on manifolds with free-form flows", 2024.

    Examples
    --------
    >>> from skfff import ManifoldFreeFormFlow
    >>> from skfff.datasets import make_vmf_mixture
    >>> X, _ = make_vmf_mixture(300, random_state=0)
    >>> flow = ManifoldFreeFormFlow(manifold="sphere", max_epochs=3, random_state=0).fit(X)
    >>> flow.score_samples(X[:2]).shape
    (2,)
    >>> S = flow.sample(4, random_state=0)
    >>> S.shape, bool(abs((S**2).sum(1) - 1).max() < 1e-6)
    ((4, 3), True)
    """

    _parameter_constraints: dict = {
        **BaseTorchEstimator._parameter_constraints,
        "manifold": [StrOptions(_MANIFOLD_NAMES), Manifold],
        "hidden_features": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_blocks": [Interval(numbers.Integral, 0, None, closed="left")],
        "beta": [Interval(numbers.Real, 0, None, closed="neither")],
        "n_hutchinson": [Interval(numbers.Integral, 1, None, closed="left")],
        "prior": [StrOptions({"uniform", "vmf_mixture"})],
        "n_prior_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "distance_weight": [Interval(numbers.Real, 0, None, closed="left")],
        "cycle_weight": [Interval(numbers.Real, 0, None, closed="left")],
        "uniform_weight": [Interval(numbers.Real, 0, None, closed="left")],
        "log_prob_via": [StrOptions({"decoder", "encoder"})],
        "project_inputs": ["boolean"],
        "tol": [Interval(numbers.Real, 0, None, closed="neither")],
        "encoder": [torch.nn.Module, callable, None],
        "decoder": [torch.nn.Module, callable, None],
        "conditional": ["boolean", StrOptions({"categorical", "continuous"})],
    }

    def __init__(
        self,
        manifold: str | Manifold = "sphere",
        *,
        hidden_features: int = 128,
        n_blocks: int = 3,
        beta: float = 50.0,
        n_hutchinson: int = 1,
        prior: str = "uniform",
        n_prior_components: int = 8,
        distance_weight: float = 1.0,
        cycle_weight: float = 1.0,
        uniform_weight: float = 10.0,
        log_prob_via: str = "decoder",
        project_inputs: bool = False,
        tol: float = 1e-4,
        encoder: Any = None,
        decoder: Any = None,
        conditional: bool | str = False,
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
        self.manifold = manifold
        self.hidden_features = hidden_features
        self.n_blocks = n_blocks
        self.beta = beta
        self.n_hutchinson = n_hutchinson
        self.prior = prior
        self.n_prior_components = n_prior_components
        self.distance_weight = distance_weight
        self.cycle_weight = cycle_weight
        self.uniform_weight = uniform_weight
        self.log_prob_via = log_prob_via
        self.project_inputs = project_inputs
        self.tol = tol
        self.encoder = encoder
        self.decoder = decoder
        self.conditional = conditional

    # --------------------------------------------------------------- manifold
    def _resolve_manifold(self, n_features: int) -> Manifold:
        spec = self.manifold
        if isinstance(spec, Manifold):
            if n_features != spec.n_coordinates:
                raise ValueError(
                    f"X has {n_features} features, but {spec!r} takes {spec.n_coordinates} "
                    "coordinates per point"
                )
            return spec
        if spec == "sphere":
            if n_features < 2:
                raise ValueError(
                    "a sphere needs points with at least 2 coordinates, got n_features = "
                    f"{n_features}"
                )
            return Sphere(n_features - 1)
        if spec == "torus":
            return Torus(n_features)
        if n_features != 9:
            raise ValueError(
                f"SO(3) inputs must have shape (n, 3, 3), (n, 9) or (n, 4) quaternions; got "
                f"n_features = {n_features}"
            )
        return SpecialOrthogonal()

    def _is_so3(self) -> bool:
        m = self.manifold
        return m == "so3" or isinstance(m, SpecialOrthogonal)

    def _coordinates(self, X: Any, *, reset: bool) -> np.ndarray:
        """Validate ``X`` and return the embedding points (float64, on the manifold)."""
        if self._is_so3() and not hasattr(X, "columns"):
            arr = np.asarray(X) if not hasattr(X, "toarray") else X
            if getattr(arr, "ndim", 0) == 3:
                if arr.shape[1:] != (3, 3):
                    raise ValueError(f"3-D SO(3) input must be (n, 3, 3), got {arr.shape}")
                X = arr.reshape(arr.shape[0], 9)
            elif getattr(arr, "ndim", 0) == 2 and arr.shape[1] == 4:
                q = check_array(arr, dtype=np.float64)
                X = SpecialOrthogonal().to_embedding(q)
        X = self._validate_X(X, reset=reset)
        if reset:
            self.manifold_ = self._resolve_manifold(X.shape[1])
        manifold = self.manifold_
        dist = manifold.coordinates_off_manifold(X)
        if self.project_inputs:
            emb = manifold.to_embedding(X)
            emb_t = torch.tensor(emb, dtype=torch.float64)
            if not torch.isfinite(manifold.project(emb_t)).all() or np.any(
                np.linalg.norm(emb, axis=1) < 1e-12
            ):
                raise ValueError(f"some rows of X cannot be projected onto {manifold!r}")
        elif np.any(dist > self.tol):
            bad = dist > self.tol
            raise ValueError(
                f"{int(bad.sum())} of {len(X)} points of X are off the manifold "
                f"{manifold!r}: largest distance {dist.max():.3g} > tol={self.tol:g} (in "
                "the embedding). Pass points on the manifold (unit vectors for spheres, "
                "rotation matrices for SO(3)) or set project_inputs=True."
            )
        emb = torch.tensor(manifold.to_embedding(X), dtype=torch.float64)
        return manifold.project(emb).numpy()

    def _to_output(self, emb: np.ndarray) -> np.ndarray:
        emb = self.manifold_.project(torch.as_tensor(emb, dtype=torch.float64)).numpy()
        return self.manifold_.from_embedding(emb)

    # ------------------------------------------------------------------ hooks
    def _fit_inputs(self, X: Any, y: Any, *, warm: bool) -> tuple[np.ndarray, np.ndarray | None]:
        E = self._coordinates(X, reset=not warm)
        return E, self._fit_conditions(y, E.shape[0])

    def _build_module(self, X: np.ndarray, C: np.ndarray | None) -> ManifoldFreeFormFlowModule:
        m, k = self.manifold_.ambient_dim, 0 if C is None else C.shape[1]

        def default() -> ResidualMLP:
            return ResidualMLP(m, m, self.hidden_features, self.n_blocks, k, skip=True)

        if self.prior == "vmf_mixture":
            if self.manifold_ != Sphere(2):
                raise ValueError(
                    f"prior='vmf_mixture' is only available on the sphere S^2, not on "
                    f"{self.manifold_!r}"
                )
            prior: torch.nn.Module = VonMisesFisherMixture(self.n_prior_components)
        else:
            prior = UniformDistribution(self.manifold_)
        return ManifoldFreeFormFlowModule(
            make_network(self.encoder, m, m, k, default=default),
            make_network(self.decoder, m, m, k, default=default),
            self.manifold_, prior, self.beta, self.n_hutchinson, self.distance_weight,
            self.cycle_weight, self.uniform_weight, self.log_prob_via,
        )

    # -------------------------------------------------------------- sklearn
    def _embedded(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self._coordinates(X, reset=False)

    def score_samples(self, X: Any, y: Any = None) -> np.ndarray:
        """Exact log-density of each point w.r.t. the manifold's Riemannian volume.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_coordinates)
            Points on the manifold.
        y : array-like, default=None
            Conditions (required for a conditional flow).

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
        """
        E = self._embedded(X)
        C = self._conditions(y, E.shape[0])
        via = self.log_prob_via
        return self._map_batches(lambda x, c: self.module_.log_prob(x, c, via=via), E, C)

    def transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Encode ``X`` into latent points on the manifold (same convention as ``X``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_coordinates)
            Points on the manifold.
        y : array-like, default=None
            Conditions (required for a conditional flow).

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features)
        """
        E = self._embedded(X)
        C = self._conditions(y, E.shape[0])
        return self._to_output(self._map_batches(self.module_.encode, E, C))

    def inverse_transform(self, Z: Any, y: Any = None) -> np.ndarray:
        """Decode latent points back onto the data manifold.

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_coordinates)
            Latent points on the manifold.
        y : array-like, default=None
            Conditions (required for a conditional flow).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        E = self._embedded(Z)
        C = self._conditions(y, E.shape[0])
        return self._to_output(self._map_batches(self.module_.decode, E, C))

    def sample(self, n_samples: int = 1, y: Any = None, random_state: Any = None) -> np.ndarray:
        """Draw samples ``g(z)``, ``z`` from the prior: one network pass, no ODE.

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples.
        y : array-like, default=None
            Conditions: one row for all samples, or one per sample (required for a
            conditional flow).
        random_state : int, RandomState instance or None, default=None
            Seed for the latent draws.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            Points on the manifold (projected in float64), in the input convention.
        """
        check_is_fitted(self)
        self._check_n_samples(n_samples)
        C = self._conditions(y, n_samples)
        seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            z = self.module_.prior.sample(n_samples, gen, device="cpu", dtype=torch.float32)
        return self._to_output(self._map_batches(self.module_.decode, z, C))

    @property
    def _n_features_out(self) -> int:
        return self.n_features_in_

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        return tags
