"""Built-in NNX models: the seed recipe's MLP.

lrjax trains any ``nnx.Module`` (:mod:`lrjax.step`); these are the ones the
command lines build. :func:`pure` turns a stateless module into the
``(apply, params)`` pair of hand-written JAX code.
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


def pure(model: nnx.Module) -> tuple[Apply, Params]:
    """``(apply, params)`` of a stateless module: ``apply(params, x) -> logits``.

    The module is split once into a static graph definition and its params;
    ``apply`` merges them inside the traced function.
    """
    graphdef, params = nnx.split(model, nnx.Param)

    def apply(params: Params, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params)(x)

    return apply, params
