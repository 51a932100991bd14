"""Conditioning on ``y``: how the flows turn labels or numbers into network inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.validation import check_array

from .base import fit_scaling

__all__ = ["ConditionalMixin", "infer_condition_kind"]


#: With ``conditional=True``, integer-valued labels with at most this many distinct values
#: are categorical.
MAX_INFERRED_CLASSES = 20


def infer_condition_kind(y: np.ndarray) -> str:
    """The kind of ``y`` that ``conditional=True`` assumes.

    ``"categorical"`` for a 1-D (or one-column) ``y`` of strings, booleans or other
    non-numeric labels, or of integer values (integer dtype, or floats that are all
    integral) with at most :data:`MAX_INFERRED_CLASSES` distinct values;
    ``"continuous"`` for anything else (other floats, more distinct integers, several
    columns).
    """
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        return "continuous"
    if y.dtype.kind in "OUSb":
        return "categorical"
    if y.dtype.kind in "iu" or (y.dtype.kind == "f" and np.all(np.isfinite(y))
                               and np.all(y == np.round(y))):
        return "categorical" if len(np.unique(y)) <= MAX_INFERRED_CLASSES else "continuous"
    return "continuous"


class ConditionalMixin:
    """``conditional`` parameter handling shared by the flows.

    ``conditional=False`` ignores ``y`` (so the estimator can sit in a supervised
    pipeline); ``"categorical"`` one-hot encodes labels; ``"continuous"`` standardises
    numbers (one column or several); ``True`` infers the kind with
    :func:`infer_condition_kind`. Sets ``condition_kind_`` and ``classes_`` or ``y_mean_``
    / ``y_scale_`` in the first fit; a warm refit keeps them (the network's weights were
    learnt on that encoding).

    At prediction time a ``y`` is one row per sample or one row for all: a 1-D ``y`` of
    ``k > 1`` values, for a flow fitted on ``k`` continuous columns, is one observation.
    """

    conditional: bool | str

    def _y_if_conditional(self, y: Any) -> Any:
        """``y`` for a conditional estimator; ``None`` (y ignored) otherwise."""
        return y if self.conditional is not False else None

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood of ``X`` (given ``y`` when conditional).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points.
        y : array-like, default=None
            Conditions (required for a conditional estimator, ignored otherwise).

        Returns
        -------
        float
        """
        return float(np.mean(self.score_samples(X, self._y_if_conditional(y))))

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """Fit, then encode ``X`` (with ``y`` as condition when conditional).

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features)
        """
        self.fit(X, y, **fit_params)
        return self.transform(X, self._y_if_conditional(y))

    def _fit_conditions(self, y: Any, n_samples: int, *, warm: bool = False
                        ) -> np.ndarray | None:
        if self.conditional is False:
            return None
        if y is None:
            raise ValueError(
                f"{type(self).__name__}(conditional={self.conditional!r}) needs y in fit"
            )
        y = np.asarray(y)
        if y.ndim == 0 or len(y) != n_samples:
            raise ValueError(f"X has {n_samples} rows but y has shape {y.shape}")
        if warm and hasattr(self, "condition_kind_"):
            return self._conditions(y, n_samples)
        kind = infer_condition_kind(y) if self.conditional is True else self.conditional
        if kind == "categorical":
            if y.ndim == 2 and y.shape[1] == 1:
                y = y[:, 0]
            y = check_array(y, ensure_2d=False, dtype=None, input_name="y")
            if y.ndim != 1:
                raise ValueError(
                    f"categorical conditioning needs a 1-D y of labels, got shape {y.shape}"
                )
            binarizer = LabelBinarizer().fit(y)
            if len(binarizer.classes_) < 2:
                raise ValueError("categorical conditioning needs at least 2 classes in y")
            self._label_binarizer, self.classes_ = binarizer, binarizer.classes_
        else:
            try:
                y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
            except ValueError as err:
                raise ValueError(
                    f"continuous conditioning needs numeric y ({err}); for labels use "
                    "conditional='categorical'"
                ) from None
            self.y_mean_, self.y_scale_ = fit_scaling(y.reshape(len(y), -1), "standard")
        self.condition_kind_ = kind
        return self._conditions(y, n_samples)

    def _conditions(self, y: Any, n_rows: int) -> np.ndarray | None:
        """Encode ``y`` as the network's condition inputs (None when unconditional)."""
        if self.conditional is False:
            return None
        if y is None:
            raise ValueError(
                "this flow was fitted conditionally: pass y (one row per sample, or one "
                "row for all)"
            )
        y = np.asarray(y)
        if self.condition_kind_ == "categorical":
            y = check_array(y.reshape(-1), ensure_2d=False, dtype=None, input_name="y")
            unknown = set(np.unique(y)) - set(self.classes_)
            if unknown:
                raise ValueError(f"y has labels not seen in fit: {sorted(unknown)[:5]}")
            c = self._label_binarizer.transform(y).astype(np.float32)
            if c.shape[1] == 1:  # binary: LabelBinarizer gives one column
                c = np.hstack([1 - c, c])
        else:
            k = self.y_mean_.shape[0]
            if y.ndim == 0 or (y.ndim == 1 and k > 1 and y.shape[0] == k):
                y = y.reshape(1, -1)  # one observation for all rows
            y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
            y = y.reshape(y.shape[0], -1)
            if y.shape[1] != k:
                raise ValueError(f"y has {y.shape[1]} columns, the flow was fitted with {k}")
            c = ((y - self.y_mean_) / self.y_scale_).astype(np.float32)
        if c.shape[0] == 1 and n_rows > 1:
            c = np.repeat(c, n_rows, axis=0)
        if c.shape[0] != n_rows:
            raise ValueError(f"y has {c.shape[0]} rows, expected 1 or {n_rows}")
        return c
