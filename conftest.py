"""pytest configuration of the doctests in ``lrjax/`` (``tests/conftest.py`` is the
tests' own).

The example of :func:`lrjax.load_dataset` reads the real Fashion-MNIST of the Debian
package ``dataset-fashion-mnist`` (``scripts/setup.sh`` installs it, in CI too);
where it is missing, that example is skipped, as ``tests/test_data.py`` skips its
tests of the real files. It runs with an array cache of its own, no
``$LRJAX_DATA_DIR`` and no ``$LRJAX_DOCS_TINY``, so it neither reads nor writes the
user's cache, and finds the Debian files, never a download.
"""

from __future__ import annotations

import pytest

from lrjax._src import data

# The doctests that read the real Fashion-MNIST, by their pytest names.
REAL_FASHION_MNIST = {"lrjax._src.data.load_dataset"}


@pytest.fixture(autouse=True)
def _real_fashion_mnist(request, tmp_path, monkeypatch):
    if request.node.name not in REAL_FASHION_MNIST:
        return
    if not (data.DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"dataset-fashion-mnist not installed ({data.DEBIAN_DIR})")
    monkeypatch.setenv("LRJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LRJAX_DATA_DIR", raising=False)
    monkeypatch.delenv("LRJAX_DOCS_TINY", raising=False)  # the full splits
