"""The learning-rate range test: one compiled sweep, any model, loss and data.

The lr grows from ``init_value`` to ``end_value`` while the model trains through
the one step (:func:`lrjax.step.make_step`); the loss of every batch is recorded
BEFORE its update. The sweep runs as compiled chunks (:mod:`lrjax.loop`); between
chunks the host smooths the losses, checks for divergence (:mod:`lrjax.suggest`)
and stops once every seed has diverged. The caller's model is never changed: the
sweep trains copies of its arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrjax import schedules
from lrjax.batches import ArraySource, IterSource, as_source, is_arrays
from lrjax.loop import Program, check_loop, drive, uniform_plan
from lrjax.results import (
    check_memory,
    describe_devices,
    estimate_population,
    json_floats,
    population_mesh,
    tree_bytes,
)
from lrjax.step import (
    LossFn,
    OptimizerFactory,
    check_accumulate,
    classification_loss,
    fresh,
    init_state,
    make_optimizer,
    make_step,
    split_model,
)
from lrjax.suggest import (
    DEFAULT_METHOD,
    METHODS,
    DivergenceTracker,
    Smoother,
    median,
    pick,
    suggest,
)

MODES = ("exponential", "linear")
MAX_CHUNK_STEPS = 4096  # bounds a chunk's inputs, whatever the sweep length


@dataclasses.dataclass
class RangeTestResult:
    """What a range test returns. Arrays are numpy, on the host.

    ``losses`` and ``smoothed_losses`` are ``[steps_run]`` for one seed and
    ``[seeds, steps_run]`` for several; ``lrs`` is ``[steps_run]`` (the same sweep
    for every seed); ``metrics`` holds the loss function's other metrics per
    update, shaped like ``losses``. ``suggestions`` hold the median over seeds of
    each method; ``spread`` is None for one seed, else per-seed values of the
    chosen method (``per_seed``), their ``min`` and ``max``, and every method's
    per-seed values (``per_method``). ``stop_reason`` is ``"diverged"``,
    ``"data"`` (a one-shot iterable ran out), or None (the sweep ran to its end).
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    metrics: dict[str, np.ndarray]
    diverged_at_lr: float | None
    diverged_at_step: list[int | None]
    suggestions: dict[str, float | None]
    suggested_lr: float | None
    method: str
    seeds: int
    spread: dict[str, Any] | None
    steps_run: int
    stop_reason: str | None
    timings: dict[str, Any]
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
            "metrics": {k: json_floats(v) for k, v in self.metrics.items()},
            "seeds": self.seeds,
            "spread": self.spread,
            "steps_run": self.steps_run,
            "stop_reason": self.stop_reason,
            "timings": self.timings,
            "device": self.device,
            "config": self.config,
        }


def _check_range_args(init_value, end_value, mode, seeds, beta, threshold, method):
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
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"smoothing beta must be in [0, 1), got {beta}")
    if not threshold > 1.0:
        raise ValueError(f"diverge threshold must be > 1, got {threshold}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _check_steps(num_steps: Any) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    return num_steps


def _fold_rngs(model_state: Any, k: int) -> Any:
    """Every rng key in ``model_state`` folded with ``k``: seed k's own streams."""

    def fold(a):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.fold_in(a, k)
        return a

    return jax.tree.map(fold, model_state)


def init_members(model: Any, key: jax.Array, seeds: int, check: Callable | None = None):
    """``(Model, params, model_state)`` per seed: stacked ``[seeds, ...]`` if > 1.

    ``model`` is an ``nnx.Module`` or a params pytree (shared by every seed; a
    module's rng streams are folded with the seed index), or a factory
    ``key -> model`` called with ``fold_in(fold_in(key, k), 1)`` for seed ``k``.
    Every array is a fresh copy: the caller's model is never donated or changed.
    ``check(spec, params, model_state)`` sees the first member before the others
    are built (a memory estimate refuses an impossible population there).
    """
    factory = callable(model) and not isinstance(model, nnx.Module)
    members = []
    for k in range(seeds):
        m = (
            model(jax.random.fold_in(jax.random.fold_in(key, k), 1))
            if factory
            else model
        )
        spec, params, rest = split_model(m)
        if not factory and k > 0:
            rest = _fold_rngs(rest, k)
        if k == 0 and check is not None:
            check(spec, params, rest)
        members.append((spec, fresh(params), fresh(rest)))
    spec = members[0][0]
    if seeds == 1:
        return spec, members[0][1], members[0][2]
    if spec.is_module and any(m[0].train_def != spec.train_def for m in members):
        raise ValueError("the model factory built modules of different structures")
    params = jax.tree.map(lambda *a: jnp.stack(a), *[m[1] for m in members])
    rest = jax.tree.map(lambda *a: jnp.stack(a), *[m[2] for m in members])
    return spec, params, rest


def lr_range_test(
    model: Any,
    optimizer: OptimizerFactory,
    data: Any,
    *,
    key: jax.Array,
    loss_fn: LossFn | None = None,
    preprocess: Callable | None = None,
    batch_size: int | None = None,
    num_steps: int | None = None,
    accumulate_steps: int = 1,
    mode: str = "exponential",
    init_value: float = 1e-5,
    end_value: float = 10.0,
    smooth_beta: float = 0.98,
    diverge_threshold: float = 4.0,
    rebound: float | None = 0.5,
    seeds: int = 1,
    method: str = DEFAULT_METHOD,
    stop_on_divergence: bool = True,
    chunks: int = 8,
    loop: str = "auto",
    progress: bool = False,
) -> RangeTestResult:
    """Runs the learning-rate range test and suggests a learning rate.

    The lr of update ``t`` is the sweep's value at ``t``
    (:func:`lrjax.exponential_sweep` or :func:`lrjax.linear_sweep`: ``init_value``
    at the first update, ``end_value`` at update ``num_steps - 1``).

    Args:
      model: an ``nnx.Module`` (BatchNorm, Dropout, any state), a params pytree
        (with a ``loss_fn(params, batch)``), or a factory ``key -> model`` so that
        every seed gets its own initialisation. Never modified.
      optimizer: ``learning_rate -> optax.GradientTransformation``, e.g.
        ``optax.sgd`` or ``lambda lr: optax.adamw(lr, weight_decay=1e-4)``.
      data: in-memory arrays (a pytree with a common leading example axis, e.g.
        ``(x, y)`` or ``{"image": x, "label": y}``), or any iterable of batch
        pytrees (a generator, a grain dataset); see :mod:`lrjax.batches`.
      key: a ``jax.random.key``; seed ``k`` uses ``fold_in(key, k)`` for its batch
        order (and ``fold_in(fold_in(key, k), 1)`` for a factory's initialisation).
      loss_fn: ``loss_fn(model, batch) -> loss | (loss, {name: scalar})``; default
        :func:`lrjax.classification_loss` (softmax cross-entropy and accuracy on
        ``(x, y)`` batches).
      preprocess: ``batch -> batch`` inside the compiled step (e.g.
        :func:`lrjax.data.scale_images`); default none.
      batch_size: examples per (micro-)batch of in-memory data (default 32); an
        iterable's batches are used as they come.
      num_steps: updates in the sweep; default one epoch of in-memory data, or
        ``len(data)`` of an iterable that has one.
      accumulate_steps: micro-batches averaged into each update; the sweep has
        one point per update.
      mode: ``"exponential"`` or ``"linear"`` sweep.
      init_value, end_value: the sweep's first and last lr (both > 0).
      smooth_beta: EMA factor of the smoothed loss (bias-corrected).
      diverge_threshold, rebound: :func:`lrjax.find_divergence`'s rules.
      seeds: independent runs (initialisations, batch orders, dropout streams) in
        ONE compiled program (``vmap``; spread over local devices when several).
      method: the suggestion reported as ``suggested_lr``, one of ``METHODS``.
      stop_on_divergence: stop at the chunk where every seed has diverged.
      chunks: the sweep runs as this many compiled chunks (at most
        ``MAX_CHUNK_STEPS`` updates each); the host checks between them.
      loop: ``"auto"``, ``"scan"``, ``"unroll"`` or ``"dispatch"``
        (:mod:`lrjax.loop`); the choice is ``timings["loop"]``.
      progress: show a tqdm progress bar.

    Returns:
      A :class:`RangeTestResult`.

    Raises:
      ValueError, TypeError: a bad argument, naming it and what is allowed.
    """
    _check_range_args(
        init_value, end_value, mode, seeds, smooth_beta, diverge_threshold, method
    )
    k = check_accumulate(accumulate_steps)
    check_loop(loop)
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"chunks must be an integer >= 1, got {chunks!r}")
    memory: dict[str, Any] = {}

    def check(spec, params, rest):
        opt = jax.eval_shape(make_optimizer(optimizer, init_value).init, params)
        member = tree_bytes(params) + tree_bytes(rest) + tree_bytes(opt)
        batch = 0
        if is_arrays(data):
            per_example = tree_bytes(jax.tree.map(lambda a: a[:1], data))
            batch = per_example * (32 if batch_size is None else batch_size) * k
        memory.update(estimate_population(member, batch, seeds))
        check_memory(memory, "seeds (--seeds)")

    spec, params, rest = init_members(model, key, seeds, check)
    seed_keys = [jax.random.fold_in(key, s) for s in range(seeds)]
    mesh = population_mesh(seeds, "seed") if seeds > 1 else None
    P = jax.sharding.PartitionSpec
    rep = None if mesh is None else jax.sharding.NamedSharding(mesh, P())
    source = as_source(
        data,
        batch_size=32 if batch_size is None else batch_size,
        keys=seed_keys if seeds > 1 else seed_keys[0],
        accumulate_steps=k,
        sharding=rep,
        index_sharding=None
        if mesh is None
        else jax.sharding.NamedSharding(mesh, P(None, "seed")),
    )
    if isinstance(source, IterSource):
        if batch_size is not None:
            raise ValueError(
                "batch_size applies to in-memory data; an iterable's batches are "
                "used as they come"
            )
        source.sharding = rep
        if num_steps is None:
            if not hasattr(data, "__len__"):
                raise ValueError(
                    "num_steps is required for an iterable of batches without len()"
                )
            num_steps = len(data) // k
    elif num_steps is None:
        num_steps = source.steps_per_epoch // k
    num_steps = _check_steps(num_steps)

    sweep = (
        schedules.exponential_sweep if mode == "exponential" else schedules.linear_sweep
    )
    tx = make_optimizer(optimizer, sweep(init_value, end_value, num_steps))
    loss_fn = classification_loss() if loss_fn is None else loss_fn

    def build(unroll: bool):
        return make_step(
            spec,
            loss_fn,
            tx,
            preprocess=preprocess,
            accumulate_steps=k,
            unroll=unroll,
        )

    members = None
    if seeds > 1:
        members = "own" if isinstance(source, ArraySource) else "shared"
    program = Program(build, gathers=source.gathers, members=members, loop=loop)
    init = lambda p, r: init_state(p, r, tx)  # noqa: E731
    if seeds > 1:
        init = jax.vmap(init)
    shard = None if mesh is None else jax.sharding.NamedSharding(mesh, P("seed"))
    state = jax.jit(init, out_shardings=shard)(params, rest)
    del params, rest

    smoother = Smoother(seeds, smooth_beta)
    trackers = [DivergenceTracker(diverge_threshold, rebound) for _ in range(seeds)]
    parts: dict[str, list[np.ndarray]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, desc="lr range test", unit="step", leave=False)

    def record(end):
        n = min(end.hi, num_steps) - end.lo
        for name, v in end.metrics.items():
            v = np.asarray(v, np.float64)[:n]
            parts.setdefault(name, []).append(v.T if seeds > 1 else v[None])
        losses = parts["loss"][-1]
        smoothed = smoother.push(losses)
        parts.setdefault("smoothed", []).append(smoothed)
        diverged = [t.push(losses[s], smoothed[s]) for s, t in enumerate(trackers)]
        if bar is not None:
            bar.update(n)
            lr = float(parts["lr"][-1][0, -1])
            bar.set_postfix(lr=f"{lr:.3g}", loss=f"{smoothed[-1, -1]:.3f}")
        if stop_on_divergence and all(d is not None for d in diverged):
            return "diverged"
        return None

    plan = uniform_plan(num_steps, chunks, MAX_CHUNK_STEPS)
    out = drive(program, state, source, plan, hooks=[record])
    if bar is not None:
        bar.close()
    if "loss" not in parts:
        raise ValueError("the data gave no batch: the iterable is empty")

    cat = {name: np.concatenate(v, axis=1) for name, v in parts.items()}
    steps_run = cat["loss"].shape[1]
    lrs = cat["lr"][0]
    losses, smoothed = cat.pop("loss"), cat.pop("smoothed")
    cat.pop("lr")
    diverged = [t.found for t in trackers]
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
    one = (lambda a: a[0]) if seeds == 1 else (lambda a: a)  # noqa: E731
    config = {
        "mode": mode,
        "init_value": init_value,
        "end_value": end_value,
        "num_steps": num_steps,
        "batch_size": source.batch_size,
        "accumulate_steps": k,
        "smooth_beta": smooth_beta,
        "diverge_threshold": diverge_threshold,
        "rebound": rebound,
        "chunks": len(plan),
        "chunk_steps": plan[0][1] - plan[0][0],
        "data": "arrays" if isinstance(source, ArraySource) else "iterable",
        "memory": memory,
    }
    if isinstance(source, IterSource):
        config.update(batches_skipped=source.skipped, data_restarts=source.restarts)
    run_s = out.run_s
    return RangeTestResult(
        lrs=lrs,
        losses=one(losses),
        smoothed_losses=one(smoothed),
        metrics={name: one(v) for name, v in cat.items()},
        diverged_at_lr=median(div_lrs, at_least=half),
        diverged_at_step=diverged,
        suggestions=suggestions,
        suggested_lr=pick(suggestions, method),
        method=method,
        seeds=seeds,
        spread=spread,
        steps_run=steps_run,
        stop_reason=out.stop_reason,
        timings={
            "compile_s": program.compile_s,
            "run_s": run_s,
            "steps_per_s": steps_run * seeds / run_s if run_s > 0 else None,
            "loop": program.loop,
        },
        device=describe_devices(
            list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
        ),
        config=config,
    )
