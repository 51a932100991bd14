"""Affine coupling blocks of general incompressible-flow networks (GIN).

A GIN block (Sorrenson, Rother and Koethe, ICLR 2020) is a GLOW-style affine coupling whose
log-scales are softly clamped and then shifted to sum to zero, so that every block, and hence the
whole flow, preserves volume: ``log|det J| = 0`` exactly. Blocks alternate with fixed random
permutations of the features. The same blocks without the zero-sum shift are ordinary
(compressible) GLOW couplings; :func:`skfff.datasets.make_nonlinear_ica` uses them, randomly
initialised, as the unknown mixing function of the paper's artificial experiment.

For images, :class:`ConvGINCoupling` splits the channels instead of the features and uses
convolutional subnetworks; :class:`ConvGINFlow` stacks them at two resolutions (each reached by a
volume-preserving :class:`Squeeze`) before dense couplings, the shape of the paper's EMNIST model.

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
    "ConvGINCoupling",
    "ConvGINFlow",
    "GINCoupling",
    "GINFlow",
    "GINTrainingModule",
    "RandomPermutation",
    "Reshape",
    "Squeeze",
    "conv_subnet",
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

    # What a convolutional coupling changes: where the halves are split (the last axis here,
    # the channel axis for images) and over which axes the log-scales of a sample lie.
    _event_dims: tuple[int, ...] = (-1,)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[..., : self.n1], x[..., self.n1 :]

    def _merge(self, x1: Tensor, x2: Tensor) -> Tensor:
        return torch.cat([x1, x2], -1)

    def _split_output(self, out: Tensor, n_out: int) -> tuple[Tensor, Tensor]:
        return out[..., :n_out], out[..., n_out:]

    def _scale_shift(self, net: nn.Module, h: Tensor, n_out: int) -> tuple[Tensor, Tensor]:
        s, t = self._split_output(net(h), n_out)
        s = soft_clamp(s, self.clamp)
        if self.volume_preserving:
            s = s - s.mean(self._event_dims, keepdim=True)
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
        x1, x2 = self._split(x)
        s2, t2 = self._scale_shift(self.net1, x1, self.n2)
        y2 = x2 * torch.exp(s2) + t2
        s1, t1 = self._scale_shift(self.net2, y2, self.n1)
        y1 = x1 * torch.exp(s1) + t1
        return self._merge(y1, y2), s1.sum(self._event_dims) + s2.sum(self._event_dims)

    def inverse(self, y: Tensor) -> Tensor:
        """Exact inverse of :meth:`forward`.

        Parameters
        ----------
        y : Tensor of shape (n, features)

        Returns
        -------
        x : Tensor of shape (n, features)
        """
        y1, y2 = self._split(y)
        s1, t1 = self._scale_shift(self.net2, y2, self.n1)
        x1 = (y1 - t1) * torch.exp(-s1)
        s2, t2 = self._scale_shift(self.net1, x1, self.n2)
        x2 = (y2 - t2) * torch.exp(-s2)
        return self._merge(x1, x2)


class RandomPermutation(nn.Module):
    """A fixed random permutation along one axis (volume preserving).

    Parameters
    ----------
    features : int
        Length of the permuted axis.
    generator : torch.Generator, optional
        Source of randomness for the permutation.
    dim : int, default=-1
        Axis to permute (``-3``, the channels, for images of shape (n, C, H, W)).
    """

    def __init__(
        self, features: int, generator: torch.Generator | None = None, *, dim: int = -1
    ) -> None:
        super().__init__()
        if dim >= 0:
            raise ValueError(f"dim must be negative (counted from the end), got {dim}")
        self.dim = int(dim)
        perm = torch.randperm(features, generator=generator)
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Permute the axis; returns ``(y, log_det)`` with ``log_det = 0``."""
        return x.index_select(self.dim, self.perm), x.new_zeros(x.shape[: self.dim])

    def inverse(self, y: Tensor) -> Tensor:
        """Undo the permutation."""
        return y.index_select(self.dim, self.inverse_perm)


class ConvGINCoupling(GINCoupling):
    """The GIN coupling on images: channels split in two, convolutional subnetworks.

    Inputs have shape (n, C, H, W). ``x1`` holds the first ``C // 2`` channels; the
    subnetworks map ``(n, c_in, H, W)`` to ``(n, 2 c_out, H, W)`` (log-scales then shifts,
    along the channels). Each log-scale map is shifted to zero mean over all its entries
    (channels and pixels), so the block preserves volume exactly.

    Parameters
    ----------
    channels : int
        Number of channels (at least 2).
    subnet_constructor : callable, optional
        ``subnet_constructor(in_channels, out_channels) -> nn.Module``, a map between images
        of the same height and width. Defaults to three ``kernel_size`` convolutions with
        ``hidden_channels`` channels and ReLU, the last one starting at zero.
    hidden_channels : int, default=32
        Width of the default subnetworks.
    kernel_size : int, default=3
        Kernel size of the default subnetworks (odd).
    clamp : float, default=2.0
        Soft clamp of the log-scales.
    volume_preserving : bool, default=True
        Zero-sum log-scales (GIN); ``False`` gives a GLOW coupling.
    zero_init : bool, default=True
        Start the default subnetworks as the identity map.
    """

    _event_dims = (-3, -2, -1)

    def __init__(
        self,
        channels: int,
        subnet_constructor: SubnetConstructor | None = None,
        *,
        hidden_channels: int = 32,
        kernel_size: int = 3,
        clamp: float = 2.0,
        volume_preserving: bool = True,
        zero_init: bool = True,
    ) -> None:
        if subnet_constructor is None:

            def subnet_constructor(i: int, o: int) -> nn.Module:
                return conv_subnet(i, o, hidden_channels, kernel_size, zero_init=zero_init)

        super().__init__(
            channels, subnet_constructor, clamp=clamp, volume_preserving=volume_preserving
        )

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[..., : self.n1, :, :], x[..., self.n1 :, :, :]

    def _merge(self, x1: Tensor, x2: Tensor) -> Tensor:
        return torch.cat([x1, x2], -3)

    def _split_output(self, out: Tensor, n_out: int) -> tuple[Tensor, Tensor]:
        return out[..., :n_out, :, :], out[..., n_out:, :, :]


def conv_subnet(
    in_channels: int,
    out_channels: int,
    hidden_channels: int = 32,
    kernel_size: int = 3,
    *,
    zero_init: bool = True,
) -> nn.Sequential:
    """Three same-padding convolutions with ReLU: the default image subnetwork.

    Parameters
    ----------
    in_channels, out_channels, hidden_channels : int
        Channel widths.
    kernel_size : int, default=3
        Odd kernel size.
    zero_init : bool, default=True
        Start the last convolution at zero (the coupling then starts as the identity).

    Returns
    -------
    torch.nn.Sequential
    """
    pad = kernel_size // 2
    net = nn.Sequential(
        nn.Conv2d(in_channels, hidden_channels, kernel_size, padding=pad),
        nn.ReLU(),
        nn.Conv2d(hidden_channels, hidden_channels, kernel_size, padding=pad),
        nn.ReLU(),
        nn.Conv2d(hidden_channels, out_channels, kernel_size, padding=pad),
    )
    if zero_init:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


class Squeeze(nn.Module):
    """Space-to-depth: (n, C, H, W) -> (n, 4 C, H / 2, W / 2), a permutation of the pixels."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Fold every 2 x 2 patch into the channels; ``log_det = 0``."""
        return nn.functional.pixel_unshuffle(x, 2), x.new_zeros(x.shape[:-3])

    def inverse(self, y: Tensor) -> Tensor:
        """Unfold the channels back into 2 x 2 patches."""
        return nn.functional.pixel_shuffle(y, 2)


class Reshape(nn.Module):
    """Reshape every sample from ``in_shape`` to ``out_shape`` (volume preserving).

    Parameters
    ----------
    in_shape, out_shape : tuple of int
        Per-sample shapes with the same number of entries.
    """

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        if math.prod(in_shape) != math.prod(out_shape):
            raise ValueError(f"cannot reshape {in_shape} into {out_shape}")
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Reshape; ``log_det = 0``."""
        batch = x.shape[: x.dim() - len(self.in_shape)]
        return x.reshape(*batch, *self.out_shape), x.new_zeros(batch)

    def inverse(self, y: Tensor) -> Tensor:
        """Reshape back."""
        return y.reshape(*y.shape[: y.dim() - len(self.out_shape)], *self.in_shape)


def _dense_blocks(
    features: int,
    n_blocks: int,
    subnet_constructor: SubnetConstructor | None,
    generator: torch.Generator | None,
    **coupling: object,
) -> list[nn.Module]:
    """``n_blocks`` dense couplings, each followed by a fixed random permutation."""
    layers: list[nn.Module] = []
    for _ in range(n_blocks):
        layers.append(GINCoupling(features, subnet_constructor, **coupling))
        layers.append(RandomPermutation(features, generator))
    return layers


class _SequentialFlow(nn.Module):
    """A flow made of ``self.layers``, each returning ``(y, log_det)`` and having ``inverse``."""

    layers: nn.ModuleList

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
        log_det = None
        for layer in self.layers:
            x, ld = layer(x)
            log_det = ld if log_det is None else log_det + ld
        return x, log_det

    def encode(self, x: Tensor) -> Tensor:
        """``z = f(x)`` without the log-determinant."""
        return self(x)[0]

    def inverse(self, z: Tensor) -> Tensor:
        """Map latent ``z`` back to data: the exact inverse of :meth:`forward`."""
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z


class GINFlow(_SequentialFlow):
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
        layers = _dense_blocks(
            features, n_blocks, subnet_constructor, generator, hidden_features=hidden_features,
            n_hidden_layers=n_hidden_layers, clamp=clamp, volume_preserving=volume_preserving,
            zero_init=zero_init,
        )
        self.layers = nn.ModuleList(layers)


class ConvGINFlow(_SequentialFlow):
    """GIN for images: convolutional couplings at two resolutions, then dense couplings.

    The shape of the paper's EMNIST model (Sorrenson et al., 2020). Flat inputs of
    ``prod(image_shape)`` features are viewed as images (n, C, H, W), then::

        squeeze -> n_conv_blocks x [conv coupling, channel permutation]     (conv_channels)
        squeeze -> n_conv_blocks x [conv coupling, channel permutation]     (2 conv_channels)
        flatten -> n_blocks x [dense coupling, permutation]

    A squeeze folds each 2 x 2 patch into the channels (it is skipped when the height or width
    is odd). Every part preserves volume, so the whole flow does, and the latent code is flat
    again, of the same width as the input.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)`` or ``(C, H, W)``.
    n_blocks : int, default=2
        Dense couplings at the end.
    n_conv_blocks : int, default=4
        Convolutional couplings per resolution.
    conv_channels : int, default=32
        Hidden channels of the first resolution's subnetworks (doubled at the second).
    subnet_constructor : callable, optional
        Subnetworks of the dense couplings (see :class:`GINFlow`).
    hidden_features : int, default=64
        Width of the default dense subnetworks.
    n_hidden_layers : int, default=2
        Depth of the default dense subnetworks.
    clamp : float, default=2.0
        Soft clamp of the log-scales.
    volume_preserving : bool, default=True
        GIN blocks (True) or GLOW blocks (False).
    zero_init : bool, default=True
        Initialise every coupling as the identity.
    generator : torch.Generator, optional
        Source of randomness for the permutations.

    Examples
    --------
    >>> import torch
    >>> from skfff._torch.gin import ConvGINFlow
    >>> flow = ConvGINFlow((8, 8), n_blocks=1, n_conv_blocks=1, conv_channels=4,
    ...                    zero_init=False)
    >>> x = torch.randn(3, 64)
    >>> z, log_det = flow(x)
    >>> z.shape, bool(torch.allclose(flow.inverse(z), x, atol=1e-4))
    (torch.Size([3, 64]), True)
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        n_blocks: int = 2,
        n_conv_blocks: int = 4,
        conv_channels: int = 32,
        subnet_constructor: SubnetConstructor | None = None,
        *,
        hidden_features: int = 64,
        n_hidden_layers: int = 2,
        clamp: float = 2.0,
        volume_preserving: bool = True,
        zero_init: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        shape = tuple(int(v) for v in image_shape)
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape must be (H, W) or (C, H, W), got {image_shape!r}")
        features = math.prod(shape)
        self.features = features
        self.image_shape = shape
        layers: list[nn.Module] = [Reshape((features,), shape)]
        c, h, w = shape
        for stage in range(2):
            if h % 2 == 0 and w % 2 == 0:
                layers.append(Squeeze())
                c, h, w = 4 * c, h // 2, w // 2
            if c < 2:
                raise ValueError(
                    f"image_shape {image_shape!r}: convolutional couplings need at least 2 "
                    "channels; give an even height and width or at least 2 channels."
                )
            for _ in range(n_conv_blocks):
                layers.append(
                    ConvGINCoupling(
                        c,
                        hidden_channels=conv_channels * 2**stage,
                        clamp=clamp,
                        volume_preserving=volume_preserving,
                        zero_init=zero_init,
                    )
                )
                layers.append(RandomPermutation(c, generator, dim=-3))
        layers.append(Reshape((c, h, w), (features,)))
        layers += _dense_blocks(
            features, n_blocks, subnet_constructor, generator, hidden_features=hidden_features,
            n_hidden_layers=n_hidden_layers, clamp=clamp, volume_preserving=volume_preserving,
            zero_init=zero_init,
        )
        self.layers = nn.ModuleList(layers)


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
