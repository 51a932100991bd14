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

Row blocks need no density model: they take the graph, the Euclidean edge lengths
(:class:`EdgeTable`) and the anchors, so they can run on any joblib backend (Dask included)
without shipping a torch model. Per block they can also return, for every distance, the
Euclidean length of its graph path (pointer jumping over Dijkstra's predecessor tree), which
the calibration uses, or only each row's nearest few (cut-short Dijkstra runs). No
temporary holds more than ``MAX_TEMP_ELEMENTS`` entries, whatever ``n`` or ``D``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, dijkstra, reverse_cuthill_mckee
from scipy.special import logsumexp
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.neighbors import NearestNeighbors

__all__ = [
    "MAX_TEMP_ELEMENTS",
    "Anchors",
    "EdgeTable",
    "LogWeight",
    "bridge_components",
    "knn_graph",
    "query_distances",
    "segment_log_lengths",
    "symmetrise",
]

LogDensity = Callable[[np.ndarray], np.ndarray]

_MAX_LOG = 700.0  # exp(700) is still a finite float64

#: Largest number of float64 entries in one temporary array (32 MiB): every ``n x D`` or
#: ``rows x n`` intermediate is built in chunks of at most this many entries.
MAX_TEMP_ELEMENTS = 1 << 22

#: Sources per cut-short Dijkstra block (``kneighbors_graph``): each block allocates
#: ``rows x |nodes within reach of the block|``, so small blocks of sources that reach
#: the same nodes are cheapest.
NEAREST_BLOCK = 32


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
        Largest number of points per call of ``log_density`` (fewer in high dimension, so
        that one batch holds at most ``MAX_TEMP_ELEMENTS`` coordinates).
    """

    log_density: LogDensity
    beta: float
    cap: float = _MAX_LOG
    batch_size: int = 65536

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Return ``min(-beta log p(X), cap)`` for the rows of ``X``."""
        out = np.empty(X.shape[0], dtype=np.float64)
        batch = max(1, min(self.batch_size, MAX_TEMP_ELEMENTS // max(1, X.shape[1])))
        for start in range(0, X.shape[0], batch):
            stop = start + batch
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
    m, D = np.shape(A)
    out = np.empty(m)
    t, w = _gauss_legendre01(n_quadrature)
    step = max(1, MAX_TEMP_ELEMENTS // max(1, D * n_quadrature))
    for s in range(0, m, step):
        a = np.asarray(A[s : s + step], dtype=np.float64)
        diff = np.asarray(B[s : s + step], dtype=np.float64) - a
        points = a[:, None, :] + t[None, :, None] * diff[:, None, :]  # (chunk, S, D)
        lw = log_weight(points.reshape(-1, D)).reshape(len(a), n_quadrature)
        with np.errstate(divide="ignore"):
            log_norm = np.log(np.linalg.norm(diff, axis=1))
        out[s : s + step] = log_norm + logsumexp(lw + np.log(w)[None, :], axis=1)
    return out


def _segments_by_index(
    X: np.ndarray, lo: np.ndarray, hi: np.ndarray, log_weight: LogWeight, n_quadrature: int
) -> np.ndarray:
    """:func:`segment_log_lengths` of ``X[lo] -> X[hi]``, gathering rows chunk by chunk."""
    out = np.empty(len(lo))
    step = max(1, MAX_TEMP_ELEMENTS // max(1, X.shape[1] * n_quadrature))
    for s in range(0, len(lo), step):
        out[s : s + step] = segment_log_lengths(
            X[lo[s : s + step]], X[hi[s : s + step]], log_weight, n_quadrature
        )
    return out


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
    weights = np.exp(_segments_by_index(X, lo, hi, log_weight, n_quadrature))
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
    weights = np.exp(_segments_by_index(X, lo, hi, log_weight, n_quadrature))
    weights = np.maximum(weights, np.finfo(np.float64).tiny)
    bridges = coo_matrix((weights, (lo, hi)), shape=graph.shape).tocsr()
    return graph.maximum(bridges).tocsr(), n_components, labels


def _undirected(graph: csr_matrix) -> csr_matrix:
    """The graph as ``dijkstra(directed=False)`` walks it: each edge both ways, at the
    smaller of its two weights where both directions are stored."""
    c = graph.tocoo()
    r = np.concatenate([c.row, c.col])
    q = np.concatenate([c.col, c.row])
    w = np.concatenate([c.data, c.data])
    order = np.lexsort((w, q, r))
    r, q, w = r[order], q[order], w[order]
    first = np.ones(len(r), dtype=bool)
    first[1:] = (r[1:] != r[:-1]) | (q[1:] != q[:-1])
    return csr_matrix((w[first], (r[first], q[first])), shape=graph.shape)


@dataclass
class EdgeTable:
    """Euclidean lengths of the graph's edges, looked up by ``(node, neighbour)`` pairs.

    Built once from the (bridged) graph: both directions of every edge, once each, sorted by
    the key ``node * n + neighbour`` so that a batch of pairs is found with one
    ``searchsorted``.
    """

    keys: np.ndarray
    lengths: np.ndarray
    n: int

    @classmethod
    def from_graph(cls, graph: csr_matrix, X: np.ndarray) -> EdgeTable:
        """Table of the undirected edges of ``graph`` between the rows of ``X``."""
        coo = _undirected(graph).tocoo()
        rows, cols = coo.row.astype(np.int64), coo.col.astype(np.int64)
        n = graph.shape[0]
        keys = rows * n + cols
        order = np.argsort(keys, kind="stable")
        keys, rows, cols = keys[order], rows[order], cols[order]
        return cls(keys, row_norms_between(X, rows, cols), n)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Euclidean length of the edges ``(a, b)`` (0 where ``a == b``)."""
        key = a.astype(np.int64) * self.n + b
        pos = np.searchsorted(self.keys, key).clip(max=self.keys.size - 1)
        out = self.lengths[pos]
        return np.where(a == b, 0.0, out)


def row_norms_between(
    X: np.ndarray, rows: np.ndarray, cols: np.ndarray, max_elements: int = MAX_TEMP_ELEMENTS
) -> np.ndarray:
    """``|X[rows[i]] - X[cols[i]]|`` for every ``i``, in chunks of bounded size."""
    out = np.empty(len(rows))
    step = max(1, max_elements // max(1, X.shape[1]))
    for s in range(0, len(rows), step):
        out[s : s + step] = np.linalg.norm(X[rows[s : s + step]] - X[cols[s : s + step]], axis=1)
    return out


def _tree_euclid(
    pred: np.ndarray, sources: np.ndarray, edges: EdgeTable, nodes: np.ndarray | None = None
) -> np.ndarray:
    """Euclidean length of the shortest-path-tree path from each source to every node.

    Pointer jumping over the predecessor matrix: ``log2(depth)`` vectorised passes.
    ``nodes`` restricts the columns to a subset of nodes closed under predecessors
    (``pred`` then holds positions in ``nodes``, ``-1`` for none).
    """
    m, n = pred.shape
    cols = np.broadcast_to(np.arange(n, dtype=np.int64), (m, n))
    anc = pred.astype(np.int64)
    unreachable = anc < 0
    anc[unreachable] = cols[unreachable]  # sources (and unreachable nodes) point to themselves
    ids = np.arange(n) if nodes is None else nodes
    acc = edges(ids[cols.ravel()], ids[anc.ravel()]).reshape(m, n)
    while True:
        nxt = np.take_along_axis(anc, anc, axis=1)
        if np.array_equal(nxt, anc):
            break
        acc += np.take_along_axis(acc, anc, axis=1)
        anc = nxt
    return acc


@dataclass
class Anchors:
    """How query points reach the graph.

    ``nodes[i, j]`` is the ``j``-th anchor (a training node) of query ``i``, ``lengths[i, j]``
    the metric length and ``euclid[i, j]`` the Euclidean length of the straight segment from
    the query to it. ``radius[i]`` is how far the query's own graph edges reach (its ``k``-th
    neighbour), ``points`` the query coordinates and ``is_train`` whether the queries are the
    training nodes themselves (then ``nodes[:, 0]`` is the identity and the lengths are 0).
    """

    nodes: np.ndarray
    lengths: np.ndarray
    euclid: np.ndarray
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
            self.euclid[rows],
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
        zeros = np.zeros((n, 1))
        return cls(np.arange(n)[:, None], zeros, zeros, radius, X, True)

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
        nodes, dist = nodes[:, :k], dist[:, :k]
        m = Xq.shape[0]
        rows = np.repeat(np.arange(m), k)
        lengths = np.empty(m * k)
        step = max(1, MAX_TEMP_ELEMENTS // max(1, Xq.shape[1] * n_quadrature))
        for s in range(0, m * k, step):
            r = rows[s : s + step]
            lengths[s : s + step] = np.exp(
                segment_log_lengths(Xq[r], X[nodes.ravel()[s : s + step]], log_weight, n_quadrature)
            )
        return cls(nodes, lengths.reshape(m, k), dist, radius, Xq, False)


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
    """One row block: distances (dense rows or the nearest few), direct-segment candidates,
    and the graph paths of the pairs chosen for relaxation."""

    rows: np.ndarray
    distances: np.ndarray
    near_rows: np.ndarray
    near_cols: np.ndarray
    pair_rows: np.ndarray
    pair_cols: np.ndarray
    paths: np.ndarray
    nearest: np.ndarray | None = None


def _near_pairs(q1: Anchors, Q2: Anchors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs close enough for a direct segment (either end's radius reaches the other).

    Returns block rows, columns and exact Euclidean distances; candidates come from the
    Gram-matrix distances (no ``rows x cols x D`` temporary), confirmed exactly.
    """
    chord = euclidean_distances(q1.points, Q2.points)
    reach = np.maximum(q1.radius[:, None], Q2.radius[None, :])
    i, c = np.nonzero(chord <= reach * (1 + 1e-6) + 1e-9)
    exact = np.empty(len(i))
    step = max(1, MAX_TEMP_ELEMENTS // max(1, q1.points.shape[1]))
    for s in range(0, len(i), step):
        exact[s : s + step] = np.linalg.norm(
            q1.points[i[s : s + step]] - Q2.points[c[s : s + step]], axis=1
        )
    keep = exact <= np.maximum(q1.radius[i], Q2.radius[c])
    return i[keep], c[keep], exact[keep]


def _block_distances(
    graph: csr_matrix,
    edges: EdgeTable | None,
    q1: Anchors,
    rows: np.ndarray,
    Q2: Anchors,
    symmetric: bool,
    return_paths: bool,
    correction: Callable[[np.ndarray], np.ndarray] | None,
    n_nearest: int | None,
) -> BlockResult:
    """Distances from the queries ``q1`` (rows ``rows`` of the output) to all of ``Q2``.

    Needs no density: direct segments between new points are returned as candidates
    (``near_rows``, ``near_cols``) for the caller to measure. With ``correction``, each
    distance is multiplied by ``correction(chord / euclidean length of its graph path)``.
    """
    m = len(rows)
    if n_nearest is not None and q1.is_train and Q2.is_train:
        return _block_nearest_training(graph, edges, q1, rows, Q2, correction, n_nearest)
    unique, inverse = np.unique(q1.nodes, return_inverse=True)
    inverse = inverse.reshape(q1.nodes.shape)
    if return_paths or correction is not None:
        G, pred = dijkstra(graph, directed=False, indices=unique, return_predecessors=True)
    else:
        G, pred = dijkstra(graph, directed=False, indices=unique), None
    # T[i, t]: best distance from query i to training node t through one of its anchors.
    T = q1.lengths[:, :1] + G[inverse[:, 0]]
    arg_j = np.zeros(T.shape, dtype=np.int32)
    for j in range(1, q1.nodes.shape[1]):
        cand = q1.lengths[:, j : j + 1] + G[inverse[:, j]]
        better = cand < T
        T[better] = cand[better]
        arg_j[better] = j
    del G
    ET = None
    if correction is not None:
        tree = _tree_euclid(pred, unique, edges)
        r = np.arange(m)[:, None]
        ET = tree[inverse[r, arg_j], np.arange(T.shape[1])[None, :]] + q1.euclid[r, arg_j]
        del tree
    if Q2.is_train:
        D, E = T, ET
        arg_l = np.zeros(T.shape, dtype=np.int32)
    else:
        D = T[:, Q2.nodes[:, 0]] + Q2.lengths[None, :, 0]
        arg_l = np.zeros(D.shape, dtype=np.int32)
        for ll in range(1, Q2.nodes.shape[1]):
            cand = T[:, Q2.nodes[:, ll]] + Q2.lengths[None, :, ll]
            better = cand < D
            D[better] = cand[better]
            arg_l[better] = ll
        if ET is not None:
            cols = np.arange(len(Q2))[None, :]
            E = ET[np.arange(m)[:, None], Q2.nodes[cols, arg_l]] + Q2.euclid[cols, arg_l]
    del T, ET
    if correction is not None:
        chord = euclidean_distances(q1.points, Q2.points)
        with np.errstate(divide="ignore", invalid="ignore"):
            straight = np.where(E > 0, np.minimum(chord / E, 1.0), 1.0)
        del chord, E
        D *= correction(straight.ravel()).reshape(D.shape)
        del straight
    empty = np.empty(0, dtype=np.int64)
    near_i, near_c = empty, empty
    direct = np.zeros(D.shape, dtype=bool)
    if not (q1.is_train and Q2.is_train):
        # Direct segments wherever the graph would hold an edge if the new points were
        # nodes: measured by the caller; identical points are at distance 0 here.
        near_i, near_c, exact = _near_pairs(q1, Q2)
        direct[near_i, near_c] = True
        same = exact == 0.0
        D[near_i[same], near_c[same]] = 0.0
        near_i, near_c = near_i[~same], near_c[~same]
    if symmetric:
        D[np.arange(m), rows] = 0.0
        direct[np.arange(m), rows] = True

    nearest = None
    if n_nearest is not None:
        nearest = _nearest_columns(D, rows if symmetric else None, n_nearest)
    pi = pc = empty
    paths = np.empty((0, 0), dtype=np.int64)
    if return_paths:
        keep = ~direct
        if symmetric:
            keep &= np.arange(D.shape[1])[None, :] > rows[:, None]
        pi, pc = np.nonzero(keep)
        targets = Q2.nodes[pc, arg_l[pi, pc]]
        src_slot = arg_j[pi, targets]
        sources = q1.nodes[pi, src_slot]
        paths = _walk_paths(pred, inverse[pi, src_slot], sources, targets)
        pi = rows[pi]
    if nearest is not None:
        D = np.take_along_axis(D, nearest, axis=1)
    return BlockResult(rows, D, rows[near_i], near_c, pi, pc, paths, nearest)


def _kth_edge(und: csr_matrix, k: int) -> np.ndarray:
    """Each node's ``k``-th shortest edge of the undirected graph (``inf`` below ``k``
    edges): an upper bound on its ``k``-th nearest graph distance."""
    n = und.shape[0]
    out = np.full(n, np.inf)
    deg = np.diff(und.indptr)
    row = np.repeat(np.arange(n), deg)
    ordered = und.data[np.lexsort((und.data, row))]  # each row's weights, ascending
    has = deg >= k
    out[has] = ordered[und.indptr[:-1][has] + k - 1]
    return out


def _block_nearest_training(
    graph: csr_matrix,
    edges: EdgeTable | None,
    q1: Anchors,
    rows: np.ndarray,
    Q2: Anchors,
    correction: Callable[[np.ndarray], np.ndarray] | None,
    k: int,
    bound: np.ndarray | None = None,
) -> BlockResult:
    """The ``k`` nearest training points of training points, by Dijkstra runs cut short.

    Each source explores the graph only up to a distance ``limit``, so the cost per source
    is local. With a correction whose smallest factor is ``r``, a node beyond ``limit`` is
    at least ``r * limit`` away, so the ``k`` nearest found inside are exact once the
    ``k``-th is below ``r * limit``; where it is not, the search is repeated with a limit
    just large enough. The first limit comes from ``bound`` (each source's ``k``-th
    shortest edge, which is no shorter than its ``k``-th nearest distance) when every source
    of the block has one, else from the median edge. The searches run on the subgraph of
    nodes within ``limit`` of some source of the block (one multi-source Dijkstra finds
    it): distances up to ``limit`` are the same there, and the per-source arrays are
    ``rows x |subgraph|`` rather than ``rows x n``.
    """
    n = graph.shape[0]
    floor = 1.0 if correction is None else float(np.min(correction(np.linspace(0, 1, 101))))
    at_one = 1.0 if correction is None else float(correction(np.ones(1))[0])
    m = len(rows)
    if bound is not None and np.isfinite(bound).all():
        limit = float(np.max(bound)) * at_one / floor * (1 + 1e-9)
    else:
        limit = 4.0 * float(np.median(graph.data)) * max(1.0, np.sqrt(k))
    nearest = np.empty((m, k), dtype=np.int64)
    values = np.empty((m, k))
    todo = np.arange(m)
    while todo.size:
        ball = dijkstra(graph, directed=False, indices=rows[todo], min_only=True, limit=limit)
        cols = np.flatnonzero(np.isfinite(ball))
        sub = graph[cols][:, cols]
        src = np.searchsorted(cols, rows[todo])
        G, local = dijkstra(sub, directed=False, indices=src, return_predecessors=True, limit=limit)
        reached = np.isfinite(G).any(axis=0)
        G, local = G[:, reached], local[:, reached]
        pos = np.full(len(cols), -1, dtype=np.int64)
        pos[reached] = np.arange(reached.sum())
        cols = cols[reached]
        src = pos[src]
        if correction is not None:
            local = np.where(local < 0, -1, pos[np.maximum(local, 0)])
            E = _tree_euclid(local, rows[todo], edges, nodes=cols)
            chord = euclidean_distances(q1.points[todo], Q2.points[cols])
            with np.errstate(divide="ignore", invalid="ignore"):
                straight = np.where(E > 0, np.minimum(chord / E, 1.0), 1.0)
            G = G * correction(straight.ravel()).reshape(G.shape)
        # a source whose own search reached every node has nothing left outside its limit
        # (the union of the block's searches reaching every node is not enough)
        complete = (len(cols) == n) & np.isfinite(G).all(axis=1)
        G[np.arange(len(todo)), src] = np.inf  # not itself
        reach = min(k, len(cols) - 1)
        part = _nearest_columns(G, None, reach) if reach > 0 else np.zeros((len(todo), 0), int)
        val = np.take_along_axis(G, part, axis=1)
        settled = (reach == k) & np.isfinite(val).all(axis=1)
        if reach == k:
            settled &= (val[:, -1] <= floor * limit) | complete
        else:
            settled &= complete
        if settled.any():
            nearest[todo[settled]] = cols[part[settled]]
            values[todo[settled]] = val[settled]
        # next limit: twice as far where too few nodes were reached; else just far enough
        # that no node outside can beat the k-th candidate found
        short = reach < k or not np.isfinite(val[~settled, -1]).all() if reach else True
        needed = np.max(val[~settled, -1], initial=0.0) / floor * (1 + 1e-9) if reach else 0.0
        todo = todo[~settled]
        limit = 2.0 * limit if short else max(needed, limit * 1.001)
    empty = np.empty(0, dtype=np.int64)
    return BlockResult(rows, values, empty, empty, empty, empty, np.empty((0, 0)), nearest)


def _nearest_columns(D: np.ndarray, self_cols: np.ndarray | None, k: int) -> np.ndarray:
    """Columns of the ``k`` smallest entries of each row (the row's own column excluded)."""
    if self_cols is not None:
        D = D.copy()
        D[np.arange(D.shape[0]), self_cols] = np.inf
    k = min(k, D.shape[1] - (self_cols is not None))
    part = np.argpartition(D, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(D, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def query_distances(
    graph: csr_matrix,
    Q1: Anchors,
    Q2: Anchors,
    *,
    edges: EdgeTable | None = None,
    symmetric: bool = False,
    return_paths: bool = False,
    correction: Callable[[np.ndarray], np.ndarray] | None = None,
    n_nearest: int | None = None,
    out: np.ndarray | None = None,
    n_jobs: int | None = None,
    max_block_entries: int = MAX_TEMP_ELEMENTS,
) -> tuple[np.ndarray | None, list[BlockResult]]:
    """Graph distances between two sets of queries, in row blocks run in parallel.

    Parameters
    ----------
    graph : csr_matrix
        The (bridged) training graph.
    Q1, Q2 : Anchors
        Row and column queries.
    edges : EdgeTable, optional
        Euclidean edge lengths; needed with ``correction``.
    symmetric : bool
        ``Q1`` and ``Q2`` are the same set: zero diagonal, paths returned for the upper
        triangle only; the dense result is made exactly symmetric.
    return_paths : bool
        Also return, per block, the graph paths (training node sequences) of the pairs that
        are neither identical nor near enough for a direct segment.
    correction : callable, optional
        Factor applied to each graph distance from the straightness of its path.
    n_nearest : int, optional
        Keep only the ``n_nearest`` smallest distances of each row (in
        ``BlockResult.nearest`` and ``distances``); no dense matrix is built.
    out : ndarray of shape (len(Q1), len(Q2)), optional
        Where to write the dense result (an ``np.memmap`` works), block by block.
    n_jobs : int or None
        joblib workers over row blocks (any joblib backend, e.g. Dask). The blocks need
        no density model, so none is shipped to the workers.
    max_block_entries : int
        Rough cap on the size of one block's temporaries (rows times nodes).

    Returns
    -------
    distances : ndarray of shape (len(Q1), len(Q2)) or None
        ``None`` when ``n_nearest`` is given.
    blocks : list of BlockResult
        Direct-segment candidates and, with ``return_paths``, the paths.
    """
    n_train = graph.shape[0]
    k = Q1.nodes.shape[1]
    width = max(n_train * k, len(Q2))
    rows_per_block = int(max(1, min(len(Q1), max_block_entries // max(1, width))))
    n_blocks = -(-len(Q1) // rows_per_block)
    n_workers = effective_n_jobs(n_jobs)
    if n_workers > 1:  # enough blocks to keep every worker busy
        n_blocks = max(n_blocks, min(len(Q1), 4 * n_workers))
    order = np.arange(len(Q1))
    nearest_training = n_nearest is not None and Q1.is_train and Q2.is_train
    if nearest_training:
        # Cut-short searches from nearby sources reach the same few nodes: blocks of
        # graph-neighbouring rows (reverse Cuthill-McKee order) keep their union small.
        und = _undirected(graph)
        rcm = reverse_cuthill_mckee(und, symmetric_mode=True).astype(np.int64)
        bound = _kth_edge(und, n_nearest)
        del und
        # A block searches as far as its farthest-reaching source needs: group sources
        # whose k-th edges are within a factor 2**(1/4) of each other, graph neighbours
        # together inside each group.
        level = np.floor(4 * np.log2(np.where(np.isfinite(bound) & (bound > 0), bound, 1.0)))
        level[~np.isfinite(bound)] = np.inf
        rank = np.empty(len(rcm), dtype=np.int64)
        rank[rcm] = np.arange(len(rcm))
        order = np.lexsort((rank, level))
        n_blocks = max(n_blocks, -(-len(Q1) // NEAREST_BLOCK))
    blocks = np.array_split(order, n_blocks)
    # A generator: each block is copied into the matrix as it arrives, so at most a few
    # blocks live beside the full matrix.
    if nearest_training:
        tasks = (
            delayed(_block_nearest_training)(
                graph, edges, Q1.take(rows), rows, Q2, correction, n_nearest, bound[rows]
            )
            for rows in blocks
        )
    else:
        tasks = (
            delayed(_block_distances)(
                graph, edges, Q1.take(rows), rows, Q2, symmetric, return_paths, correction,
                n_nearest,
            )
            for rows in blocks
        )
    results = Parallel(n_jobs=n_jobs, return_as="generator")(tasks)
    D = None
    if n_nearest is None:
        D = out if out is not None else np.empty((len(Q1), len(Q2)), dtype=np.float64)
        if D.shape != (len(Q1), len(Q2)):
            raise ValueError(f"out has shape {D.shape}; expected {(len(Q1), len(Q2))}.")
    kept = []
    for res in results:
        if D is not None:
            D[res.rows] = res.distances
            res.distances = np.empty((0, 0))
        kept.append(res)
    return D, kept


def symmetrise(D: np.ndarray, tile: int = 2048) -> None:
    """``D <- min(D, D.T)`` in place, tile by tile (no full-size temporary), zero diagonal."""
    n = D.shape[0]
    for i in range(0, n, tile):
        for j in range(i, n, tile):
            upper = D[i : i + tile, j : j + tile]
            lower = D[j : j + tile, i : i + tile]
            m = np.minimum(upper, lower.T)
            upper[...] = m
            lower[...] = m.T
    for i in range(0, n, tile):
        blk = D[i : i + tile, i : i + tile]
        np.fill_diagonal(blk, 0.0)
