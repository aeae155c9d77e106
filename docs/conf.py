"""Sphinx configuration: lrjax's API reference from its docstrings, and the guides.

Build it from the repository root (``pip install -e ".[docs]"`` first)::

    python -m sphinx -W --keep-going -c docs -b html . docs/_build/html

The source directory is the repository root, so that the pages link to each other
as they do on GitHub (docs/guide.md to ../README.md, README.md to
benchmarks/README.md); ``include_patterns`` names the pages. The site starts at
``docs/index.html`` (``index.html`` redirects there). Warnings are errors
(``-W``). Nothing here needs the network (no intersphinx).

The notebooks of ``examples/`` are pages too, through myst-nb (the MyST parser
with notebooks: it reads the Markdown pages as myst-parser does). They are not
executed here (``nb_execution_mode = "off"``): they need the dataset and minutes,
and the test suite runs them (tests/test_notebooks.py), so the site shows their
code and text as committed, without outputs.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # this checkout's lrjax, installed or not

import lrjax  # noqa: E402

project = "lrjax"
author = "the lrjax authors"
copyright = "the lrjax authors"
version = release = lrjax.__version__

extensions = [
    "myst_nb",  # myst-parser's Markdown, and the notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
root_doc = "docs/index"
include_patterns = [
    "README.md",
    "CHANGELOG.md",
    "benchmarks/README.md",
    "docs/**",
    "examples/*.ipynb",
]
nb_execution_mode = "off"
exclude_patterns = ["docs/_build", ".venv*", "runs", "**/__pycache__"]
# results.md links the folder of results JSON, which is no page; the link stays.
nitpick_ignore = [("myst", "../benchmarks/results/")]

napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Signatures name these aliases instead of spelling out their unions.
autodoc_type_aliases = {"Schedule": "lrjax.Schedule", "ArrayLike": "ArrayLike"}
myst_heading_anchors = 4  # guide.md#the-range-test-on-your-own-model and the like

html_theme = "alabaster"
html_title = f"lrjax {release}"

# The API page documents every public name with one of these directives.
API_PAGE = DOCS / "api.rst"
_ENTRY = re.compile(
    r"^\.\. auto(?:function|class|exception|data):: lrjax\.(\w+)\s*$", re.M
)


def public_names() -> set[str]:
    """What ``lrjax`` exports: its attributes, less private names and submodules."""
    return {
        name
        for name in dir(lrjax)  # lazy (PEP 562): dir, not vars
        if not name.startswith("_") and not inspect.ismodule(getattr(lrjax, name))
    }


def documented_names(text: str) -> set[str]:
    """The names an API page's autodoc directives document."""
    return set(_ENTRY.findall(text))


def _check_api_page(app) -> None:
    documented = documented_names(API_PAGE.read_text())
    missing, extra = public_names() - documented, documented - public_names()
    if missing or extra:  # a warning, so an error under -W
        from sphinx.util import logging

        logging.getLogger(__name__).warning(
            f"{API_PAGE.name} must document every public name of lrjax: "
            f"missing {sorted(missing)}, not public {sorted(extra)}"
        )


def _redirect_to_index(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        url = f"{root_doc}.html"
        (Path(app.outdir) / "index.html").write_text(
            f'<!DOCTYPE html><meta http-equiv="refresh" content="0; url={url}">'
            f'<a href="{url}">lrjax documentation</a>\n'
        )


def setup(app):
    app.connect("builder-inited", _check_api_page)
    app.connect("build-finished", _redirect_to_index)
