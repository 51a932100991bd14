"""Data generators for examples, tests and benchmarks.

Everything here is generated on the fly: skfff never downloads data.
"""

from ._ica import make_nonlinear_ica
from ._jets import make_jet_images
from ._manifold import (
    make_rotation_mixture,
    make_torus_wrapped_normal_mixture,
    make_vmf_mixture,
)
from ._toy import make_gaussian_mixture_2d, make_nonlinear_gaussian

__all__ = [
    "make_gaussian_mixture_2d",
    "make_jet_images",
    "make_nonlinear_gaussian",
    "make_nonlinear_ica",
    "make_rotation_mixture",
    "make_torus_wrapped_normal_mixture",
    "make_vmf_mixture",
]
