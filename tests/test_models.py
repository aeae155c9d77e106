"""The built-in models: the CNN against a hand count, pooling against
``lax.reduce_window``, and :class:`lrjax.models.Augment` against numpy."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lrjax._src import models
from lrjax._src.step import split_model


def param_shapes(model) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))

    def name(path):  # the module attribute names (DictKeys), not Variable fields
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        return ".".join(map(str, keys))

    return {name(path): tuple(x.shape) for path, x in leaves}


def test_cnn_layers_and_param_count_match_a_hand_count():
    model = models.cnn(10, key=jax.random.key(0))
    shapes = param_shapes(model)
    # 28 -> pool -> 14 -> pool -> 7: the dense layer sees 7 * 7 * 64 features.
    expected = {
        "conv1.kernel": (3, 3, 1, 32), "conv1.bias": (32,),
        "bn1.scale": (32,), "bn1.bias": (32,),
        "conv2.kernel": (3, 3, 32, 64), "conv2.bias": (64,),
        "bn2.scale": (64,), "bn2.bias": (64,),
        "dense.kernel": (7 * 7 * 64, 128), "dense.bias": (128,),
        "out.kernel": (128, 10), "out.bias": (10,),
    }  # fmt: skip
    assert shapes == expected
    hand = (9 * 32 + 32) + 64 + (9 * 32 * 64 + 64) + 128 + (3136 * 128 + 128)
    hand += 128 * 10 + 10
    assert sum(np.prod(s) for s in shapes.values()) == hand == 421_834
    stats = nnx.state(model, nnx.BatchStat)
    assert sum(x.size for x in jax.tree.leaves(stats)) == 2 * (32 + 64)


@pytest.mark.parametrize(
    "shape, input_shape",
    [
        ((3, 28, 28), (28, 28)),
        ((3, 28, 28, 1), (28, 28)),
        ((3, 32, 32, 3), (32, 32, 3)),
    ],
)
def test_cnn_output_shape(shape, input_shape):
    model = models.cnn(7, key=jax.random.key(1), input_shape=input_shape)
    model.eval()
    out = model(jnp.ones(shape))
    assert out.shape == (3, 7) and out.dtype == jnp.float32


def test_cnn_modes_dropout_and_batchnorm():
    model = models.cnn(10, key=jax.random.key(2))
    x = jax.random.uniform(jax.random.key(3), (8, 28, 28))
    model.train()
    a, b = model(x), model(x)  # new dropout masks, batch statistics
    assert not np.allclose(a, b)
    model.eval()
    np.testing.assert_array_equal(model(x), model(x))


def test_reshape_max_pool_equals_reduce_window():
    x = jax.random.normal(jax.random.key(4), (2, 9, 8, 3))  # odd H: edge dropped
    ref = jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
    )
    np.testing.assert_array_equal(models.max_pool_2x2(x), ref)


def candidates(image: np.ndarray, max_shift: int):
    """Every (dy, dx, flip) move of ``image`` by numpy's flip and roll."""
    for dy, dx, flip in itertools.product(
        range(-max_shift, max_shift + 1), range(-max_shift, max_shift + 1), (0, 1)
    ):
        moved = np.flip(image, axis=1) if flip else image
        yield (dy, dx, flip), np.roll(moved, (dy, dx), axis=(0, 1))


@pytest.mark.parametrize("channels", [None, 2])
def test_augment_is_a_roll_and_flip_of_each_image(channels):
    # A 2-pixel zero border: a roll by <= 2 pixels then equals a zero-filled shift.
    rng = np.random.default_rng(0)
    image = np.zeros((12, 10) + ((channels,) if channels else ()), np.float32)
    image[2:-2, 2:-2] = rng.uniform(1, 2, image[2:-2, 2:-2].shape)
    batch = jnp.asarray(np.broadcast_to(image, (64, *image.shape)))
    aug = models.Augment(max_shift=2, rngs=nnx.Rngs(augment=0))
    out = np.asarray(aug(batch))
    seen = []
    for got in out:
        hits = [m for m, ref in candidates(image, 2) if np.array_equal(got, ref)]
        assert len(hits) == 1, hits  # exactly one of the 50 moves, bit for bit
        seen.append(hits[0])
    shifts = {(dy, dx) for dy, dx, _ in seen}
    flips = {f for _, _, f in seen}
    assert len(shifts) >= 15 and flips == {0, 1}  # 64 draws from 25 shifts
    again = np.asarray(aug(batch))  # the stream advanced: new draws
    assert not np.array_equal(again, out)
    same = models.Augment(max_shift=2, rngs=nnx.Rngs(augment=0))(batch)
    np.testing.assert_array_equal(same, out)  # a fixed key: the same draws


def test_shift_fills_with_zeros():
    x = np.arange(1, 26, dtype=np.float32).reshape(1, 5, 5)
    got = models.shift_and_flip(jnp.asarray(x), jnp.array([[-2, 1]]), jnp.array([0]))
    want = np.zeros_like(x)
    want[0, :3, 1:] = x[0, 2:, :4]
    np.testing.assert_array_equal(got, want)


def test_augment_without_flips_only_shifts():
    image = np.zeros((9, 9), np.float32)
    image[3:6, 2:5] = np.arange(1, 10).reshape(3, 3)  # not mirror-symmetric
    aug = models.Augment(max_shift=2, flip=False, rngs=nnx.Rngs(3))
    for got in np.asarray(aug(jnp.asarray(image[None].repeat(32, 0)))):
        hits = [m for m, ref in candidates(image, 2) if np.array_equal(got, ref)]
        assert len(hits) == 1 and hits[0][2] == 0


def test_augment_is_the_identity_in_eval_mode():
    x = jax.random.uniform(jax.random.key(5), (4, 28, 28))
    net = nnx.Sequential(
        models.Augment(rngs=nnx.Rngs(1)), models.cnn(10, key=jax.random.key(6))
    )
    bare = models.cnn(10, key=jax.random.key(6))
    spec, params, rest = split_model(net)
    bspec, bparams, brest = split_model(bare)
    # lrjax's evaluation mode (the step's eval definition) and .eval() alike.
    np.testing.assert_array_equal(
        spec.merge(params, rest, train=False)(x),
        bspec.merge(bparams, brest, train=False)(x),
    )
    net.eval()
    bare.eval()
    np.testing.assert_array_equal(net(x), bare(x))
    assert not np.array_equal(spec.merge(params, rest, train=True).layers[0](x), x)
