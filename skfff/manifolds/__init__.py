"""Riemannian manifolds for :class:`~skfff.ManifoldFreeFormFlow`.

Each manifold knows its projection from the embedding space, its tangent spaces,
its uniform distribution and total volume, and how user coordinates map to the
embedding. Everything is batched torch. :class:`KernelProposal` draws points for
importance-sampling estimates of integrals over a manifold (kernels on reference points,
mixed with the uniform distribution); :class:`KernelMixture` is a learnable mixture of von
Mises-Fisher kernels, fitted by EM with :func:`fit_kernel_mixture` (the flows' latent).
"""

from .base import Manifold
from .distributions import UniformDistribution
from .mixture import KernelMixture, fit_kernel_mixture
from .product import Product
from .proposal import Draw, KernelProposal
from .so3 import SpecialOrthogonal, quaternion_to_matrix
from .sphere import Sphere, latlon_to_unit, unit_to_latlon
from .torus import Torus

__all__ = [
    "Draw",
    "KernelMixture",
    "KernelProposal",
    "Manifold",
    "Product",
    "SpecialOrthogonal",
    "Sphere",
    "Torus",
    "UniformDistribution",
    "fit_kernel_mixture",
    "latlon_to_unit",
    "quaternion_to_matrix",
    "unit_to_latlon",
]
