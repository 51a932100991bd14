"""Riemannian manifolds for :class:`~skfff.ManifoldFreeFormFlow`.

Each manifold knows its projection from the embedding space, its tangent spaces,
its uniform distribution and total volume, and how user coordinates map to the
embedding. Everything is batched torch. :class:`KernelProposal` draws points for
importance-sampling estimates of integrals over a manifold (kernels on reference points,
mixed with the uniform distribution).
"""

from .base import Manifold
from .distributions import UniformDistribution, VonMisesFisherMixture
from .product import Product
from .proposal import Draw, KernelProposal
from .so3 import SpecialOrthogonal, quaternion_to_matrix
from .sphere import Sphere, latlon_to_unit, unit_to_latlon
from .torus import Torus

__all__ = [
    "Draw",
    "KernelProposal",
    "Manifold",
    "Product",
    "SpecialOrthogonal",
    "Sphere",
    "Torus",
    "UniformDistribution",
    "VonMisesFisherMixture",
    "latlon_to_unit",
    "quaternion_to_matrix",
    "unit_to_latlon",
]
