"""The check of an integer argument passed to a method or a function.

Constructor parameters are checked by scikit-learn's ``_parameter_constraints``; this is for
the arguments checked at call time (``sample(n_samples)``, ``kneighbors(n_neighbors)``, the
dataset makers, the mixture fitter), so that one mistake gives one message everywhere.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["check_integer"]


def check_integer(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer (not a bool) of at least ``minimum``.

    Parameters
    ----------
    value : object
        The argument to check; Python and NumPy integers are accepted.
    name : str
        Its name, for the message.
    minimum : int, default=1
        The smallest value allowed.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If ``value`` is not an integer, is a bool, or is below ``minimum``.

    Examples
    --------
    >>> check_integer(3, "n_samples")
    3
    >>> check_integer(0, "n_samples")
    Traceback (most recent call last):
    ...
    ValueError: n_samples must be a positive integer, got 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}.")
    return int(value)
