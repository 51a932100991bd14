"""Fit semantics shared by every torch-backed estimator (issue 15): interrupts, warm
starts after ``set_params``, conditioning on ``y``, divergence, input range, pickles."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback

from skfff import FreeFormFlow, GINTransformer, ManifoldFreeFormFlow, MLAutoencoder
from skfff.datasets import make_vmf_mixture

SMALL = {"hidden_features": 16, "n_blocks": 1, "random_state": 0}


def _data(n=200, d=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


class _InterruptAt(Callback):
    """Simulates a user's Ctrl-C at the end of an epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) >= self.epoch:
            raise KeyboardInterrupt


class _RecordLR(Callback):
    """Records the learning rate at the start of every epoch."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_epoch_begin(self, net, **kwargs):
        self.lrs.append(net.optimizer_.param_groups[0]["lr"])


# ------------------------------------------------------------------ 1. Ctrl-C
def test_keyboard_interrupt_stops_fit_and_leaves_estimator_unfitted():
    flow = FreeFormFlow(max_epochs=20, callbacks=[_InterruptAt(2)], **SMALL)
    with pytest.raises(KeyboardInterrupt):
        flow.fit(_data())
    assert not hasattr(flow, "net_")


def test_keyboard_interrupt_stops_a_grid_search():
    search = GridSearchCV(
        FreeFormFlow(max_epochs=20, callbacks=[_InterruptAt(1)], **SMALL),
        {"beta": [10.0, 20.0]}, cv=2, error_score="raise",
    )
    with pytest.raises(KeyboardInterrupt):
        search.fit(_data())


def test_early_stopping_still_ends_training_normally():
    flow = FreeFormFlow(max_epochs=200, patience=2, lr=1e-6, **SMALL).fit(_data())
    assert flow.n_iter_ < 200


# ------------------------------------------------------- 2-3. warm start + set_params
def test_warm_refit_uses_current_parameters_and_continues():
    rec = _RecordLR()
    flow = FreeFormFlow(max_epochs=3, warm_start=True, early_stopping=False, callbacks=[rec],
                        **SMALL).fit(_data())
    w_before = [p.detach().clone() for p in flow.module_.parameters()]
    flow.set_params(max_epochs=4, lr=5e-3, beta=7.0)
    flow.fit(_data())
    lrs = dict(flow.net_.callbacks_)["user_0"].lrs
    assert flow.n_iter_ == 7 and len(flow.history_) == 7  # history continues
    assert flow.module_.beta == 7.0
    assert lrs[0] == pytest.approx(5e-3)  # the new learning rate, annealed anew ...
    assert lrs == sorted(lrs, reverse=True)  # ... and never climbing past T_max
    after = list(flow.module_.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(w_before, after, strict=True))


class _FirstBatch(Callback):
    """Keeps the first training batch of every fit."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def on_train_begin(self, net, **kwargs):
        self.seen = False

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training and not self.seen:
            self.batches.append(batch[0]["x"].clone())
            self.seen = True


def test_warm_refits_draw_fresh_batches():
    flow = FreeFormFlow(max_epochs=1, warm_start=True, batch_size=16, callbacks=[_FirstBatch()],
                        **SMALL)
    firsts = []
    for _ in range(2):
        flow.fit(_data())
        firsts.append(dict(flow.net_.callbacks_)["user_0"].batches[0])
    assert not torch.equal(firsts[0], firsts[1])


def test_warm_refit_refuses_architecture_changes():
    flow = FreeFormFlow(max_epochs=1, warm_start=True, **SMALL).fit(_data())
    with pytest.raises(ValueError, match="hidden_features"):
        flow.set_params(hidden_features=8).fit(_data())
    with pytest.raises(ValueError, match="features"):
        flow.set_params(hidden_features=16).fit(_data(d=3))


def test_warm_refit_keeps_the_condition_standardisation():
    X, y = _data(), np.random.default_rng(1).normal(size=200)
    flow = FreeFormFlow(max_epochs=1, warm_start=True, conditional="continuous", **SMALL)
    flow.fit(X, y)
    mean, scale = flow.y_mean_.copy(), flow.y_scale_.copy()
    flow.fit(X, 10 * y + 5)
    np.testing.assert_array_equal(flow.y_mean_, mean)
    np.testing.assert_array_equal(flow.y_scale_, scale)


# ------------------------------------------------------------------- 4. y handling
@pytest.fixture(scope="module")
def continuous_flow():
    X, y = _data(), np.random.default_rng(1).normal(size=(200, 3))
    return FreeFormFlow(max_epochs=2, conditional="continuous", **SMALL).fit(X, y)


def test_one_observation_as_1d_array_is_one_row_for_all(continuous_flow):
    x_o = np.array([0.1, -0.2, 0.3])
    a = continuous_flow.sample(5, y=x_o, random_state=0)
    b = continuous_flow.sample(5, y=x_o[None, :], random_state=0)
    np.testing.assert_array_equal(a, b)
    X = _data(4)
    np.testing.assert_array_equal(continuous_flow.score_samples(X, y=x_o),
                                  continuous_flow.score_samples(X, y=np.tile(x_o, (4, 1))))


def test_scalar_continuous_y_broadcasts():
    X, y = _data(), np.random.default_rng(1).normal(size=200)
    flow = FreeFormFlow(max_epochs=1, conditional="continuous", **SMALL).fit(X, y)
    assert flow.sample(3, y=0.5).shape == (3, 2)
    assert flow.score_samples(X[:3], y=0.5).shape == (3,)


def test_column_of_labels_is_accepted_as_categorical():
    X, y = _data(), np.random.default_rng(1).integers(0, 3, size=(200, 1))
    flow = FreeFormFlow(max_epochs=1, conditional="categorical", **SMALL).fit(X, y)
    assert flow.classes_.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="not seen in fit"):
        flow.score_samples(X[:2], y=[7, 7])


@pytest.mark.parametrize(
    ("y", "kind"),
    [
        (np.arange(200) % 3, "categorical"),
        (np.array(["a", "b"] * 100), "categorical"),
        (np.arange(200), "continuous"),  # integer-valued but many values: a quantity
        (np.linspace(0, 1, 200), "continuous"),
    ],
)
def test_conditional_true_rule(y, kind):
    flow = FreeFormFlow(max_epochs=1, conditional=True, **SMALL).fit(_data(), y)
    assert flow.condition_kind_ == kind


def test_bad_y_gives_clear_value_errors(continuous_flow):
    with pytest.raises(ValueError, match="columns"):
        continuous_flow.sample(2, y=[0.0, 1.0])
    with pytest.raises(ValueError, match="rows"):
        continuous_flow.score_samples(_data(4), y=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="numeric"):
        FreeFormFlow(max_epochs=1, conditional="continuous", **SMALL).fit(
            _data(), np.array(["a", "b"] * 100))
    with pytest.raises(ValueError, match="rows"):
        FreeFormFlow(max_epochs=1, conditional="continuous", **SMALL).fit(_data(), 1.0)


# ------------------------------------------------------------------- 5. divergence
class _Poisoned(torch.nn.Module):
    """Identity plus a linear layer whose output, in training mode, is NaN on rows with
    ``x_0 > threshold`` (a transient blow-up of some batches)."""

    def __init__(self, d: int, threshold: float) -> None:
        super().__init__()
        self.net = torch.nn.Linear(d, d)
        torch.nn.init.zeros_(self.net.weight)
        self.threshold = threshold

    def forward(self, x):
        out = x + self.net(x)
        if not self.training:
            return out
        return torch.where(x[:, :1] > self.threshold, torch.full_like(out, float("nan")), out)


def test_partly_nonfinite_epochs_are_counted_and_warned():
    X = _data(400)
    flow = FreeFormFlow(max_epochs=2, batch_size=32, encoder=lambda i, o, k: _Poisoned(i, 2.6),
                        validation_fraction=0.0, off_data_weight=0.0, **SMALL)
    with pytest.warns(UserWarning, match="non-finite loss and were skipped"):
        flow.fit(X)
    assert sum(flow.history_[:, "n_nonfinite"]) > 0


def test_divergence_stops_with_a_clear_error():
    flow = FreeFormFlow(max_epochs=5, encoder=lambda i, o, k: _Poisoned(i, -np.inf), **SMALL)
    with pytest.raises(FloatingPointError, match="diverged"):
        flow.fit(_data())
    assert len(flow.history_) == 1  # stopped at the first diverged epoch


# ------------------------------------------------------------- 6. huge or tiny values
def test_huge_values_are_refused_with_advice_before_training():
    X = _data() * 1e20
    with pytest.raises(ValueError, match="StandardScaler"):
        GINTransformer(max_epochs=1).fit(X, np.arange(200) % 2)
    with pytest.raises(ValueError, match="StandardScaler"):
        MLAutoencoder(n_components=1, scaling=None, max_epochs=1).fit(X)
    with pytest.raises(ValueError, match="rescale"):
        FreeFormFlow(max_epochs=1, **SMALL).fit(_data() * 1e200)


def test_standardising_estimators_handle_large_and_tiny_scales():
    for scale in (1e30, 1e-30):
        flow = FreeFormFlow(max_epochs=2, **SMALL).fit(_data() * scale)
        log_p = flow.score_samples(_data(5, seed=1) * scale)
        assert np.all(np.isfinite(log_p))
        # the density is per unit of X: it shifts by -D log(scale)
        assert np.mean(log_p) == pytest.approx(-2 * np.log(scale), abs=5.0)


def test_constant_column_warns():
    X = np.hstack([_data(), np.ones((200, 1))])
    with pytest.warns(UserWarning, match="constant"):
        FreeFormFlow(max_epochs=1, **SMALL).fit(X)


# --------------------------------------------------------------------------- 7. pandas
def test_manifold_flow_pandas_round_trip():
    pd = pytest.importorskip("pandas")
    X, _ = make_vmf_mixture(200, random_state=0)
    df = pd.DataFrame(X, columns=["x", "y", "z"])
    flow = ManifoldFreeFormFlow(max_epochs=2, hidden_features=16, n_blocks=1,
                                random_state=0).set_output(transform="pandas").fit(df)
    Z = flow.transform(df)
    assert list(Z.columns) == list(flow.get_feature_names_out())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = flow.inverse_transform(Z)
    np.testing.assert_allclose(np.asarray(back), X, atol=0.05)


# --------------------------------------------------------------------------- 9. pickles
def test_pickle_holds_the_weights_once_and_no_optimiser_state():
    flow = FreeFormFlow(max_epochs=2, random_state=0).fit(_data())
    n_bytes = 4 * sum(p.numel() for p in flow.module_.parameters())
    assert len(pickle.dumps(flow)) < 1.2 * n_bytes
    assert not flow.net_.optimizer_.state
    resumable = FreeFormFlow(max_epochs=2, random_state=0, warm_start=True).fit(_data())
    assert resumable.net_.optimizer_.state  # kept for the warm refit the user asked for


# ------------------------------------------------------------- bounded support (issue 17)
def test_sample_within_bounds_keeps_the_pairing_with_y():
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    X = np.column_stack([y + 0.1 * rng.normal(size=300), rng.normal(size=300)])
    flow = FreeFormFlow(max_epochs=12, batch_size=32, lr=5e-3, hidden_features=32, n_blocks=1,
                        validation_fraction=0.0, conditional="continuous",
                        random_state=0).fit(X, y)
    ys = np.repeat([-1.0, 1.0], 50)
    S = flow.sample(100, y=ys, random_state=0, bounds=([-3.0, -0.5], [3.0, np.inf]))
    assert S.shape == (100, 2) and np.all(S[:, 1] >= -0.5)
    # rejection redraws for the same condition: the first column still follows y
    assert S[:50, 0].mean() < -0.3 and S[50:, 0].mean() > 0.3
    with pytest.warns(UserWarning, match="inside the bounds"):
        flow.sample(20, y=0.0, random_state=0, bounds=([-np.inf, 1.8], np.inf))
    with pytest.raises(ValueError, match="low < high"):
        flow.sample(5, y=0.0, bounds=(1.0, 0.0))


# ---------------------------------------------------- 8. early stopping criteria agree
@pytest.mark.parametrize("name", ["FreeFormFlow", "ManifoldFreeFormFlow"])
def test_flows_early_stop_on_nll_plus_reconstruction(name):
    # the exact NLL alone picks epochs where g is not f^-1 (spurious densities): both flows
    # monitor the training objective with the exact log-density
    if name == "FreeFormFlow":
        est = FreeFormFlow(max_epochs=2, **SMALL).fit(_data())
        extra = 0.0
    else:
        X, _ = make_vmf_mixture(200, random_state=0)
        est = ManifoldFreeFormFlow(max_epochs=2, hidden_features=16, n_blocks=1,
                                   check_normalization=False, random_state=0).fit(X)
        extra = est.module_.uniform_weight * est.history_[-1, "valid_uniform_reconstruction"]
    row = est.history_[-1]
    expected = row["valid_nll"] + est.module_.beta * row["valid_reconstruction"] + extra
    assert row["valid_loss"] == pytest.approx(expected, rel=1e-4)
