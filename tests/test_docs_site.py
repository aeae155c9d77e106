"""The API reference documents every public name; the site needs no network.

The site itself is built by ``.ci/run`` (Sphinx with warnings as errors); these
checks are the fast part, in the suite: the same rule as the build's own check in
``docs/conf.py``, read from the page's source.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import lrjax

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _conf():
    spec = importlib.util.spec_from_file_location("lrjax_docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def test_every_public_name_is_in_the_api_page_once():
    conf = _conf()
    text = conf.API_PAGE.read_text()
    entries = re.findall(r"^\.\. auto\w+:: lrjax\.(\w+)\s*$", text, re.M)
    assert len(entries) == len(set(entries)), "a name documented twice"
    public = {n for n in dir(lrjax) if not n.startswith("_")}
    public -= {n for n in public if inspect.ismodule(getattr(lrjax, n))}
    assert set(entries) == public == conf.public_names()
    assert conf.documented_names(text) == public


def test_each_name_has_the_directive_of_its_kind():
    text = _conf().API_PAGE.read_text()
    for directive, name in re.findall(r"^\.\. (auto\w+):: lrjax\.([\w.]+)", text, re.M):
        obj = lrjax
        for part in name.split("."):  # lrjax.NAME or lrjax.MODULE.NAME
            obj = getattr(obj, part)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            want = "autoexception"
        elif inspect.isclass(obj):
            want = "autoclass"
        elif inspect.isfunction(obj):
            want = "autofunction"
        else:
            want = "autodata"
        assert directive == want, (name, directive, want)


def test_the_site_holds_the_guides_and_needs_no_network():
    conf = _conf()
    toctree = (DOCS / "index.md").read_text()
    notebooks = sorted(DOCS.parent.glob("examples/*.ipynb"))
    assert len(notebooks) >= 2
    pages = ["guide", "api", "results", "multiprocess", "/README", "/CHANGELOG"]
    pages += [f"/examples/{p.stem}" for p in notebooks]
    for page in pages:
        assert re.search(rf"^(.*<)?{re.escape(page)}>?$", toctree, re.M), page
    assert "examples/*.ipynb" in conf.include_patterns
    assert "sphinx.ext.intersphinx" not in conf.extensions
    # myst-nb: myst-parser's Markdown and the notebooks, which the tests run
    # (tests/test_notebooks.py) and the build shows as committed, never executing
    assert {"myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon"} <= set(
        conf.extensions
    )
    assert "myst_parser" not in conf.extensions  # myst_nb sets it up itself
    assert conf.nb_execution_mode == "off"
