"""The package surface: public names, the demo command, shared estimator behaviour."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone

import skfff


def test_every_public_name_imports():
    for name in skfff.__all__:
        assert getattr(skfff, name) is not None
    with pytest.raises(AttributeError):
        skfff.NoSuchEstimator  # noqa: B018


@pytest.mark.parametrize("name", [n for n in skfff.__all__ if n != "__version__"])
def test_estimators_share_the_training_knobs(name):
    """Every torch-backed estimator exposes skorch's training names and clones cleanly."""
    est = getattr(skfff, name)()
    params = est.get_params()
    if name != "FermatDistance":  # wraps a density estimator instead of training a net
        for knob in ("lr", "max_epochs", "batch_size", "device", "callbacks", "random_state",
                     "verbose", "validation_fraction"):
            assert knob in params, f"{name} lacks {knob}"
    twin = clone(est)
    assert twin.get_params().keys() == params.keys()
    assert pickle.loads(pickle.dumps(est)).get_params().keys() == params.keys()


def test_demo_runs_and_writes_a_plot(tmp_path, capsys):
    from skfff.__main__ import main

    out = tmp_path / "demo.png"
    assert main(["demo", "--n-samples", "300", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    for model in ("FreeFormFlow", "KernelDensity", "GaussianMixture", "true density"):
        assert model in printed
    assert out.stat().st_size > 10_000
    # the printed log-likelihoods are finite numbers
    values = [float(line.split()[-3]) for line in printed.splitlines() if "FreeFormFlow " in line]
    assert values and np.isfinite(values).all()
