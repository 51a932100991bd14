"""
Clustering with density-based (Fermat) distances
================================================

:class:`~skfff.FermatDistance` measures the length of a path by ``integral |dx| p(x)^(-beta)``:
moving through dense regions is cheap, crossing empty space is expensive. Shortest paths
therefore follow the data, and two points in one cluster are close even when the cluster
is long and bent. We learn the density ``p`` of two moons with a
:class:`~skfff.FreeFormFlow`, draw geodesics over it, and cluster with Fermat and with
Euclidean distances.
"""

# %%
# Data and density
# ----------------
# 500 points on two noisy moons. The distance fits the flow, builds a 10-nearest-neighbour
# graph whose edge lengths integrate ``p^(-beta)`` (``beta = 1/D = 1/2`` by default), and
# trains a small score model by denoising score matching to relax graph paths into smooth
# geodesics.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.cluster import DBSCAN, AgglomerativeClustering
from sklearn.datasets import make_moons
from sklearn.metrics import adjusted_rand_score, pairwise_distances

from skfff import FermatDistance, FreeFormFlow

X, y = make_moons(500, noise=0.1, random_state=0)
flow = FreeFormFlow(
    hidden_features=64, beta=100, max_epochs=200, batch_size=128, lr=2e-3, random_state=0
)
fermat = FermatDistance(density=flow, random_state=0).fit(X)

# %%
# Geodesics over the learnt density
# ---------------------------------
# The graph path (dashed) hops between sample points; the relaxed geodesic (solid) is the
# smooth curve the score pulls it to, shorter (under the metric) than the graph path. Paths
# between points of one moon run along the moon; the path from one moon to the other follows
# the data as long as it can before crossing the gap.
grid = np.stack(np.meshgrid(np.linspace(-1.5, 2.5, 160), np.linspace(-0.9, 1.4, 100)), -1)
log_p = fermat.density_.score_samples(grid.reshape(-1, 2)).reshape(grid.shape[:2])
pairs = [
    (X[np.argmin(X[:, 0] * (y == 0))], X[np.argmax(X[:, 0] * (y == 0))]),  # upper moon, end to end
    (X[np.argmin(X[:, 0] + 9 * (y == 0))], X[np.argmax(X[:, 0] - 9 * (y == 0))]),  # lower moon
    (np.array([-0.5, 0.8]), np.array([1.5, -0.3])),  # one moon to the other
]
graph_only = FermatDistance(density=fermat.density_, prefit=True, relax=False).fit(X)
fig, ax = plt.subplots(figsize=(7, 4.2))
ax.contourf(grid[..., 0], grid[..., 1], np.exp(log_p), levels=20, cmap="Greys")
ax.scatter(X[:, 0], X[:, 1], s=3, c="tab:blue", alpha=0.4)
for (a, b), color in zip(pairs, ["tab:red", "tab:orange", "tab:green"], strict=True):
    path, length = fermat.geodesic(a, b, return_length=True)
    hops, hop_length = graph_only.geodesic(a, b, return_length=True)
    ax.plot(hops[:, 0], hops[:, 1], "--", color=color, lw=1)
    ax.plot(
        path[:, 0],
        path[:, 1],
        "-",
        color=color,
        lw=2.5,
        label=f"geodesic {length:.2f} (graph {hop_length:.2f})",
    )
    ax.scatter(*np.c_[a, b], color=color, s=40, zorder=3)
ax.set(title="learnt density, graph paths (dashed) and geodesics", xticks=[], yticks=[])
ax.legend(loc="lower left", fontsize=8)
plt.tight_layout()

# %%
# Clustering: Fermat versus Euclidean distances
# ---------------------------------------------
# ``pairwise()`` (or ``fit_transform``) returns the training distance matrix, ready for any
# estimator with ``metric="precomputed"``. For 500 points that is 124 750 pairs, beyond the
# default relaxation budget, so we take the graph distances. Average-linkage clustering with
# Euclidean distances cuts the moons across; with Fermat distances the moons come out whole.
# DBSCAN is density-based already: on clean moons both distances work for a narrow range of
# ``eps`` (we sweep it over the same quantiles of each matrix). Fermat distances help most
# the methods that know nothing of density (linkage, k-medoids, MDS), and DBSCAN when
# low-density background points would otherwise bridge clusters.
matrices = {"Euclidean": pairwise_distances(X), "Fermat": graph_only.pairwise()}
fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
for ax, (name, M) in zip(axes[:2], matrices.items(), strict=True):
    labels = AgglomerativeClustering(2, metric="precomputed", linkage="average").fit_predict(M)
    ax.scatter(X[:, 0], X[:, 1], c=labels, s=6, cmap="coolwarm")
    ari = adjusted_rand_score(y, labels)
    ax.set(title=f"average linkage, {name}: ARI {ari:.2f}", xticks=[], yticks=[])
    print(f"average linkage with {name} distances: ARI {ari:.2f}")
quantiles = np.linspace(0.002, 0.3, 60)
for name, M in matrices.items():
    upper = M[np.triu_indices_from(M, 1)]
    scores = [
        adjusted_rand_score(
            y,
            DBSCAN(eps=np.quantile(upper, q), min_samples=10, metric="precomputed").fit_predict(M),
        )
        for q in quantiles
    ]
    axes[2].plot(quantiles, scores, label=name)
    print(f"DBSCAN with {name} distances: best ARI {max(scores):.2f}")
axes[2].set(xlabel="DBSCAN eps (quantile of the distances)", ylabel="ARI", title="DBSCAN")
axes[2].legend()
plt.tight_layout()
plt.show()
