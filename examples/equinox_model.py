"""Equinox: the range test, a recipe for 2 epochs, and your own training loop.

An Equinox MLP with ``eqx.nn.BatchNorm`` (its running statistics in an
``eqx.nn.State``) and ``eqx.nn.Dropout`` on Fashion-MNIST. An Equinox module is
not a model lrjax can call: the range test takes its array half (``params``,
from ``eqx.partition``), the ``eqx.nn.State`` as ``model_state`` (updated at
every step of the sweep) and a ``loss_fn(params, model_state, batch, key) ->
(loss, model_state)`` that combines the halves again; ``key`` is this update's
dropout rng. ``lrjax.recommend`` turns the suggestion into a schedule for a
2-epoch budget, and a plain Equinox loop (optax, ``eqx.filter_jit``) trains with
it as its learning rate.

Needs Equinox (``pip install equinox``, or the ``test`` extra). Run from the
repository root (about half a minute on a laptop CPU):

    .venv/bin/python examples/equinox_model.py

The data come from ``lrjax.load_dataset()``. The test suite runs this script at
tiny sizes (``LRJAX_DOCS_TINY=1``), tests/test_examples.py.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lrjax

# SGD at batch 32 and a sweep of about one epoch: the setting lrjax.recommend's
# rule was fitted on (docs/results.md); elsewhere, check its peak. The sweep runs
# one epoch of updates, but at least MIN_RANGE_STEPS: on a small dataset an epoch
# is too few updates to read the loss curve from, so the sweep repeats the data.
BATCH, EPOCHS, MIN_RANGE_STEPS = 32, 2, 1000


class MLP(eqx.Module):
    """784 - 256 - BatchNorm - ReLU - Dropout 0.2 - 10, on ONE image (vmap it)."""

    hidden: eqx.nn.Linear
    bn: eqx.nn.BatchNorm
    drop: eqx.nn.Dropout
    out: eqx.nn.Linear

    def __init__(self, key: jax.Array):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(28 * 28, 256, key=k1)
        self.bn = eqx.nn.BatchNorm(256, axis_name="batch", momentum=0.9, mode="ema")
        self.drop = eqx.nn.Dropout(0.2)
        self.out = eqx.nn.Linear(256, 10, key=k2)

    def __call__(self, image, state, key):  # uint8[28, 28] -> [10]
        x = image.reshape(-1).astype(jnp.float32) / 255
        x, state = self.bn(self.hidden(x), state)
        return self.out(self.drop(jax.nn.relu(x), key=key)), state


def logits_of(model: MLP, state, images, key):
    """The batch through the model: BatchNorm reduces over the vmapped axis."""
    keys = jax.random.split(key, images.shape[0])
    batched = jax.vmap(
        model, axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None)
    )
    return batched(images, state, keys)


def main() -> None:
    ds = lrjax.load_dataset("fashion_mnist")
    model, model_state = eqx.nn.make_with_state(MLP)(jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss_fn(params, model_state, batch, key):
        images, labels = batch
        model = eqx.combine(params, static)
        logits, model_state = logits_of(model, model_state, images, key)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, model_state

    steps_per_epoch = len(ds.y_train) // BATCH
    range_steps = max(steps_per_epoch, MIN_RANGE_STEPS)

    # 1. The range test: the array half, the eqx.nn.State and the four-argument loss.
    result = lrjax.lr_range_test(
        params, optax.sgd, (ds.x_train, ds.y_train), loss_fn=loss_fn,
        model_state=model_state, key=jax.random.key(1),
        sweep=lrjax.Sweep(num_steps=range_steps, batch_size=BATCH),
    )  # fmt: skip
    print(result)
    print(f"suggested lr: {result.suggested_lr:.4g} ({result.method})")

    # 2. The recipe: a schedule for the training budget, in updates.
    recipe = lrjax.recommend(result, EPOCHS * steps_per_epoch)
    print(f"recipe: {recipe.describe()}")

    # 3. Your own loop, with the recipe's schedule as the optimizer's lr.
    tx = optax.sgd(recipe.schedule)

    @eqx.filter_jit
    def train_step(params, model_state, opt_state, batch, key):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, model_state), grads = grad_fn(params, model_state, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return eqx.apply_updates(params, updates), model_state, opt_state, loss

    @eqx.filter_jit
    def accuracy(params, model_state, images, labels):
        model = eqx.nn.inference_mode(eqx.combine(params, static))  # running stats
        logits, _ = logits_of(model, model_state, images, jax.random.key(0))
        return jnp.mean(logits.argmax(-1) == labels)

    opt_state = tx.init(params)
    rng, key = np.random.default_rng(2), jax.random.key(3)
    for epoch in range(1, EPOCHS + 1):
        order = rng.permutation(len(ds.y_train))
        for i in range(steps_per_epoch):
            rows = order[i * BATCH : (i + 1) * BATCH]
            params, model_state, opt_state, loss = train_step(
                params, model_state, opt_state, (ds.x_train[rows], ds.y_train[rows]),
                jax.random.fold_in(key, (epoch - 1) * steps_per_epoch + i),
            )  # fmt: skip
        val = accuracy(params, model_state, ds.x_val, ds.y_val)
        print(f"epoch {epoch}: loss {float(loss):.4f}, validation accuracy {val:.4f}")
    print(f"test accuracy: {accuracy(params, model_state, ds.x_test, ds.y_test):.4f}")


if __name__ == "__main__":
    main()
