"""The one Source protocol and the one batch order (lrjax.batches).

Every class the drivers read batches from conforms to :class:`Source` (checked
here with ``inspect``, independently of mypy), and every in-memory batch order is
:func:`epoch_order`: the references below cut ``jax.random.permutation`` with
plain Python loops over updates, and fit and the range test are read back end to
end through a loss that identifies each batch.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrjax
from lrjax import FitConfig, fit, lr_range_test
from lrjax._src.batches import (
    ArraySource,
    IterSource,
    ProcessShare,
    Source,
    batch_indices,
    epoch_order,
)
from lrjax._src.fit import _EpochArrays, _Parallel, _train_source

# The command-line shims are scripts (importing lrjax.find makes runpy warn).
SCRIPTS = {"find", "grid", "train"}

PROTOCOL = sorted(n for n in vars(Source) if not n.startswith("_"))


def source_classes() -> list[type]:
    """Every class of the package with a ``gathers`` flag or a ``chunk(lo, hi)``
    (a hook's ``chunk(run, end)`` is another thing): what a driver reads."""
    found = {}
    for info in pkgutil.walk_packages(lrjax.__path__, "lrjax."):
        if info.name.rsplit(".", 1)[-1] in SCRIPTS or info.name.startswith("lrjax.cli"):
            continue
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if (
                inspect.isclass(cls)
                and cls.__module__ == module.__name__
                and cls is not Source
                and callable(getattr(cls, "chunk", None))
                and (
                    hasattr(cls, "gathers")
                    or list(inspect.signature(cls.chunk).parameters)[1:3]
                    == ["lo", "hi"]
                )
            ):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


def missing_members(cls: type) -> list[str]:
    """The protocol members ``cls`` lacks or has with another signature."""

    def params(fn) -> list[tuple[str, inspect._ParameterKind]]:
        return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]

    # instance attributes set in __init__ are declared on the class
    annotated = set().union(*(getattr(k, "__annotations__", {}) for k in cls.__mro__))
    missing = []
    for name in PROTOCOL:
        want = inspect.getattr_static(Source, name)
        have = inspect.getattr_static(cls, name, None)
        if inspect.isfunction(want):  # a method: the same parameters
            ok = inspect.isfunction(have) and params(have) == params(want)
        elif name == "gathers":  # a flag fixed by the class
            ok = isinstance(have, bool | property)
        else:  # a class attribute, a property or an annotated instance attribute
            ok = have is not None or name in annotated or name in vars(cls)
        if not ok:
            missing.append(name)
    return missing


def test_the_protocol_is_what_the_drivers_read():
    assert PROTOCOL == ["chunk", "data", "gathers"]
    assert list(inspect.signature(Source.chunk).parameters) == ["self", "lo", "hi"]


def test_every_source_class_conforms():
    classes = source_classes()
    names = {c.__qualname__ for c in classes}
    # the four of batches.py and fit, and the population wrappers
    assert {"ArraySource", "IterSource", "ProcessShare", "_EpochArrays"} <= names
    assert len(classes) >= 5, names
    for cls in classes:
        assert missing_members(cls) == [], cls


def test_the_conformance_check_can_fail():
    class NoData:
        gathers = True

        def chunk(self, lo, hi):
            return None

    class OtherChunk:
        gathers, data = False, None

        def chunk(self, start):
            return None

    class NoGathers:
        data = None

        def chunk(self, lo, hi):
            return None

    assert missing_members(NoData) == ["data"]
    assert missing_members(OtherChunk) == ["chunk"]
    assert missing_members(NoGathers) == ["gathers"]


N, B = 23, 4  # 5 batches per epoch, 3 examples left out of each


def ref_epoch(key, e: int, n: int = N, b: int = B) -> list[np.ndarray]:
    """Epoch ``e``'s batches, cut from the permutation by a plain loop."""
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, e), n))
    return [perm[i * b : (i + 1) * b] for i in range(n // b)]


def ref_stream(key, start: int, count: int, n: int = N, b: int = B) -> np.ndarray:
    """Batches ``start .. start + count - 1``, epoch after epoch."""
    rows = []
    for t in range(start, start + count):
        e, i = divmod(t, n // b)
        rows.append(ref_epoch(key, e, n, b)[i])
    return np.stack(rows)


def ref_fit(key, lo: int, hi: int, spe: int, k: int, n: int = N, b: int = B):
    """fit's updates ``lo .. hi - 1``: update ``u`` of epoch ``e`` takes
    micro-batches ``u * k .. u * k + k - 1`` of epoch 0 at ``fold_in(key, e)``."""
    out = []
    for t in range(lo, hi):
        e, u = divmod(t, spe)
        epoch = ref_epoch(jax.random.fold_in(key, e), 0, n, b)
        out.append(np.stack([epoch[u * k + i] for i in range(k)]))
    out = np.stack(out)
    return out if k > 1 else out[:, 0]


@pytest.mark.parametrize("e", [0, 1, 4])
def test_epoch_order_is_the_cut_permutation(e):
    key = jax.random.key(3)
    order = epoch_order(key, e, N, B)
    assert order.dtype == jnp.int32 and order.shape == (N // B, B)
    np.testing.assert_array_equal(np.asarray(order), np.stack(ref_epoch(key, e)))
    seen = np.asarray(order).ravel()
    assert len(set(seen.tolist())) == len(seen) and seen.min() >= 0 and seen.max() < N
    jitted = jax.jit(epoch_order, static_argnums=(1, 2, 3))(key, e, N, B)
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(order))


def test_epochs_differ():
    key = jax.random.key(3)
    assert not np.array_equal(epoch_order(key, 0, N, B), epoch_order(key, 1, N, B))


@pytest.mark.parametrize(("start", "count"), [(0, 5), (0, 12), (3, 9), (10, 1)])
def test_batch_indices_run_through_the_epochs(start, count):
    key = jax.random.key(5)
    got = batch_indices(key, N, B, count, start=start)
    np.testing.assert_array_equal(np.asarray(got), ref_stream(key, start, count))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_array_source_chunks(k):
    keys = [jax.random.key(1), jax.random.key(2)]
    data = (np.arange(N, dtype=np.float32), np.zeros(N, np.int32))
    one = ArraySource(data, B, keys[0], accumulate_steps=k)
    both = ArraySource(data, B, keys, accumulate_steps=k)
    assert one.gathers and both.gathers
    np.testing.assert_array_equal(np.asarray(one.data[0]), data[0])
    for lo, hi in [(0, 2), (2, 7), (6, 8)]:
        refs = [
            ref_stream(key, lo * k, (hi - lo) * k).reshape(hi - lo, k, B)
            for key in keys
        ]
        if k == 1:
            refs = [r[:, 0] for r in refs]
        np.testing.assert_array_equal(np.asarray(one.chunk(lo, hi)), refs[0])
        got = np.asarray(both.chunk(lo, hi))  # [C, members, (k,) B]
        np.testing.assert_array_equal(got, np.stack(refs, axis=1))


@pytest.mark.parametrize(("k", "steps_per_epoch"), [(1, None), (2, None), (1, 3)])
def test_fit_source_is_fit_order(k, steps_per_epoch):
    key = jax.random.key(7)
    data = (np.arange(N, dtype=np.float32), np.zeros(N, np.int32))
    cfg = FitConfig(batch_size=B, accumulate_steps=k, steps_per_epoch=steps_per_epoch)
    source, spe = _train_source(data, key, cfg, _Parallel(None, None, None, False))
    assert isinstance(source, _EpochArrays) and source.gathers
    assert spe == (steps_per_epoch or (N // B) // k)
    for lo, hi in [(0, spe), (spe - 1, 3 * spe), (2, 3)]:
        got = np.asarray(source.chunk(lo, hi))
        np.testing.assert_array_equal(got, ref_fit(key, lo, hi, spe, k))


def test_process_share_and_iter_source_give_batches():
    data = (np.arange(N, dtype=np.float32), np.arange(N, dtype=np.int32))
    base = ArraySource(data, B, jax.random.key(1))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    share = ProcessShare(
        base, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    )
    assert not share.gathers and share.data is None
    x, y = share.chunk(1, 4)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(base.chunk(1, 4)))
    batches = [(np.full((B, 2), i, np.float32),) for i in range(5)]
    it = IterSource(iter(batches))
    assert not it.gathers and it.data is None
    (first,) = it.chunk(0, 3)
    assert first.shape == (3, B, 2) and np.asarray(first)[:, 0, 0].tolist() == [0, 1, 2]
    (rest,) = it.chunk(3, 6)  # the generator runs out: a short chunk
    assert rest.shape == (2, B, 2) and it.chunk(6, 7) is None


# End to end: the loss of a batch is sum(2**i) over its examples i, exact in
# float32 (N < 24), so every update's loss names the examples it saw.


def marker_loss(params, batch):
    (i,) = batch
    return jnp.sum(2.0 ** i.astype(jnp.float32)) + 0.0 * params["w"]


def marks(batches: np.ndarray) -> np.ndarray:
    return (2.0 ** batches.astype(np.float64)).sum(-1)


def test_fit_sees_fit_order():
    # lr 2**t and loss -w[i]: after training w[i] = sum of 2**t over the
    # updates t whose batch held example i, so w's bits name each update's batch.
    def loss(params, batch):
        (i,) = batch
        return -jnp.sum(params["w"][i])

    key, epochs, spe = jax.random.key(11), 3, N // B
    cfg = FitConfig(
        epochs=epochs, batch_size=B, learning_rate=lambda t: 2.0**t, progress=False
    )
    data = (np.arange(N, dtype=np.int32),)
    r = fit({"w": jnp.zeros(N)}, optax.sgd, data, key=key, config=cfg, loss_fn=loss)
    w = np.asarray(r.params["w"]).astype(np.int64)
    seen = ref_fit(key, 0, epochs * spe, spe, 1)
    expect = np.zeros(N, np.int64)
    for t, rows in enumerate(seen):
        expect[rows] += 2**t
    np.testing.assert_array_equal(w, expect)


def test_range_test_sees_seed_zeros_stream():
    # The range test's (first) seed runs through the epochs of fold_in(key, 0).
    key, steps = jax.random.key(13), 2 * (N // B) + 2
    r = lr_range_test(
        {"w": jnp.zeros(())}, optax.sgd, (np.arange(N, dtype=np.int32),), key=key,
        loss_fn=marker_loss, sweep=lrjax.Sweep(num_steps=steps, batch_size=B),
        divergence=lrjax.Divergence(stop=False),
    )  # fmt: skip
    seed0 = jax.random.fold_in(key, 0)
    np.testing.assert_array_equal(r.losses[0], marks(ref_stream(seed0, 0, steps)))


def test_fit_first_epoch_is_the_range_tests_first_epoch():
    # Only the first: fit's epoch e >= 1 is epoch 0 at fold_in(key, e), the range
    # test's is epoch e at fold_in(key, 0).
    key, spe = jax.random.key(13), N // B
    fit_epochs = ref_fit(key, 0, 2 * spe, spe, 1)
    range_stream = ref_stream(jax.random.fold_in(key, 0), 0, 2 * spe)
    np.testing.assert_array_equal(fit_epochs[:spe], range_stream[:spe])
    assert not np.array_equal(fit_epochs[spe:], range_stream[spe:])
