"""Your own model for the command lines: ``lrjax-find --model examples/mynet.py:build``.

``--model FILE.py:FUNCTION`` calls ``FUNCTION(num_classes, *, rngs)`` for each
initialisation and trains with the file's ``loss_fn(model, batch)`` when it has one
(softmax cross-entropy and accuracy otherwise). The command lines' batches are
``(x, y)``: the images as stored, ``uint8[B, 28, 28]``, and integer labels; the
model ``loss_fn`` gets is ``nnx.Sequential(lrjax.scale_images, MyNet(...))``, so
``MyNet`` sees float32 images in [0, 1]. This is the model of the README's
quickstart 2.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx


class MyNet(nnx.Module):
    """Conv 3x3 (16) - BatchNorm - ReLU - 2x2 max pool - Dropout 0.3 - Dense."""

    def __init__(self, num_classes: int = 10, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(16 * 14 * 14, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # float32[B, 28, 28] -> [B, C]
        x = jax.nn.relu(self.bn(self.conv(x[..., None])))
        b = x.shape[0]
        x = x.reshape(b, 14, 2, 14, 2, 16).max((2, 4)).reshape(b, -1)
        return self.out(self.drop(x))


def build(num_classes: int, *, rngs: nnx.Rngs) -> MyNet:
    return MyNet(num_classes, rngs=rngs)


def loss_fn(model: nnx.Module, batch: tuple[jax.Array, jax.Array]):
    """Cross-entropy, and the accuracy as a metric (the range test records both)."""
    x, y = batch
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, {"accuracy": (logits.argmax(-1) == y).mean()}
