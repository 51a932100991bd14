"""Shared sklearn-side machinery for every torch-backed skfff estimator.

:class:`BaseTorchEstimator` owns what the six estimators share: input validation, device
choice, seeding, float32 conversion, mini-batching and the training loop. The loop runs on
`skorch <https://skorch.readthedocs.io>`_: inside ``fit`` the estimator builds one
internal :class:`skorch.NeuralNet` whose train step runs the method's surrogate loss and
whose validation step computes the method's honest criterion (the exact negative
log-likelihood for the flows). The fitted net is kept as ``net_`` and its history as
``history_``; the estimator *holds* the net and does not inherit from it, so it keeps
sklearn's rules (``__init__`` stores parameters, ``clone`` works, ``check_estimator``
passes).

A subclass supplies one hook, :meth:`BaseTorchEstimator._build_module`, which returns a
:class:`TrainingModule`: a ``torch.nn.Module`` with ``training_loss`` and
``validation_loss`` methods.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, GradientNormClipping, LRScheduler
from skorch.dataset import Dataset, ValidSplit
from skorch.utils import to_tensor

from ._torch.module import TrainingModule

__all__ = ["BaseTorchEstimator", "TrainingModule", "resolve_device"]

_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"`` (CUDA when available, else CPU) or a device spec into a device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for, but CUDA is not available")
    return device


def _silent(*args: Any, **kwargs: Any) -> None:
    """A sink that prints nothing (picklable, unlike a lambda)."""


class _NoCriterion(torch.nn.Module):
    """Placeholder: the losses live in the :class:`TrainingModule`."""

    def forward(self, *args: Any) -> torch.Tensor:  # pragma: no cover - never called
        raise RuntimeError("skfff nets compute their loss in the module")


class _ArrayDataset(Dataset):
    """skorch dataset of a dict of arrays that hands out whole batches at once.

    ``__getitems__`` (used by torch's DataLoader for batched fetching) slices every array
    with the batch's indices instead of indexing and collating row by row.
    """

    def __getitems__(self, indices: list[int]) -> tuple[dict[str, torch.Tensor], None]:
        idx = np.asarray(indices)
        return {k: torch.from_numpy(v[idx]) for k, v in self.X.items()}, None


def _batch_collate(batch: Any) -> Any:
    """Batches from :class:`_ArrayDataset` are already collated."""
    return batch


class _SurrogateNet(NeuralNet):
    """skorch net whose steps call the module's own training and validation losses."""

    def _batch_tensors(self, batch: Any) -> dict[str, torch.Tensor]:
        Xi = batch[0] if isinstance(batch, (tuple, list)) else batch
        return to_tensor(Xi, device=self.device)

    def train_step_single(self, batch: Any, **fit_params: Any) -> dict[str, Any]:
        self._set_training(True)
        loss = self.module_.training_loss(**self._batch_tensors(batch))
        if torch.isfinite(loss):
            loss.backward()
        else:  # skip the update: a non-finite loss must not reach the weights
            self.history.record_batch("nonfinite", True)
        return {"loss": loss.detach(), "y_pred": None}

    def validation_step(self, batch: Any, **fit_params: Any) -> dict[str, Any]:
        self._set_training(False)
        with torch.no_grad():
            out = self.module_.validation_loss(**self._batch_tensors(batch))
        if isinstance(out, dict):
            loss = out["loss"]
            for key, value in out.items():
                if key != "loss":
                    self.history.record_batch(f"valid_{key}", float(value))
        else:
            loss = out
        return {"loss": loss.detach(), "y_pred": None}

    def get_loss(self, *args: Any, **kwargs: Any) -> torch.Tensor:  # pragma: no cover
        raise RuntimeError("skfff nets compute their loss in the module")


class _EpochMetrics(Callback):
    """Average extra per-batch validation metrics into the epoch row, and stop on NaN."""

    def on_epoch_end(self, net: NeuralNet, **kwargs: Any) -> None:
        row = net.history[-1]
        batches = row["batches"]
        valid = [b for b in batches if "valid_batch_size" in b]
        keys = {k for b in valid for k in b if k.startswith("valid_") and k not in (
            "valid_loss", "valid_batch_size")}
        for key in keys:
            sizes = np.array([b["valid_batch_size"] for b in valid], dtype=float)
            vals = np.array([b[key] for b in valid], dtype=float)
            net.history.record(key, float(np.sum(vals * sizes) / np.sum(sizes)))
        train = [b for b in batches if "train_loss" in b]
        if train and all(b.get("nonfinite", False) for b in train):
            net.history.record("diverged", True)
            raise KeyboardInterrupt  # skorch's way to stop training cleanly


class _ProgressBar(Callback):
    """One tqdm bar over epochs, showing the latest losses."""

    def __init__(self, total: int, desc: str) -> None:
        self.total = total
        self.desc = desc

    def on_train_begin(self, net: NeuralNet, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        self.bar_ = tqdm(total=self.total, desc=self.desc, unit="epoch", leave=True)

    def on_epoch_end(self, net: NeuralNet, **kwargs: Any) -> None:
        row = net.history[-1]
        post = {k: f"{row[k]:.4g}" for k in ("train_loss", "valid_loss") if k in row}
        self.bar_.set_postfix(post, refresh=False)
        self.bar_.update(1)

    def on_train_end(self, net: NeuralNet, **kwargs: Any) -> None:
        self.bar_.close()


class BaseTorchEstimator(BaseEstimator):
    """Base class for the torch-backed estimators (not for direct use).

    Subclasses list their own parameters and the shared training parameters below in an
    explicit keyword-only ``__init__``, and implement :meth:`_build_module`.

    Shared parameters
    -----------------
    lr : float
        Learning rate of the optimiser.
    max_epochs : int
        Maximum number of passes over the training data.
    batch_size : int
        Mini-batch size (capped at the number of training rows).
    weight_decay : float
        Weight decay passed to the optimiser.
    optimizer : {"adam", "adamw", "sgd", "rmsprop"} or torch optimiser class
        Optimiser.
    lr_schedule : {"plateau", "cosine", "constant"}
        ``"plateau"`` halves the learning rate when the validation loss (the training loss
        without validation) has not improved for ``max(patience // 3, 1)`` epochs;
        ``"cosine"`` anneals it to 1 % of ``lr`` over ``max_epochs``.
    max_grad_norm : float or None
        Gradient-norm clipping threshold.
    device : "auto", str or torch.device
        ``"auto"`` trains on CUDA when available, else on the CPU.
    callbacks : list of skorch callbacks or None
        Extra skorch callbacks (copied at each fit).
    validation_fraction : float
        Fraction of the rows, drawn at random, held out to monitor the validation loss
        (the exact negative log-likelihood for the flows). 0 disables validation.
    early_stopping : bool
        Stop when the validation loss has not improved for ``patience`` epochs and restore
        the best weights. Needs ``validation_fraction > 0``.
    patience : int
        Epochs without improvement before stopping.
    random_state : int, RandomState instance or None
        Seeds weights, mini-batches, validation split and probe vectors.
    verbose : int
        0 silent, 1 a progress bar over epochs, 2 also skorch's per-epoch table.
    warm_start : bool
        Continue training the fitted network on the next ``fit`` instead of starting anew.
    """

    _parameter_constraints: dict = {
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "optimizer": [StrOptions(set(_OPTIMIZERS)), type],
        "lr_schedule": [StrOptions({"plateau", "cosine", "constant"})],
        "max_grad_norm": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "device": [str, torch.device],
        "callbacks": [list, None],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
        "early_stopping": ["boolean"],
        "patience": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
    }

    # ------------------------------------------------------------------ hooks
    def _build_module(self, n_features: int, n_conditions: int) -> TrainingModule:
        """Return a fresh, untrained :class:`TrainingModule` (subclass hook)."""
        raise NotImplementedError

    # ------------------------------------------------------------ utilities
    @property
    def module_(self) -> TrainingModule:
        """The trained :class:`TrainingModule` (``net_.module_``)."""
        check_is_fitted(self, "net_")
        return self.net_.module_

    def _torch_device(self) -> torch.device:
        if hasattr(self, "net_"):
            return torch.device(self.net_.device)
        return resolve_device(self.device)

    def _validate_X(self, X: Any, *, reset: bool, **kwargs: Any) -> np.ndarray:
        """Validate ``X`` with sklearn: 2-D, finite, numeric, at least 2 rows."""
        kwargs.setdefault("ensure_min_samples", 2 if reset else 1)
        return validate_data(
            self, X, reset=reset, dtype=[np.float64, np.float32], **kwargs
        )

    def _seed(self, random_state: Any = None) -> int:
        rs = self.random_state if random_state is None else random_state
        return int(check_random_state(rs).randint(np.iinfo(np.int32).max))

    def _randn(self, shape: Sequence[int], random_state: Any = None) -> torch.Tensor:
        """Standard normal float32 tensor on the device, reproducible from ``random_state``.

        Drawn with NumPy so the same seed gives the same numbers on every device.
        """
        rng = check_random_state(random_state)
        arr = rng.standard_normal(size=tuple(shape)).astype(np.float32)
        return torch.from_numpy(arr).to(self._torch_device())

    def _map_batches(
        self,
        fn: Callable[..., torch.Tensor],
        *arrays: np.ndarray | torch.Tensor | None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Apply ``fn`` to float32 batches on the device (eval mode, no grad).

        ``None`` entries in ``arrays`` are passed through as ``None``. Returns a float64
        NumPy array concatenated along the first axis.
        """
        module = self.module_
        device = self._torch_device()
        was_training = module.training
        module.eval()
        first = next(a for a in arrays if a is not None)
        n = first.shape[0]
        bs = batch_size or max(self.batch_size, 1024)
        out = []
        try:
            with torch.no_grad():
                for start in range(0, n, bs):
                    batch = [
                        None
                        if a is None
                        else torch.as_tensor(a[start : start + bs], dtype=torch.float32).to(
                            device
                        )
                        for a in arrays
                    ]
                    out.append(fn(*batch).detach().cpu().double().numpy())
        finally:
            module.train(was_training)
        if not out:
            return np.empty((0,), dtype=np.float64)
        return np.concatenate(out, axis=0)

    def _optimizer_class(self) -> type[torch.optim.Optimizer]:
        if isinstance(self.optimizer, str):
            return _OPTIMIZERS[self.optimizer]
        return self.optimizer

    def _make_callbacks(self, n_train_rows: int, has_valid: bool) -> list[tuple[str, Callback]]:
        cbs: list[tuple[str, Callback]] = [("epoch_metrics", _EpochMetrics())]
        if self.max_grad_norm is not None:
            cbs.append(("clip", GradientNormClipping(gradient_clip_value=self.max_grad_norm)))
        if self.lr_schedule == "plateau":
            cbs.append((
                "lr_schedule",
                LRScheduler(
                    policy="ReduceLROnPlateau",
                    monitor="valid_loss" if has_valid else "train_loss",
                    factor=0.5,
                    patience=max(self.patience // 3, 1),
                    threshold=1e-3,
                    threshold_mode="abs",
                    min_lr=1e-3 * self.lr,
                ),
            ))
        elif self.lr_schedule == "cosine":
            cbs.append((
                "lr_schedule",
                LRScheduler(
                    policy="CosineAnnealingLR", T_max=self.max_epochs, eta_min=0.01 * self.lr
                ),
            ))
        if self.early_stopping and has_valid:
            cbs.append((
                "early_stopping",
                EarlyStopping(
                    monitor="valid_loss",
                    patience=self.patience,
                    threshold=1e-3,
                    threshold_mode="abs",
                    load_best=True,
                    sink=_silent,
                ),
            ))
        if self.verbose:
            cbs.append(("progress", _ProgressBar(self.max_epochs, type(self).__name__)))
        for i, cb in enumerate(self.callbacks or []):
            name = cb[0] if isinstance(cb, tuple) else f"user_{i}"
            obj = cb[1] if isinstance(cb, tuple) else cb
            cbs.append((name, copy.deepcopy(obj)))
        return cbs

    # ------------------------------------------------------------- training
    def _train(self, X: np.ndarray, C: np.ndarray | None = None) -> None:
        """Train the module on ``X`` (and conditions ``C``) with the shared loop.

        Sets ``net_``, ``history_`` and ``n_iter_``. With ``warm_start=True`` and a fitted
        net of matching shape, training continues from the current weights.
        """
        X = np.ascontiguousarray(X, dtype=np.float32)
        data: dict[str, np.ndarray] = {"x": X}
        n_conditions = 0
        if C is not None:
            data["c"] = np.ascontiguousarray(C, dtype=np.float32)
            n_conditions = data["c"].shape[1]
        n = X.shape[0]
        n_valid = math.ceil(self.validation_fraction * n) if self.validation_fraction else 0
        has_valid = 0 < n_valid < n
        seed = self._seed()
        device = resolve_device(self.device)
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            warm = (
                self.warm_start
                and hasattr(self, "net_")
                and getattr(self, "_train_shape", None) == (X.shape[1], n_conditions)
            )
            if warm:
                net = self.net_
            else:
                module = self._build_module(X.shape[1], n_conditions)
                net = _SurrogateNet(
                    module=module,
                    criterion=_NoCriterion,
                    optimizer=self._optimizer_class(),
                    optimizer__weight_decay=self.weight_decay,
                    lr=self.lr,
                    max_epochs=self.max_epochs,
                    batch_size=min(self.batch_size, n - n_valid),
                    iterator_train__shuffle=True,
                    iterator_train__collate_fn=_batch_collate,
                    iterator_valid__collate_fn=_batch_collate,
                    dataset=_ArrayDataset,
                    train_split=(
                        ValidSplit(cv=n_valid / n, stratified=False, random_state=seed)
                        if has_valid
                        else None
                    ),
                    callbacks=self._make_callbacks(n - n_valid, has_valid),
                    verbose=1 if self.verbose and self.verbose > 1 else 0,
                    device=str(device),
                )
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=UserWarning, module="skorch")
                net.partial_fit(data, None) if warm else net.fit(data, None)
        self.net_ = net
        self._train_shape = (X.shape[1], n_conditions)
        self.history_ = net.history
        self.n_iter_ = len(net.history)
        self._check_finite_after_training(data)

    def _check_finite_after_training(self, data: dict[str, np.ndarray]) -> None:
        """Raise a clear error when training diverged and nothing usable is left."""
        idx = slice(0, min(256, data["x"].shape[0]))
        batch = {k: v[idx] for k, v in data.items()}
        module = self.module_
        module.eval()
        with torch.no_grad():
            out = module.validation_loss(**to_tensor(batch, device=self._torch_device()))
        loss = out["loss"] if isinstance(out, dict) else out
        if not torch.isfinite(loss):
            del self.net_
            raise FloatingPointError(
                f"{type(self).__name__} training diverged: the loss became non-finite and no "
                "finite checkpoint was left. Try a smaller lr, a larger beta, or "
                "standardised inputs."
            )

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags
