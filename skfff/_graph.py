"""Neighbour graphs whose edges integrate a density-based metric, and their shortest paths.

The length of a segment from ``a`` to ``b`` under the conformal metric ``p(x)^(-beta) |dx|`` is

    ``|b - a| * integral_0^1 p(a + t (b - a))^(-beta) dt``,

evaluated here with Gauss-Legendre quadrature in log space (``logsumexp`` of
``-beta log p`` at the nodes), all segments at once in batches of points. A k-nearest-neighbour
graph with these weights approximates the metric; :func:`scipy.sparse.csgraph.dijkstra` run
from blocks of sources (in parallel with joblib) gives graph geodesic distances and paths.

Query points (training points or new points) reach the graph through *anchors*: a training
point is its own anchor at length zero; a new point is joined to its ``k`` nearest training
points by straight segments. Everything here is NumPy/SciPy; nothing knows about sklearn's
estimator API.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.special import logsumexp
from sklearn.neighbors import NearestNeighbors

__all__ = [
    "Anchors",
    "LogWeight",
    "bridge_components",
    "knn_graph",
    "query_distances",
    "segment_log_lengths",
]

LogDensity = Callable[[np.ndarray], np.ndarray]

_MAX_LOG = 700.0  # exp(700) is still a finite float64


@dataclass
class LogWeight:
    """Log of the metric's conformal factor, ``-beta * log p(x)``, capped to stay finite.

    Parameters
    ----------
    log_density : callable
        ``log_density(X) -> log p(X)`` for an ``(n, D)`` array; may return ``-inf`` where the
        density vanishes (NaN is treated the same way, with a warning).
    beta : float
        Exponent of the metric ``p^(-beta)``.
    cap : float
        Largest allowed value of ``-beta log p``. Points of zero (or tiny) density get this
        value, so every path has a finite length.
    batch_size : int
        Points per call of ``log_density``.
    """

    log_density: LogDensity
    beta: float
    cap: float = _MAX_LOG
    batch_size: int = 65536

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Return ``min(-beta log p(X), cap)`` for the rows of ``X``."""
        out = np.empty(X.shape[0], dtype=np.float64)
        for start in range(0, X.shape[0], self.batch_size):
            stop = start + self.batch_size
            out[start:stop] = np.asarray(self.log_density(X[start:stop]), dtype=np.float64)
        if np.isnan(out).any():
            warnings.warn(
                f"The density returned NaN at {np.isnan(out).sum()} points along the paths; "
                "they are treated as zero density (the capped metric).",
                RuntimeWarning,
                stacklevel=2,
            )
            out[np.isnan(out)] = -np.inf
        if self.beta == 0:
            return np.zeros_like(out)
        out = -self.beta * out
        return np.minimum(out, min(self.cap, _MAX_LOG))


def _gauss_legendre01(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1] (weights sum to 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1.0) / 2.0, weights / 2.0


def segment_log_lengths(
    A: np.ndarray, B: np.ndarray, log_weight: LogWeight, n_quadrature: int = 3
) -> np.ndarray:
    """Log metric length of the straight segments from the rows of ``A`` to those of ``B``.

    Parameters
    ----------
    A, B : ndarray of shape (m, D)
        Segment end points.
    log_weight : LogWeight
        The capped ``-beta log p``.
    n_quadrature : int
        Gauss-Legendre nodes per segment.

    Returns
    -------
    ndarray of shape (m,)
        ``log(|b - a| * mean_s p(x_s)^(-beta))``; ``-inf`` for zero-length segments.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    m, D = A.shape
    if m == 0:
        return np.empty(0)
    t, w = _gauss_legendre01(n_quadrature)
    diff = B - A
    points = A[:, None, :] + t[None, :, None] * diff[:, None, :]  # (m, S, D)
    lw = log_weight(points.reshape(-1, D)).reshape(m, n_quadrature)
    with np.errstate(divide="ignore"):
        log_norm = np.log(np.linalg.norm(diff, axis=1))
    return log_norm + logsumexp(lw + np.log(w)[None, :], axis=1)


def knn_graph(
    X: np.ndarray,
    nn: NearestNeighbors,
    n_neighbors: int,
    log_weight: LogWeight,
    n_quadrature: int = 3,
) -> csr_matrix:
    """Symmetric k-nearest-neighbour graph with metric edge lengths (upper triangle stored).

    Parameters
    ----------
    X : ndarray of shape (n, D)
        The training points (nodes).
    nn : NearestNeighbors
        Fitted on ``X``.
    n_neighbors : int
        Neighbours per node; the graph is the union of both directions.
    log_weight : LogWeight
        The capped ``-beta log p``.
    n_quadrature : int
        Gauss-Legendre nodes per edge.

    Returns
    -------
    csr_matrix of shape (n, n)
        Edge ``(i, j)``, ``i < j``, holds the metric length; use ``directed=False``.
    """
    n = X.shape[0]
    k = min(n_neighbors, n - 1)
    idx = nn.kneighbors(n_neighbors=k, return_distance=False)  # excludes the point itself
    rows = np.repeat(np.arange(n), k)
    cols = idx.ravel()
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    keys = np.unique(lo.astype(np.int64) * n + hi)
    lo, hi = keys // n, keys % n
    weights = np.exp(segment_log_lengths(X[lo], X[hi], log_weight, n_quadrature))
    # csgraph drops explicit zeros (duplicate points): keep them as tiny positive lengths
    weights = np.maximum(weights, np.finfo(np.float64).tiny)
    return coo_matrix((weights, (lo, hi)), shape=(n, n)).tocsr()


def bridge_components(
    graph: csr_matrix, X: np.ndarray, log_weight: LogWeight, n_quadrature: int = 3
) -> tuple[csr_matrix, int, np.ndarray]:
    """Join the graph's connected components so that every distance is finite.

    Every pair of components gets one extra edge: the straight segment between their closest
    pair of points (Euclidean), weighted like any other edge. A low-density gap thus costs its
    integral of ``p^(-beta)`` (capped), so points in different components end up far apart
    but at a finite distance, and the triangle inequality still holds.

    Returns
    -------
    graph : csr_matrix
        The graph with the bridges added.
    n_components : int
        Number of components before bridging.
    labels : ndarray of shape (n,)
        Component of each node before bridging.
    """
    n_components, labels = connected_components(graph, directed=False)
    if n_components == 1:
        return graph, 1, labels
    lo, hi = [], []
    for c in range(n_components - 1):
        inside = labels == c
        outside = np.flatnonzero(labels > c)
        members = np.flatnonzero(inside)
        dist, nearest = NearestNeighbors(n_neighbors=1).fit(X[members]).kneighbors(X[outside])
        dist, nearest = dist[:, 0], members[nearest[:, 0]]
        for c2 in range(c + 1, n_components):
            sel = np.flatnonzero(labels[outside] == c2)
            best = sel[np.argmin(dist[sel])]
            a, b = nearest[best], outside[best]
            lo.append(min(a, b))
            hi.append(max(a, b))
    lo, hi = np.asarray(lo), np.asarray(hi)
    weights = np.exp(segment_log_lengths(X[lo], X[hi], log_weight, n_quadrature))
    weights = np.maximum(weights, np.finfo(np.float64).tiny)
    bridges = coo_matrix((weights, (lo, hi)), shape=graph.shape).tocsr()
    return graph.maximum(bridges).tocsr(), n_components, labels


@dataclass
class Anchors:
    """How query points reach the graph.

    ``nodes[i, j]`` is the ``j``-th anchor (a training node) of query ``i`` and
    ``lengths[i, j]`` the metric length of the straight segment from the query to it.
    ``radius[i]`` is how far the query's own graph edges reach (its ``k``-th neighbour),
    ``points`` the query coordinates and ``is_train`` whether the queries are the training
    nodes themselves (then ``nodes[:, 0]`` is the identity and ``lengths`` is 0).
    """

    nodes: np.ndarray
    lengths: np.ndarray
    radius: np.ndarray
    points: np.ndarray
    is_train: bool = False

    def __len__(self) -> int:
        return self.nodes.shape[0]

    def take(self, rows: np.ndarray | slice) -> Anchors:
        """Anchors of a subset of the queries."""
        return Anchors(
            self.nodes[rows],
            self.lengths[rows],
            self.radius[rows],
            self.points[rows],
            self.is_train,
        )

    @classmethod
    def training(cls, X: np.ndarray, radius: np.ndarray) -> Anchors:
        """Anchors of the training points: each is its own node at length 0.

        ``radius`` holds each node's distance to its ``k``-th neighbour (its graph edges reach
        that far).
        """
        n = X.shape[0]
        return cls(np.arange(n)[:, None], np.zeros((n, 1)), radius, X, True)

    @classmethod
    def new(
        cls,
        Xq: np.ndarray,
        X: np.ndarray,
        nn: NearestNeighbors,
        n_neighbors: int,
        log_weight: LogWeight,
        n_quadrature: int = 3,
    ) -> Anchors:
        """Join new points to their ``n_neighbors`` nearest training points.

        The radius is the distance to the ``k``-th nearest training point other than an
        identical one, so a new point equal to a training point behaves exactly like it.
        """
        n = X.shape[0]
        k = min(n_neighbors, n - 1)
        dist, nodes = nn.kneighbors(Xq, n_neighbors=k + 1)
        radius = np.where(dist[:, 0] == 0.0, dist[:, k], dist[:, k - 1])
        nodes = nodes[:, :k]
        m = Xq.shape[0]
        A = np.repeat(Xq, k, axis=0)
        lengths = np.exp(segment_log_lengths(A, X[nodes.ravel()], log_weight, n_quadrature))
        return cls(nodes, lengths.reshape(m, k), radius, Xq, False)


def _walk_paths(
    pred: np.ndarray, rows: np.ndarray, sources: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """Node sequences of graph paths, all pairs at once (one step per hop, vectorised).

    Returns an int array ``(n_pairs, max_nodes)`` holding each path from its source to its
    target, padded at the end by repeating the target.
    """
    steps = [targets.copy()]
    cur = targets.copy()
    active = cur != sources
    while active.any():
        nxt = cur.copy()
        nxt[active] = pred[rows[active], cur[active]]
        if (nxt[active] < 0).any():  # pragma: no cover - graphs are bridged, always connected
            raise RuntimeError("graph path extraction reached an unreachable node")
        cur = nxt
        steps.append(cur.copy())
        active = cur != sources
    paths = np.stack(steps[::-1], axis=1)  # ends with targets, starts with sources (padded)
    # Paths of fewer hops start with repeated sources: move the padding to the end.
    n_nodes = 1 + np.sum(np.diff(paths, axis=1) != 0, axis=1)
    n_nodes = np.maximum(n_nodes, 1)
    width = paths.shape[1]
    shift = width - n_nodes
    col = (np.arange(width)[None, :] + shift[:, None]).clip(max=width - 1)
    return np.take_along_axis(paths, col, axis=1).astype(np.int32)


@dataclass
class BlockResult:
    """Distances of one row block, and the graph paths of the pairs chosen for relaxation."""

    rows: np.ndarray
    distances: np.ndarray
    pair_rows: np.ndarray
    pair_cols: np.ndarray
    paths: np.ndarray


def _block_distances(
    graph: csr_matrix,
    q1: Anchors,
    rows: np.ndarray,
    Q2: Anchors,
    log_weight: LogWeight,
    n_quadrature: int,
    symmetric: bool,
    return_paths: bool,
) -> BlockResult:
    """Distances from the queries ``q1`` (rows ``rows`` of the output) to all of ``Q2``."""
    unique, inverse = np.unique(q1.nodes, return_inverse=True)
    inverse = inverse.reshape(q1.nodes.shape)
    if return_paths:
        G, pred = dijkstra(graph, directed=False, indices=unique, return_predecessors=True)
    else:
        G = dijkstra(graph, directed=False, indices=unique)
    # T[i, t]: best distance from query i to training node t through one of its anchors.
    T = q1.lengths[:, :1] + G[inverse[:, 0]]
    arg_j = np.zeros(T.shape, dtype=np.int32)
    for j in range(1, q1.nodes.shape[1]):
        cand = q1.lengths[:, j : j + 1] + G[inverse[:, j]]
        better = cand < T
        T[better] = cand[better]
        arg_j[better] = j
    del G
    if Q2.is_train:
        D = T
        arg_l = np.zeros(T.shape, dtype=np.int32)
    else:
        D = T[:, Q2.nodes[:, 0]] + Q2.lengths[None, :, 0]
        arg_l = np.zeros(D.shape, dtype=np.int32)
        for ll in range(1, Q2.nodes.shape[1]):
            cand = T[:, Q2.nodes[:, ll]] + Q2.lengths[None, :, ll]
            better = cand < D
            D[better] = cand[better]
            arg_l[better] = ll
    # Direct segments wherever the graph would hold an edge if the new points were nodes
    # (either end's k-th neighbour radius reaches the other): the new points join the graph
    # the way training points do, without becoming waypoints of other paths.
    direct = np.zeros(D.shape, dtype=bool)
    if not (q1.is_train and Q2.is_train):
        eucl = np.linalg.norm(q1.points[:, None, :] - Q2.points[None, :, :], axis=-1)
        near = eucl <= np.maximum(q1.radius[:, None], Q2.radius[None, :])
        i, c = np.nonzero(near)
        if i.size:
            seg = np.exp(segment_log_lengths(q1.points[i], Q2.points[c], log_weight, n_quadrature))
            shorter = seg < D[i, c]
            D[i[shorter], c[shorter]] = seg[shorter]
            direct[i[shorter], c[shorter]] = True
        D[eucl == 0] = 0.0
        direct[eucl == 0] = True
    if symmetric:
        D[np.arange(len(rows)), rows] = 0.0
        direct[np.arange(len(rows)), rows] = True

    empty = np.empty(0, dtype=np.int64)
    if not return_paths:
        return BlockResult(rows, D, empty, empty, np.empty((0, 0), dtype=np.int64))
    keep = ~direct
    if symmetric:
        keep &= np.arange(D.shape[1])[None, :] > rows[:, None]
    pi, pc = np.nonzero(keep)
    targets = Q2.nodes[pc, arg_l[pi, pc]]
    src_slot = arg_j[pi, targets]
    sources = q1.nodes[pi, src_slot]
    paths = _walk_paths(pred, inverse[pi, src_slot], sources, targets)
    return BlockResult(rows, D, rows[pi], pc, paths)


def query_distances(
    graph: csr_matrix,
    Q1: Anchors,
    Q2: Anchors,
    log_weight: LogWeight,
    *,
    n_quadrature: int = 3,
    symmetric: bool = False,
    return_paths: bool = False,
    n_jobs: int | None = None,
    max_block_entries: int = 1 << 24,
) -> tuple[np.ndarray, list[BlockResult]]:
    """Graph distances between two sets of queries, in row blocks run in parallel.

    Parameters
    ----------
    graph : csr_matrix
        The (bridged) training graph.
    Q1, Q2 : Anchors
        Row and column queries.
    log_weight : LogWeight
        For direct segments between nearby new points.
    n_quadrature : int
        Quadrature nodes per segment.
    symmetric : bool
        ``Q1`` and ``Q2`` are the same set: zero diagonal, exactly symmetric output, and
        paths returned for the upper triangle only.
    return_paths : bool
        Also return, per block, the graph paths (training node sequences) of the pairs that
        are neither identical nor joined directly.
    n_jobs : int or None
        joblib workers over row blocks.
    max_block_entries : int
        Rough cap on the size of one block's Dijkstra output (rows times nodes).

    Returns
    -------
    distances : ndarray of shape (len(Q1), len(Q2))
    blocks : list of BlockResult
        Only filled with paths when ``return_paths``.
    """
    n_train = graph.shape[0]
    k = Q1.nodes.shape[1]
    rows_per_block = int(max(1, min(len(Q1), max_block_entries // max(1, n_train * k))))
    n_blocks = -(-len(Q1) // rows_per_block)
    n_workers = effective_n_jobs(n_jobs)
    if n_workers > 1:  # enough blocks to keep every worker busy
        n_blocks = max(n_blocks, min(len(Q1), 4 * n_workers))
    blocks = np.array_split(np.arange(len(Q1)), n_blocks)
    # A generator: each block is copied into the matrix as it arrives, so at most a few
    # blocks live beside the full matrix.
    results = Parallel(n_jobs=n_jobs, return_as="generator")(
        delayed(_block_distances)(
            graph, Q1.take(rows), rows, Q2, log_weight, n_quadrature, symmetric, return_paths
        )
        for rows in blocks
    )
    D = np.empty((len(Q1), len(Q2)), dtype=np.float64)
    kept = []
    for res in results:
        D[res.rows] = res.distances
        res.distances = np.empty((0, 0))
        kept.append(res)
    if symmetric:
        _symmetrise(D)
    return D, kept


def _symmetrise(D: np.ndarray, tile: int = 2048) -> None:
    """``D <- min(D, D.T)`` in place, tile by tile (no full-size temporary), zero diagonal."""
    n = D.shape[0]
    for i in range(0, n, tile):
        for j in range(i, n, tile):
            upper = D[i : i + tile, j : j + tile]
            lower = D[j : j + tile, i : i + tile]
            m = np.minimum(upper, lower.T)
            upper[...] = m
            lower[...] = m.T
    np.fill_diagonal(D, 0.0)
