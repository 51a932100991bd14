"""Conditioning on ``y``: how the flows turn labels or numbers into network inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_array

from .base import fit_scaling

__all__ = ["ConditionalMixin"]


class ConditionalMixin:
    """``conditional`` parameter handling shared by the flows.

    ``conditional=False`` ignores ``y`` (so the estimator can sit in a supervised
    pipeline); ``True`` infers the kind of ``y`` with ``type_of_target`` (binary or
    multiclass labels are one-hot encoded, anything else is standardised);
    ``"categorical"`` / ``"continuous"`` force the kind. Sets ``condition_kind_`` and
    ``classes_`` or ``y_mean_`` / ``y_scale_`` in fit.
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

    def _fit_conditions(self, y: Any, n_samples: int) -> np.ndarray | None:
        if self.conditional is False:
            return None
        if y is None:
            raise ValueError(
                f"{type(self).__name__}(conditional={self.conditional!r}) needs y in fit"
            )
        y = np.asarray(y)
        kind = self.conditional
        if kind is True:
            target = type_of_target(y)
            kind = "categorical" if target in ("binary", "multiclass") else "continuous"
        self.condition_kind_ = kind
        if kind == "categorical":
            y = check_array(y, ensure_2d=False, dtype=None)
            if y.ndim != 1:
                raise ValueError("categorical conditioning needs a 1-D y of labels")
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
            if len(self.classes_) < 2:
                raise ValueError("categorical conditioning needs at least 2 classes in y")
        else:
            y = check_array(y, ensure_2d=False, dtype=np.float64)
            y = y.reshape(len(y), -1)
            self.y_mean_, self.y_scale_ = fit_scaling(y, "standard")
        if len(y) != n_samples:
            raise ValueError(f"X has {n_samples} rows but y has {len(y)}")
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
        if self.condition_kind_ == "categorical":
            y = check_array(np.asarray(y).reshape(-1), ensure_2d=False, dtype=None)
            unknown = set(np.unique(y)) - set(self.classes_)
            if unknown:
                raise ValueError(f"y has labels not seen in fit: {sorted(unknown)[:5]}")
            c = self._label_binarizer.transform(y).astype(np.float32)
            if c.shape[1] == 1:  # binary: LabelBinarizer gives one column
                c = np.hstack([1 - c, c])
        else:
            y = check_array(y, ensure_2d=False, dtype=np.float64).reshape(np.shape(y)[0], -1)
            if y.shape[1] != self.y_mean_.shape[0]:
                raise ValueError(
                    f"y has {y.shape[1]} columns, the flow was fitted with {self.y_mean_.shape[0]}"
                )
            c = ((y - self.y_mean_) / self.y_scale_).astype(np.float32)
        if c.shape[0] == 1 and n_rows > 1:
            c = np.repeat(c, n_rows, axis=0)
        if c.shape[0] != n_rows:
            raise ValueError(f"y has {c.shape[0]} rows, expected 1 or {n_rows}")
        return c
