"""A learning-rate grid: a population of models, one per (lr, seed), trained at once.

Every member runs the one train step (:func:`lrjax.training.make_step`) with the
same optimizer; only its learning rate differs, and the lr is DATA: each member's
optimizer is ``make_optimizer(optimizer, lambda t: lr * schedule(t))`` with ``lr``
a traced scalar of the vmapped population axis, so one compiled program trains the
whole grid. Because ``optax.inject_hyperparams`` evaluates that closure at every
update, the lr a member logs is exactly the lr it applied, ``lr * schedule(t)``; no
assumption about how an optimizer uses its lr is needed.

Seed ``k`` draws its initialisation (when given an init function) from
``fold_in(fold_in(key, k), 1)`` and its batch order from ``fold_in(key, k)``, as
:func:`lrjax.lr_range_test` does, and every lr shares them, so learning rates are
compared on equal footing. Epochs run as compiled ``lax.scan`` chunks, each ending
with an evaluation of every member on the validation split; the host only collects
numbers between chunks. The population axis is sharded over the local devices
(:func:`lrjax.training.population_mesh`), padded with copies of the last member to
a multiple of the device count, so each XLA host device (one per core) or
accelerator trains its share. A member that diverges gets NaN losses and a low
accuracy; members never interact, so it cannot poison the others.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrjax.training import (
    Apply,
    OptimizerFactory,
    batch_indices,
    describe_devices,
    init_state,
    json_floats,
    make_evaluate,
    make_optimizer,
    make_step,
    population_mesh,
    scan_steps,
)

__all__ = ["GridResult", "accuracy_at", "lr_grid"]


@dataclasses.dataclass
class GridResult:
    """What :func:`lr_grid` returns. Arrays are numpy, on the host.

    ``val_loss``, ``val_accuracy`` and ``train_loss`` (the mean training batch loss
    of each epoch) are ``[num_lrs, seeds, epochs]``; NaN marks a diverged member.
    ``applied_lr`` is ``[num_lrs, epochs * steps_per_epoch]``: the lr every update
    of seed 0 applied (all seeds share it). ``best_lr`` maximises the final
    validation accuracy averaged over seeds. ``memory`` holds the bytes of the
    population's params and optimizer state (``state_bytes``, their sum over
    members) and of one member (``member_bytes``).
    """

    lrs: np.ndarray
    seeds: int
    epochs: int
    val_loss: np.ndarray
    val_accuracy: np.ndarray
    train_loss: np.ndarray
    applied_lr: np.ndarray
    best_lr: float
    best_accuracy: float
    steps_per_epoch: int
    timings: dict[str, float]
    device: str
    memory: dict[str, int]
    config: dict[str, Any]

    def final_accuracy(self) -> np.ndarray:
        """``[num_lrs]``: validation accuracy after the last epoch, mean over seeds."""
        return np.mean(self.val_accuracy[:, :, -1], axis=1)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes None); ``applied_lr`` is left out."""

        return {
            "lrs": json_floats(self.lrs),
            "seeds": self.seeds,
            "epochs": self.epochs,
            "val_accuracy": json_floats(self.val_accuracy),
            "val_loss": json_floats(self.val_loss),
            "train_loss": json_floats(self.train_loss),
            "final_accuracy_mean": json_floats(self.final_accuracy()),
            "best_lr": self.best_lr,
            "best_accuracy": self.best_accuracy,
            "steps_per_epoch": self.steps_per_epoch,
            "timings": self.timings,
            "device": self.device,
            "memory": self.memory,
            "config": self.config,
        }


def accuracy_at(result: GridResult, lr: float, epoch: int = -1) -> float | None:
    """Mean-over-seeds validation accuracy at ``lr``, interpolated in log lr.

    Linear interpolation of the grid's accuracy (after ``epoch``) against
    ``log(lr)``; None when ``lr`` lies outside the grid. A diverged member counts
    with its measured (low) accuracy.

    >>> acc = np.array([[[0.5]], [[0.7]]])  # [num_lrs=2, seeds=1, epochs=1]
    >>> r = GridResult(np.array([0.01, 0.1]), 1, 1, acc, acc, acc, acc, 0.1, 0.7, 1,
    ...                {}, "", {}, {})
    >>> round(accuracy_at(r, math.sqrt(0.001)), 6), accuracy_at(r, 1.0)
    (0.6, None)
    """
    lrs = np.asarray(result.lrs, np.float64)
    if lr is None or not (lrs[0] * (1 - 1e-9) <= lr <= lrs[-1] * (1 + 1e-9)):
        return None
    acc = np.nanmean(np.asarray(result.val_accuracy)[:, :, epoch], axis=1)
    return float(np.interp(math.log(lr), np.log(lrs), acc))


def _check_args(lrs, seeds, epochs, batch_size, n_train, n_val) -> np.ndarray:
    arr = np.asarray(lrs, np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"lrs must be a non-empty 1-D sequence, got {lrs!r}")
    bad = [float(v) for v in arr if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"learning rates must be finite and > 0, got {bad[0]}")
    for name, value in (("seeds", seeds), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not 1 <= batch_size <= n_train:
        raise ValueError(
            f"batch_size must be between 1 and the number of training examples "
            f"({n_train}), got {batch_size}"
        )
    if n_val < 1:
        raise ValueError("the validation split is empty")
    return arr


def _tree_bytes(tree) -> int:
    return int(sum(np.dtype(a.dtype).itemsize * a.size for a in jax.tree.leaves(tree)))


def lr_grid(
    apply: Apply,
    params: Any,
    optimizer: OptimizerFactory,
    x_train: Any,
    y_train: Any,
    x_val: Any,
    y_val: Any,
    *,
    lrs: Sequence[float],
    key: jax.Array,
    seeds: int = 1,
    epochs: int = 1,
    batch_size: int = 32,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    eval_batch_size: int = 1000,
    progress: bool = False,
) -> GridResult:
    """Trains one model per (lr, seed) in one compiled program; returns the grid.

    Args:
      apply: the model, ``apply(params, x) -> logits``; the loss is softmax
        cross-entropy with integer labels.
      params: the initial parameters (shared by every seed), or a function
        ``key -> params`` so that every seed gets its own initialisation.
      optimizer: ``learning_rate -> optax.GradientTransformation``, e.g.
        ``optax.sgd``; it is given each member's lr (times ``schedule``).
      x_train, y_train, x_val, y_val: training and validation inputs (uint8
        images are scaled to [0, 1]) and integer labels.
      lrs: the learning rates, each finite and > 0 (typically log-spaced).
      key: a ``jax.random.key``; seed ``k`` uses ``fold_in(key, k)`` for its batch
        order and ``fold_in(fold_in(key, k), 1)`` for its initialisation.
      seeds: independent runs per lr, >= 1.
      epochs: training epochs, >= 1; the validation split is evaluated after each.
      batch_size: examples per step; each epoch is a fresh permutation with the
        remainder dropped.
      schedule: a unit schedule ``step -> factor`` (e.g. ``lrjax.cosine_restarts(1.0,
        ...)`` or ``optax.cosine_decay_schedule(1.0, total_steps)``); member
        ``lr`` applies ``lr * schedule(t)`` at update ``t``. None: constant lr.
      eval_batch_size: examples per evaluation batch.
      progress: show a tqdm progress bar over epochs.

    Returns:
      A :class:`GridResult`.

    Raises:
      ValueError: for a bad argument, naming the value.
    """
    n_train, n_val = int(np.shape(y_train)[0]), int(np.shape(y_val)[0])
    lr_arr = _check_args(lrs, seeds, epochs, batch_size, n_train, n_val)
    num_lrs = lr_arr.size
    unit = schedule if schedule is not None else (lambda t: jnp.ones((), jnp.float32))
    steps = n_train // batch_size

    def make_tx(lr):
        return make_optimizer(optimizer, lambda t: lr * unit(t))

    evaluate = make_evaluate(apply, min(eval_batch_size, n_val))

    def member_epoch(lr, state, idx, data, val):
        state, metrics = scan_steps(make_step(apply, make_tx(lr)))(state, idx, data)
        ev = evaluate(state.params, *val)
        out = {
            "train_loss": jnp.mean(metrics["loss"]),
            "val_loss": ev["loss"],
            "val_accuracy": ev["accuracy"],
            "lr": metrics["lr"],
        }
        return state, out

    # The population: member p = l * seeds + s, padded to a multiple of the
    # devices with copies of the last member (their results are dropped).
    size = num_lrs * seeds
    n_dev = min(len(jax.local_devices()), size)
    padded = -(-size // n_dev) * n_dev
    member = np.minimum(np.arange(padded), size - 1)
    lr_of, seed_of = member // seeds, member % seeds
    mesh = population_mesh(padded)

    seed_keys = [jax.random.fold_in(key, k) for k in range(seeds)]
    if callable(params):
        plist = [params(jax.random.fold_in(k, 1)) for k in seed_keys]
    else:
        plist = [params] * seeds
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *plist)
    del plist
    pop_lrs = jnp.asarray(lr_arr[lr_of], jnp.float32)
    seed_idx = jnp.asarray(seed_of)
    idx = jnp.stack(
        [batch_indices(k, n_train, batch_size, steps * epochs) for k in seed_keys]
    ).reshape(seeds, epochs, steps, batch_size)
    data = (jnp.asarray(x_train), jnp.asarray(y_train))
    val = (jnp.asarray(x_val), jnp.asarray(y_val))

    def init(lr, s, stacked):
        p = jax.tree.map(lambda a: a[s], stacked)
        return init_state(p, make_tx(lr))

    init_pop = jax.vmap(init, in_axes=(0, 0, None))
    run = jax.vmap(member_epoch, in_axes=(0, 0, 0, None, None))
    if mesh is not None:
        P = jax.sharding.PartitionSpec
        pop = jax.sharding.NamedSharding(mesh, P("pop"))
        rep = jax.sharding.NamedSharding(mesh, P())
        pop_lrs, seed_idx = jax.device_put((pop_lrs, seed_idx), pop)
        stacked, data, val = jax.device_put((stacked, data, val), rep)
        state = jax.jit(init_pop, out_shardings=pop)(pop_lrs, seed_idx, stacked)
    else:
        pop = None
        state = jax.jit(init_pop)(pop_lrs, seed_idx, stacked)
    del stacked

    def epoch_idx(e):
        # [padded, steps, batch]: each member gets its seed's batch order.
        i = idx[:, e][np.asarray(seed_of)]
        return i if pop is None else jax.device_put(i, pop)

    run = jax.jit(run, donate_argnums=1)
    t0 = time.perf_counter()
    compiled = run.lower(pop_lrs, state, epoch_idx(0), data, val).compile()
    compile_s = time.perf_counter() - t0
    memory = {
        "state_bytes": _tree_bytes(state) * size // padded,
        "member_bytes": _tree_bytes(state) // padded,
        "members": size,
        "padded_members": padded,
    }

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="lr grid", unit="epoch", leave=False)
    outs = []
    t0 = time.perf_counter()
    for e in range(epochs):
        state, out = compiled(pop_lrs, state, epoch_idx(e), data, val)
        outs.append(jax.tree.map(np.asarray, out))  # blocks until the epoch is done
        if bar is not None:
            bar.update(1)
            acc = outs[-1]["val_accuracy"][:size]
            bar.set_postfix(best_acc=f"{np.nanmax(acc):.3f}")
    run_s = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    del state

    def grid(name):  # [epochs, padded] -> [num_lrs, seeds, epochs]
        a = np.stack([o[name][:size] for o in outs], axis=-1).astype(np.float64)
        return a.reshape(num_lrs, seeds, epochs)

    # A diverged member's accuracy is what it measured: argmax of NaN logits is
    # class 0, so it is low but finite, and the best lr is never NaN.
    val_acc = grid("val_accuracy")
    val_loss = grid("val_loss")
    applied = np.concatenate([o["lr"][:size:seeds] for o in outs], axis=1)
    final = np.mean(val_acc[:, :, -1], axis=1)
    best = int(np.argmax(final))
    total_steps = steps * epochs * size
    return GridResult(
        lrs=lr_arr,
        seeds=seeds,
        epochs=epochs,
        val_loss=val_loss,
        val_accuracy=val_acc,
        train_loss=grid("train_loss"),
        applied_lr=applied.astype(np.float64),
        best_lr=float(lr_arr[best]),
        best_accuracy=float(final[best]),
        steps_per_epoch=steps,
        timings={
            "compile_s": compile_s,
            "run_s": run_s,
            "steps_per_s": total_steps / run_s if run_s > 0 else None,
            "model_epochs_per_s": size * epochs / run_s if run_s > 0 else None,
        },
        device=describe_devices(
            list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
        ),
        memory=memory,
        config={
            "batch_size": batch_size,
            "epochs": epochs,
            "seeds": seeds,
            "num_lrs": num_lrs,
            "eval_batch_size": min(eval_batch_size, n_val),
            "n_train": n_train,
            "n_val": n_val,
        },
    )
