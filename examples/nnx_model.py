"""Flax NNX: the range test, a recipe for 2 epochs, and your own training loop.

An NNX MLP with BatchNorm and Dropout on Fashion-MNIST. ``lrjax.lr_range_test``
takes the module as it is (its batch statistics and dropout stream are carried
through the sweep on a copy; the module itself is not changed), ``lrjax.recommend``
turns the suggestion into a schedule for a 2-epoch budget, and a plain NNX loop
(``nnx.Optimizer``, ``nnx.jit``) trains with that schedule as its learning rate.

Run from the repository root (about half a minute on a laptop CPU):

    .venv/bin/python examples/nnx_model.py

The data come from ``lrjax.load_dataset()`` (``/usr/share/datasets/fashion-mnist``,
the user cache or a download). The test suite runs this script at tiny sizes
(``LRJAX_DOCS_TINY=1``: a few hundred examples), tests/test_examples.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import lrjax

# SGD at batch 32 and a sweep of about one epoch: the setting lrjax.recommend's
# rule was fitted on (docs/results.md); elsewhere, check its peak. The sweep runs
# one epoch of updates, but at least MIN_RANGE_STEPS: on a small dataset an epoch
# is too few updates to read the loss curve from, so the sweep repeats the data.
BATCH, EPOCHS, MIN_RANGE_STEPS = 32, 2, 1000


class MLP(nnx.Module):
    """784 - 256 - BatchNorm - ReLU - Dropout 0.2 - 10."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(28 * 28, 256, rngs=rngs)
        self.bn = nnx.BatchNorm(256, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:  # uint8[B, 28, 28] -> [B, 10]
        x = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255
        return self.out(self.drop(jax.nn.relu(self.bn(self.hidden(x)))))


def loss_fn(model: MLP, batch):
    images, labels = batch
    logits = model(images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"accuracy": jnp.mean(logits.argmax(-1) == labels)}


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, batch) -> jax.Array:
    (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
    optimizer.update(model, grads)  # updates the model and the optimizer in place
    return loss


@nnx.jit
def accuracy(model: MLP, images: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(model(images).argmax(-1) == labels)


def main() -> None:
    ds = lrjax.load_dataset("fashion_mnist")
    model = MLP(rngs=nnx.Rngs(0))

    steps_per_epoch = len(ds.y_train) // BATCH
    range_steps = max(steps_per_epoch, MIN_RANGE_STEPS)

    # 1. The range test: the module itself, one exponential sweep of SGD lrs.
    result = lrjax.lr_range_test(
        model, optax.sgd, (ds.x_train, ds.y_train), loss_fn=loss_fn,
        key=jax.random.key(1),
        sweep=lrjax.Sweep(num_steps=range_steps, batch_size=BATCH),
    )  # fmt: skip
    print(result)
    print(f"suggested lr: {result.suggested_lr:.4g} ({result.method})")

    # 2. The recipe: a schedule for the training budget, in updates.
    recipe = lrjax.recommend(result, EPOCHS * steps_per_epoch)
    print(f"recipe: {recipe.describe()}")

    # 3. Your own loop, with the recipe's schedule as the optimizer's lr.
    optimizer = nnx.Optimizer(model, optax.sgd(recipe.schedule), wrt=nnx.Param)
    rng = np.random.default_rng(2)
    for epoch in range(1, EPOCHS + 1):
        model.train()  # batch statistics of the batch, dropout on
        order = rng.permutation(len(ds.y_train))
        for i in range(steps_per_epoch):
            rows = order[i * BATCH : (i + 1) * BATCH]
            loss = train_step(model, optimizer, (ds.x_train[rows], ds.y_train[rows]))
        model.eval()  # running averages, no dropout
        val = accuracy(model, ds.x_val, ds.y_val)
        print(f"epoch {epoch}: loss {float(loss):.4f}, validation accuracy {val:.4f}")
    print(f"test accuracy: {accuracy(model, ds.x_test, ds.y_test):.4f}")


if __name__ == "__main__":
    main()
