"""The package surface: public names, the demo command, shared estimator behaviour."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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


@given(value=st.one_of(st.integers(-3, 0), st.booleans(), st.floats(-2, 5),
                       st.text(max_size=2), st.none()))
@settings(max_examples=40, deadline=None)
def test_integer_arguments_are_checked_alike(value):
    """Every call-time integer argument rejects bools, floats, strings and values below its
    minimum with the same message (one check, ``skfff._checks.check_integer``)."""
    from skfff._checks import check_integer
    from skfff.datasets import make_jet_images, make_nonlinear_ica
    from skfff.manifolds import Sphere, Torus
    from skfff.manifolds.mixture import fit_kernel_mixture

    X = Sphere(2).random_uniform(20, generator=torch.Generator().manual_seed(0)).numpy()
    calls = [
        ("n_samples", lambda v: check_integer(v, "n_samples")),
        ("n_samples", lambda v: make_jet_images(v, image_size=4)),
        ("n_samples", lambda v: make_nonlinear_ica(v)),
        ("n_average", lambda v: fit_kernel_mixture(Sphere(2), X, n_average=v)),
        ("Sphere's intrinsic dimension n", Sphere),
        ("Torus's number of angles n", Torus),
    ]
    for name, call in calls:
        with pytest.raises(ValueError, match=f"{name} must be a positive integer, got"):
            call(value)
    assert check_integer(np.int64(3), "n") == 3 and type(check_integer(np.int64(3), "n")) is int
    with pytest.raises(ValueError, match="image_size must be an integer >= 2, got 1"):
        make_jet_images(10, image_size=1)
