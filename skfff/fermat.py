"""Density-based (Fermat) distances learnt from data.

Sorrenson, Behrend-Uriarte, Schnoerr and Koethe (2024), *Learning distances from data with
normalizing flows and score matching*. A path's length is ``L(gamma) = integral |gamma'|
p(gamma)^(-beta) dt``: travelling through dense regions is cheap, crossing empty space is
expensive, so the shortest paths follow the data. With the dimension-adapted exponent
``beta = 1 / D`` the distance keeps its meaning as the dimension grows.

Estimation, as in the paper: learn the density ``p``; build a k-nearest-neighbour graph on
the training points whose edge lengths integrate ``p^(-beta)`` along each segment; take
Dijkstra shortest paths; then relax each graph path towards the true geodesic with the score
``grad log p`` (the graph paths zig-zag in high dimension and overestimate distances; the
relaxation removes that bias).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, clone
from sklearn.neighbors import KernelDensity, NearestNeighbors
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._graph import Anchors, LogWeight, bridge_components, knn_graph, query_distances
from ._graph import segment_log_lengths as _segment_log_lengths
from ._torch.geodesics import relax_paths, resample_polylines
from ._torch.score_matching import fit_denoising_score

__all__ = ["FermatDistance"]

# Bridges across empty space cost up to exp(_GAP_NATS) times the metric at the least dense
# training point: large, but finite.
_GAP_NATS = 10.0


def _default_density() -> BaseEstimator:
    try:
        from .flow import FreeFormFlow
    except ImportError:  # pragma: no cover - FreeFormFlow ships with skfff
        return KernelDensity(bandwidth="scott")
    return FreeFormFlow()


class FermatDistance(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Density-based (Fermat) distance with graph shortest paths and geodesic relaxation.

    The distance between ``a`` and ``b`` is the length of the shortest path under the metric
    ``p(x)^(-beta) |dx|``, ``p`` being the data density: paths through dense regions are short,
    paths across gaps are long. ``fit`` learns ``p`` (or takes a given density), then builds a
    k-nearest-neighbour graph on the training points whose edge lengths integrate
    ``p^(-beta)`` along each segment (Gauss-Legendre nodes, in log space). Distances are
    Dijkstra shortest paths in that graph, refined by relaxing each path towards the true
    geodesic with the score ``grad log p``.

    Parameters
    ----------
    density : estimator with ``score_samples``, default=None
        Density model; ``score_samples(X)`` must return ``log p(X)`` (``-inf`` allowed where
        ``p = 0``). ``None`` uses :class:`~skfff.FreeFormFlow`. It is cloned and fitted on
        ``X`` unless ``prefit=True``.
    score_function : {"auto", "dsm", "finite_difference"} or callable, default="auto"
        Where the relaxation gets ``grad log p``: ``"finite_difference"`` differentiates
        ``density.score_samples`` numerically (2 D extra evaluations per point; exactly
        consistent with the density that measures the lengths); ``"dsm"`` trains a small
        network by denoising score matching on ``X`` (cheaper in high dimension; the paper
        found it steadier than a flow's own gradient); a callable maps an ``(n, D)`` array
        to ``(n, D)`` scores. ``"auto"`` picks ``"finite_difference"`` up to 8 features and
        ``"dsm"`` above. Only used when paths are relaxed. Whatever the score, a relaxation
        step that lengthens a path (under the density) is rejected.
    beta : float, default=None
        Exponent of the metric ``p^(-beta)``; ``None`` uses the dimension-adapted
        ``1 / n_features``. ``beta = 0`` gives graph-approximated Euclidean distances.
    n_neighbors : int, default=10
        Neighbours per point in the graph; also how many training points a new point is
        joined to.
    relax : bool or "auto", default="auto"
        Relax graph paths towards geodesics. ``"auto"`` relaxes when a request involves at
        most ``max_relax_pairs`` pairs and otherwise returns graph distances with a warning
        (relaxation costs up to ``n_path_points * max_relax_iter`` score and density
        evaluations per pair).
        Relaxed lengths replace graph lengths only when shorter (both are lengths of real
        paths, so the shorter is the better estimate).
    max_relax_pairs : int, default=20000
        Budget of ``relax="auto"``.
    n_path_points : int, default=32
        Points per path during relaxation (end points included).
    max_relax_iter : int, default=100
        Largest number of relaxation iterations.
    n_quadrature : int, default=3
        Gauss-Legendre nodes per straight segment when integrating ``p^(-beta)``.
    prefit : bool, default=False
        Use ``density`` as given (already fitted, or an analytic density with
        ``score_samples``) instead of cloning and fitting it.
    n_jobs : int, default=None
        joblib workers over row blocks of the distance matrices (the blocks also run on
        joblib's Dask or Ray backends).
    random_state : int, RandomState instance or None, default=None
        Seeds the density fit (when the density has a ``random_state`` parameter) and the
        score model.

    Attributes
    ----------
    density_ : estimator
        The fitted density.
    beta_ : float
        The exponent used.
    graph_ : scipy.sparse.csr_matrix of shape (n_samples, n_samples)
        Neighbour graph with metric edge lengths (upper triangle; undirected), including
        the bridges between components.
    n_components_ : int
        Connected components of the neighbour graph before bridging. Each pair of components
        is joined by one extra edge between its closest points, weighted by the integral of
        ``p^(-beta)`` across the gap (the density floored at ``exp(-10 / beta)`` times the
        least dense training point), so all distances are finite and the triangle inequality
        holds for graph distances.
    component_labels_ : ndarray of shape (n_samples,)
        Component of each training point before bridging.
    score_function_ : str or callable
        The score used by the relaxation (``"auto"`` resolved).
    score_model_ : torch.nn.Module or None
        The denoising score model, when one was trained.
    X_fit_ : ndarray of shape (n_samples, n_features)
        The training points (graph nodes).
    n_features_in_ : int
        Number of features seen during ``fit``.

    See Also
    --------
    skfff.FreeFormFlow : The default density model.
    sklearn.cluster.DBSCAN : Cluster with ``metric="precomputed"`` on ``transform``'s output.
    sklearn.manifold.Isomap : Graph geodesic distances without a density.

    Notes
    -----
    Relaxation solves ``phi'' = -beta |phi'|^2 s_perp`` (constant Euclidean speed, ``s_perp``
    the score normal to the path) on ``n_path_points`` points, with implicit steps in the
    second difference, batched over paths in torch. Graph distances are exact shortest paths
    of the graph, hence symmetric and metric; relaxed distances are symmetric with a zero
    diagonal but may break the triangle inequality by the relaxation's residual error.

    References
    ----------
    .. [1] P. Sorrenson, D. Behrend-Uriarte, C. Schnoerr, U. Koethe, "Learning distances from
       data with normalizing flows and score matching", 2024.
    .. [2] D. Groisman, M. Jonckheere, F. Sapienza, "Nonhomogeneous Euclidean first-passage
       percolation and distance learning", Bernoulli, 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.neighbors import KernelDensity
    >>> from skfff import FermatDistance
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> fd = FermatDistance(density=KernelDensity(bandwidth=0.5), relax=False).fit(X)
    >>> D = fd.pairwise()
    >>> D.shape, bool(np.allclose(D, D.T)), float(D[0, 0])
    ((200, 200), True, 0.0)
    """

    _parameter_constraints: dict = {
        "density": [HasMethods(["score_samples"]), None],
        "score_function": [StrOptions({"auto", "dsm", "finite_difference"}), callable],
        "beta": [Interval(Real, 0, None, closed="left"), None],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "relax": ["boolean", StrOptions({"auto"})],
        "max_relax_pairs": [Interval(Integral, 0, None, closed="left")],
        "n_path_points": [Interval(Integral, 3, None, closed="left")],
        "max_relax_iter": [Interval(Integral, 1, None, closed="left")],
        "n_quadrature": [Interval(Integral, 1, None, closed="left")],
        "prefit": ["boolean"],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        density: Any = None,
        *,
        score_function: str | Callable[[np.ndarray], np.ndarray] = "auto",
        beta: float | None = None,
        n_neighbors: int = 10,
        relax: bool | str = "auto",
        max_relax_pairs: int = 20000,
        n_path_points: int = 32,
        max_relax_iter: int = 100,
        n_quadrature: int = 3,
        prefit: bool = False,
        n_jobs: int | None = None,
        random_state: Any = None,
    ) -> None:
        self.density = density
        self.score_function = score_function
        self.beta = beta
        self.n_neighbors = n_neighbors
        self.relax = relax
        self.max_relax_pairs = max_relax_pairs
        self.n_path_points = n_path_points
        self.max_relax_iter = max_relax_iter
        self.n_quadrature = n_quadrature
        self.prefit = prefit
        self.n_jobs = n_jobs
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any = None) -> FermatDistance:
        """Fit the density (unless ``prefit``), the neighbour graph and the score model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training points; they become the graph's nodes.
        y : None
            Ignored.

        Returns
        -------
        self : FermatDistance
            The fitted estimator.
        """
        self._validate_params()
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        rng = check_random_state(self.random_state)
        n, D = X.shape
        if self.prefit:
            if self.density is None:
                raise ValueError("prefit=True needs a density.")
            self.density_ = self.density
        else:
            density = clone(_default_density() if self.density is None else self.density)
            if "random_state" in density.get_params():
                density.set_params(random_state=rng.randint(np.iinfo(np.int32).max))
            self.density_ = density.fit(X)
        self.beta_ = float(1.0 / D if self.beta is None else self.beta)

        logp = np.asarray(self.density_.score_samples(X), dtype=np.float64)
        if logp.shape != (n,) or not np.isfinite(logp).all():
            raise ValueError(
                "The density must give a finite log-density at every training point; got "
                f"{np.sum(~np.isfinite(logp))} non-finite values."
            )
        self._log_weight = LogWeight(
            self.density_.score_samples,
            self.beta_,
            cap=float(np.max(-self.beta_ * logp) + _GAP_NATS),
        )
        self.X_fit_ = X
        self._nn = NearestNeighbors().fit(X)
        k = min(self.n_neighbors, n - 1)
        self._radius = self._nn.kneighbors(n_neighbors=k)[0][:, -1]
        graph = knn_graph(X, self._nn, self.n_neighbors, self._log_weight, self.n_quadrature)
        self.graph_, self.n_components_, self.component_labels_ = bridge_components(
            graph, X, self._log_weight, self.n_quadrature
        )
        self.score_model_ = None
        self.score_function_ = self.score_function
        if self.score_function == "auto":
            self.score_function_ = "finite_difference" if D <= 8 else "dsm"
        if self.relax is not False and self.score_function_ == "dsm":
            self.score_model_ = fit_denoising_score(X, seed=rng.randint(np.iinfo(np.int32).max))
        return self

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """Fit and return the (symmetric) distance matrix of the training points.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training points.
        y : None
            Ignored.
        **fit_params : dict
            Unused; for API compatibility.

        Returns
        -------
        ndarray of shape (n_samples, n_samples)
            Same as ``fit(X).pairwise()``.
        """
        return self.fit(X, y).pairwise()

    # ------------------------------------------------------------------ scores
    def _score_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.score_model_ is not None:
            model = self.score_model_

            def fn(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return model(x)

            return fn
        if callable(self.score_function_):
            user = self.score_function_

            def fn(x: torch.Tensor) -> torch.Tensor:
                s = np.asarray(user(x.detach().cpu().numpy().astype(np.float64)))
                return torch.as_tensor(s, dtype=x.dtype).reshape(x.shape)

            return fn
        # finite differences of the density's log p (also when relax was off at fit time, so
        # that no score model was trained)
        h = 1e-3 * float(np.mean(np.std(self.X_fit_, axis=0)) + 1e-12)
        score_samples = self.density_.score_samples

        def fn(x: torch.Tensor) -> torch.Tensor:
            xn = x.detach().cpu().numpy().astype(np.float64)
            m, D = xn.shape
            offsets = np.eye(D) * h
            plus = (xn[:, None, :] + offsets[None]).reshape(-1, D)
            minus = (xn[:, None, :] - offsets[None]).reshape(-1, D)
            lp = np.asarray(score_samples(np.concatenate([plus, minus])), dtype=np.float64)
            grad = (lp[: m * D] - lp[m * D :]).reshape(m, D) / (2 * h)
            grad = np.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            return torch.as_tensor(grad, dtype=x.dtype)

        return fn

    # ------------------------------------------------------------------ distances
    def _anchors(self, X: Any) -> Anchors:
        if X is None:
            return Anchors.training(self.X_fit_, self._radius)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return Anchors.new(
            X, self.X_fit_, self._nn, self.n_neighbors, self._log_weight, self.n_quadrature
        )

    def _should_relax(self, n_pairs: int) -> bool:
        if self.relax is False:
            return False
        if self.relax == "auto" and n_pairs > self.max_relax_pairs:
            warnings.warn(
                f"FermatDistance: {n_pairs} pairs exceed max_relax_pairs={self.max_relax_pairs}; "
                "returning graph distances without relaxation. Pass relax=True to relax them "
                "anyway, or raise max_relax_pairs.",
                UserWarning,
                stacklevel=3,
            )
            return False
        return True

    def _distances(self, Q1: Anchors, Q2: Anchors, symmetric: bool) -> np.ndarray:
        if Q1.is_train and not Q2.is_train:
            return self._distances(Q2, Q1, symmetric=False).T.copy()
        n_pairs = len(Q1) * (len(Q1) - 1) // 2 if symmetric else len(Q1) * len(Q2)
        relax = self._should_relax(n_pairs)
        D, blocks = query_distances(
            self.graph_,
            Q1,
            Q2,
            self._log_weight,
            n_quadrature=self.n_quadrature,
            symmetric=symmetric,
            return_paths=relax,
            n_jobs=self.n_jobs,
        )
        if relax:
            rows = np.concatenate([b.pair_rows for b in blocks])
            cols = np.concatenate([b.pair_cols for b in blocks])
            width = max(b.paths.shape[1] for b in blocks)
            paths = np.concatenate(
                [
                    np.pad(b.paths, ((0, 0), (0, width - b.paths.shape[1])), mode="edge")
                    for b in blocks
                    if b.paths.size
                ]
                or [np.zeros((0, width), dtype=np.int64)]
            )
            lengths = self._relaxed_lengths(Q1.points[rows], paths, Q2.points[cols])[0]
            better = lengths < D[rows, cols]
            D[rows[better], cols[better]] = lengths[better]
            if symmetric:
                D[cols[better], rows[better]] = lengths[better]
        return D

    def _relaxed_lengths(
        self,
        start: np.ndarray,
        nodes: np.ndarray,
        end: np.ndarray,
        *,
        return_paths: bool = False,
        batch_size: int = 4096,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Relax the polylines ``start -> X_fit_[nodes[i]] -> end``; return their lengths."""
        n_paths = start.shape[0]
        D = self.n_features_in_
        N = self.n_path_points
        lengths = np.empty(n_paths)
        out = np.empty((n_paths, N, D)) if return_paths else None
        score = self._score_fn()
        for lo in range(0, n_paths, batch_size):
            sl = slice(lo, lo + batch_size)
            poly = np.concatenate([start[sl, None], self.X_fit_[nodes[sl]], end[sl, None]], axis=1)
            phi = resample_polylines(torch.as_tensor(poly, dtype=torch.float32), N)
            phi, _ = relax_paths(
                phi, score, self.beta_, max_iter=self.max_relax_iter, length=self._torch_length
            )
            phi = phi.double().numpy()
            phi[:, 0], phi[:, -1] = start[sl], end[sl]
            seg = _segment_log_lengths(
                phi[:, :-1].reshape(-1, D),
                phi[:, 1:].reshape(-1, D),
                self._log_weight,
                self.n_quadrature,
            ).reshape(phi.shape[0], N - 1)
            lengths[sl] = np.exp(seg).sum(axis=1)
            if out is not None:
                out[sl] = phi
        return lengths, out

    def _torch_length(self, phi: torch.Tensor) -> torch.Tensor:
        """Metric length of a batch of paths (midpoint rule per segment), for step control."""
        B, N, D = phi.shape
        x = phi.detach().cpu().double().numpy()
        mid = 0.5 * (x[:, 1:] + x[:, :-1]).reshape(-1, D)
        seg = np.linalg.norm(x[:, 1:] - x[:, :-1], axis=-1)
        w = np.exp(self._log_weight(mid)).reshape(B, N - 1)
        return torch.as_tensor((w * seg).sum(axis=1), dtype=phi.dtype)

    def pairwise(self, X: Any = None, Y: Any = None) -> np.ndarray:
        """Fermat distance matrix.

        Parameters
        ----------
        X : array-like of shape (n_X, n_features), default=None
            Row points; ``None`` means the training points.
        Y : array-like of shape (n_Y, n_features), default=None
            Column points; ``None`` means the same points as ``X`` (a symmetric matrix with
            zero diagonal).

        Returns
        -------
        ndarray of shape (n_X, n_Y)
            Finite distances, float64.
        """
        check_is_fitted(self)
        Q1 = self._anchors(X)
        if Y is None:
            return self._distances(Q1, Q1, symmetric=True)
        return self._distances(Q1, self._anchors(Y), symmetric=False)

    def transform(self, X: Any) -> np.ndarray:
        """Distances from ``X`` to the training points.

        ``make_pipeline(FermatDistance(), DBSCAN(metric="precomputed"))`` clusters with it:
        ``fit_transform`` returns the training matrix, ``transform`` on the training points
        the same matrix.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Query points.

        Returns
        -------
        ndarray of shape (n_samples, n_training_samples)
            Fermat distances to each training point.
        """
        check_is_fitted(self)
        train = Anchors.training(self.X_fit_, self._radius)
        return self._distances(self._anchors(X), train, symmetric=False)

    def geodesic(self, a: Any, b: Any, *, return_length: bool = False) -> Any:
        """Shortest path from ``a`` to ``b``, as ``n_path_points`` points.

        Parameters
        ----------
        a, b : array-like of shape (n_features,)
            End points.
        return_length : bool, default=False
            Also return the path's metric length.

        Returns
        -------
        path : ndarray of shape (n_path_points, n_features)
            The (relaxed, unless ``relax=False``) path, equally spaced, from ``a`` to ``b``.
        length : float
            Its length; only when ``return_length``.
        """
        check_is_fitted(self)
        a = np.asarray(a, dtype=np.float64).reshape(1, -1)
        b = np.asarray(b, dtype=np.float64).reshape(1, -1)
        Qa, Qb = self._anchors(a), self._anchors(b)
        D, blocks = query_distances(
            self.graph_,
            Qa,
            Qb,
            self._log_weight,
            n_quadrature=self.n_quadrature,
            return_paths=True,
        )
        graph_len = float(D[0, 0])
        middle = blocks[0].paths if blocks[0].paths.size else np.zeros((1, 0), dtype=np.int64)
        poly = np.concatenate([Qa.points, self.X_fit_[middle[0]], Qb.points])[None]
        N = self.n_path_points
        graph_path = resample_polylines(torch.as_tensor(poly), N).numpy()[0]
        if self.relax is False or graph_len == 0.0:
            path, length = graph_path, graph_len
        else:
            lengths, paths = self._relaxed_lengths(
                Qa.points, middle[:1], Qb.points, return_paths=True
            )
            path, length = (paths[0], float(lengths[0]))
            if length > graph_len:
                path, length = graph_path, graph_len
        return (path, length) if return_length else path

    def __call__(self, u: Any, v: Any = None) -> Any:
        """Use the fitted distance as a metric callable.

        Parameters
        ----------
        u : array-like of shape (n_features,) or (n_u, n_features)
            One point or several.
        v : array-like of the same kind, default=None
            ``None``: return ``pairwise(u)`` (how ``AgglomerativeClustering`` calls a
            callable metric).

        Returns
        -------
        float or ndarray
            A scalar for two single points, else a distance matrix.
        """
        u_arr = np.asarray(u, dtype=np.float64)
        if v is None:
            return self.pairwise(np.atleast_2d(u_arr))
        v_arr = np.asarray(v, dtype=np.float64)
        D = self.pairwise(np.atleast_2d(u_arr), np.atleast_2d(v_arr))
        if u_arr.ndim == 1 and v_arr.ndim == 1:
            return float(D[0, 0])
        return D

    @property
    def _n_features_out(self) -> int:
        """One output column per training point (for ``get_feature_names_out``)."""
        return self.X_fit_.shape[0]

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags
