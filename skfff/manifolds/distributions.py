"""Base (latent) distributions on manifolds: uniform and a learnable vMF mixture."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import Manifold
from .sphere import Sphere

__all__ = ["UniformDistribution", "VonMisesFisherMixture", "vmf_log_normalizer_s2"]


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


def vmf_log_normalizer_s2(kappa: torch.Tensor) -> torch.Tensor:
    """Log normaliser of the von Mises-Fisher density on ``S^2`` (w.r.t. area).

    ``log C(kappa) = log kappa - log(2 pi) - kappa - log(1 - exp(-2 kappa))``, stable for
    large ``kappa``; tends to ``-log(4 pi)`` as ``kappa -> 0``.
    """
    kappa = kappa.clamp_min(1e-6)
    return torch.log(kappa) - math.log(2 * math.pi) - kappa - torch.log(-torch.expm1(-2 * kappa))


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


class VonMisesFisherMixture(nn.Module):
    """A learnable mixture of von Mises-Fisher distributions on ``S^2``.

    Parameters
    ----------
    n_components : int, default=8
        Number of components.
    concentration : float, default=1.0
        Initial concentration ``kappa`` of every component.
    generator : torch.Generator, optional
        Seeds the random initial mean directions.

    Notes
    -----
    The density is ``sum_k w_k C(kappa_k) exp(kappa_k <mu_k, x>)`` w.r.t. the area
    of ``S^2`` (total ``4 pi``). Means, log-concentrations and mixture logits are
    parameters; sampling is not differentiated.
    """

    def __init__(self, n_components: int = 8, concentration: float = 1.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.manifold = Sphere(2)
        self.raw_means = nn.Parameter(torch.randn(n_components, 3, generator=generator))
        self.log_kappa = nn.Parameter(torch.full((n_components,), math.log(concentration)))
        self.logits = nn.Parameter(torch.zeros(n_components))

    @property
    def means(self) -> torch.Tensor:
        return self.raw_means / self.raw_means.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of points ``(batch, 3)`` on ``S^2``, shape ``(batch,)``."""
        kappa = self.log_kappa.exp()
        comp = vmf_log_normalizer_s2(kappa) + kappa * (z @ self.means.T)
        return torch.logsumexp(comp + torch.log_softmax(self.logits, 0), dim=-1)

    def sample(self, n_samples: int, generator: torch.Generator | None = None,
               device=None, dtype=torch.float32) -> torch.Tensor:
        """``n_samples`` points on ``S^2``, shape ``(n_samples, 3)``."""
        where = generator.device if generator is not None else self.logits.device
        with torch.no_grad():
            probs = torch.softmax(self.logits, 0).to(where)
            k = torch.multinomial(probs, n_samples, replacement=True, generator=generator)
            out = sample_vmf_s2(self.means.to(where)[k], self.log_kappa.exp().to(where)[k],
                                generator)
        return out.to(device=device or out.device, dtype=dtype)
