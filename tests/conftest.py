"""Shared fixtures: a tiny, learnable stand-in for Fashion-MNIST on disk.

The command-line tests run the real loading path (gz IDX files found through
``--data-dir``) on 5600 generated 28x28 images, so they take seconds, not minutes.
The images are class-dependent stripes plus noise: a small MLP learns them.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

from lrjax._src import data

# Every fit and range test builds new closures that compile to the same programs;
# JAX's persistent compilation cache turns those repeated compiles into lookups
# (the trainer tests run about 3x faster). Set before the first compile. One
# directory per pytest-xdist worker: JAX writes cache entries without a lock, so two
# workers must not read and write the same files.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
jax.config.update(
    "jax_compilation_cache_dir",
    os.path.join(
        tempfile.gettempdir(), f"lrjax-tests-jax-cache-{os.getuid()}-{_WORKER}"
    ),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def jax_cache_env() -> dict[str, str]:
    """The environment that points a subprocess's JAX (python code or a notebook
    kernel) at the compilation cache above, so that it shares the suite's compiles."""
    return {
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """A script of ``benchmarks/`` (not a package) imported as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_TRAIN, TINY_TEST = 5600, 400  # 5000 validation + 600 training, as the CLI splits


def _idx(array: np.ndarray) -> bytes:
    header = (0x800 + array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1)


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class ``c`` lights up rows ``2c..2c+2`` on top of uniform noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 120, (n, 28, 28))
    for c in range(10):
        images[labels == c, 2 * c : 2 * c + 3, :] += 120
    return images.astype(np.uint8), labels.astype(np.uint8)


@functools.cache
def _tiny_fashion_mnist_files() -> dict[str, bytes]:
    """The gz IDX files' bytes, generated once a session (each test writes its own
    copy: some corrupt or delete them)."""
    x, y = make_images(TINY_TRAIN, 0)
    xt, yt = make_images(TINY_TEST, 1)
    return {
        "train-images-idx3-ubyte.gz": _idx(x),
        "train-labels-idx1-ubyte.gz": _idx(y),
        "t10k-images-idx3-ubyte.gz": _idx(xt),
        "t10k-labels-idx1-ubyte.gz": _idx(yt),
    }


@pytest.fixture
def tiny_fashion_mnist(tmp_path, monkeypatch) -> Path:
    """A directory of tiny Fashion-MNIST IDX files, wired in as ``fashion_mnist``."""
    directory = tmp_path / "tiny-fashion"
    directory.mkdir()
    for name, raw in _tiny_fashion_mnist_files().items():
        (directory / name).write_bytes(raw)
    spec = data._SPECS["fashion_mnist"]
    files = tuple(f._replace(raw_sha256=None) for f in spec.files)
    monkeypatch.setitem(
        data._SPECS,
        "fashion_mnist",
        dataclasses.replace(
            spec, train_count=TINY_TRAIN, test_count=TINY_TEST, files=files
        ),
    )
    monkeypatch.setenv("LRJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LRJAX_JAX_CACHE", "off")
    monkeypatch.delenv("LRJAX_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    return directory
