"""Affine coupling blocks of general incompressible-flow networks (GIN).

A GIN block (Sorrenson, Rother and Koethe, ICLR 2020) is a GLOW-style affine coupling whose
log-scales are softly clamped and then shifted to sum to zero, so that every block, and hence the
whole flow, preserves volume: ``log|det J| = 0`` exactly. Blocks alternate with fixed random
permutations of the features. The same blocks without the zero-sum shift are ordinary
(compressible) GLOW couplings; :func:`skfff.datasets.make_nonlinear_ica` uses them, randomly
initialised, as the unknown mixing function of the paper's artificial experiment.

Everything here is batched over the leading axis and free of Python loops over samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .module import TrainingModule
from .networks import MLP
from .priors import ClassConditionalGaussian

__all__ = [
    "GINCoupling",
    "GINFlow",
    "GINTrainingModule",
    "RandomPermutation",
    "soft_clamp",
]

SubnetConstructor = Callable[[int, int], nn.Module]

# The paper's constant: 0.636 ~ 2 / pi, so that |soft_clamp(s)| < clamp.
_ATAN_SCALE = 0.636


def soft_clamp(s: Tensor, clamp: float) -> Tensor:
    """Smoothly limit log-scales to ``(-clamp, clamp)``.

    Parameters
    ----------
    s : Tensor
        Raw log-scales.
    clamp : float
        Bound on the absolute value of the output; ``inf`` disables clamping.

    Returns
    -------
    Tensor
        ``clamp * 0.636 * atan(s / clamp)`` (identity near zero).
    """
    if math.isinf(clamp):
        return s
    return clamp * _ATAN_SCALE * torch.atan(s / clamp)


class GINCoupling(nn.Module):
    """Two-sided affine coupling with soft-clamped, zero-sum log-scales.

    The input is split into ``x1`` (the first ``features // 2`` entries) and ``x2``. Then::

        (s2, t2) = net1(x1);  y2 = x2 * exp(s2) + t2
        (s1, t1) = net2(y2);  y1 = x1 * exp(s1) + t1

    where each ``s`` is soft-clamped and, when ``volume_preserving``, shifted to zero mean over
    its entries, so that ``sum(s1) + sum(s2) = 0`` and the block has unit Jacobian determinant.

    Parameters
    ----------
    features : int
        Number of features (at least 2).
    subnet_constructor : callable, optional
        ``subnet_constructor(in_features, out_features) -> nn.Module``. Defaults to
        a ReLU :class:`~skfff._torch.networks.MLP` with ``n_hidden_layers`` layers of width
        ``hidden_features``.
    hidden_features : int, default=10
        Width of the default subnetworks.
    n_hidden_layers : int, default=2
        Depth of the default subnetworks.
    clamp : float, default=2.0
        Soft clamp of the log-scales.
    volume_preserving : bool, default=True
        Subtract the mean of the log-scales (GIN). ``False`` gives a GLOW coupling.
    zero_init : bool, default=True
        Start the default subnetworks as the identity map.
    """

    def __init__(
        self,
        features: int,
        subnet_constructor: SubnetConstructor | None = None,
        *,
        hidden_features: int = 10,
        n_hidden_layers: int = 2,
        clamp: float = 2.0,
        volume_preserving: bool = True,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if features < 2:
            raise ValueError(f"A coupling block needs at least 2 features, got {features}.")
        self.features = features
        self.n1 = features // 2
        self.n2 = features - self.n1
        self.clamp = float(clamp)
        self.volume_preserving = bool(volume_preserving)
        if subnet_constructor is None:

            def subnet_constructor(i: int, o: int) -> nn.Module:
                hidden = [hidden_features] * n_hidden_layers
                return MLP(i, o, hidden, activation=nn.ReLU, zero_init=zero_init)

        self.net1 = subnet_constructor(self.n1, 2 * self.n2)
        self.net2 = subnet_constructor(self.n2, 2 * self.n1)

    def _scale_shift(self, net: nn.Module, h: Tensor, n_out: int) -> tuple[Tensor, Tensor]:
        out = net(h)
        s, t = out[..., :n_out], out[..., n_out:]
        s = soft_clamp(s, self.clamp)
        if self.volume_preserving:
            s = s - s.mean(-1, keepdim=True)
        return s, t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``x`` to ``y``.

        Parameters
        ----------
        x : Tensor of shape (n, features)

        Returns
        -------
        y : Tensor of shape (n, features)
        log_det : Tensor of shape (n,)
            ``log|det dy/dx|`` (zero up to rounding when ``volume_preserving``).
        """
        x1, x2 = x[..., : self.n1], x[..., self.n1 :]
        s2, t2 = self._scale_shift(self.net1, x1, self.n2)
        y2 = x2 * torch.exp(s2) + t2
        s1, t1 = self._scale_shift(self.net2, y2, self.n1)
        y1 = x1 * torch.exp(s1) + t1
        return torch.cat([y1, y2], -1), s1.sum(-1) + s2.sum(-1)

    def inverse(self, y: Tensor) -> Tensor:
        """Exact inverse of :meth:`forward`.

        Parameters
        ----------
        y : Tensor of shape (n, features)

        Returns
        -------
        x : Tensor of shape (n, features)
        """
        y1, y2 = y[..., : self.n1], y[..., self.n1 :]
        s1, t1 = self._scale_shift(self.net2, y2, self.n1)
        x1 = (y1 - t1) * torch.exp(-s1)
        s2, t2 = self._scale_shift(self.net1, x1, self.n2)
        x2 = (y2 - t2) * torch.exp(-s2)
        return torch.cat([x1, x2], -1)


class RandomPermutation(nn.Module):
    """A fixed random permutation of the features (volume preserving).

    Parameters
    ----------
    features : int
        Number of features.
    generator : torch.Generator, optional
        Source of randomness for the permutation.
    """

    def __init__(self, features: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        perm = torch.randperm(features, generator=generator)
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Permute the last axis; returns ``(y, log_det)`` with ``log_det = 0``."""
        return x[..., self.perm], x.new_zeros(x.shape[:-1])

    def inverse(self, y: Tensor) -> Tensor:
        """Undo the permutation."""
        return y[..., self.inverse_perm]


class GINFlow(nn.Module):
    """A stack of coupling blocks, each followed by a fixed random permutation.

    With ``volume_preserving=True`` this is the GIN of Sorrenson et al. (2020): an invertible
    map with ``|det J| = 1`` everywhere.

    Parameters
    ----------
    features : int
        Number of features (at least 2).
    n_blocks : int, default=8
        Number of coupling blocks.
    subnet_constructor : callable, optional
        ``subnet_constructor(in_features, out_features) -> nn.Module`` for every coupling;
        defaults to a ReLU :class:`~skfff._torch.networks.MLP`.
    hidden_features : int, default=10
        Width of the default subnetworks.
    n_hidden_layers : int, default=2
        Depth of the default subnetworks.
    clamp : float, default=2.0
        Soft clamp of the log-scales.
    volume_preserving : bool, default=True
        GIN blocks (True) or GLOW blocks (False).
    zero_init : bool, default=True
        Initialise the flow as a permutation (each coupling as the identity).
    generator : torch.Generator, optional
        Source of randomness for the permutations.

    Examples
    --------
    >>> import torch
    >>> from skfff._torch.gin import GINFlow
    >>> flow = GINFlow(4, n_blocks=2, zero_init=False)
    >>> x = torch.randn(3, 4)
    >>> z, log_det = flow(x)
    >>> bool(torch.allclose(flow.inverse(z), x, atol=1e-5)), bool(log_det.abs().max() < 1e-5)
    (True, True)
    """

    def __init__(
        self,
        features: int,
        n_blocks: int = 8,
        subnet_constructor: SubnetConstructor | None = None,
        *,
        hidden_features: int = 10,
        n_hidden_layers: int = 2,
        clamp: float = 2.0,
        volume_preserving: bool = True,
        zero_init: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.features = features
        layers: list[nn.Module] = []
        for _ in range(n_blocks):
            layers.append(
                GINCoupling(
                    features,
                    subnet_constructor,
                    hidden_features=hidden_features,
                    n_hidden_layers=n_hidden_layers,
                    clamp=clamp,
                    volume_preserving=volume_preserving,
                    zero_init=zero_init,
                )
            )
            layers.append(RandomPermutation(features, generator))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map data ``x`` to latent ``z``.

        Parameters
        ----------
        x : Tensor of shape (n, features)

        Returns
        -------
        z : Tensor of shape (n, features)
        log_det : Tensor of shape (n,)
            ``log|det dz/dx|`` accumulated from the log-scales (zero up to rounding for GIN).
        """
        log_det = x.new_zeros(x.shape[:-1])
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def encode(self, x: Tensor) -> Tensor:
        """``z = f(x)`` without the log-determinant."""
        return self(x)[0]

    def inverse(self, z: Tensor) -> Tensor:
        """Map latent ``z`` back to data: the exact inverse of :meth:`forward`."""
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z


class GINTrainingModule(TrainingModule):
    """A GIN flow with its class-conditional prior, as trained by :class:`skfff.GINTransformer`.

    The training loss is the negative log-likelihood of ``z = f(x + noise)`` under the prior with
    the batch's own class statistics, per latent dimension (there is no Jacobian term: the flow
    preserves volume). The validation loss is the exact mean negative log-likelihood of held-out
    points (in nats per sample) under the prior's running statistics.

    Parameters
    ----------
    flow : GINFlow
        The volume-preserving flow ``f``.
    prior : ClassConditionalGaussian
        The latent distribution ``p(z | u)``.
    noise_std : float, default=0.01
        Standard deviation of the Gaussian noise added to training inputs.
    """

    def __init__(self, flow: GINFlow, prior: ClassConditionalGaussian, noise_std: float = 0.01):
        super().__init__()
        self.flow = flow
        self.prior = prior
        self.noise_std = float(noise_std)

    @staticmethod
    def _labels(x: Tensor, c: Tensor | None) -> Tensor:
        """Integer class labels of the batch (all zero without labels)."""
        if c is None:
            return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return c.reshape(x.shape[0]).long()

    def training_loss(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Batch NLL per dimension with empirical class statistics (scalar)."""
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        z = self.flow.encode(x)
        return self.prior.batch_nll(z, self._labels(x, c)) / z.shape[-1]

    def validation_loss(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        """Exact mean negative log-likelihood ``-log p(x | u)`` in nats (scalar)."""
        z = self.flow.encode(x)
        return -self.prior.log_prob(z, self._labels(x, c)).mean()
