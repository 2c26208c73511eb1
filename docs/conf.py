"""Sphinx configuration: the API reference of hyperoptax, built from its docstrings.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors;
``tests/test_docs.py`` runs exactly this).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import hyperoptax  # noqa: E402

project = "hyperoptax"
author = "The hyperoptax authors"
copyright = "2026, The hyperoptax authors"  # noqa: A001
release = hyperoptax.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# Google-style docstrings with RST math, as in Optax.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# `Attributes:` of the NamedTuple states become fields of the class, not separate
# objects (which would duplicate the namedtuple's own field descriptions).
napoleon_use_ivar = True
# Single backticks in the docstrings mean inline code.
default_role = "code"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"exclude-members": "__init__, __new__"}

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = f"hyperoptax {release}"
