"""A cheap, smooth stand-in for a density's log-density, to guide geodesic relaxation.

Relaxing a path evaluates the score ``grad log p`` at every path point in every iteration,
and the step control evaluates ``log p`` at every segment midpoint. For a free-form flow one
exact ``log p`` costs ``D`` Jacobian-vector products and a determinant (tens of microseconds a
point on one CPU core), its gradient several times more; finite differences cost ``2 D``
evaluations. Thousands of paths times tens of points times tens of iterations is then minutes.

Here the density is *distilled* once into a small residual MLP ``u(x) ~ log p(x)`` by
regression on the density's own values at design points where paths go: the training points,
the points jittered, and points on segments between pairs of training points. One forward
and backward pass of ``u`` gives both the value (for the step control) and the score (by
autograd) of a single smooth function, so the relaxation minimises a consistent length. The
lengths reported to the user are always measured with the real density afterwards: the
surrogate only decides where the path goes.

The model is ``u(x) = -|z|^2 / 2 + m(z) + c`` with ``z`` the standardised input and ``m`` the MLP:
the Gaussian baseline makes ``u`` fall off away from the data instead of extrapolating
linearly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .networks import ResidualMLP
from .score_matching import train_on_minibatches

__all__ = ["LogDensitySurrogate", "fit_log_density_surrogate"]


class LogDensitySurrogate(nn.Module):
    """Smooth model of ``log p(x)`` in data units.

    Parameters
    ----------
    mean, scale : Tensor of shape (D,)
        Per-feature standardisation of the inputs.
    target_mean, target_scale : float
        Standardisation of the regression target (residual to the Gaussian baseline).
    hidden_features, n_blocks : int
        Size of the residual MLP.
    """

    def __init__(
        self,
        mean: Tensor,
        scale: Tensor,
        target_mean: float,
        target_scale: float,
        hidden_features: int = 64,
        n_blocks: int = 2,
    ) -> None:
        super().__init__()
        D = mean.shape[0]
        self.register_buffer("mean", mean.clone())
        self.register_buffer("scale", scale.clone())
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_scale", torch.tensor(float(target_scale)))
        self.net = ResidualMLP(
            D, 1, hidden_features, n_blocks, skip=False, activation=nn.SiLU, zero_init=True
        )

    def residual(self, z: Tensor) -> Tensor:
        """Standardised residual ``m(z)`` of the model to the Gaussian baseline."""
        return self.net(z)[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        """``log p(x)`` (approximately) for ``x`` of shape ``(m, D)``."""
        z = (x - self.mean) / self.scale
        base = -0.5 * (z * z).sum(dim=-1)
        return base + self.residual(z) * self.target_scale + self.target_mean

    def value_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``u(x)`` and ``grad u(x)``, from one forward and one backward pass."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            u = self.forward(x)
            (g,) = torch.autograd.grad(u.sum(), x)
        return u.detach(), g


def design_points(X: np.ndarray, n_points: int, rng: np.random.Generator) -> np.ndarray:
    """Points where relaxed paths go: data, jittered data and points on chords between data.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Training points.
    n_points : int
        Number of design points.
    rng : numpy.random.Generator
        Randomness.

    Returns
    -------
    ndarray of shape (n_points, D)
    """
    n, D = X.shape
    std = X.std(axis=0) + 1e-12
    m = n_points // 4
    own = X[rng.integers(0, n, m)]
    jitter_small = X[rng.integers(0, n, m)] + 0.1 * std * rng.standard_normal((m, D))
    jitter_big = X[rng.integers(0, n, m)] + 0.5 * std * rng.standard_normal((m, D))
    rest = n_points - 3 * m
    a, b = X[rng.integers(0, n, rest)], X[rng.integers(0, n, rest)]
    t = rng.uniform(size=(rest, 1))
    chords = a + t * (b - a)
    return np.concatenate([own, jitter_small, jitter_big, chords])


def fit_log_density_surrogate(
    X: np.ndarray,
    log_density: Callable[[np.ndarray], np.ndarray],
    *,
    floor: float = -np.inf,
    n_points: int | None = None,
    n_steps: int | None = None,
    hidden_features: int = 64,
    n_blocks: int = 2,
    batch_size: int = 512,
    lr: float = 3e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> LogDensitySurrogate:
    """Distil ``log_density`` into a :class:`LogDensitySurrogate` by least squares.

    Parameters
    ----------
    X : ndarray of shape (n, D)
        Training points (they define where design points are drawn).
    log_density : callable
        ``log_density(points) -> log p(points)`` (NumPy in and out); ``-inf`` allowed.
    floor : float
        Values below ``floor`` (and ``-inf``) are raised to it, like the capped metric.
    n_points : int, optional
        Design points; default ``clip(8 n, 2 000, 20 000)``.
    n_steps : int, optional
        Adam steps (cosine decay); default ``clip(n_points / 8, 300, 1 500)``.
    hidden_features, n_blocks : int
        Size of the MLP.
    batch_size, lr : int, float
        Optimiser settings.
    seed : int
        Seeds design points, initialisation and batches.
    device : str or torch.device
        Where the model is trained and lives.

    Returns
    -------
    LogDensitySurrogate
        In evaluation mode, parameters frozen.
    """
    X = np.asarray(X, dtype=np.float64)
    n, D = X.shape
    rng = np.random.default_rng(seed)
    if n_points is None:
        n_points = int(np.clip(8 * n, 2000, 20000))
    if n_steps is None:
        n_steps = int(np.clip(n_points // 8, 300, 1500))
    P = design_points(X, n_points, rng)
    y = np.asarray(log_density(P), dtype=np.float64)
    y = np.where(np.isnan(y), -np.inf, y)
    fl = float(floor) if np.isfinite(floor) else float(np.min(y[np.isfinite(y)], initial=0.0))
    y = np.maximum(y, fl)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    Z = (P - mean) / scale
    resid = y + 0.5 * np.sum(Z * Z, axis=1)
    t_mean, t_scale = float(np.mean(resid)), float(np.std(resid) + 1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = LogDensitySurrogate(
            torch.as_tensor(mean, dtype=torch.float32),
            torch.as_tensor(scale, dtype=torch.float32),
            t_mean,
            t_scale,
            hidden_features,
            n_blocks,
        )
    model.to(device)
    z_all = torch.as_tensor(Z, dtype=torch.float32, device=device)
    r_all = torch.as_tensor((resid - t_mean) / t_scale, dtype=torch.float32, device=device)
    return train_on_minibatches(
        model, n_points, lambda idx: (model.residual(z_all[idx]) - r_all[idx]).pow(2).mean(),
        n_steps=n_steps, batch_size=batch_size, lr=lr,
        generator=torch.Generator(device="cpu").manual_seed(int(seed)), device=device,
    )
