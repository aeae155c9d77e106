"""Tests for lrjax.data: IDX parsing, validation, search order, cache, download, TFDS.

Every test runs with its own cache directory, no $LRJAX_DATA_DIR, no Debian
directory (unless it opts in) and a network that fails the test if touched.
"""

import dataclasses
import gzip
import hashlib
import importlib.util
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lrjax._src import data

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")
HAVE_REAL = (REAL_DIR / "train-images-idx3-ubyte.gz").exists()
NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
N_TRAIN, N_TEST = 30, 12


# ------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An unsigned-byte IDX file, written independently of the module under test."""
    array = np.asarray(array, np.uint8)
    magic = 0x800 + array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    raw = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_set(directory: Path, seed: int = 0, gz: bool = True, n_train=N_TRAIN):
    """Writes four small IDX files; returns (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for role, array in arrays.items():
        name = NAMES[role] if gz else NAMES[role][: -len(".gz")]
        write_idx(directory / name, array)
    return tuple(arrays.values())


def small_spec(spec=data._FASHION_MNIST, **changes):
    files = tuple(f._replace(raw_sha256=None) for f in spec.files)
    changes = {"train_count": N_TRAIN, "test_count": N_TEST, "files": files} | changes
    return dataclasses.replace(spec, **changes)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LRJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LRJAX_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")

    def no_network(*args, **kwargs):
        pytest.fail("a test touched the network")  # BaseException: not swallowed

    monkeypatch.setattr("urllib.request.urlopen", no_network)


@pytest.fixture
def small(monkeypatch):
    """Fashion-MNIST with 30 train / 12 test examples and no content hashes."""
    spec = small_spec()
    monkeypatch.setitem(data._SPECS, "fashion_mnist", spec)
    return spec


@pytest.fixture
def count_reads(monkeypatch):
    """Counts how often a source IDX file is read (i.e. not served by the cache)."""
    calls = []
    original = data._read_bytes

    def counting(path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(data, "_read_bytes", counting)
    return calls


def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache" / "fashion_mnist"


def load_err(**kwargs) -> str:
    with pytest.raises(data.DatasetError) as info:
        data.load_dataset(**({"download": False, "validation_size": 5} | kwargs))
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------- round trips


@pytest.mark.parametrize("gz", [True, False])
def test_small_set_round_trips_exactly(tmp_path, small, gz):
    train_x, train_y, test_x, test_y = write_set(tmp_path / "d", seed=1, gz=gz)
    ds = data.load_dataset(data_dir=tmp_path / "d", download=False, validation_size=7)
    np.testing.assert_array_equal(ds.x_val, train_x[:7])
    np.testing.assert_array_equal(ds.y_val, train_y[:7])
    np.testing.assert_array_equal(ds.x_train, train_x[7:])
    np.testing.assert_array_equal(ds.y_train, train_y[7:])
    np.testing.assert_array_equal(ds.x_test, test_x)
    np.testing.assert_array_equal(ds.y_test, test_y)
    for x in (ds.x_train, ds.x_val, ds.x_test):
        assert x.dtype == np.uint8 and x.flags.c_contiguous and x.flags.writeable
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert y.dtype == np.int32
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (23, 7, N_TEST)
    assert ds.num_classes == 10 and ds.name == "fashion_mnist"
    assert ds.input_shape == (28, 28)


def test_validation_size_zero_and_invalid(tmp_path, small):
    write_set(tmp_path / "d")
    ds = data.load_dataset(data_dir=tmp_path / "d", download=False, validation_size=0)
    assert ds.x_val.shape == (0, 28, 28) and len(ds.x_train) == N_TRAIN
    for bad in (-1, N_TRAIN):
        with pytest.raises(ValueError, match="validation_size"):
            data.load_dataset(
                data_dir=tmp_path / "d", download=False, validation_size=bad
            )


def test_read_idx_matches_header(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = data.read_idx(write_idx(tmp_path / "a-idx3-ubyte.gz", array), magic=0x803)
    np.testing.assert_array_equal(out, array)
    assert out.dtype == np.uint8 and out.flags.writeable


def test_mnist_uses_the_same_code_path(tmp_path, monkeypatch):
    monkeypatch.setitem(data._SPECS, "mnist", small_spec(data._MNIST))
    write_set(tmp_path / "m" / "mnist", seed=3)
    ds = data.load_dataset(
        "mnist", data_dir=tmp_path / "m", download=False, validation_size=5
    )
    assert ds.name == "mnist" and ds.x_test.shape == (N_TEST, 28, 28)
    assert (tmp_path / "cache" / "mnist" / "mnist.arrays").exists()


def test_unknown_name_lists_allowed_names():
    message = load_err(name="cifar")
    assert "'cifar'" in message
    for allowed in ("fashion_mnist", "mnist", "tfds:NAME"):
        assert allowed in message


# ------------------------------------------------------------------ corrupted files


def corrupt(directory: Path, role: str, content: bytes) -> Path:
    path = directory / NAMES[role]
    path.write_bytes(content)
    return path


def test_bad_magic_number(tmp_path, small):
    write_set(tmp_path / "d")
    labels = np.zeros(N_TRAIN, np.uint8)
    path = corrupt(tmp_path / "d", "train_images", gzip.compress(idx_bytes(labels)))
    message = load_err(data_dir=tmp_path / "d")
    assert message.startswith(f"{path}: bad magic number 0x00000801, expected")
    assert "0x00000803 (IDX images)" in message


def test_truncated_payload(tmp_path, small):
    write_set(tmp_path / "d")
    raw = idx_bytes(np.zeros((N_TRAIN, 28, 28), np.uint8))
    path = corrupt(tmp_path / "d", "train_images", gzip.compress(raw[:-10]))
    message = load_err(data_dir=tmp_path / "d")
    assert message.startswith(f"{path}: truncated")
    assert "re-download" in message


def test_trailing_payload(tmp_path, small):
    write_set(tmp_path / "d")
    raw = idx_bytes(np.zeros(N_TEST, np.uint8))
    corrupt(tmp_path / "d", "test_labels", gzip.compress(raw + b"xx"))
    assert "trailing data" in load_err(data_dir=tmp_path / "d")


def test_truncated_gzip(tmp_path, small):
    write_set(tmp_path / "d")
    path = tmp_path / "d" / NAMES["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    message = load_err(data_dir=tmp_path / "d")
    assert message.startswith(f"{path}: corrupt gzip data")


def test_gzip_with_bad_crc(tmp_path, small):
    write_set(tmp_path / "d")
    path = tmp_path / "d" / NAMES["test_labels"]
    blob = bytearray(path.read_bytes())
    blob[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    path.write_bytes(bytes(blob))
    assert load_err(data_dir=tmp_path / "d").startswith(f"{path}: corrupt gzip")


def test_not_gzip_garbage(tmp_path, small):
    write_set(tmp_path / "d")
    path = corrupt(tmp_path / "d", "train_labels", b"<html>404 Not Found</html>")
    assert load_err(data_dir=tmp_path / "d") == (
        f"{path}: not a gzip file; re-download it"
    )


def test_image_label_count_mismatch(tmp_path, small):
    write_set(tmp_path / "d")
    corrupt(tmp_path / "d", "train_labels", gzip.compress(idx_bytes(np.zeros(29))))
    message = load_err(data_dir=tmp_path / "d")
    assert f"holds {N_TRAIN} images but" in message and "holds 29 labels" in message


def test_wrong_expected_count(tmp_path, small):
    write_set(tmp_path / "d", n_train=N_TRAIN + 1)
    message = load_err(data_dir=tmp_path / "d")
    assert (
        f"{N_TRAIN + 1} images, expected {N_TRAIN} for Fashion-MNIST train" in message
    )


def test_wrong_image_size(tmp_path, small):
    write_set(tmp_path / "d")
    corrupt(
        tmp_path / "d",
        "test_images",
        gzip.compress(idx_bytes(np.zeros((N_TEST, 27, 28), np.uint8))),
    )
    assert "images are 27x28, expected 28x28" in load_err(data_dir=tmp_path / "d")


def test_label_out_of_range(tmp_path, small):
    write_set(tmp_path / "d")
    labels = np.zeros(N_TEST, np.uint8)
    labels[5] = 10
    path = corrupt(tmp_path / "d", "test_labels", gzip.compress(idx_bytes(labels)))
    assert load_err(data_dir=tmp_path / "d") == (
        f"{path}: label 10 out of range [0, 10); re-download it"
    )


def test_content_hash_mismatch(tmp_path, monkeypatch):
    spec = small_spec()
    files = list(spec.files)
    files[3] = files[3]._replace(raw_sha256="0" * 64)
    monkeypatch.setitem(data._SPECS, "fashion_mnist", small_spec(files=tuple(files)))
    write_set(tmp_path / "d")
    message = load_err(data_dir=tmp_path / "d")
    assert "t10k-labels-idx1-ubyte.gz: content SHA-256" in message
    assert "does not match Fashion-MNIST" in message


# -------------------------------------------------------------------- search order


def test_missing_files_message_names_every_place(tmp_path, small):
    message = load_err()
    assert message.startswith("Fashion-MNIST not found: looked in ")
    assert "data_dir (not given)" in message
    assert "$LRJAX_DATA_DIR (unset)" in message
    assert str(cache_dir(tmp_path)) in message
    assert str(data.DEBIAN_DIR) in message
    assert "download=False" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte.gz" in message


def test_incomplete_directory_is_reported(tmp_path, small, monkeypatch):
    write_set(tmp_path / "env")
    (tmp_path / "env" / NAMES["test_labels"]).unlink()
    monkeypatch.setenv("LRJAX_DATA_DIR", str(tmp_path / "env"))
    message = load_err()
    assert f"$LRJAX_DATA_DIR={tmp_path / 'env'} (incomplete in" in message
    assert "missing t10k-labels-idx1-ubyte.gz" in message


@pytest.fixture
def copies_elsewhere(tmp_path, small, monkeypatch):
    """Complete sets in $LRJAX_DATA_DIR, the cache and the Debian directory."""
    for directory in (tmp_path / "env", cache_dir(tmp_path), tmp_path / "debian"):
        write_set(directory)
    monkeypatch.setenv("LRJAX_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "debian")


NAME_LIST = ", ".join(NAMES.values())


@pytest.mark.parametrize("download", [False, True])  # the network fixture fails
def test_missing_data_dir_is_an_error_not_a_fallback(
    tmp_path, copies_elsewhere, download
):
    d = tmp_path / "nowhere"
    assert load_err(data_dir=d, download=download) == (
        f"Fashion-MNIST not found in data_dir={d}: no such directory; expected a "
        f"directory holding {NAME_LIST}"
    )


def test_empty_data_dir_is_an_error_not_a_fallback(tmp_path, copies_elsewhere):
    d = tmp_path / "empty"
    (d / "fashion_mnist").mkdir(parents=True)
    (d / "README").write_text("not a dataset file")
    assert load_err(data_dir=d, download=True) == (
        f"Fashion-MNIST not found in data_dir={d}: none of {NAME_LIST} (gzipped or "
        f"not) in it or in {d / 'fashion_mnist'}"
    )


def test_data_dir_that_is_a_file_is_an_error(tmp_path, copies_elsewhere):
    f = tmp_path / "file"
    f.write_text("")
    assert load_err(data_dir=f).startswith(
        f"Fashion-MNIST not found in data_dir={f}: not a directory; expected"
    )


@pytest.mark.parametrize("sub", ["", "fashion_mnist"])
def test_incomplete_data_dir_names_the_missing_files(tmp_path, copies_elsewhere, sub):
    d = tmp_path / "partial"
    write_set(d / sub)
    (d / sub / NAMES["train_labels"]).unlink()
    (d / sub / NAMES["test_images"]).unlink()
    assert load_err(data_dir=d, download=True) == (
        f"Fashion-MNIST not found in data_dir={d}: incomplete, {d / sub} lacks "
        f"{NAMES['train_labels']}, {NAMES['test_images']}"
    )


def test_data_dir_name_subdirectory_and_home(tmp_path, copies_elsewhere, monkeypatch):
    # The <data_dir>/fashion_mnist form, uncompressed, given with a "~".
    want = write_set(tmp_path / "home" / "mine" / "fashion_mnist", seed=7, gz=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ds = data.load_dataset(data_dir="~/mine", download=False, validation_size=5)
    np.testing.assert_array_equal(ds.x_test, want[2])


def test_search_order(tmp_path, small, monkeypatch):
    places = {
        "data_dir": tmp_path / "explicit",
        "env": tmp_path / "env" / "fashion_mnist",  # the <dir>/<name> form
        "cache": cache_dir(tmp_path),
        "debian": tmp_path / "debian",
    }
    expected = {}
    for seed, (where, directory) in enumerate(places.items()):
        expected[where] = write_set(directory, seed=10 + seed)[2]  # test images
    monkeypatch.setenv("LRJAX_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(data, "DEBIAN_DIR", places["debian"])

    def loaded(**kwargs):
        return data.load_dataset(download=False, validation_size=5, **kwargs).x_test

    np.testing.assert_array_equal(
        loaded(data_dir=places["data_dir"]), expected["data_dir"]
    )
    np.testing.assert_array_equal(loaded(), expected["env"])
    monkeypatch.delenv("LRJAX_DATA_DIR")
    np.testing.assert_array_equal(loaded(), expected["cache"])
    for name in NAMES.values():
        (places["cache"] / name).unlink()
    np.testing.assert_array_equal(loaded(), expected["debian"])


# --------------------------------------------------------------------------- cache


def test_second_load_hits_the_cache(tmp_path, small, count_reads):
    write_set(tmp_path / "d")
    first = data.load_dataset(
        data_dir=tmp_path / "d", download=False, validation_size=5
    )
    assert len(count_reads) == 4
    second = data.load_dataset(
        data_dir=tmp_path / "d", download=False, validation_size=5
    )
    assert len(count_reads) == 4  # nothing re-parsed
    for a, b in zip(first[:6], second[:6], strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype and b.flags.writeable
    assert os.listdir(cache_dir(tmp_path)) == ["fashion_mnist.arrays"]  # atomic


def test_changed_source_is_reread(tmp_path, small, count_reads):
    write_set(tmp_path / "d", seed=1)
    data.load_dataset(data_dir=tmp_path / "d", download=False, validation_size=5)
    new_test_x = write_set(tmp_path / "d", seed=2)[2]
    stamp = time.time() + 10  # a distinct mtime even on coarse clocks
    for name in NAMES.values():
        os.utime(tmp_path / "d" / name, (stamp, stamp))
    ds = data.load_dataset(data_dir=tmp_path / "d", download=False, validation_size=5)
    assert len(count_reads) == 8
    np.testing.assert_array_equal(ds.x_test, new_test_x)


@pytest.mark.parametrize("damage", ["flip_payload", "truncate", "garbage", "empty"])
def test_corrupt_cache_is_rebuilt_not_trusted(
    tmp_path, small, count_reads, caplog, damage
):
    train_x = write_set(tmp_path / "d")[0]
    data.load_dataset(data_dir=tmp_path / "d", download=False, validation_size=5)
    cache = cache_dir(tmp_path) / "fashion_mnist.arrays"
    blob = bytearray(cache.read_bytes())
    if damage == "flip_payload":
        blob[len(blob) // 2] ^= 0x01  # inside x_train: only the CRC can tell
    elif damage == "truncate":
        del blob[-50:]
    elif damage == "garbage":
        blob[:] = b"not a cache" * 10
    else:
        blob.clear()
    cache.write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING, logger="lrjax.data"):
        ds = data.load_dataset(
            data_dir=tmp_path / "d", download=False, validation_size=5
        )
    np.testing.assert_array_equal(ds.x_train, train_x[5:])
    assert len(count_reads) == 8  # rebuilt from the source
    assert "corrupt cache" in caplog.text
    assert os.listdir(cache_dir(tmp_path)) == ["fashion_mnist.arrays"]
    data.load_dataset(data_dir=tmp_path / "d", download=False, validation_size=5)
    assert len(count_reads) == 8  # and the rebuilt cache is good again


def test_cache_with_wrong_shapes_is_rebuilt(tmp_path, small, count_reads, caplog):
    write_set(tmp_path / "d")
    data.load_dataset(data_dir=tmp_path / "d", download=False, validation_size=5)
    # Same key, but now the spec expects more training examples: shapes disagree.
    key = data._cache_key(small, data._locate(small, tmp_path / "d")[0])
    cache = cache_dir(tmp_path) / "fashion_mnist.arrays"
    arrays = [np.zeros((3, 28, 28), np.uint8)] + [np.zeros(3, np.int32)] * 3
    data._write_cache(cache, key, arrays)
    with caplog.at_level(logging.WARNING, logger="lrjax.data"):
        ds = data.load_dataset(
            data_dir=tmp_path / "d", download=False, validation_size=5
        )
    assert len(ds.x_train) + len(ds.x_val) == N_TRAIN
    assert len(count_reads) == 8 and "corrupt cache" in caplog.text


def test_failed_cache_write_leaves_no_temp_file(tmp_path, small, monkeypatch):
    train_x = write_set(tmp_path / "d")[0]
    real_save = np.save
    saves = []

    def failing_save(file, array, *args, **kwargs):
        saves.append(1)
        if len(saves) == 3:
            raise OSError(28, "No space left on device")
        real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    ds = data.load_dataset(data_dir=tmp_path / "d", download=False, validation_size=5)
    np.testing.assert_array_equal(ds.x_train, train_x[5:])
    assert os.listdir(cache_dir(tmp_path)) == []


def test_unwritable_cache_still_loads(tmp_path, small, monkeypatch, count_reads):
    write_set(tmp_path / "d")
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache dir cannot be created under a file")
    monkeypatch.setenv("LRJAX_CACHE_DIR", str(blocker))
    for _ in range(2):
        ds = data.load_dataset(
            data_dir=tmp_path / "d", download=False, validation_size=5
        )
        assert len(ds.x_test) == N_TEST
    assert len(count_reads) == 8


def test_cache_root_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("LRJAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data._cache_root() == tmp_path / "xdg" / "lrjax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data._cache_root() == tmp_path / "home" / ".cache" / "lrjax"


# ------------------------------------------------------------------------ download


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serve(monkeypatch, files: dict[str, bytes], urls: list[str]):
    def fake_urlopen(url, timeout):
        assert timeout <= 10
        urls.append(url)
        return FakeResponse(files[url.rsplit("/", 1)[1]])

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)


def test_download_checks_sha256_and_lands_in_cache(tmp_path, monkeypatch):
    arrays = write_set(tmp_path / "src", seed=4)
    blobs = {n: (tmp_path / "src" / n).read_bytes() for n in NAMES.values()}
    files = tuple(
        f._replace(gz_sha256=hashlib.sha256(blobs[f.filename]).hexdigest())
        for f in small_spec().files
    )
    monkeypatch.setitem(data._SPECS, "fashion_mnist", small_spec(files=files))
    urls = []
    serve(monkeypatch, blobs, urls)
    ds = data.load_dataset(validation_size=5)
    np.testing.assert_array_equal(ds.x_test, arrays[2])
    assert sorted(urls) == sorted(
        data._FASHION_MNIST.base_url + n for n in NAMES.values()
    )
    assert urls[0].startswith("http://fashion-mnist.s3-website.eu-central-1")
    assert sorted(os.listdir(cache_dir(tmp_path))) == sorted(
        [*NAMES.values(), "fashion_mnist.arrays"]
    )


def test_download_with_wrong_sha256_is_discarded(tmp_path, small, monkeypatch):
    write_set(tmp_path / "src")
    blobs = {n: (tmp_path / "src" / n).read_bytes() for n in NAMES.values()}
    files = tuple(f._replace(gz_sha256="ab" * 32) for f in small.files)
    monkeypatch.setitem(data._SPECS, "fashion_mnist", small_spec(files=files))
    serve(monkeypatch, blobs, [])
    with pytest.raises(data.DatasetError, match="downloaded file has SHA-256") as info:
        data.load_dataset(validation_size=5)
    assert "expected abab" in str(info.value) and "\n" not in str(info.value)
    assert os.listdir(cache_dir(tmp_path)) == []  # nothing kept, no temp file


def test_download_failure_falls_through_to_not_found(tmp_path, small, monkeypatch):
    import urllib.error

    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(data.DatasetError) as info:
        data.load_dataset(validation_size=5)
    message = str(info.value)
    assert message.startswith("Fashion-MNIST not found: looked in")
    assert "download from http://fashion-mnist.s3-website" in message
    assert "URLError" in message and "\n" not in message
    assert os.listdir(cache_dir(tmp_path)) == []


# ---------------------------------------------------------------------------- TFDS


def test_tfds_mock_mnist():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(
        num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        ds = data.load_dataset("tfds:mnist", validation_size=16)
    assert ds.name == "tfds:mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (48, 28, 28) and ds.x_val.shape == (16, 28, 28)
    assert ds.x_test.shape == (64, 28, 28) and ds.input_shape == (28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert 0 <= ds.y_train.min() and ds.y_test.max() < 10
    assert len(np.unique(ds.x_test.reshape(64, -1), axis=0)) > 1  # not one image


def test_tfds_mock_cifar10_keeps_colour_channels():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(
        num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        ds = data.load_dataset("tfds:cifar10", validation_size=4)
    assert ds.x_train.shape == (16, 32, 32, 3) and ds.input_shape == (32, 32, 3)
    assert ds.num_classes == 10


def test_tfds_unknown_dataset_is_one_line_error():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        message = load_err(name="tfds:no_such_dataset_xyz")
    assert message.startswith("tfds:no_such_dataset_xyz: DatasetNotFoundError")


def test_tfds_not_prepared_without_download(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    message = load_err(name="tfds:mnist", data_dir=tmp_path / "tfds")
    assert message.startswith("tfds:mnist: ")
    assert f"prepared as array_record in {tmp_path / 'tfds'}?" in message
    assert "download=True fetches it" in message


def test_tfds_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    assert load_err(name="tfds:mnist") == (
        "tfds:mnist needs the optional extra: pip install 'lrjax[tfds]'"
    )


def test_module_imports_only_numpy():
    path = Path(data.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('d', {str(path)!r})\n"
        "module = sys.modules['d'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "bad = {'jax', 'tensorflow_datasets', 'tensorflow', 'urllib.request'}\n"
        "print(sorted(bad & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
    assert importlib.util.find_spec("lrjax._src.data") is not None


# ---------------------------------------------------------------------- real files


@pytest.mark.skipif(not HAVE_REAL, reason="dataset-fashion-mnist not installed")
def test_sha256_constants_match_the_debian_files():
    for f in data._FASHION_MNIST.files:
        raw = gzip.decompress((REAL_DIR / f.filename).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == f.raw_sha256, f.filename


@pytest.mark.skipif(not HAVE_REAL, reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_files_given_as_mnist_are_refused(monkeypatch, tmp_path):
    """MNIST's decompressed bytes are not pinned, Fashion-MNIST's are: its files
    named as MNIST (the same layout and counts) used to load as MNIST."""
    monkeypatch.setenv("LRJAX_CACHE_DIR", str(tmp_path / "cache"))
    said = r"these are Fashion-MNIST's train images .*not MNIST's: use --dataset"
    with pytest.raises(data.DatasetError, match=said):
        data.load_dataset("mnist", data_dir=REAL_DIR, download=False)
    assert not (tmp_path / "cache" / "mnist").exists()  # nothing cached


def test_official_gz_sha256_matches_tfds_registry():
    """An independent reference: TFDS pins the same URLs with their SHA-256."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None:
        pytest.skip("tensorflow-datasets not installed")
    root = Path(spec.origin).parent / "url_checksums"
    for dataset in (data._FASHION_MNIST, data._MNIST):
        pinned = {}
        for line in (root / f"{dataset.name}.txt").read_text().splitlines():
            url, size, sha, *_ = line.split("\t")
            pinned[url] = sha
        for f in dataset.files:
            assert pinned[dataset.base_url + f.filename] == f.gz_sha256


@pytest.mark.skipif(not HAVE_REAL, reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch, tmp_path, count_reads):
    monkeypatch.setattr(data, "DEBIAN_DIR", REAL_DIR)
    ds = data.load_dataset(download=False)
    assert ds.x_train.shape == (55000, 28, 28) and ds.y_train.shape == (55000,)
    assert ds.x_val.shape == (5000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.y_test.dtype == np.int32
    train_y = np.concatenate([ds.y_val, ds.y_train])
    np.testing.assert_array_equal(np.bincount(train_y, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), [1000] * 10)
    # Independent parse of the first label: 8-byte header, then one byte per label.
    with gzip.open(REAL_DIR / NAMES["train_labels"]) as f:
        header = f.read(9)
    assert int.from_bytes(header[:4], "big") == 0x801
    assert int.from_bytes(header[4:8], "big") == 60000
    assert ds.y_val[0] == header[8] == 9  # an ankle boot
    assert ds.x_val.max() == 255 and ds.x_val.min() == 0

    warm = data.load_dataset(download=False)
    assert len(count_reads) == 4  # the warm load read only the cache (speed: bench)
    np.testing.assert_array_equal(warm.x_train, ds.x_train)
