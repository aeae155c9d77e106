"""The notebooks of examples/ run top to bottom (nbclient), at tiny sizes.

Each notebook runs in a fresh Jupyter kernel of this interpreter, in a fresh
directory, with ``LRJAX_DOCS_TINY=1`` on the generated datasets of
tests/test_docs_blocks.py (the same stand-ins and the same variable as the docs'
code blocks), sharing the test suite's JAX compilation cache (tests/conftest.py).
They run two at a time, started at once, as the examples' scripts do. The notebooks
are committed without outputs; every one that examples/ holds is run.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
from pathlib import Path

import nbclient
import nbformat
import pytest
from jupyter_core.utils import ensure_event_loop

from tests.conftest import jax_cache_env
from tests.test_docs_blocks import datasets  # noqa: F401  (a fixture)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
WANTED = {"range_test_your_model.ipynb", "recipe_end_to_end.ipynb"}
TIMEOUT_S = 300  # one cell
WORKERS = 2


def test_the_notebooks_are_there_without_outputs():
    assert WANTED <= {p.name for p in NOTEBOOKS}
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        nbformat.validate(book)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name}: commit it without outputs (Jupyter's "
                    '"Clear All Outputs")'
                )


def _pngs(cell) -> list[bytes]:
    out = []
    for o in cell.outputs:
        data = o.get("data", {})
        if "image/png" in data:
            out.append(base64.b64decode(data["image/png"]))
        html = data.get("text/html", "")
        if "data:image/png;base64," in html:
            b64 = html.split("data:image/png;base64,", 1)[1].split('"', 1)[0]
            out.append(base64.b64decode(b64))
    return out


@pytest.fixture(scope="module")
def runs(datasets, tmp_path_factory):  # noqa: F811
    """Every notebook, executed two at a time (each kernel mostly keeps one core
    busy importing JAX and compiling), started at once: ``{name: future}`` of
    the executed notebook, or of the error that stopped it."""
    base = tmp_path_factory.mktemp("notebook-runs")
    env = dict(os.environ, LRJAX_DOCS_TINY="1", LRJAX_DATA_DIR=str(datasets))
    env.update(jax_cache_env())  # the kernels share the suite's compiles

    def run(path: Path):
        cwd = base / path.stem
        cwd.mkdir()
        book = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(
            book,
            timeout=TIMEOUT_S,
            kernel_name="python3",
            resources={"metadata": {"path": str(cwd)}},
        )
        loop = ensure_event_loop()  # this thread's, which nbclient runs on
        try:
            # raises CellExecutionError, with the cell, on any error
            client.execute(env=dict(env, LRJAX_CACHE_DIR=str(cwd / "cache")))
        finally:
            loop.close()
        return book

    pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
    futures = {p.name: pool.submit(run, p) for p in NOTEBOOKS}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, runs):
    book = runs[path.name].result()
    code = [c for c in book.cells if c.cell_type == "code"]
    for cell in code:
        for o in cell.outputs:
            assert o.output_type != "error", o
            if o.output_type == "stream" and o.name == "stderr":
                assert "Warning" not in o.text, o.text
    # every figure made it out, as a PNG: the results' displays and plot() cells
    drawn = [c for c in code if _pngs(c)]
    assert len(drawn) >= 3, [c.source[:60] for c in code]
    assert all(png.startswith(b"\x89PNG") for c in drawn for png in _pngs(c))
