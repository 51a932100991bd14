"""The uniform distribution on a manifold, and the von Mises-Fisher density on ``S^2``
(normaliser and sampler; the learnable mixtures are in :mod:`skfff.manifolds.mixture`)."""

from __future__ import annotations

import torch
from torch import nn

from .base import Manifold

__all__ = ["UniformDistribution", "sample_vmf_s2"]


class UniformDistribution(nn.Module):
    """The uniform distribution on a manifold (w.r.t. its volume measure).

    Parameters
    ----------
    manifold : Manifold
    """

    def __init__(self, manifold: Manifold):
        super().__init__()
        self.manifold = manifold

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``-log_volume`` for every point, shape ``(batch,)``."""
        return self.manifold.uniform_log_prob(z)

    def sample(self, n_samples: int, generator: torch.Generator | None = None,
               device=None, dtype=torch.float32) -> torch.Tensor:
        """``n_samples`` uniform points in the embedding, shape ``(n_samples, m)``."""
        return self.manifold.random_uniform(n_samples, generator, device, dtype)


def sample_vmf_s2(mu: torch.Tensor, kappa: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One von Mises-Fisher sample per row of ``mu`` ``(n, 3)`` (unit) and ``kappa`` ``(n,)``.

    Exact inversion of the CDF of ``w = <x, mu>``:
    ``w = 1 + log(u + (1 - u) exp(-2 kappa)) / kappa``.
    """
    n = mu.shape[0]
    u = torch.rand(n, generator=generator, dtype=mu.dtype, device=mu.device)
    kappa = kappa.clamp_min(1e-6)
    w = 1.0 + torch.log(u + (1.0 - u) * torch.exp(-2.0 * kappa)) / kappa
    w = w.clamp(-1.0, 1.0)
    t = torch.randn(n, 3, generator=generator, dtype=mu.dtype, device=mu.device)
    t = t - (t * mu).sum(-1, keepdim=True) * mu
    t = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return w.unsqueeze(-1) * mu + torch.sqrt((1.0 - w * w).clamp_min(0.0)).unsqueeze(-1) * t
