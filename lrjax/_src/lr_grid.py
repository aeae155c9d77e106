"""A learning-rate grid: a population of models, one per (lr, seed), trained at once.

Every member trains through the one step (:func:`lrjax.make_step`) with the
same model, loss and optimizer; only its learning rate differs, and the lr is
DATA: each member's optimizer state is an ``optax.inject_hyperparams`` state
whose numeric hyperparameters are its peak lr and schedule family (as a swept
value is in the range test), around ``make_optimizer(optimizer, lambda t: peak *
schedule(t))``; so one compiled program trains the whole grid. Because
``optax.inject_hyperparams`` evaluates that closure at every update, the lr a
member logs is exactly the lr it applied, ``peak * schedule(t)``.

Seed ``k`` draws its batch order from ``fold_in(key, k)`` and, when the model is a
factory ``key -> model``, its initialisation from ``fold_in(fold_in(key, k), 1)``
(:func:`lrjax._src.population.init_members`, as the range test does); every lr shares
them, so learning rates are compared on equal footing. The epochs run through the
shared host driver (:func:`lrjax._src.loop.drive`), one compiled chunk per epoch;
between chunks the grid's books evaluate every member on the validation split in
evaluation mode (Dropout off, BatchNorm on its running averages), then the hooks
(:mod:`lrjax.hooks`: the progress bar, yours) act. The population axis is
sharded over the devices, padded with copies of the last member to a multiple of
their count (:class:`lrjax._src.population.Layout`, the range test's rule too). A
member that diverges gets NaN losses and a low accuracy; members never interact,
so it cannot poison the others. The caller's model is never changed.

A params pytree with a state of its own (``model_state=``: Linen's
``batch_stats``, Equinox's ``eqx.nn.State``) trains through ``loss_fn(params,
model_state, batch, key)``: every member carries its own copy of the state, and
update ``t`` of seed ``s`` gets the rng ``fold_in(fold_in(fold_in(key, s), 2),
t)``, the same for every lr; the members are evaluated by the caller's
``eval_fn(params, model_state, batch)``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrjax._src.batches import ArraySource, check_batch_size, leading_size
from lrjax._src.distributed import host
from lrjax._src.hooks import ChunkEnd, Hook, ProgressBar, Run
from lrjax._src.loop import (
    Program,
    drive,
    epoch_plan,
    population_fn,
)
from lrjax._src.population import (
    Layout,
    MemberBatches,
    check_memory,
    init_members,
    init_states,
    member_keys,
)
from lrjax._src.results import (
    MemoryEstimate,
    Timings,
    describe_devices,
    json_floats,
    record_json,
    tree_bytes,
)
from lrjax._src.specs import (
    Execution,
    GridConfig,
    Population,
    check_moved,
    refuse_unless,
    spec_or_default,
    takes_moved_keywords,
)
from lrjax._src.step import (
    STATEFUL_EVAL,
    LossFn,
    OptimizerFactory,
    TrainState,
    classification_loss,
    init_state,
    make_eval_batch,
    make_optimizer,
    make_step,
)

__all__ = [
    "GridMemory",
    "GridResult",
    "GridSettings",
    "accuracy_at",
    "lr_grid",
    "recipe_grid",
]


@dataclasses.dataclass(frozen=True)
class GridMemory:
    """The bytes of a grid's population (``GridResult.memory``).

    Attributes:
      state_bytes: every member's params, model state and optimizer state
        (``members x member_bytes``), in bytes.
      member_bytes: one member's state, its lr and schedule index included, in
        bytes.
      members: the members that count (lrs x families x seeds).
      padded_members: the members that ran, copies of the last one padding the
        population to a multiple of the devices.
      estimate: the estimate checked against the device before anything
        compiled (:func:`lrjax._src.results.estimate_population`).
    """

    state_bytes: int
    member_bytes: int
    members: int
    padded_members: int
    estimate: MemoryEstimate

    def to_json(self) -> dict[str, Any]:
        """Every field, the estimate as its dict, JSON-ready."""
        return record_json(self)


@dataclasses.dataclass(frozen=True)
class GridSettings:
    """What a grid trained with (``GridResult.config``), under their 0.2 names.

    Attributes:
      batch_size: examples per update.
      epochs: the epochs planned (``GridResult.epochs`` counts those run).
      seeds: independent runs per lr.
      num_lrs: the learning rates of the grid.
      eval_batch_size: examples per evaluation batch (at most ``n_val``).
      n_train: examples of the training split.
      n_val: examples of the validation split.
      family: the schedule family of a :func:`recipe_grid`'s result; None for
        :func:`lr_grid`'s (and then not written by :meth:`to_json`).
    """

    batch_size: int
    epochs: int
    seeds: int
    num_lrs: int
    eval_batch_size: int
    n_train: int
    n_val: int
    family: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Every field, ``family`` only when set, JSON-ready."""
        return record_json(self, when_set=("family",))


@dataclasses.dataclass
class GridResult:
    """What :func:`lr_grid` returns. Arrays are numpy, on the host.

    ``val_loss``, ``val_accuracy`` and ``train_loss`` (the mean training batch loss
    of each epoch) are ``[num_lrs, seeds, epochs]`` for any number of seeds, one
    included (the rule of every result: a per-seed array keeps its seed axis;
    :meth:`to_json` writes the same shapes); NaN marks a diverged member.
    ``val_metrics`` holds every evaluation metric (``"loss"``, ``"accuracy"`` or
    a custom ``eval_fn``'s names) shaped the same way. ``applied_lr`` is
    ``[num_lrs, epochs * steps_per_epoch]``: the lr every update of seed 0
    applied (all seeds share it). ``best_lr`` maximises the final validation
    accuracy averaged over seeds; when the evaluation has no ``"accuracy"``
    (``best_by == "loss"``) it minimises the final mean validation loss instead,
    and ``val_accuracy`` and ``best_accuracy`` are NaN. ``memory``
    (:class:`GridMemory`) holds the bytes of the population's params, model
    state and optimizer state (``state_bytes``, their sum over members) and of
    one member (``member_bytes``), and the ``estimate`` that was checked against
    the device before anything was compiled
    (:func:`lrjax._src.results.estimate_population`). ``timings``
    (:class:`lrjax.Timings`) are those of the whole program; ``config``
    (:class:`GridSettings`) what it trained with, and for a :func:`recipe_grid`
    the family. ``stop_reason`` is None when
    every epoch ran, else a hook's reason (:class:`lrjax.Execution`'s
    ``hooks``): ``epochs`` then counts the epochs run.
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
    timings: Timings
    device: str
    memory: GridMemory
    config: GridSettings
    val_metrics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    best_by: str = "accuracy"
    stop_reason: str | None = None

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
            "best_accuracy": json_floats(self.best_accuracy),
            "best_by": self.best_by,
            "steps_per_epoch": self.steps_per_epoch,
            "timings": self.timings.to_json(),
            "device": self.device,
            "memory": self.memory.to_json(),
            "config": self.config.to_json(),
            **({"stop_reason": self.stop_reason} if self.stop_reason else {}),
        }

    def __repr__(self) -> str:
        from lrjax._src.results import short_repr

        lrs = np.asarray(self.lrs)
        family = self.config.family  # a recipe_grid's
        fields: dict[str, Any] = {} if family is None else {"family": family}
        fields |= {
            "best_lr": self.best_lr,
            "best_accuracy": self.best_accuracy,
            "best_by": self.best_by,
            "lrs": lrs,
            "lr_range": (float(lrs.min()), float(lrs.max())) if lrs.size else None,
            "seeds": self.seeds,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "val_accuracy": self.val_accuracy,
            "val_metrics": list(self.val_metrics),
        }
        return short_repr(type(self).__name__, fields)

    def plot(
        self, ax: Any = None, suggestions: Mapping[str, float | None] | None = None
    ) -> Any:
        """Final validation accuracy vs lr (:func:`lrjax.plot_grid`).

        Args:
          ax: the matplotlib Axes to draw on (a new figure when None).
          suggestions: optional ``{method: lr}`` (e.g. a range test's
            ``suggestions``), each drawn as a vertical line.

        Returns:
          The matplotlib Axes drawn on.
        """
        from lrjax._src.plots import plot_grid

        return plot_grid(self, ax, suggestions=suggestions)

    def _repr_html_(self) -> str:
        from lrjax._src.results import html_with_plot

        return html_with_plot(repr(self), self.plot)


def accuracy_at(result: GridResult, lr: float, epoch: int = -1) -> float | None:
    """Mean-over-seeds validation accuracy at ``lr``, interpolated in log lr.

    Linear interpolation of the grid's accuracy (after ``epoch``) against
    ``log(lr)``; None when ``lr`` lies outside the grid. A diverged member counts
    with its measured (low) accuracy.

    >>> acc = np.array([[[0.5]], [[0.7]]])  # [num_lrs=2, seeds=1, epochs=1]
    >>> r = GridResult(np.array([0.01, 0.1]), 1, 1, acc, acc, acc, acc, 0.1, 0.7, 1,
    ...                timings=None, device="", memory=None, config=None)  # unread
    >>> round(accuracy_at(r, math.sqrt(0.001)), 6), accuracy_at(r, 1.0)
    (0.6, None)
    """
    lrs = np.asarray(result.lrs, np.float64)
    _check_increasing(lrs)
    if lr is None or not (lrs[0] * (1 - 1e-9) <= lr <= lrs[-1] * (1 + 1e-9)):
        return None
    acc = np.nanmean(np.asarray(result.val_accuracy)[:, :, epoch], axis=1)
    return float(np.interp(math.log(lr), np.log(lrs), acc))


def _check_lrs(lrs) -> np.ndarray:
    arr = np.asarray(lrs, np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"lrs must be a non-empty 1-D sequence, got {lrs!r}")
    bad = [float(v) for v in arr if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"learning rates must be finite and > 0, got {bad[0]}")
    _check_increasing(arr)
    return arr


def _check_increasing(lrs: np.ndarray) -> None:
    """Refuses lrs out of order: the result's interpolation (:func:`accuracy_at`)
    and plots read them as an increasing axis.

    >>> _check_increasing(np.array([0.1, 0.01]))
    Traceback (most recent call last):
    ValueError: lrs must increase (sorted, no repeats): lrs[0] = 0.1 is ...
    """
    down = np.flatnonzero(np.diff(lrs) <= 0)
    if down.size:
        i = int(down[0])
        raise ValueError(
            f"lrs must increase (sorted, no repeats): lrs[{i}] = {lrs[i]:g} is "
            f"followed by {lrs[i + 1]:g}; pass np.unique(lrs)"
        )


def _grid_specs(
    caller: str, config: Any, population: Any, execution: Any
) -> tuple[GridConfig, Population, Execution]:
    """The specs of a grid, defaults for None.

    Raises:
      TypeError: a spec of the wrong type (0.2's ``population="vmap"`` named).
      ValueError: a ``Population.sweep_over`` or ``Execution.chunks`` (the grid
        has neither), each in one line.
    """
    config = spec_or_default(caller, "config", config, GridConfig)
    population = spec_or_default(caller, "population", population, Population)
    execution = spec_or_default(caller, "execution", execution, Execution)
    refuse_unless(
        caller,
        "has no sweep_over (its members differ by lr and seed: give lrs=)",
        population,
        sweep_over=None,
    )
    default = Execution()
    refuse_unless(
        caller, "runs one compiled chunk per epoch", execution, chunks=default.chunks
    )
    return config, population, execution


def _arrays(data: Any, name: str) -> Any:
    arrays = np.ndarray | jax.Array
    leaves = jax.tree.leaves(data) if isinstance(data, arrays | tuple | dict) else []
    if not leaves or not all(isinstance(a, arrays) for a in leaves):
        raise TypeError(
            f"{name} must be in-memory arrays (a pytree with a common leading "
            f"example axis, e.g. (x, y) or {{'image': x, 'label': y}}); got "
            f"{type(data).__name__}"
        )
    return data


def _make_evaluate(eval_pop, val, n_val: int, batch: int, dispatch: bool, example):
    """``evaluate(params, model_state) -> {name: [members]}`` over the whole split.

    The split is cut into full batches of ``batch`` and a remainder; each batch's
    mean metrics are weighted by its size, so the result is the mean over all
    ``n_val`` examples. Scanned (``lax.map``) in one program, or, for the
    ``"dispatch"`` loop, one dispatched program per batch (a convolution inside a
    loop body is slow on XLA:CPU). Compiled here for ``example``'s
    ``(params, model_state)``.
    """
    full, rest = divmod(n_val, batch)

    def part(params, ms, val, start, size):
        b = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size), val)
        return {k: v * size for k, v in eval_pop(params, ms, b).items()}

    def add(total, m):
        return m if total is None else jax.tree.map(jnp.add, total, m)

    if not dispatch:

        def evaluate_all(params, ms, val):
            total = None
            if full:
                stacked = jax.tree.map(
                    lambda a: a[: full * batch].reshape(full, batch, *a.shape[1:]), val
                )
                per = jax.lax.map(lambda b: eval_pop(params, ms, b), stacked)
                total = {k: v.sum(0) * batch for k, v in per.items()}
            if rest:
                total = add(total, part(params, ms, val, full * batch, rest))
            assert total is not None  # n_val >= 1
            return {k: v / n_val for k, v in total.items()}

        run = jax.jit(evaluate_all).lower(*example, val).compile()
        return lambda params, ms: run(params, ms, val)

    runs = {
        size: jax.jit(lambda p, m, v, start, size=size: part(p, m, v, start, size))
        .lower(*example, val, jnp.int32(0))
        .compile()
        for size in {batch} | ({rest} if rest else set())
    }
    sizes = [batch] * full + ([rest] if rest else [])

    def evaluate(params, ms):
        total = None
        for i, size in enumerate(sizes):
            total = add(total, runs[size](params, ms, val, jnp.int32(i * batch)))
        assert total is not None  # n_val >= 1
        return {k: v / n_val for k, v in total.items()}

    return evaluate


@takes_moved_keywords("lr_grid")
def lr_grid(
    model: Any,
    optimizer: OptimizerFactory,
    train_data: Any,
    val_data: Any,
    *,
    lrs: Sequence[float] | np.ndarray,
    key: jax.Array,
    loss_fn: LossFn | None = None,
    model_state: Any = None,
    eval_fn: Callable | None = None,
    config: GridConfig | None = None,
    population: Population | None = None,
    execution: Execution | None = None,
) -> GridResult:
    """Trains one model per (lr, seed) in one compiled program; returns the grid.

    Args:
      model: an ``nnx.Module`` (BatchNorm, Dropout, any state) or a params pytree
        (with a ``loss_fn(params, batch)``, or with ``model_state``), shared by
        every seed; or a factory ``key -> model`` (with
        ``model_state="from_factory"``: ``key -> (params, model_state)``) so that
        every seed gets its own initialisation. Never modified.
      optimizer: ``learning_rate -> optax.GradientTransformation``, e.g.
        ``optax.sgd``; it is given each member's lr (times ``config.schedule``).
      train_data, val_data: in-memory arrays, each a pytree with a common leading
        example axis (``(x, y)``, ``{"image": x, "label": y}``).
      lrs: the learning rates, each finite and > 0 (typically log-spaced).
      key: a ``jax.random.key``; seed ``k`` uses ``fold_in(key, k)`` for its batch
        order and ``fold_in(fold_in(key, k), 1)`` for a factory's initialisation.
      loss_fn: ``loss_fn(model, batch) -> loss | (loss, {name: scalar})``; default
        :func:`lrjax.classification_loss` on ``(x, y)`` batches. With
        ``model_state``: ``loss_fn(params, model_state, batch, key) ->
        (loss, model_state[, {name: scalar}])``, as :func:`lrjax.lr_range_test`.
      model_state: the state of a params-pytree model (Linen's
        ``{"batch_stats": ...}``, Equinox's ``eqx.nn.State``), or
        ``"from_factory"``. Every member carries its own copy; ``key`` of update
        ``t`` is ``fold_in(fold_in(fold_in(key, s), 2), t)`` for seed ``s``, the
        same for every lr. Needs ``eval_fn``.
      eval_fn: ``eval_fn(model, batch) -> {name: scalar}`` (batch means) for the
        validation split; default the loss and metrics of ``loss_fn``. Its
        ``"accuracy"`` picks the best lr; without one, the lowest ``"loss"`` does.
        With ``model_state``: ``eval_fn(params, model_state, batch)`` in
        evaluation mode (running averages, no dropout), required.
      config: the training of every member (:class:`lrjax.GridConfig`: epochs,
        the validation split evaluated after each; examples per update, each
        epoch a fresh permutation with the remainder dropped; a unit
        ``schedule`` ``step -> factor``, e.g. ``optax.cosine_decay_schedule(1.0,
        total_steps)``, so that member ``lr`` applies ``lr * schedule(t)`` at
        update ``t``, None a constant lr; examples per evaluation batch).
        Default ``GridConfig()``.
      population: ``seeds`` independent runs per lr, and the members' ``layout``
        inside each compiled update and evaluation (:class:`lrjax.Population`;
        the choice is ``timings.population``). Its ``sweep_over`` is the
        range test's, refused here. Default ``Population()``: one seed.
      execution: the ``loop`` (the choice is ``timings.loop``), a tqdm
        ``progress`` bar over epochs and your ``hooks`` (:class:`lrjax.Execution`,
        :class:`lrjax.Hook`: a chunk's per-update metrics are ``[updates,
        members]``, padded as :class:`lrjax.hooks.ChunkEnd` says; an epoch's
        ``end.record`` its ``val_<metric>`` per member; a reason returned stops
        every member there); the grid runs one compiled chunk per epoch, so
        ``chunks`` keeps its default.

    Returns:
      A :class:`GridResult`; its ``config`` holds the settings under their 0.2
      names (``epochs``, ``batch_size``, ``seeds``, ...).

    Raises:
      ValueError, TypeError: a bad argument, naming it and what is allowed; a
        keyword of 0.2 that moved into a spec (``epochs=2``) names the spec.
      lrjax.MemoryRefused: a ValueError, in one line, when the
        population's estimated memory exceeds what the device has; raised
        after building the first member, before the others or any compile.

    Two lrs for a linear model (a params pytree with its loss), one epoch:

    >>> import optax
    >>> x = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32)
    >>> loss_fn = classification_loss(lambda w, x: x @ w)
    >>> grid = lr_grid(jnp.zeros((4, 2)), optax.sgd, (x[:192], y[:192]),
    ...                (x[192:], y[192:]), lrs=[0.01, 1.0], key=jax.random.key(0),
    ...                loss_fn=loss_fn, config=GridConfig(batch_size=16))
    >>> len(grid.lrs), grid.val_accuracy.shape, grid.steps_per_epoch
    (2, (2, 1, 1), 12)
    >>> bool(grid.best_accuracy > 0.9), grid.best_lr in (0.01, 1.0)
    (True, True)
    """
    specs = _grid_specs("lr_grid", config, population, execution)
    return _grid(model, optimizer, train_data, val_data, {None: specs[0].schedule},
                 lrs=lrs, key=key, loss_fn=loss_fn, model_state=model_state,
                 eval_fn=eval_fn, specs=specs)[0]  # fmt: skip


def recipe_grid(
    model: Any,
    optimizer: OptimizerFactory,
    train_data: Any,
    val_data: Any,
    *,
    lrs: Sequence[float] | np.ndarray,
    families: Mapping[str, Callable[[jax.Array], jax.Array] | None],
    key: jax.Array,
    **options: Any,
) -> dict[str, GridResult]:
    """A grid over (schedule family x peak lr x seed), trained as ONE population.

    Every family is a unit schedule ``step -> factor`` (peak 1, e.g.
    ``lrjax.recipes.unit_schedule("one_cycle", total_steps)``; None is a constant
    lr); member ``(family, lr, seed)`` applies ``lr * family(t)`` at update ``t``.
    All members share the seeds' initialisations and batch orders, so families
    and peaks are compared on equal footing, in one compiled program (members
    vmapped, or unrolled for a convolution on the CPU).

    Args:
      model, optimizer, train_data, val_data, lrs, key: as :func:`lr_grid`.
      families: ``{name: unit schedule}``, at least one.
      **options: the other keyword arguments of :func:`lr_grid` (``loss_fn``,
        ``model_state``, ``eval_fn``, ``config``, ``population``,
        ``execution``); ``config.schedule`` must be None (the
        families are the schedules).

    Returns:
      ``{name: GridResult}`` in the order of ``families``; each result's
      ``config.family`` names it, and ``timings`` and ``memory`` are those
      of the whole program.

    >>> import optax
    >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32)
    >>> g = recipe_grid(jnp.zeros((3, 2)), optax.sgd, (x, y), (x, y),
    ...                 lrs=[0.1, 1.0], families={"constant": None,
    ...                 "half": lambda t: 0.5 * jnp.ones_like(t, jnp.float32)},
    ...                 key=jax.random.key(0), loss_fn=classification_loss(
    ...                 lambda p, x: x @ p), config=GridConfig(batch_size=16))
    >>> list(g), g["half"].applied_lr[1, 0] / g["constant"].applied_lr[1, 0]
    (['constant', 'half'], np.float64(0.5))
    """
    if "schedule" in options:
        raise ValueError("recipe_grid takes families={name: schedule}, not schedule=")
    passed = {k: options.pop(k) for k in _GRID_OPTIONS if k in options}
    check_moved("recipe_grid", options)
    specs = _grid_specs(
        "recipe_grid",
        passed.pop("config", None),
        passed.pop("population", None),
        passed.pop("execution", None),
    )
    if specs[0].schedule is not None:
        raise ValueError(
            "recipe_grid takes families={name: schedule}, not config.schedule"
        )
    names = list(families)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"families must be a non-empty mapping of names to schedules, got "
            f"{families!r}"
        )
    units: dict[str | None, Callable | None] = {n: families[n] for n in names}
    results = _grid(
        model, optimizer, train_data, val_data, units, lrs=lrs, key=key,
        specs=specs, **passed,
    )  # fmt: skip
    return dict(zip(names, results, strict=True))


# The keywords recipe_grid takes in **options (the specs go to _grid as one tuple).
_GRID_OPTIONS = (
    "loss_fn", "model_state", "eval_fn", "config", "population", "execution",
)  # fmt: skip


def _grid(
    model: Any,
    optimizer: OptimizerFactory,
    train_data: Any,
    val_data: Any,
    units: Mapping[str | None, Callable | None],
    *,
    lrs: Sequence[float] | np.ndarray,
    key: jax.Array,
    specs: tuple[GridConfig, Population, Execution],
    loss_fn: LossFn | None = None,
    model_state: Any = None,
    eval_fn: Callable | None = None,
) -> list[GridResult]:
    """The population of (unit schedule, lr, seed) members; a result per unit,
    in the order of ``units`` (``{name: unit schedule}``), its ``config.family``
    the unit's name (None: lr_grid's one schedule)."""
    config, population, execution = specs
    seeds, epochs, batch_size = population.seeds, config.epochs, config.batch_size
    eval_batch_size = config.eval_batch_size
    lr_arr = _check_lrs(lrs)
    if model_state is not None and eval_fn is None:
        raise ValueError(STATEFUL_EVAL)
    train_data, val_data, n_train, n_val = _checked_data(
        train_data, val_data, batch_size
    )
    has_loss_fn = loss_fn is not None
    loss_fn = classification_loss() if loss_fn is None else loss_fn
    grid = _Grid.of(lr_arr, len(units), seeds, epochs, n_train // batch_size)
    make_tx = _unit_optimizer(optimizer, list(units.values()))
    estimates: list[MemoryEstimate] = []  # the check's, of the first member
    check = _memory_check(grid, make_tx, train_data, batch_size, estimates)
    spec, params, rest = init_members(
        model, key, seeds, check, model_state=model_state, has_loss_fn=has_loss_fn
    )
    source = _grid_batches(train_data, key, batch_size, grid)
    val = jax.tree.map(jnp.asarray, val_data)
    if grid.layout.mesh is not None:
        val = jax.device_put(val, grid.layout.sharding())
    state = _init_states(params, rest, grid, make_tx)
    del params, rest

    program = Program(
        _member_builder(spec, loss_fn, make_tx),
        gathers=source.gathers,
        members="own" if seeds > 1 else "shared",
        loop=execution.loop,
        population=population.layout,
    )
    eval_one = make_eval_batch(spec, loss_fn, eval_fn=eval_fn)
    member_bytes = tree_bytes(state) // grid.padded
    memory = GridMemory(
        state_bytes=member_bytes * grid.size,
        member_bytes=member_bytes,
        members=grid.size,
        padded_members=grid.padded,
        estimate=estimates[0],
    )
    # Compile the epoch and the evaluation before the clock starts ("auto"
    # decides the loop here, and the evaluation follows it).
    plan = epoch_plan(0, grid.steps * epochs, grid.steps, 1)
    program.compile(state, source.chunk(*plan[0]), source.data)
    t0 = time.perf_counter()
    evaluate = _member_evaluate(
        program, eval_one, val, n_val, min(eval_batch_size, n_val), state
    )
    eval_compile_s = time.perf_counter() - t0

    recorder = _EpochRecorder(evaluate, grid)
    hooks: list[Hook] = []
    if execution.progress:
        hooks.append(ProgressBar("lr grid", unit="epoch", postfix=recorder.postfix))
    run = Run(total_steps=grid.steps * epochs, steps_per_epoch=grid.steps)
    out = drive(
        program, state, source, plan, run=run, observe=recorder,
        hooks=[*hooks, *execution.hooks],
    )  # fmt: skip
    del state

    settings = [
        GridSettings(
            batch_size=batch_size,
            epochs=epochs,
            seeds=seeds,
            num_lrs=grid.num_lrs,
            eval_batch_size=min(eval_batch_size, n_val),
            n_train=n_train,
            n_val=n_val,
            family=name,
        )
        for name in units
    ]
    if out.stop_reason:  # a hook stopped every member after an epoch
        grid = grid._replace(epochs=len(recorder.evals))
    timings = _timings(program, eval_compile_s, out.run_s, grid)
    device = describe_devices(grid.layout.devices())
    return _results(grid, recorder, timings, device, memory, settings, out.stop_reason)


def _checked_data(train_data, val_data, batch_size: int) -> tuple[Any, Any, int, int]:
    """``(train_data, val_data, n_train, n_val)``: in-memory arrays, checked."""
    train_data = _arrays(train_data, "train_data")
    val_data = _arrays(val_data, "val_data")
    n_train = leading_size(train_data, "train_data")
    n_val = leading_size(val_data, "val_data")
    if n_val < 1:
        raise ValueError("val_data has no examples")
    check_batch_size(batch_size, n_train)
    return train_data, val_data, n_train, n_val


class _Grid(NamedTuple):
    """The population and how long it trains.

    Member ``p = c * seeds + s`` over the cells ``c = f * num_lrs + l`` (family
    ``f``, lr ``l``), laid out (and padded with copies of the last member) by
    :class:`lrjax._src.population.Layout`; each trains ``epochs`` of ``steps``.
    """

    lrs: np.ndarray  # float64[num_lrs]
    families: int
    epochs: int
    steps: int  # updates per epoch
    layout: Layout

    @classmethod
    def of(
        cls, lrs: np.ndarray, families: int, seeds: int, epochs: int, steps: int
    ) -> _Grid:
        return cls(lrs, families, epochs, steps, Layout.of(families * lrs.size, seeds))

    @property
    def num_lrs(self) -> int:
        return self.lrs.size

    @property
    def seeds(self) -> int:
        return self.layout.seeds

    @property
    def size(self) -> int:  # members that count
        return self.layout.size

    @property
    def padded(self) -> int:  # members run: a multiple of the devices
        return self.layout.padded

    def stack(self, per_epoch) -> np.ndarray:
        """``[epochs][padded] -> float64[families, num_lrs, seeds, epochs]``."""
        a = np.stack([np.asarray(v)[: self.size] for v in per_epoch], axis=-1)
        shape = (self.families, self.num_lrs, self.seeds, self.epochs)
        return a.astype(np.float64).reshape(shape)


def _unit_optimizer(optimizer: OptimizerFactory, units: list) -> Callable:
    """``make_tx(peak, family)``: the optimizer at ``peak * units[family](t)``.

    The member's ``peak`` lr and ``family`` (an index into ``units``) are numeric
    hyperparameters of an ``optax.inject_hyperparams`` state
    (``opt_state.hyperparams``), as a swept value is in the range test: data
    of each member's state, which every update reads, never constants of the
    program. So one ``make_tx(0.0, 0)`` steps every member; ``make_tx(peak,
    family)`` initialises one. Inside it, :func:`lrjax.make_optimizer`'s state
    logs the lr each update applied. A unit that is None is the constant 1.
    """
    one = lambda t: jnp.ones(jnp.shape(t), jnp.float32)  # noqa: E731
    units = [one if u is None else u for u in units]

    def scheduled(peak, family):
        if len(units) == 1:
            return make_optimizer(optimizer, lambda t: peak * units[0](t))
        # The family is data too: every unit is evaluated, the member's picked.
        return make_optimizer(
            optimizer, lambda t: peak * jnp.stack([u(t) for u in units])[family]
        )

    def make_tx(peak, family):
        return optax.inject_hyperparams(scheduled)(
            peak=jnp.asarray(peak, jnp.float32), family=jnp.asarray(family, jnp.int32)
        )

    return make_tx


def _memory_check(
    grid: _Grid,
    make_tx: Callable,
    train_data,
    batch_size: int,
    estimates: list[MemoryEstimate],
) -> Callable:
    """``check(spec, params, rest)`` for :func:`lrjax._src.population.init_members`.

    It refuses an impossible population from its first member, before the other
    seeds are built and before anything compiles; ``estimates`` gets the numbers.
    """

    def check(spec, params, rest):
        one = jax.eval_shape(
            lambda p, r: init_state(p, r, make_tx(0.0, 0)), params, rest
        )
        # A member's inputs: its batch, and with several seeds its own row of
        # the epoch chunk's indices (int32[steps, batch]).
        own = 4 * grid.steps * batch_size if grid.seeds > 1 else 0
        fewer = (
            "the number of lrs or seeds (lrs, Population.seeds; lrjax-grid --num, "
            "--seeds)"
        )
        estimates.append(
            check_memory(one, train_data, batch_size, own, grid.layout, fewer)
        )

    return check


def _grid_batches(
    train_data, key: jax.Array, batch_size: int, grid: _Grid
) -> MemberBatches:
    """Seed ``k``'s batch order from ``fold_in(key, k)``, shared by its members."""
    keys = member_keys(key, grid.seeds)
    base = ArraySource(
        train_data,
        batch_size,
        keys if grid.seeds > 1 else keys[0],
        sharding=grid.layout.sharding(),
    )
    return MemberBatches.of(base, grid.layout)


def _init_states(params, rest, grid: _Grid, make_tx: Callable) -> TrainState:
    """Every member's state (``[padded, ...]``), split over the mesh.

    A cell's lr and family are the member's data, in its optimizer state
    (:func:`_unit_optimizer`, :func:`lrjax._src.population.init_states`). Even
    one member has a member axis: the evaluation and the results read every
    member along it.
    """

    def init(params, rest, lr, family):
        return init_state(params, rest, make_tx(lr, family))

    num_lrs = grid.num_lrs
    lr_of = np.tile(grid.lrs.astype(np.float32), grid.families)  # [cells]
    family_of = np.repeat(np.arange(grid.families, dtype=np.int32), num_lrs)
    return init_states(grid.layout, params, rest, init, [lr_of, family_of])


def _member_builder(spec, loss_fn: LossFn, make_tx: Callable) -> Callable:
    """``build(unroll)`` for :class:`lrjax._src.loop.Program`: the one step, whose
    optimizer reads the member's lr and family from its state."""

    def build(unroll: bool):
        tx = make_tx(0.0, 0)  # placeholders: each member's state has its own
        return make_step(spec, loss_fn, tx, unroll=unroll)

    return build


def _member_evaluate(program: Program, eval_one, val, n_val: int, batch: int, state):
    """``evaluate(params, model_state) -> {name: [members]}`` (:func:`_make_evaluate`).

    The members are evaluated the way they train (vmapped, unrolled, mapped).
    """
    eval_members = population_fn(
        lambda pr, b, _: eval_one(pr[0], pr[1], b),
        False,
        program.population or "vmap",  # set: the program has members
        program.mesh,
    )

    def eval_pop(params, ms, b):
        return eval_members((params, ms), b, None)

    return _make_evaluate(
        eval_pop,
        val,
        n_val,
        batch,
        program.loop == "dispatch",
        (state.params, state.model_state),
    )


class _EpochRecorder:
    """The grid's books after every chunk (:func:`lrjax._src.loop.drive`'s ``observe``).

    Keeps the chunk's training losses and applied lrs and, at an epoch's end,
    every member's evaluation (before the next chunk donates the state), which
    the hooks see as ``end.record``: ``epoch``, ``step`` and ``val_<metric>``
    (``[members]``, the padding dropped).
    """

    def __init__(self, evaluate: Callable, grid: _Grid):
        self.evaluate, self.steps, self.size = evaluate, grid.steps, grid.size
        self.train_parts: dict[str, list[np.ndarray]] = {"loss": [], "lr": []}
        self.evals: list[dict[str, jax.Array]] = []  # per epoch: {name: [padded]}

    def __call__(self, run: Run, end: ChunkEnd) -> None:
        for name in self.train_parts:
            self.train_parts[name].append(end.metrics[name])
        if end.hi % self.steps == 0:  # every chunk is an epoch; kept general
            st = end.state  # evaluated before the next chunk donates it
            ev = jax.tree.map(host, self.evaluate(st.params, st.model_state))
            self.evals.append(ev)
            end.record = {"epoch": end.hi // self.steps, "step": end.hi} | {
                f"val_{name}": np.asarray(v)[: self.size] for name, v in ev.items()
            }
            run.history.append(end.record)
        return None

    def postfix(self, run: Run, end: ChunkEnd) -> dict[str, str]:
        """The progress bar's best validation accuracy over the members (if any)."""
        ev = self.evals[-1]
        if "accuracy" not in ev:
            return {}
        best = np.nanmax(np.asarray(ev["accuracy"])[: self.size])
        return {"best_acc": f"{best:.3f}"}


def _timings(
    program: Program, eval_compile_s: float, run_s: float, grid: _Grid
) -> Timings:
    total_steps = grid.steps * grid.epochs * grid.size
    return Timings(
        "lr_grid",
        compile_s=program.compile_s + eval_compile_s,
        run_s=run_s,
        steps_per_s=total_steps / run_s if run_s > 0 else None,
        model_epochs_per_s=grid.size * grid.epochs / run_s if run_s > 0 else None,
        loop=program.loop,
        population=program.population,
    )


def _results(
    grid: _Grid,
    recorder: _EpochRecorder,
    timings: Timings,
    device: str,
    memory: GridMemory,
    settings: list[GridSettings],
    stop_reason: str | None,
) -> list[GridResult]:
    """A :class:`GridResult` per family (with its ``settings``) from the
    recorded epochs.

    Raises:
      ValueError: the evaluation has neither ``"accuracy"`` nor ``"loss"``.
    """
    evals, parts = recorder.evals, recorder.train_parts
    val_metrics = {name: grid.stack([ev[name] for ev in evals]) for name in evals[0]}
    if "accuracy" not in val_metrics and "loss" not in val_metrics:
        raise ValueError(
            "the evaluation must return 'accuracy' or 'loss' to rank the lrs; got "
            f"{sorted(val_metrics)}"
        )
    losses = np.concatenate(parts["loss"]).astype(np.float64)  # [T, padded]
    train_loss = grid.stack(
        losses.reshape(grid.epochs, grid.steps, grid.padded).mean(axis=1)
    )
    lr_steps = np.concatenate(parts["lr"])  # [T, padded]
    applied = lr_steps[:, : grid.size : grid.seeds].T.astype(np.float64)
    applied = applied.reshape(grid.families, grid.num_lrs, -1)
    nan = np.full((grid.num_lrs, grid.seeds, grid.epochs), np.nan)
    results = []
    for f in range(grid.families):
        metrics = {name: v[f] for name, v in val_metrics.items()}
        val_loss = metrics.get("loss", nan)
        val_acc = metrics.get("accuracy", nan)
        # A diverged member's accuracy is what it measured: argmax of NaN logits
        # is class 0, so it is low but finite, and the best lr is never NaN.
        final = np.mean(val_acc[:, :, -1], axis=1)
        if "accuracy" in metrics:
            best_by, best = "accuracy", int(np.argmax(final))
        else:  # a custom evaluation without accuracy: the lowest mean loss wins
            loss = np.mean(val_loss[:, :, -1], axis=1)
            best_by = "loss"
            best = int(np.argmin(np.where(np.isnan(loss), np.inf, loss)))
        results.append(
            GridResult(
                lrs=grid.lrs,
                seeds=grid.seeds,
                epochs=grid.epochs,
                val_loss=val_loss,
                val_accuracy=val_acc,
                train_loss=train_loss[f],
                applied_lr=applied[f],
                best_lr=float(grid.lrs[best]),
                best_accuracy=float(final[best]),
                steps_per_epoch=grid.steps,
                timings=timings,
                device=device,
                memory=memory,
                config=settings[f],
                val_metrics=metrics,
                best_by=best_by,
                stop_reason=stop_reason,
            )
        )
    return results
