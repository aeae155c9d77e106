"""Which schedule, at which peak: a range-test result and a budget -> a recipe.

A *recipe* is a schedule family, the numbers of its shape for a budget of
``total_steps`` updates, and its peak learning rate. The shapes are fixed
fractions of the budget (:data:`SHAPES`); the peak is a rule on the range test's
suggestions (:data:`PEAK_RULES`, one :class:`PeakRule` per optimizer kind of
:data:`OPTIMIZER_KINDS`): ``peak = factor x (1000 / total_steps) ** exponent x
suggestions[method]``, the exponent 0 (no budget term) unless the grids of that
kind asked for one. The rules and
the family that ``family="auto"`` picks for each kind (:data:`AUTO_FAMILIES`)
were derived from recipe grids, one population of models per (family x peak x
seed) trained at the full budget (``benchmarks/recipe_quality.py``; the measured
regrets are in ``docs/results.md``), not guessed.

The same :func:`build_schedule` makes the schedule that ``lrjax-train
--schedule FAMILY`` trains with and the unit shape that ``lrjax-grid --schedule
FAMILY`` scales by each lr, so a grid cell and a training run of the same
(family, peak, budget) follow the same lr at every update.

>>> import numpy as np
>>> s, params = build_schedule("linear_decay", 0.1, total_steps=100)
>>> params["warmup_steps"], round(float(s(5)), 4), round(float(s(100)), 4)
(5, 0.1, 0.0)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # schedules imports JAX, which lrjax-train --help must not wait for
    from lrjax._src.schedules import Schedule

__all__ = [
    "AUTO_FAMILIES",
    "FAMILIES",
    "OPTIMIZER_KINDS",
    "PEAK_RULES",
    "REFERENCE_STEPS",
    "PeakRule",
    "SHAPES",
    "Recipe",
    "build_schedule",
    "optimizer_kind",
    "recommend",
    "unit_schedule",
]

FAMILIES = ("one_cycle", "warmup_cosine", "linear_decay", "wsd")

# Each family's shape besides its peak, for a budget of T updates. one_cycle is
# PyTorch's OneCycleLR with its defaults; the others warm up linearly from 0
# over 5% of the budget and end at 0 (wsd: constant, then a linear decay over
# the last 20%, a common cooldown length).
SHAPES: dict[str, dict[str, float]] = {
    "one_cycle": {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4},
    "warmup_cosine": {"warmup_fraction": 0.05},
    "linear_decay": {"warmup_fraction": 0.05},
    "wsd": {"warmup_fraction": 0.05, "decay_fraction": 0.2},
}

# The optimizers the peak rules were fitted for, by kind: plain SGD, SGD with
# (Nesterov) momentum, and Adam / AdamW each have their own rule: the best peak
# sits at a different multiple of the knee for each (docs/results.md).
OPTIMIZER_KINDS: dict[str, str] = {
    "sgd": "sgd",
    "momentum": "momentum",
    "nesterov": "momentum",
    "adam": "adam",
    "adamw": "adam",
}

# The budget (updates) at which a peak rule's factor is its multiple.
REFERENCE_STEPS = 1000


class PeakRule(NamedTuple):
    """``peak = multiple(total_steps) x suggestions[method]``, with
    ``multiple(T) = factor x (REFERENCE_STEPS / T) ** budget_exponent``: a
    multiple of one suggestion that falls with the budget when the exponent is
    > 0 (the recipe grids' best peak does: docs/results.md). ``budgets`` are
    the shortest and longest budgets (updates) the exponent was fitted on: a
    budget outside them gets the multiple of the nearest, not an extrapolation.

    >>> PeakRule("knee", 2.0, 0.5).multiple(4000)
    1.0
    >>> PeakRule("knee", 2.0, 0.5, budgets=(1000, 4000)).multiple(10)
    2.0
    """

    method: str
    factor: float
    budget_exponent: float = 0.0
    budgets: tuple[int, int] | None = None

    def budget(self, total_steps: int) -> int:
        """``total_steps`` held within ``budgets``: the budget the multiple uses.

        Raises:
          ValueError: ``total_steps`` < 1, or ``budgets`` not (shortest, longest).
        """
        if isinstance(total_steps, bool) or not total_steps >= 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
        if self.budgets is None:
            return total_steps
        lo, hi = self.budgets
        if not 1 <= lo <= hi:
            raise ValueError(
                f"budgets must be (shortest, longest) with 1 <= shortest <= "
                f"longest, got {self.budgets!r}"
            )
        return min(max(total_steps, lo), hi)

    def multiple(self, total_steps: int) -> float:
        """The multiple of ``suggestions[method]`` for a budget of ``total_steps``."""
        t = self.budget(total_steps)
        return self.factor * (REFERENCE_STEPS / t) ** self.budget_exponent


# One PeakRule per optimizer kind, the same for every family, fitted by `python
# benchmarks/recipe_quality.py --fit` on that kind's grids (the lowest mean over
# the families of their worst per-seed regret; results in docs/results.md and
# benchmarks/results/recipe_fit.json). AUTO_FAMILIES: per kind, the family with
# the lowest worst regret under the kind's rule on its grids.
PEAK_RULES: dict[str, dict[str, PeakRule]] = {
    # budgets: the shortest and longest the rule was fitted on (recommend says
    # when a budget lies outside them; an exponent is not extrapolated beyond)
    "sgd": dict.fromkeys(FAMILIES, PeakRule("knee", 2.828, 0.0, (429, 51540))),
    "momentum": dict.fromkeys(FAMILIES, PeakRule("balanced", 2.0, 0.0, (1287, 1287))),
    # 429 updates: the CNN, one epoch at batch 128; 8590: the MLP, ten at 64
    "adam": dict.fromkeys(FAMILIES, PeakRule("knee", 5.657, 0.7, (429, 8590))),
}
AUTO_FAMILIES: dict[str, str] = {
    "sgd": "wsd",
    "momentum": "one_cycle",
    "adam": "one_cycle",
}


def _positive(name: str, value: Any) -> float:
    """``value`` as a finite float > 0 (a number, not a string or a bool).

    >>> _positive("peak_lr", "0.1")
    Traceback (most recent call last):
    ValueError: peak_lr must be a finite number > 0, got '0.1'
    """
    bad = ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if value is None or isinstance(value, str | bytes | bool):
        raise bad
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad from None
    if not (math.isfinite(number) and number > 0):
        raise bad
    return number


def _check_family(family: str, allow_auto: bool = False) -> str:
    allowed = FAMILIES + (("auto",) if allow_auto else ())
    if family not in allowed:
        raise ValueError(
            f"unknown schedule family {family!r}; choose from {', '.join(allowed)}"
        )
    return family


def optimizer_kind(optimizer: str | None) -> str:
    """The kind of :data:`PEAK_RULES` that applies to ``optimizer``.

    ``optimizer`` is an optax factory's name (``"sgd"``, ``"adamw"``, ...) or a
    kind itself; anything else is refused: the rules were fitted for these
    optimizers only, and a rule for the wrong kind can be several times off.

    >>> optimizer_kind("nesterov"), optimizer_kind("adamw")
    ('momentum', 'adam')
    """
    if isinstance(optimizer, str) and optimizer in OPTIMIZER_KINDS:
        return OPTIMIZER_KINDS[optimizer]
    which = (
        "the range test could not name its optimizer (a lambda, an optax.chain or "
        "your own train step)"
        if optimizer is None
        else f"no peak rule for the optimizer {optimizer!r}"
    )
    raise ValueError(
        f"{which}: the rules are fitted for "
        f"{', '.join(OPTIMIZER_KINDS)}; pass optimizer= the nearest of these (e.g. "
        "'momentum' for an SGD variant with momentum, 'adam' for an Adam variant), "
        "or method= and factor= for a rule of your own"
    )


def min_total_steps(family: str | None) -> int:
    """The fewest updates ``family``'s shape takes: 2, and for a one-cycle enough
    that its warmup (``pct_start`` of the run) has an update.

    >>> min_total_steps("one_cycle"), min_total_steps("wsd")
    (4, 2)
    """
    if family == "one_cycle":
        return math.floor(1 / SHAPES["one_cycle"]["pct_start"]) + 1
    return 2


def _check_total(total_steps: Any, family: str | None = None) -> int:
    """``total_steps`` as an int (numpy integers too), long enough for
    ``family`` (:func:`min_total_steps`)."""
    least = min_total_steps(family)
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral):
        raise ValueError(
            f"total_steps must be an integer >= {least}, got {total_steps!r}"
        )
    if total_steps < least:
        why = "" if least == 2 else f" for {family} (its warmup needs an update)"
        raise ValueError(
            f"total_steps must be an integer >= {least}{why}, got {total_steps}"
        )
    return int(total_steps)


def build_schedule(
    family: str, peak_lr: float, total_steps: int
) -> tuple[Schedule, dict[str, Any]]:
    """The schedule of ``family`` at ``peak_lr`` over ``total_steps`` updates.

    Args:
      family: one of :data:`FAMILIES`.
      peak_lr: the highest lr of the schedule, > 0.
      total_steps: the training budget in updates, >= 2; the schedule ends
        there (and holds its last value after).

    Returns:
      ``(schedule, params)``: a pure ``step -> lr`` function, and every number
      of it (``family``, ``peak_lr``, ``total_steps`` and the family's own:
      ``initial_lr``, ``final_lr``, ``warmup_steps``, ...), JSON-ready.
      ``final_lr`` is where the schedule ends: one_cycle's at its last update
      (step ``total_steps - 1``, as PyTorch's ``OneCycleLR``), the others' at
      step ``total_steps`` (as optax's decay schedules), so their last update
      still applies a small lr above it.

    Raises:
      ValueError: an unknown family, a peak that is not > 0, a budget < 2.

    >>> s, p = build_schedule("one_cycle", 1.0, total_steps=100)
    >>> p["initial_lr"], round(float(s(29)), 4), round(float(s(30)), 4)
    (0.04, 1.0, 0.9995)
    """
    from lrjax._src import schedules

    _check_family(family)
    total = _check_total(total_steps, family)
    peak = _positive("peak_lr", peak_lr)
    shape = SHAPES[family]
    params: dict[str, Any] = {"family": family, "peak_lr": peak, "total_steps": total}
    if family == "one_cycle":
        initial = peak / shape["div_factor"]
        params.update(
            pct_start=shape["pct_start"],
            div_factor=shape["div_factor"],
            final_div_factor=shape["final_div_factor"],
            initial_lr=initial,
            final_lr=initial / shape["final_div_factor"],
        )
        sched = schedules.one_cycle(
            peak,
            total,
            pct_start=shape["pct_start"],
            div_factor=shape["div_factor"],
            final_div_factor=shape["final_div_factor"],
        )
        return sched, params
    warmup = min(round(shape["warmup_fraction"] * total), total - 1)
    params.update(warmup_steps=warmup, initial_lr=0.0 if warmup else peak, final_lr=0.0)
    if family == "warmup_cosine":
        sched = schedules.warmup_cosine(peak, total, warmup_steps=warmup)
    elif family == "linear_decay":
        sched = schedules.linear_decay(peak, total, warmup_steps=warmup)
    else:
        # at least two updates, so that one applies a decayed lr
        decay = min(max(2, round(shape["decay_fraction"] * total)), total - warmup)
        params.update(decay_steps=decay, decay="linear")
        sched = schedules.wsd(peak, total, warmup_steps=warmup, decay_steps=decay)
    return sched, params


def unit_schedule(family: str, total_steps: int) -> Schedule:
    """``family``'s shape at peak 1: a grid member at lr ``p`` applies ``p * unit``.

    >>> round(float(unit_schedule("wsd", 100)(50)), 4)
    1.0
    """
    return build_schedule(family, 1.0, total_steps)[0]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A recommended schedule: its family, its numbers, and the rule behind them.

    ``schedule`` is the ``step -> lr`` function; ``params`` holds every number
    of it (:func:`build_schedule`); ``rule`` says in words how the peak was
    chosen, e.g. ``"peak = 3 x knee (0.0105)"``.
    """

    family: str  #: the schedule family (``lrjax.recipes.FAMILIES``)
    peak_lr: float  #: the schedule's peak lr
    total_steps: int  #: the budget in updates the schedule is shaped for
    method: str  #: the range-test suggestion the peak is built from
    suggestion: float  #: that suggestion's lr
    factor: float  #: peak / suggestion (the rule's multiple at this budget)
    rule: str  #: how the peak was chosen, in words
    #: every number of the schedule (:func:`lrjax.recipes.build_schedule`)
    params: dict[str, Any]
    #: the ``step -> lr`` function
    schedule: Schedule = dataclasses.field(repr=False, compare=False)
    #: the optimizer kind whose rule or auto family was used (None: neither)
    optimizer_kind: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The recipe as a JSON-ready dict (without the function)."""
        return {
            **self.params,
            "method": self.method,
            "suggestion": self.suggestion,
            "factor": self.factor,
            "rule": self.rule,
            "optimizer_kind": self.optimizer_kind,
        }

    def describe(self) -> str:
        """One line: the family, its peak and the rule, its other numbers."""
        p = self.params
        extra = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in p.items()
            if k not in ("family", "peak_lr", "total_steps")
        )
        kind = "" if self.optimizer_kind is None else f", {self.optimizer_kind} rule"
        return (
            f"{self.family} peak {self.peak_lr:.4g} ({self.rule}) over "
            f"{self.total_steps} updates: {extra}{kind}"
        )


def _why_none(suggestions: Mapping, method: str) -> str:
    """Why ``suggestions[method]`` is missing, and the methods there are."""
    have = [m for m, v in suggestions.items() if v is not None and v > 0]
    others = f"; it has {', '.join(have)}" if have else ""
    if method in ("divergence", "balanced") and not suggestions.get("divergence"):
        why = "the loss never diverged, and it is built on the lr where it does"
    else:
        why = "its loss never descended far enough"
    return why + others


def recommend(
    result: Any,
    total_steps: int,
    family: str = "auto",
    *,
    optimizer: str | None = None,
    method: str | None = None,
    factor: float | None = None,
) -> Recipe:
    """A schedule for ``total_steps`` updates from a range test's suggestions.

    ``peak = factor x result.suggestions[method]``, with ``method`` and
    ``factor = rule.multiple(total_steps)`` from the :class:`PeakRule` of
    :data:`PEAK_RULES` for the optimizer's kind and the family (fitted on recipe
    grids). A method given here overrides the rule's and then means that
    suggestion itself (``factor`` 1) unless a factor is given too; a factor given
    is the multiple itself, whatever the budget. A rule's peak is capped at the
    range test's ``divergence`` suggestion (half the lr where its loss diverged),
    above which no recipe grid's best peak lies; ``rule`` then says so.

    Args:
      result: a :class:`lrjax.RangeTestResult` (or anything with a
        ``suggestions`` mapping of method -> lr), from a range test of the same
        model, optimizer and batch size as the training.
      total_steps: the training budget in updates, >= 2.
      family: one of :data:`FAMILIES`, or ``"auto"``: the optimizer kind's
        family (:data:`AUTO_FAMILIES`).
      optimizer: the optimizer the range test and the training use, by optax
        name (a key of :data:`OPTIMIZER_KINDS`); default: the name
        ``lr_range_test`` recorded (``result.config.optimizer``, the
        factory's ``__name__``, e.g. ``optax.adamw`` -> ``"adamw"``). Needed
        when the rule gives the peak (no ``method=`` given) or the family is
        ``"auto"``.
      method: the suggestion the peak is built on (default: the rule's).
      factor: the multiple of that suggestion (default: the rule's multiple
        for ``total_steps``; 1 when ``method`` is given).

    Returns:
      A :class:`Recipe`; ``recipe.schedule`` goes wherever Optax takes a
      learning rate.

    Raises:
      ValueError: an unknown family, method or optimizer (the optimizer of a
        range test whose factory has no known name, e.g. a lambda, must be
        given), a factor that is not > 0, or a range test without that
        suggestion (its loss never descended, or ``divergence`` and
        ``balanced`` when it never diverged).

    >>> class R:  # a range test's suggestions
    ...     suggestions = {"knee": 0.01, "valley": 0.004}
    >>> r = recommend(R(), 1000, "linear_decay", optimizer="sgd")
    >>> r.family, round(r.peak_lr, 6), r.rule
    ('linear_decay', 0.02828, 'peak = 2.828 x knee (0.01)')
    >>> r = recommend(R(), 4000, optimizer="adamw")  # 5.657 x (1000 / 4000) ** 0.7
    >>> r.family, round(r.peak_lr, 6)
    ('one_cycle', 0.021436)
    >>> r.rule
    'peak = 2.144 x knee (0.01); 5.657 x (1000 / 4000 updates)^0.7'
    >>> recommend(R(), 1000, "one_cycle", method="valley").peak_lr
    0.004
    """
    _check_family(family, allow_auto=True)
    total = _check_total(total_steps)  # and for the family, once it is known
    if optimizer is None:  # a RangeTestResult's config is a RangeTestSettings
        optimizer = getattr(getattr(result, "config", None), "optimizer", None)
    name, kind = family, None
    if family == "auto":
        if method is not None and optimizer not in OPTIMIZER_KINDS:
            which = (
                "the range test could not name its optimizer"
                if optimizer is None
                else f"{optimizer!r} is none of {', '.join(OPTIMIZER_KINDS)}"
            )
            raise ValueError(
                f"family='auto' is chosen per optimizer kind, and {which}: pass "
                f"optimizer= the nearest of {', '.join(OPTIMIZER_KINDS)}, or a "
                f"family ({', '.join(FAMILIES)})"
            )
        kind = optimizer_kind(optimizer)
        name = AUTO_FAMILIES[kind]
    _check_total(total, name)
    budget, by_rule = "", False
    if method is None:
        kind = optimizer_kind(optimizer)
        peak_rule = PEAK_RULES[kind][name]
        method = peak_rule.method
        if factor is None:
            by_rule = True
            factor = peak_rule.multiple(total)
            if peak_rule.budget_exponent:
                held = peak_rule.budget(total)
                budget = (
                    f"; {peak_rule.factor:g} x ({REFERENCE_STEPS} / {held} "
                    f"updates)^{peak_rule.budget_exponent:g}"
                )
                if held != total:
                    end = "shortest" if held > total else "longest"
                    budget += f", the {end} budget the rule was fitted on"
            elif peak_rule.budget(total) != total:  # outside the fitted budgets
                lo, hi = peak_rule.budgets or (total, total)
                fitted = f"{lo}" if lo == hi else f"{lo}-{hi}"
                budget = f"; {total} updates, outside the {fitted} it was fitted on"
    elif factor is None:
        factor = 1.0
    factor = _positive("factor", factor)
    suggestions = getattr(result, "suggestions", None)
    if not isinstance(suggestions, Mapping):
        raise ValueError(
            "recommend needs a range-test result (lrjax.lr_range_test's "
            f"RangeTestResult), got {type(result).__name__}"
        )
    if method not in suggestions:
        raise ValueError(
            f"unknown suggestion method {method!r}; the result has "
            f"{', '.join(sorted(suggestions))}"
        )
    value = suggestions[method]
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"the range test gave no {method!r} suggestion "
            f"({_why_none(suggestions, method)}); pass method= one it has, or "
            "build the schedule at a peak of your own: "
            "lrjax.recipes.build_schedule(family, peak_lr, total_steps)"
        )
    peak = factor * float(value)
    rule = f"peak = {factor:.4g} x {method} ({float(value):.4g}){budget}"
    cap = suggestions.get("divergence")
    if by_rule and cap is not None and math.isfinite(cap) and 0 < cap < peak:
        # No recipe grid's best cell lies above it (docs/results.md); a short
        # budget's range test can put a rule's multiple there, where it trains badly.
        peak, factor = float(cap), float(cap) / float(value)
        rule += f", capped at the divergence suggestion ({float(cap):.4g})"
    sched, params = build_schedule(name, peak, total)
    return Recipe(
        family=name,
        peak_lr=peak,
        total_steps=total,
        method=method,
        suggestion=float(value),
        factor=factor,
        rule=rule,
        params=params,
        schedule=sched,
        optimizer_kind=kind,
    )
