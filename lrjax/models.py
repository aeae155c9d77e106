"""The MLP of the seed recipe, and the only module that imports Flax.

A model is handed to the rest of lrjax as a pure pair: ``apply(params, x) -> logits``
and ``params``, a pytree of arrays. The Flax NNX module is split once into a static
graph definition and its parameters; ``apply`` merges them inside the traced
function, so ``apply`` is a plain function of arrays that ``jit``, ``vmap`` and
``grad`` treat like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

Params = Any
Apply = Callable[[Params, jax.Array], jax.Array]


class MLP(nnx.Module):
    """Flatten -> Dense(h, relu) for each hidden size -> Dense(num_classes).

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
) -> tuple[Apply, Params]:
    """Builds the MLP ``input_size -> *hidden -> num_classes`` with ReLU.

    Args:
      input_size: number of input features (784 for 28x28 images); inputs of any
        shape ``[B, ...]`` are flattened.
      num_classes: number of output logits.
      hidden: hidden layer widths, default the seed recipe's ``(300, 100)``.
      key: a ``jax.random.key`` for the initialisation (LeCun normal kernels,
        zero biases: Flax's defaults).

    Returns:
      ``(apply, params)`` with ``apply(params, x) -> logits [B, num_classes]``.

    >>> apply, params = mlp(784, 10, key=jax.random.key(0))
    >>> sum(p.size for p in jax.tree.leaves(params))
    266610
    >>> apply(params, jax.numpy.zeros((2, 28, 28))).shape
    (2, 10)
    """
    if input_size < 1 or num_classes < 1 or any(h < 1 for h in hidden):
        raise ValueError(
            f"layer sizes must be >= 1, got input_size={input_size}, "
            f"hidden={tuple(hidden)}, num_classes={num_classes}"
        )
    graphdef, params = mlp_init(input_size, num_classes, hidden, key=key)

    def apply(params: Params, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params)(x)

    return apply, params


def mlp_init(
    input_size: int,
    num_classes: int,
    hidden: Sequence[int] = (300, 100),
    *,
    key: jax.Array,
):
    """Returns ``(graphdef, params)`` of a freshly initialised MLP."""
    model = MLP((input_size, *hidden, num_classes), rngs=nnx.Rngs(params=key))
    return nnx.split(model, nnx.Param)
