"""skfff: free-form generative models behind the scikit-learn API.

Estimators
----------
FreeFormFlow
    Normalizing flow from any dimension-preserving network (density, sampling, latent codes).
ManifoldFreeFormFlow
    The same on spheres, tori, SO(3) and their products.
MLAutoencoder
    Maximum likelihood autoencoder: a density on a learnt low-dimensional manifold.
GINTransformer
    Volume-preserving flow for nonlinear ICA; finds the informative latent variables.
FermatDistance
    Density-based (Fermat) distances for clustering with precomputed metrics.
DirichletLatentClassifier
    Autoencoder with a Dirichlet latent space whose mixture weights classify.

Scaling out
-----------
data_parallel
    Context manager: fits inside it train one model across ``torchrun`` processes (DDP).
TorchThreads
    Dask worker plugin: torch's thread count from the worker's thread count.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_ESTIMATORS = {
    "FreeFormFlow": "flow",
    "ManifoldFreeFormFlow": "manifold_flow",
    "MLAutoencoder": "autoencoder",
    "GINTransformer": "gin",
    "FermatDistance": "fermat",
    "DirichletLatentClassifier": "dirichlet",
}

#: Public helpers for running across processes, loaded on use like the estimators.
_SCALING = {"data_parallel": "_distributed", "TorchThreads": "_distributed"}

__all__ = [*_ESTIMATORS, *_SCALING, "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import skfff` stays cheap and each estimator loads its own module on use.
    if name in _ESTIMATORS or name in _SCALING:
        module = importlib.import_module(f".{_ESTIMATORS.get(name) or _SCALING[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_ESTIMATORS, *_SCALING])
