"""Image-classification datasets as numpy arrays.

Fashion-MNIST (and MNIST) are read from the original gzipped IDX files, validated,
and decompressed once into a fast local cache; any supervised image dataset of
TensorFlow Datasets is available as ``tfds:NAME`` without TensorFlow.

Where the Fashion-MNIST files are looked for, in order:

1. ``data_dir`` (the directory itself, then ``data_dir/fashion_mnist``): when
   given, it is the only place; if it is missing or lacks any of the files, that is
   an error, with no fallback to the places below and no download;
2. ``$LRJAX_DATA_DIR`` (the directory itself, then ``<dir>/fashion_mnist``);
3. the user cache ``$LRJAX_CACHE_DIR/fashion_mnist``, by default
   ``$XDG_CACHE_HOME/lrjax/fashion_mnist`` or ``~/.cache/lrjax/fashion_mnist``;
4. ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
5. with ``download=True``, the official files are downloaded into the user cache,
   each checked against its published SHA-256 before it is kept.

The first directory holding all four files wins. Decoded arrays are cached in
``<cache>/<name>/<name>.arrays`` (a few ``.npy`` records, CRC-32 checked, keyed by
the path, size and mtime of the source files), so a second load skips gunzip.

``$LRJAX_DOCS_TINY=1`` is for the tests of the documentation only (it is the one
place lrjax reads it): IDX files of any length load without their content hash
(so that generated stand-ins do), and every split is cut to its first
:data:`DOCS_TINY_SPLITS` examples, so that each example of the docs runs in seconds.

Only numpy (and the standard library) is imported here; ``tensorflow_datasets`` is
imported lazily for ``tfds:`` names. Device placement is left to the training code.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "DEBIAN_DIR",
    "DOCS_TINY_SPLITS",
    "Dataset",
    "DatasetError",
    "load_dataset",
    "read_idx",
]

_log = logging.getLogger("lrjax.data")  # a stable name, whatever the module

#: Where the Debian package ``dataset-fashion-mnist`` installs the gzipped IDX files.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

#: (train, validation, test) examples kept with ``$LRJAX_DOCS_TINY=1``.
DOCS_TINY_SPLITS = (512, 256, 256)

_DOWNLOAD_TIMEOUT_S = 10.0
_CACHE_VERSION = 1
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions: [N, rows, cols]
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension: [N]
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetError(ValueError):
    """A dataset is missing, corrupted or unknown; the message says how to fix it."""


class Dataset(NamedTuple):
    """Train/validation/test splits of an image-classification dataset.

    Images are ``uint8[N, H, W]`` (grayscale) or ``uint8[N, H, W, C]`` (colour);
    labels are ``int32[N]`` in ``[0, num_classes)``.
    """

    x_train: np.ndarray  # uint8[N_train, H, W(, C)]
    y_train: np.ndarray  # int32[N_train]
    x_val: np.ndarray  # uint8[N_val, H, W(, C)]
    y_val: np.ndarray  # int32[N_val]
    x_test: np.ndarray  # uint8[N_test, H, W(, C)]
    y_test: np.ndarray  # int32[N_test]
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one image, e.g. ``(28, 28)`` or ``(32, 32, 3)``."""
        return tuple(self.x_train.shape[1:])


# --------------------------------------------------------------------------- specs


class _IdxFile(NamedTuple):
    role: str  # "train_images", "train_labels", "test_images", "test_labels"
    filename: str  # the gzipped name; the uncompressed name drops ".gz"
    gz_sha256: str | None  # SHA-256 of the official download
    raw_sha256: str | None  # SHA-256 of the decompressed IDX bytes


@dataclasses.dataclass(frozen=True)
class _IdxSpec:
    """What an IDX dataset must look like; tests replace it with small counts."""

    name: str
    title: str
    num_classes: int
    image_shape: tuple[int, int]
    train_count: int | None  # None: any count ($LRJAX_DOCS_TINY)
    test_count: int | None
    base_url: str
    files: tuple[_IdxFile, ...]
    install_hint: str = ""
    debian: bool = False  # whether DEBIAN_DIR is searched

    def file(self, role: str) -> _IdxFile:
        return next(f for f in self.files if f.role == role)


# The official gz SHA-256s agree with TFDS's url_checksums/fashion_mnist.txt and
# with Zalando's published MD5s. Debian repacked the gz streams (different gzip
# headers), so its .gz files hash differently; the decompressed IDX bytes
# (raw_sha256, computed from the Debian files) are the same in both and are what
# every local copy is checked against.
_FASHION_MNIST = _IdxSpec(
    name="fashion_mnist",
    title="Fashion-MNIST",
    num_classes=10,
    image_shape=(28, 28),
    train_count=60000,
    test_count=10000,
    base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    files=(
        _IdxFile(
            "train_images",
            "train-images-idx3-ubyte.gz",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        _IdxFile(
            "train_labels",
            "train-labels-idx1-ubyte.gz",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        _IdxFile(
            "test_images",
            "t10k-images-idx3-ubyte.gz",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        _IdxFile(
            "test_labels",
            "t10k-labels-idx1-ubyte.gz",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ),
    install_hint="install it with `apt-get install dataset-fashion-mnist`, ",
    debian=True,
)

# MNIST has the same layout; its gz SHA-256s are those TFDS pins for the CVDF mirror.
# The decompressed bytes are not pinned (no reference copy was available here).
_MNIST = _IdxSpec(
    name="mnist",
    title="MNIST",
    num_classes=10,
    image_shape=(28, 28),
    train_count=60000,
    test_count=10000,
    base_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
    files=(
        _IdxFile(
            "train_images",
            "train-images-idx3-ubyte.gz",
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            None,
        ),
        _IdxFile(
            "train_labels",
            "train-labels-idx1-ubyte.gz",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            None,
        ),
        _IdxFile(
            "test_images",
            "t10k-images-idx3-ubyte.gz",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            None,
        ),
        _IdxFile(
            "test_labels",
            "t10k-labels-idx1-ubyte.gz",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            None,
        ),
    ),
)

_SPECS: dict[str, _IdxSpec] = {s.name: s for s in (_FASHION_MNIST, _MNIST)}


# ---------------------------------------------------------------------- public API


def load_dataset(
    name: str = "fashion_mnist",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    validation_size: int = 5000,
) -> Dataset:
    """Loads an image-classification dataset as numpy arrays.

    The first ``validation_size`` training examples become the validation split and
    the rest the training split (for Fashion-MNIST: 55000 / 5000, plus the 10000
    test images). See the module docstring for where files are looked for, and for
    ``$LRJAX_DOCS_TINY``, which the tests of the documentation set.

    Args:
        name: ``"fashion_mnist"``, ``"mnist"`` (from a directory of IDX files or a
            download), or ``"tfds:NAME"`` for any supervised image-classification
            dataset of TensorFlow Datasets (needs ``pip install 'lrjax[tfds]'``).
        data_dir: A directory holding the four IDX files (``.gz`` or
            uncompressed), or a ``<name>`` subdirectory that does. When given, it
            is the only place searched: a missing or incomplete ``data_dir`` raises
            :class:`DatasetError`. For ``tfds:`` names, the TFDS data directory.
        download: Whether to download missing files (into the user cache, or
            TFDS's data directory); never into or instead of an IDX
            ``data_dir``. A failed download is reported in the "not found" error.
        validation_size: How many of the first training examples to hold out.

    Returns:
        A :class:`Dataset` of writable, C-contiguous arrays.

    Raises:
        DatasetError: The dataset is unknown, missing, truncated or corrupted; the
            one-line message says what was found where and how to fix it.
        ValueError: ``validation_size`` is negative or not smaller than the number
            of training examples.

    Example:
        Fashion-MNIST, here from the Debian package ``dataset-fashion-mnist`` (the
        test suite skips this example where it is not installed):

        >>> ds = load_dataset("fashion_mnist")
        >>> ds.x_train.shape, ds.x_val.shape, ds.x_test.shape, ds.x_train.dtype
        ((55000, 28, 28), (5000, 28, 28), (10000, 28, 28), dtype('uint8'))
        >>> ds.num_classes, ds.y_val[:3].tolist()  # ankle boot, T-shirt, T-shirt
        (10, [9, 0, 0])
        >>> np.bincount(ds.y_test).tolist() == [1000] * 10  # a balanced test set
        True
        >>> load_dataset("cifar10")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        lrjax._src.data.DatasetError: unknown dataset 'cifar10'; allowed names: ...
    """
    if not isinstance(validation_size, int | np.integer) or validation_size < 0:
        raise ValueError(f"validation_size must be an int >= 0, got {validation_size}")
    tiny = os.environ.get("LRJAX_DOCS_TINY", "") not in ("", "0")
    if name.startswith("tfds:"):
        ds = _load_tfds(name[len("tfds:") :], data_dir, download, validation_size)
        return _docs_tiny(ds) if tiny else ds
    spec = _SPECS.get(name)
    if spec is None:
        allowed = ", ".join([*_SPECS, "tfds:NAME"])
        raise DatasetError(f"unknown dataset {name!r}; allowed names: {allowed}")
    if tiny:  # any count, no content hash (downloads keep theirs)
        files = tuple(f._replace(raw_sha256=None) for f in spec.files)
        spec = dataclasses.replace(spec, train_count=None, test_count=None, files=files)
    train_x, train_y, test_x, test_y = _load_idx_dataset(spec, data_dir, download)
    ds = _split(
        train_x, train_y, test_x, test_y, spec.num_classes, name, validation_size
    )
    return _docs_tiny(ds) if tiny else ds


def read_idx(path: str | os.PathLike[str], *, magic: int | None = None) -> np.ndarray:
    """Reads an unsigned-byte IDX file, gzipped or not, into a new array.

    Args:
        path: The file; gzip is detected from its first bytes.
        magic: If given, the magic number the header must carry, e.g. ``0x803``
            for ``[N, rows, cols]`` images or ``0x801`` for labels.

    Returns:
        A writable ``uint8`` array shaped as the header's dimensions.

    Raises:
        DatasetError: The file is unreadable, not valid gzip, or not a well-formed
            unsigned-byte IDX file (bad magic number, payload length mismatch).

    Example:
        >>> import gzip, os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "labels-idx1-ubyte.gz")
        ...     with gzip.open(path, "wb") as f:  # magic 0x801, 3 labels: 7 0 9
        ...         _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9]))
        ...     read_idx(path, magic=0x801)
        array([7, 0, 9], dtype=uint8)
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path, magic)


# ----------------------------------------------------------------------- IDX files


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed if it is gzip."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from e
    if data[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
            raise DatasetError(
                f"{path}: corrupt gzip data ({e or type(e).__name__}); re-download it"
            ) from e
    if path.suffix == ".gz":
        raise DatasetError(f"{path}: not a gzip file; re-download it")
    return data


def _parse_idx(data: bytes, path: Path, magic: int | None) -> np.ndarray:
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    zero, dtype_code, ndim = found >> 16, (found >> 8) & 0xFF, found & 0xFF
    if (magic is not None and found != magic) or zero != 0 or dtype_code != 0x08:
        want = f"0x{magic:08x}" if magic is not None else "0x000008NN"
        kind = {_IMAGES_MAGIC: " (IDX images)", _LABELS_MAGIC: " (IDX labels)"}
        raise DatasetError(
            f"{path}: bad magic number 0x{found:08x}, expected {want}"
            f"{kind.get(magic, '') if magic is not None else ''}; re-download it"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing data"
        raise DatasetError(
            f"{path}: {what}: {len(data)} bytes but the header {list(shape)} "
            f"implies {expected}; re-download it"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape).copy()


def _find_file(directory: Path, f: _IdxFile) -> Path | None:
    for candidate in (directory / f.filename, directory / f.filename[: -len(".gz")]):
        if candidate.is_file():
            return candidate
    return None


def _complete(found: dict[str, Path | None]) -> dict[str, Path] | None:
    """The paths of ``found`` when every file was found, else None."""
    paths = {role: p for role, p in found.items() if p is not None}
    return paths if len(paths) == len(found) else None


def _load_idx_files(
    paths: dict[str, Path], spec: _IdxSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads and validates the four IDX files of ``spec``."""
    out = []
    for split, count in (("train", spec.train_count), ("test", spec.test_count)):
        ip, lp = paths[f"{split}_images"], paths[f"{split}_labels"]
        iraw, lraw = _read_bytes(ip), _read_bytes(lp)
        images = _parse_idx(iraw, ip, _IMAGES_MAGIC)
        labels = _parse_idx(lraw, lp, _LABELS_MAGIC)
        if images.shape[1:] != spec.image_shape:
            raise DatasetError(
                f"{ip}: images are {images.shape[1]}x{images.shape[2]}, expected "
                f"{spec.image_shape[0]}x{spec.image_shape[1]} for {spec.title}"
            )
        if len(images) != len(labels):
            raise DatasetError(
                f"{ip} holds {len(images)} images but {lp} holds {len(labels)} "
                "labels; re-download them"
            )
        if count is not None and len(images) != count:
            raise DatasetError(
                f"{ip}: {len(images)} images, expected {count} for {spec.title} "
                f"{split}; re-download it"
            )
        bad = labels >= spec.num_classes
        if bad.any():
            raise DatasetError(
                f"{lp}: label {int(labels[bad][0])} out of range [0, "
                f"{spec.num_classes}); re-download it"
            )
        for raw, path, role in ((iraw, ip, "images"), (lraw, lp, "labels")):
            want = spec.file(f"{split}_{role}").raw_sha256
            got = hashlib.sha256(raw).hexdigest()
            other = _pinned().get(got)
            if other is not None and other.name != spec.name:
                # e.g. Fashion-MNIST's files given as MNIST, whose bytes are not
                # pinned: the same layout, so only the content tells them apart
                raise DatasetError(
                    f"{path}: these are {other.title}'s {split} {role} (their "
                    f"content SHA-256 is {other.title}'s), not {spec.title}'s: use "
                    f"--dataset {other.name} (dataset={other.name!r}) or "
                    f"{spec.title}'s files"
                )
            if want and got != want:
                raise DatasetError(
                    f"{path}: content SHA-256 {got[:12]}... does not match "
                    f"{spec.title} ({want[:12]}...); wrong dataset or corrupted "
                    "file, re-download it"
                )
        out += [images, labels.astype(np.int32)]
    x_train, y_train, x_test, y_test = out
    return x_train, y_train, x_test, y_test


def _pinned() -> dict[str, _IdxSpec]:
    """The dataset whose decompressed file has each pinned SHA-256."""
    return {
        f.raw_sha256: sp for sp in _SPECS.values() for f in sp.files if f.raw_sha256
    }


# -------------------------------------------------------------------- search order


def _cache_root() -> Path:
    if os.environ.get("LRJAX_CACHE_DIR"):
        return Path(os.environ["LRJAX_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lrjax"


def _search_dirs(spec: _IdxSpec) -> list[tuple[str, list[Path]]]:
    """(label for the error message, directories) in search order, no data_dir."""
    places: list[tuple[str, list[Path]]] = [("data_dir (not given)", [])]
    env = os.environ.get("LRJAX_DATA_DIR")
    if env:
        d = Path(env).expanduser()
        places.append((f"$LRJAX_DATA_DIR={d}", [d, d / spec.name]))
    else:
        places.append(("$LRJAX_DATA_DIR (unset)", []))
    cache = _cache_root() / spec.name
    places.append((str(cache), [cache]))
    if spec.debian:
        places.append((str(DEBIAN_DIR), [DEBIAN_DIR]))
    return places


def _locate(
    spec: _IdxSpec, data_dir: str | os.PathLike[str] | None
) -> tuple[dict[str, Path] | None, list[str]]:
    """The four files from the first complete directory, and what was searched.

    Raises:
        DatasetError: ``data_dir`` is given but does not hold the four files.
    """
    if data_dir is not None:
        return _locate_in_data_dir(spec, Path(data_dir).expanduser()), []
    searched: list[str] = []
    for label, dirs in _search_dirs(spec):
        note = ""
        for d in dirs:
            found = {f.role: _find_file(d, f) for f in spec.files}
            if (complete := _complete(found)) is not None:
                _log.debug("loading %s from %s", spec.title, d)
                return complete, searched
            if any(found.values()):
                missing = [f.filename for f in spec.files if not found[f.role]]
                note = f" (incomplete in {d}: missing {', '.join(missing)})"
        searched.append(label + note)
    return None, searched


def _locate_in_data_dir(spec: _IdxSpec, d: Path) -> dict[str, Path]:
    """The four files in ``d`` or ``d/<name>``; anything less is an error.

    A directory the caller named is not a hint: falling back to another copy (or
    downloading one) would train on data the caller did not ask for.
    """
    where = f"{spec.title} not found in data_dir={d}"
    names = ", ".join(f.filename for f in spec.files)
    if not d.exists():
        raise DatasetError(
            f"{where}: no such directory; expected a directory holding {names}"
        )
    if not d.is_dir():
        raise DatasetError(
            f"{where}: not a directory; expected a directory holding {names}"
        )
    incomplete = ""
    for candidate in (d, d / spec.name):
        found = {f.role: _find_file(candidate, f) for f in spec.files}
        if (complete := _complete(found)) is not None:
            _log.debug("loading %s from %s", spec.title, candidate)
            return complete
        if any(found.values()) and not incomplete:
            missing = [f.filename for f in spec.files if not found[f.role]]
            incomplete = f"{candidate} lacks {', '.join(missing)}"
    if incomplete:
        raise DatasetError(f"{where}: incomplete, {incomplete}")
    raise DatasetError(
        f"{where}: none of {names} (gzipped or not) in it or in {d / spec.name}"
    )


def _load_idx_dataset(
    spec: _IdxSpec, data_dir: str | os.PathLike[str] | None, download: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    paths, searched = _locate(spec, data_dir)
    if paths is None:
        if download:
            reason = _download(spec, _cache_root() / spec.name)
            if reason is None:
                paths, _ = _locate(spec, data_dir)
                reason = "downloaded, yet the files are still incomplete"
        else:
            reason = "download=False"
        if paths is None:
            names = ", ".join(f.filename for f in spec.files)
            raise DatasetError(
                f"{spec.title} not found: looked in {', '.join(searched)}; "
                f"no download ({reason}); {spec.install_hint}"
                f"pass data_dir=DIR (--data-dir DIR) or set $LRJAX_DATA_DIR to a "
                f"directory holding {names}"
            )
    return _cached_load(spec, paths)


# --------------------------------------------------------------------------- cache

_ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")


def _cache_key(spec: _IdxSpec, paths: dict[str, Path]) -> str:
    ident: list[object] = [_CACHE_VERSION, dataclasses.astuple(spec)]
    for role in sorted(paths):
        p = paths[role].resolve()
        st = p.stat()
        ident.append([role, str(p), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()


def _cached_load(
    spec: _IdxSpec, paths: dict[str, Path]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loads from the array cache if it matches the sources, else builds it."""
    cache_file = _cache_root() / spec.name / f"{spec.name}.arrays"
    try:
        key = _cache_key(spec, paths)
    except OSError as e:  # a source vanished between search and stat
        raise DatasetError(f"{spec.title}: cannot stat the source files ({e})") from e
    arrays = _read_cache(cache_file, key, spec)
    if arrays is not None:
        return arrays
    arrays = _load_idx_files(paths, spec)
    _write_cache(cache_file, key, arrays)
    return arrays


def _expected_shapes(
    spec: _IdxSpec,
) -> dict[str, tuple[tuple[int | None, ...], str]]:
    return {
        "x_train": ((spec.train_count, *spec.image_shape), "|u1"),
        "y_train": ((spec.train_count,), "<i4"),
        "x_test": ((spec.test_count, *spec.image_shape), "|u1"),
        "y_test": ((spec.test_count,), "<i4"),
    }


def _read_npy_crc(f: io.BufferedIOBase) -> tuple[np.ndarray, int]:
    """Reads the next ``.npy`` record of ``f`` and its CRC-32, in one pass."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran or dtype.hasobject:
        raise ValueError("unexpected array layout")
    array = np.empty(shape, dtype)
    view = array.data.cast("B")  # array.data: the memoryview of its buffer
    crc, chunk = 0, 1 << 18  # CRC each chunk while it is still in the CPU cache
    for start in range(0, len(view), chunk):
        n = f.readinto(view[start : start + chunk])
        if not n:
            raise ValueError("truncated array")
        crc = zlib.crc32(view[start : start + n], crc)
        if n < min(chunk, len(view) - start):
            raise ValueError("truncated array")
    return array, crc


def _read_cache(
    path: Path, key: str, spec: _IdxSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The cached arrays, or None if absent, stale or corrupt (never trusted)."""
    try:
        f = open(path, "rb")  # closed by the with below
    except OSError:
        return None
    try:
        with f:
            meta = json.loads(np.load(f, allow_pickle=False).tobytes())
            if meta.get("version") != _CACHE_VERSION or meta.get("key") != key:
                _log.info("%s: stale (sources changed); rebuilding", path)
                return None
            expected = _expected_shapes(spec)
            out = []
            for name in _ARRAY_NAMES:
                array, crc = _read_npy_crc(f)
                shape, dtype = expected[name]
                if shape[0] is None:  # any count ($LRJAX_DOCS_TINY)
                    shape = (len(array), *shape[1:])
                if array.shape != shape or array.dtype.str != dtype:
                    raise ValueError(f"{name} is {array.dtype.str}{array.shape}")
                if crc != meta["crc32"][name]:
                    raise ValueError(f"{name} fails its CRC-32 check")
                out.append(array)
            if f.read(1):
                raise ValueError("trailing data")
    except Exception as e:  # any failure means "do not trust it"
        _log.warning("%s: corrupt cache (%s); discarding and rebuilding", path, e)
        try:
            path.unlink()
        except OSError:
            pass
        return None
    x_train, y_train, x_test, y_test = out
    return x_train, y_train, x_test, y_test


def _write_cache(path: Path, key: str, arrays: Sequence[np.ndarray]) -> None:
    """Writes the arrays atomically; an unwritable cache is skipped, not fatal."""
    meta = {
        "version": _CACHE_VERSION,
        "key": key,
        "crc32": {
            n: zlib.crc32(a.data) for n, a in zip(_ARRAY_NAMES, arrays, strict=True)
        },
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.frombuffer(json.dumps(meta).encode(), np.uint8))
            for a in arrays:
                np.save(f, np.ascontiguousarray(a), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        _log.info("%s: not caching (%s)", path, e)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# ------------------------------------------------------------------------ download


def _download(spec: _IdxSpec, directory: Path) -> str | None:
    """Downloads the missing files into ``directory``; None on success, else why not.

    Raises:
        DatasetError: A downloaded file does not match its published SHA-256.
    """
    import urllib.request  # lazily: it pulls in http.client, email, ssl

    for f in spec.files:
        if _find_file(directory, f):
            continue
        url = spec.base_url + f.filename
        tmp = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                dir=directory, prefix=f".{f.filename}.", suffix=".tmp"
            )
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                with urllib.request.urlopen(
                    url, timeout=_DOWNLOAD_TIMEOUT_S
                ) as response:
                    while chunk := response.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            if f.gz_sha256 is not None and digest.hexdigest() != f.gz_sha256:
                raise DatasetError(
                    f"{url}: downloaded file has SHA-256 {digest.hexdigest()}, "
                    f"expected {f.gz_sha256}; discarded it, retry later or pass "
                    "data_dir=DIR holding the files"
                )
            os.replace(tmp, directory / f.filename)
            tmp = None
            _log.info("downloaded %s to %s", url, directory)
        except DatasetError:
            raise
        except Exception as e:  # network errors come in many types
            return f"download from {url} failed: {type(e).__name__}: {e}"
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    return None


# -------------------------------------------------------------------------- splits


def _split(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    name: str,
    validation_size: int,
) -> Dataset:
    if validation_size >= len(train_x):
        raise ValueError(
            f"validation_size must be < {len(train_x)} (the {name} training set), "
            f"got {validation_size}"
        )
    v = int(validation_size)
    return Dataset(
        x_train=train_x[v:],
        y_train=train_y[v:],
        x_val=train_x[:v],
        y_val=train_y[:v],
        x_test=test_x,
        y_test=test_y,
        num_classes=int(num_classes),
        name=name,
    )


def _docs_tiny(ds: Dataset) -> Dataset:
    """The first :data:`DOCS_TINY_SPLITS` examples of each split."""
    n_train, n_val, n_test = DOCS_TINY_SPLITS
    return ds._replace(
        x_train=ds.x_train[:n_train],
        y_train=ds.y_train[:n_train],
        x_val=ds.x_val[:n_val],
        y_val=ds.y_val[:n_val],
        x_test=ds.x_test[:n_test],
        y_test=ds.y_test[:n_test],
    )


# ---------------------------------------------------------------------------- TFDS


def _load_tfds(
    name: str,
    data_dir: str | os.PathLike[str] | None,
    download: bool,
    validation_size: int,
) -> Dataset:
    """``tfds:NAME`` through ``tfds.data_source`` (random access, no TensorFlow)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DatasetError(
            f"tfds:{name} needs the optional extra: pip install 'lrjax[tfds]'"
        ) from e
    data_dir = None if data_dir is None else os.fspath(data_dir)
    # Random access needs ArrayRecord files; data_source only asks for them when
    # data_dir is None, so ask always (a TFRecord-only copy cannot be read anyway).
    kwargs = {"data_dir": data_dir, "builder_kwargs": {"file_format": "array_record"}}
    try:
        train = tfds.data_source(name, split="train", download=download, **kwargs)
        # Built after data_source so that a fresh download has filled in the splits.
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
        splits = set(builder.info.splits.keys())
        if not splits or "test" in splits:  # mock_data knows no splits
            test_split = "test"
        elif "validation" in splits:
            test_split = "validation"
        else:
            raise DatasetError(
                f"tfds:{name} has no test or validation split (splits: "
                f"{', '.join(sorted(splits))})"
            )
        test = tfds.data_source(name, split=test_split, download=False, **kwargs)
        image_key, label_key = builder.info.supervised_keys or ("image", "label")
        label_feature = builder.info.features[label_key]
        num_classes = getattr(label_feature, "num_classes", None)
    except DatasetError:
        raise
    except Exception as e:  # surface TFDS's reason in one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = (
            ""
            if download
            else "; is it prepared as array_record in "
            f"{data_dir or '$TFDS_DATA_DIR or ~/tensorflow_datasets'}? "
            "download=True fetches it"
        )
        raise DatasetError(f"tfds:{name}: {type(e).__name__}: {reason}{hint}") from e
    if not num_classes:
        raise DatasetError(
            f"tfds:{name}: feature {label_key!r} is not a ClassLabel; only supervised "
            "image-classification datasets are supported"
        )
    train_x, train_y = _tfds_arrays(train, f"tfds:{name} train", image_key, label_key)
    test_x, test_y = _tfds_arrays(
        test, f"tfds:{name} {test_split}", image_key, label_key
    )
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetError(
            f"tfds:{name}: train images are {train_x.shape[1:]} but test images are "
            f"{test_x.shape[1:]}"
        )
    for labels, split in ((train_y, "train"), (test_y, test_split)):
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DatasetError(
                f"tfds:{name} {split}: labels outside [0, {num_classes})"
            )
    return _split(
        train_x, train_y, test_x, test_y, num_classes, f"tfds:{name}", validation_size
    )


def _tfds_arrays(
    source: Sequence[dict], what: str, image_key: str, label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    # One example at a time: batched __getitems__ is broken under
    # tfds.testing.mock_data (4.9.10), and decoding dominates either way.
    n = len(source)
    if n == 0:
        raise DatasetError(f"{what}: no examples")
    images: np.ndarray | None = None
    labels = np.empty(n, np.int32)
    for i in range(n):
        example = source[i]
        image = np.asarray(example[image_key])
        if images is None:
            if image.dtype != np.uint8:
                raise DatasetError(f"{what}: images are {image.dtype}, not uint8")
            shape = image.shape[:-1] if image.shape[-1:] == (1,) else image.shape
            images = np.empty((n, *shape), np.uint8)
        try:
            images[i] = image.reshape(images.shape[1:])
        except ValueError as e:
            raise DatasetError(
                f"{what}: example {i} is {image.shape}, expected "
                f"{images.shape[1:]}; variable-size images are not supported"
            ) from e
        labels[i] = example[label_key]
    assert images is not None
    return images, labels
