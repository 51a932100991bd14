"""The package surface: public names, the demo command, shared estimator behaviour."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator, clone

import skfff

ESTIMATORS = [
    name for name in skfff.__all__
    if isinstance(getattr(skfff, name), type) and issubclass(getattr(skfff, name), BaseEstimator)
]


def test_every_public_name_imports():
    for name in skfff.__all__:
        assert getattr(skfff, name) is not None
    with pytest.raises(AttributeError):
        skfff.NoSuchEstimator  # noqa: B018


def test_the_six_estimators_are_public():
    assert sorted(ESTIMATORS) == sorted([
        "FreeFormFlow", "ManifoldFreeFormFlow", "MLAutoencoder", "GINTransformer",
        "FermatDistance", "DirichletLatentClassifier",
    ])


@pytest.mark.parametrize("name", ESTIMATORS)
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


def test_demo_flow_beats_a_single_gaussian(tmp_path, capsys):
    """A short demo run: its table of held-out log-likelihoods is right, and the flow learns."""
    from sklearn.mixture import GaussianMixture

    from skfff.__main__ import main
    from skfff.datasets import make_gaussian_mixture_2d

    out = tmp_path / "demo.png"
    argv = ["demo", "--n-samples", "1000", "--max-epochs", "40", "--output", str(out)]
    assert main(argv) == 0
    table = {}  # model -> (log-lik, gap) as printed
    for line in capsys.readouterr().out.splitlines():
        name, _, numbers = line.partition("  ")
        fields = numbers.split()
        if name in ("true density", "FreeFormFlow", "KernelDensity (CV bandwidth)",
                    "GaussianMixture (BIC)"):
            table[name] = (float(fields[0]), float(fields[1]))
    assert len(table) == 4
    assert np.isfinite(list(table.values())).all()
    truth = table["true density"][0]
    for value, gap in table.values():
        assert gap == pytest.approx(truth - value, abs=2e-3)
    # the demo's data: 1000 training points (seed 0), 5000 held-out ones (seed 1)
    X, _ = make_gaussian_mixture_2d(1000, random_state=0)
    X_test, _ = make_gaussian_mixture_2d(5000, random_state=1)
    single = GaussianMixture(1).fit(X).score(X_test)
    flow = table["FreeFormFlow"][0]
    assert single + 0.3 < flow < truth + 0.05  # learnt the modes; no better than the truth
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
