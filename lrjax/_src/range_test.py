"""The learning-rate range test: one compiled sweep, any model, loss and data.

The lr grows from ``Sweep.init_value`` to ``Sweep.end_value`` (:mod:`lrjax._src.specs`)
while the model trains through the one step (:func:`lrjax.make_step`); the
loss of every batch is recorded BEFORE its update. The sweep runs as compiled
chunks (:mod:`lrjax._src.loop`); between chunks the host smooths the losses, checks
for divergence (:mod:`lrjax._src.suggestions`) and stops once every seed has diverged,
then the hooks act (:mod:`lrjax.hooks`: the progress bar, yours).
The caller's model is never changed: the sweep trains copies of its arrays.

``Population(sweep_over={"weight_decay": [0.0, 1e-4, 1e-3]})`` runs one lr sweep
per value of a second hyperparameter in the SAME compiled program (Smith 2018, "A
disciplined approach to neural network hyper-parameters"): the optimizer factory
is called as ``optimizer(learning_rate, weight_decay=value)`` inside
``optax.inject_hyperparams``, so each member's value is data in its optimizer
state (``opt_state.hyperparams["weight_decay"]``), not a constant of the
program. With ``Population.seeds`` on top the population is values x seeds
members; member ``(v, s)`` uses seed ``s``'s initialisation and batch order, so
values are compared on equal footing. :func:`lrjax._src.suggestions.best_sweep_value`
picks the value.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp  # noqa: F401 (the docstring examples use it)
import numpy as np
import optax

from lrjax._src.batches import ArraySource, IterSource, as_source, is_arrays
from lrjax._src.hooks import ChunkEnd, Hook, ProgressBar, Run
from lrjax._src.loop import (
    DriveResult,
    Program,
    drive,
    uniform_plan,
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
    check_driver,
    describe_devices,
    html_with_plot,
    json_floats,
    record_json,
    short_repr,
)
from lrjax._src.specs import (
    Divergence,
    Execution,
    Population,
    Sweep,
    check_steps,
    check_sweep_over,
    spec_or_default,
    takes_moved_keywords,
)
from lrjax._src.step import (
    LossFn,
    OptimizerFactory,
    check_classification_data,
    check_optimizer,
    classification_loss,
    init_state,
    make_optimizer,
    make_step,
    optimizer_name,
)
from lrjax._src.suggestions import (
    DEFAULT_METHOD,
    METHODS,
    SWEEP_TOLERANCE,
    DivergenceTracker,
    Smoother,
    best_sweep_value,
    curve_minimum,
    median,
    pick,
    suggest,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MAX_CHUNK_STEPS = 4096  # bounds a chunk's inputs, whatever the sweep length


@dataclasses.dataclass(frozen=True)
class SweepOver:
    """The hyperparameter a range test swept besides the lr
    (``Population(sweep_over={name: values})``), as its settings record it.

    Attributes:
      name: the optimizer's keyword, e.g. ``"weight_decay"``.
      values: its values, one lr sweep each.
      shown: the index of the value the result's top-level fields describe
        (the recommended one; 0 when none is recommended).
    """

    name: str
    values: tuple[float, ...]
    shown: int

    def to_json(self) -> dict[str, Any]:
        """``{"name", "values", "shown"}``, JSON-ready."""
        return record_json(self, ("name", "values", "shown"))


# The settings each range test records, in the order to_json writes them; of
# these, sweep (with sweep_over), batches_skipped and data_restarts (an iterable)
# are written only when set.
_RECORDED: dict[str, tuple[str, ...]] = {
    "lr_range_test": (
        "optimizer", "mode", "init_value", "end_value", "num_steps", "batch_size",
        "accumulate_steps", "smooth_beta", "diverge_threshold", "rebound", "chunks",
        "chunk_steps", "data", "memory", "sweep", "batches_skipped", "data_restarts",
    ),
    "step_range_test": (
        "mode", "init_value", "end_value", "num_steps", "batch_size", "smooth_beta",
        "diverge_threshold", "rebound", "data", "hyperparam", "batches_skipped",
        "data_restarts",
    ),
}  # fmt: skip
_RECORDED_WHEN_SET = ("sweep", "batches_skipped", "data_restarts")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RangeTestSettings:
    """What a range test ran with (``RangeTestResult.config``), under their 0.2
    names (``num_steps``, ``smooth_beta``, ...).

    ``driver`` names the range test that recorded it; a field it does not record
    is None. Both record ``mode`` to ``rebound`` (without ``optimizer`` and
    ``accumulate_steps`` for ``step_range_test``), ``data`` and, for an
    iterable, ``batches_skipped`` and ``data_restarts``; only
    :func:`lrjax.lr_range_test` records ``optimizer``, ``accumulate_steps``,
    ``chunks``, ``chunk_steps``, ``memory`` and (with ``sweep_over``) ``sweep``;
    only :func:`lrjax.step_range_test` records ``hyperparam``.

    Attributes:
      driver: ``"lr_range_test"`` or ``"step_range_test"``.
      optimizer: the optimizer factory's name (``optax.adamw`` -> ``"adamw"``);
        None for a lambda or an unnamed callable.
      mode: the sweep's spacing, ``"exponential"`` or ``"linear"``.
      init_value, end_value: the sweep's first and last lr.
      num_steps: the updates planned (the run may stop earlier:
        ``RangeTestResult.steps_run``).
      batch_size: examples per (micro-)batch; an iterable's, as its batches came.
      accumulate_steps: micro-batches averaged into each update.
      smooth_beta, diverge_threshold, rebound: the divergence rule
        (:class:`lrjax.Divergence`'s ``smooth_beta``, ``threshold``, ``rebound``).
      chunks: compiled chunks in the plan.
      chunk_steps: updates in the longest chunk.
      data: ``"arrays"`` (in-memory) or ``"iterable"``.
      memory: the population's memory estimate, checked before it started.
      sweep: the hyperparameter swept besides the lr, with ``sweep_over``.
      hyperparam: where ``step_range_test`` put the lr: the path of the
        ``inject_hyperparams`` hyperparameter in the state, or ``"set_lr"``.
      batches_skipped: an iterable's batches of another size, skipped.
      data_restarts: times an iterable ran out and was iterated again.
    """

    driver: str
    optimizer: str | None = None
    mode: str
    init_value: float
    end_value: float
    num_steps: int
    batch_size: int | None
    accumulate_steps: int | None = None
    smooth_beta: float
    diverge_threshold: float
    rebound: float | None
    chunks: int | None = None
    chunk_steps: int | None = None
    data: str
    memory: MemoryEstimate | None = None
    sweep: SweepOver | None = None
    hyperparam: str | None = None
    batches_skipped: int | None = None
    data_restarts: int | None = None

    def __post_init__(self):
        check_driver(self, _RECORDED)

    def to_json(self) -> dict[str, Any]:
        """The fields ``driver`` records (the others left out), JSON-ready."""
        return record_json(self, _RECORDED[self.driver], _RECORDED_WHEN_SET)


@dataclasses.dataclass
class RangeTestResult:
    """What a range test returns. Arrays are numpy, on the host.

    One rule for every result's arrays: an array with a value per seed keeps its
    seed axis whatever the number of seeds, one included. ``losses``,
    ``smoothed_losses`` and every ``metrics[name]`` (the loss function's other
    metrics per update) are ``[seeds, steps_run]``, so one seed's curve is
    ``losses[0]``; ``lrs`` is ``[steps_run]`` (the same sweep for every seed).
    :meth:`to_json` writes the same shapes. ``suggestions`` hold the median over
    seeds of each method; ``spread`` is None for one seed, else per-seed values of the
    chosen method (``per_seed``), their ``min`` and ``max``, and every method's
    per-seed values (``per_method``). ``stop_reason`` is ``"diverged"``,
    ``"data"`` (a one-shot iterable ran out), a hook's reason (``"signal"``), or
    None (the sweep ran to its end). ``warning`` says when the loss was not
    finite before any descent (NaN/inf inputs, a broken model or loss, or a sweep
    that started too high): then the curve says nothing about the lr; and when
    the sweep stopped short of its end for any reason but divergence: then the
    suggestion is from the lrs swept (:func:`result_warning`). ``timings``
    (:class:`lrjax.Timings`) says where the time went and which loop ran,
    ``config`` (:class:`RangeTestSettings`) what the sweep ran with.
    """

    lrs: np.ndarray  #: the lr of each update run, ``[steps_run]``
    losses: np.ndarray  #: the raw loss per update, ``[seeds, steps_run]``
    #: the smoothed loss the suggestions read, ``[seeds, steps_run]``
    smoothed_losses: np.ndarray
    #: the loss function's other metrics, each ``[seeds, steps_run]``
    metrics: dict[str, np.ndarray]
    #: the median over seeds of the lr where each diverged (None: most did not)
    diverged_at_lr: float | None
    #: each seed's divergence step (None: it did not)
    diverged_at_step: list[int | None]
    #: every method's suggested lr (median over seeds)
    suggestions: dict[str, float | None]
    #: ``method``'s suggestion, else valley's, else minimum's
    suggested_lr: float | None
    method: str  #: the suggestion method chosen (``lrjax.METHODS``)
    seeds: int  #: the number of seeds swept
    #: per-seed suggestions and their range (None for one seed)
    spread: dict[str, Any] | None
    steps_run: int  #: updates run (the sweep may stop early)
    stop_reason: str | None  #: ``"diverged"``, ``"data"``, a hook's reason, or None
    timings: Timings  #: where the time went (:class:`lrjax.Timings`)
    device: str  #: the device the sweep ran on, in words
    config: RangeTestSettings  #: what the sweep ran with (:class:`RangeTestSettings`)
    #: with ``sweep_over``: every value's result (:class:`SweepResult`)
    sweep: SweepResult | None = None
    warning: str | None = None  #: why the curve or suggestion may mislead, or None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN and inf become None)."""

        extra = {} if self.sweep is None else {"sweep": self.sweep.to_json()}
        return {
            "suggested_lr": self.suggested_lr,
            "method": self.method,
            "suggestions": self.suggestions,
            "diverged_at_lr": self.diverged_at_lr,
            "diverged_at_step": self.diverged_at_step,
            "lrs": json_floats(self.lrs),
            "losses": json_floats(self.losses),
            "smoothed_losses": json_floats(self.smoothed_losses),
            "metrics": {k: json_floats(v) for k, v in self.metrics.items()},
            "seeds": self.seeds,
            "spread": self.spread,
            "steps_run": self.steps_run,
            "stop_reason": self.stop_reason,
            "warning": self.warning,
            "timings": self.timings.to_json(),
            "device": self.device,
            "config": self.config.to_json(),
            **extra,
        }

    def __repr__(self) -> str:
        fields = {
            "suggested_lr": self.suggested_lr,
            "method": self.method,
            "diverged_at_lr": self.diverged_at_lr,
            "stop_reason": self.stop_reason,
            "steps_run": self.steps_run,
            "seeds": self.seeds,
            "lrs": self.lrs,
            "losses": self.losses,
            "metrics": list(self.metrics),
        }
        if self.sweep is not None:
            sw = self.sweep
            fields["sweep"] = f"{sw.name}: {len(sw.values)} values" + (
                "" if sw.value is None else f", best {sw.value:g} at lr {sw.lr:.4g}"
            )
        if self.warning is not None:
            fields["warning"] = self.warning
        return short_repr(type(self).__name__, fields)

    def plot(self, ax: Axes | None = None) -> Axes:
        """The loss curve with its suggestions (:func:`lrjax.plot_range_test`).

        Args:
          ax: the Axes to draw on (a new figure when None).

        Returns:
          The Axes drawn on.
        """
        from lrjax._src.plots import plot_range_test

        return plot_range_test(self, ax)

    def _repr_html_(self) -> str:
        return html_with_plot(repr(self), self.plot)


@dataclasses.dataclass
class SweepResult:
    """Every value's range test with ``Population(sweep_over=...)``. Arrays are numpy.

    ``losses``, ``smoothed_losses`` and each of ``metrics`` are ``[values, seeds,
    steps_run]`` for every number of seeds, one included (the rule of
    :class:`RangeTestResult`: a per-seed array keeps its seed axis); the lrs are the
    range test's ``lrs``, shared by all. :meth:`to_json` writes the same shapes.
    Per value ``i``:
    ``suggestions[i]`` (median over seeds of every method), ``suggested_lr[i]``
    (the chosen method's), ``diverged_at_lr[i]``, ``diverged_at_step[i]`` (per
    seed), ``min_loss[i]`` (median over seeds of the lowest smoothed loss before
    divergence) and ``spread[i]`` (as :class:`RangeTestResult`'s). ``best`` is
    the index :func:`lrjax._src.suggestions.best_sweep_value` picks, ``value``
    and ``lr`` the recommended pair (None when no value gave a usable curve).
    """

    name: str
    values: list[float]
    losses: np.ndarray
    smoothed_losses: np.ndarray
    metrics: dict[str, np.ndarray]
    suggestions: list[dict[str, float | None]]
    suggested_lr: list[float | None]
    diverged_at_lr: list[float | None]
    diverged_at_step: list[list[int | None]]
    min_loss: list[float | None]
    spread: list[dict[str, Any] | None]
    best: int | None
    value: float | None
    lr: float | None
    tolerance: float
    rule: str = (
        "lowest minimum smoothed loss (minima within tolerance of the lowest tie), "
        "then the latest divergence (no divergence = latest), then the lower "
        "minimum, then the first value; values without a suggested lr only if "
        "none has one"
    )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN and inf become None)."""
        return {
            "name": self.name,
            "values": self.values,
            "recommended": {"index": self.best, "value": self.value, "lr": self.lr},
            "rule": self.rule,
            "tolerance": self.tolerance,
            "min_loss": self.min_loss,
            "suggested_lr": self.suggested_lr,
            "suggestions": self.suggestions,
            "diverged_at_lr": self.diverged_at_lr,
            "diverged_at_step": self.diverged_at_step,
            "spread": self.spread,
            "losses": json_floats(self.losses),
            "smoothed_losses": json_floats(self.smoothed_losses),
            "metrics": {k: json_floats(v) for k, v in self.metrics.items()},
        }

    def __repr__(self) -> str:
        return short_repr(
            type(self).__name__,
            {
                "name": self.name,
                "values": self.values,
                "best": self.best,
                "value": self.value,
                "lr": self.lr,
                "suggested_lr": self.suggested_lr,
                "losses": self.losses,
                "metrics": list(self.metrics),
            },
        )


def sweepable(optimizer: OptimizerFactory) -> list[str] | None:
    """The hyperparameters ``sweep_over`` may name: the factory's keywords.

    Every keyword parameter after the first (the learning rate) whose default is
    a number or None, dtypes and masks aside; None when the factory takes
    ``**kwargs`` (any name is then tried) or has no readable signature.

    >>> sweepable(lambda lr, weight_decay=0.0, nesterov=False: None)
    ['weight_decay']
    >>> sweepable(optax.sgd)
    ['momentum']
    """
    try:
        params = list(inspect.signature(optimizer).parameters.values())
    except (TypeError, ValueError):
        return None
    kinds = inspect.Parameter
    if any(p.kind is kinds.VAR_KEYWORD for p in params):
        return None
    first = next(
        (
            p
            for p in params
            if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        ),
        None,
    )
    return [
        p.name
        for p in params
        if p is not first
        and p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        and not isinstance(p.default, bool | str)
        and (p.default is None or isinstance(p.default, int | float))
        and not p.name.endswith("dtype")
        and p.name != "mask"
    ]


def check_sweep(
    sweep_over: Mapping[str, Sequence[float]], optimizer: OptimizerFactory
) -> tuple[str, list[float]]:
    """``sweep_over -> (name, values)``, checked against the optimizer factory.

    Raises:
      ValueError: :func:`lrjax._src.specs.check_sweep_over`'s rules, with the names
        the factory takes (:func:`sweepable`; the message lists them).
    """
    return check_sweep_over(sweep_over, sweepable(optimizer))


def _sweep_optimizer(optimizer: OptimizerFactory, name: str):
    """``(learning_rate, value) -> inject_hyperparams`` transformation.

    The value is injected under its own name, so it is a numeric hyperparameter
    of the state (``opt_state.hyperparams[name]``) that every update reads: a
    traced value per member makes it data of the vmapped population.
    """

    def factory(learning_rate, **value):
        return optimizer(learning_rate, **value)

    kind = inspect.Parameter
    # typeshed's functions have no __signature__; inspect.signature reads it
    factory.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            kind("learning_rate", kind.POSITIONAL_OR_KEYWORD),
            kind(name, kind.KEYWORD_ONLY),
        ]
    )

    def make(learning_rate, value):
        return optax.inject_hyperparams(factory)(
            learning_rate=learning_rate, **{name: value}
        )

    return make


def _summarize(lrs, smoothed, diverged, method: str) -> dict[str, Any]:
    """Suggestions, divergence and spread of one set of seeds (rows of a curve)."""
    seeds = len(smoothed)
    per_seed = [suggest(lrs, smoothed[s], diverged[s]) for s in range(seeds)]
    half = (seeds + 1) // 2
    suggestions = {m: median([p[m] for p in per_seed], at_least=half) for m in METHODS}
    div_lrs = [float(lrs[d]) if d is not None else None for d in diverged]
    spread = None
    if seeds > 1:
        chosen = [pick(p, method) for p in per_seed]
        valid = [v for v in chosen if v is not None]
        spread = {
            "per_seed": chosen,
            "min": min(valid) if valid else None,
            "max": max(valid) if valid else None,
            "per_method": {m: [p[m] for p in per_seed] for m in METHODS},
            "diverged_at_lr": div_lrs,
        }
    minima = [curve_minimum(smoothed[s], diverged[s]) for s in range(seeds)]
    finite = sorted(v for v in minima if v is not None)
    return {
        "suggestions": suggestions,
        "suggested_lr": pick(suggestions, method),
        "diverged_at_lr": median(div_lrs, at_least=half),
        "diverged_at_step": list(diverged),
        "spread": spread,
        "min_loss": float(np.median(finite)) if len(finite) >= half else None,
    }


def _nonfinite_warning(losses, smoothed, lrs, diverged) -> str | None:
    """Says when a member's loss turned non-finite before any descent.

    The end of a good curve diverges after the loss went down; a loss that is
    NaN or inf before its smoothed value went below 95% of its start (the
    descent :func:`lrjax.find_divergence` calls real) and before any other
    divergence signal points at the data, the model or the first lrs instead.
    """
    steps = []
    for loss, smooth_, found in zip(losses, smoothed, diverged, strict=True):
        bad = ~np.isfinite(loss)
        if not bad.any():
            continue
        first = int(np.argmax(bad))
        if found is not None and found < first:
            continue  # it diverged on the loss's growth first
        if first and smooth_[:first].min() < 0.95 * smooth_[0]:
            continue  # it descended first
        steps.append(first)
    if not steps:
        return None
    first = min(steps)
    runs = "" if len(losses) == 1 else f" in {len(steps)} of {len(losses)} runs"
    return (
        f"the loss was not finite from step {first} on (lr {lrs[first]:.3g}){runs}, "
        "before any descent: check the inputs for NaN/inf and the model's output, "
        "or start the sweep at a lower lr"
    )


def result_warning(
    losses, smoothed, lrs, diverged, stop_reason: str | None, num_steps: int
) -> str | None:
    """``RangeTestResult.warning``: a loss not finite before any descent
    (:func:`_nonfinite_warning`), and a sweep cut short by anything but its
    divergence (the data ran out, a hook stopped it): its suggestion is from
    the part swept.

    >>> losses, lrs = [[1.0, 0.9]], [1e-3, 2e-3]
    >>> print(result_warning(losses, losses, lrs, [None], "data", num_steps=100))
    ... # doctest: +NORMALIZE_WHITESPACE
    the sweep stopped at step 2 of 100 (lr 0.002), the data ran out: the
    suggestion is from the lrs swept
    """
    said = [_nonfinite_warning(losses, smoothed, lrs, diverged)]
    if stop_reason not in (None, "diverged") and len(lrs):
        why = "the data ran out" if stop_reason == "data" else f"by {stop_reason!r}"
        said.append(
            f"the sweep stopped at step {len(lrs)} of {num_steps} (lr "
            f"{lrs[-1]:.3g}), {why}: the suggestion is from the lrs swept"
        )
    return "; ".join(w for w in said if w) or None


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


@takes_moved_keywords("lr_range_test")
def lr_range_test(
    model: Any,
    optimizer: OptimizerFactory,
    data: Any,
    *,
    key: jax.Array,
    loss_fn: LossFn | None = None,
    model_state: Any = None,
    method: str = DEFAULT_METHOD,
    sweep: Sweep | None = None,
    divergence: Divergence | None = None,
    population: Population | None = None,
    execution: Execution | None = None,
) -> RangeTestResult:
    """Runs the learning-rate range test and suggests a learning rate.

    The lr of update ``t`` is the sweep's value at ``t``
    (:func:`lrjax.exponential_sweep` or :func:`lrjax.linear_sweep`: ``init_value``
    at the first update, ``end_value`` at update ``num_steps - 1``; see
    :class:`lrjax.Sweep`).

    Args:
      model: an ``nnx.Module`` (BatchNorm, Dropout, any state), a params pytree
        (with a ``loss_fn(params, batch)``, or with ``model_state`` and a
        ``loss_fn(params, model_state, batch, key)``: Linen, Equinox), or a
        factory ``key -> model`` so that every seed gets its own initialisation.
        Never modified.
      optimizer: ``learning_rate -> optax.GradientTransformation``, e.g.
        ``optax.sgd`` or ``lambda lr: optax.adamw(lr, weight_decay=1e-4)``.
      data: in-memory arrays (a pytree with a common leading example axis, e.g.
        ``(x, y)`` or ``{"image": x, "label": y}``), or any iterable of batch
        pytrees (a generator, a grain dataset); see :mod:`lrjax._src.batches`.
      key: a ``jax.random.key``; seed ``k`` uses ``fold_in(key, k)`` for its batch
        order (and ``fold_in(fold_in(key, k), 1)`` for a factory's initialisation).
      loss_fn: ``loss_fn(model, batch) -> loss | (loss, {name: scalar})``; default
        :func:`lrjax.classification_loss` (softmax cross-entropy and accuracy on
        ``(x, y)`` batches); with it, in-memory data are checked once first
        (:func:`lrjax._src.step.check_classification_data`: integer labels in
        ``[0, num_classes)``, finite inputs). With ``model_state``:
        ``loss_fn(params, model_state, batch, key) -> (loss, model_state)`` or
        ``(loss, model_state, {name: scalar})``.
      model_state: the state of a params-pytree model that it updates while
        training (Linen's ``{"batch_stats": ...}``, Equinox's ``eqx.nn.State``):
        carried from update to update, never the caller's arrays. ``key`` of
        update ``t`` (dropout) is ``fold_in(fold_in(fold_in(key, s), 2), t)``
        for seed ``s``; the seeds share ``model`` and ``model_state``.
        ``"from_factory"``: ``model`` is a factory ``key -> (params,
        model_state)``, called once per seed, so every seed gets its own
        initialisation (Linen: ``variables = net.init(key, x)``, then
        ``(variables["params"], {"batch_stats": variables["batch_stats"]})``).
      method: the suggestion reported as ``suggested_lr``, one of ``METHODS``.
      sweep: the updates (:class:`lrjax.Sweep`: their number, default one epoch
        of in-memory data or ``len(data)`` of an iterable that has one; the lrs
        swept; the batch size; micro-batches per update). Default ``Sweep()``.
      divergence: the smoothing and :func:`lrjax.find_divergence`'s rules
        (:class:`lrjax.Divergence`); with ``stop``, the sweep stops at the chunk
        where every member has diverged. Default ``Divergence()``.
      population: the members run in ONE compiled program
        (:class:`lrjax.Population`): ``seeds`` independent runs
        (initialisations, batch orders, dropout streams; spread over local
        devices when several), a ``sweep_over={name: values}`` of one more
        hyperparameter (one lr sweep per value, ``optimizer`` called as
        ``optimizer(learning_rate, name=value)``, e.g. ``lambda lr,
        weight_decay=0.0: optax.adamw(lr, weight_decay=weight_decay)``, or
        ``optax.sgd`` with ``"momentum"``; the value is injected by
        ``optax.inject_hyperparams``, so it is data, not a recompile), and
        their ``layout`` in each update (the choice is
        ``timings.population``). Default ``Population()``: one seed.
      execution: how the sweep runs (:class:`lrjax.Execution`): ``chunks``
        compiled chunks (at most ``MAX_CHUNK_STEPS`` updates each; the host
        checks between them), the ``loop`` inside them (the choice is
        ``timings.loop``), a tqdm ``progress`` bar over the updates, and
        your ``hooks`` (:class:`lrjax.Hook`: each chunk's per-update metrics,
        ``[updates]`` for one member, ``[updates, members]`` for several,
        padded as :class:`lrjax.hooks.ChunkEnd` says; a
        reason returned stops the sweep, the result's ``stop_reason``).
        Default ``Execution()``.

    Returns:
      A :class:`RangeTestResult`. With ``sweep_over``, ``sweep`` is a
      :class:`SweepResult` holding every value's curves, suggestions, divergence
      and the recommended ``(value, lr)``
      (:func:`lrjax._src.suggestions.best_sweep_value`), and the other fields describe
      the recommended value's sweep (the first value's when none is recommended),
      so the result reads like a plain range test run at that value:
      ``suggested_lr`` is the recommended lr. ``config`` holds the settings
      under their 0.2 names (``num_steps``, ``smooth_beta``, ...).

    Raises:
      ValueError, TypeError: a bad argument, naming it and what is allowed; a
        keyword of 0.2 that moved into a spec (``num_steps=100``) names the spec.

    A linear model (a params pytree with its loss) on synthetic data:

    >>> x = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32)
    >>> loss_fn = classification_loss(lambda w, x: x @ w)
    >>> result = lr_range_test(jnp.zeros((4, 2)), optax.sgd, (x, y),
    ...                        key=jax.random.key(0), loss_fn=loss_fn,
    ...                        sweep=Sweep(batch_size=16, num_steps=40))
    >>> result.losses.shape, result.stop_reason  # [seeds, steps_run]
    ((1, 40), None)
    >>> 1e-5 < result.suggested_lr < 10.0  # inside the swept range
    True
    """
    caller = "lr_range_test"
    sweep = spec_or_default(caller, "sweep", sweep, Sweep)
    divergence = spec_or_default(caller, "divergence", divergence, Divergence)
    population = spec_or_default(caller, "population", population, Population)
    execution = spec_or_default(caller, "execution", execution, Execution)
    _check_method(method)
    check_optimizer(optimizer)
    seeds, k, batch_size = population.seeds, sweep.accumulate_steps, sweep.batch_size
    swept = _Swept.of(optimizer, population.sweep_over)
    pop = _Population(swept, Layout.of(swept.num_values, seeds))
    estimates: list[MemoryEstimate] = []  # the check's, of the first member

    def check(spec, params, rest):  # the first member, before the others exist
        bs = 32 if batch_size is None else batch_size
        if loss_fn is None and is_arrays(data):
            check_classification_data(spec, params, rest, data, batch_size=bs)
        opt = swept.opt_shape(sweep.init_value, params)
        fewer = "seeds (Population.seeds; lrjax-find --seeds)" + (
            "" if swept.values is None else " or values"
        )
        estimates.append(
            check_memory((params, rest, opt), data, bs * k, 0, pop.layout, fewer)
        )

    spec, params, rest = init_members(
        model, key, seeds, check, model_state=model_state,
        has_loss_fn=loss_fn is not None,
    )  # fmt: skip
    source, feed, num_steps = _batches(data, key, pop, batch_size, sweep.num_steps, k)
    sched = sweep.schedule(num_steps)
    tx = swept.tx(sched)
    loss_fn = classification_loss() if loss_fn is None else loss_fn

    def build(unroll: bool):
        return make_step(spec, loss_fn, tx, accumulate_steps=k, unroll=unroll)

    members = None
    if pop.layout.padded > 1:
        members = "own" if isinstance(source, ArraySource) and seeds > 1 else "shared"
    program = Program(
        build,
        gathers=feed.gathers,
        members=members,
        loop=execution.loop,
        population=population.layout,
    )
    state = _init_population(params, rest, tx, sched, pop)
    del params, rest

    recorder = _Recorder(pop.layout, num_steps, divergence)
    plan = uniform_plan(num_steps, execution.chunks, MAX_CHUNK_STEPS)
    hooks: list[Hook] = []
    if execution.progress:
        hooks.append(ProgressBar("lr range test", postfix=recorder.postfix))
    out = drive(
        program, state, feed, plan, run=Run(total_steps=num_steps),
        observe=recorder, hooks=[*hooks, *execution.hooks],
    )  # fmt: skip
    curves = recorder.curves()

    summary = _summaries(curves, pop, method)
    config = _settings(
        optimizer, sweep, divergence, num_steps, source, k, plan, estimates[0],
        swept, summary.shown,
    )  # fmt: skip
    return _result(curves, summary, pop, method, out, program, config)


def _settings(
    optimizer, sweep: Sweep, divergence: Divergence, num_steps: int, source, k: int,
    plan, memory, swept: _Swept, shown: int,
) -> RangeTestSettings:  # fmt: skip
    """The result's ``config``: the settings the sweep ran with and what it decided
    (chunks, data, memory, the swept value shown)."""
    iterable = source if isinstance(source, IterSource) else None
    swept_over = None
    if swept.values is not None:
        swept_over = SweepOver(swept.name, tuple(swept.values), shown)
    return RangeTestSettings(
        driver="lr_range_test",
        optimizer=optimizer_name(optimizer),
        mode=sweep.mode,
        init_value=sweep.init_value,
        end_value=sweep.end_value,
        num_steps=num_steps,
        batch_size=source.batch_size,
        accumulate_steps=k,
        smooth_beta=divergence.smooth_beta,
        diverge_threshold=divergence.threshold,
        rebound=divergence.rebound,
        chunks=len(plan),
        chunk_steps=max(hi - lo for lo, hi in plan),
        data="arrays" if iterable is None else "iterable",
        memory=memory,
        sweep=swept_over,
        batches_skipped=None if iterable is None else iterable.skipped,
        data_restarts=None if iterable is None else iterable.restarts,
    )


@dataclasses.dataclass(frozen=True)
class _Swept:
    """The optimizer factory, and the hyperparameter ``sweep_over`` names if any.

    With ``values``, :meth:`make_tx` (:func:`_sweep_optimizer`) puts a member's
    value in its optimizer state, so one compiled step serves every value.
    """

    optimizer: OptimizerFactory
    name: str = ""  # read only where values is set
    values: list[float] | None = None

    @classmethod
    def of(
        cls,
        optimizer: OptimizerFactory,
        sweep_over: Mapping[str, Sequence[float]] | None,
    ) -> _Swept:
        if sweep_over is None:
            return cls(optimizer)
        return cls(optimizer, *check_sweep(sweep_over, optimizer))

    @property
    def num_values(self) -> int:
        return 1 if self.values is None else len(self.values)

    def make_tx(self, learning_rate, value) -> optax.GradientTransformation:
        """The transformation of a member with ``value``."""
        return _sweep_optimizer(self.optimizer, self.name)(learning_rate, value)

    def tx(self, learning_rate) -> optax.GradientTransformation:
        """The population's transformation: every update reads the member's value
        from its state, so one built at any value serves them all."""
        if self.values is None:
            return make_optimizer(self.optimizer, learning_rate)
        return self.make_tx(learning_rate, self.values[0])

    def opt_shape(self, init_value: float, params: Any) -> Any:
        """The shapes of a member's optimizer state; every value is tried first.

        Raises:
          ValueError: the optimizer rejects a value, or cannot take the swept
            hyperparameter as data (a Python branch on its value).
        """
        if self.values is None:
            return jax.eval_shape(self.tx(init_value).init, params)
        for v in self.values:  # the optimizer itself may reject a value
            try:
                tx = self.optimizer(init_value, **{self.name: v})
                jax.eval_shape(tx.init, params)
            except (TypeError, ValueError, AssertionError) as e:
                raise ValueError(
                    f"the optimizer rejected {self.name}={v:g}: {e}"
                ) from None
        try:  # ... or be unable to take it as data (a Python branch on it)
            return jax.eval_shape(self.tx(init_value).init, params)
        except jax.errors.ConcretizationTypeError as e:
            first = str(e).splitlines()[0]
            raise ValueError(
                f"the optimizer cannot take {self.name} as data (it branches "
                f"on its value in Python): {first}"
            ) from None


class _Population(NamedTuple):
    """Members ``v * seeds + s``: value ``v`` of the sweep, seed ``s`` (a cell of
    the :class:`lrjax._src.population.Layout` per value)."""

    swept: _Swept
    layout: Layout

    @property
    def seeds(self) -> int:
        return self.layout.seeds

    @property
    def size(self) -> int:  # members that count (the layout may pad them)
        return self.layout.size


def _batches(
    data: Any, key: jax.Array, pop: _Population, batch_size, num_steps, k: int
) -> tuple[ArraySource | IterSource, IterSource | MemberBatches, int]:
    """``(source, feed, num_steps)``: the data's source; what the loop reads from it
    (over arrays, each member's seed's batch order: :class:`MemberBatches`); and
    the sweep's length, checked (default one epoch, or ``len()`` of an iterable).
    Seed ``s`` draws its batch order from ``fold_in(key, s)``."""
    seeds, rep = pop.seeds, pop.layout.sharding()
    keys = member_keys(key, seeds)
    source = as_source(
        data,
        batch_size=32 if batch_size is None else batch_size,
        keys=keys if seeds > 1 else keys[0],
        accumulate_steps=k,
        sharding=rep,
    )
    if isinstance(source, IterSource):
        first = source.first_batch_size() if batch_size is not None else None
        if first is not None and first != batch_size:
            raise ValueError(
                f"batch_size={batch_size} does not match the iterable's batches of "
                f"{first} examples (its first batch); an iterable's batches are "
                "used as they come: leave batch_size out or give their size"
            )
        source.sharding = rep  # every member shares an iterable's batches
        if num_steps is None:
            if not hasattr(data, "__len__"):
                raise ValueError(
                    "num_steps is required for an iterable of batches without len()"
                )
            num_steps = len(data) // k
        return source, source, check_steps(num_steps)
    if num_steps is None:
        num_steps = source.steps_per_epoch // k
    return source, MemberBatches.of(source, pop.layout), check_steps(num_steps)


def _init_population(params, rest, tx, sched, pop: _Population) -> Any:
    """The members' train states (``[padded, ...]`` when several), on the mesh.

    Member ``v * seeds + s`` starts from seed ``s``'s ``params`` and ``rest``
    (stacked ``[seeds, ...]`` when several) with value ``v`` in its optimizer
    state (:func:`lrjax._src.population.init_states`); without a swept value every
    member's state uses ``tx``. A population of one has no member axis.
    """
    swept, stacked = pop.swept, pop.layout.padded > 1
    if swept.values is None:
        init = lambda p, r: init_state(p, r, tx)  # noqa: E731
        return init_states(pop.layout, params, rest, init, stacked=stacked)

    def init_value(params, rest, v):
        return init_state(params, rest, swept.make_tx(sched, v))

    values = np.asarray(swept.values, np.float32)  # [cells]
    return init_states(pop.layout, params, rest, init_value, [values], stacked=stacked)


class _Curves(NamedTuple):
    """What the sweep recorded, a row per member (``[members, steps_run]``)."""

    lrs: np.ndarray  # float64[steps_run]: the same for every member
    losses: np.ndarray
    smoothed: np.ndarray
    metrics: dict[str, np.ndarray]  # the loss function's other metrics
    diverged: list[int | None]  # per member: the step it diverged at, if it did


class _Recorder:
    """The sweep's books after every chunk (``observe`` of
    :func:`lrjax._src.loop.drive`).

    Records the chunk's curves, smooths the losses and checks every member for
    divergence, before any hook acts; returns ``"diverged"`` to stop the sweep
    once every member has diverged (with ``Divergence.stop``). The layout's
    padded members are dropped here, as their metrics arrive.
    """

    def __init__(self, layout: Layout, num_steps: int, divergence: Divergence):
        size, self.stacked = layout.size, layout.padded > 1
        self.size, self.num_steps, self.stop = size, num_steps, divergence.stop
        self.smoother = Smoother(size, divergence.smooth_beta)
        self.trackers = [
            DivergenceTracker(divergence.threshold, divergence.rebound)
            for _ in range(size)
        ]
        self.parts: dict[str, list[np.ndarray]] = {}  # name -> chunks [members, C]

    def __call__(self, run: Run, end: ChunkEnd) -> str | None:
        parts = self.parts
        n = min(end.hi, self.num_steps) - end.lo
        for name, v in end.metrics.items():
            v = np.asarray(v, np.float64)[:n]
            # [n, padded] -> [members, n]; one member's metrics are [n]
            parts.setdefault(name, []).append(
                v.T[: self.size] if self.stacked else v[None]
            )
        losses = parts["loss"][-1]
        smoothed = self.smoother.push(losses)
        parts.setdefault("smoothed", []).append(smoothed)
        diverged = [t.push(losses[s], smoothed[s]) for s, t in enumerate(self.trackers)]
        if self.stop and all(d is not None for d in diverged):
            return "diverged"
        return None

    def postfix(self, run: Run, end: ChunkEnd) -> dict[str, str]:
        """The progress bar's last lr and smoothed loss (of the last member)."""
        lr = float(self.parts["lr"][-1][0, -1])
        return {"lr": f"{lr:.3g}", "loss": f"{self.parts['smoothed'][-1][-1, -1]:.3f}"}

    def curves(self) -> _Curves:
        """The curves recorded.

        Raises:
          ValueError: no chunk ran (an empty iterable).
        """
        if "loss" not in self.parts:
            raise ValueError("the data gave no batch: the iterable is empty")
        cat = {name: np.concatenate(v, axis=1) for name, v in self.parts.items()}
        lrs, losses, smoothed = cat.pop("lr")[0], cat.pop("loss"), cat.pop("smoothed")
        return _Curves(lrs, losses, smoothed, cat, [t.found for t in self.trackers])


class _Summary(NamedTuple):
    per_value: list[dict[str, Any]]  # :func:`_summarize` of each value's seeds
    sweep: SweepResult | None  # with sweep_over
    shown: int  # the value the top-level fields describe


def _summaries(curves: _Curves, pop: _Population, method: str) -> _Summary:
    """Every value's summary; with a swept hyperparameter its :class:`SweepResult`
    and the recommended value (:func:`lrjax._src.suggestions.best_sweep_value`), shown
    at the top level (the first value when none is recommended)."""
    seeds, values = pop.seeds, pop.swept.values
    rows = [slice(v * seeds, (v + 1) * seeds) for v in range(pop.swept.num_values)]
    per_value = [
        _summarize(curves.lrs, curves.smoothed[r], curves.diverged[r], method)
        for r in rows
    ]
    if values is None:
        return _Summary(per_value, None, 0)
    best = best_sweep_value(
        [p["min_loss"] for p in per_value],
        [p["diverged_at_lr"] for p in per_value],
        [p["suggested_lr"] for p in per_value],
    )

    def stack(a):  # [values * seeds, T] -> [values, seeds, T]
        return a.reshape(len(values), seeds, -1)

    sweep = SweepResult(
        name=pop.swept.name,
        values=values,
        losses=stack(curves.losses),
        smoothed_losses=stack(curves.smoothed),
        metrics={name: stack(v) for name, v in curves.metrics.items()},
        suggestions=[p["suggestions"] for p in per_value],
        suggested_lr=[p["suggested_lr"] for p in per_value],
        diverged_at_lr=[p["diverged_at_lr"] for p in per_value],
        diverged_at_step=[p["diverged_at_step"] for p in per_value],
        min_loss=[p["min_loss"] for p in per_value],
        spread=[p["spread"] for p in per_value],
        best=best,
        value=None if best is None else values[best],
        lr=None if best is None else per_value[best]["suggested_lr"],
        tolerance=SWEEP_TOLERANCE,
    )
    return _Summary(per_value, sweep, 0 if best is None else best)


def _result(
    curves: _Curves,
    summary: _Summary,
    pop: _Population,
    method: str,
    out: DriveResult,
    program: Program,
    config: RangeTestSettings,
) -> RangeTestResult:
    """The result: the curves and suggestions of the shown value's seeds."""
    seeds, top = pop.seeds, summary.per_value[summary.shown]
    rows = slice(summary.shown * seeds, (summary.shown + 1) * seeds)

    steps_run = curves.losses.shape[1]
    run_s = out.run_s
    return RangeTestResult(
        lrs=curves.lrs,
        losses=curves.losses[rows],
        smoothed_losses=curves.smoothed[rows],
        metrics={name: v[rows] for name, v in curves.metrics.items()},
        diverged_at_lr=top["diverged_at_lr"],
        diverged_at_step=top["diverged_at_step"],
        suggestions=top["suggestions"],
        suggested_lr=top["suggested_lr"],
        method=method,
        seeds=seeds,
        spread=top["spread"],
        steps_run=steps_run,
        stop_reason=out.stop_reason,
        timings=Timings(
            "lr_range_test",
            compile_s=program.compile_s,
            run_s=run_s,
            steps_per_s=steps_run * pop.size / run_s if run_s > 0 else None,
            loop=program.loop,
            population=None if pop.size == 1 else program.population,
        ),
        device=describe_devices(pop.layout.devices()),
        config=config,
        sweep=summary.sweep,
        warning=result_warning(
            curves.losses,
            curves.smoothed,
            curves.lrs,
            curves.diverged,
            out.stop_reason,
            config.num_steps,
        ),
    )
