"""Snapshot ensembles: a stacked buffer carried through training, and its prediction.

Snapshot Ensembles (Huang et al., ICLR 2017) train one network with cosine
restarts and keep the model at the end of every cycle, just before the lr jumps
back up. lrjax keeps those snapshots in a stacked pytree: ``(params,
model_state)`` with a leading ``[M]`` axis on every leaf, so that each member
keeps its OWN BatchNorm statistics. The compiled training chunk writes it under
a ``lax.cond`` (:func:`write`): the copy happens only at a snapshot step, with no
host branch.

The ensemble averages the SOFTMAX OUTPUTS of the last ``m`` snapshots, each
member predicting in evaluation mode, computed with ``vmap`` over the leading
axis. Never average logits or weights: snapshots sit in different basins and
their weight average is a poor model.

``model`` in the prediction functions is how a member turns inputs into logits:

* a :class:`lrjax.step.Model` (``FitResult.spec``) or an ``nnx.Module`` of the
  same architecture, with ``stacked = (params, model_state)``;
* a function ``apply(params, x) -> logits`` of a pure model, with ``stacked``
  the stacked params (or ``(params, ())``, as :func:`lrjax.fit` returns them).

Inputs ``x`` are what the model takes (already preprocessed, e.g. floats).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrjax.schedules import cosine_restart_steps
from lrjax.step import Model, split_model


class SnapshotBuffer(NamedTuple):
    members: Any  # (params, model_state), every leaf [M, *leaf.shape]
    count: jax.Array  # int32[]: snapshots written so far (slots 0 .. count - 1)


def init_buffer(tree: Any, num_snapshots: int) -> SnapshotBuffer:
    """An empty buffer for ``num_snapshots`` copies of ``tree`` (any pytree).

    >>> buf = init_buffer({"w": jnp.ones(3)}, 2)
    >>> buf.members["w"].shape, int(buf.count)
    ((2, 3), 0)
    """
    if num_snapshots < 1:
        raise ValueError(f"num_snapshots must be >= 1, got {num_snapshots}")
    # Stacked copies rather than zeros: rng key leaves have no zeros.
    stacked = jax.tree.map(lambda a: jnp.stack([jnp.asarray(a)] * num_snapshots), tree)
    return SnapshotBuffer(stacked, jnp.zeros((), jnp.int32))


def capacity(buffer: SnapshotBuffer) -> int:
    """M, the number of slots."""
    return jax.tree.leaves(buffer.members)[0].shape[0]


def write(buffer: SnapshotBuffer, tree: Any, take: jax.Array) -> SnapshotBuffer:
    """Writes ``tree`` into slot ``count`` if ``take`` (a traced bool).

    A ``lax.cond``: the params-sized copy runs only at a snapshot step (a
    branch-free write into a scratch slot at every step cost far more, see
    ``benchmarks/README.md``). Past ``M`` writes the last slot is overwritten.

    >>> buf = init_buffer({"w": jnp.zeros(2)}, 2)
    >>> buf = write(buf, {"w": jnp.ones(2)}, jnp.array(True))
    >>> buf = write(buf, {"w": 5 * jnp.ones(2)}, jnp.array(False))
    >>> buf.members["w"].tolist(), int(buf.count)
    ([[1.0, 1.0], [0.0, 0.0]], 1)
    """
    slot = jnp.minimum(buffer.count, capacity(buffer) - 1)

    def put(members):
        return jax.tree.map(
            lambda s, a: jax.lax.dynamic_update_index_in_dim(
                s, a if a.dtype == s.dtype else a.astype(s.dtype), slot, 0
            ),
            members,
            tree,
        )

    new = jax.lax.cond(take, put, lambda m: m, buffer.members)
    return SnapshotBuffer(new, buffer.count + take.astype(jnp.int32))


def snapshots(buffer: SnapshotBuffer) -> Any:
    """The written snapshots, stacked ``[count, ...]`` (host-side slicing)."""
    n = int(buffer.count)
    return jax.tree.map(lambda b: b[:n], buffer.members)


def snapshot_steps(
    first_period: int, period_mult: float = 1.0, *, num_steps: int, num_snapshots: int
) -> np.ndarray:
    """The steps after which the last ``num_snapshots`` cycle ends are taken.

    Step ``e`` is the index of the update that ends a cycle of
    :func:`lrjax.schedules.cosine_restarts` (``cosine_restart_steps``); the
    snapshot holds the model after that update.

    Raises:
      ValueError: if fewer than ``num_snapshots`` cycles complete.

    >>> snapshot_steps(10, num_steps=60, num_snapshots=3).tolist()
    [39, 49, 59]
    """
    ends = cosine_restart_steps(first_period, period_mult, num_steps=num_steps)
    if num_snapshots < 1:
        raise ValueError(f"num_snapshots must be >= 1, got {num_snapshots}")
    if len(ends) < num_snapshots:
        raise ValueError(
            f"{num_snapshots} snapshots need at least as many complete cycles; "
            f"the schedule completes {len(ends)} in {num_steps} steps"
        )
    return ends[-num_snapshots:]


def _logits_fn(model: Any, stacked: Any):
    """``(member_logits(member, x), members)`` for any accepted ``model``."""
    if isinstance(model, nnx.Module):
        model = split_model(model)[0]
    if isinstance(model, Model):
        if not model.is_module:
            raise TypeError(
                "a pure model's snapshots need its apply(params, x) function"
            )

        def logits(member, x):
            params, model_state = member
            return model.merge(params, model_state, train=False)(x)

        return logits, stacked
    if not callable(model):
        raise TypeError(f"model must be a Model, an nnx.Module or apply, got {model!r}")
    if (
        isinstance(stacked, tuple)
        and len(stacked) == 2
        and isinstance(stacked[1], tuple)
        and not stacked[1]
    ):
        stacked = stacked[0]
    return (lambda p, x: model(p, x)), stacked


def _in_batches(a: jax.Array, batch_size: int) -> jax.Array:
    n = a.shape[0]
    nb = -(-n // batch_size)
    a = jnp.pad(a, [(0, nb * batch_size - n)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape(nb, batch_size, *a.shape[1:])


def member_probs(model: Any, stacked: Any, x: jax.Array, batch_size: int = 1000):
    """Softmax outputs ``float32[M, N, C]`` of every snapshot (``vmap`` over M).

    Each member predicts in evaluation mode with its own model state.
    """
    logits, stacked = _logits_fn(model, stacked)
    x = jnp.asarray(x)
    batch_size = min(batch_size, x.shape[0])

    def one_batch(xi):
        return jax.vmap(lambda m: jax.nn.softmax(logits(m, xi), -1))(stacked)

    probs = jax.lax.map(one_batch, _in_batches(x, batch_size))  # [nb, M, B, C]
    nb = probs.shape[0]
    probs = jnp.moveaxis(probs, 1, 0).reshape(probs.shape[1], nb * batch_size, -1)
    return probs[:, : x.shape[0]]


def ensemble_predict(model: Any, stacked: Any, x: jax.Array, m: int | None = None):
    """Mean softmax of the LAST ``m`` snapshots (default all): ``float32[N, C]``.

    >>> apply = lambda p, x: x @ p
    >>> w = jnp.stack([jnp.eye(2), -jnp.eye(2)])  # two opposite "models"
    >>> ensemble_predict(apply, w, jnp.array([[3.0, 0.0]])).round(3).tolist()
    [[0.5, 0.5]]
    """
    total = jax.tree.leaves(_logits_fn(model, stacked)[1])[0].shape[0]
    m = total if m is None else m
    if not 1 <= m <= total:
        raise ValueError(f"m must be between 1 and {total}, got {m}")
    last = jax.tree.map(lambda b: b[total - m :], stacked)
    return member_probs(model, last, x).mean(0)


_member_probs = jax.jit(member_probs, static_argnums=(0, 3))


@jax.jit
def _curve(probs, y):
    m = probs.shape[0]
    single = jnp.mean(jnp.argmax(probs, -1) == y, axis=1)
    # Mean of the last k members for k = 1..M: cumulative sums from the end.
    tail = jnp.cumsum(probs[::-1], axis=0) / jnp.arange(1, m + 1)[:, None, None]
    ensemble = jnp.mean(jnp.argmax(tail, -1) == y, axis=1)
    return single, ensemble


def ensemble_curve(model: Any, stacked: Any, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of each snapshot, and of the ensemble of the last m, m = 1..M.

    Returns:
      ``(single[M], ensemble[M])``: ``single[i]`` is snapshot ``i``'s accuracy,
      ``ensemble[m - 1]`` that of the mean softmax of the last ``m`` snapshots
      (``ensemble[0] == single[-1]``).
    """
    if isinstance(model, nnx.Module):
        model = split_model(model)[0]
    return curve_from_probs(_member_probs(model, stacked, jnp.asarray(x), 1000), y)


def curve_from_probs(probs, y) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ensemble_curve` from the snapshots' softmax outputs ``[M, N, C]``
    (:func:`member_probs`), for a caller that needs those outputs too."""
    single, ensemble = _curve(jnp.asarray(probs), jnp.asarray(y))
    return np.asarray(single, np.float64), np.asarray(ensemble, np.float64)
