"""The shared training machinery: splits, callbacks, early stopping, progress, divergence.

Warm start, seeding, persistence and devices are tested over every estimator in
test_common.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from skfff import FreeFormFlow
from skfff.base import BaseTorchEstimator, resolve_device

FAST = {"max_epochs": 4, "hidden_features": 16, "n_blocks": 1}


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_validation_rows_are_drawn_at_random():
    """Sorted data: a tail split would validate on the largest values only."""
    X = np.sort(np.random.default_rng(0).standard_normal((400, 1)), axis=0)
    flow = FreeFormFlow(**FAST, validation_fraction=0.25, random_state=0).fit(X)
    train_idx = flow.net_.train_split(np.arange(400))[1].indices
    assert len(train_idx) == 100
    assert np.min(train_idx) < 100 and np.max(train_idx) > 300


class _Recorder(Callback):
    def initialize(self):
        self.epochs_ = 0
        return self

    def on_epoch_end(self, net, **kwargs):
        self.epochs_ += 1


def test_user_callbacks_are_copied_and_run():
    rec = _Recorder()
    flow = FreeFormFlow(**FAST, callbacks=[("rec", rec)], random_state=0)
    flow.fit(np.random.default_rng(0).standard_normal((50, 2)))
    assert dict(flow.net_.callbacks_)["rec"].epochs_ == 4
    assert not hasattr(rec, "epochs_")  # the parameter itself is left untouched


def test_early_stopping_restores_best_weights():
    X = np.random.default_rng(0).standard_normal((300, 2))
    flow = FreeFormFlow(
        hidden_features=16, n_blocks=1, max_epochs=200, patience=3, lr=3e-2, random_state=0,
        check_normalization=False,  # score_samples is then the density validation measured
    ).fit(X)
    valid = np.asarray(flow.history_[:, "valid_loss"])
    assert flow.n_iter_ < 200  # stopped early
    Xv = X[flow.net_.train_split(np.arange(300))[1].indices]
    # the restored weights are those of the best epoch, not the last one
    best = int(np.argmin(valid))
    assert best < flow.n_iter_ - 1
    nll_best = flow.history_[best, "valid_nll"]
    assert -flow.score(Xv) == pytest.approx(nll_best + np.log(flow.scale_).sum(), abs=1e-3)


def test_verbose_shows_a_progress_bar(capsys):
    FreeFormFlow(**FAST, verbose=1, random_state=0).fit(np.random.rand(40, 2))
    err = capsys.readouterr().err
    assert "FreeFormFlow" in err and "epoch" in err and "4/4" in err


def test_silent_by_default(capsys):
    FreeFormFlow(**FAST, random_state=0).fit(np.random.rand(40, 2))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_diverging_fit_raises_clear_error():
    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.w * float("inf")

    with pytest.raises(FloatingPointError, match="diverged"):
        FreeFormFlow(
            encoder=Exploding(), decoder=Exploding(), max_epochs=3, validation_fraction=0.0
        ).fit(np.random.rand(30, 2))


def test_base_hook_must_be_implemented():
    with pytest.raises(NotImplementedError):
        BaseTorchEstimator()._build_module(2, 0)
