"""Where FermatDistance's torch work runs, and keeping CUDA tensors out of pickles.

The relaxation guide (surrogate or score model) is trained and used on the density's device,
so a density fitted on a GPU gets its paths relaxed there. A fitted estimator travels to
joblib workers, Dask workers or disk by pickling: its torch modules are moved to the CPU in
the pickle, so no worker ever receives a CUDA model, and a pickle made on a GPU machine
loads on one without.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["density_device", "modules_to_cpu"]


def density_device(density: Any) -> torch.device:
    """Device of a fitted density's torch module (``module_``), else the CPU.

    Parameters
    ----------
    density : estimator
        A fitted density; skfff estimators keep their torch model as ``module_``.

    Returns
    -------
    torch.device
    """
    module = getattr(density, "module_", None)
    if isinstance(module, nn.Module):
        for tensor in module.parameters():
            return tensor.device
        for tensor in module.buffers():
            return tensor.device
    return torch.device("cpu")


def modules_to_cpu(state: dict[str, Any]) -> dict[str, Any]:
    """Copy of an estimator's ``__dict__`` with every torch module and device on the CPU."""
    out = dict(state)
    for key, value in state.items():
        if isinstance(value, nn.Module):
            out[key] = _cpu_copy(value)
        elif isinstance(value, torch.device) and value.type != "cpu":
            out[key] = torch.device("cpu")
    return out


def _cpu_copy(module: nn.Module) -> nn.Module:
    if all(t.device.type == "cpu" for t in list(module.parameters()) + list(module.buffers())):
        return module
    import copy

    return copy.deepcopy(module).to("cpu")
