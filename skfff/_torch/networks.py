"""The networks behind every estimator, and the one way users replace them.

:class:`ResidualMLP` (free-form flows, autoencoders) and :class:`MLP` (GIN couplings, the
Dirichlet encoder, score models) are the defaults. A user's ``encoder=`` / ``decoder=`` /
``subnet=`` is turned into a module by :func:`make_network`, with one signature for every
estimator: a module instance (deep-copied) or a factory
``factory(in_features, out_features, n_conditions)``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn
from torch.func import jvp
from torch.nn import functional as F

__all__ = ["MLP", "ResidualMLP", "ConditionedNetwork", "activation_derivative", "make_network"]


def activation_derivative(activation: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Elementwise derivative ``act'(h)`` of an elementwise activation module.

    Closed forms for SiLU and tanh (the defaults); any other elementwise activation is
    differentiated by one forward-mode pass with a unit tangent.
    """
    if isinstance(activation, nn.SiLU):
        s = torch.sigmoid(h)
        return s * (1 + h * (1 - s))
    if isinstance(activation, nn.Tanh):
        return 1 - torch.tanh(h).pow(2)
    return jvp(activation, (h,), (torch.ones_like(h),))[1]


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

    def forward_with_tangents(
        self,
        x: torch.Tensor,
        c: torch.Tensor | None,
        tangents: torch.Tensor,
        *,
        tangent_grad: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``net(x, c)`` and the Jacobian-vector products ``J_net(x) t`` for ``K`` tangents.

        One pass carries the primal and all tangents layer by layer (a linear layer maps a
        tangent by its weight, an activation multiplies it by its derivative): about the
        cost of ``1 + K`` forward passes, where ``torch.func.jvp`` costs several times more
        on CPU, and ``K`` jvps would repeat the primal. The activation must be elementwise.

        Parameters
        ----------
        x : Tensor of shape (B, in_features)
        c : Tensor of shape (B, n_conditions) or None
            Conditions (their tangent is zero).
        tangents : Tensor of shape (K, B, in_features)
        tangent_grad : bool, default=True
            Record the tangent computation for autograd (as ``torch.func.jvp`` does).
            ``False`` computes the tangents without a graph while the primal output keeps
            its graph (the tangents are then constants, as in the volume-change surrogate).

        Returns
        -------
        out : Tensor of shape (B, out_features)
        jvps : Tensor of shape (K, B, out_features)
        """
        if self.n_conditions and c is None:
            raise ValueError("this network is conditional: pass c")
        c = c if self.n_conditions else None

        def const(t: torch.Tensor) -> torch.Tensor:
            return t if tangent_grad else t.detach()

        no_graph = nullcontext() if tangent_grad else torch.no_grad()
        n_in = x.shape[-1]
        h = self.inp(x if c is None else torch.cat([x, c], dim=-1))
        with no_graph:
            t = F.linear(tangents, const(self.inp.weight[:, :n_in]))
        for block in self.blocks:
            a = block.act1(h)
            with no_graph:
                ta = activation_derivative(block.act1, const(h)) * t
            width = a.shape[-1]
            u = block.lin1(a if c is None else torch.cat([a, c], dim=-1))
            with no_graph:
                tu = F.linear(ta, const(block.lin1.weight[:, :width]))
            s = block.act2(u)
            with no_graph:
                ts = activation_derivative(block.act2, const(u)) * tu
                t = t + F.linear(ts, const(block.lin2.weight))
            h = h + block.lin2(s)
        a = self.act(h)
        out = self.out(a)
        with no_graph:
            t = F.linear(activation_derivative(self.act, const(h)) * t, const(self.out.weight))
        if self.skip:
            return x + out, t + const(tangents)
        return out, t


class MLP(nn.Module):
    """Plain multi-layer perceptron ``Linear -> act -> ... -> Linear``.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    hidden_layer_sizes : sequence of int
        Widths of the hidden layers (empty: one linear layer).
    activation : type of torch.nn.Module, default=torch.nn.SiLU
        Activation between layers.
    zero_init : bool, default=False
        Initialise the last layer at zero (e.g. so that a coupling starts as the identity).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_layer_sizes: Sequence[int],
        *,
        activation: type[nn.Module] = nn.SiLU,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden_layer_sizes:
            layers += [nn.Linear(width, int(h)), activation()]
            width = int(h)
        last = nn.Linear(width, out_features)
        if zero_init:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


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
    n_conditions: int = 0,
    *,
    default: Callable[[], nn.Module] | None = None,
    wrap: bool = True,
) -> nn.Module:
    """Build a network from a user specification.

    Parameters
    ----------
    spec : None, torch.nn.Module or callable
        ``None`` builds ``default()``. A module instance is deep-copied (so refits start
        from the same weights). A callable (a module class or factory) is called as
        ``spec(in_features, out_features, n_conditions)``; a factory of two parameters is
        called as ``spec(in_features, out_features)``.
    in_features, out_features, n_conditions : int
        Widths.
    default : callable
        Builds the default network (already called as ``net(x, c)`` when ``wrap``).
    wrap : bool, default=True
        Wrap user modules in :class:`ConditionedNetwork` so they are called as
        ``net(x, c)``; ``False`` returns them as they are (called as ``net(x)``).

    Returns
    -------
    torch.nn.Module
    """
    if spec is None:
        if default is None:
            raise ValueError("no network given and no default to build")
        return default()
    if isinstance(spec, nn.Module):
        module = copy.deepcopy(spec)
    elif callable(spec):
        params = inspect.signature(spec).parameters.values()
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        takes_all = len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)
        args = (in_features, out_features, n_conditions) if takes_all else (
            in_features, out_features)
        module = spec(*args)
        if not isinstance(module, nn.Module):
            raise TypeError(f"the network factory returned {type(module).__name__}, not a Module")
    else:
        raise TypeError("a network must be None, a torch.nn.Module or a callable returning one")
    return ConditionedNetwork(module, n_conditions) if wrap else module
