"""Latent distributions used by the estimators."""

from __future__ import annotations

import math

import torch

__all__ = ["standard_normal_log_prob"]

_LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Log-density of the standard normal distribution, summed over the last axis.

    Parameters
    ----------
    z : Tensor of shape (..., d)
        Latent points.

    Returns
    -------
    Tensor of shape (...)
        ``log N(z; 0, I)``.
    """
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * _LOG_2PI)
