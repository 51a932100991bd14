"""Sphinx configuration for skfff."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "skfff"
author = "skfff developers"
copyright = "2026, skfff developers"  # noqa: A001

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

autosummary_generate = True
autodoc_default_options = {
    "members": True,
    "inherited-members": False,
    # sklearn's metadata-routing setters: generated, documented in sklearn itself
    "exclude-members": "set_fit_request,set_score_request,set_transform_request,"
    "set_inverse_transform_request,set_predict_request,set_predict_proba_request,"
    "set_score_samples_request,set_sample_request,set_partial_fit_request",
}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
templates_path: list[str] = []
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py"]

html_theme = "pydata_sphinx_theme"
html_title = "skfff"

intersphinx_mapping: dict = {}

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "within_subsection_order": "FileNameSortKey",
}
# Don't fail the build on references that cannot be resolved offline.
nitpicky = False
# Inherited sklearn docstrings (e.g. ClassifierMixin.score) cite sklearn's own labels and
# glossary, which cannot resolve offline without intersphinx.
suppress_warnings = ["config.cache", "ref.ref", "ref.term"]
