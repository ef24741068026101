"""Sphinx configuration of bpjax's documentation: ``sphinx-build -W docs docs/_build/html``.

The API reference is written from the docstrings (autodoc, Google style through napoleon), the guides
are Markdown (myst-parser), and the gallery's pages are made at build time from the committed
``docs/results/*.json`` and ``docs/figures/*.png`` (``_ext/gallery.py``): nothing trains here.
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # bpjax and experiments/ from this checkout, installed or not
sys.path.insert(0, str(DOCS / "_ext"))

import external_links  # noqa: E402

import bpjax  # noqa: E402

project = "bpjax"
author = "The bpjax developers"
copyright = "the bpjax developers, Apache 2.0"
release = version = bpjax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "myst_parser",
    "api_names",
    "docstring_fixes",
    "external_links",
    "gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "results", "figures"]
root_doc = "index"

# -- docstrings: Google style, documented where they are public
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autosummary_generate = False  # one page per module, written by hand (api/): no stub pages
add_module_names = False
python_display_short_literal_types = True

# -- Markdown
myst_enable_extensions = ["deflist"]
myst_heading_anchors = 3

# -- links to JAX, optax and numpy: their sites' inventories, or offline the few names linked (_ext/external_links.py)
intersphinx_mapping = external_links.intersphinx_mapping(DOCS / "_build" / "inventories")
intersphinx_timeout = 10

# -- HTML
html_theme = "furo"
html_title = f"bpjax {version}"
html_static_path = ["_static"]
html_css_files = ["bpjax.css"]
