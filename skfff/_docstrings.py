"""Docstring fragments shared by several public methods, written once.

A line of a docstring that holds only ``%(name)s`` is replaced by the fragment ``name``,
indented as the marker was (the way skorch and pandas share their parameter documentation).
:class:`~skfff.base.BaseTorchEstimator` splices the class docstring and those of the methods
each subclass defines; ``training_parameters`` is built per class, with its defaults.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

__all__ = ["FRAGMENTS", "splice", "splice_class"]

_POINTS = """\
Parameters
----------
X : array-like of shape (n_samples, n_features)
    Points."""

_CONDITIONS = """\
y : array-like, default=None
    Conditions (required for a conditional flow)."""

#: Fragments by name: numpydoc text without indentation.
FRAGMENTS: dict[str, str] = {
    "parameters_X": _POINTS,
    "parameters_X_y": f"{_POINTS}\n{_CONDITIONS}",
    "parameters_manifold_X_y": (
        "Parameters\n----------\nX : array-like of shape (n_samples, n_coordinates)\n"
        f"    Points on the manifold.\n{_CONDITIONS}"
    ),
    "parameters_counts": _POINTS.replace("Points.", "Non-negative rows."),
}

_MARKER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<name>\w+)\)s[ \t]*$", re.MULTILINE)


def splice(doc: str | None, fragments: Mapping[str, str | Callable[[], str]]) -> str | None:
    """Replace each marker line of ``doc`` by its fragment, indented like the marker.

    Parameters
    ----------
    doc : str or None
        A docstring.
    fragments : mapping of str to str or callable
        Fragment texts (or callables returning them, evaluated only when used).

    Returns
    -------
    str or None
        ``doc`` with the markers replaced; markers without a fragment are left as they are.
    """
    if not doc or "%(" not in doc:
        return doc

    def replace(match: re.Match) -> str:
        name, indent = match["name"], match["indent"]
        if name not in fragments:
            return match[0]
        text = fragments[name]
        text = text() if callable(text) else text
        return "\n".join(indent + line if line else line for line in text.splitlines())

    return _MARKER.sub(replace, doc)


def splice_class(cls: type, fragments: Mapping[str, str | Callable[[], str]]) -> None:
    """Splice the docstrings of ``cls`` and of the functions it defines, in place."""
    cls.__doc__ = splice(cls.__doc__, fragments)
    for value in vars(cls).values():
        if callable(value) and getattr(value, "__doc__", None):
            try:
                value.__doc__ = splice(value.__doc__, fragments)
            except AttributeError:  # read-only docstrings (builtins)
                pass
