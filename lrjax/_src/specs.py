"""Small frozen specs shared by the drivers: what to sweep, when it diverged, the
population, how the program runs, and a grid member's training.

:func:`lrjax.lr_range_test`, :func:`lrjax.step_range_test`, :func:`lrjax.lr_grid`
and :func:`lrjax.recipe_grid` take these instead of about twenty flat keywords:

* :class:`Sweep`: the updates of a range test (how many, at which lrs, how many
  examples each);
* :class:`Divergence`: the loss smoothing, and when a sweep is called diverged;
* :class:`Population`: the members run in one program (seeds, a second swept
  hyperparameter, how they are laid out in each update);
* :class:`Execution`: how the program runs (compiled chunks, the loop, progress);
* :class:`GridConfig`: the training each grid member does.

Every spec checks its fields when it is built, in one line naming the field,
the bad value and what is allowed, so a bad value fails where it was written.
A caller still passing a keyword that moved into a spec (``num_steps=100``)
gets one ``TypeError`` line saying where it went (:func:`check_moved`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import numpy as np

from lrjax._src import schedules
from lrjax._src.hooks import Hook
from lrjax._src.loop import POPULATIONS, check_loop
from lrjax._src.schedules import Schedule
from lrjax._src.step import check_accumulate

__all__ = ["Divergence", "Execution", "GridConfig", "Population", "Sweep"]

MODES = ("exponential", "linear")

# Values a hyperparameter of this name may take, checked before anything runs.
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "b1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "b2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eps": (lambda v: v > 0, "> 0"),
}


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


def _is_real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(
        value, int | float | np.integer | np.floating
    )


def _set(spec: Any, field: str, value: Any) -> None:
    """Sets a field of a frozen spec in its ``__post_init__`` (a checked value
    in its plain Python type: an ``np.int64`` count becomes an ``int``)."""
    object.__setattr__(spec, field, value)


def check_int(name: str, value: Any, least: int) -> int:
    """``value`` as an int, or one line naming ``name`` when it is not ``>= least``."""
    if not _is_int(value) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def check_steps(num_steps: Any) -> int:
    """A sweep's length: an integer >= 2 (given, or derived from the data)."""
    return check_int("num_steps", num_steps, 2)


def check_sweep_over(
    sweep_over: Any, names: list[str] | None = None
) -> tuple[str, list[float]]:
    """``sweep_over -> (name, values)``: ONE hyperparameter and its values.

    ``names``: the hyperparameters the optimizer factory takes
    (:func:`lrjax._src.range_test.sweepable`), None for any.

    Raises:
      ValueError: not one hyperparameter, the learning rate, a name not in
        ``names`` (the message lists them), an empty, non-numeric, non-finite or
        repeated value list, or a value out of the name's range (weight decay
        ``>= 0``, momentum ``in [0, 1)``, ...).
    """
    example = "e.g. {'weight_decay': [0.0, 1e-5, 1e-4, 1e-3]}"
    if not isinstance(sweep_over, Mapping) or len(sweep_over) != 1:
        got = list(sweep_over) if isinstance(sweep_over, Mapping) else sweep_over
        raise ValueError(
            f"sweep_over must map ONE hyperparameter name to its values, {example}; "
            f"got {got!r}"
        )
    ((name, values),) = sweep_over.items()
    if name in ("learning_rate", "lr"):
        raise ValueError(
            "sweep_over cannot name the learning rate: the range test sweeps it"
        )
    if names is not None and name not in names:
        takes = (
            f"it takes {', '.join(names)}"
            if names
            else "it takes none besides the learning rate; give a factory with the "
            "keyword, e.g. lambda lr, weight_decay=0.0: "
            "optax.adamw(lr, weight_decay=weight_decay)"
        )
        raise ValueError(f"the optimizer has no hyperparameter {name!r}; {takes}")
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
        raise ValueError(
            f"sweep_over[{name!r}] must be a list of numbers, got {values!r}"
        )
    out = []
    for v in list(values):
        if not _is_real(v):
            raise ValueError(f"sweep_over[{name!r}] values must be numbers, got {v!r}")
        if not math.isfinite(v):
            raise ValueError(f"sweep_over[{name!r}] values must be finite, got {v}")
        out.append(float(v))
    if not out:
        raise ValueError(f"sweep_over[{name!r}] is empty; give at least one value")
    if len(set(out)) != len(out):
        raise ValueError(f"sweep_over[{name!r}] repeats a value: {out}")
    if name in _RANGES:
        ok, allowed = _RANGES[name]
        bad = [v for v in out if not ok(v)]
        if bad:
            raise ValueError(f"{name} must be {allowed}, got {bad[0]:g}")
    return name, out


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The updates of a range test: how many, at which lrs, how many examples each.

    The lr of update ``t`` is :meth:`schedule`'s value at ``t``:
    :func:`lrjax.exponential_sweep` or :func:`lrjax.linear_sweep` from
    ``init_value`` (the first update) to ``end_value`` (update ``num_steps - 1``).

    Attributes:
      num_steps: updates in the sweep, >= 2; None: one epoch of in-memory data,
        or ``len(data)`` of an iterable that has one (required by
        :func:`lrjax.step_range_test`).
      init_value, end_value: the sweep's first and last lr (both > 0).
      mode: ``"exponential"`` or ``"linear"``.
      batch_size: examples per (micro-)batch of in-memory data (None: 32); an
        iterable's batches are used as they come (if given, it must be their
        size, checked on the first batch).
      accumulate_steps: micro-batches averaged into each update; the sweep has
        one point per update.

    >>> sweep = Sweep(num_steps=100, end_value=1.0)
    >>> float(sweep.schedule(100)(99))
    1.0
    >>> Sweep(init_value=1.0, end_value=0.1)
    Traceback (most recent call last):
    ...
    ValueError: init_value must be < end_value, got 1.0 >= 0.1
    """

    num_steps: int | None = None
    init_value: float = 1e-5
    end_value: float = 10.0
    mode: str = "exponential"
    batch_size: int | None = None
    accumulate_steps: int = 1

    def __post_init__(self):
        if self.num_steps is not None:
            _set(self, "num_steps", check_steps(self.num_steps))
        lo, hi = self.init_value, self.end_value
        if not (lo > 0 and hi > 0):
            raise ValueError(
                f"learning rates must be > 0, got init_value={lo}, end_value={hi}"
            )
        if not lo < hi:
            raise ValueError(f"init_value must be < end_value, got {lo} >= {hi}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.batch_size is not None:
            _set(self, "batch_size", check_int("batch_size", self.batch_size, 1))
        _set(self, "accumulate_steps", check_accumulate(self.accumulate_steps))

    def schedule(self, num_steps: int) -> Schedule:
        """The lr of each update of a sweep of ``num_steps`` updates."""
        make = (
            schedules.exponential_sweep
            if self.mode == "exponential"
            else schedules.linear_sweep
        )
        return make(self.init_value, self.end_value, num_steps)


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The smoothing of the loss and when a sweep is called diverged.

    Attributes:
      smooth_beta: EMA factor of the smoothed loss (bias-corrected), in [0, 1).
      threshold, rebound: :func:`lrjax.find_divergence`'s rules: the loss above
        ``threshold`` x the best smoothed loss (> 1), or the smoothed loss back up
        by ``rebound`` of its descent (>= 0; None: not this rule).
      stop: stop the sweep at the chunk where every member has diverged.

    >>> Divergence(threshold=5.0)
    Divergence(smooth_beta=0.98, threshold=5.0, rebound=0.5, stop=True)
    >>> Divergence(smooth_beta=1.0)
    Traceback (most recent call last):
    ...
    ValueError: smooth_beta must be in [0, 1), got 1.0
    """

    smooth_beta: float = 0.98
    threshold: float = 4.0
    rebound: float | None = 0.5
    stop: bool = True

    def __post_init__(self):
        if not 0.0 <= self.smooth_beta < 1.0:
            raise ValueError(f"smooth_beta must be in [0, 1), got {self.smooth_beta!r}")
        if not self.threshold > 1.0:
            raise ValueError(f"threshold must be > 1, got {self.threshold!r}")
        if self.rebound is not None and not (
            _is_real(self.rebound) and self.rebound >= 0
        ):
            raise ValueError(
                f"rebound must be a number >= 0 or None, got {self.rebound!r}"
            )
        if not isinstance(self.stop, bool):
            raise ValueError(f"stop must be True or False, got {self.stop!r}")


@dataclasses.dataclass(frozen=True)
class Population:
    """The members run in ONE compiled program.

    Attributes:
      seeds: independent runs (initialisations, batch orders, dropout streams),
        >= 1; spread over the local devices when several.
      sweep_over: ``{name: values}`` of ONE more hyperparameter (range test
        only), e.g. ``{"weight_decay": [0.0, 1e-5, 1e-4, 1e-3]}``: one lr sweep
        per value, the optimizer called as ``optimizer(learning_rate,
        name=value)`` inside ``optax.inject_hyperparams``, so the value is data,
        not a recompile. Its name is checked against the optimizer when the
        range test runs.
      layout: how the members run inside each compiled update: ``"vmap"``
        (batched), ``"unroll"`` (one after another, each step inlined) or
        ``"map"`` (``lax.map``); ``"auto"``: ``"unroll"`` for a convolution on
        the CPU, else ``"vmap"`` (:mod:`lrjax._src.loop`). The choice is the result's
        ``timings.population``.

    >>> Population(seeds=3, sweep_over={"momentum": [0.0, 0.9]}).seeds
    3
    >>> Population(sweep_over={"momentum": [0.0, 1.0]})
    Traceback (most recent call last):
    ...
    ValueError: momentum must be in [0, 1), got 1
    """

    seeds: int = 1
    sweep_over: Mapping[str, Sequence[float]] | None = None
    layout: str = "auto"

    def __post_init__(self):
        _set(self, "seeds", check_int("seeds", self.seeds, 1))
        if self.sweep_over is not None:
            check_sweep_over(self.sweep_over)
        if self.layout not in POPULATIONS:
            raise ValueError(
                f"layout must be one of {POPULATIONS}, got {self.layout!r}"
            )


@dataclasses.dataclass(frozen=True)
class Execution:
    """How the program runs: compiled chunks, the loop inside them, progress, hooks.

    Attributes:
      chunks: a range test runs as this many compiled chunks (at most
        ``lrjax._src.range_test.MAX_CHUNK_STEPS`` updates each); the host smooths,
        checks divergence and runs the hooks between them. A grid runs one chunk
        per epoch (only the default is accepted there).
      loop: ``"auto"``, ``"scan"``, ``"unroll"`` or ``"dispatch"``
        (:mod:`lrjax._src.loop`); the choice is the result's ``timings.loop``.
      progress: show a tqdm progress bar (:class:`lrjax.hooks.ProgressBar`).
      hooks: your :class:`lrjax.Hook` objects (a sequence, kept as a tuple),
        called between chunks when their trigger fires, after the progress
        bar; a reason one returns stops the run there (the result's
        ``stop_reason``). ``lrjax.fit`` takes them in ``FitConfig.hooks``.

    >>> Execution(loop="dispatch", progress=True)
    Execution(chunks=8, loop='dispatch', progress=True, hooks=())
    >>> Execution(chunks=0)
    Traceback (most recent call last):
    ...
    ValueError: chunks must be an integer >= 1, got 0
    >>> Execution(hooks=[print])
    Traceback (most recent call last):
    ...
    ValueError: hooks must be lrjax.Hook objects, got builtin_function_or_method
    """

    chunks: int = 8
    loop: str = "auto"
    progress: bool = False
    hooks: Sequence[Hook] = ()

    def __post_init__(self):
        _set(self, "chunks", check_int("chunks", self.chunks, 1))
        check_loop(self.loop)
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress must be True or False, got {self.progress!r}")
        _set(self, "hooks", check_hooks(self.hooks))


def check_hooks(hooks: Any) -> tuple[Hook, ...]:
    """``hooks`` as a tuple of :class:`lrjax.Hook` objects (``Execution.hooks``,
    ``FitConfig.hooks``).

    Raises:
      ValueError: not a sequence, or an element that is not a Hook, in one line.
    """
    if isinstance(hooks, Hook) or not isinstance(hooks, Sequence):
        raise ValueError(
            "hooks must be a sequence of lrjax.Hook objects, got "
            f"{type(hooks).__name__}"
        )
    for h in hooks:
        if not isinstance(h, Hook):
            raise ValueError(
                f"hooks must be lrjax.Hook objects, got {type(h).__name__}"
            )
    return tuple(hooks)


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """The training each member of a learning-rate grid does.

    Attributes:
      epochs: training epochs, >= 1; the validation split is evaluated after
        each.
      batch_size: examples per update, >= 1 (and at most the training
        examples); each epoch is a fresh permutation with the remainder dropped.
      schedule: a unit schedule ``step -> factor`` (e.g.
        ``lrjax.cosine_restarts(1.0, ...)``); member ``lr`` applies ``lr *
        schedule(t)`` at update ``t``. None: a constant lr. Not for
        :func:`lrjax.recipe_grid`, whose ``families`` are the schedules.
      eval_batch_size: examples per evaluation batch, >= 1.

    >>> GridConfig(epochs=3, schedule=lambda t: 0.5 ** (t // 100)).epochs
    3
    >>> GridConfig(batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be an integer >= 1, got 0
    """

    epochs: int = 1
    batch_size: int = 32
    schedule: Callable[[Any], Any] | None = None
    eval_batch_size: int = 1000

    def __post_init__(self):
        _set(self, "epochs", check_int("epochs", self.epochs, 1))
        _set(self, "batch_size", check_int("batch_size", self.batch_size, 1))
        if self.schedule is not None and not callable(self.schedule):
            raise ValueError(
                "schedule must be a unit schedule step -> factor or None, got "
                f"{type(self.schedule).__name__}"
            )
        size = check_int("eval_batch_size", self.eval_batch_size, 1)
        _set(self, "eval_batch_size", size)


# Where each keyword of 0.2 went: function -> old keyword -> (spec, field).
_SPEC_PARAM = {
    "Sweep": "sweep",
    "Divergence": "divergence",
    "Population": "population",
    "Execution": "execution",
    "GridConfig": "config",
    "FitConfig": "config",
}
_RANGE_TEST_MOVED = {
    "num_steps": ("Sweep", "num_steps"),
    "init_value": ("Sweep", "init_value"),
    "end_value": ("Sweep", "end_value"),
    "mode": ("Sweep", "mode"),
    "batch_size": ("Sweep", "batch_size"),
    "accumulate_steps": ("Sweep", "accumulate_steps"),
    "smooth_beta": ("Divergence", "smooth_beta"),
    "diverge_threshold": ("Divergence", "threshold"),
    "rebound": ("Divergence", "rebound"),
    "stop_on_divergence": ("Divergence", "stop"),
    "seeds": ("Population", "seeds"),
    "sweep_over": ("Population", "sweep_over"),
    "chunks": ("Execution", "chunks"),
    "loop": ("Execution", "loop"),
    "progress": ("Execution", "progress"),
}
_GRID_MOVED = {
    "epochs": ("GridConfig", "epochs"),
    "batch_size": ("GridConfig", "batch_size"),
    "schedule": ("GridConfig", "schedule"),
    "eval_batch_size": ("GridConfig", "eval_batch_size"),
    "seeds": ("Population", "seeds"),
    "loop": ("Execution", "loop"),
    "progress": ("Execution", "progress"),
}
_STEP_MOVED = {
    name: _RANGE_TEST_MOVED[name]
    for name in (
        "num_steps", "init_value", "end_value", "batch_size", "smooth_beta",
        "diverge_threshold", "rebound", "progress",
    )
}  # fmt: skip
MOVED: dict[str, dict[str, tuple[str, str]]] = {
    "fit": {"hooks": ("FitConfig", "hooks")},
    "lr_range_test": _RANGE_TEST_MOVED,
    "step_range_test": _STEP_MOVED,
    "lr_grid": _GRID_MOVED,
    "recipe_grid": _GRID_MOVED,
}


# Keywords 0.3.0 removed rather than moved: what to do instead.
REMOVED = {
    "preprocess": (
        "preprocess was removed in 0.3.0: what a batch means belongs to the "
        "model or the loss; put the transform in front of the model "
        "(nnx.Sequential(lrjax.scale_images, model)) or inside loss_fn and eval_fn"
    ),
}


def _shown(value: Any) -> str:
    """A value as it would be written in the call: a literal (numbers, strings,
    and lists, tuples and dicts of them) up to 60 characters, else ``...`` (a
    function, a hook object)."""
    return repr(value) if _literal(value) and len(repr(value)) <= 60 else "..."


def _literal(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, Mapping):
        return all(_literal(k) and _literal(v) for k, v in value.items())
    return isinstance(value, list | tuple) and all(_literal(v) for v in value)


def check_moved(function: str, moved: Mapping[str, Any]) -> None:
    """Refuses the keywords a 0.2 caller passed that 0.3 moved into a spec.

    ``moved`` are the keywords the function does not take
    (:func:`takes_moved_keywords`). One ``TypeError``
    line names every moved keyword and the spec it goes to; a keyword that
    never existed gets Python's own message.

    >>> check_moved("lr_range_test", {"num_steps": 100, "seeds": 3})
    Traceback (most recent call last):
    ...
    TypeError: lr_range_test: num_steps, seeds moved in 0.3.0: pass \
sweep=lrjax.Sweep(num_steps=100), population=lrjax.Population(seeds=3)
    >>> check_moved("lr_grid", {"preprocess": None})
    Traceback (most recent call last):
    ...
    TypeError: lr_grid: preprocess was removed in 0.3.0: ...
    >>> check_moved("lr_grid", {"epoch": 2})
    Traceback (most recent call last):
    ...
    TypeError: lr_grid() got an unexpected keyword argument 'epoch'
    """
    table = MOVED[function]
    for name in moved:
        if name in REMOVED:
            raise TypeError(f"{function}: {REMOVED[name]}")
        if name not in table:
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")
    if not moved:
        return
    fields: dict[str, list[str]] = {}  # spec -> its fields, in the caller's order
    for name, value in moved.items():
        spec, field = table[name]
        fields.setdefault(spec, []).append(f"{field}={_shown(value)}")
    specs = ", ".join(
        f"{_SPEC_PARAM[spec]}=lrjax.{spec}({', '.join(given)})"
        for spec, given in fields.items()
    )
    raise TypeError(f"{function}: {', '.join(moved)} moved in 0.3.0: pass {specs}")


_P = ParamSpec("_P")
_R = TypeVar("_R")


def takes_moved_keywords(
    function: str,
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """A driver whose 0.2 keywords are refused with where they went.

    The driver keeps its own signature (``inspect.signature``, the docs and type
    checkers see it); a keyword it does not have goes to :func:`check_moved`,
    which names the spec it moved to, or gives Python's own message.
    """

    def decorate(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        names = set(inspect.signature(fn).parameters)

        @functools.wraps(fn)
        def driver(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            check_moved(function, {k: v for k, v in kwargs.items() if k not in names})
            return fn(*args, **kwargs)

        return driver

    return decorate


_Spec = TypeVar("_Spec", "Sweep", "Divergence", "Population", "Execution", "GridConfig")


def spec_or_default(function: str, name: str, value: object, cls: type[_Spec]) -> _Spec:
    """``value`` if it is a ``cls``, a default ``cls()`` if None.

    Raises:
      TypeError: anything else, in one line; 0.2's ``population="vmap"`` (now
        ``Population(layout=...)``) is told where it moved.
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if cls is Population and isinstance(value, str):
        raise TypeError(
            f"{function}: population={value!r} moved in 0.3.0: pass "
            f"population=lrjax.Population(layout={value!r})"
        )
    raise TypeError(
        f"{function}: {name} must be an lrjax.{cls.__name__} or None, got "
        f"{type(value).__name__}"
    )


def refuse_unless(function: str, why: str, spec: _Spec, **wanted: object) -> None:
    """Refuses what ``function`` cannot honour: each field ``name`` of ``spec``
    must equal ``wanted[name]``, else one line says why, what it must be and what
    it is (e.g. ``lr_grid runs one compiled chunk per epoch: Execution.chunks
    must be 8, got 4``).

    >>> refuse_unless("f", "runs one update at a time", Sweep(), accumulate_steps=1)
    >>> refuse_unless("f", "runs one update at a time", Sweep(accumulate_steps=2),
    ...               accumulate_steps=1)
    Traceback (most recent call last):
    ValueError: f runs one update at a time: Sweep.accumulate_steps must be 1, got 2
    """
    for name, want in wanted.items():
        got = getattr(spec, name)
        if got != want:
            raise ValueError(
                f"{function} {why}: {type(spec).__name__}.{name} must be {want!r}, "
                f"got {got!r}"
            )
