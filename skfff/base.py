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

The base owns ``fit`` and the loop; a subclass fills small hooks that are handed the data,
as in scikit-learn's ``mixture/_base.py``:

- :meth:`BaseTorchEstimator._fit_inputs` validates ``X`` (and ``y``) and returns the
  training arrays ``(X, C)``, ``C`` the conditions (or integer labels) or ``None``;
- :meth:`BaseTorchEstimator._build_module` builds the method's :class:`TrainingModule` (a
  ``torch.nn.Module`` with ``training_loss`` and ``validation_loss``) from those arrays;
- :meth:`BaseTorchEstimator._after_fit` (optional) computes what is learnt after training.

The shared training parameters live in :meth:`BaseTorchEstimator.__init__` (subclasses call
``super().__init__(...)``) and are documented once: a class docstring holding the line
``%(training_parameters)s`` gets their descriptions, with the subclass's own defaults.
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, LRScheduler
from skorch.dataset import Dataset, ValidSplit
from skorch.utils import to_tensor

from ._distributed import all_ranks, sharded_fit, shared_seed, training_loss
from ._docstrings import FRAGMENTS, splice_class
from ._torch.module import TrainingModule

__all__ = ["BaseTorchEstimator", "TrainingModule", "fit_scaling", "resolve_device"]

_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}

#: Named optimisers with a fused implementation (one kernel for all parameters): on CPU
#: 3x faster than the per-tensor loop for our networks (0.4 against 1.3 ms a step).
_FUSED = frozenset({"adam", "adamw"})
_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def _fused_optimizer_kwargs(name: Any, device: torch.device) -> dict[str, Any]:
    """``optimizer__fused=True`` for a named Adam(W) where torch fuses it (CUDA; CPU from
    torch 2.4), else nothing; a user's optimizer class is left as given."""
    if not isinstance(name, str) or name not in _FUSED:
        return {}
    if device.type == "cuda" or (device.type == "cpu" and _TORCH_VERSION >= (2, 4)):
        return {"optimizer__fused": True}
    return {}


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"`` (CUDA when available, else CPU) or a device spec into a device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was asked for, but CUDA is not available")
    return device


def _same_param(a: Any, b: Any) -> bool:
    """Whether two parameter values are the same (modules by identity)."""
    if a is b:
        return True
    if isinstance(a, torch.nn.Module) or isinstance(b, torch.nn.Module):
        return False
    try:
        return bool(np.all(np.asarray(a, dtype=object) == np.asarray(b, dtype=object)))
    except (TypeError, ValueError):
        return repr(a) == repr(b)


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


class _StopTraining(Exception):
    """Raised by our callbacks to end training (skorch stops on ``KeyboardInterrupt``)."""


class _EarlyStopping(EarlyStopping):
    """skorch's early stopping, ending training with :class:`_StopTraining`."""

    def on_epoch_end(self, net: NeuralNet, **kwargs: Any) -> None:
        try:
            super().on_epoch_end(net, **kwargs)
        except KeyboardInterrupt:
            raise _StopTraining from None

    def on_train_end(self, net: NeuralNet, **kwargs: Any) -> None:
        super().on_train_end(net, **kwargs)
        self.best_model_weights_ = None  # not pickled with the fitted estimator


class _OverfitGuard(Callback):
    """For a fit that trains its whole schedule: keep the final weights unless the monitored
    validation loss ended more than ``tolerance`` above its best, then restore the best
    epoch's weights and warn (the network overfitted its few rows)."""

    def __init__(self, monitor: str, tolerance: float, advice: str) -> None:
        self.monitor = monitor
        self.tolerance = tolerance
        self.advice = advice

    def initialize(self) -> _OverfitGuard:
        self.best_, self.best_epoch_, self.state_, self.warning_ = np.inf, 0, None, None
        return self

    def on_epoch_end(self, net: NeuralNet, **kwargs: Any) -> None:
        value = net.history[-1].get(self.monitor, np.nan)
        if value < self.best_:
            self.best_, self.best_epoch_ = float(value), len(net.history)
            self.state_ = {k: v.detach().clone() for k, v in net.module_.state_dict().items()}

    def on_train_end(self, net: NeuralNet, **kwargs: Any) -> None:
        final = net.history[-1].get(self.monitor, np.nan)
        if self.state_ is not None and not final <= self.best_ + self.tolerance:
            net.module_.load_state_dict(self.state_)
            net.history.record("restored_epoch", self.best_epoch_)
            # given by the estimator after the fit (warnings from inside skorch are muted)
            self.warning_ = (
                f"The validation {self.monitor.removeprefix('valid_')} rose from "
                f"{self.best_:.4g} (epoch {self.best_epoch_}) to {final:.4g} by the end of "
                f"training: the networks overfitted the training rows, and the weights of "
                f"epoch {self.best_epoch_} are kept. {self.advice}"
            )
        self.state_ = None  # not pickled with the fitted estimator


class _SurrogateNet(NeuralNet):
    """skorch net whose steps call the module's own training and validation losses.

    Unlike skorch, a user's ``KeyboardInterrupt`` stops the whole ``fit`` (after the
    callbacks' ``on_train_end``, which restores the best weights): it is re-raised, so an
    interrupted fit never looks fitted and ``GridSearchCV`` does not move on.
    """

    def partial_fit(self, X: Any, y: Any = None, **fit_params: Any) -> _SurrogateNet:
        if not self.initialized_:
            self.initialize()
        fit_params.pop("_routing_method", None)
        self.notify("on_train_begin", X=X, y=y)
        try:
            self.fit_loop(X, y, **fit_params)
        except _StopTraining:
            pass
        except KeyboardInterrupt:
            self.notify("on_train_end", X=X, y=y)
            raise
        self.notify("on_train_end", X=X, y=y)
        return self

    def _batch_tensors(self, batch: Any) -> dict[str, torch.Tensor]:
        Xi = batch[0] if isinstance(batch, (tuple, list)) else batch
        if torch.device(self.device).type != "cuda":
            return to_tensor(Xi, device=self.device)
        # pinned host memory lets the copy overlap with the work already queued on the GPU
        return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in Xi.items()}

    #: Gradient-norm clipping threshold applied in the training step (None: no clipping).
    max_grad_norm: float | None = None

    def train_step_single(self, batch: Any, **fit_params: Any) -> dict[str, Any]:
        self._set_training(True)
        loss = training_loss(self.module_)(**self._batch_tensors(batch))
        loss.backward()  # on every rank of a data-parallel fit, whatever the loss
        self.history.record_batch("nonfinite", self._clip_or_skip(loss))
        return {"loss": loss.detach(), "y_pred": None}

    def _clip_or_skip(self, loss: torch.Tensor) -> torch.Tensor:
        """Clip the gradients' norm, and keep a non-finite loss (or gradient) from reaching
        the weights; return the non-finite flag.

        One fused pass over the gradients gives their total norm, which both clips them (to
        ``max_grad_norm``) and detects a non-finite gradient. The decision is taken on the
        device and agreed by every data-parallel rank. On the CPU the step is then skipped
        outright (no gradient, so no optimiser update); on a GPU, where reading the flag
        would stall the host once per batch, the gradients are zeroed on the device instead
        (a momentum optimiser still takes its momentum step).
        """
        params = [p for p in self.module_.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        ok = torch.isfinite(loss.detach())
        if params:
            limit = math.inf if self.max_grad_norm is None else float(self.max_grad_norm)
            total = torch.nn.utils.clip_grad_norm_(params, limit, foreach=True)
            ok = ok & torch.isfinite(total)
        ok = all_ranks(ok)
        if loss.device.type == "cpu":
            if not ok:
                for p in self.module_.parameters():
                    p.grad = None
        else:
            for g in grads:
                g.masked_fill_(~ok, 0.0)
        return ~ok

    def validation_step(self, batch: Any, **fit_params: Any) -> dict[str, Any]:
        self._set_training(False)
        with torch.no_grad():
            out = self.module_.validation_loss(**self._batch_tensors(batch))
        if isinstance(out, dict):
            loss = out["loss"]
            for key, value in out.items():
                if key != "loss":  # read at the end of the epoch (run_single_epoch)
                    self.history.record_batch(f"valid_{key}", torch.as_tensor(value).detach())
        else:
            loss = out
        return {"loss": loss.detach(), "y_pred": None}

    def get_loss(self, *args: Any, **kwargs: Any) -> torch.Tensor:  # pragma: no cover
        raise RuntimeError("skfff nets compute their loss in the module")

    def run_single_epoch(
        self, iterator: Any, training: bool, prefix: str, step_fn: Callable, **fit_params: Any
    ) -> None:
        """skorch's pass over the batches, reading the losses back once per epoch.

        skorch reads each batch's loss with ``.item()``, which on a GPU makes the host wait
        for every batch; here the per-batch losses and flags stay tensors until the pass
        ends and are then copied to the history in one transfer.
        """
        if iterator is None:
            return
        rows = []
        for batch in iterator:
            self.notify("on_batch_begin", batch=batch, training=training)
            step = step_fn(batch, **fit_params)
            self.history.record_batch(f"{prefix}_loss", step["loss"])
            Xi = batch[0] if isinstance(batch, (tuple, list)) else batch
            self.history.record_batch(f"{prefix}_batch_size", len(next(iter(Xi.values()))))
            self.notify("on_batch_end", batch=batch, training=training, **step)
            rows.append(self.history[-1]["batches"][-1])
        self.history.record(f"{prefix}_batch_count", len(rows))
        pending = [(row, k, v) for row in rows for k, v in row.items() if torch.is_tensor(v)]
        if pending:
            device = pending[0][2].device
            values = torch.stack(
                [v.reshape(()).to(device, torch.float64) for _, _, v in pending]
            ).tolist()
            for (row, key, tensor), value in zip(pending, values, strict=True):
                row[key] = bool(value) if tensor.dtype == torch.bool else value


#: Training stops as diverged when more than this fraction of an epoch's batches had a
#: non-finite loss (they are skipped either way).
MAX_NONFINITE_FRACTION = 0.5


class _EpochMetrics(Callback):
    """Average extra per-batch validation metrics into the epoch row; count non-finite
    training batches (``n_nonfinite``) and stop as diverged when too many were."""

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
        n_bad = sum(bool(b.get("nonfinite", False)) for b in train)
        net.history.record("n_nonfinite", n_bad)
        if train and n_bad > MAX_NONFINITE_FRACTION * len(train):
            net.history.record("diverged", True)
            raise _StopTraining


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


#: The shared training parameters: (type, description). Defaults are read from each
#: subclass's ``__init__`` when the descriptions are spliced into its docstring.
_TRAINING_PARAMETERS: dict[str, tuple[str, str]] = {
    "lr": ("float", "Learning rate of the optimiser."),
    "max_epochs": (
        "int",
        "Maximum number of passes over the training data (the cosine schedule spans them).",
    ),
    "batch_size": (
        'int or "auto"',
        "Mini-batch size (capped at the number of training rows). ``\"auto\"``: an eighth of "
        "the training rows, between 32 and 256, so that small data sets still get enough "
        "optimiser steps.",
    ),
    "weight_decay": ("float", "Weight decay passed to the optimiser."),
    "optimizer": (
        '{"adam", "adamw", "sgd", "rmsprop"} or torch optimiser class',
        "Optimiser. The named Adam variants use torch's fused implementation on CUDA and "
        "(from torch 2.4) on CPU; a class is used as given.",
    ),
    "lr_schedule": (
        '{"cosine", "plateau", "constant"}',
        '``"cosine"`` anneals the learning rate to 1 % of ``lr`` over ``max_epochs``; '
        '``"plateau"`` halves it when the validation loss (the training loss without '
        "validation) has not improved for ``max(patience // 3, 1)`` epochs; "
        '``"constant"`` keeps it.',
    ),
    "max_grad_norm": ("float or None", "Gradient-norm clipping threshold (None: no clipping)."),
    "device": (
        '"auto", str or torch.device',
        '``"auto"`` trains on CUDA when available, else on the CPU.',
    ),
    "callbacks": (
        "list of skorch callbacks or None",
        "Extra skorch callbacks (copied at each fit).",
    ),
    "validation_fraction": (
        "float",
        "Fraction of the rows, drawn at random, held out to monitor the validation loss "
        "(the method's honest criterion, e.g. the exact negative log-likelihood). 0 disables "
        "validation.",
    ),
    "early_stopping": (
        "bool",
        "Stop when the validation loss has not improved for ``patience`` epochs and restore "
        "the best weights. Needs ``validation_fraction > 0``.",
    ),
    "patience": ("int", "Epochs without improvement before early stopping."),
    "random_state": (
        "int, RandomState instance or None",
        "Seeds weights, mini-batches, validation split and probe vectors.",
    ),
    "verbose": ("int", "0 silent, 1 a progress bar over epochs, 2 also skorch's per-epoch table."),
    "warm_start": (
        "bool",
        "Continue training the fitted network on the next ``fit`` instead of starting anew.",
    ),
}

def _training_parameters_doc(cls: type) -> str:
    """numpydoc entries of the shared parameters, with ``cls``'s defaults (and its
    ``_training_parameter_docs`` in place of the shared entries it rewrites)."""
    import textwrap

    params = inspect.signature(cls.__init__).parameters
    entries = {**_TRAINING_PARAMETERS, **getattr(cls, "_training_parameter_docs", {})}
    lines = []
    for name, (kind, text) in entries.items():
        default = params[name].default if name in params else None
        lines.append(f"{name} : {kind}, default={default!r}")
        lines += textwrap.wrap(text, 84, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


def _splice_docs(cls: type) -> None:
    """Fill the ``%(name)s`` marker lines of ``cls``'s docstrings (see :mod:`skfff._docstrings`)."""
    splice_class(cls, {**FRAGMENTS, "training_parameters": lambda: _training_parameters_doc(cls)})


def fit_scaling(X: np.ndarray, kind: str | None = "standard") -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of an inner standardisation ``(X - mean) / scale``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    kind : {"standard", "global"} or None, default="standard"
        ``"standard"``: per-column mean and standard deviation; ``"global"``: per-column
        mean and one common scale (the root mean squared deviation); ``None``: identity.
        Constant columns (standard deviation below ``1e-12`` times the mean's magnitude)
        keep scale 1.

    Returns
    -------
    mean, scale : ndarray of shape (n_features,)
    """
    n_features = X.shape[1]
    if kind is None:
        return np.zeros(n_features), np.ones(n_features)
    mean = X.mean(axis=0)
    if kind == "standard":
        std = X.std(axis=0)
        constant = std <= 1e-12 * np.maximum(np.abs(mean), np.finfo(np.float64).tiny)
        return mean, np.where(constant, 1.0, std)
    std = float(np.sqrt(((X - mean) ** 2).sum(axis=1).mean() / n_features))
    return mean, np.full(n_features, std if std > 1e-12 else 1.0)


class BaseTorchEstimator(BaseEstimator):
    """Base class for the torch-backed estimators (not for direct use).

    Subclasses list their own parameters and the shared training parameters in an explicit
    keyword-only ``__init__`` that calls ``super().__init__(...)`` with the shared ones, and
    implement the hooks :meth:`_fit_inputs` and :meth:`_build_module`.

    Parameters
    ----------
    %(training_parameters)s
    """

    def __init__(
        self,
        *,
        lr: float = 1e-3,
        max_epochs: int = 300,
        batch_size: int = 256,
        weight_decay: float = 0.0,
        optimizer: Any = "adam",
        lr_schedule: str = "cosine",
        max_grad_norm: float | None = 10.0,
        device: Any = "auto",
        callbacks: list | None = None,
        validation_fraction: float = 0.1,
        early_stopping: bool = True,
        patience: int = 30,
        random_state: Any = None,
        verbose: int = 0,
        warm_start: bool = False,
    ) -> None:
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.max_grad_norm = max_grad_norm
        self.device = device
        self.callbacks = callbacks
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.patience = patience
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _splice_docs(cls)

    #: ``max_epochs`` and ``patience`` of an estimator that offers ``"auto"`` for them
    #: (resolved in optimiser steps by :meth:`_epochs` and :meth:`_patience`).
    _AUTO_LENGTH_CONSTRAINTS: dict = {
        name: [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})]
        for name in ("max_epochs", "patience")
    }

    _parameter_constraints: dict = {
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
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
    def _fit_inputs(self, X: Any, y: Any, *, warm: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Validate the inputs of ``fit`` and return the training arrays ``(X, C)``.

        ``C`` holds per-row conditions (float) or class labels (integer), or is ``None``.
        ``warm`` is True when a warm start continues a fitted model (keep its
        preprocessing then). Subclass hook.
        """
        raise NotImplementedError

    def _build_module(self, X: np.ndarray, C: np.ndarray | None) -> TrainingModule:
        """Return a fresh, untrained :class:`TrainingModule` for the training arrays.

        ``X`` and ``C`` are the rows trained on: the validation rows of early stopping are
        left out, so that what the module fits to the data at build time (a prior, an input
        scaling) has not seen the rows it is judged on."""
        raise NotImplementedError

    def _after_fit(self, X: np.ndarray, C: np.ndarray | None, y: Any) -> None:
        """Compute what is learnt after training (optional subclass hook)."""

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None) -> BaseTorchEstimator:
        """Fit the model to ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,) or (n_samples, n_targets), default=None
            Class labels or conditioning variable where the estimator uses them (see the
            class docstring); ignored otherwise.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        X, C = self._fit_inputs(X, y, warm=self._warm())
        self._train(X, C)
        self._after_fit(X, C, y)
        return self

    def _warm(self) -> bool:
        """Whether this ``fit`` continues a fitted model (``warm_start``)."""
        return bool(self.warm_start) and hasattr(self, "net_")

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
        """Validate ``X`` with sklearn: 2-D, finite, numeric, at least 2 rows, in range."""
        kwargs.setdefault("ensure_min_samples", 2 if reset else 1)
        X = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], **kwargs)
        self._check_range(X)
        return X

    def _standardises_inputs(self) -> bool:
        """Whether inputs are standardised (in float64) before reaching the networks."""
        return False

    def _check_range(self, X: np.ndarray) -> None:
        """Refuse values the float32 networks cannot handle, saying what to do.

        Standardised inputs may span most of the float64 range; raw inputs must keep their
        squares (reconstruction errors) within float32.
        """
        if X.size == 0:
            return
        limit = 1e150 if self._standardises_inputs() else 1e15
        largest = float(np.max(np.abs(X)))
        if largest > limit:
            what = ("standardise the inputs (e.g. sklearn's StandardScaler)"
                    if not self._standardises_inputs() else "rescale the inputs")
            raise ValueError(
                f"X has values up to {largest:.3g}, beyond what {type(self).__name__} "
                f"trains on in float32 (|x| <= {limit:.0e}): {what}."
            )

    def _check_finite_scores(self, log_p: np.ndarray) -> np.ndarray:
        """Never return NaN or infinite log-densities silently."""
        bad = ~np.isfinite(log_p)
        if np.any(bad):
            raise FloatingPointError(
                f"{int(bad.sum())} of {len(log_p)} log-densities are not finite: the "
                "model's Jacobian is singular (or the points lie far outside the training "
                "data) there. Refit with a larger beta or more epochs, or check the inputs."
            )
        return log_p

    def _fit_scaled(self, X: np.ndarray, kind: str | None, *, warm: bool) -> np.ndarray:
        """Fit the inner standardisation (``mean_``, ``scale_``; kept on warm starts), apply it."""
        if not (warm and hasattr(self, "mean_")):
            self.mean_, self.scale_ = fit_scaling(X, kind)
            constant = np.flatnonzero(np.ptp(X, axis=0) == 0)
            if kind is not None and len(constant) and len(X) > 1:
                warnings.warn(
                    f"{len(constant)} column(s) of X are constant (first: {constant[0]}): a "
                    "density along them is unbounded, so log-likelihoods are not meaningful. "
                    "Drop them (e.g. sklearn's VarianceThreshold).",
                    UserWarning,
                    stacklevel=4,
                )
        return (X - self.mean_) / self.scale_

    def _scaled(self, X: Any) -> np.ndarray:
        """Validate new rows and standardise them as in ``fit``."""
        check_is_fitted(self)
        return (self._validate_X(X, reset=False) - self.mean_) / self.scale_

    def _validate_latent(self, Z: Any, width: int) -> np.ndarray:
        """Validate latent codes for ``inverse_transform``: 2-D, finite, ``width`` columns."""
        check_is_fitted(self)
        Z = check_array(Z, dtype=[np.float64, np.float32], input_name="Z")
        if Z.shape[1] != width:
            raise ValueError(
                f"Z has {Z.shape[1]} features, but {type(self).__name__} is expecting "
                f"{width} features as input"
            )
        return Z

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
        bs = batch_size or 1024
        out = []
        try:
            with torch.no_grad():
                for start in range(0, n, bs):
                    batch = [
                        None
                        if a is None
                        else a[start : start + bs].to(device, torch.float32)
                        if torch.is_tensor(a)
                        # a copy: torch refuses to wrap read-only arrays (pandas, memmaps)
                        else torch.from_numpy(np.array(a[start : start + bs], np.float32)).to(
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

    def _monitor(self, has_valid: bool) -> str:
        """The history key that early stopping and ``lr_schedule="plateau"`` watch.

        ``valid_loss`` (or ``train_loss`` without validation rows); a subclass that records
        its own per-epoch criterion (in a callback placed before early stopping) returns its
        key instead.
        """
        return "valid_loss" if has_valid else "train_loss"

    #: ``max_epochs="auto"`` (where a subclass accepts it): the epochs that give about
    #: :attr:`_AUTO_STEPS` optimiser steps, within :attr:`_AUTO_EPOCH_RANGE`, but no more
    #: than about :meth:`_auto_max_steps` steps (at least :attr:`_AUTO_MIN_EPOCHS` epochs),
    #: so that the time of a fit stops growing with the rows of a large data set.
    _AUTO_STEPS: int = 8000
    _AUTO_EPOCH_RANGE: tuple[int, int] = (300, 1000)
    _AUTO_MAX_STEPS: int = 24_000
    _AUTO_MIN_EPOCHS: int = 30
    #: ``patience="auto"``: about :attr:`_AUTO_PATIENCE_STEPS` optimiser steps without
    #: improvement, at least :attr:`_AUTO_MIN_PATIENCE` epochs.
    _AUTO_PATIENCE_STEPS: int = 1350
    _AUTO_MIN_PATIENCE: int = 50

    def _auto_max_steps(self) -> int:
        """The most optimiser steps ``max_epochs="auto"`` gives (a subclass may vary it)."""
        return self._AUTO_MAX_STEPS

    def _epochs(self, n_train_rows: int) -> int:
        """``max_epochs`` for ``n_train_rows`` training rows (``"auto"`` resolved).

        ``"auto"`` counts optimiser steps, not passes: ``ceil(_AUTO_STEPS / steps per
        epoch)`` clipped to :attr:`_AUTO_EPOCH_RANGE`, so small data sets, whose epochs
        are a few steps each, still train long enough; then at most
        ``ceil(_auto_max_steps() / steps per epoch)`` epochs (but :attr:`_AUTO_MIN_EPOCHS`),
        so large ones do not train for ever.
        """
        if self.max_epochs != "auto":
            return int(self.max_epochs)
        steps = self._steps_per_epoch(n_train_rows)
        low, high = self._AUTO_EPOCH_RANGE
        epochs = int(np.clip(math.ceil(self._AUTO_STEPS / steps), low, high))
        cap = max(self._AUTO_MIN_EPOCHS, math.ceil(self._auto_max_steps() / steps))
        return min(epochs, cap)

    def _steps_per_epoch(self, n_train_rows: int) -> int:
        """Optimiser steps in one pass over ``n_train_rows`` rows."""
        return math.ceil(n_train_rows / self._batch_size(n_train_rows))

    def _early_stopping(self) -> bool:
        """Whether this fit stops early (``early_stopping``; a subclass resolves ``"auto"``)."""
        return bool(self.early_stopping)

    def _patience(self, n_train_rows: int) -> int:
        """``patience`` for ``n_train_rows`` training rows. ``"auto"``: about
        :attr:`_AUTO_PATIENCE_STEPS` optimiser steps, counted in epochs, at least
        :attr:`_AUTO_MIN_PATIENCE` (a subclass varies the two constants)."""
        if self.patience != "auto":
            return int(self.patience)
        steps = self._steps_per_epoch(n_train_rows)
        return max(math.ceil(self._AUTO_PATIENCE_STEPS / steps), self._AUTO_MIN_PATIENCE)

    def _make_callbacks(self, n_train_rows: int, has_valid: bool) -> list[tuple[str, Callback]]:
        max_epochs = self._epochs(n_train_rows)
        patience = self._patience(n_train_rows)
        cbs: list[tuple[str, Callback]] = [("epoch_metrics", _EpochMetrics())]
        if self.lr_schedule == "plateau":
            cbs.append((
                "lr_schedule",
                LRScheduler(
                    policy="ReduceLROnPlateau",
                    monitor=self._monitor(has_valid),
                    factor=0.5,
                    patience=max(patience // 3, 1),
                    threshold=1e-3,
                    threshold_mode="abs",
                    min_lr=1e-3 * self.lr,
                ),
            ))
        elif self.lr_schedule == "cosine":
            cbs.append((
                "lr_schedule",
                LRScheduler(  # last_epoch=-1: a warm refit anneals anew over max_epochs
                    policy="CosineAnnealingLR", T_max=max_epochs, eta_min=0.01 * self.lr,
                    last_epoch=-1,
                ),
            ))
        if self._early_stopping() and has_valid:
            cbs.append((
                "early_stopping",
                _EarlyStopping(
                    monitor=self._monitor(has_valid),
                    patience=patience,
                    threshold=1e-3,
                    threshold_mode="abs",
                    load_best=True,
                    sink=_silent,
                ),
            ))
        if self.verbose:
            cbs.append(("progress", _ProgressBar(max_epochs, type(self).__name__)))
        for i, cb in enumerate(self.callbacks or []):
            name = cb[0] if isinstance(cb, tuple) else f"user_{i}"
            obj = cb[1] if isinstance(cb, tuple) else cb
            cbs.append((name, copy.deepcopy(obj)))
        return cbs

    # ------------------------------------------------------------- training
    def _train(self, X: np.ndarray, C: np.ndarray | None = None) -> None:
        """Train the module on ``X`` (and conditions ``C``) with the shared loop.

        Sets ``net_``, ``history_`` and ``n_iter_``. With ``warm_start=True`` and a fitted
        net of matching shape, training continues from the current weights. ``C`` holds
        float conditions or integer labels (kept as int64).
        """
        X = np.ascontiguousarray(X, dtype=np.float32)
        data: dict[str, np.ndarray] = {"x": X}
        n_conditions = 0
        if C is not None:
            integer = np.issubdtype(np.asarray(C).dtype, np.integer)
            data["c"] = np.ascontiguousarray(C, dtype=np.int64 if integer else np.float32)
            n_conditions = 1 if data["c"].ndim == 1 else data["c"].shape[1]
        n = X.shape[0]
        n_valid = math.ceil(self.validation_fraction * n) if self.validation_fraction else 0
        has_valid = 0 < n_valid < n
        warm = self._warm()
        previous = self.net_ if warm else None
        if warm:
            self._check_warm_start(X.shape[1], n_conditions)
        # a warm refit draws fresh batches and probes: the seed moves on with the epochs
        seed = (self._seed() + (len(previous.history) if warm else 0)) % np.iinfo(np.int32).max
        seed = shared_seed(seed)  # rank 0's in a data-parallel fit (skfff.data_parallel)
        device = resolve_device(self.device)
        fork_devices = []
        if device.type == "cuda":  # the generator of the device actually used
            fork_devices = [torch.cuda.current_device() if device.index is None else device.index]
        split = (ValidSplit(cv=n_valid / n, stratified=False, random_state=seed)
                 if has_valid else None)
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            # the hook sees the training rows only: a prior or scaling fitted to the data
            # must not have seen the rows that early stopping judges it on
            rows = split(X)[0].indices if has_valid else slice(None)
            module = self._build_module(X[rows], None if C is None else data["c"][rows])
            net = _SurrogateNet(
                module=module,
                criterion=_NoCriterion,
                optimizer=self._optimizer_class(),
                optimizer__weight_decay=self.weight_decay,
                **_fused_optimizer_kwargs(self.optimizer, device),
                lr=self.lr,
                max_epochs=self._epochs(n - n_valid),
                batch_size=self._batch_size(n - n_valid),
                iterator_train__shuffle=True,
                iterator_train__collate_fn=_batch_collate,
                iterator_valid__collate_fn=_batch_collate,
                dataset=_ArrayDataset,
                train_split=split,
                callbacks=self._make_callbacks(n - n_valid, has_valid),
                verbose=1 if self.verbose and self.verbose > 1 else 0,
                device=str(device),
            )
            net.max_grad_norm = self.max_grad_norm  # clipped in the training step
            net.initialize()
            if warm:
                self._continue_from(net, previous)
            with warnings.catch_warnings(), sharded_fit(net, seed):
                warnings.filterwarnings("ignore", category=UserWarning, module="skorch")
                net.partial_fit(data, None)
        self._lighten(net)
        self.net_ = net
        self._train_shape = (X.shape[1], n_conditions)
        self._fit_architecture = self._architecture()
        self.history_ = net.history
        self.n_iter_ = len(net.history)
        self._check_training(data, n_new_epochs=len(net.history) - (
            len(previous.history) if warm else 0))

    def _lighten(self, net: NeuralNet) -> None:
        """Keep what only training needs out of the fitted estimator (and its pickles):
        the module passed to skorch (a second reference to ``module_``), the LR
        scheduler's hold on the optimiser, and, unless ``warm_start`` asks for a resumable
        model, the optimiser's moments."""
        net.module = type(net.module_)
        for _, callback in net.callbacks_:
            if hasattr(callback, "lr_scheduler_"):
                callback.lr_scheduler_ = None
        if not self.warm_start:
            net.optimizer_.state.clear()

    def _batch_size(self, n_train: int) -> int:
        """The training batch size for ``n_train`` rows (``batch_size="auto"`` resolved)."""
        if self.batch_size == "auto":
            return min(int(np.clip(n_train // 8, 32, 256)), n_train)
        return min(self.batch_size, n_train)

    #: Parameters that shape the networks: a warm refit cannot change them.
    _architecture_params: tuple[str, ...] = ()

    def _architecture(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self._architecture_params}

    def _check_warm_start(self, n_features: int, n_conditions: int) -> None:
        """A warm refit must keep the data's shape and the architecture."""
        if self._train_shape != (n_features, n_conditions):
            raise ValueError(
                f"warm_start=True: the model was fitted on {self._train_shape[0]} features and "
                f"{self._train_shape[1]} condition columns, this fit has {n_features} and "
                f"{n_conditions}; refit with warm_start=False."
            )
        old, new = self._fit_architecture, self._architecture()
        changed = [p for p in old if not _same_param(old[p], new[p])]
        if changed:
            raise ValueError(
                f"warm_start=True cannot change the architecture: {', '.join(changed)} "
                "changed since the last fit; refit with warm_start=False."
            )

    def _continue_from(self, net: NeuralNet, previous: NeuralNet) -> None:
        """Start ``net`` (built with the current parameters) where ``previous`` ended: its
        weights, its optimiser moments (at the current ``lr``) and its history."""
        net.module_.load_state_dict(previous.module_.state_dict())
        if type(net.optimizer_) is type(previous.optimizer_):
            net.optimizer_.load_state_dict(previous.optimizer_.state_dict())
            for group in net.optimizer_.param_groups:
                group["lr"], group["weight_decay"] = self.lr, self.weight_decay
        net.history_ = previous.history_

    def _check_training(self, data: dict[str, np.ndarray], n_new_epochs: int) -> None:
        """Warn about skipped non-finite batches; raise a clear error on divergence.

        The kept weights are checked on the whole validation split (its loss is in the
        history), or on training rows when there is no validation split.
        """
        history = self.history_[-n_new_epochs:] if n_new_epochs else []
        skipped = sum(int(row.get("n_nonfinite", 0)) for row in history)
        advice = "Try a smaller lr, a max_grad_norm, or inputs on a smaller scale."
        if any(row.get("diverged", False) for row in history):
            raise FloatingPointError(
                f"{type(self).__name__} training diverged: more than "
                f"{MAX_NONFINITE_FRACTION:.0%} of an epoch's batches had a non-finite loss "
                f"(epoch {len(self.history_)}). The best weights so far are kept in net_. "
                + advice
            )
        if skipped:
            warnings.warn(
                f"{skipped} training batches had a non-finite loss and were skipped. " + advice,
                UserWarning,
                stacklevel=4,
            )
        for _, callback in self.net_.callbacks_:
            if isinstance(callback, _OverfitGuard) and callback.warning_:
                warnings.warn(callback.warning_, UserWarning, stacklevel=4)
        restored = history[-1].get("restored_epoch") if history else None
        if history and "valid_loss" in history[-1]:
            losses = [row["valid_loss"] for row in history]
            if self._early_stopping():
                kept = np.nanmin(losses)
            elif restored:  # the overfit guard brought an earlier epoch back
                kept = self.history_[restored - 1]["valid_loss"]
            else:
                kept = losses[-1]
        else:
            kept = self._mean_validation_loss({k: v[:4096] for k, v in data.items()})
        if not np.isfinite(kept):
            raise FloatingPointError(
                f"{type(self).__name__} training diverged: the validation loss of the kept "
                "weights is not finite. " + advice
            )

    def _mean_validation_loss(self, data: dict[str, np.ndarray]) -> float:
        """The module's validation loss on ``data``, averaged over batches."""
        module, device = self.module_, self._torch_device()
        module.eval()
        total, n = 0.0, data["x"].shape[0]
        with torch.no_grad():
            for start in range(0, n, 1024):
                batch = {k: v[start : start + 1024] for k, v in data.items()}
                out = module.validation_loss(**to_tensor(batch, device=device))
                loss = out["loss"] if isinstance(out, dict) else out
                total += float(loss) * batch["x"].shape[0]
        return total / n

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


_splice_docs(BaseTorchEstimator)
