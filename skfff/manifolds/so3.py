"""The rotation group ``SO(3)`` as 3x3 matrices, flattened row-major in ``R^9``."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from .base import Manifold

__all__ = [
    "SpecialOrthogonal",
    "log_isotropic_gaussian",
    "log_rotation_kernel",
    "quaternion_to_matrix",
    "sample_rotation_kernel",
]


def log_isotropic_gaussian(angle: np.ndarray, scale: float) -> np.ndarray:
    """Log-density of ``C exp(hat(w))``, ``w ~ N(0, scale^2 I_3)``, at a rotation whose angle
    from ``C`` is ``angle`` (radians, ``|log(C^T R)|``).

    W.r.t. the bi-invariant volume of total ``8 pi^2``: in exponential coordinates that
    volume is ``(sin(t/2) / (t/2))^2 d^3w`` (``t = |w|``), so the density is the Gaussian
    density of ``w`` divided by it. Rotation vectors longer than ``pi`` (a second preimage)
    are ignored: exact to about ``1e-8`` for ``scale <= 0.5``.
    """
    angle = np.asarray(angle, dtype=np.float64)
    log_gauss = -0.5 * angle**2 / scale**2 - 3 * np.log(scale) - 1.5 * np.log(2 * np.pi)
    return log_gauss - 2 * np.log(np.sinc(angle / (2 * np.pi)))  # / (sin(t/2) / (t/2))^2


def _log_chi3_cdf(x):
    """``log P(|w| <= x sigma)`` for ``w ~ N(0, sigma^2 I_3)`` (ndarray or tensor)."""
    if isinstance(x, torch.Tensor):
        cdf = torch.erf(x / math.sqrt(2.0)) - math.sqrt(2.0 / math.pi) * x * torch.exp(-0.5 * x * x)
        return torch.log(cdf.clamp_min(1e-300))
    from scipy.special import erf

    cdf = erf(x / math.sqrt(2.0)) - math.sqrt(2.0 / math.pi) * x * np.exp(-0.5 * x * x)
    return np.log(np.maximum(cdf, 1e-300))


def log_rotation_kernel(trace, sigma):
    """Log-density (w.r.t. the volume ``8 pi^2``) of ``C exp(hat(w))``, ``w ~ N(0, sigma^2
    I_3)`` conditioned on ``|w| <= pi``, at a rotation ``R`` with ``tr(C^T R) = trace``.

    :func:`log_isotropic_gaussian` (exact once the rotation vector is confined to one
    preimage) over the truncation's probability. ``trace`` and ``sigma`` broadcast; ndarrays
    or tensors (then differentiable: the angle is taken as ``atan2(sin, cos)`` with the sine
    clamped away from 0, so the gradient stays finite at ``R = C``).
    """
    if isinstance(trace, torch.Tensor):
        cos = ((trace - 1.0) / 2.0).clamp(-1.0, 1.0)
        angle = torch.atan2(torch.sqrt((1.0 - cos * cos).clamp_min(1e-300)), cos)
        log_gauss = (-0.5 * angle**2 / sigma**2 - 3 * torch.log(sigma)
                     - 1.5 * math.log(2 * math.pi))
        # / (sin(t/2) / (t/2))^2: the volume in exponential coordinates
        return (log_gauss - 2 * torch.log(torch.sinc(angle / (2 * math.pi)))
                - _log_chi3_cdf(math.pi / sigma))
    angle = np.arccos(np.clip((np.asarray(trace) - 1.0) / 2.0, -1.0, 1.0))
    return log_isotropic_gaussian(angle, sigma) - _log_chi3_cdf(math.pi / np.asarray(sigma))


def sample_rotation_kernel(centres: np.ndarray, sigma, rng: np.random.Generator) -> np.ndarray:
    """One draw of ``C exp(hat(w))``, ``w ~ N(0, sigma^2 I_3)``, ``|w| <= pi``, around each
    flattened rotation ``C`` of ``centres`` ``(n, 9)``; ``sigma`` a float or ``(n,)``."""
    n = len(centres)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (n,))[:, None]
    v = rng.standard_normal((n, 3)) * sigma
    while True:  # redraw the rotation vectors beyond pi (truncation)
        far = np.linalg.norm(v, axis=1) > math.pi
        if not far.any():
            break
        v[far] = rng.standard_normal((int(far.sum()), 3)) * sigma[far]
    return (centres.reshape(n, 3, 3) @ Rotation.from_rotvec(v).as_matrix()).reshape(n, 9)


def _hat(w: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` axis vectors to ``(..., 3, 3)`` skew-symmetric matrices."""
    z = torch.zeros_like(w[..., 0])
    return torch.stack([
        torch.stack([z, -w[..., 2], w[..., 1]], -1),
        torch.stack([w[..., 2], z, -w[..., 0]], -1),
        torch.stack([-w[..., 1], w[..., 0], z], -1),
    ], -2)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``(..., 4)`` in scalar-last order ``(x, y, z, w)`` (SciPy's
    convention) to rotation matrices ``(..., 3, 3)``; ``q`` is normalised first."""
    q = q / q.norm(dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _quaternion_form() -> torch.Tensor:
    """``A`` of shape (9, 4, 4) with ``R(q)_ij = q^T A_ij q`` for unit ``q`` (x, y, z, w)."""

    def homogeneous(q):
        x, y, z, w = q.unbind(-1)
        return torch.stack([
            w * w + x * x - y * y - z * z, 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), w * w - x * x + y * y - z * z, 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), w * w - x * x - y * y + z * z,
        ])

    return 0.5 * torch.func.jacfwd(torch.func.jacrev(homogeneous))(torch.zeros(4,
                                                                   dtype=torch.float64))


_QUAT_FORM = _quaternion_form()


class SpecialOrthogonal(Manifold):
    """The rotation group ``SO(3)``, embedded in ``R^9`` as row-major flattened matrices.

    Coordinates: arrays of shape ``(n_samples, 3, 3)`` or ``(n_samples, 9)`` (rotation
    matrices, row-major), or ``(n_samples, 4)`` unit quaternions in SciPy's scalar-last
    order ``(x, y, z, w)``; outputs are always ``(n_samples, 9)``.

    **Volume convention.** Densities are w.r.t. the bi-invariant metric
    ``<A, B> = tr(A^T B) / 2``, whose geodesic distance between two rotations is the
    angle of the relative rotation. The total volume is ``8 pi^2`` and the set of
    rotations by an angle below ``r`` has volume ``8 pi (r - sin r)``. (The metric
    induced by the Frobenius norm of ``R^9`` is twice as large, so its volumes are
    ``2^(3/2)`` times larger; Jacobian determinants between tangent spaces do not
    depend on this choice, only ``log_volume`` does.)

    Parameters
    ----------
    n : int, default=3
        Only ``3`` is supported.

    Examples
    --------
    >>> import math
    >>> from skfff.manifolds import SpecialOrthogonal
    >>> round(math.exp(SpecialOrthogonal().log_volume()) / math.pi**2, 6)
    8.0
    """

    def __init__(self, n: int = 3):
        if n != 3:
            raise ValueError(f"Only SO(3) is supported, got SO({n!r}).")
        self.dim = 3
        self.ambient_dim = 9
        self.n_coordinates = 9
        self.power_iterations = 4

    def __repr__(self):
        return "SpecialOrthogonal(3)"

    @staticmethod
    def _mat(x):
        return x.reshape(*x.shape[:-1], 3, 3)

    def project(self, x):
        """Closest rotation in Frobenius norm (``U V^T`` of the SVD with ``det = +1``).

        Computed as the rotation of the top eigenvector ``q`` of the 4x4 matrix ``K(M)``
        with ``q^T K q = tr(R(q)^T M)`` (Bar-Itzhack's quaternion form of the special
        orthogonal Procrustes problem). ``q`` comes from ``eigh`` without gradient and is
        then refined by a few shifted power iterations that carry the derivatives, so
        ``jvp``/``vjp``/``jacfwd`` stay finite at exact rotations, where the SVD's
        backward formula divides by zero (repeated singular values).
        """
        m = x.reshape(*x.shape[:-1], 9)
        a = _QUAT_FORM.to(dtype=x.dtype, device=x.device)
        k = (m @ a.reshape(9, 16)).reshape(*x.shape[:-1], 4, 4)
        with torch.no_grad():
            lam, vecs = torch.linalg.eigh(k.detach())
            q = vecs[..., -1]
            # centre the rest of the spectrum on 0: the power iteration then contracts by
            # (lam_2 - lam_0) / (2 lam_3 - lam_2 - lam_0), which is 0 at exact rotations
            shift = (-0.5 * (lam[..., 0] + lam[..., 2])).unsqueeze(-1)
        for _ in range(self.power_iterations):
            q = (k @ q.unsqueeze(-1)).squeeze(-1) + shift * q
            q = q / q.norm(dim=-1, keepdim=True)
        return quaternion_to_matrix(q).reshape(x.shape)

    def project_tangent(self, x, v):
        x, v = torch.broadcast_tensors(x, v)
        r, a = self._mat(x), self._mat(v)
        s = r.transpose(-1, -2) @ a
        return (r @ (0.5 * (s - s.transpose(-1, -2)))).reshape(v.shape)

    def tangent_basis(self, x):
        r = self._mat(x)
        gens = _hat(torch.eye(3, dtype=x.dtype, device=x.device)) / math.sqrt(2.0)  # (3,3,3)
        cols = r.unsqueeze(-3) @ gens  # (..., 3, 3, 3): k-th basis matrix R E_k / sqrt 2
        return cols.flatten(-2).transpose(-1, -2)  # (..., 9, 3)

    def random_uniform(self, n_samples, generator=None, device=None, dtype=torch.float32):
        q = torch.randn(n_samples, 4, generator=generator, dtype=dtype, device=device)
        return quaternion_to_matrix(q).flatten(-2)

    def log_volume(self):
        return math.log(8.0) + 2.0 * math.log(math.pi)

    @staticmethod
    def rotation_angle(x: torch.Tensor) -> torch.Tensor:
        """Angle in ``[0, pi]`` of each rotation ``(..., 9)``."""
        tr = x[..., 0] + x[..., 4] + x[..., 8]
        return torch.arccos(((tr - 1.0) / 2.0).clamp(-1.0, 1.0))

    def to_embedding(self, X):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 3 and X.shape[1:] == (3, 3):
            return X.reshape(X.shape[0], 9)
        if X.ndim == 2 and X.shape[1] == 4:
            return quaternion_to_matrix(torch.as_tensor(X)).reshape(-1, 9).numpy()
        if X.ndim == 2 and X.shape[1] == 9:
            return X
        raise ValueError(
            "SO(3) inputs must have shape (n_samples, 3, 3), (n_samples, 9) or "
            f"(n_samples, 4) (quaternions x, y, z, w); got {X.shape}."
        )
