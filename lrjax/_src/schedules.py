"""Learning-rate schedules as pure ``step -> lr`` functions.

Every factory here validates its arguments in plain Python and returns a closure
made only of ``jnp`` ops, so the schedule works on Python ints, numpy and JAX
integer scalars or arrays of steps, under ``jax.jit`` and ``jax.vmap``, and
anywhere Optax takes a schedule (``optax.sgd(learning_rate=schedule)``,
``optax.join_schedules``, ``optax.inject_hyperparams``). Each schedule is
wrapped in ``jax.jit`` (one compiled program per input shape and dtype), so
eager calls for logging or plotting are cheap too.

Step semantics (one rule for every schedule): ``schedule(t)`` is the learning
rate of update ``t`` (0-based, Optax's ``count``), which equals PyTorch's lr
after ``t`` calls of ``scheduler.step()``.

Steps are clipped to ``[0, 2**31 - 1]``: a negative step is treated as step 0,
and a larger host integer (Python int, numpy array) as ``2**31 - 1``. (JAX
arrays are int32 unless x64 is enabled, so they cannot hold larger steps.)
Integer steps are reduced with exact integer arithmetic (cycle index, position
inside the cycle) before anything is converted to float32, so even
``2**31 - 1`` gets an exact cycle position. Float steps are accepted too (the
formulas are continuous inside a cycle) and are computed in float32. The
result is always a float32 array with the shape of ``step``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "Schedule",
    "cosine_restart_steps",
    "cosine_restarts",
    "cyclic",
    "exp_range",
    "exponential_sweep",
    "linear_decay",
    "linear_sweep",
    "one_cycle",
    "one_cycle_momentum",
    "step_decay",
    "triangular",
    "triangular2",
    "warmup_cosine",
    "wsd",
]

Schedule = Callable[[ArrayLike], jax.Array]

_MAX_STEP = 2**31 - 1
# Half-cycle lengths of cyclic(): up + down must fit in int32.
_MAX_PERIOD = 2**30
# Upper bound on the number of restart cycles tabulated for period_mult > 1;
# the table is baked into every jitted program that uses the schedule.
_MAX_CYCLES = 2**16
_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")
_ONE_CYCLE_ANNEALS = ("cos", "linear")
_WSD_DECAYS = ("linear", "cosine", "sqrt")


# --------------------------------------------------------------------------
# Argument validation (plain Python, before any tracing).


def _check_int(
    name: str, value: object, minimum: int, maximum: int | None = None
) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    n = int(value)
    if n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and n > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {value!r}")
    return n


def _check_float(name: str, value, allowed: str, ok: Callable[[float], bool]) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{name} must be a real number {allowed}, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a real number {allowed}, got {value!r}"
        ) from None
    if not math.isfinite(result) or not ok(result):
        raise ValueError(f"{name} must be a real number {allowed}, got {value!r}")
    return result


def _nonnegative(name: str, value) -> float:
    return _check_float(name, value, ">= 0", lambda v: v >= 0)


def _positive(name: str, value) -> float:
    return _check_float(name, value, "> 0", lambda v: v > 0)


# --------------------------------------------------------------------------
# Step handling (traced code: jnp only, no Python branch on values).


def _clip_host(step: ArrayLike) -> ArrayLike:
    """Clips host integers to ``[0, 2**31 - 1]``; JAX values pass unchanged.

    Python ints and numpy integer arrays beyond int32 would fail or wrap when
    converted to a JAX array (int32 unless x64 is enabled), so they are clipped
    on the host before they reach ``jit``.
    """
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        return min(max(int(step), 0), _MAX_STEP)
    if isinstance(step, np.ndarray) and np.issubdtype(step.dtype, np.integer):
        return np.clip(step, 0, _MAX_STEP).astype(np.int32)
    return step


def _compiled(fn: Callable[[ArrayLike], jax.Array]) -> Schedule:
    """Returns ``fn`` under ``jax.jit``, behind the host-side step clipping.

    One compiled program per input shape and dtype makes eager calls (logging,
    plotting) cheap; inside an outer ``jit``, ``vmap`` or Optax it is inlined.
    """
    jitted = jax.jit(fn)

    def schedule(step: ArrayLike) -> jax.Array:
        return jitted(_clip_host(step))

    return schedule


def _as_step(step: ArrayLike) -> jax.Array:
    """Returns the step clipped to ``[0, 2**31 - 1]`` as int32 (or float32)."""
    t = jnp.asarray(step)
    if jnp.issubdtype(t.dtype, jnp.integer):
        # Clip in the input's own dtype first so int64 / uint32 don't wrap.
        if t.dtype.itemsize >= 4:
            t = jnp.clip(t, 0, _MAX_STEP)
        return t.astype(jnp.int32).clip(0)
    # bool and floating steps: float32 arithmetic.
    return jnp.clip(t.astype(jnp.float32), 0.0, float(_MAX_STEP))


def _divmod(t: jax.Array, period: int) -> tuple[jax.Array, jax.Array]:
    """Returns ``(t // period, t % period)`` as float32, exact for integer ``t``."""
    if jnp.issubdtype(t.dtype, jnp.integer):
        q = t // period
        r = t - q * period
        return q.astype(jnp.float32), r.astype(jnp.float32)
    q = jnp.floor(t / period)
    # Float rounding of t / period may put r just outside [0, period].
    r = jnp.clip(t - q * period, 0.0, float(period))
    return q, r


def _f32(x) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


def _half_cosine(
    pos: jax.Array, period: jax.Array, rest: jax.Array | None = None
) -> jax.Array:
    """Returns ``(1 + cos(pi * pos / period)) / 2`` to a few float32 ulps.

    Written as ``cos(a)**2`` in the first half of the cycle and
    ``sin(pi/2 - a)**2`` in the second half (``a = pi * pos / (2 * period)``),
    both with a small argument, so the value stays accurate relative to itself
    near the end of the cycle, where ``1 + cos`` would cancel. ``rest`` is
    ``period - pos``, passed when the caller knows it more accurately than
    their float32 difference (fractional phase ends of :func:`one_cycle`).
    """
    if rest is None:
        rest = period - pos
    a = (jnp.pi / 2) * (pos / period)
    b = (jnp.pi / 2) * (rest / period)
    return jnp.where(pos <= rest, jnp.cos(a) ** 2, jnp.sin(b) ** 2)


# --------------------------------------------------------------------------
# LR range test sweeps.


def _check_sweep_steps(num_steps) -> int:
    return _check_int("num_steps", num_steps, 2, _MAX_STEP + 1)


def exponential_sweep(init_value: float, end_value: float, num_steps: int) -> Schedule:
    """Geometric sweep from ``init_value`` to ``end_value`` (the LR range test).

    ``lr(t) = init * exp(log(end / init) * min(t, n - 1) / (n - 1))``, so
    ``lr(0) = init_value``, ``lr(num_steps - 1) = end_value`` exactly (as
    float32), constant ``end_value`` after. This is pytorch-lr-finder's rule
    (fastai's ``(end/init)**(t/n)`` never reaches ``end``).

    Args:
      init_value: lr at step 0, > 0.
      end_value: lr at step ``num_steps - 1`` and after, > 0. May be smaller
        than ``init_value`` (a decreasing sweep).
      num_steps: number of steps of the sweep, an integer >= 2.

    Returns:
      A schedule ``step -> lr`` (float32).

    Raises:
      ValueError: if a value is not > 0 or ``num_steps`` is not an integer >= 2.

    >>> s = exponential_sweep(1e-3, 10.0, num_steps=5)
    >>> [round(float(s(t)), 6) for t in range(6)]
    [0.001, 0.01, 0.1, 1.0, 10.0, 10.0]
    """
    init = _positive("init_value", init_value)
    end = _positive("end_value", end_value)
    n = _check_sweep_steps(num_steps)
    log_ratio = math.log(end / init)

    def schedule(step: ArrayLike) -> jax.Array:
        t = jnp.minimum(_as_step(step), n - 1)
        frac = t.astype(jnp.float32) / (n - 1)
        lr = init * jnp.exp(log_ratio * frac)
        return jnp.where(t >= n - 1, _f32(end), lr).astype(jnp.float32)

    return _compiled(schedule)


def linear_sweep(init_value: float, end_value: float, num_steps: int) -> Schedule:
    """Linear sweep from ``init_value`` to ``end_value``, constant after.

    ``lr(t) = init + (end - init) * min(t, n - 1) / (n - 1)``; ``lr(0) =
    init_value``, ``lr(num_steps - 1) = end_value`` exactly (as float32).

    Args:
      init_value: lr at step 0, >= 0.
      end_value: lr at step ``num_steps - 1`` and after, >= 0 (may be smaller
        than or equal to ``init_value``).
      num_steps: number of steps of the sweep, an integer >= 2.

    Returns:
      A schedule ``step -> lr`` (float32).

    Raises:
      ValueError: if a value is negative or ``num_steps`` is not an integer >= 2.

    >>> s = linear_sweep(0.0, 1.0, num_steps=5)
    >>> [float(s(t)) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    init = _nonnegative("init_value", init_value)
    end = _nonnegative("end_value", end_value)
    n = _check_sweep_steps(num_steps)

    def schedule(step: ArrayLike) -> jax.Array:
        t = jnp.minimum(_as_step(step), n - 1)
        frac = t.astype(jnp.float32) / (n - 1)
        lr = init + (end - init) * frac
        return jnp.where(t >= n - 1, _f32(end), lr).astype(jnp.float32)

    return _compiled(schedule)


# --------------------------------------------------------------------------
# Cyclical learning rates (Smith 2017; PyTorch CyclicLR).


def cyclic(
    base_value: float,
    peak_value: float,
    step_size: int,
    mode: str = "triangular",
    gamma: float = 1.0,
    step_size_down: int | None = None,
) -> Schedule:
    """Cyclical learning rate, equal to PyTorch's ``CyclicLR``.

    A cycle has ``total = up + down`` steps (``up = step_size``, ``down =
    step_size_down or step_size``). With ``cycle = 1 + t // total`` and
    ``r = t % total``::

        f  = r / up                 if r <= up   (rising)
           = (total - r) / down     otherwise    (falling)
        lr = base + (peak - base) * f * scale

    with ``scale = 1`` (``"triangular"``), ``1 / 2**(cycle - 1)``
    (``"triangular2"``, the amplitude halves every cycle) or ``gamma**t``
    (``"exp_range"``, ``t`` the total step count, computed as
    ``exp(t * log(gamma))`` in float32: relative error about
    ``(3 * t * |log(gamma)| + 2) * 2**-24``, i.e. an absolute error of at most
    about ``3 * (peak - base) * 2**-24`` since ``z * exp(-z) <= 1/e``). Same
    as ``torch.optim.lr_scheduler.CyclicLR(base_lr=base, max_lr=peak,
    step_size_up=step_size, step_size_down=step_size_down, mode=mode,
    gamma=gamma)`` after ``t`` calls of ``step()``.

    Args:
      base_value: lowest lr, >= 0.
      peak_value: highest lr, >= ``base_value``.
      step_size: steps from base to peak, an integer >= 1.
      mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
      gamma: decay per step for ``"exp_range"``, in (0, 1]; validated but
        unused by the other modes.
      step_size_down: steps from peak back to base, an integer >= 1; defaults
        to ``step_size``.

    Returns:
      A schedule ``step -> lr`` (float32).

    Raises:
      ValueError: on a bad argument (the message names it and its value).

    >>> s = cyclic(1e-3, 6e-3, step_size=2000)
    >>> [round(float(s(t)), 6) for t in (0, 1000, 2000, 3000, 4000)]
    [0.001, 0.0035, 0.006, 0.0035, 0.001]
    """
    base = _nonnegative("base_value", base_value)
    peak = _check_float(
        "peak_value", peak_value, f">= base_value ({base})", lambda v: v >= base
    )
    up = _check_int("step_size", step_size, 1, _MAX_PERIOD)
    down = (
        up
        if step_size_down is None
        else _check_int("step_size_down", step_size_down, 1, _MAX_PERIOD)
    )
    if mode not in _CYCLIC_MODES:
        raise ValueError(f"mode must be one of {_CYCLIC_MODES}, got {mode!r}")
    g = _check_float("gamma", gamma, "in (0, 1]", lambda v: 0 < v <= 1)
    total = up + down
    log_gamma = math.log(g)
    height = peak - base

    def schedule(step: ArrayLike) -> jax.Array:
        t = _as_step(step)
        q, r = _divmod(t, total)
        f = jnp.where(r <= up, r / up, (total - r) / down)
        scale: float | jax.Array
        if mode == "triangular":
            scale = 1.0
        elif mode == "triangular2":
            scale = jnp.exp2(-q)  # exact: 1 / 2**(cycle - 1), cycle = q + 1
        else:
            scale = jnp.exp(t.astype(jnp.float32) * log_gamma)
        return (base + height * (f * scale)).astype(jnp.float32)

    return _compiled(schedule)


def triangular(
    base_value: float,
    peak_value: float,
    step_size: int,
    step_size_down: int | None = None,
) -> Schedule:
    """Triangular cycle: ``cyclic(..., mode="triangular")`` (constant amplitude).

    Args:
      base_value: lowest lr, >= 0.
      peak_value: highest lr, >= ``base_value``.
      step_size: steps from base to peak, an integer >= 1.
      step_size_down: steps from peak back to base; defaults to ``step_size``.

    Returns:
      A schedule ``step -> lr`` (float32).

    Raises:
      ValueError: on a bad argument.

    >>> s = triangular(0.0, 1.0, step_size=4, step_size_down=2)
    >>> [float(s(t)) for t in range(8)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 0.5, 0.0, 0.25]
    """
    return cyclic(
        base_value, peak_value, step_size, "triangular", step_size_down=step_size_down
    )


def triangular2(
    base_value: float,
    peak_value: float,
    step_size: int,
    step_size_down: int | None = None,
) -> Schedule:
    """Triangular cycle whose amplitude halves every cycle.

    ``cyclic(..., mode="triangular2")``: ``scale = 1 / 2**(cycle - 1)``.

    Args:
      base_value: lowest lr, >= 0.
      peak_value: highest lr of the first cycle, >= ``base_value``.
      step_size: steps from base to peak, an integer >= 1.
      step_size_down: steps from peak back to base; defaults to ``step_size``.

    Returns:
      A schedule ``step -> lr`` (float32).

    Raises:
      ValueError: on a bad argument.

    >>> s = triangular2(1e-3, 6e-3, step_size=2000)
    >>> round(float(s(6000)), 6)
    0.0035
    """
    return cyclic(
        base_value, peak_value, step_size, "triangular2", step_size_down=step_size_down
    )


def exp_range(
    base_value: float,
    peak_value: float,
    step_size: int,
    gamma: float,
    step_size_down: int | None = None,
) -> Schedule:
    """Triangular cycle whose amplitude decays as ``gamma**t`` (``t`` total steps).

    ``cyclic(..., mode="exp_range", gamma=gamma)``.

    Args:
      base_value: lowest lr, >= 0.
      peak_value: highest lr before decay, >= ``base_value``.
      step_size: steps from base to peak, an integer >= 1.
      gamma: decay per step, in (0, 1].
      step_size_down: steps from peak back to base; defaults to ``step_size``.

    Returns:
      A schedule ``step -> lr`` (float32).

    Raises:
      ValueError: on a bad argument.

    >>> s = exp_range(1e-3, 6e-3, step_size=2000, gamma=0.99994)
    >>> round(float(s(2000)), 7)
    0.0054346
    """
    return cyclic(
        base_value,
        peak_value,
        step_size,
        "exp_range",
        gamma=gamma,
        step_size_down=step_size_down,
    )


# --------------------------------------------------------------------------
# SGDR: cosine annealing with warm restarts.


def _check_restart_args(
    first_period, period_mult, warmup_steps
) -> tuple[int, float, int]:
    first = _check_int("first_period", first_period, 1, _MAX_STEP)
    mult = _check_float("period_mult", period_mult, ">= 1", lambda v: v >= 1)
    warmup = _check_int("warmup_steps", warmup_steps, 0)
    if warmup >= first:
        raise ValueError(
            f"warmup_steps must be an integer in [0, first_period) = [0, {first}), "
            f"got {warmup_steps!r}"
        )
    return first, mult, warmup


def _cycle_starts(first: int, mult: float, limit: int) -> np.ndarray:
    """Returns the start steps (int64) of every cycle starting at or before ``limit``.

    Cycle ``i`` starts at ``round(sum(first * mult**j for j < i))`` (for
    ``mult > 1``; Python's ``round``, ties to even): the rounded running sum of
    the float periods, so the integer periods never drift from the geometric
    series, and are exact for an integer ``mult``. The returned array ends with
    the start of the first cycle beyond ``limit`` (its sentinel).
    """
    starts = [0]
    cum = 0.0  # running float sum of the periods first * mult**j, j < i
    i = 0
    while starts[-1] <= limit:
        if len(starts) > _MAX_CYCLES:
            raise ValueError(
                f"period_mult must be >= 1 and not so close to 1 that more than "
                f"{_MAX_CYCLES} cycles start before step 2**31 (first_period="
                f"{first}); got {mult!r}: use period_mult=1 or a larger value"
            )
        if float(mult).is_integer():  # exact integers, as in PyTorch
            nxt = starts[-1] + first * int(mult) ** i
        else:
            cum += first * mult**i
            nxt = round(cum)
        starts.append(max(nxt, starts[-1] + 1))
        i += 1
    return np.asarray(starts, dtype=np.int64)


def cosine_restarts(
    peak_value: float,
    first_period: int,
    period_mult: float = 1.0,
    min_value: float = 0.0,
    peak_decay: float = 1.0,
    warmup_steps: int = 0,
) -> Schedule:
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017).

    Cycle ``i`` has ``T_i`` steps and peak ``peak_i = min + (peak_value - min)
    * peak_decay**i`` (the height above ``min_value`` decays, so the lr stays in
    ``[min_value, peak_value]``; with ``min_value=0`` this is ``peak_value *
    peak_decay**i``). With ``T_cur`` steps into the cycle and ``w =
    warmup_steps``::

        lr = min + (peak_i - min) * T_cur / w                          T_cur < w
        lr = min + (peak_i - min) * (1 + cos(pi * (T_cur - w) / (T_i - w))) / 2

    Cycle boundaries: with ``period_mult == 1`` every cycle has
    ``first_period`` steps; with ``period_mult = m > 1`` cycle ``i`` starts at
    step ``round(sum(first_period * m**j for j < i))`` (the rounded running sum
    of the float periods, summed in float64, ties to even), so ``T_i`` is an
    integer >= 1 within 1 of ``first_period * m**i``, and exactly that for an
    integer ``m``.
    :func:`cosine_restart_steps` returns the last step of each cycle.

    With ``peak_decay=1`` and ``warmup_steps=0`` it equals PyTorch's
    ``CosineAnnealingWarmRestarts(T_0=first_period, T_mult=period_mult,
    eta_min=min_value)`` for integer ``period_mult``. With ``min_value=0`` it
    equals Keras' ``CosineDecayRestarts(peak_value, first_period, t_mul,
    m_mul=peak_decay, alpha=0)`` up to Keras' fractional cycle boundaries for
    a non-integer ``t_mul`` (Keras also decays a nonzero floor). The lr
    never reaches ``min_value`` at an integer step: it jumps back to the peak
    at the first step of the next cycle.

    Args:
      peak_value: lr at the start of the first cycle (after warmup), >=
        ``min_value``.
      first_period: steps of the first cycle, an integer >= 1.
      period_mult: factor by which each period grows, a real number >= 1
        (non-integer allowed; shrinking periods are not supported).
      min_value: lr the cosine anneals towards, >= 0.
      peak_decay: factor applied to the peak's height above ``min_value`` at
        each restart, in (0, 1] (Keras' ``m_mul``).
      warmup_steps: steps of linear warmup from ``min_value`` to ``peak_i`` at
        the start of every cycle, an integer in ``[0, first_period)``.

    Returns:
      A schedule ``step -> lr`` (float32).

    Raises:
      ValueError: on a bad argument, or if ``period_mult`` is so close to 1
        that more than 65536 cycles start before step ``2**31``.

    >>> s = cosine_restarts(0.1, first_period=10, period_mult=2)
    >>> [round(float(s(t)), 6) for t in (0, 5, 9, 10, 29, 30)]
    [0.1, 0.05, 0.002447, 0.1, 0.000616, 0.1]
    """
    first, mult, warmup = _check_restart_args(first_period, period_mult, warmup_steps)
    lo = _nonnegative("min_value", min_value)
    peak = _check_float(
        "peak_value", peak_value, f">= min_value ({lo})", lambda v: v >= lo
    )
    decay = _check_float("peak_decay", peak_decay, "in (0, 1]", lambda v: 0 < v <= 1)
    log2_decay = math.log2(decay)  # exact for powers of two, e.g. 0.5 -> -1

    if mult == 1.0:

        def locate(t):
            cycle, pos = _divmod(t, first)
            return cycle, pos, _f32(first)

    else:
        bounds = _cycle_starts(first, mult, _MAX_STEP)
        # All starts but the sentinel fit in int32; periods may exceed it.
        starts = bounds[:-1].astype(np.int32)
        periods = np.diff(bounds).astype(np.float32)

        def locate(t):
            table = jnp.asarray(starts, dtype=t.dtype)
            cycle = jnp.searchsorted(table, t, side="right") - 1
            pos = (t - table[cycle]).astype(jnp.float32)
            return cycle.astype(jnp.float32), pos, jnp.asarray(periods)[cycle]

    def schedule(step: ArrayLike) -> jax.Array:
        cycle, pos, period = locate(_as_step(step))
        height: float | jax.Array
        if decay == 1.0:
            height = peak - lo
        else:
            height = (peak - lo) * jnp.exp2(cycle * log2_decay)
        if warmup == 0:
            f = _half_cosine(pos, period)
        else:
            f = jnp.where(
                pos < warmup,
                pos / warmup,
                _half_cosine(jnp.maximum(pos - warmup, 0.0), period - warmup),
            )
        return (lo + height * f).astype(jnp.float32)

    return _compiled(schedule)


def cosine_restart_steps(
    first_period: int,
    period_mult: float = 1.0,
    *,
    num_steps: int,
) -> np.ndarray:
    """Last step of every cycle of :func:`cosine_restarts` before ``num_steps``.

    These are the steps just before each restart, where the lr is lowest: the
    snapshot points of Snapshot Ensembles. Step ``e + 1`` starts the next cycle
    (lr back at its peak). Only complete cycles count: an end step ``e`` is
    returned when ``e < num_steps``, i.e. when training ``num_steps`` updates
    (steps ``0 .. num_steps - 1``) runs through it.

    Args:
      first_period: steps of the first cycle, an integer >= 1.
      period_mult: factor by which each period grows, a real number >= 1 (same
        rule as :func:`cosine_restarts`).
      num_steps: number of training steps, an integer in ``[0, 2**31]``.

    Returns:
      A 1-D int64 numpy array of increasing step indices.

    Raises:
      ValueError: on a bad argument.

    >>> cosine_restart_steps(10, 2, num_steps=100).tolist()
    [9, 29, 69]
    >>> cosine_restart_steps(5, num_steps=20).tolist()
    [4, 9, 14, 19]
    """
    first, mult, _ = _check_restart_args(first_period, period_mult, 0)
    n = _check_int("num_steps", num_steps, 0, _MAX_STEP + 1)
    if mult == 1.0:
        return np.arange(first - 1, n, first, dtype=np.int64)
    ends = _cycle_starts(first, mult, n)[1:] - 1
    return ends[ends < n]


# --------------------------------------------------------------------------
# Step decay.


def step_decay(init_value: float, factor: float, step_size: int) -> Schedule:
    """Multiplies the lr by ``factor`` every ``step_size`` steps.

    ``lr(t) = init * factor**(t // step_size)``, equal to PyTorch's
    ``StepLR(step_size, gamma=factor)`` and to Keras' ``ExponentialDecay(init,
    step_size, factor, staircase=True)``. Computed as ``exp2(k * log2(factor))``
    (exact for powers of two).

    Args:
      init_value: lr of the first ``step_size`` steps, >= 0.
      factor: multiplier, in (0, 1] (a growing lr would overflow at large
        steps).
      step_size: steps between changes, an integer >= 1.

    Returns:
      A schedule ``step -> lr`` (float32).

    Raises:
      ValueError: on a bad argument.

    >>> s = step_decay(0.1, 0.5, step_size=30)
    >>> [round(float(s(t)), 6) for t in (0, 29, 30, 60, 90)]
    [0.1, 0.1, 0.05, 0.025, 0.0125]
    """
    init = _nonnegative("init_value", init_value)
    fac = _check_float("factor", factor, "in (0, 1]", lambda v: 0 < v <= 1)
    size = _check_int("step_size", step_size, 1, _MAX_STEP)
    log2_factor = math.log2(fac)

    def schedule(step: ArrayLike) -> jax.Array:
        k, _ = _divmod(_as_step(step), size)
        return (init * jnp.exp2(k * log2_factor)).astype(jnp.float32)

    return _compiled(schedule)


# --------------------------------------------------------------------------
# Piecewise schedules: the 1cycle policy, warmup then decay.

# One phase of a piecewise schedule: (end_step, start_value, end_value, shape).
_Phase = tuple[float, float, float, str]


def _piecewise(phases: list[_Phase]) -> Schedule:
    """Returns the schedule that runs through ``phases`` one after the other.

    Phase ``i`` runs from ``s``, the previous phase's end step (0 for the
    first), to its own end step ``e``; both may be real numbers, as in
    PyTorch's ``OneCycleLR``. Step ``t`` belongs to the first phase with
    ``t <= e``; the last end step is an integer after which the lr holds. With
    ``pct = (t - s) / (e - s)``, a phase from value ``a`` to value ``b`` is::

        "linear": a + (b - a) * pct
        "cos":    b + (a - b) * (1 + cos(pi * pct)) / 2
        "sqrt":   a - (a - b) * sqrt(pct)

    each evaluated as ``a * w + b * (1 - w)`` with both weights computed
    directly (``1 - pct`` from ``e - t``, ``1 - cos`` as ``sin**2``,
    ``1 - sqrt(pct)`` as ``(1 - pct) / (1 + sqrt(pct))``), so no difference
    cancels and the lr is accurate to a few float32 ulps relative to itself. A
    phase with ``a == b`` gives exactly ``a``; phases of zero length are
    skipped. For integer steps, ``t - s`` and ``e - t`` are formed in integer
    arithmetic before the fractional parts of ``s`` and ``e`` are applied.
    """
    kept: list[_Phase] = []
    for phase in phases:
        if phase[0] > (kept[-1][0] if kept else 0):
            kept.append(phase)
    ends = [p[0] for p in kept]
    starts = [0, *ends[:-1]]
    last = int(ends[-1])
    shapes = sorted({p[3] for p in kept})
    # Per-phase tables, indexed by the phase of each step.
    s_int = np.array([math.floor(s) for s in starts], np.int32)
    e_int = np.array([math.floor(e) for e in ends], np.int32)
    s_frac = np.array([s - math.floor(s) for s in starts], np.float32)
    e_frac = np.array([e - math.floor(e) for e in ends], np.float32)
    s_f32 = np.array(starts, np.float32)
    e_f32 = np.array(ends, np.float32)
    length = np.array([e - s for s, e in zip(starts, ends, strict=True)], np.float32)
    v_start = np.array([p[1] for p in kept], np.float32)
    v_end = np.array([p[2] for p in kept], np.float32)
    code = np.array([shapes.index(p[3]) for p in kept], np.int32)

    def weights(shape: str, pos: jax.Array, rem: jax.Array, n: jax.Array):
        if shape == "linear":
            return rem / n, pos / n
        if shape == "cos":
            return _half_cosine(pos, n, rem), _half_cosine(rem, n, pos)
        root = jnp.sqrt(pos / n)
        return (rem / n) / (1 + root), root

    def schedule(step: ArrayLike) -> jax.Array:
        t = jnp.minimum(_as_step(step), last)
        integer = jnp.issubdtype(t.dtype, jnp.integer)
        # For an integer t, t <= e  <=>  t <= floor(e).
        bounds = jnp.asarray((e_int if integer else e_f32)[:-1])
        phase = jnp.searchsorted(bounds, t, side="left")

        def at(table: np.ndarray) -> jax.Array:
            return jnp.asarray(table)[phase]

        if integer:
            pos = (t - at(s_int)).astype(jnp.float32) - at(s_frac)
            rem = (at(e_int) - t).astype(jnp.float32) + at(e_frac)
        else:
            pos, rem = t - at(s_f32), at(e_f32) - t
        pos, rem = jnp.maximum(pos, 0.0), jnp.maximum(rem, 0.0)
        n = at(length)
        w_start, w_end = weights(shapes[0], pos, rem, n)
        for i, shape in enumerate(shapes[1:], start=1):
            w0, w1 = weights(shape, pos, rem, n)
            use = at(code) == i
            w_start, w_end = jnp.where(use, w0, w_start), jnp.where(use, w1, w_end)
        a, b = at(v_start), at(v_end)
        return jnp.where(a == b, a, a * w_start + b * w_end).astype(jnp.float32)

    return _compiled(schedule)


def _one_cycle(
    total_steps, pct_start, anneal, three_phase, start: float, turn: float, final: float
) -> Schedule:
    """PyTorch's ``OneCycleLR`` phases, from ``start`` via ``turn`` to ``final``.

    Two phases: ``start -> turn -> final``; three: ``start -> turn -> start ->
    final``. The lr is ``(initial, peak, min)``, the momentum ``(max, base,
    max)``.
    """
    total = _check_int("total_steps", total_steps, 2, _MAX_STEP + 1)
    pct = _check_float("pct_start", pct_start, "in (0, 1)", lambda v: 0 < v < 1)
    if anneal not in _ONE_CYCLE_ANNEALS:
        raise ValueError(f"anneal must be one of {_ONE_CYCLE_ANNEALS}, got {anneal!r}")
    if not isinstance(three_phase, (bool, np.bool_)):
        raise ValueError(f"three_phase must be True or False, got {three_phase!r}")
    shape = "cos" if anneal == "cos" else "linear"
    # PyTorch's end steps, computed with the same float64 operations.
    e1 = float(pct * total) - 1
    if three_phase:
        e2 = float(2 * pct * total) - 2
        phases = [
            (e1, start, turn, shape),
            (e2, turn, start, shape),
            (total - 1, start, final, shape),
        ]
        high, high_value = (
            "(total_steps + 1) / (2 * total_steps)",
            (total + 1) / (2 * total),
        )
    else:
        phases = [(e1, start, turn, shape), (total - 1, turn, final, shape)]
        high, high_value = "1", 1
    ends = [0.0] + [p[0] for p in phases]
    if any(b <= a for a, b in zip(ends[:-1], ends[1:], strict=True)):
        raise ValueError(
            f"pct_start must be in (1 / total_steps, {high}) = ({1 / total!r}, "
            f"{high_value!r}) for total_steps={total}"
            f"{' and three_phase=True' if three_phase else ''}, so that no phase "
            f"is empty (PyTorch would divide by zero), got {pct_start!r}"
        )
    return _piecewise(phases)


def one_cycle(
    peak_value: float,
    total_steps: int,
    *,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal: str = "cos",
    three_phase: bool = False,
) -> Schedule:
    """The 1cycle policy (Smith & Topin 2019), equal to PyTorch's ``OneCycleLR``.

    With ``T = total_steps``, ``initial = peak_value / div_factor`` and ``min =
    initial / final_div_factor``, the lr runs through phases that end at
    PyTorch's (real-valued) end steps::

        two phases:   initial -> peak     until  e1 = pct_start * T - 1
                      peak    -> min      until  T - 1
        three_phase:  initial -> peak     until  e1 = pct_start * T - 1
                      peak    -> initial  until  e2 = 2 * pct_start * T - 2
                      initial -> min      until  T - 1

    Step ``t`` is in the first phase whose end ``e >= t``; with ``s`` the
    previous phase's end (0 for the first) and ``pct = (t - s) / (e - s)``, a
    phase from ``a`` to ``b`` gives::

        lr = b + (a - b) * (1 + cos(pi * pct)) / 2     anneal="cos"
        lr = a + (b - a) * pct                         anneal="linear"

    Same as ``torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak_value,
    total_steps=T, pct_start=pct_start, anneal_strategy=anneal,
    div_factor=div_factor, final_div_factor=final_div_factor,
    three_phase=three_phase)`` after ``t`` calls of ``step()``, for ``t < T``.
    PyTorch extrapolates past ``min`` at ``t = T`` and raises after; here steps
    ``>= T`` hold ``lr(T - 1) = min``.

    Optax's ``cosine_onecycle_schedule(T, peak_value, pct_start, div_factor,
    final_div_factor)`` peaks at step ``int(pct_start * T)``, one step later
    than PyTorch; lrjax follows PyTorch and peaks at step ``pct_start * T - 1``.
    Where that is not a whole step the lr applied never equals ``peak_value``:
    a short cycle stays below it (``T = 4``: the highest is 0.81 x peak), as
    PyTorch's does. :func:`one_cycle_momentum` is the matching momentum (or Adam
    ``b1``).

    Args:
      peak_value: highest lr (PyTorch's ``max_lr``), > 0.
      total_steps: number of updates of the cycle, an integer >= 2.
      pct_start: fraction of the steps spent rising, in ``(1 / T, 1)`` (in
        ``(1 / T, (T + 1) / (2 * T))`` with ``three_phase``): every phase must
        have a positive length.
      div_factor: ``initial = peak_value / div_factor``, > 0.
      final_div_factor: ``min = initial / final_div_factor``, > 0.
      anneal: ``"cos"`` or ``"linear"`` (PyTorch's ``anneal_strategy``).
      three_phase: if True, come back down to ``initial`` symmetrically, then
        anneal to ``min`` (fastai's original schedule).

    Returns:
      A schedule ``step -> lr`` (float32).

    Raises:
      ValueError: on a bad argument (the message names it and its value).

    >>> s = one_cycle(1.0, total_steps=100)
    >>> [round(float(s(t)), 6) for t in (0, 29, 30, 99, 100)]
    [0.04, 1.0, 0.999497, 4e-06, 4e-06]
    >>> s = one_cycle(1.0, 100, anneal="linear", three_phase=True)
    >>> [round(float(s(t)), 6) for t in (0, 29, 58, 99)]
    [0.04, 1.0, 0.04, 4e-06]
    """
    peak = _positive("peak_value", peak_value)
    div = _positive("div_factor", div_factor)
    final_div = _positive("final_div_factor", final_div_factor)
    initial = peak / div
    return _one_cycle(
        total_steps, pct_start, anneal, three_phase, initial, peak, initial / final_div
    )


def one_cycle_momentum(
    total_steps: int,
    *,
    pct_start: float = 0.3,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    anneal: str = "cos",
    three_phase: bool = False,
) -> Schedule:
    """The momentum of the 1cycle policy, moving against :func:`one_cycle`'s lr.

    Same phases and formula as :func:`one_cycle` (same ``total_steps``,
    ``pct_start``, ``anneal`` and ``three_phase``), with the values::

        two phases:   max -> base,  base -> max
        three_phase:  max -> base,  base -> max,  max -> max (constant)

    Equal to PyTorch's ``OneCycleLR(..., cycle_momentum=True,
    base_momentum=base_momentum, max_momentum=max_momentum)``:
    ``param_groups[0]["momentum"]`` for SGD, ``param_groups[0]["betas"][0]``
    for Adam, after ``t`` calls of ``step()``; steps ``>= total_steps`` hold
    ``max_momentum``. Use it as SGD's ``momentum`` or Adam's ``b1`` through
    ``optax.inject_hyperparams``, whose state then records the value each
    update used.

    Args:
      total_steps: number of updates of the cycle, an integer >= 2.
      pct_start: fraction of the steps spent rising (as in :func:`one_cycle`).
      base_momentum: lowest momentum, reached at the lr's peak, >= 0.
      max_momentum: highest momentum, at the start and the end, >=
        ``base_momentum``.
      anneal: ``"cos"`` or ``"linear"``.
      three_phase: PyTorch's three-phase variant (see :func:`one_cycle`).

    Returns:
      A schedule ``step -> momentum`` (float32).

    Raises:
      ValueError: on a bad argument (the message names it and its value).

    >>> m = one_cycle_momentum(100)
    >>> [round(float(m(t)), 6) for t in (0, 29, 64, 99, 100)]
    [0.95, 0.85, 0.9, 0.95, 0.95]
    >>> import jax.numpy as jnp
    >>> import optax
    >>> tx = optax.inject_hyperparams(optax.sgd)(
    ...     learning_rate=one_cycle(0.1, 100), momentum=one_cycle_momentum(100)
    ... )
    >>> params = jnp.zeros(3)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.ones(3), state, params)
    >>> round(float(state.hyperparams["momentum"]), 6)
    0.95
    """
    base = _nonnegative("base_momentum", base_momentum)
    top = _check_float(
        "max_momentum", max_momentum, f">= base_momentum ({base})", lambda v: v >= base
    )
    return _one_cycle(total_steps, pct_start, anneal, three_phase, top, base, top)


def _check_warmup_args(
    peak_value, total_steps, warmup_steps, init_value, end_value
) -> tuple[float, int, int, float, float]:
    init = _nonnegative("init_value", init_value)
    end = _nonnegative("end_value", end_value)
    top = max(init, end)
    peak = _check_float(
        "peak_value",
        peak_value,
        f">= max(init_value, end_value) ({top})",
        lambda v: v >= top,
    )
    total = _check_int("total_steps", total_steps, 1, _MAX_STEP)
    warmup = _check_int("warmup_steps", warmup_steps, 0)
    if warmup >= total:
        raise ValueError(
            f"warmup_steps must be an integer in [0, total_steps) = [0, {total}), "
            f"got {warmup_steps!r}"
        )
    return peak, total, warmup, init, end


def warmup_cosine(
    peak_value: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    init_value: float = 0.0,
    end_value: float = 0.0,
) -> Schedule:
    """Linear warmup, then a half cosine reaching ``end_value`` at ``total_steps``.

    With ``w = warmup_steps`` and ``T = total_steps``::

        lr = init + (peak - init) * t / w                                t <= w
        lr = end + (peak - end) * (1 + cos(pi * (t - w) / (T - w))) / 2  w <= t <= T
        lr = end                                                         t >= T

    Equal to ``optax.warmup_cosine_decay_schedule(init_value, peak_value,
    warmup_steps, decay_steps=total_steps, end_value=end_value)`` up to float32
    rounding (lrjax stays accurate relative to ``lr - end`` near the end,
    where ``1 + cos`` cancels), and for ``init_value = end_value = 0`` to
    Hugging Face's ``get_cosine_schedule_with_warmup(opt, w, T)``.

    Args:
      peak_value: lr at the end of the warmup, >= ``init_value`` and
        ``end_value``.
      total_steps: step at which the lr reaches ``end_value``, an integer >= 1.
      warmup_steps: steps of linear warmup, an integer in ``[0, total_steps)``.
      init_value: lr at step 0 (if ``warmup_steps > 0``), >= 0.
      end_value: lr at ``total_steps`` and after, >= 0.

    Returns:
      A schedule ``step -> lr`` (float32).

    Raises:
      ValueError: on a bad argument (the message names it and its value).

    >>> s = warmup_cosine(1.0, total_steps=10, warmup_steps=2)
    >>> [round(float(s(t)), 6) for t in (0, 1, 2, 6, 10, 11)]
    [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    """
    peak, total, warmup, init, end = _check_warmup_args(
        peak_value, total_steps, warmup_steps, init_value, end_value
    )
    return _piecewise([(warmup, init, peak, "linear"), (total, peak, end, "cos")])


def linear_decay(
    peak_value: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    init_value: float = 0.0,
    end_value: float = 0.0,
) -> Schedule:
    """Linear warmup, then a linear decay reaching ``end_value`` at ``total_steps``.

    The budget-aware schedule of Li, Yumer & Ramanan, "Budgeted Training:
    Rethinking Deep Neural Network Training Under Resource Constraints" (ICLR
    2020): decay linearly to zero over the training budget. With ``w =
    warmup_steps`` and ``T = total_steps``::

        lr = init + (peak - init) * t / w              t <= w
        lr = peak + (end - peak) * (t - w) / (T - w)   w <= t <= T
        lr = end                                       t >= T

    Args:
      peak_value: lr at the end of the warmup, >= ``init_value`` and
        ``end_value``.
      total_steps: step at which the lr reaches ``end_value`` (the budget), an
        integer >= 1.
      warmup_steps: steps of linear warmup, an integer in ``[0, total_steps)``.
      init_value: lr at step 0 (if ``warmup_steps > 0``), >= 0.
      end_value: lr at ``total_steps`` and after, >= 0.

    Returns:
      A schedule ``step -> lr`` (float32).

    Raises:
      ValueError: on a bad argument (the message names it and its value).

    >>> s = linear_decay(1.0, total_steps=10, warmup_steps=2, end_value=0.1)
    >>> [round(float(s(t)), 6) for t in (0, 1, 2, 4, 6, 10, 11)]
    [0.0, 0.5, 1.0, 0.775, 0.55, 0.1, 0.1]
    """
    peak, total, warmup, init, end = _check_warmup_args(
        peak_value, total_steps, warmup_steps, init_value, end_value
    )
    return _piecewise([(warmup, init, peak, "linear"), (total, peak, end, "linear")])


def wsd(
    peak_value: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    init_value: float = 0.0,
    end_value: float = 0.0,
    decay: str = "linear",
) -> Schedule:
    """Warmup-stable-decay: linear warmup, constant peak, then a short decay.

    With ``w = warmup_steps``, ``d = decay_steps``, ``T = total_steps``,
    ``D = T - d`` (the start of the decay) and ``pct = (t - D) / d``::

        lr = init + (peak - init) * t / w                 t <= w
        lr = peak                                         w <= t <= D
        lr = peak + (end - peak) * pct                    D <= t <= T, "linear"
        lr = end + (peak - end) * (1 + cos(pi * pct)) / 2              "cosine"
        lr = peak - (peak - end) * sqrt(pct)                           "sqrt"
        lr = end                                          t >= T

    WSD comes from MiniCPM (Hu et al. 2024); the ``"sqrt"`` ("1-sqrt")
    cooldown over the last 20% of the steps is the choice of Hägele et al.,
    "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
    Durations" (2024).

    Args:
      peak_value: lr of the stable phase, >= ``init_value`` and ``end_value``.
      total_steps: step at which the lr reaches ``end_value``, an integer >= 1.
      warmup_steps: steps of linear warmup, an integer >= 0.
      decay_steps: steps of the final decay, an integer >= 1 with
        ``warmup_steps + decay_steps <= total_steps`` (its first step applies the
        peak: 1 decays nothing); defaults to ``round(0.2 * total_steps)``, at
        least 2 (1 when ``total_steps`` is 1).
      init_value: lr at step 0 (if ``warmup_steps > 0``), >= 0.
      end_value: lr at ``total_steps`` and after, >= 0.
      decay: shape of the decay, ``"linear"``, ``"cosine"`` or ``"sqrt"``.

    Returns:
      A schedule ``step -> lr`` (float32).

    Raises:
      ValueError: on a bad argument (the message names it and its value).

    >>> s = wsd(1.0, total_steps=10, warmup_steps=2, decay_steps=4)
    >>> [round(float(s(t)), 6) for t in range(12)]
    [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    >>> s = wsd(1.0, total_steps=10, warmup_steps=2, decay_steps=4, decay="sqrt")
    >>> [round(float(s(t)), 6) for t in (6, 7, 9, 10)]
    [1.0, 0.5, 0.133975, 0.0]
    """
    peak, total, warmup, init, end = _check_warmup_args(
        peak_value, total_steps, warmup_steps, init_value, end_value
    )
    if decay_steps is None:
        length = max(min(2, total), round(0.2 * total))
    else:
        length = _check_int("decay_steps", decay_steps, 1, total)
    if warmup + length > total:
        raise ValueError(
            f"warmup_steps + decay_steps must be <= total_steps ({total}), got "
            f"{warmup} + {length} = {warmup + length}"
        )
    if decay not in _WSD_DECAYS:
        raise ValueError(f"decay must be one of {_WSD_DECAYS}, got {decay!r}")
    shape = "cos" if decay == "cosine" else decay
    return _piecewise(
        [
            (warmup, init, peak, "linear"),
            (total - length, peak, peak, "linear"),
            (total, peak, end, shape),
        ]
    )
