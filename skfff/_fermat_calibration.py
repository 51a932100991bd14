"""Calibration of graph distances by the straightness of their graph paths.

A shortest path in a k-nearest-neighbour graph zig-zags through the sample points, so its
length overestimates the geodesic distance, the more so the higher the dimension (about 15 %
in 5-D and 25-50 % in 10-D for Gaussian data with ``k = 10``). How much a given path
overestimates is well predicted by one cheap number: its *straightness*
``s = |b - a| / (Euclidean length of the graph path)``. A path with ``s = 1`` is one
straight edge and needs no correction; a path that wanders sideways (small ``s``) is too
long by roughly a factor that depends on ``s``.

So we relax a fixed budget of sampled graph paths towards their geodesics (the expensive,
accurate step), measure ``ratio = relaxed length / graph length`` for each, and fit the
non-decreasing map ``s -> ratio`` by isotonic regression. Every other distance is then its
graph length times ``ratio(s)``: ``O(n_pairs)`` relaxations in total, whatever the number of
distances asked for. On ``N(0, I_D)`` with ``n = 2 000`` and ``k = 15`` the median error of
calibrated against relaxed distances is 0.4 / 2.5 / 2.7 % at ``D = 2 / 5 / 10``
(``benchmarks/bench_fermat.py``; ``benchmarks/README.rst``, "FermatDistance (issue 13)").

The map is fitted on pairs of training points and applied to any query; it changes the
distances' values but (being a function of ``s`` rather than of the length) can reorder
pairs, unlike a monotone map of the length alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression

__all__ = ["StraightnessCalibration", "fit_straightness_calibration"]


@dataclass
class StraightnessCalibration:
    """Piecewise-linear, non-decreasing map from straightness to length ratio.

    Attributes
    ----------
    knots : ndarray of shape (m,)
        Straightness values in ``[0, 1]``, increasing.
    ratios : ndarray of shape (m,)
        Ratio of relaxed to graph length at each knot, in ``(0, 1]``.
    """

    knots: np.ndarray
    ratios: np.ndarray

    def __call__(self, straightness: np.ndarray) -> np.ndarray:
        """Factor applied to graph lengths of paths with the given straightness."""
        return np.interp(straightness, self.knots, self.ratios)


def fit_straightness_calibration(
    straightness: np.ndarray, ratio: np.ndarray
) -> StraightnessCalibration:
    """Isotonic fit of ``ratio`` against ``straightness``.

    Parameters
    ----------
    straightness : ndarray of shape (m,)
        Chord over Euclidean path length of each sampled graph path, in ``(0, 1]``.
    ratio : ndarray of shape (m,)
        Relaxed length over graph length of each path, in ``(0, 1]``.

    Returns
    -------
    StraightnessCalibration
        The identity map (ratio 1) when there is nothing to fit.
    """
    s = np.asarray(straightness, dtype=np.float64)
    r = np.asarray(ratio, dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(r) & (r > 0)
    if ok.sum() < 2:
        return StraightnessCalibration(np.array([0.0, 1.0]), np.array([1.0, 1.0]))
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(np.clip(s[ok], 0.0, 1.0), np.clip(r[ok], 0.0, 1.0))
    knots = np.asarray(iso.X_thresholds_, dtype=np.float64)
    ratios = np.asarray(iso.y_thresholds_, dtype=np.float64)
    if knots.size == 1:
        knots, ratios = np.array([0.0, 1.0]), np.repeat(ratios, 2)
    return StraightnessCalibration(knots, np.maximum(ratios, 1e-3))
