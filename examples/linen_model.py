"""Flax Linen: the range test, a recipe for 2 epochs, and your own training loop.

A Linen MLP with ``nn.BatchNorm`` and ``nn.Dropout`` on Fashion-MNIST. A Linen
module is not a model lrjax can call: the range test takes its ``params``, its
other collections as ``model_state`` (here ``{"batch_stats": ...}``, updated at
every step of the sweep) and a ``loss_fn(params, model_state, batch, key) ->
(loss, model_state)`` whose ``key`` is this update's dropout rng (a third
output, ``{name: scalar}``, would be recorded as metrics).
``lrjax.recommend`` turns the suggestion into a schedule for a 2-epoch budget,
and a plain Linen loop (optax, ``jax.jit``) trains with it as its learning rate.

Run from the repository root (about half a minute on a laptop CPU):

    .venv/bin/python examples/linen_model.py

The data come from ``lrjax.load_dataset()``. The test suite runs this script at
tiny sizes (``LRJAX_DOCS_TINY=1``), tests/test_examples.py.
"""

from __future__ import annotations

import flax.linen as nn
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


class MLP(nn.Module):
    """784 - 256 - BatchNorm - ReLU - Dropout 0.2 - 10."""

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        x = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(256)(x))
        x = nn.Dropout(0.2, deterministic=not train)(nn.relu(x))
        return nn.Dense(10)(x)


def loss_fn(params, model_state, batch, key):
    images, labels = batch
    logits, model_state = MLP().apply(
        {"params": params, **model_state}, images, train=True,
        mutable=list(model_state), rngs={"dropout": key},
    )  # fmt: skip
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, model_state


@jax.jit
def accuracy(params, model_state, images, labels) -> jax.Array:
    logits = MLP().apply({"params": params, **model_state}, images, train=False)
    return jnp.mean(logits.argmax(-1) == labels)


def main() -> None:
    ds = lrjax.load_dataset("fashion_mnist")
    variables = MLP().init(jax.random.key(0), jnp.zeros((1, 28, 28)), train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}

    steps_per_epoch = len(ds.y_train) // BATCH
    range_steps = max(steps_per_epoch, MIN_RANGE_STEPS)

    # 1. The range test: params, their model_state and the four-argument loss.
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

    @jax.jit
    def train_step(params, model_state, opt_state, batch, key):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, model_state), grads = grad_fn(params, model_state, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), model_state, opt_state, loss

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
