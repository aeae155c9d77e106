"""The learning-rate range test and its suggestion methods.

The sweep runs on the device as compiled ``lax.scan`` chunks of the one train step
(:func:`lrjax.training.make_step`); between chunks the host smooths the losses,
updates the progress bar and stops once every seed has diverged. Smoothing,
divergence detection and the suggestions are plain numpy on the host, so they are
easy to test on curves with known answers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrjax import schedules
from lrjax.training import (
    Apply,
    OptimizerFactory,
    batch_indices,
    describe_devices,
    init_state,
    json_floats,
    make_optimizer,
    make_step,
    population_mesh,
    scan_steps,
)

METHODS = ("steep", "valley", "minimum", "divergence", "balanced", "knee")
DEFAULT_METHOD = "knee"  # the lowest regret on fresh grids (README, finder quality)
KNEE_DESCENT = 0.75  # the knee: where the smoothed loss has made 75% of its descent
KNEE_TOWARD_DIVERGENCE = 0.25  # ... then a quarter of the way to divergence (log lr)
MODES = ("exponential", "linear")


# --------------------------------------------------------------------------- host side
def smooth(losses: np.ndarray, beta: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential moving average, as fastai and Lightning use.

    ``avg_i = beta * avg_{i-1} + (1 - beta) * loss_i`` (``avg_{-1} = 0``) and
    ``smoothed_i = avg_i / (1 - beta**(i + 1))`` along the last axis (leading axes,
    e.g. seeds, are smoothed independently). Once a loss is non-finite every later
    smoothed value is NaN.

    >>> smooth(np.array([1.0, 2.0, 3.0]), beta=0.5).round(4).tolist()
    [1.0, 1.6667, 2.4286]
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"smoothing beta must be in [0, 1), got {beta}")
    losses = np.asarray(losses, np.float64)
    out = np.empty_like(losses)
    avg = np.zeros(losses.shape[:-1])
    for i in range(losses.shape[-1]):  # vectorised over leading (seed) axes
        avg = beta * avg + (1.0 - beta) * losses[..., i]
        out[..., i] = avg / (1.0 - beta ** (i + 1))
    # NaN from the first non-finite loss on, per row.
    bad = np.logical_or.accumulate(~np.isfinite(losses), axis=-1)
    out[bad] = np.nan
    return out


def find_divergence(
    losses: np.ndarray,
    smoothed: np.ndarray,
    threshold: float = 4.0,
    rebound: float = 0.5,
) -> int | None:
    """The first step at which the sweep has diverged, or None.

    Three signals, whichever comes first:

    * a non-finite loss;
    * the smoothed loss above ``threshold`` x its best value so far (fastai's and
      Lightning's rule, pytorch-lr-finder uses 5);
    * a rebound: after the best point, the smoothed loss has climbed back by
      ``rebound`` of the descent from its start (``smoothed[0]``) to its best. A
      loss that blows up onto the ln(num_classes) plateau of dead ReLUs never
      reaches 4 x best when the best is above ~0.6; this catches it. Only counted
      when the descent was real (best below 95% of the start). ``rebound=None``
      turns the signal off.

    >>> s = np.array([2.0, 1.0, 0.5, 0.6, 1.4, 1.9])
    >>> find_divergence(s, s)  # climbed back above 0.5 + 0.5 * (2.0 - 0.5)
    4
    >>> find_divergence(s, s, rebound=None) is None
    True
    """
    losses = np.asarray(losses, np.float64)
    smoothed = np.asarray(smoothed, np.float64)
    n = len(losses)
    if n == 0:
        return None
    bad = ~(np.isfinite(losses) & np.isfinite(smoothed))
    first_bad = int(np.argmax(bad)) if bad.any() else n
    s = smoothed[:first_bad]
    best = np.minimum.accumulate(s) if len(s) else s
    hits = s > threshold * best
    if rebound is not None and len(s):
        start = s[0]
        real = best < 0.95 * start
        hits |= real & (s - best >= rebound * (start - best)) & (s > best)
    idx = int(np.argmax(hits)) if hits.any() else n
    idx = min(idx, first_bad)
    return idx if idx < n else None


def _valley_index(losses: np.ndarray) -> int:
    """fastai's valley: the longest strictly decreasing subsequence of the losses.

    ``lds[i]`` is the length of the longest decreasing subsequence ending at ``i``;
    with ``end`` its argmax (first) and ``start = end - lds[end]`` (fastai's own
    offset), the suggestion is ``start + L//3 + L//6`` with ``L = end - start``
    (about half way down, in index space), written as ``int(L/3) + int(L/6)``.
    """
    n = len(losses)
    lds = np.ones(n, np.int64)
    for i in range(1, n):
        higher = losses[:i] > losses[i]
        if higher.any():
            lds[i] = 1 + lds[:i][higher].max()
    end = int(np.argmax(lds))
    start = end - int(lds[end])
    sections = (end - start) / 3
    return start + int(sections) + int(sections / 2)


def suggest(
    lrs: np.ndarray,
    smoothed: np.ndarray,
    diverged_at: int | None,
    *,
    skip_start: float = 0.1,
    skip_end: int = 5,
    knee_descent: float = KNEE_DESCENT,
    knee_toward: float = KNEE_TOWARD_DIVERGENCE,
) -> dict[str, float | None]:
    """All suggestion methods on one curve.

    The curve is cut at the divergence step (inclusive) and at the first NaN;
    then the first ``skip_start`` fraction and the last ``skip_end`` points are
    dropped (fastai's conventions). Methods:

    * ``steep``: argmin of d(smoothed loss)/d(log lr).
    * ``valley``: fastai's longest-valley rule (:func:`_valley_index`).
    * ``minimum``: lr at the smoothed minimum / 10.
    * ``divergence``: half the lr where the loss diverged (the seed recipe's rule).
    * ``balanced``: the geometric mean of ``valley`` and ``divergence``: midway on
      the log axis between the start of the good region and the blow-up.
    * ``knee``: the first lr at which the smoothed loss has made
      ``knee_descent`` (75%) of its descent from the start of the curve to its
      minimum, moved ``knee_toward`` (a quarter) of the way on the log axis
      toward ``divergence``: ``knee75**0.75 * divergence**0.25``; without a
      divergence, the 75% point itself. The constants were fitted on the 2-epoch
      grids of ``benchmarks/finder_quality.py`` and checked on fresh grids (README).

    A method with nothing to go on (too short a curve, no divergence) gives None.
    """
    lrs = np.asarray(lrs, np.float64)
    smoothed = np.asarray(smoothed, np.float64)
    end = len(lrs) if diverged_at is None else min(len(lrs), diverged_at + 1)
    finite = np.isfinite(smoothed[:end])
    if not finite.all():
        end = int(np.argmin(finite))
    lo = int(skip_start * end)
    hi = end - skip_end
    out: dict[str, float | None] = dict.fromkeys(METHODS)
    if diverged_at is not None:
        out["divergence"] = float(lrs[diverged_at] / 2)
    if hi - lo >= 3:
        x, y = np.log(lrs[lo:hi]), smoothed[lo:hi]
        out["steep"] = float(np.exp(x[int(np.argmin(np.gradient(y, x)))]))
        out["valley"] = float(lrs[lo + _valley_index(y)])
        out["minimum"] = float(lrs[lo + int(np.argmin(y))] / 10)
        out["knee"] = _knee(x, y, out["divergence"], knee_descent, knee_toward)
    if out["valley"] is not None and out["divergence"] is not None:
        out["balanced"] = float(math.sqrt(out["valley"] * out["divergence"]))
    return out


def _knee(log_lrs, y, divergence: float | None, descent: float, toward: float):
    """The ``knee`` suggestion on a cut curve (log lrs and smoothed losses)."""
    target = y.min() + (1.0 - descent) * (y[0] - y.min())
    knee = float(np.exp(log_lrs[int(np.argmax(y <= target))]))
    if divergence is None:
        return knee
    return float(knee ** (1.0 - toward) * divergence**toward)


def pick(suggestions: dict[str, float | None], method: str) -> float | None:
    """The suggestion of ``method``, falling back to valley, then minimum."""
    for m in (method, "valley", "minimum"):
        if suggestions.get(m) is not None:
            return suggestions[m]
    return None


# --------------------------------------------------------------------------- result
@dataclasses.dataclass
class RangeTestResult:
    """What a range test returns. Arrays are numpy, on the host.

    ``losses`` and ``smoothed_losses`` are ``[steps_run]`` for one seed and
    ``[seeds, steps_run]`` for several; ``lrs`` is ``[steps_run]`` (the same sweep
    for every seed). ``suggestions`` hold the median over seeds of each method;
    ``spread`` is None for one seed, else per-seed values of the chosen method
    (``per_seed``), their ``min`` and ``max``, and every method's per-seed values
    (``per_method``).
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    diverged_at_lr: float | None
    diverged_at_step: list[int | None]
    suggestions: dict[str, float | None]
    suggested_lr: float | None
    method: str
    seeds: int
    spread: dict[str, Any] | None
    steps_run: int
    timings: dict[str, float]
    device: str
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN and inf become None)."""

        return {
            "suggested_lr": self.suggested_lr,
            "method": self.method,
            "suggestions": self.suggestions,
            "diverged_at_lr": self.diverged_at_lr,
            "diverged_at_step": self.diverged_at_step,
            "lrs": json_floats(self.lrs),
            "losses": json_floats(self.losses),
            "smoothed_losses": json_floats(self.smoothed_losses),
            "seeds": self.seeds,
            "spread": self.spread,
            "steps_run": self.steps_run,
            "timings": self.timings,
            "device": self.device,
            "config": self.config,
        }


def _check_range_args(init_value, end_value, num_steps, mode, seeds, beta, threshold):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (init_value > 0 and end_value > 0):
        raise ValueError(
            f"learning rates must be > 0, got init_value={init_value}, "
            f"end_value={end_value}"
        )
    if not init_value < end_value:
        raise ValueError(
            f"init_value must be < end_value, got {init_value} >= {end_value}"
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"smoothing beta must be in [0, 1), got {beta}")
    if not threshold > 1.0:
        raise ValueError(f"diverge threshold must be > 1, got {threshold}")


# --------------------------------------------------------------------------- the test
def lr_range_test(
    apply: Apply,
    params: Any,
    optimizer: OptimizerFactory,
    x: Any,
    y: Any,
    *,
    key: jax.Array,
    batch_size: int = 32,
    mode: str = "exponential",
    init_value: float = 1e-5,
    end_value: float = 10.0,
    num_steps: int | None = None,
    smooth_beta: float = 0.98,
    diverge_threshold: float = 4.0,
    rebound: float | None = 0.5,
    seeds: int = 1,
    method: str = DEFAULT_METHOD,
    stop_on_divergence: bool = True,
    chunks: int = 8,
    progress: bool = False,
) -> RangeTestResult:
    """Runs the learning-rate range test and suggests a learning rate.

    The lr grows from ``init_value`` at the first batch to ``end_value`` at batch
    ``num_steps - 1`` (:func:`lrjax.exponential_sweep` or
    :func:`lrjax.linear_sweep`); the loss of every batch is recorded before its
    update. The caller's ``params`` are never modified (the test trains copies).

    Args:
      apply: the model, ``apply(params, x) -> logits``; the loss is softmax
        cross-entropy with integer labels.
      params: the initial parameters (a pytree), or a function ``key -> params``
        so that every seed gets its own initialisation.
      optimizer: ``learning_rate -> optax.GradientTransformation``, e.g.
        ``optax.sgd`` or ``lambda lr: optax.adamw(lr, weight_decay=1e-4)``.
      x, y: training inputs (uint8 images are scaled to [0, 1]; floats are used as
        they are) and integer labels, arrays with a leading example axis.
      key: a ``jax.random.key``; seed ``k`` uses ``fold_in(key, k)`` for its batch
        order (and its initialisation when ``params`` is a function).
      batch_size: examples per step; each epoch is a fresh permutation.
      mode: ``"exponential"`` or ``"linear"`` sweep.
      init_value, end_value: the sweep's first and last lr (both > 0).
      num_steps: sweep length; default one epoch (``len(x) // batch_size``).
      smooth_beta: EMA factor of the smoothed loss (bias-corrected).
      diverge_threshold: diverged when smoothed > this x the best smoothed loss
        (or a loss is non-finite, or the loss rebounds: :func:`find_divergence`).
      rebound: the rebound fraction of :func:`find_divergence`; None disables it.
      seeds: independent runs (initialisations and batch orders) in ONE compiled
        program (``vmap``; spread over local devices when several).
      method: the suggestion reported as ``suggested_lr``: one of
        ``"steep", "valley", "minimum", "divergence", "balanced", "knee"``.
      stop_on_divergence: stop at the chunk where every seed has diverged.
      chunks: the sweep runs as this many compiled scan chunks; the host checks
        for divergence between them.
      progress: show a tqdm progress bar.

    Returns:
      A :class:`RangeTestResult`.

    Raises:
      ValueError: for a bad argument, naming it and what is allowed.
    """
    n_examples = int(np.shape(y)[0])
    if not 1 <= batch_size <= n_examples:
        raise ValueError(
            f"batch_size must be between 1 and the number of examples "
            f"({n_examples}), got {batch_size}"
        )
    if num_steps is None:
        num_steps = n_examples // batch_size
    _check_range_args(
        init_value, end_value, num_steps, mode, seeds, smooth_beta, diverge_threshold
    )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"chunks must be an integer >= 1, got {chunks!r}")

    sweep = (
        schedules.exponential_sweep if mode == "exponential" else schedules.linear_sweep
    )
    schedule = sweep(init_value, end_value, num_steps)
    tx = make_optimizer(optimizer, schedule)
    chunk_fn = scan_steps(make_step(apply, tx))

    chunk_len = -(-num_steps // min(chunks, num_steps))
    n_chunks = -(-num_steps // chunk_len)
    padded = n_chunks * chunk_len  # the tail runs past num_steps and is discarded

    seed_keys = [jax.random.fold_in(key, k) for k in range(seeds)]
    if callable(params):
        plist = [params(jax.random.fold_in(k, 1)) for k in seed_keys]
    else:
        # Fresh buffers: the chunks donate their state, never the caller's arrays.
        plist = [jax.tree.map(lambda a: jnp.array(a, copy=True), params)] * seeds
    idx = jnp.stack(
        [batch_indices(k, n_examples, batch_size, padded) for k in seed_keys]
    ).reshape(seeds, n_chunks, chunk_len, batch_size)

    mesh = population_mesh(seeds, "seed") if seeds > 1 else None
    data = (jnp.asarray(x), jnp.asarray(y))
    if seeds == 1:
        state = jax.jit(lambda p: init_state(p, tx))(plist[0])
        run = jax.jit(chunk_fn, donate_argnums=0)
        idx = idx[0]
    else:
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *plist)
        state = jax.jit(jax.vmap(lambda p: init_state(p, tx)))(stacked)
        run = jax.jit(jax.vmap(chunk_fn, in_axes=(0, 0, None)), donate_argnums=0)
        idx = jnp.swapaxes(idx, 0, 1)  # [chunk, seed, steps, batch]
        if mesh is not None:
            P = jax.sharding.PartitionSpec
            shard = jax.sharding.NamedSharding(mesh, P("seed"))
            state = jax.device_put(state, shard)
            idx = jax.device_put(idx, jax.sharding.NamedSharding(mesh, P(None, "seed")))
            data = jax.device_put(data, jax.sharding.NamedSharding(mesh, P()))
    del plist

    t0 = time.perf_counter()
    compiled = run.lower(state, idx[0], data).compile()
    compile_s = time.perf_counter() - t0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, desc="lr range test", unit="step", leave=False)
    losses_parts, lr_parts = [], []
    diverged: list[int | None] = [None] * seeds
    t0 = time.perf_counter()
    steps_run = 0
    for c in range(n_chunks):
        state, metrics = compiled(state, idx[c], data)
        loss_c = np.asarray(metrics["loss"], np.float64)
        lr_c = np.asarray(metrics["lr"], np.float64)
        losses_parts.append(loss_c.reshape(seeds, -1) if seeds > 1 else loss_c[None])
        lr_parts.append(lr_c.reshape(seeds, -1)[0] if seeds > 1 else lr_c)
        steps_run = min(num_steps, (c + 1) * chunk_len)
        # Smoothing is causal: the prefix's values never change, and the last
        # chunk's arrays are the result.
        losses = np.concatenate(losses_parts, axis=1)[:, :steps_run]
        smoothed = smooth(losses, smooth_beta)
        diverged = [
            find_divergence(losses[k], smoothed[k], diverge_threshold, rebound)
            for k in range(seeds)
        ]
        if bar is not None:
            bar.update(steps_run - bar.n)
            last = smoothed[-1, -1]
            bar.set_postfix(lr=f"{lr_c.ravel()[-1]:.3g}", loss=f"{last:.3f}")
        if stop_on_divergence and all(d is not None for d in diverged):
            break
    run_s = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    del state

    lrs = np.concatenate(lr_parts)[:steps_run]
    per_seed = [suggest(lrs, smoothed[k], diverged[k]) for k in range(seeds)]
    suggestions = {
        m: _median([s[m] for s in per_seed], at_least=(seeds + 1) // 2) for m in METHODS
    }
    div_lrs = [float(lrs[d]) if d is not None else None for d in diverged]
    diverged_at_lr = _median(div_lrs, at_least=(seeds + 1) // 2)
    spread = None
    if seeds > 1:
        chosen = [pick(s, method) for s in per_seed]
        valid = [v for v in chosen if v is not None]
        spread = {
            "per_seed": chosen,
            "min": min(valid) if valid else None,
            "max": max(valid) if valid else None,
            "per_method": {m: [s[m] for s in per_seed] for m in METHODS},
            "diverged_at_lr": div_lrs,
        }
    config = {
        "mode": mode,
        "init_value": init_value,
        "end_value": end_value,
        "num_steps": num_steps,
        "batch_size": batch_size,
        "smooth_beta": smooth_beta,
        "diverge_threshold": diverge_threshold,
        "rebound": rebound,
        "chunks": n_chunks,
        "chunk_steps": chunk_len,
    }
    return RangeTestResult(
        lrs=lrs,
        losses=losses[0] if seeds == 1 else losses,
        smoothed_losses=smoothed[0] if seeds == 1 else smoothed,
        diverged_at_lr=diverged_at_lr,
        diverged_at_step=diverged,
        suggestions=suggestions,
        suggested_lr=pick(suggestions, method),
        method=method,
        seeds=seeds,
        spread=spread,
        steps_run=steps_run,
        timings={
            "compile_s": compile_s,
            "run_s": run_s,
            "steps_per_s": steps_run * seeds / run_s if run_s > 0 else None,
        },
        device=describe_devices(
            list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
        ),
        config=config,
    )


def _median(values: Sequence[float | None], at_least: int = 1) -> float | None:
    """Median over the non-None values; None if fewer than ``at_least`` exist.

    A geometric median would also do; lrs are compared on a log axis, and for an
    odd count the two agree. For an even count this takes the geometric mean of
    the middle pair.
    """
    v = sorted(x for x in values if x is not None)
    if len(v) < max(1, at_least):
        return None
    mid = len(v) // 2
    if len(v) % 2:
        return float(v[mid])
    return float(math.sqrt(v[mid - 1] * v[mid]))
