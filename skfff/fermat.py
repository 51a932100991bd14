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

from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, clone
from sklearn.neighbors import KernelDensity, NearestNeighbors
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._checks import check_integer
from ._fermat_calibration import StraightnessCalibration, fit_straightness_calibration
from ._fermat_device import density_device, modules_to_cpu
from ._graph import (
    MAX_TEMP_ELEMENTS,
    Anchors,
    EdgeTable,
    LogWeight,
    _nearest_columns,
    _tree_euclid,
    _walk_paths,
    bridge_components,
    knn_graph,
    query_distances,
    row_norms_between,
    symmetrise,
)
from ._graph import segment_log_lengths as _segment_log_lengths
from ._torch.density_surrogate import fit_log_density_surrogate
from ._torch.geodesics import LengthFn, relax_paths, resample_polylines
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
    # A distance under p^(-beta) does not depend on p's total mass (a constant factor
    # scales every length alike), so the flow's own normalisation check, and its warning
    # that the user could only act on through density=, are skipped. The flow trains for
    # 300 epochs (patience 50), FreeFormFlow's budget before max_epochs="auto": its longer
    # fits on small data gain likelihood but would triple the distance's fit time, and the
    # clustering figures in benchmarks/README.rst were measured with this budget, and with
    # the normal latent (latent="auto" now takes an EM mixture; the clustering figures
    # have not been re-run with it, though the gallery's two moons cluster better with it).
    return FreeFormFlow(check_normalization=False, max_epochs=300, patience=50,
                        latent="normal")


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
        ``p = 0``). ``None`` uses :class:`~skfff.FreeFormFlow` (``max_epochs=300,
        patience=50, latent="normal"``, without its normalisation check). It is cloned and
        fitted on ``X`` unless ``prefit=True``.
    score_function : {"auto", "surrogate", "dsm", "finite_difference"} or callable, \
            default="auto"
        What guides the relaxation. ``"surrogate"`` (what ``"auto"`` picks) distils the
        density at ``fit`` into a small MLP ``u(x) ~ log p(x)`` (regression on the
        density's values near the data and on chords between data points); its value drives
        the step control and its autograd gradient is the score, so one cheap forward and
        backward pass serves every path point of every path at once, on the density's
        device. ``"finite_difference"`` differentiates ``density.score_samples``
        numerically (2 D extra evaluations per point, exact but slow for a flow);
        ``"dsm"`` trains a score network by denoising score matching on ``X`` (the paper's
        choice; the step control then evaluates the density); a callable maps an
        ``(n, D)`` array to ``(n, D)`` scores. Whatever the guide, the distances are
        measured with the density itself, and a step that lengthens a path is rejected.
    beta : float, default=None
        Exponent of the metric ``p^(-beta)``; ``None`` uses the dimension-adapted
        ``1 / n_features``. ``beta = 0`` gives graph-approximated Euclidean distances.
    n_neighbors : int, default=15
        Neighbours per point in the graph; also how many training points a new point is
        joined to. More neighbours mean straighter graph paths at a proportional cost in
        density evaluations (on ``N(0, I_5)`` with ``n = 5 000``, calibrated distances are
        3.4 % off with 10 neighbours, 2.2 % with 15: ``benchmarks/bench_fermat.py``).
    relax : bool or "auto", default="auto"
        How paths are refined towards geodesics. ``"auto"``: calibrated graph distances,
        each graph distance times a factor predicted from the straightness of its path,
        learnt at ``fit`` from ``n_calibration_pairs`` relaxed paths (see Notes); a
        distance never depends on what else was asked in the same call. ``True`` relaxes
        every pair of every request (most accurate; cost grows with the number of pairs:
        use it for a few thousand pairs). ``False`` returns raw graph distances. Relaxed
        lengths replace graph lengths only when shorter (both are lengths of real paths).
    n_calibration_pairs : int, default=1024
        Paths relaxed at ``fit`` to calibrate graph distances (``relax="auto"``).
    n_path_points : int, default=16
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
    surrogate_ : torch.nn.Module or None
        The distilled log-density guiding the relaxation (``score_function="surrogate"``).
    calibration_ : StraightnessCalibration or None
        Map from path straightness to the ratio relaxed / graph length (fitted unless
        ``relax=False``); ``calibration_(s)`` evaluates it.
    calibration_pairs_ : ndarray of shape (n_pairs, 2)
        Training pairs whose paths were relaxed for the calibration.
    calibration_in_tube_ : ndarray of shape (n_pairs,)
        Which of them stayed near their graph path and entered the fit.
    device_ : torch.device
        Where the relaxation runs: the density's device.
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

    Calibration (``relax="auto"``): a graph path's overestimate comes
    from its zig-zag through the sample, and is well predicted by its straightness
    ``|b - a| / (Euclidean length of the graph path)``, which Dijkstra's predecessor tree
    gives for all targets at once. ``fit`` relaxes ``n_calibration_pairs`` sampled paths
    and fits the ratio relaxed / graph length against straightness by isotonic regression;
    sampled paths that leave a tube of one hop around their graph path (a shortcut the
    graph lacks, e.g. across a gap) are left out. Cost: a fixed number of relaxations,
    whatever the size of the matrix. Calibrated distances are symmetric with a zero
    diagonal and never exceed graph distances; they need not satisfy the triangle
    inequality. See ``docs/fermat_scaling.rst`` for large ``n``, Dask and GPUs.

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
        "score_function": [
            StrOptions({"auto", "surrogate", "dsm", "finite_difference"}),
            callable,
        ],
        "beta": [Interval(Real, 0, None, closed="left"), None],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "relax": ["boolean", StrOptions({"auto"})],
        "n_calibration_pairs": [Interval(Integral, 0, None, closed="left")],
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
        n_neighbors: int = 15,
        relax: bool | str = "auto",
        n_calibration_pairs: int = 1024,
        n_path_points: int = 16,
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
        self.n_calibration_pairs = n_calibration_pairs
        self.n_path_points = n_path_points
        self.max_relax_iter = max_relax_iter
        self.n_quadrature = n_quadrature
        self.prefit = prefit
        self.n_jobs = n_jobs
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any = None) -> FermatDistance:
        """Fit the density (unless ``prefit``), the graph, the relaxation guide and calibration.

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
            self.density_ = self._new_density(rng).fit(X)
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
        self._edges = EdgeTable.from_graph(self.graph_, X)
        self.device_ = density_device(self.density_)
        self.score_model_ = None
        self.surrogate_ = None
        self.score_function_ = self.score_function
        if self.score_function == "auto":
            self.score_function_ = "surrogate"
        self.calibration_ = None
        self.calibration_pairs_ = np.empty((0, 2), dtype=np.int64)
        self.calibration_in_tube_ = np.empty(0, dtype=bool)
        if self.relax is not False and self.beta_ > 0:
            seed = rng.randint(np.iinfo(np.int32).max)
            if self.score_function_ == "dsm":
                self.score_model_ = fit_denoising_score(X, seed=seed, device=self.device_)
            elif self.score_function_ == "surrogate":
                self.surrogate_ = fit_log_density_surrogate(
                    X,
                    self.density_.score_samples,
                    floor=-self._log_weight.cap / self.beta_,
                    seed=seed,
                    device=self.device_,
                )
            self.calibration_ = self._fit_calibration(rng)
        return self

    def _new_density(self, rng: np.random.RandomState) -> BaseEstimator:
        """A fresh, unfitted density: a clone of ``density`` (its own ``random_state`` kept)."""
        if self.density is not None:
            return clone(self.density)
        density = _default_density()
        if "random_state" in density.get_params():
            density.set_params(random_state=rng.randint(np.iinfo(np.int32).max))
        return density

    def _fit_calibration(self, rng: np.random.RandomState) -> StraightnessCalibration:
        """Relax a sample of training-pair paths; fit length ratio against straightness."""
        X = self.X_fit_
        n = X.shape[0]
        budget = min(self.n_calibration_pairs, n * (n - 1) // 2)
        if budget < 2:
            return fit_straightness_calibration(np.empty(0), np.empty(0))
        n_src = int(min(n, max(1, np.ceil(np.sqrt(budget)))))
        per = int(min(n - 1, np.ceil(budget / n_src)))
        src = np.sort(rng.choice(n, n_src, replace=False))
        G, pred = dijkstra(self.graph_, directed=False, indices=src, return_predecessors=True)
        # targets spread over each source's distance quantiles (every length scale), jittered
        order = np.argsort(G, axis=1)[:, 1:]  # drop the source itself
        pos = (np.arange(per) + rng.uniform(size=(n_src, per))) * (n - 1) / per
        slot = np.repeat(np.arange(n_src), per)
        tgt = order[slot, np.minimum(pos.astype(int), n - 2).ravel()]
        graph_len = G[slot, tgt]
        keep = graph_len > 1e-300
        slot, tgt, graph_len = slot[keep], tgt[keep], graph_len[keep]
        tree = _tree_euclid(pred, src, self._edges)
        path_euclid = tree[slot, tgt]
        chord = row_norms_between(X, src[slot], tgt)
        straight = np.where(path_euclid > 0, np.minimum(chord / path_euclid, 1.0), 1.0)
        paths = _walk_paths(pred, slot, src[slot], tgt)
        relaxed, moved = self._relaxed_lengths(X[src[slot]], paths, X[tgt], return_shift=True)
        ratio = np.minimum(relaxed, graph_len) / graph_len
        # Only paths that stayed in a tube of one mean hop around their graph path measure
        # the zig-zag of the graph; a path that left it found a shortcut the graph lacks (a
        # different route, e.g. across a gap between clusters), which says nothing about
        # other pairs.
        n_hops = np.maximum(1, np.sum(np.diff(paths, axis=1) != 0, axis=1) + 1)
        in_tube = moved <= path_euclid / n_hops
        self.calibration_pairs_ = np.stack([src[slot], tgt], axis=1)
        self.calibration_in_tube_ = in_tube
        return fit_straightness_calibration(straight[in_tube], ratio[in_tube])

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

    # ------------------------------------------------------------------ relaxation guide
    def _guide(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], LengthFn, torch.device]:
        """Score and path-length functions driving the relaxation, and their device."""
        if self.surrogate_ is not None:
            model = self.surrogate_
            device = next(model.buffers()).device
            beta, cap = self.beta_, self._log_weight.cap

            def score(x: torch.Tensor) -> torch.Tensor:
                return model.value_and_score(x)[1]

            def length(phi: torch.Tensor) -> torch.Tensor:
                B, N, D = phi.shape
                mid = 0.5 * (phi[:, 1:] + phi[:, :-1])
                with torch.no_grad():
                    lw = (-beta * model(mid.reshape(-1, D))).clamp(max=min(cap, 80.0))
                seg = (phi[:, 1:] - phi[:, :-1]).norm(dim=-1)
                return (lw.exp().reshape(B, N - 1) * seg).sum(dim=1)

            return score, length, device
        device = torch.device("cpu")
        if self.score_model_ is not None:
            net = self.score_model_
            device = next(net.buffers()).device

            def score(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return net(x)

        elif callable(self.score_function_):
            user = self.score_function_

            def score(x: torch.Tensor) -> torch.Tensor:
                s = np.asarray(user(x.detach().cpu().numpy().astype(np.float64)))
                return torch.as_tensor(s, dtype=x.dtype, device=x.device).reshape(x.shape)

        else:  # finite differences of the density's log p
            score = self._finite_difference_score()
        return score, self._torch_length, device

    def _finite_difference_score(self) -> Callable[[torch.Tensor], torch.Tensor]:
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
            return torch.as_tensor(grad, dtype=x.dtype, device=x.device)

        return fn

    def _torch_length(self, phi: torch.Tensor) -> torch.Tensor:
        """Metric length of a batch of paths under the real density (midpoint rule)."""
        B, N, D = phi.shape
        x = phi.detach().cpu().double().numpy()
        mid = 0.5 * (x[:, 1:] + x[:, :-1]).reshape(-1, D)
        seg = np.linalg.norm(x[:, 1:] - x[:, :-1], axis=-1)
        w = np.exp(self._log_weight(mid)).reshape(B, N - 1)
        return torch.as_tensor((w * seg).sum(axis=1), dtype=phi.dtype, device=phi.device)

    def _relaxed_lengths(
        self,
        start: np.ndarray,
        nodes: np.ndarray,
        end: np.ndarray,
        *,
        return_paths: bool = False,
        return_shift: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Relax the polylines ``start -> X_fit_[nodes[i]] -> end``; return their lengths.

        Paths are relaxed on the guide's device in batches of bounded size; their lengths
        are then measured with the real density (``n_quadrature`` nodes per segment).
        The second output is the relaxed paths (``return_paths``), or how far each relaxed
        path strayed from its polyline: the largest distance from a relaxed point to the
        nearest point of the resampled polyline (``return_shift``).
        """
        n_paths = start.shape[0]
        D = self.n_features_in_
        N = self.n_path_points
        lengths = np.empty(n_paths)
        out = np.empty((n_paths, N, D)) if return_paths else None
        shift = np.empty(n_paths) if return_shift else None
        score, length, device = self._guide()
        width = max(nodes.shape[1] + 2, N)
        batch_size = int(max(1, min(4096, MAX_TEMP_ELEMENTS // (4 * width * D))))
        for lo in range(0, n_paths, batch_size):
            sl = slice(lo, lo + batch_size)
            poly = np.concatenate([start[sl, None], self.X_fit_[nodes[sl]], end[sl, None]], axis=1)
            poly_t = torch.as_tensor(poly, dtype=torch.float32, device=device)
            phi0 = resample_polylines(poly_t, N)
            phi, _ = relax_paths(
                phi0, score, self.beta_, max_iter=self.max_relax_iter, length=length
            )
            if shift is not None:
                shift[sl] = torch.cdist(phi, phi0).amin(dim=2).amax(dim=1).double().cpu().numpy()
            phi = phi.double().cpu().numpy()
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
        return lengths, (shift if return_shift else out)

    # ------------------------------------------------------------------ distances
    def _anchors(self, X: Any) -> Anchors:
        if X is None:
            return Anchors.training(self.X_fit_, self._radius)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return Anchors.new(
            X, self.X_fit_, self._nn, self.n_neighbors, self._log_weight, self.n_quadrature
        )

    def _mode(self, n_pairs: int) -> str:
        """``"graph"``, ``"relaxed"`` (every pair) or ``"calibrated"`` for a request."""
        if self.relax is False or self.beta_ == 0:
            return "graph"
        if self.relax is True:
            return "relaxed"
        return "calibrated" if self.calibration_ is not None else "graph"

    def _distances(
        self, Q1: Anchors, Q2: Anchors, symmetric: bool, out: np.ndarray | None = None
    ) -> np.ndarray:
        if Q1.is_train and not Q2.is_train and out is None:
            return self._distances(Q2, Q1, symmetric=False).T.copy()
        n_pairs = len(Q1) * (len(Q1) - 1) // 2 if symmetric else len(Q1) * len(Q2)
        mode = self._mode(n_pairs)
        D, blocks = query_distances(
            self.graph_,
            Q1,
            Q2,
            edges=self._edges,
            symmetric=symmetric,
            return_paths=mode == "relaxed",
            correction=self.calibration_ if mode == "calibrated" else None,
            out=out,
            n_jobs=self.n_jobs,
        )
        near_r = np.concatenate([b.near_rows for b in blocks])
        near_c = np.concatenate([b.near_cols for b in blocks])
        if near_r.size:  # direct segments between nearby points, measured here
            seg = np.exp(
                _segment_log_lengths(
                    Q1.points[near_r], Q2.points[near_c], self._log_weight, self.n_quadrature
                )
            )
            D[near_r, near_c] = np.minimum(D[near_r, near_c], seg)
        if symmetric:
            symmetrise(D)
        if mode == "relaxed":
            rows = np.concatenate([b.pair_rows for b in blocks])
            cols = np.concatenate([b.pair_cols for b in blocks])
            width = max(b.paths.shape[1] for b in blocks)
            paths = np.concatenate(
                [
                    np.pad(b.paths, ((0, 0), (0, width - b.paths.shape[1])), mode="edge")
                    for b in blocks
                    if b.paths.size
                ]
                or [np.zeros((0, max(width, 1)), dtype=np.int64)]
            )
            lengths = self._relaxed_lengths(Q1.points[rows], paths, Q2.points[cols])[0]
            better = lengths < D[rows, cols]
            D[rows[better], cols[better]] = lengths[better]
            if symmetric:
                D[cols[better], rows[better]] = lengths[better]
        return D

    def pairwise(
        self, X: Any = None, Y: Any = None, *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Fermat distance matrix.

        Calibrated graph distances by default, relaxed ones with ``relax=True`` (see
        ``relax``).

        Parameters
        ----------
        X : array-like of shape (n_X, n_features), default=None
            Row points; ``None`` means the training points.
        Y : array-like of shape (n_Y, n_features), default=None
            Column points; ``None`` means the same points as ``X`` (a symmetric matrix with
            zero diagonal).
        out : ndarray of shape (n_X, n_Y), dtype float64, default=None
            Array to write the result into, row block by row block, e.g. an ``np.memmap``
            for matrices larger than memory; it is also returned.

        Returns
        -------
        ndarray of shape (n_X, n_Y)
            Finite distances, float64.
        """
        check_is_fitted(self)
        if out is not None and (
            not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.ndim != 2
        ):
            raise ValueError("out must be a 2-D float64 NumPy array (or np.memmap).")
        Q1 = self._anchors(X)
        if Y is None:
            return self._distances(Q1, Q1, symmetric=True, out=out)
        return self._distances(Q1, self._anchors(Y), symmetric=False, out=out)

    def kneighbors_graph(
        self, X: Any = None, n_neighbors: int | None = None, mode: str = "distance"
    ) -> csr_matrix:
        """Sparse graph of each point's nearest neighbours in the Fermat distance.

        The form sklearn's ``DBSCAN``, ``HDBSCAN`` and ``TSNE`` accept with
        ``metric="precomputed"``: row ``i`` holds the ``n_neighbors`` smallest distances
        from point ``i`` to the training points (for ``X=None``, a point is not its own
        neighbour). Only ``O(n * n_neighbors)`` numbers are kept; the rows are computed in
        blocks (``n_jobs``), each from one Dijkstra per source and the calibrated graph
        distances (graph distances with ``relax=False``).

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            Query points; ``None`` means the training points.
        n_neighbors : int, default=None
            Neighbours per row; ``None`` uses ``n_neighbors`` of the estimator.
        mode : {"distance", "connectivity"}, default="distance"
            Distances, or ones, as the stored values.

        Returns
        -------
        scipy.sparse.csr_matrix of shape (n_queries, n_samples_fit)
            Rows sorted by distance; explicit zeros are kept (duplicate points). Like any
            k-nearest-neighbour graph it is not symmetric; ``HDBSCAN`` asks for a symmetric
            matrix: pass ``K.maximum(K.T)``.
        """
        check_is_fitted(self)
        if mode not in ("distance", "connectivity"):
            raise ValueError(f"mode must be 'distance' or 'connectivity'; got {mode!r}.")
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        n_fit = self.X_fit_.shape[0]
        check_integer(k, "n_neighbors")
        limit = n_fit - 1 if X is None else n_fit
        if k > limit:
            raise ValueError(
                f"n_neighbors={k} is larger than the {limit} training points available."
            )
        train = Anchors.training(self.X_fit_, self._radius)
        if X is None:
            mode_ = "graph" if self._mode(0) == "graph" or self.calibration_ is None else ""
            _, blocks = query_distances(
                self.graph_,
                train,
                train,
                edges=self._edges,
                symmetric=True,
                correction=None if mode_ == "graph" else self.calibration_,
                n_nearest=k,
                n_jobs=self.n_jobs,
            )
            indices = np.empty((n_fit, k), dtype=np.int64)
            data = np.empty((n_fit, k))
            for b in blocks:
                indices[b.rows], data[b.rows] = b.nearest, b.distances
        else:
            Q = self._anchors(X)
            step = max(1, MAX_TEMP_ELEMENTS // max(1, n_fit))
            indices, data = [], []
            for lo in range(0, len(Q), step):
                rows = np.arange(lo, min(lo + step, len(Q)))
                Dq = self._distances(Q.take(rows), train, symmetric=False)
                idx = _nearest_columns(Dq, None, k)
                indices.append(idx)
                data.append(np.take_along_axis(Dq, idx, axis=1))
            indices, data = np.concatenate(indices), np.concatenate(data)
        m = indices.shape[0]
        if mode == "connectivity":
            data = np.ones_like(data)
        indptr = np.arange(0, m * k + 1, k)
        return csr_matrix((data.ravel(), indices.ravel(), indptr), shape=(m, n_fit))

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
        X = validate_data(self, X, dtype=np.float64, reset=False)
        train = Anchors.training(self.X_fit_, self._radius)
        if X.shape == self.X_fit_.shape and np.array_equal(X, self.X_fit_):
            return self._distances(train, train, symmetric=True)  # = fit_transform
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
        G, pred = dijkstra(
            self.graph_, directed=False, indices=Qa.nodes[0], return_predecessors=True
        )
        total = Qa.lengths[0][:, None] + G[:, Qb.nodes[0]] + Qb.lengths[0][None, :]
        j, ll = np.unravel_index(np.argmin(total), total.shape)
        graph_len = float(total[j, ll])
        middle = _walk_paths(pred, np.array([j]), Qa.nodes[0][[j]], Qb.nodes[0][[ll]])
        if np.array_equal(a, b):
            graph_len, middle = 0.0, np.zeros((1, 0), dtype=np.int64)
        elif np.linalg.norm(a - b) <= max(Qa.radius[0], Qb.radius[0]):  # as in pairwise
            direct = float(
                np.exp(_segment_log_lengths(a, b, self._log_weight, self.n_quadrature))[0]
            )
            if direct <= graph_len:
                graph_len, middle = direct, np.zeros((1, 0), dtype=np.int64)
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

    def __getstate__(self) -> dict:
        """Pickle with every torch module on the CPU (no CUDA tensor leaves the process)."""
        return modules_to_cpu(super().__getstate__())

    @property
    def _n_features_out(self) -> int:
        """One output column per training point (for ``get_feature_names_out``)."""
        return self.X_fit_.shape[0]

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags
