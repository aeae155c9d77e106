"""The train step, scanned chunks of steps, batch orders and evaluation.

One step function is the single source of truth: the range test, training, the
learning-rate grid, snapshots, benchmarks and tests all run
``step(state, batch_idx, data) -> (state, metrics)``. The dataset enters ``jit`` as
an argument (uint8 on the device, once); the scan runs over ``int32[steps, batch]``
index arrays and the step gathers and normalises its batch itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any
Apply = Callable[[Params, jax.Array], jax.Array]
OptimizerFactory = Callable[[Any], optax.GradientTransformation]
Data = tuple[jax.Array, jax.Array]  # (x uint8|float [N, ...], y int32 [N])
Metrics = dict[str, jax.Array]
Step = Callable[["TrainState", jax.Array, Data], tuple["TrainState", Metrics]]


class TrainState(NamedTuple):
    step: jax.Array  # int32[]: completed updates; the lr of the next one is sched(step)
    params: Params
    opt_state: optax.OptState  # an optax.InjectHyperparamsState


def make_optimizer(
    optimizer: OptimizerFactory, learning_rate
) -> optax.GradientTransformation:
    """Wraps ``optimizer(learning_rate)`` in ``optax.inject_hyperparams``.

    The applied lr then lives in ``opt_state.hyperparams["learning_rate"]``: the lr
    that lrjax logs is read from there, never from a second counter.

    Args:
      optimizer: a function ``learning_rate -> optax.GradientTransformation``,
        e.g. ``optax.sgd`` or ``lambda lr: optax.adamw(lr, weight_decay=1e-4)``.
      learning_rate: a float, or a schedule ``step -> lr``.
    """

    def factory(learning_rate):
        return optimizer(learning_rate)

    return optax.inject_hyperparams(factory)(learning_rate=learning_rate)


def applied_lr(opt_state: optax.OptState) -> jax.Array:
    """The lr used by the last update of an ``inject_hyperparams`` state."""
    return opt_state.hyperparams["learning_rate"]


def init_state(params: Params, tx: optax.GradientTransformation) -> TrainState:
    """A fresh state; jit it to get buffers independent of ``params``."""
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def as_inputs(x: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1]; float inputs pass through as float32."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_step(
    apply: Apply,
    tx: optax.GradientTransformation,
    *,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> Step:
    """Builds ``step(state, batch_idx, data) -> (state, metrics)``.

    Args:
      apply: ``apply(params, x) -> logits``.
      tx: the optimizer, built by :func:`make_optimizer` so the lr is logged.
      batch_sharding: if given, the gathered batch is constrained to it (a
        ``NamedSharding`` over a data axis), which makes the step data parallel.

    The metrics are the batch's loss BEFORE the update (what range tests plot),
    its accuracy, and the lr the update applied.
    """

    def loss_fn(params, x, y):
        logits = apply(params, x)
        return cross_entropy(logits, y), logits

    def step(state: TrainState, batch_idx: jax.Array, data: Data):
        x, y = data[0][batch_idx], data[1][batch_idx]
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
            y = jax.lax.with_sharding_constraint(y, batch_sharding)
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, as_inputs(x), y
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
            "lr": applied_lr(opt_state).astype(jnp.float32),
        }
        return TrainState(state.step + 1, params, opt_state), metrics

    return step


def scan_steps(step: Step) -> Callable:
    """``chunk(state, idx[C, B], data) -> (state, metrics[C])``: C steps in a scan."""

    def chunk(state, idx, data):
        return jax.lax.scan(lambda s, i: step(s, i, data), state, idx)

    return chunk


def batch_indices(
    key: jax.Array, num_examples: int, batch_size: int, num_steps: int
) -> jax.Array:
    """``int32[num_steps, batch_size]`` indices: a fresh permutation every epoch.

    Each epoch is a permutation of ``range(num_examples)`` (from
    ``fold_in(key, epoch)``) cut into ``num_examples // batch_size`` full batches;
    the remainder of each epoch is dropped, as with ``drop_last=True``.

    >>> idx = batch_indices(jax.random.key(0), 10, 3, 7)
    >>> idx.shape, len(set(idx[:3].ravel().tolist()))  # 3 batches: 9 distinct
    ((7, 3), 9)
    """
    if not 1 <= batch_size <= num_examples:
        raise ValueError(
            f"batch_size must be between 1 and the number of examples "
            f"({num_examples}), got {batch_size}"
        )
    per_epoch = num_examples // batch_size
    epochs = -(-num_steps // per_epoch)
    perms = jax.vmap(
        lambda e: jax.random.permutation(jax.random.fold_in(key, e), num_examples)
    )(jnp.arange(epochs))
    batches = perms[:, : per_epoch * batch_size].reshape(-1, batch_size)
    return batches[:num_steps].astype(jnp.int32)


def in_batches(a: jax.Array, batch_size: int) -> jax.Array:
    """``a[N, ...]`` zero-padded to whole batches: ``[ceil(N / B), B, ...]``.

    >>> in_batches(jnp.arange(5), 2).tolist()
    [[0, 1], [2, 3], [4, 0]]
    """
    n = a.shape[0]
    nb = -(-n // batch_size)
    a = jnp.pad(a, [(0, nb * batch_size - n)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape(nb, batch_size, *a.shape[1:])


def make_evaluate(apply: Apply, batch_size: int = 1000) -> Callable:
    """``evaluate(params, x, y) -> {"loss", "accuracy"}`` over a whole split.

    Evaluates in a ``lax.map`` over batches of ``batch_size`` (the tail is padded
    and masked) so memory stays bounded on large splits.
    """

    def evaluate(params, x, y):
        n = x.shape[0]

        def one(args):
            xb, yb, mb = args
            logits = apply(params, as_inputs(xb))
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
            correct = jnp.argmax(logits, -1) == yb
            return jnp.sum(losses * mb), jnp.sum(correct * mb)

        mask = jnp.ones(n, bool)  # padding is False
        batches = tuple(in_batches(a, batch_size) for a in (x, y, mask))
        losses, correct = jax.lax.map(one, batches)
        return {"loss": losses.sum() / n, "accuracy": correct.sum() / n}

    return evaluate


def json_floats(a: Any) -> Any:
    """An array as (nested lists of) Python floats, NaN and inf as None: JSON-safe.

    >>> json_floats(np.array([[1.0, np.nan], [np.inf, 2.0]]))
    [[1.0, None], [None, 2.0]]
    """

    def walk(x):
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x if np.isfinite(x) else None

    return walk(np.asarray(a, np.float64).tolist())


def describe_devices(devices: list[jax.Device] | None = None) -> str:
    """E.g. ``"cpu x2 (cpu)"`` or ``"gpu x1 (NVIDIA H100 80GB HBM3)"``."""
    devices = list(devices if devices is not None else jax.devices())
    d = devices[0]
    return f"{d.platform} x{len(devices)} ({d.device_kind})"


def population_mesh(size: int, axis: str = "pop") -> jax.sharding.Mesh | None:
    """A 1-D mesh over as many local devices as divide ``size``; None if only one.

    A population (seeds, learning rates) vmapped along a leading axis of ``size``
    is spread over this mesh by sharding that axis: on a CPU with several XLA host
    devices (``jax.config.update("jax_num_cpu_devices", n)`` before JAX starts)
    each core then runs its own share.
    """
    devices = jax.local_devices()
    n = max(d for d in range(1, min(size, len(devices)) + 1) if size % d == 0)
    if n == 1:
        return None
    return jax.sharding.Mesh(np.array(devices[:n]), (axis,))
