"""Sphinx configuration. The build runs with -W: every warning is an error."""

from __future__ import annotations

from shardbill import __version__

project = "shardbill"
author = "The shardbill developers"
copyright = "2026, The shardbill developers"  # noqa: A001 - Sphinx reads this name
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False
html_theme = "alabaster"
html_title = f"shardbill {__version__}"
