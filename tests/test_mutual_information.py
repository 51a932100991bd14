"""The nearest-neighbour mutual information behind FreeFormFlow's ``beta_scale="auto"``."""

from __future__ import annotations

import numpy as np
import pytest

from skfff import FreeFormFlow
from skfff._mutual_information import mutual_information


@pytest.mark.parametrize("rho", [0.0, 0.6, 0.95])
def test_matches_the_gaussian_closed_form(rho):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 1))
    y = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal((4000, 1))
    truth = -0.5 * np.log(1 - rho**2)
    assert abs(mutual_information(x, y) - truth) < 0.05


def test_several_columns_add_up():
    # independent pairs (x_j, y_j): the information adds over the pairs
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 3))
    y = 0.9 * x + np.sqrt(1 - 0.81) * rng.standard_normal((4000, 3))
    assert abs(mutual_information(x, y) - 3 * -0.5 * np.log(1 - 0.81)) < 0.2


def test_class_labels_separated_and_independent():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 3000)
    one_hot = np.eye(4)[labels]
    apart = rng.standard_normal((3000, 2)) + 10.0 * labels[:, None]
    assert mutual_information(apart, one_hot, categorical=True) == pytest.approx(np.log(4),
                                                                                 abs=0.03)
    mixed = rng.standard_normal((3000, 2))
    assert mutual_information(mixed, one_hot, categorical=True) < 0.03


def test_deterministic_nonnegative_and_subsampled():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((300, 2)), rng.standard_normal((300, 1))
    first = mutual_information(x, y)
    assert first == mutual_information(x, y) and first >= 0.0
    # repeated rows (ties) are broken by the jitter, not counted as infinitely close
    assert np.isfinite(mutual_information(np.repeat(x, 3, 0), np.repeat(y, 3, 0)))
    big_x, big_y = rng.standard_normal((9000, 1)), rng.standard_normal((9000, 1))
    assert mutual_information(big_x, big_y, max_rows=2000) < 0.05
    assert mutual_information(x[:3], y[:3]) == 0.0


def test_flow_beta_scale_follows_the_information():
    rng = np.random.default_rng(4)
    y = rng.uniform(-2, 2, (600, 2))
    kw = dict(max_epochs=1, hidden_features=16, n_blocks=1, random_state=0)
    noisy = y + 0.01 * rng.standard_normal(y.shape)
    tight = FreeFormFlow(conditional="continuous", **kw).fit(noisy, y)
    assert tight.mutual_information_ > 3 and tight.beta_scale_ == 10.0
    assert tight.module_.beta == pytest.approx(100.0 * 10.0)
    loose = FreeFormFlow(conditional="continuous", **kw).fit(rng.standard_normal((600, 2)), y)
    assert loose.mutual_information_ < 0.2 and loose.beta_scale_ == 1.0
    plain = FreeFormFlow(**kw).fit(y)
    assert plain.beta_scale_ == 1.0 and plain.mutual_information_ is None
    fixed = FreeFormFlow(conditional="continuous", beta_scale=3.0, **kw).fit(y, y)
    assert fixed.beta_scale_ == 3.0 and fixed.mutual_information_ is None
    assert fixed.module_.beta == pytest.approx(300.0)
    with pytest.raises(ValueError, match="beta_scale"):
        FreeFormFlow(beta_scale=0.0).fit(y)


def test_posterior_estimator_defaults_only_for_continuous_conditions():
    # conditioned on numbers: width 256, 2 blocks, no off-data term and the whole schedule;
    # otherwise width 128, 3 blocks, off-data weight 0.1 and early stopping, as before
    rng = np.random.default_rng(5)
    X = rng.standard_normal((200, 2))
    kw = dict(max_epochs=2, random_state=0)

    def settings(flow):
        names = [name for name, _ in flow.net_.callbacks_]
        encoder = flow.module_.encoder
        return (encoder.inp.weight.shape[0], len(encoder.blocks),
                flow.module_.off_data_weight, "early_stopping" in names)

    posterior = FreeFormFlow(conditional="continuous", **kw).fit(X, X[:, :1])
    assert settings(posterior) == (256, 2, 0.0, False)
    labels = FreeFormFlow(conditional="categorical", **kw).fit(X, X[:, 0] > 0)
    assert settings(labels) == (128, 3, 0.1, True)
    plain = FreeFormFlow(**kw).fit(X)
    assert settings(plain) == (128, 3, 0.1, True)
    chosen = FreeFormFlow(conditional="continuous", hidden_features=32, n_blocks=1,
                          off_data_weight=0.5, early_stopping=True, **kw).fit(X, X[:, :1])
    assert settings(chosen) == (32, 1, 0.5, True)
    # the parameters keep "auto"; what was resolved is in the fitted networks
    assert posterior.get_params()["n_blocks"] == "auto"
    with pytest.raises(ValueError, match="off_data_weight"):
        FreeFormFlow(off_data_weight="large").fit(X)


def test_posterior_epochs_follow_the_steps_of_ten_thousand_simulations():
    # max_epochs="auto" of a posterior estimator: the density rule (300-1000 epochs for about
    # 8000 steps) up to 10^4 simulations, then about 10 800 steps (36 batches x 300 epochs);
    # the density rule itself stops growing at about 24 000 steps; both at least 30 epochs
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 2))
    posterior = FreeFormFlow(conditional="continuous", max_epochs="auto", hidden_features=8)
    posterior.set_params(max_epochs=1).fit(X, X[:, :1]).set_params(max_epochs="auto")
    density = FreeFormFlow(hidden_features=8, max_epochs=1).fit(X).set_params(max_epochs="auto")
    for rows, expected in [(900, 889), (9_000, 300), (45_000, 62), (90_000, 31),
                           (1_000_000, 30)]:
        assert posterior._epochs(rows) == expected
    for rows, expected in [(900, 889), (9_000, 300), (45_000, 137), (90_000, 69),
                           (1_000_000, 30)]:
        assert density._epochs(rows) == expected
    assert posterior.set_params(max_epochs=500)._epochs(90_000) == 500
