"""Snapshot ensembles: a stacked buffer carried in the scan, and its prediction.

Snapshot Ensembles (Huang et al., ICLR 2017) train one network with cosine
restarts and keep the params at the end of every cycle, just before the lr jumps
back up. lrjax keeps those snapshots in a stacked pytree ``[M + 1, ...]`` that the
training scan carries. Two ways to write it, both without any host branch:
:func:`write_cond` copies the params into slot ``count`` under a ``lax.cond``
only at a snapshot step (the trainer's default: +0.3% epoch time on the
Fashion-MNIST MLP), and :func:`write` writes into slot ``where(taken, count,
M)`` at every step, slot ``M`` being scratch (branch-free, but a params-sized
copy per step: +30% epoch time measured on the same MLP).

The ensemble averages the SOFTMAX OUTPUTS of the last ``m`` snapshots, computed
with ``vmap`` over the leading axis. Never average logits or weights: snapshots
sit in different basins and their weight average is a poor model.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lrjax.schedules import cosine_restart_steps
from lrjax.training import as_inputs, in_batches

Params = Any


class SnapshotBuffer(NamedTuple):
    params: Params  # every leaf [M + 1, *leaf.shape]; slot M is scratch
    count: jax.Array  # int32[]: snapshots written so far (slots 0 .. count - 1)


def init_buffer(params: Params, num_snapshots: int) -> SnapshotBuffer:
    """An empty buffer for ``num_snapshots`` snapshots of ``params``."""
    if num_snapshots < 1:
        raise ValueError(f"num_snapshots must be >= 1, got {num_snapshots}")
    stacked = jax.tree.map(
        lambda p: jnp.zeros((num_snapshots + 1, *jnp.shape(p)), jnp.result_type(p)),
        params,
    )
    return SnapshotBuffer(stacked, jnp.zeros((), jnp.int32))


def capacity(buffer: SnapshotBuffer) -> int:
    """M, the number of real slots."""
    return jax.tree.leaves(buffer.params)[0].shape[0] - 1


def write(buffer: SnapshotBuffer, params: Params, take: jax.Array) -> SnapshotBuffer:
    """Writes ``params`` into the next slot if ``take``, else into scratch.

    One ``dynamic_update_slice`` per leaf, in place inside a scan carry: no
    branch, so it costs the same at every step (a copy of the params; measured
    +30% epoch time on the 266k-param MLP, see ``benchmarks/bench_train.py``).
    """
    m = capacity(buffer)
    slot = jnp.where(take, jnp.minimum(buffer.count, m), m)
    new = jax.tree.map(
        lambda b, p: jax.lax.dynamic_update_index_in_dim(b, p.astype(b.dtype), slot, 0),
        buffer.params,
        params,
    )
    return SnapshotBuffer(new, buffer.count + take.astype(jnp.int32))


def write_cond(buffer: SnapshotBuffer, params: Params, take: jax.Array):
    """Same as :func:`write` but under ``lax.cond``: no copy on other steps."""
    m = capacity(buffer)

    def put(b):
        return jax.tree.map(
            lambda s, p: jax.lax.dynamic_update_index_in_dim(
                s, p.astype(s.dtype), jnp.minimum(buffer.count, m - 1), 0
            ),
            b,
            params,
        )

    new = jax.lax.cond(take, put, lambda b: b, buffer.params)
    return SnapshotBuffer(new, buffer.count + take.astype(jnp.int32))


def snapshots(buffer: SnapshotBuffer) -> Params:
    """The written snapshots, stacked ``[count, ...]`` (host-side slicing)."""
    n = int(buffer.count)
    return jax.tree.map(lambda b: b[:n], buffer.params)


def snapshot_steps(
    first_period: int, period_mult: float = 1.0, *, num_steps: int, num_snapshots: int
) -> np.ndarray:
    """The steps after which the last ``num_snapshots`` cycle ends are taken.

    Step ``e`` is the index of the update that ends a cycle of
    :func:`lrjax.schedules.cosine_restarts` (``cosine_restart_steps``); the
    snapshot holds the params after that update.

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


def member_probs(apply, stacked: Params, x: jax.Array, batch_size: int = 1000):
    """Softmax outputs ``float32[M, N, C]`` of every snapshot (``vmap`` over M)."""

    def one_batch(xi):
        return jax.vmap(lambda p: jax.nn.softmax(apply(p, as_inputs(xi)), -1))(stacked)

    probs = jax.lax.map(one_batch, in_batches(x, batch_size))  # [nb, M, B, C]
    nb = probs.shape[0]
    probs = jnp.moveaxis(probs, 1, 0).reshape(probs.shape[1], nb * batch_size, -1)
    return probs[:, : x.shape[0]]


def ensemble_predict(apply, stacked: Params, x: jax.Array, m: int | None = None):
    """Mean softmax of the LAST ``m`` snapshots (default all): ``float32[N, C]``.

    >>> import jax, jax.numpy as jnp
    >>> apply = lambda p, x: x @ p
    >>> w = jnp.stack([jnp.eye(2), -jnp.eye(2)])  # two opposite "models"
    >>> ensemble_predict(apply, w, jnp.array([[3.0, 0.0]])).round(3).tolist()
    [[0.5, 0.5]]
    """
    total = jax.tree.leaves(stacked)[0].shape[0]
    m = total if m is None else m
    if not 1 <= m <= total:
        raise ValueError(f"m must be between 1 and {total}, got {m}")
    last = jax.tree.map(lambda b: b[total - m :], stacked)
    return member_probs(apply, last, x).mean(0)


_member_probs = jax.jit(member_probs, static_argnums=(0, 3))


@jax.jit
def _curve(probs, y):
    m = probs.shape[0]
    single = jnp.mean(jnp.argmax(probs, -1) == y, axis=1)
    # Mean of the last k members for k = 1..M: cumulative sums from the end.
    tail = jnp.cumsum(probs[::-1], axis=0) / jnp.arange(1, m + 1)[:, None, None]
    ensemble = jnp.mean(jnp.argmax(tail, -1) == y, axis=1)
    return single, ensemble


def ensemble_curve(apply, stacked: Params, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of each snapshot, and of the ensemble of the last m, m = 1..M.

    Returns:
      ``(single[M], ensemble[M])``: ``single[i]`` is snapshot ``i``'s accuracy,
      ``ensemble[m - 1]`` that of the mean softmax of the last ``m`` snapshots
      (``ensemble[0] == single[-1]``).
    """
    return curve_from_probs(_member_probs(apply, stacked, jnp.asarray(x)), y)


def curve_from_probs(probs, y) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ensemble_curve` from the snapshots' softmax outputs ``[M, N, C]``
    (:func:`member_probs`), for a caller that needs those outputs too."""
    single, ensemble = _curve(jnp.asarray(probs), jnp.asarray(y))
    return np.asarray(single, np.float64), np.asarray(ensemble, np.float64)
