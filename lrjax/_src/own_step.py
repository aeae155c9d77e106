"""The range test through the user's own train step, unchanged.

Most JAX projects already have ``train_step(state, batch) -> (state, metrics)``:
a flax ``TrainState`` step under ``jax.jit``, or an NNX step under ``nnx.jit``
that updates an ``nnx.Optimizer`` in place. When its optimizer was built with
``optax.inject_hyperparams``, the learning rate is an array in the state
(``InjectHyperparamsState.hyperparams["learning_rate"]``), so lrjax can set it
before every update with no change to the step and no recompilation.
:func:`step_range_test` does that on a copy of the state, records the step's
metrics, and smooths, stops and suggests with the rules of
:func:`lrjax.lr_range_test` (:mod:`lrjax._src.suggestions`), returning the same
:class:`lrjax.RangeTestResult`.

The step is called from the host once per update: a jitted step is one dispatch
per update, where :func:`lrjax.lr_range_test` compiles chunks of updates into one
program. The host reads the metrics of update ``t - 1`` after dispatching update
``t``, so the device always has the next update queued.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.tree_util import PyTreeDef

from lrjax._src.batches import ArraySource, is_arrays, leading_size, take
from lrjax._src.hooks import ChunkEnd, Hook, Hooks, ProgressBar, Run
from lrjax._src.population import member_key
from lrjax._src.range_test import (
    RangeTestResult,
    RangeTestSettings,
    _check_method,
    result_warning,
)
from lrjax._src.results import Timings, describe_devices
from lrjax._src.specs import (
    Divergence,
    Execution,
    Sweep,
    refuse_unless,
    spec_or_default,
    takes_moved_keywords,
)
from lrjax._src.suggestions import (
    DEFAULT_METHOD,
    DivergenceTracker,
    Smoother,
    find_divergence,
    pick,
    smooth,
    suggest,
)

__all__ = ["step_range_test"]

_INJECT = tuple(
    {
        getattr(optax, name)
        for name in ("InjectHyperparamsState", "InjectStatefulHyperparamsState")
        if hasattr(optax, name)
    }
)
# NNX objects (modules, optimizers, rngs) and their variables: updated in place.
_GRAPH = (nnx.Variable, getattr(nnx, "Pytree", nnx.Object))
_ARRAY = (jax.Array, np.ndarray)
_SCALAR = (jax.Array, np.ndarray, np.number, float, int)
CHUNK = 256  # in-memory batches whose indices are drawn at once
HOW = (
    "build the optimizer with optax.inject_hyperparams, e.g. "
    "optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9), or pass "
    "hyperparam=set_lr with set_lr(state, lr) -> state"
)


def _has_graph_nodes(state: Any) -> bool:
    """Whether ``state`` holds NNX objects (a module, an ``nnx.Optimizer``)."""
    found = []

    def leaf(x):
        if isinstance(x, _GRAPH):
            found.append(x)
            return True
        return False

    jax.tree.leaves(state, is_leaf=leaf)
    return bool(found)


def _fresh(tree: Any) -> Any:
    """Every array of ``tree`` in a new buffer: a step that donates its input
    (``jax.jit(step, donate_argnums=0)``) then never deletes the caller's."""
    return jax.tree.map(lambda a: a.copy() if isinstance(a, _ARRAY) else a, tree)


def _copy(state: Any, graph: bool) -> Any:
    """A deep copy of the caller's state; NNX objects are split and merged anew."""
    if not graph:
        return _fresh(state)
    graphdef, arrays = nnx.split(state)
    return nnx.merge(graphdef, _fresh(arrays))


def _graph_path(path: tuple) -> str:
    """An ``nnx.iter_graph`` path written as ``jax.tree_util.keystr`` writes one."""
    return "".join(
        f".{p}" if isinstance(p, str) and p.isidentifier() else f"[{p!r}]" for p in path
    )


def _choose(
    found: list[tuple[str, Mapping]], hyperparam: str, kind: str, others: set[str]
) -> tuple[int, str]:
    """``(which inject_hyperparams state, which name)`` for ``hyperparam``.

    ``found`` holds each state's path and hyperparams; ``hyperparam`` is a name
    (``"learning_rate"``) or a full path as the error messages list them.
    """

    def full(where, name):
        return f"{where}.hyperparams[{name!r}]"

    if not found:
        seen = f"; it holds {', '.join(sorted(others))}" if others else ""
        raise ValueError(
            f"no optax.inject_hyperparams state in the {kind}{seen}: lrjax sets the "
            f"learning rate there before every update; {HOW}"
        )
    if hyperparam.startswith((".", "[")):
        for i, (where, hps) in enumerate(found):
            for name in hps:
                if full(where, name) == hyperparam:
                    return i, name
        listed = ", ".join(full(w, n) for w, hps in found for n in hps)
        raise ValueError(
            f"hyperparam={hyperparam!r} is not in the {kind}; it has {listed}"
        )
    hits = [i for i, (_, hps) in enumerate(found) if hyperparam in hps]
    if not hits:
        has = "; ".join(f"{w}: {', '.join(hps) or 'none'}" for w, hps in found)
        raise ValueError(
            f"no hyperparameter {hyperparam!r} in the {kind}'s inject_hyperparams "
            f"state ({has}): give hyperparam= one of those names, or "
            "hyperparam=set_lr with set_lr(state, lr) -> state"
        )
    if len(hits) > 1:
        listed = ", ".join(full(found[i][0], hyperparam) for i in hits)
        raise ValueError(
            f"{len(hits)} inject_hyperparams states in the {kind} have "
            f"{hyperparam!r}: {listed}; point at one with hyperparam= its path as "
            "written here, or set them all with hyperparam=set_lr "
            "(set_lr(state, lr) -> state)"
        )
    return hits[0], hyperparam


class _TreeLr:
    """The hyperparameter of a pure pytree state, replaced functionally."""

    def __init__(self, state: Any, hyperparam: str):
        others: set[str] = set()

        def leaf(x):
            if isinstance(x, _INJECT):
                return True
            if type(x).__module__.startswith("optax"):
                others.add(type(x).__name__)
            return False

        nodes = [
            (path, x)
            for path, x in jax.tree_util.tree_flatten_with_path(state, is_leaf=leaf)[0]
            if isinstance(x, _INJECT)
        ]
        found = [(jax.tree_util.keystr(p), x.hyperparams) for p, x in nodes]
        i, name = _choose(found, hyperparam, "state", others)
        target = (
            *nodes[i][0],
            jax.tree_util.GetAttrKey("hyperparams"),
            jax.tree_util.DictKey(name),
        )
        self.treedef: PyTreeDef  # jax's return type does not resolve (jaxlib stub)
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(state)
        index = next((j for j, (p, _) in enumerate(flat) if p == target), None)
        if index is None:
            raise ValueError(
                f"{jax.tree_util.keystr(target)} is not an array of the state; {HOW}"
            )
        self.index = index
        self.where = jax.tree_util.keystr(target)
        _check_scalar(flat[self.index][1], self.where)

    def set(self, state: Any, lr: np.float32) -> Any:
        treedef: PyTreeDef
        leaves, treedef = jax.tree.flatten(state)
        if treedef != self.treedef:
            raise ValueError(
                "train_step returned a state of another structure than it was given: "
                f"{treedef} vs {self.treedef}"
            )
        leaves[self.index] = _like(leaves[self.index], lr)
        return treedef.unflatten(leaves)

    def applied(self, state: Any) -> jax.Array:
        return jax.tree.leaves(state)[self.index]


class _GraphLr:
    """The hyperparameter ``Variable`` of an NNX optimizer, set in place."""

    def __init__(self, state: Any, hyperparam: str):
        nodes, others = [], set()
        for path, x in nnx.iter_graph(state):
            if isinstance(x, _INJECT):
                nodes.append((_graph_path(path), x))
            elif type(x).__module__.startswith("optax"):
                others.add(type(x).__name__)
        found = [(w, x.hyperparams) for w, x in nodes]
        i, name = _choose(found, hyperparam, "state's NNX objects", others)
        self.var = nodes[i][1].hyperparams[name]
        self.where = f"{nodes[i][0]}.hyperparams[{name!r}]"
        if not isinstance(self.var, nnx.Variable):
            raise ValueError(
                f"{self.where} is a {type(self.var).__name__}, not an nnx.Variable "
                "(an nnx.Optimizer keeps its state in variables); pass "
                "hyperparam=set_lr with set_lr(state, lr) -> state"
            )
        _check_scalar(self.applied(state), self.where)

    def set(self, state: Any, lr: np.float32) -> Any:
        value = _like(self.applied(state), lr)
        if hasattr(self.var, "set_value"):
            self.var.set_value(value)
        else:  # flax < 0.12
            self.var.value = value
        return state

    def applied(self, state: Any) -> jax.Array:
        var = self.var
        return var.get_value() if hasattr(var, "get_value") else var.value


class _CallLr:
    """The user's ``set_lr(state, lr) -> state``; the lr recorded is the lr given."""

    where = "set_lr"

    def __init__(self, set_lr: Callable[[Any, np.float32], Any]):
        self.set_lr = set_lr

    def set(self, state: Any, lr: np.float32) -> Any:
        return self.set_lr(state, lr)

    def applied(self, state: Any) -> None:
        return None


def _check_scalar(value: Any, where: str) -> None:
    if np.shape(value) != () or not jnp.issubdtype(
        jnp.result_type(value), jnp.floating
    ):
        raise ValueError(
            f"{where} must be a float scalar to hold the learning rate, got "
            f"{jnp.result_type(value)}{list(np.shape(value))}"
        )


def _like(old: Any, lr: np.float32) -> np.ndarray:
    """``lr`` in the dtype of ``old``, as a numpy scalar: a jitted step takes it
    with the same signature every update (no retrace), and passing it costs a
    fraction of a ``device_put`` (measured: ~0.07 ms against ~0.4 ms)."""
    return np.asarray(lr, jnp.result_type(old))


def _source(data: Any, key: jax.Array | None, batch_size: int | None):
    """Arrays in lr_range_test's batch order for ``key``, or the user's iterable."""
    if not is_arrays(data):
        return _Iterable(data, batch_size)
    if key is None:
        raise ValueError(
            "key is required for in-memory data: it draws the batch order, "
            "e.g. key=jax.random.key(0)"
        )
    # the batch order of lr_range_test's (first) seed
    return ArraySource(
        data, 32 if batch_size is None else batch_size, member_key(key, 0)
    )


class _Iterable:
    """An iterable's batches as they come, restarted when it runs out and
    ``iter()`` gives a fresh iterator; batches smaller than the first (a
    loader's last partial batch) are skipped, as :func:`lr_range_test` does."""

    def __init__(self, data: Any, batch_size: int | None):
        if not isinstance(data, Iterable):
            raise TypeError(
                "data must be arrays or an iterable of batches, got "
                f"{type(data).__name__}"
            )
        self.data, self.iterator = data, iter(data)
        self.restartable = self.iterator is not data
        self.batch_size: int | None = None
        self.wanted = batch_size
        self.skipped = self.restarts = 0

    def batches(self, num_steps: int) -> Iterator[Any]:
        produced = pulled = 0
        while produced < num_steps:
            try:
                batch = next(self.iterator)
            except StopIteration:
                if not self.restartable or pulled == 0:
                    return
                self.iterator, pulled = iter(self.data), 0
                self.restarts += 1
                continue
            pulled += 1
            size = leading_size(batch)
            if self.batch_size is None:
                self.batch_size = size
                if self.wanted is not None and size != self.wanted:
                    raise ValueError(
                        f"batch_size={self.wanted} does not match the iterable's "
                        f"batches of {size} examples (its first batch); an "
                        "iterable's batches are used as they come: leave "
                        "batch_size out or give their size"
                    )
            if size != self.batch_size:
                self.skipped += 1
                continue
            produced += 1
            yield batch


_take = jax.jit(take)


def _array_batches(source: ArraySource, num_steps: int) -> Iterator[Any]:
    """In-memory data in :func:`lr_range_test`'s order: batch ``t`` gathered on
    the device by one jitted call (its indices are read to the host a chunk at
    a time)."""
    for lo in range(0, num_steps, CHUNK):
        idx = np.asarray(source.chunk(lo, min(lo + CHUNK, num_steps)))
        for row in idx:
            yield _take(source.data, row)


def _split(out: Any, state: Any, graph: bool) -> tuple[Any, Any]:
    """``(state, metrics)`` from what the step returned."""
    pair = isinstance(out, tuple) and len(out) == 2
    if graph:  # in place: metrics, or (the same objects, metrics)
        if pair and _same(out[0], state):
            return state, out[1]
        if pair and isinstance(out[1], Mapping):
            raise ValueError(
                "train_step returned other NNX objects than it was given: a step on "
                "NNX objects must update them in place (nnx.jit does) and return "
                "metrics or (state, metrics) with the same objects"
            )
        return state, out
    if not pair:
        raise ValueError(
            "train_step(state, batch) must return (state, metrics) for a state "
            f"without NNX objects; got {type(out).__name__}"
        )
    return out


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    return (
        isinstance(a, tuple | list)
        and isinstance(b, tuple | list)
        and len(a) == len(b)
        and all(x is y for x, y in zip(a, b, strict=True))
    )


def _scalars(metrics: Any) -> dict[str, Any]:
    """The step's scalar metrics, ``loss`` first (a bare scalar is the loss)."""
    if not isinstance(metrics, Mapping):
        if isinstance(metrics, _SCALAR) and np.shape(metrics) == ():
            return {"loss": metrics}
        raise ValueError(
            "train_step's metrics must be a dict holding 'loss' (the batch's loss "
            f"before the update) or a scalar loss; got {type(metrics).__name__}"
        )
    if "loss" not in metrics:
        raise ValueError(
            f"train_step's metrics have no 'loss' (keys: {sorted(map(str, metrics))});"
            " return {'loss': loss, ...} with the batch's loss before the update"
        )
    out = {
        k: v for k, v in metrics.items() if isinstance(v, _SCALAR) and np.shape(v) == ()
    }
    if "loss" not in out:
        raise ValueError(
            f"train_step's metrics['loss'] must be a scalar, got shape "
            f"{np.shape(metrics['loss'])}"
        )
    return {"loss": out.pop("loss"), **out}


class _Record:
    """The host side: metrics per update, the online divergence check."""

    def __init__(self, setter, lrs: np.ndarray, divergence: Divergence):
        self.setter, self.planned = setter, lrs
        self.smoother = Smoother(1, divergence.smooth_beta)
        self.tracker = DivergenceTracker(divergence.threshold, divergence.rebound)
        self.lrs: list[float] = []
        self.metrics: dict[str, list[float]] = {}
        self.smoothed = np.nan  # the last update's smoothed loss

    def __call__(self, t: int, scalars: dict, applied) -> bool:
        """Records update ``t``; True once the sweep has diverged."""
        scalars, applied = jax.device_get((scalars, applied))
        lr = float(self.planned[t])
        if applied is not None and not np.isclose(applied, lr, rtol=1e-6, atol=0):
            raise ValueError(
                f"update {t} applied lr {float(applied):.6g} where lrjax set {lr:.6g} "
                f"at {self.setter.where}: the step recomputes it (a schedule given "
                "to inject_hyperparams?); build the optimizer with a number, e.g. "
                "optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)"
            )
        self.lrs.append(lr if applied is None else float(applied))
        if not self.metrics:
            self.metrics = {name: [] for name in scalars}
        for name, values in self.metrics.items():
            values.append(float(scalars.get(name, np.nan)))
        loss = np.array([self.metrics["loss"][-1]])
        smoothed = self.smoother.push(loss[None])[0]
        self.smoothed = float(smoothed[0])
        return self.tracker.push(loss, smoothed) is not None

    def chunk_end(self, t: int) -> ChunkEnd:
        """Update ``t`` as the hooks see it: a chunk of one update, its metrics
        ``[1]`` as :func:`lrjax.lr_range_test`'s, no state (the next update has
        it already)."""
        metrics = {name: np.array(v[-1:]) for name, v in self.metrics.items()}
        metrics["lr"] = np.array(self.lrs[-1:])
        return ChunkEnd(t, t + 1, metrics, None)

    def postfix(self, run: Run, end: ChunkEnd) -> dict[str, str]:
        """The progress bar's lr and smoothed loss."""
        return {"lr": f"{self.planned[end.lo]:.3g}", "loss": f"{self.smoothed:.3f}"}


def _setter(state: Any, hyperparam: Any, graph: bool) -> _TreeLr | _GraphLr | _CallLr:
    if callable(hyperparam):
        return _CallLr(hyperparam)
    if isinstance(hyperparam, str):
        return (_GraphLr if graph else _TreeLr)(state, hyperparam)
    raise TypeError(
        "hyperparam must be a hyperparameter name, a path, or set_lr(state, lr) "
        f"-> state; got {type(hyperparam).__name__}"
    )


def _run(train_step, state, batches, setter, record: _Record, graph: bool, calls):
    """One call of the step per batch; ``(first_step_s, run_s, last loss, stop
    reason)``.

    The host reads update ``t - 1``'s metrics after dispatching update ``t``,
    so a jitted step always has the next update queued; a divergence stops the
    sweep one update after the update that diverged. A hook (``calls``, the
    :class:`lrjax._src.hooks.Hooks`) sees every update recorded; its stop reason
    stops the sweep there (the update already dispatched is dropped).
    """

    def after(t: int, scalars: dict, applied) -> str | None:
        diverged = record(t, scalars, applied)
        reason = calls.after(record.chunk_end(t))
        return "diverged" if diverged else reason

    pending, first_s, reason = None, 0.0, None
    start = time.perf_counter()
    for t, batch in enumerate(batches):
        state = setter.set(state, record.planned[t])
        state, metrics = _split(train_step(state, batch), state, graph)
        current = (t, _scalars(metrics), setter.applied(state))
        if t == 0:
            jax.block_until_ready(current[1])
            first_s = time.perf_counter() - start
        if pending is not None:
            reason = after(*pending)
        pending = current
        if reason:
            break
    if pending is None:
        raise ValueError("the data gave no batch: the iterable is empty")
    if reason in (None, "diverged"):  # the update dispatched after a divergence
        reason = after(*pending) or reason
    return first_s, time.perf_counter() - start, pending[1]["loss"], reason


@takes_moved_keywords("step_range_test")
def step_range_test(
    train_step: Callable[[Any, Any], Any],
    state: Any,
    data: Any,
    *,
    key: jax.Array | None = None,
    hyperparam: str | Callable[[Any, np.float32], Any] = "learning_rate",
    method: str = DEFAULT_METHOD,
    sweep: Sweep | None = None,  # required; None: a one-line "needs num_steps"
    divergence: Divergence | None = None,
    execution: Execution | None = None,
) -> RangeTestResult:
    """The learning-rate range test through your own train step, unchanged.

    Update ``t`` runs with lr ``sweep.schedule(sweep.num_steps)(t)``
    (:class:`lrjax.Sweep`: by default ``exponential_sweep(init_value, end_value,
    num_steps)``), set in the state's ``optax.inject_hyperparams`` state just
    before ``train_step`` is called, on a copy of ``state`` (every array in a new
    buffer, NNX objects split and merged anew): the caller's state and modules
    are bit-identical afterwards, even if the step donates its input. The curve,
    its smoothing, the divergence stop and the suggestions follow the rules of
    :func:`lrjax.lr_range_test`, and in-memory data are batched in its order for
    the same ``key``, so both give the same losses for the same model,
    optimizer and batches.

    The step runs as it is, jitted by you or not, one call per update from the
    host: a jitted step costs one dispatch per update (where
    :func:`lrjax.lr_range_test` compiles chunks of updates), and the host reads
    each update's metrics while the next one runs.

    >>> import flax.training.train_state
    >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    >>> state = flax.training.train_state.TrainState.create(
    ...     apply_fn=lambda p, x: x @ p["w"], params={"w": jnp.zeros(2)}, tx=tx)
    >>> @jax.jit
    ... def train_step(state, batch):
    ...     x, y = batch
    ...     def loss_fn(p):
    ...         return jnp.mean((state.apply_fn(p, x) - y) ** 2)
    ...     loss, grads = jax.value_and_grad(loss_fn)(state.params)
    ...     return state.apply_gradients(grads=grads), {"loss": loss}
    >>> x = jax.random.normal(jax.random.key(1), (64, 2))
    >>> r = step_range_test(train_step, state, (x, x @ jnp.array([1.0, -2.0])),
    ...                     key=jax.random.key(0),
    ...                     sweep=Sweep(num_steps=100, batch_size=8))
    >>> r.stop_reason, r.steps_run < 100, r.suggested_lr < r.diverged_at_lr
    ('diverged', True, True)

    Args:
      train_step: ``train_step(state, batch) -> (state, metrics)`` (a pure step,
        e.g. a flax ``TrainState`` one), or, when ``state`` holds NNX objects (an
        ``nnx.Optimizer``, e.g. ``(model, optimizer)``), a step that updates
        them in place (``nnx.jit``) and returns ``metrics`` or ``(state,
        metrics)``. ``metrics`` is a dict with ``"loss"``, the batch's loss
        before the update, or that scalar alone; its other scalar entries are
        recorded too.
      state: what ``train_step`` takes; never modified.
      data: in-memory arrays (a pytree with a common leading example axis),
        batched in :func:`lrjax.lr_range_test`'s order for ``key``, or any
        iterable of batches, used as they come (restarted when it runs out and
        can be iterated again).
      key: a ``jax.random.key`` drawing the batch order of in-memory data
        (required for them; unused for an iterable).
      hyperparam: where the lr goes: the name of an ``inject_hyperparams``
        hyperparameter (found by walking the state's pytree, or its NNX graph),
        the full path of one as the error messages write it (when several
        states have the name), or ``set_lr(state, lr) -> state`` (``lr`` a NumPy
        float32 scalar; it may set the lr in place on NNX objects and return
        ``state``).
      method: the suggestion reported as ``suggested_lr``, one of
        :data:`lrjax.METHODS`.
      sweep: the updates (:class:`lrjax.Sweep`): ``num_steps`` (required here,
        >= 2), the lrs swept, ``batch_size`` (examples per batch of in-memory
        data, default 32; for an iterable, if given, its batches' size). One
        batch per update: ``accumulate_steps`` must be 1.
      divergence: the smoothing and :func:`lrjax.find_divergence`'s rules
        (:class:`lrjax.Divergence`); the sweep stops one update after it has
        diverged (``stop`` must be True). Default ``Divergence()``.
      execution: ``progress`` shows a tqdm progress bar and ``hooks`` are
        yours (:class:`lrjax.Execution`); the step is called once per update,
        so ``chunks`` and ``loop`` keep their defaults, and a hook sees each
        update as a chunk of one (``end.state`` is None: the next update has
        it). Default ``Execution()``.

    Returns:
      A :class:`lrjax.RangeTestResult` for one seed: ``losses``,
      ``smoothed_losses`` and each of ``metrics`` are ``[1, steps_run]`` (the
      seed axis every result keeps), ``lrs`` are the lrs the
      updates applied (read back from the state after each update),
      ``timings.first_step_s`` includes the step's compilation and
      ``timings.loop`` is ``"dispatch"``.

    Raises:
      TypeError: a keyword of 0.2 that moved into a spec, naming the spec.
      ValueError: a bad argument; no, or more than one, ``inject_hyperparams``
        state holding ``hyperparam`` (naming what the state holds and how to
        point at one); a step that recomputes the lr itself (a schedule); a step
        whose output is not ``(state, metrics)`` or whose metrics lack a loss.
    """
    caller = "step_range_test"
    sweep = spec_or_default(caller, "sweep", sweep, Sweep)
    divergence = spec_or_default(caller, "divergence", divergence, Divergence)
    execution = spec_or_default(caller, "execution", execution, Execution)
    num_steps = _check_own_step_specs(sweep, divergence, execution)
    _check_method(method)
    if not callable(train_step):
        raise TypeError(f"train_step must be callable, got {type(train_step).__name__}")
    source = _source(data, key, sweep.batch_size)
    graph = _has_graph_nodes(state)
    state = _copy(state, graph)
    setter = _setter(state, hyperparam, graph)
    planned = np.asarray(sweep.schedule(num_steps)(jnp.arange(num_steps)), np.float32)
    record = _Record(setter, planned, divergence)
    if isinstance(source, ArraySource):
        batches = _array_batches(source, num_steps)
    else:
        batches = source.batches(num_steps)
    hooks: list[Hook] = []
    if execution.progress:
        hooks.append(ProgressBar("lr range test", postfix=record.postfix))
    calls = Hooks(Run(total_steps=num_steps), [*hooks, *execution.hooks])
    reason: str | None = "error"
    try:
        calls.start()
        first_s, run_s, loss, reason = _run(
            train_step, state, batches, setter, record, graph, calls
        )
    finally:
        calls.end(reason)
    stop_reason = reason
    if record.tracker.found is not None:
        stop_reason = "diverged"
    elif stop_reason is None and len(record.lrs) < num_steps:
        stop_reason = "data"
    iterable = source if isinstance(source, _Iterable) else None
    config = RangeTestSettings(
        driver="step_range_test",
        mode=sweep.mode,
        init_value=sweep.init_value,
        end_value=sweep.end_value,
        num_steps=num_steps,
        batch_size=source.batch_size,
        smooth_beta=divergence.smooth_beta,
        diverge_threshold=divergence.threshold,
        rebound=divergence.rebound,
        data="arrays" if isinstance(source, ArraySource) else "iterable",
        hyperparam=setter.where,
        batches_skipped=None if iterable is None else iterable.skipped,
        data_restarts=None if iterable is None else iterable.restarts,
    )
    steps = len(record.lrs)
    timings = Timings(
        "step_range_test",
        first_step_s=first_s,
        run_s=run_s,
        steps_per_s=(steps - 1) / (run_s - first_s) if run_s > first_s else None,
        loop="dispatch",
    )
    device = describe_devices(_devices(loss))
    return _result(record, method, stop_reason, timings, device, config)


def _check_own_step_specs(
    sweep: Sweep, divergence: Divergence, execution: Execution
) -> int:
    """The sweep's length; what the specs may hold when the step is the user's,
    called once per update.

    Raises:
      ValueError: no ``num_steps``, ``accumulate_steps != 1``, ``stop=False``,
        or ``chunks``/``loop`` other than their defaults, each in one line.
    """
    if sweep.num_steps is None:
        raise ValueError(
            "step_range_test needs the sweep's length: pass "
            "sweep=lrjax.Sweep(num_steps=...) (an integer >= 2)"
        )
    name = "step_range_test"
    refuse_unless(name, "runs one batch per update of your step", sweep,
                  accumulate_steps=1)  # fmt: skip
    refuse_unless(name, "stops one update after the sweep diverged", divergence,
                  stop=True)  # fmt: skip
    default = Execution()
    refuse_unless(name, "calls your step once per update from the host", execution,
                  chunks=default.chunks, loop=default.loop)  # fmt: skip
    return sweep.num_steps


def _devices(value: Any) -> list[jax.Device] | None:
    """Where the step ran: the devices of its loss (the default one if numpy)."""
    if isinstance(value, jax.Array):
        return sorted(value.devices(), key=lambda d: d.id)
    return jax.devices()[:1]


def _result(
    record: _Record,
    method: str,
    stop_reason: str | None,
    timings: Timings,
    device: str,
    config: RangeTestSettings,
) -> RangeTestResult:
    """The :class:`RangeTestResult` of one curve, with the rules of lr_range_test:
    :func:`lrjax.smooth`, :func:`lrjax.find_divergence`, :func:`lrjax.suggest`;
    its per-seed arrays have their seed axis, as every result's (``[1, steps]``)."""
    lrs = np.asarray(record.lrs)
    metrics = {k: np.asarray(v, np.float64) for k, v in record.metrics.items()}
    losses = metrics.pop("loss")
    smoothed = smooth(losses, config.smooth_beta)
    at = find_divergence(losses, smoothed, config.diverge_threshold, config.rebound)
    suggestions = suggest(lrs, smoothed, at)
    return RangeTestResult(
        lrs=lrs,
        losses=losses[None],
        smoothed_losses=smoothed[None],
        metrics={k: v[None] for k, v in metrics.items()},
        diverged_at_lr=None if at is None else float(lrs[at]),
        diverged_at_step=[at],
        suggestions=suggestions,
        suggested_lr=pick(suggestions, method),
        method=method,
        seeds=1,
        spread=None,
        steps_run=len(losses),
        stop_reason=stop_reason,
        timings=timings,
        device=device,
        config=config,
        warning=result_warning(
            losses[None], smoothed[None], lrs, [at], stop_reason, config.num_steps
        ),
    )
