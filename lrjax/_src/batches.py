"""How batches reach the step: in-memory arrays gathered by index, or an iterable.

Every source is a :class:`Source`: ``source.chunk(lo, hi)`` returns the inputs of
updates ``lo .. hi - 1`` stacked along a leading axis, ready for a compiled chunk,
and ``source.gathers`` says whether they are batch indices into ``source.data``
or the batches themselves.

* :class:`ArraySource`: a pytree of arrays with a common leading example axis
  (a tuple ``(x, y)``, a dict ``{"image": ..., "label": ...}``, nested). The data
  go to the device once; a chunk's inputs are only its ``int32`` batch indices,
  built when the chunk runs (memory does not grow with the sweep), and the
  compiled step gathers the batch itself. Epoch ``e`` of key ``k`` is the
  permutation ``jax.random.permutation(fold_in(k, e), N)`` cut into
  ``N // batch_size`` batches (the remainder is dropped, as ``drop_last=True``):
  :func:`epoch_order`, the one definition of a batch order.
* :class:`IterSource`: any Python iterable of batch pytrees (a generator of numpy
  batches, a ``grain`` dataset, ``tfds.as_numpy(...)``), pulled on the host and
  stacked; the loop driver asks for the next chunk right after dispatching the
  current one, so the host pulls and transfers while the device computes. An
  iterable that runs out is restarted when ``iter()`` gives a fresh iterator
  (a list, a grain dataset); a one-shot iterator ends the run, and the result
  says so.

:func:`as_source` tells them apart: arrays, tuples, dicts and NamedTuples whose
leaves are all arrays are in-memory data; anything else iterable (generators,
lists of batches, loaders) is an iterable of batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import PyTreeDef

__all__ = [
    "ArraySource",
    "IterSource",
    "ProcessShare",
    "Source",
    "as_source",
    "batch_indices",
    "epoch_order",
    "leading_size",
]

_ARRAY = (np.ndarray, jax.Array)


class Source(Protocol):
    """What the drivers read from a source of training batches.

    :func:`lrjax._src.loop.drive` (fit, the range test, the grid) and fit's BatchNorm
    pass use these three members and nothing else; everything else a source
    has (``batch_size``, ``skipped``, ...) is read only by the code that built it.
    Implementations: :class:`ArraySource` (and fit's per-epoch variant),
    :class:`ProcessShare`, :class:`IterSource`, and the population wrappers
    that give each member its seed's indices.
    """

    @property
    def gathers(self) -> bool:
        """Whether :meth:`chunk` gives batch indices into :attr:`data` (the
        compiled step gathers ``data[idx]`` itself) rather than the batches.
        Read on the host once, when the driver builds its
        :class:`lrjax._src.loop.Program`."""
        ...

    @property
    def data(self) -> Any:
        """The pytree the indices point into, already on the device(s) and
        passed to every compiled chunk as an argument (never closed over, so
        never baked into the executable); None when :attr:`gathers` is False."""
        ...

    def chunk(self, lo: int, hi: int) -> Any:
        """The inputs of updates ``lo .. hi - 1``, stacked on a leading axis.

        Called on the host between compiled chunks: :func:`lrjax._src.loop.drive`
        asks for chunk ``i + 1`` right after dispatching chunk ``i`` (so the
        host builds or pulls it while the device computes). When
        :attr:`gathers`: ``int32[C, (members,) (k,) B]`` batch indices on the
        device (``C = hi - lo``; a member axis when each member has its own
        batch order, ``k`` micro-batches under gradient accumulation), a pure
        function of ``(lo, hi)``, so a driver may ask twice or out of order
        (fit compiles every chunk length up front). Otherwise the batches
        themselves, each leaf ``[C, (k,) B, ...]`` placed on the device(s); an
        iterable source is consumed, and gives fewer than ``hi - lo`` updates
        when it runs out, or None when nothing is left.
        """
        ...


def leading_size(tree: Any, what: str = "batch") -> int:
    """The common leading size of every leaf of ``tree``.

    >>> leading_size({"x": np.zeros((4, 2)), "y": np.zeros(4)})
    4

    Raises:
      ValueError: no leaves, a scalar leaf, or leaves of different leading sizes.
    """
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not flat:
        raise ValueError(f"the {what} has no arrays")
    sizes = {}
    for path, leaf in flat:
        shape = np.shape(leaf)
        name = jax.tree_util.keystr(path) or "the array"
        if not shape:
            raise ValueError(f"{what} leaf {name} is a scalar; it needs a leading axis")
        sizes[name] = shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"{what} leaves must share their leading size, got "
            + ", ".join(f"{k}: {v}" for k, v in sizes.items())
        )
    return next(iter(sizes.values()))


def is_arrays(obj: Any) -> bool:
    """Whether ``obj`` is in-memory data (arrays, or a tuple/dict of only arrays)."""
    if isinstance(obj, _ARRAY):
        return True
    if isinstance(obj, tuple | Mapping):
        leaves = jax.tree.leaves(obj)
        return bool(leaves) and all(isinstance(a, _ARRAY) for a in leaves)
    return False


def check_batch_size(batch_size: Any, num_examples: int) -> int:
    """The one batch-size check: an integer in ``[1, num_examples]``."""
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or not 1 <= batch_size <= num_examples
    ):
        raise ValueError(
            f"batch_size must be an integer between 1 and the number of examples "
            f"({num_examples}), got {batch_size!r}"
        )
    return int(batch_size)


def epoch_order(
    key: jax.Array, epoch: int, num_examples: int, batch_size: int
) -> jax.Array:
    """``int32[N // B, B]``: the batches of one epoch (a permutation, cut).

    Batch ``b`` of epoch ``e`` is ``perm[b * B : (b + 1) * B]`` with ``perm =
    jax.random.permutation(fold_in(key, e), N)``; the last ``N % B`` examples of
    the permutation are left out of the epoch. Every in-memory batch order in
    lrjax is this function: the range test's and the grid's seed ``s`` at
    ``fold_in(key, s)``, epoch after epoch; fit's epoch ``e`` is epoch ``0`` at
    ``fold_in(key, e)`` (``lrjax.fit``), so fit's first epoch is the range
    test's first seed's first epoch, and its later epochs are not.

    >>> order = epoch_order(jax.random.key(0), 1, 10, 3)
    >>> order.shape, order.dtype, len(set(order.ravel().tolist()))
    ((3, 3), dtype('int32'), 9)
    """
    per_epoch = num_examples // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return (
        perm[: per_epoch * batch_size].reshape(per_epoch, batch_size).astype(jnp.int32)
    )


def _span(
    epoch_batches: Callable[[int], jax.Array], per_epoch: int, start: int, count: int
) -> jax.Array:
    """Batches ``start .. start + count - 1`` of a stream of epochs of
    ``per_epoch`` batches each, epoch ``e`` being ``epoch_batches(e)``; only the
    epochs that the range touches are built."""
    first, last = start // per_epoch, (start + count - 1) // per_epoch
    orders = [epoch_batches(e) for e in range(first, last + 1)]
    out = jnp.concatenate(orders) if len(orders) > 1 else orders[0]
    lo = start - first * per_epoch
    return out[lo : lo + count]


def batch_indices(
    key: jax.Array, num_examples: int, batch_size: int, num_steps: int, start: int = 0
) -> jax.Array:
    """``int32[num_steps, batch_size]``: batches ``start .. start + num_steps - 1``.

    Batch ``j`` is batch ``j % (N // B)`` of epoch ``j // (N // B)``
    (:func:`epoch_order`); only the epochs that the range touches are built.

    >>> idx = batch_indices(jax.random.key(0), 10, 3, 7)
    >>> idx.shape, len(set(idx[:3].ravel().tolist()))  # 3 batches: 9 distinct
    ((7, 3), 9)
    >>> bool((batch_indices(jax.random.key(0), 10, 3, 2, start=5) == idx[5:]).all())
    True
    """
    batch_size = check_batch_size(batch_size, num_examples)

    def epoch(e: int) -> jax.Array:
        return epoch_order(key, e, num_examples, batch_size)

    return _span(epoch, num_examples // batch_size, start, num_steps)


class ArraySource:
    """In-memory data on the device; chunks are batch indices per member key.

    A :class:`Source`. Member ``m``'s micro-batches run through the epochs of
    :func:`epoch_order` at ``keys[m]`` without a break: update ``t`` takes
    micro-batches ``t * k .. t * k + k - 1`` of that stream (an epoch's
    ``N // B`` micro-batches need not be a multiple of ``k``).

    Args:
      data: a pytree of arrays with a common leading example axis.
      batch_size: examples per (micro-)batch.
      keys: one ``jax.random.key`` per member (seed) drawing its batch order, or
        a single key.
      accumulate_steps: micro-batches per update; a chunk's indices are then
        ``[C, (members,) k, B]``.
      sharding: where ``data`` is put (replicated over a mesh), default device 0.
    """

    gathers = True
    data: Any  # the pytree on the device(s)

    def __init__(
        self,
        data: Any,
        batch_size: int,
        keys: jax.Array | list[jax.Array],
        *,
        accumulate_steps: int = 1,
        sharding: jax.sharding.Sharding | None = None,
        index_sharding: jax.sharding.Sharding | None = None,
    ):
        self.num_examples = leading_size(data, "data")
        self.batch_size = check_batch_size(batch_size, self.num_examples)
        self.steps_per_epoch = self.num_examples // self.batch_size
        # micro-batches per epoch of the stream (:meth:`_order`'s length)
        self.epoch_length = self.steps_per_epoch
        self.per_member = isinstance(keys, list | tuple)
        self.keys = list(keys) if isinstance(keys, list | tuple) else [keys]
        self.k = accumulate_steps
        data = jax.tree.map(jnp.asarray, data)
        self.data = data if sharding is None else jax.device_put(data, sharding)
        self.index_sharding = index_sharding
        self._orders: dict[int, dict[int, jax.Array]] = {}

    def _order(self, m: int, epoch: int) -> jax.Array:
        """Member ``m``'s micro-batches of ``epoch``: :func:`epoch_order`."""
        return epoch_order(self.keys[m], epoch, self.num_examples, self.batch_size)

    def _epoch(self, m: int, epoch: int) -> jax.Array:
        """:meth:`_order`, of which the last two epochs are cached, so a
        permutation is drawn once per epoch, not once per chunk."""
        cache = self._orders.setdefault(m, {})
        if epoch not in cache:
            if len(cache) >= 2:
                cache.pop(min(cache))
            cache[epoch] = self._order(m, epoch)
        return cache[epoch]

    def _indices(self, m: int, start: int, count: int) -> jax.Array:
        """Member ``m``'s micro-batches ``start .. start + count - 1``
        (:func:`batch_indices` ``(key_m, N, B, count, start)``)."""
        return _span(lambda e: self._epoch(m, e), self.epoch_length, start, count)

    def chunk(self, lo: int, hi: int) -> jax.Array:
        n, k, b = hi - lo, self.k, self.batch_size
        parts = [
            self._indices(m, lo * k, n * k).reshape((n, k, b) if k > 1 else (n, b))
            for m in range(len(self.keys))
        ]
        idx = jnp.stack(parts, axis=1) if self.per_member else parts[0]
        if self.index_sharding is not None:
            idx = jax.device_put(idx, self.index_sharding)
        return idx


def take(data: Any, idx: jax.Array) -> Any:
    """The batch ``data[idx]`` of every leaf (inside compiled code)."""
    return jax.tree.map(lambda a: a[idx], data)


def process_rows(sharding: jax.sharding.Sharding, shape: tuple, axis: int) -> slice:
    """The rows of ``axis`` that this process's devices hold under ``sharding``.

    >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    >>> s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    >>> process_rows(s, (3, 8), 1)
    slice(0, 8, None)

    Raises:
      ValueError: the rows are not one contiguous block (a mesh whose devices are
        not grouped by process).
    """
    # jax types the map's values `Index | None`; an addressable device has an Index
    indices = sharding.addressable_devices_indices_map(shape).values()
    rows = [ix[axis] for ix in indices]  # type: ignore[index]
    parts = sorted(
        {(r.start or 0, shape[axis] if r.stop is None else r.stop) for r in rows}
    )
    if any(a[1] != b[0] for a, b in zip(parts[:-1], parts[1:], strict=True)):
        raise ValueError(
            f"this process's devices hold rows {parts} of the batch: not one block"
        )
    return slice(parts[0][0], parts[-1][1])


class ProcessShare:
    """The global batches of an :class:`ArraySource`, each process reading its share.

    A :class:`Source` whose chunks are batches (``gathers`` is False).

    ``base.chunk`` gives every process the same global batch indices
    ``[C, (k,) B]`` (the same keys, the same order); this process keeps the
    columns its devices hold under ``sharding`` (:func:`process_rows`), gathers
    those examples from its own copy of the data on its first local device, and
    the global batch ``[C, (k,) B, ...]`` is assembled from every process's rows
    with ``jax.make_array_from_process_local_data``. The compiled step receives
    batches, not indices (``gathers`` is False). In one process this is the
    whole batch, placed with ``sharding``.
    """

    gathers = False
    data = None

    def __init__(self, base: ArraySource, sharding: jax.sharding.Sharding):
        self.base = base
        self.sharding = sharding
        self.axis = 2 if base.k > 1 else 1
        self.batch_size = base.batch_size
        self.steps_per_epoch = base.steps_per_epoch
        self._take = jax.jit(take)

    def chunk(self, lo: int, hi: int) -> Any:
        idx = self.base.chunk(lo, hi)
        rows = process_rows(self.sharding, idx.shape, self.axis)
        local = self._take(
            self.base.data,
            jax.lax.slice_in_dim(idx, rows.start, rows.stop, axis=self.axis),
        )
        return jax.tree.map(
            lambda a: jax.make_array_from_process_local_data(
                self.sharding, a, (*idx.shape, *a.shape[self.axis + 1 :])
            ),
            local,
        )


class IterSource:
    """An iterable of batch pytrees, pulled on the host and stacked per chunk.

    A :class:`Source` whose chunks are batches (``gathers`` is False).

    Every batch must have the structure, shapes and dtypes of the first one; a
    batch with a smaller leading size (a loader's last partial batch) is skipped
    and counted in ``skipped``.

    With ``local_share`` under several processes, each process's iterable yields
    ITS rows of every global batch (e.g. a grain pipeline sharded by
    ``jax.process_index()``), the same number of batches on every process, and
    ``sharding`` (global, batch axis sharded) assembles them into global batches.
    Otherwise every process must yield the same batches.
    """

    gathers = False
    data = None

    def __init__(
        self,
        batches: Iterable,
        *,
        accumulate_steps: int = 1,
        sharding: jax.sharding.Sharding | None = None,
        local_share: bool = False,
    ):
        if not isinstance(batches, Iterable):
            raise TypeError(
                f"data must be arrays or an iterable of batches, got "
                f"{type(batches).__name__}"
            )
        self.source = batches
        self.iterator: Iterator = iter(batches)
        # A re-iterable (list, grain dataset) gives a new iterator each time.
        self.restartable = self.iterator is not batches
        self.k = accumulate_steps
        self.sharding = sharding
        self.local_share = local_share
        # (treedef, [(shape, dtype)]) of the first batch
        self.spec: tuple[PyTreeDef, list[tuple[tuple[int, ...], np.dtype]]] | None
        self.spec = None
        self.batch_size: int | None = None
        self.pulled = 0
        self.skipped = 0
        self.restarts = 0
        self._first = None  # the batch first_batch_size() pulled, not used yet

    def first_batch_size(self) -> int | None:
        """The first batch's leading size (None: no batch), pulled now and kept
        for the first chunk, so that a check can run before any update."""
        if self.spec is None and self._first is None:
            self._first = self._next_batch()
        return self.batch_size

    def _next_batch(self):
        if self._first is not None:
            batch, self._first = self._first, None
            return batch
        while True:
            try:
                batch = next(self.iterator)
            except StopIteration:
                if not self.restartable or self.pulled == 0:
                    return None
                self.iterator = iter(self.source)
                self.restarts += 1
                self.pulled = 0
                continue
            leaves, treedef = jax.tree.flatten(batch)
            size = leading_size(batch)
            spec = [(np.shape(a)[1:], np.asarray(a).dtype) for a in leaves]
            if self.spec is None:
                self.spec, self.batch_size = (treedef, spec), size
            elif treedef != self.spec[0] or spec != self.spec[1]:
                raise ValueError(
                    f"batch {self.pulled} has another structure than the first "
                    f"batch: {treedef} {spec} vs {self.spec[0]} {self.spec[1]}"
                )
            self.pulled += 1
            if size != self.batch_size:
                self.skipped += 1
                continue
            return [np.asarray(a) for a in leaves]

    def chunk(self, lo: int, hi: int) -> Any | None:
        """Batches of updates ``lo .. hi-1`` (fewer if the data ran out), or None."""
        rows = []
        for _ in range((hi - lo) * self.k):
            b = self._next_batch()
            if b is None:
                break
            rows.append(b)
        rows = rows[: len(rows) // self.k * self.k]
        if not rows:
            return None
        stacked = [np.stack(col) for col in zip(*rows, strict=True)]
        if self.k > 1:
            stacked = [
                a.reshape(len(rows) // self.k, self.k, *a.shape[1:]) for a in stacked
            ]
        assert self.spec is not None  # set by the first batch
        batch = jax.tree.unflatten(self.spec[0], stacked)
        if self.local_share and jax.process_count() > 1:
            # This process's rows of every global batch (its share of the data).
            return jax.tree.map(
                lambda a: jax.make_array_from_process_local_data(self.sharding, a),
                batch,
            )
        return jax.device_put(batch, self.sharding)


def as_source(
    data: Any,
    *,
    batch_size: int | None,
    keys: jax.Array | list[jax.Array],
    accumulate_steps: int = 1,
    sharding: jax.sharding.Sharding | None = None,
    index_sharding: jax.sharding.Sharding | None = None,
) -> ArraySource | IterSource:
    """Arrays -> :class:`ArraySource`; other iterables -> :class:`IterSource`."""
    if is_arrays(data):
        if batch_size is None:
            raise ValueError("batch_size is required for in-memory data")
        return ArraySource(
            data,
            batch_size,
            keys,
            accumulate_steps=accumulate_steps,
            sharding=sharding,
            index_sharding=index_sharding,
        )
    return IterSource(
        data, accumulate_steps=accumulate_steps, sharding=index_sharding or sharding
    )


def scale_images(x: jax.Array) -> jax.Array:
    """Integer images (0-255) as float32 in ``[0, 1]``: ``x / 255``.

    Put it in front of a model fed uint8 images, which then stay uint8 on the
    device (a quarter of float32's memory) and are scaled in compiled code:
    ``nnx.Sequential(lrjax.scale_images, model)``, as the command lines do; or
    call it on the host once.

    Raises:
      TypeError: an ``(x, y)`` batch (before 0.3.0 this was a batch function,
        passed as ``preprocess=``), or float images (scaled already?).

    >>> scale_images(jnp.array([[0, 255]], jnp.uint8)).tolist()
    [[0.0, 1.0]]
    """
    if isinstance(x, tuple | list):
        raise TypeError(
            "scale_images takes the images, not an (x, y) batch: put it in front "
            "of the model, nnx.Sequential(lrjax.scale_images, model)"
        )
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(
            f"scale_images takes integer images in [0, 255], got {x.dtype} "
            "(scaled already?)"
        )
    return x.astype(jnp.float32) / 255.0
