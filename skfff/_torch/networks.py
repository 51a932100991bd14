"""Default free-form architectures: residual MLPs, optionally conditioned.

The networks here are the defaults behind every estimator; any ``torch.nn.Module``
can stand in for them (see :func:`make_network`).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["ResidualMLP", "ConditionedNetwork", "make_network"]


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, n_conditions: int, activation: type[nn.Module]) -> None:
        super().__init__()
        self.act1 = activation()
        self.lin1 = nn.Linear(width + n_conditions, width)
        self.act2 = activation()
        self.lin2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        a = self.act1(h)
        if c is not None:
            a = torch.cat([a, c], dim=-1)
        return h + self.lin2(self.act2(self.lin1(a)))


class ResidualMLP(nn.Module):
    """Residual multi-layer perceptron ``R^in -> R^out``, optionally conditioned on ``c``.

    ``x -> Linear -> n_blocks x [h + Linear(act(Linear(act(h), c)))] -> act -> Linear``.
    The last linear layer starts at zero, so with ``skip=True`` (and ``in == out``) the
    network starts as the identity map ``x + 0``: an encoder and a decoder built this way
    are exact inverses of each other at initialisation.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    hidden_features : int, default=128
        Width of the hidden layers.
    n_blocks : int, default=2
        Number of residual blocks.
    n_conditions : int, default=0
        Width of the conditioning input ``c`` (concatenated to every block's input).
    skip : bool, default=True
        Add the input to the output (``in_features`` must equal ``out_features``).
    activation : type of torch.nn.Module, default=torch.nn.SiLU
        Activation.
    zero_init : bool, default=True
        Initialise the last layer at zero.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 128,
        n_blocks: int = 2,
        n_conditions: int = 0,
        *,
        skip: bool = True,
        activation: type[nn.Module] = nn.SiLU,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if skip and in_features != out_features:
            raise ValueError("skip=True needs in_features == out_features")
        self.skip = skip
        self.n_conditions = n_conditions
        self.inp = nn.Linear(in_features + n_conditions, hidden_features)
        self.blocks = nn.ModuleList(
            _ResidualBlock(hidden_features, n_conditions, activation) for _ in range(n_blocks)
        )
        self.act = activation()
        self.out = nn.Linear(hidden_features, out_features)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_conditions and c is None:
            raise ValueError("this network is conditional: pass c")
        c = c if self.n_conditions else None
        h = self.inp(x if c is None else torch.cat([x, c], dim=-1))
        for block in self.blocks:
            h = block(h, c)
        out = self.out(self.act(h))
        return x + out if self.skip else out


class ConditionedNetwork(nn.Module):
    """Wrap a user module so that it is always called as ``net(x, c)``.

    A module whose ``forward`` takes a second argument receives ``c``; one that takes a
    single argument receives ``x`` alone (unconditional) or ``cat([x, c])`` when
    conditions are present.
    """

    def __init__(self, module: nn.Module, n_conditions: int) -> None:
        super().__init__()
        self.module = module
        self.n_conditions = n_conditions
        params = list(inspect.signature(module.forward).parameters.values())
        self._takes_c = len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self._takes_c:
            return self.module(x, c)
        if self.n_conditions and c is not None:
            return self.module(torch.cat([x, c], dim=-1))
        return self.module(x)


def make_network(
    spec: nn.Module | Callable[..., nn.Module] | None,
    in_features: int,
    out_features: int,
    n_conditions: int,
    *,
    hidden_features: int,
    n_blocks: int,
    skip: bool,
) -> nn.Module:
    """Build a network from a user specification.

    Parameters
    ----------
    spec : None, torch.nn.Module or callable
        ``None`` builds the default :class:`ResidualMLP`. A module instance is deep-copied
        (so refits start from the same weights). A callable (a module class or factory) is
        called as ``spec(in_features, out_features, n_conditions)``.
    in_features, out_features, n_conditions : int
        Widths.
    hidden_features, n_blocks, skip
        Passed to the default :class:`ResidualMLP`.

    Returns
    -------
    torch.nn.Module
        A module called as ``net(x, c)``.
    """
    if spec is None:
        return ResidualMLP(
            in_features, out_features, hidden_features, n_blocks, n_conditions, skip=skip
        )
    if isinstance(spec, nn.Module):
        module = copy.deepcopy(spec)
    elif callable(spec):
        module = spec(in_features, out_features, n_conditions)
        if not isinstance(module, nn.Module):
            raise TypeError(f"the network factory returned {type(module).__name__}, not a Module")
    else:
        raise TypeError("a network must be None, a torch.nn.Module or a callable returning one")
    return ConditionedNetwork(module, n_conditions)
