"""Snapshot ensembles and weight averages, both carried through training.

Snapshot Ensembles (Huang et al., ICLR 2017) train one network with cosine
restarts and keep the model at the end of every cycle, just before the lr jumps
back up. lrjax keeps those snapshots in a stacked pytree: ``(params,
model_state)`` with a leading ``[M]`` axis on every leaf, so that each member
keeps its OWN BatchNorm statistics. The compiled training chunk writes it under
a ``lax.cond`` (:func:`write`): the copy happens only at a snapshot step, with no
host branch.

The ensemble averages the SOFTMAX OUTPUTS of the last ``m`` snapshots, each
member predicting in evaluation mode (:func:`member_probs`). Never average the
logits or the weights of snapshots: they sit in different basins and their weight
average is a poor model.

Weight averaging (SWA, Izmailov et al. 2018; ``torch.optim.swa_utils``) is the
other cheap ensemble: a running mean of the weights of ONE trajectory over the
last part of training, where it stays in one basin (:class:`WeightAverage`,
updated inside the compiled chunk by :func:`update_average`). The averaged
weights need BatchNorm statistics of their own: :func:`update_batch_stats`
(torch's ``update_bn``) re-estimates them with one pass over training data.

``model`` in the prediction functions is how a member turns inputs into logits:

* a :class:`lrjax._src.step.Model` (``FitResult.spec``) or an ``nnx.Module`` of the
  same architecture, with ``stacked = (params, model_state)``;
* a function ``apply(params, x) -> logits`` of a pure model, with ``stacked``
  the stacked params (or ``(params, ())``, as :func:`lrjax.fit` returns them).

Inputs ``x`` are what the model takes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from lrjax._src.loop import conv_on_cpu, member_of
from lrjax._src.schedules import cosine_restart_steps
from lrjax._src.step import Model, foreign_model, split_model


class SnapshotBuffer(NamedTuple):
    # count: snapshots written so far (slots 0 .. count - 1). A field named count
    # shadows tuple.count: mypy reports it, ignored here, in WeightAverage, StatsPass.
    members: Any  # (params, model_state), every leaf [M, *leaf.shape]
    count: jax.Array  # type: ignore[assignment]  # int32[]


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
    :func:`lrjax.cosine_restarts` (``cosine_restart_steps``); the
    snapshot holds the model after that update.

    Args:
      first_period: updates of the first cycle (the schedule's ``first_period``).
      period_mult: each cycle's length over the previous one's, >= 1.
      num_steps: the run's updates.
      num_snapshots: the last cycle ends kept, >= 1.

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


@dataclasses.dataclass(frozen=True)
class _Logits:
    """``logits(member, x)`` of one member: a value (hashed by ``model``), so that
    the jitted prediction functions below, static in it, compile once per model."""

    model: Any  # a Model with modules, or apply(params, x) -> logits

    def __call__(self, member, x):
        if isinstance(self.model, Model):
            params, model_state = member
            return self.model.merge(params, model_state, train=False)(x)
        return self.model(member, x)


def _logits_fn(model: Any, stacked: Any) -> tuple[_Logits, Any]:
    """``(member_logits(member, x), members)`` for any accepted ``model``."""
    if isinstance(model, nnx.Module):
        model = split_model(model)[0]
    if isinstance(model, Model):
        if not model.is_module:
            raise TypeError(
                "a pure model's snapshots need its apply(params, x) function"
            )
        return _Logits(model), stacked
    foreign = foreign_model(model)
    if foreign is not None or not callable(model):
        kinds = {"linen": "a Linen", "equinox": "an Equinox", "train_state": "a"}
        got = repr(model)
        if foreign:  # a TrainState: "a TrainState", a Linen MLP: "a Linen MLP"
            got = f"{kinds[foreign]} {type(model).__name__}"
        raise TypeError(
            "model must be a Model, an nnx.Module or apply(params, x) -> logits, "
            f"got {got}; for a Linen module pass lambda p, x: module.apply(p, x) "
            "(p a member's variables), for Equinox lambda p, x: "
            "jax.vmap(eqx.combine(p, static))(x)"
        )
    if (
        isinstance(stacked, tuple)
        and len(stacked) == 2
        and isinstance(stacked[1], tuple)
        and not stacked[1]
    ):
        stacked = stacked[0]
    return _Logits(model), stacked


def _in_batches(a: jax.Array, batch_size: int) -> jax.Array:
    n = a.shape[0]
    nb = -(-n // batch_size)
    a = jnp.pad(a, [(0, nb * batch_size - n)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape(nb, batch_size, *a.shape[1:])


def member_probs(
    model: Any, stacked: Any, x: jax.Array, batch_size: int = 1000
) -> jax.Array:
    """Softmax outputs ``float32[M, N, C]`` of every snapshot.

    Each member predicts in evaluation mode with its own model state. The
    members run under one ``vmap`` and the batches in one ``lax.map``, except
    for a convolution on the CPU: there each member and each batch is one
    dispatch of the plain forward pass, since XLA:CPU runs a vmapped convolution
    (a grouped one) or one inside a loop body several times slower (the rule of
    :mod:`lrjax._src.loop`; ``benchmarks/bench_predict.py`` measures both ways).

    Args:
      model: what the snapshots belong to: the module (``FitResult.spec`` for
        :func:`lrjax.fit`'s) or an ``apply(params, x) -> logits`` function.
      stacked: the snapshots stacked on a leading axis ``[M, ...]``
        (``FitResult.snapshots``, or params for an ``apply``).
      x: the inputs, ``[N, ...]``.
      batch_size: inputs per forward pass.

    >>> apply = lambda p, x: x @ p  # a linear model, p: float32[2, 2]
    >>> w = jnp.stack([jnp.eye(2), -jnp.eye(2), jnp.zeros((2, 2))])  # M = 3 members
    >>> probs = member_probs(apply, w, jnp.array([[1.0, 0.0], [0.0, 2.0]]))
    >>> probs.shape
    (3, 2, 2)
    >>> [round(float(p), 4) for p in probs[:, 0, 0]]  # softmax of (1, 0), (-1, 0), 0
    [0.7311, 0.2689, 0.5]
    """
    logits, stacked = _logits_fn(model, stacked)
    x = jnp.asarray(x)
    batch_size = min(batch_size, x.shape[0])
    if conv_on_cpu(logits, member_of(stacked, 0), x[:1]):
        return _probs_dispatched(logits, stacked, x, batch_size)
    return _probs_in_one_program(logits, stacked, x, batch_size)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _probs_in_one_program(logits, stacked, x, batch_size: int) -> jax.Array:
    """:func:`member_probs` as one program: ``vmap`` over the members, ``lax.map``
    over the batches."""

    def one_batch(xi):
        return jax.vmap(lambda m: jax.nn.softmax(logits(m, xi), -1))(stacked)

    probs = jax.lax.map(one_batch, _in_batches(x, batch_size))  # [nb, M, B, C]
    nb = probs.shape[0]
    probs = jnp.moveaxis(probs, 1, 0).reshape(probs.shape[1], nb * batch_size, -1)
    return probs[:, : x.shape[0]]


@functools.partial(jax.jit, static_argnums=0)
def _softmax_of(logits, member, xb):
    return jax.nn.softmax(logits(member, xb), -1)


def _probs_dispatched(logits, stacked, x, batch_size: int) -> jax.Array:
    """:func:`member_probs` as one jitted forward pass per member and batch (the
    smaller tail batch compiles once more)."""
    n = jax.tree.leaves(stacked)[0].shape[0]
    return jnp.stack(
        [
            jnp.concatenate(
                [
                    _softmax_of(logits, member_of(stacked, i), x[j : j + batch_size])
                    for j in range(0, x.shape[0], batch_size)
                ]
            )
            for i in range(n)
        ]
    )


def ensemble_predict(
    model: Any, stacked: Any, x: jax.Array, m: int | None = None
) -> jax.Array:
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


@jax.jit
def _curve(probs, y):
    m = probs.shape[0]
    single = jnp.mean(jnp.argmax(probs, -1) == y, axis=1)
    # Mean of the last k members for k = 1..M: cumulative sums from the end.
    tail = jnp.cumsum(probs[::-1], axis=0) / jnp.arange(1, m + 1)[:, None, None]
    ensemble = jnp.mean(jnp.argmax(tail, -1) == y, axis=1)
    return single, ensemble


def ensemble_curve(
    model: Any, stacked: Any, x: ArrayLike, y: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of each snapshot, and of the ensemble of the last m, m = 1..M.

    Returns:
      ``(single[M], ensemble[M])``: ``single[i]`` is snapshot ``i``'s accuracy,
      ``ensemble[m - 1]`` that of the mean softmax of the last ``m`` snapshots
      (``ensemble[0] == single[-1]``).

    Two snapshots, each right only where it is confident (the "model" looks up
    each snapshot's logits of examples 0 and 1, both of class 0); the mean of
    their softmax outputs is right on both, e.g. ``(sigmoid(3) + sigmoid(-1)) / 2
    = 0.61`` for class 0 of example 0:

    >>> logits = jnp.array([[[3.0, 0.0], [0.0, 1.0]],   # snapshot 0
    ...                     [[0.0, 1.0], [3.0, 0.0]]])  # snapshot 1
    >>> lookup = lambda table, i: table[i]
    >>> x, y = jnp.arange(2), jnp.array([0, 0])
    >>> single, ensemble = ensemble_curve(lookup, logits, x, y)
    >>> single.tolist(), ensemble.tolist()
    ([0.5, 0.5], [0.5, 1.0])
    """
    if isinstance(model, nnx.Module):
        model = split_model(model)[0]
    return curve_from_probs(member_probs(model, stacked, jnp.asarray(x)), y)


def curve_from_probs(probs, y) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ensemble_curve` from the snapshots' softmax outputs ``[M, N, C]``
    (:func:`member_probs`), for a caller that needs those outputs too."""
    single, ensemble = _curve(jnp.asarray(probs), jnp.asarray(y))
    return np.asarray(single, np.float64), np.asarray(ensemble, np.float64)


# Weight averaging (SWA) --------------------------------------------------------


class WeightAverage(NamedTuple):
    """The running mean of the weights, carried through the compiled chunks."""

    params: Any  # the params' pytree; float leaves kept in at least float32
    count: jax.Array  # type: ignore[assignment]  # int32[]: weights averaged so far


def _mean_dtype(a) -> np.dtype:
    a = jnp.asarray(a)
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return jnp.promote_types(a.dtype, jnp.float32)
    return a.dtype


def init_average(params: Any) -> WeightAverage:
    """An empty average (``count == 0``) for ``params`` (any pytree).

    Float leaves are averaged in at least float32 (``bfloat16`` params in
    float32); other leaves hold the last weights taken. The mean starts at
    zeros: the first :func:`update_average` then gives ``params`` exactly.

    >>> avg = init_average({"w": jnp.ones(2, jnp.bfloat16)})
    >>> avg.params["w"].dtype, int(avg.count)
    (dtype('float32'), 0)
    """
    return WeightAverage(
        jax.tree.map(lambda a: jnp.zeros(jnp.shape(a), _mean_dtype(a)), params),
        jnp.zeros((), jnp.int32),
    )


def update_average(average: WeightAverage, params: Any, take: jax.Array):
    """Adds ``params`` to the running mean if ``take`` (a traced bool).

    With ``n = average.count``::

        avg <- avg + (params - avg) / (n + 1),    n <- n + 1

    (``torch.optim.swa_utils.AveragedModel``'s default ``avg_fn``), so after
    ``n`` updates ``avg`` is the mean of the ``n`` weights taken, up to float32
    rounding. It runs under a ``lax.cond``: a step that is not averaged costs
    nothing but the branch.

    >>> avg = init_average({"w": jnp.zeros(2)})
    >>> for w, take in ((1.0, True), (9.0, False), (2.0, True), (6.0, True)):
    ...     avg = update_average(avg, {"w": jnp.full(2, w)}, jnp.array(take))
    >>> avg.params["w"].tolist(), int(avg.count)
    ([3.0, 3.0], 3)
    """
    n1 = (average.count + 1).astype(jnp.float32)

    def add(mean):
        def one(a, p):
            p = p.astype(a.dtype)
            if not jnp.issubdtype(a.dtype, jnp.inexact):
                return p
            return a + (p - a) / n1.astype(a.dtype)

        return jax.tree.map(one, mean, params)

    new = jax.lax.cond(take, add, lambda m: m, average.params)
    return WeightAverage(new, average.count + take.astype(jnp.int32))


def averaged_params(average: WeightAverage, like: Any) -> Any:
    """The mean cast to the dtypes of ``like`` (the params it averages)."""
    return jax.tree.map(lambda a, p: a.astype(p.dtype), average.params, like)


# BatchNorm statistics for averaged weights (torch's update_bn) ------------------


def has_batch_stats(model_state: Any) -> bool:
    """Whether a module's non-Param state holds ``nnx.BatchStat`` variables."""
    if not isinstance(model_state, nnx.State):
        return False
    return bool(jax.tree.leaves(nnx.filter_state(model_state, nnx.BatchStat)))


def batch_stats_model(spec: Model, params: Any, model_state: Any) -> Model:
    """``spec`` in training mode with every ``nnx.BatchNorm``'s momentum 0.

    With momentum 0 a BatchNorm's update ``ra = 0 * ra + (1 - 0) * batch_stat``
    leaves exactly the batch's statistic in its ``mean`` / ``var`` variables.

    Raises:
      ValueError: an ``nnx.BatchStat`` held by a module that is not an
        ``nnx.BatchNorm`` (its update rule is unknown, so its statistics cannot
        be re-estimated).
    """
    module = nnx.merge(spec.train_def, params, model_state, copy=True)
    norms = {
        tuple(p): m for p, m in nnx.iter_modules(module) if isinstance(m, nnx.BatchNorm)
    }
    for path, v in nnx.iter_graph(module):
        if isinstance(v, nnx.BatchStat) and tuple(path[:-1]) not in norms:
            where = ".".join(str(p) for p in path)
            raise ValueError(
                f"weight averaging re-estimates the statistics of nnx.BatchNorm "
                f"layers only; the BatchStat {where} belongs to another module"
            )
    for m in norms.values():
        m.momentum = 0.0
    return Model(nnx.split(module, nnx.Param, ...)[0], spec.eval_def)


class StatsPass(NamedTuple):
    """The state of a BatchNorm re-estimation pass (:func:`stats_pass_step`)."""

    model_state: Any  # the module's state as the pass leaves it (rngs advance)
    mean: Any  # nnx.State of the BatchStat variables: mean over the batches
    count: jax.Array  # type: ignore[assignment]  # int32[]: batches seen


def stats_pass_init(model_state: Any) -> StatsPass:
    """The pass's start: statistics reset to zero (``reset_running_stats``)."""
    stats, rest = nnx.split_state(model_state, nnx.BatchStat, ...)
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, _mean_dtype(a)), stats)
    start = nnx.merge_state(jax.tree.map(jnp.zeros_like, stats), rest)
    return StatsPass(start, zeros, jnp.zeros((), jnp.int32))


def stats_pass_step(
    stats_spec: Model, forward: Callable, params: Any, carry: StatsPass, batch
) -> StatsPass:
    """One batch of the pass, in training mode, with ``params`` unchanged.

    ``forward(module, batch)`` runs the module (its output is not used; a loss
    function will do). ``stats_spec`` (:func:`batch_stats_model`) sets every
    BatchNorm's momentum to 0, so after the call its variables hold this batch's
    statistics ``s_k`` exactly; they are added to the running mean of the
    ``k``-th batch ``m_k = m_{k-1} + (s_k - m_{k-1}) / k``. Deeper layers are
    normalised with their batch's statistics in training mode, not with the
    running ones, so every ``s_k`` is what the module computes in training.
    """
    bound = stats_spec.bind(params, carry.model_state, train=True)
    forward(bound, batch)
    model_state = stats_spec.state_of(bound, carry.model_state)
    stats = nnx.filter_state(model_state, nnx.BatchStat)
    k = (carry.count + 1).astype(jnp.float32)
    mean = jax.tree.map(
        lambda m, s: m + (s.astype(m.dtype) - m) / k.astype(m.dtype), carry.mean, stats
    )
    return StatsPass(model_state, mean, carry.count + 1)


def stats_pass_state(carry: StatsPass, model_state: Any) -> Any:
    """``model_state`` with its BatchStat variables replaced by the pass's means
    (every other variable, e.g. rng streams, as ``model_state`` holds it)."""
    stats, rest = nnx.split_state(model_state, nnx.BatchStat, ...)
    mean = jax.tree.map(lambda m, s: m.astype(s.dtype), carry.mean, stats)
    return nnx.merge_state(mean, rest)


def update_batch_stats(
    model: nnx.Module,
    batches: Iterable,
    *,
    forward: Callable | None = None,
) -> nnx.Module:
    """A copy of ``model`` whose BatchNorm statistics are re-estimated on ``batches``.

    torch's ``swa_utils.update_bn`` with ``momentum=None``: one pass in training
    mode with the module's params unchanged; each ``nnx.BatchNorm``'s ``mean``
    and ``var`` become the plain mean over the ``K`` batches of the batch
    statistics, ``mean = (1/K) sum_k mean_k`` and ``var = (1/K) sum_k var_k``
    (``var_k`` the biased variance, as ``nnx.BatchNorm`` computes it). Exact:
    each batch runs with momentum 0, which leaves the batch's own statistics,
    and the mean over batches is kept outside the module
    (:func:`stats_pass_step`). One jitted call per batch; the rng streams of
    the copy are those of ``model`` (Dropout draws in the pass do not advance
    them).

    Args:
      model: an ``nnx.Module`` with BatchNorm layers (e.g.
        ``FitResult.averaged_model``); it is not changed.
      batches: an iterable of batches.
      forward: ``forward(module, batch)`` runs the module (default
        ``module(batch[0])`` for a tuple or list batch, else ``module(batch)``).

    Raises:
      ValueError: ``batches`` gave no batch, or a BatchStat outside an
        ``nnx.BatchNorm`` (:func:`batch_stats_model`).

    >>> bn = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    >>> x = jnp.array([[0.0, 1.0], [2.0, 3.0], [4.0, 9.0], [6.0, 11.0]])
    >>> new = update_batch_stats(bn, [x[:2], x[2:]])
    >>> new.mean[...].tolist(), new.var[...].tolist()  # means 1, 2 | 5, 10
    ([3.0, 6.0], [1.0, 1.0])
    """
    if forward is None:

        def forward(module, batch):
            return module(batch[0] if isinstance(batch, tuple | list) else batch)

    spec, params, rest = split_model(model)
    stats_spec = batch_stats_model(spec, params, rest)

    @jax.jit
    def step(params, carry, batch):
        return stats_pass_step(stats_spec, forward, params, carry, batch)

    carry = stats_pass_init(rest)
    for batch in batches:
        carry = step(params, carry, batch)
    if not int(carry.count):
        raise ValueError("update_batch_stats: batches gave no batch")
    return nnx.merge(nnx.graphdef(model), params, stats_pass_state(carry, rest))
