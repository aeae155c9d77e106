"""Built-in NNX models: the seed recipe's MLP, a small BatchNorm CNN, augmentation.

lrjax trains any ``nnx.Module`` (:mod:`lrjax._src.step`); these are the ones the
command lines build (``--model mlp|cnn``, ``--augment``). :func:`pure` turns a
stateless module into the ``(apply, params)`` pair of hand-written JAX code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Params = Any
Apply = Callable[[Params, jax.Array], jax.Array]


class MLP(nnx.Module):
    """Flatten -> Dense(relu) per hidden layer -> Dense, the widths from ``sizes``.

    ``sizes`` are every layer's width, the input's first and the classes' last:
    ``MLP((784, 300, 100, 10), rngs=...)`` is the 784-300-100-10 MLP
    (:func:`lrjax.mlp` builds it from the input size, classes and hidden sizes).

    Returns logits; the softmax lives in the loss (and in ensemble prediction).
    """

    def __init__(self, sizes: Sequence[int], *, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [
                nnx.Linear(a, b, rngs=rngs)
                for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def parse_hidden(text: str) -> tuple[int, ...]:
    """Parses ``"300,100"`` into ``(300, 100)``.

    >>> parse_hidden("300,100")
    (300, 100)

    Raises:
      ValueError: if an entry is not a positive integer.
    """
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(
            f"hidden must be a comma-separated list of positive integers, got {text!r}"
        )
    return sizes


def mlp(
    input_size: int,
    num_classes: int,
    hidden: Sequence[int] = (300, 100),
    *,
    key: jax.Array,
) -> MLP:
    """The MLP ``input_size -> *hidden -> num_classes`` with ReLU, as an NNX module.

    Args:
      input_size: number of input features (784 for 28x28 images); inputs of any
        shape ``[B, ...]`` are flattened.
      num_classes: number of output logits.
      hidden: hidden layer widths, default the seed recipe's ``(300, 100)``.
      key: a ``jax.random.key`` for the initialisation (LeCun normal kernels,
        zero biases: Flax's defaults).

    >>> model = mlp(784, 10, key=jax.random.key(0))
    >>> sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    266610
    >>> model(jax.numpy.zeros((2, 28, 28))).shape
    (2, 10)
    """
    if input_size < 1 or num_classes < 1 or any(h < 1 for h in hidden):
        raise ValueError(
            f"layer sizes must be >= 1, got input_size={input_size}, "
            f"hidden={tuple(hidden)}, num_classes={num_classes}"
        )
    return MLP((input_size, *hidden, num_classes), rngs=nnx.Rngs(params=key))


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 of ``[N, H, W, C]`` (odd edges dropped).

    A reshape and a max instead of ``lax.reduce_window``: the same values, and a
    much cheaper backward pass on XLA:CPU (REFERENCE.md, "Convolutions on XLA:CPU").

    >>> max_pool_2x2(jnp.arange(16.0).reshape(1, 4, 4, 1))[0, ..., 0]
    Array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))


def _nhwc(x: jax.Array) -> jax.Array:
    """``[B, H, W]`` gets a channel axis; ``[B, H, W, C]`` is kept."""
    if x.ndim == 3:
        return x[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected images [B, H, W] or [B, H, W, C], got {x.shape}")
    return x


class CNN(nnx.Module):
    """Conv3x3-32-BN-ReLU-MaxPool, Conv3x3-64-BN-ReLU-MaxPool, Dense 128-ReLU,
    Dropout, Dense ``num_classes``.

    Inputs ``[B, H, W]`` (a channel axis is added) or ``[B, H, W, C]``; returns
    logits. Convolutions are "SAME"-padded, pooling is :func:`max_pool_2x2`.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        input_shape: Sequence[int] = (28, 28),
        dropout: float = 0.3,
        rngs: nnx.Rngs,
    ):
        h, w, c = (*input_shape, 1)[:3]
        self.conv1 = nnx.Conv(c, 32, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(32, rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
        self.bn2 = nnx.BatchNorm(64, rngs=rngs)
        self.dense = nnx.Linear((h // 4) * (w // 4) * 64, 128, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.out = nnx.Linear(128, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _nhwc(x)
        x = max_pool_2x2(jax.nn.relu(self.bn1(self.conv1(x))))
        x = max_pool_2x2(jax.nn.relu(self.bn2(self.conv2(x))))
        x = jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))
        return self.out(self.dropout(x))


def cnn(
    num_classes: int = 10,
    *,
    key: jax.Array,
    input_shape: Sequence[int] = (28, 28),
    dropout: float = 0.3,
) -> CNN:
    """The small BatchNorm CNN (:class:`CNN`) for ``input_shape`` images.

    Args:
      num_classes: number of output logits.
      key: a ``jax.random.key``; the initialisation and Dropout's stream are
        both drawn from it (Flax's default initialisers).
      input_shape: ``(H, W)`` or ``(H, W, C)`` of one image.
      dropout: Dropout's rate before the last layer.

    Parameters for 28x28x1: conv 3*3*1*32+32 = 320, BN 2*32 = 64, conv
    3*3*32*64+64 = 18,496, BN 2*64 = 128, dense 7*7*64*128+128 = 401,536, out
    128*10+10 = 1,290; 421,834 in all (and 192 BatchNorm statistics).

    >>> model = cnn(10, key=jax.random.key(0))
    >>> sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    421834
    >>> sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    192
    >>> model(jnp.zeros((2, 28, 28))).shape, model(jnp.zeros((2, 28, 28, 1))).shape
    ((2, 10), (2, 10))
    """
    if num_classes < 1 or not 0 <= dropout < 1:
        raise ValueError(
            f"need num_classes >= 1 and 0 <= dropout < 1, got {num_classes}, {dropout}"
        )
    if len(input_shape) not in (2, 3) or min(input_shape[:2]) < 4:
        raise ValueError(f"input_shape must be (H>=4, W>=4[, C]), got {input_shape}")
    return CNN(
        num_classes, input_shape=input_shape, dropout=dropout, rngs=nnx.Rngs(key)
    )


def shift_and_flip(x: jax.Array, shifts: jax.Array, flips: jax.Array) -> jax.Array:
    """Each image moved by ``shifts[i] = (dy, dx)`` pixels, zero filled, after a
    horizontal flip where ``flips[i]``.

    ``x``: ``[B, H, W]`` or ``[B, H, W, C]``; ``shifts``: int ``[B, 2]``; ``flips``:
    bool ``[B]``. A positive ``dy`` moves the content down, ``dx`` right.

    >>> x = jnp.arange(9.0).reshape(1, 3, 3)
    >>> shift_and_flip(x, jnp.array([[1, 0]]), jnp.array([True]))[0]
    Array([[0., 0., 0.],
           [2., 1., 0.],
           [5., 4., 3.]], dtype=float32)
    """
    flipped = jnp.where(flips.reshape(-1, *([1] * (x.ndim - 1))), x[:, :, ::-1], x)
    h, w = x.shape[1:3]
    m = int(max(h, w))
    pad = [(0, 0), (m, m), (m, m)] + [(0, 0)] * (x.ndim - 3)
    padded = jnp.pad(flipped, pad)

    def one(img, s):
        start = (m - s[0], m - s[1]) + (0,) * (x.ndim - 3)
        return jax.lax.dynamic_slice(img, start, (h, w, *x.shape[3:]))

    return jax.vmap(one)(padded, shifts.astype(jnp.int32))


class Augment(nnx.Module):
    """Random shifts of up to ``max_shift`` pixels and horizontal flips, in
    training mode only.

    A layer to put in front of an image model (``nnx.Sequential(Augment(...),
    model)``): on the device, inside the compiled step, so it costs a gather per
    batch and no host work. Each image gets its own ``(dy, dx)`` uniform in
    ``[-max_shift, max_shift]`` and a flip with probability 1/2, from the
    ``augment`` rng stream (the ``default`` one if ``rngs`` has none). With
    ``deterministic=True`` (``model.eval()``, lrjax's evaluation mode) it is the
    identity.

    >>> aug = Augment(rngs=nnx.Rngs(0))
    >>> x = jnp.ones((4, 28, 28))
    >>> aug(x).shape, bool((aug(x) != x).any())
    ((4, 28, 28), True)
    >>> aug.eval()
    >>> bool((aug(x) == x).all())
    True
    """

    def __init__(
        self,
        max_shift: int = 2,
        flip: bool = True,
        *,
        deterministic: bool = False,
        rngs: nnx.Rngs,
    ):
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = max_shift
        self.flip = flip
        self.deterministic = deterministic
        self.rngs = rngs["augment"].fork()

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic:
            return x
        n = x.shape[0]
        k_shift, k_flip = jax.random.split(self.rngs())
        shifts = jax.random.randint(
            k_shift, (n, 2), -self.max_shift, self.max_shift + 1
        )
        if self.flip:
            flips = jax.random.bernoulli(k_flip, 0.5, (n,))
        else:
            flips = jnp.zeros((n,), bool)
        return shift_and_flip(x, shifts, flips)


def pure(model: nnx.Module) -> tuple[Apply, Params]:
    """``(apply, params)`` of a stateless module: ``apply(params, x) -> logits``.

    The module is split once into a static graph definition and its params;
    ``apply`` merges them inside the traced function.
    """
    graphdef, params = nnx.split(model, nnx.Param)

    def apply(params: Params, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params)(x)

    return apply, params
