"""Your own train step: the range test through it, then training with the recipe.

A flax ``TrainState`` step, written as in the flax examples, on a Linen MLP and
Fashion-MNIST. ``lrjax.step_range_test`` runs the sweep through that step
unchanged; the one thing it needs is an optimizer built with
``optax.inject_hyperparams``, so that the learning rate is an array in the state
that lrjax sets before every update (on a copy: your state is not changed).
``lrjax.recommend`` turns the suggestion into a schedule for a 2-epoch budget,
and the same step trains a fresh state whose ``inject_hyperparams`` optimizer
takes that schedule as its learning rate. (An NNX step with an ``nnx.Optimizer``
works the same way: docs/guide.md, "Your own train step".)

Run from the repository root (about half a minute on a laptop CPU):

    .venv/bin/python examples/own_train_step.py

The data come from ``lrjax.load_dataset()``. The test suite runs this script at
tiny sizes (``LRJAX_DOCS_TINY=1``), tests/test_examples.py.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

import lrjax

# SGD at batch 32 and a sweep of about one epoch: the setting lrjax.recommend's
# rule was fitted on (docs/results.md); elsewhere, check its peak. The sweep runs
# one epoch of updates, but at least MIN_RANGE_STEPS: on a small dataset an epoch
# is too few updates to read the loss curve from, so the sweep repeats the data.
BATCH, EPOCHS, MIN_RANGE_STEPS = 32, 2, 1000


class MLP(nn.Module):
    """784 - 256 - ReLU - 10."""

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255
        return nn.Dense(10)(nn.relu(nn.Dense(256)(x)))


@functools.partial(jax.jit, donate_argnums=0)  # your step, as it is
def train_step(state: TrainState, batch):
    images, labels = batch

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, images)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return loss.mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(logits.argmax(-1) == labels)
    return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": accuracy}


@jax.jit
def accuracy(state: TrainState, images, labels) -> jax.Array:
    logits = state.apply_fn({"params": state.params}, images)
    return jnp.mean(logits.argmax(-1) == labels)


def create_state(params, learning_rate) -> TrainState:
    # the one change to a usual setup: inject_hyperparams around the optimizer
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)
    return TrainState.create(apply_fn=MLP().apply, params=params, tx=tx)


def main() -> None:
    ds = lrjax.load_dataset("fashion_mnist")
    params = MLP().init(jax.random.key(0), jnp.zeros((1, 28, 28)))["params"]

    steps_per_epoch = len(ds.y_train) // BATCH
    range_steps = max(steps_per_epoch, MIN_RANGE_STEPS)

    # 1. The range test through train_step (the lr given here is replaced).
    result = lrjax.step_range_test(
        train_step, create_state(params, 0.1), (ds.x_train, ds.y_train),
        key=jax.random.key(1),
        sweep=lrjax.Sweep(num_steps=range_steps, batch_size=BATCH),
    )  # fmt: skip
    print(result)
    print(f"suggested lr: {result.suggested_lr:.4g} ({result.method})")

    # 2. The recipe: a schedule for the training budget, in updates.
    # Your step hides its optimizer from lrjax: say which (it picks the rule).
    recipe = lrjax.recommend(result, EPOCHS * steps_per_epoch, optimizer="sgd")
    print(f"recipe: {recipe.describe()}")

    # 3. Your own loop and step; inject_hyperparams evaluates the schedule.
    state = create_state(params, recipe.schedule)
    rng = np.random.default_rng(2)
    for epoch in range(1, EPOCHS + 1):
        order = rng.permutation(len(ds.y_train))
        for i in range(steps_per_epoch):
            rows = order[i * BATCH : (i + 1) * BATCH]
            state, metrics = train_step(state, (ds.x_train[rows], ds.y_train[rows]))
        lr = float(state.opt_state.hyperparams["learning_rate"])  # the last applied
        val = accuracy(state, ds.x_val, ds.y_val)
        print(
            f"epoch {epoch}: loss {float(metrics['loss']):.4f}, lr {lr:.4g}, "
            f"validation accuracy {val:.4f}"
        )
    print(f"test accuracy: {accuracy(state, ds.x_test, ds.y_test):.4f}")


if __name__ == "__main__":
    main()
