"""Sphinx configuration for the recurnet / recurnet_hand documentation.

Build with warnings as errors, from the repository root::

    python -m sphinx -W -b html docs docs/_build/html

The gallery scripts in ``examples/`` are executed during the build (CPU only,
each under a minute). No network access is needed: intersphinx is off and
timm models are built with ``pretrained=False``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# The packages are importable without ``pip install -e .`` (a plain checkout builds the docs),
# and the local extensions live in docs/_ext.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import recurnet  # noqa: E402

# -- project ---------------------------------------------------------------------------

project = "recurnet"
author = "The recurnet authors"
copyright = "2024-2025, The recurnet authors"
version = recurnet.__version__
release = recurnet.__version__

# -- extensions --------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    # local, in docs/_ext
    "canonical_refs",
    "module_api",
    "results_include",
    "typer_cli",
]

# Markdown enters only through ``results-include`` (benchmark tables); pages are reST.
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path: list[str] = []

# -- autodoc / autosummary / napoleon -----------------------------------------------------

autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
# Tables only: each entry links to its autodoc entry (written by ``module-api``), so no
# stub pages are generated into the source tree.
autosummary_generate = False

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
# Section names our docstrings use besides napoleon's own.
napoleon_custom_sections = ["Shapes"]

# -- HTML ---------------------------------------------------------------------------------

html_title = f"recurnet {release}"
if importlib.util.find_spec("furo") is not None:
    html_theme = "furo"
else:  # the docs extra installs furo; alabaster ships with Sphinx
    html_theme = "alabaster"
html_show_sourcelink = False

# -- sphinx-gallery -----------------------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # Execute every plot_*.py; the other files of examples/ (if any) are only shown.
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "gallery_hooks.sort_key",
    "reset_modules": ("matplotlib", "gallery_hooks.reset_torch"),
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("recurnet", "recurnet_hand"),
    "download_all_examples": False,
    "remove_config_comments": True,
    "min_reported_time": 1,
    "show_memory": False,
}

# -- local extensions -----------------------------------------------------------------------

# Where ``.. results-include:: NAME.md`` looks for benchmark tables (relative to this folder).
results_dir = "../benchmarks/results"


# -- hooks ----------------------------------------------------------------------------------


def _skip_torch_inherited(app, what, name, obj, skip, options):
    """Hide methods that only inherit ``torch.nn.Module``'s docstring (``forward``, ``extra_repr``).

    A module's ``forward`` without its own docstring would otherwise be shown with
    PyTorch's generic "Define the computation performed at every call" text; the
    class docstring already says what the module computes.
    """
    import inspect

    import torch

    base = getattr(torch.nn.Module, name, None)
    if base is not None and callable(obj) and inspect.getdoc(obj) == inspect.getdoc(base):
        return True
    return skip


def setup(app):
    app.connect("autodoc-skip-member", _skip_torch_inherited)
