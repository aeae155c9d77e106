"""The spec objects (``lrjax.specs``): each field's check in one line, the keywords
of 0.2 told where they moved, and a range test built from specs against a plain
Python loop of the same step."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrjax
from lrjax import Divergence, Execution, FitConfig, GridConfig, Population, Sweep
from lrjax._src.batches import batch_indices
from lrjax._src.step import init_state, make_optimizer, make_step, split_model

# ------------------------------------------------------------ each field's check


@pytest.mark.parametrize(
    ("spec", "fields", "match"),
    [
        (Sweep, dict(num_steps=1), "num_steps must be an integer >= 2, got 1"),
        (Sweep, dict(num_steps=10.0), "num_steps must be an integer >= 2, got 10.0"),
        (Sweep, dict(num_steps=True), "num_steps must be an integer >= 2, got True"),
        (Sweep, dict(init_value=0.0), "learning rates must be > 0, got init_value=0.0"),
        (Sweep, dict(end_value=-1.0), "learning rates must be > 0, .*end_value=-1.0"),
        (
            Sweep,
            dict(init_value=1.0, end_value=0.1),
            r"init_value must be < end_value, got 1.0 >= 0.1",
        ),
        (Sweep, dict(mode="cosine"), r"mode must be one of \(.*\), got 'cosine'"),
        (Sweep, dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (Sweep, dict(accumulate_steps=0), "accumulate_steps must be an integer >= 1"),
        (
            Divergence,
            dict(smooth_beta=1.0),
            r"smooth_beta must be in \[0, 1\), got 1.0",
        ),
        (Divergence, dict(smooth_beta=-0.1), r"smooth_beta must be in \[0, 1\)"),
        (Divergence, dict(threshold=1.0), "threshold must be > 1, got 1.0"),
        (Divergence, dict(rebound=-0.5), "rebound must be a number >= 0 or None"),
        (Divergence, dict(stop="yes"), "stop must be True or False, got 'yes'"),
        (Population, dict(seeds=0), "seeds must be an integer >= 1, got 0"),
        (Population, dict(seeds=1.5), "seeds must be an integer >= 1, got 1.5"),
        (
            Population,
            dict(sweep_over={"momentum": [0.9, 1.0]}),
            r"momentum must be in \[0, 1\), got 1",
        ),
        (Population, dict(sweep_over={"lr": [0.1]}), "cannot name the learning rate"),
        (Population, dict(layout="pmap"), r"layout must be one of .*, got 'pmap'"),
        (Execution, dict(chunks=0), "chunks must be an integer >= 1, got 0"),
        (Execution, dict(loop="while"), "loop must be one of .*, got 'while'"),
        (Execution, dict(progress=1), "progress must be True or False, got 1"),
        (GridConfig, dict(epochs=0), "epochs must be an integer >= 1, got 0"),
        (GridConfig, dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (GridConfig, dict(schedule=0.5), "schedule must be a unit schedule"),
        (
            GridConfig,
            dict(eval_batch_size=0),
            "eval_batch_size must be an integer >= 1",
        ),
        (FitConfig, dict(epochs=0), "epochs must be an integer >= 1, got 0"),
        (FitConfig, dict(epochs=1.5), "epochs must be an integer >= 1, got 1.5"),
        (FitConfig, dict(patience=-1), "patience must be an integer >= 0, got -1"),
        (FitConfig, dict(monitor_mode="up"), "monitor_mode must be 'min' or 'max'"),
        (FitConfig, dict(hooks=[1]), "hooks must be lrjax.Hook objects, got int"),
    ],
)
def test_a_bad_field_is_one_line_naming_it(spec, fields, match):
    with pytest.raises(ValueError, match=match) as e:
        spec(**fields)
    assert "\n" not in str(e.value)


def test_defaults_are_0_2s_and_counts_become_ints():
    assert Sweep() == Sweep(None, 1e-5, 10.0, "exponential", None, 1)
    assert Divergence() == Divergence(0.98, 4.0, 0.5, True)
    assert Population() == Population(1, None, "auto")
    assert Execution() == Execution(8, "auto", False)
    assert GridConfig() == GridConfig(1, 32, None, 1000)
    sweep = Sweep(num_steps=np.int64(5), accumulate_steps=np.int32(2))
    assert type(sweep.num_steps) is int and type(sweep.accumulate_steps) is int
    assert type(Population(seeds=np.int64(2)).seeds) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        sweep.num_steps = 10  # type: ignore[misc]


def test_the_sweep_schedule_is_the_mode_s():
    t = np.arange(5)
    np.testing.assert_array_equal(
        Sweep(init_value=0.1, end_value=1.0).schedule(5)(t),
        lrjax.exponential_sweep(0.1, 1.0, 5)(t),
    )
    np.testing.assert_array_equal(
        Sweep(init_value=0.1, end_value=1.0, mode="linear").schedule(5)(t),
        lrjax.linear_sweep(0.1, 1.0, 5)(t),
    )


# --------------------------------------------------------- the moved keywords

X = np.zeros((64, 3), np.float32)
Y = np.zeros(64, np.int32)
W = jnp.zeros((3, 2))
KEY = jax.random.key(0)


def call(function: str, **kw):
    """Each public function with the arguments before its specs (never reached:
    the moved keywords are refused first)."""
    if function == "lr_range_test":
        return lrjax.lr_range_test(W, optax.sgd, (X, Y), key=KEY, **kw)
    if function == "step_range_test":
        return lrjax.step_range_test(lambda s, b: (s, {"loss": 0.0}), W, (X, Y), **kw)
    if function == "lr_grid":
        return lrjax.lr_grid(W, optax.sgd, (X, Y), (X, Y), lrs=[0.1], key=KEY, **kw)
    return lrjax.recipe_grid(
        W, optax.sgd, (X, Y), (X, Y), lrs=[0.1], key=KEY, families={"c": None}, **kw
    )


@pytest.mark.parametrize(
    ("function", "kw", "message"),
    [
        (
            "lr_range_test",
            dict(num_steps=100),
            "lr_range_test: num_steps moved in 0.3.0: pass "
            "sweep=lrjax.Sweep(num_steps=100)",
        ),
        (
            "lr_range_test",
            dict(seeds=3, smooth_beta=0.9, init_value=1e-4, chunks=2),
            "lr_range_test: seeds, smooth_beta, init_value, chunks moved in 0.3.0: "
            "pass population=lrjax.Population(seeds=3), "
            "divergence=lrjax.Divergence(smooth_beta=0.9), "
            "sweep=lrjax.Sweep(init_value=0.0001), execution=lrjax.Execution(chunks=2)",
        ),
        (
            "lr_range_test",
            dict(diverge_threshold=5.0, stop_on_divergence=False),
            "lr_range_test: diverge_threshold, stop_on_divergence moved in 0.3.0: "
            "pass divergence=lrjax.Divergence(threshold=5.0, stop=False)",
        ),
        (
            "lr_range_test",
            dict(sweep_over={"momentum": [0.0, 0.9]}),
            "lr_range_test: sweep_over moved in 0.3.0: pass "
            "population=lrjax.Population(sweep_over={'momentum': [0.0, 0.9]})",
        ),
        (
            "lr_range_test",
            dict(population="vmap"),
            "lr_range_test: population='vmap' moved in 0.3.0: pass "
            "population=lrjax.Population(layout='vmap')",
        ),
        (
            "step_range_test",
            dict(num_steps=50, batch_size=8),
            "step_range_test: num_steps, batch_size moved in 0.3.0: pass "
            "sweep=lrjax.Sweep(num_steps=50, batch_size=8)",
        ),
        (
            "step_range_test",
            dict(progress=True),
            "step_range_test: progress moved in 0.3.0: pass "
            "execution=lrjax.Execution(progress=True)",
        ),
        (
            "lr_grid",
            dict(epochs=2, batch_size=16, seeds=2),
            "lr_grid: epochs, batch_size, seeds moved in 0.3.0: pass "
            "config=lrjax.GridConfig(epochs=2, batch_size=16), "
            "population=lrjax.Population(seeds=2)",
        ),
        (
            "lr_grid",
            dict(schedule=lambda t: 1.0, loop="scan"),
            "lr_grid: schedule, loop moved in 0.3.0: pass "
            "config=lrjax.GridConfig(schedule=...), "
            "execution=lrjax.Execution(loop='scan')",
        ),
        (
            "recipe_grid",
            dict(epochs=2),
            "recipe_grid: epochs moved in 0.3.0: pass "
            "config=lrjax.GridConfig(epochs=2)",
        ),
    ],
)
def test_a_moved_keyword_says_where_it_went(function, kw, message):
    with pytest.raises(TypeError) as e:
        call(function, **kw)
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("function", "kw", "message"),
    [
        (
            "lr_range_test",
            dict(num_step=100),
            "lr_range_test() got an unexpected keyword argument 'num_step'",
        ),
        (  # never a keyword of step_range_test
            "step_range_test",
            dict(seeds=2),
            "step_range_test() got an unexpected keyword argument 'seeds'",
        ),
        (  # the range test's, not the grid's
            "lr_grid",
            dict(num_steps=2),
            "lr_grid() got an unexpected keyword argument 'num_steps'",
        ),
        (
            "lr_range_test",
            dict(sweep={"num_steps": 3}),
            "lr_range_test: sweep must be an lrjax.Sweep or None, got dict",
        ),
        (
            "lr_grid",
            dict(config=lrjax.FitConfig()),
            "lr_grid: config must be an lrjax.GridConfig or None, got FitConfig",
        ),
    ],
)
def test_an_unknown_keyword_or_a_wrong_spec_is_named(function, kw, message):
    with pytest.raises(TypeError) as e:
        call(function, **kw)
    assert str(e.value) == message


def test_the_drivers_signatures_are_their_own():
    """The 0.2 keywords are caught by a decorator, not a ``**moved`` parameter:
    what ``inspect`` (the API docs, editors) shows is what the driver takes."""
    import inspect

    for name, params in [
        ("lr_range_test", 11), ("step_range_test", 9), ("lr_grid", 12), ("fit", 10),
    ]:  # fmt: skip
        sig = inspect.signature(getattr(lrjax, name))
        kinds = {p.kind for p in sig.parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds, name
        assert len(sig.parameters) == params, (name, list(sig.parameters))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (
            dict(population=Population(sweep_over={"momentum": [0.0, 0.9]})),
            "lr_grid has no sweep_over",
        ),
        (
            dict(execution=Execution(chunks=4)),
            r"^lr_grid runs one compiled chunk per epoch: Execution.chunks must be 8, "
            r"got 4$",
        ),
    ],
)
def test_the_grid_refuses_what_it_does_not_have(kw, match):
    with pytest.raises(ValueError, match=match):
        call("lr_grid", **kw)


# -------------------------------------------- the same numbers through the specs


def test_a_range_test_from_specs_equals_a_python_loop_of_the_same_step():
    """The linear model through the compiled sweep, every spec set, against the
    documented batch order and the one step in a plain loop."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int32)
    loss_fn = lrjax.classification_loss(lambda w, x: x @ w)
    w = jnp.asarray(rng.normal(size=(4, 2)) * 0.1, jnp.float32)
    key, steps, batch = jax.random.key(4), 30, 16
    r = lrjax.lr_range_test(
        w, optax.sgd, (x, y), key=key, loss_fn=loss_fn,
        sweep=Sweep(num_steps=steps, init_value=1e-3, end_value=3.0, batch_size=batch),
        divergence=Divergence(smooth_beta=0.9, threshold=5.0, stop=False),
        population=Population(seeds=1, layout="vmap"),
        execution=Execution(chunks=3, loop="scan"),
    )  # fmt: skip
    sched = lrjax.exponential_sweep(1e-3, 3.0, steps)
    tx = make_optimizer(optax.sgd, sched)
    spec, params, rest = split_model(w)
    step = jax.jit(make_step(spec, loss_fn, tx))
    state = init_state(params, rest, tx)
    idx = np.asarray(batch_indices(jax.random.fold_in(key, 0), len(y), batch, steps))
    losses = []
    for t in range(steps):
        state, m = step(state, (x[idx[t]], y[idx[t]]))
        losses.append(float(m["loss"]))
    assert r.steps_run == steps and r.timings.loop == "scan"
    np.testing.assert_allclose(r.losses[0], losses, rtol=2e-5, atol=1e-6)
    rtol = (math.log(3e3) + 1) * np.finfo(np.float32).eps
    np.testing.assert_allclose(r.lrs, sched(np.arange(steps)), rtol=rtol, atol=0)
    np.testing.assert_array_equal(r.smoothed_losses, lrjax.smooth(r.losses, 0.9))
    # result.config keeps 0.2's names, and its JSON 0.2's keys (consumers read them)
    assert {
        "mode": "exponential", "init_value": 1e-3, "end_value": 3.0,
        "num_steps": steps, "batch_size": batch, "accumulate_steps": 1,
        "smooth_beta": 0.9, "diverge_threshold": 5.0, "rebound": 0.5, "chunks": 3,
    }.items() <= r.to_json()["config"].items()  # fmt: skip
    assert (r.config.num_steps, r.config.smooth_beta, r.config.chunks) == (
        steps, 0.9, 3,
    )  # fmt: skip
