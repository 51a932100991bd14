"""Shared fixtures: seeding, single-threaded torch, CUDA skipping."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed Python, NumPy and torch before every test so failures reproduce."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def assert_volume_preserving():
    """Checker for GIN flows: unit |det J| against ``slogdet`` and a zero reported log-det.

    ``check(flow, x)`` with ``x`` of shape (n, d) in float64; also asserts that the Jacobian
    is not a mere permutation (more than ``d`` entries above 1e-3 in every row's matrix).
    """

    def check(flow, x: torch.Tensor) -> None:
        d = x.shape[1]
        jac = torch.func.vmap(torch.func.jacrev(flow.encode))(x)
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert torch.all(sign != 0)
        assert logabsdet.abs().max() < 1e-10
        _, log_det = flow(x)
        assert log_det.abs().max() < 1e-12
        assert (jac.abs() > 1e-3).sum(dim=(1, 2)).min() > d

    return check


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
