"""The results' timings, memory and settings are frozen records (#18) whose JSON is
the dicts the drivers wrote before: the same keys, in the same order, the same
values. The key lists below were read from the drivers' code before the records
(range_test ``_result`` and ``_run_config``, own_step, lr_grid ``_timings`` and
``_grid``, fit ``_timings``, commit c84a8dc), so that a record that writes a key
more, less or elsewhere fails here."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrjax
from lrjax._src.results import MemoryEstimate, Timings, estimate_population

# ------------------------------------------------------ the keys written before

RANGE_TIMINGS = ["compile_s", "run_s", "steps_per_s", "loop"]  # + "population"
STEP_TIMINGS = ["first_step_s", "run_s", "steps_per_s", "loop"]
GRID_TIMINGS = [
    "compile_s", "run_s", "steps_per_s", "model_epochs_per_s", "loop", "population",
]  # fmt: skip
FIT_TIMINGS = ["compile_s", "run_s", "epoch_s", "mean_epoch_s", "total_s", "loop"]
ESTIMATE = [
    "member_state_bytes", "batch_bytes", "members", "estimate_bytes",
    "per_device_bytes", "device_limit_bytes",
]  # fmt: skip
# lr_range_test; + "sweep" with sweep_over, + the two of ITERABLE for an iterable
RANGE_CONFIG = [
    "optimizer", "mode", "init_value", "end_value", "num_steps", "batch_size",
    "accumulate_steps", "smooth_beta", "diverge_threshold", "rebound", "chunks",
    "chunk_steps", "data", "memory",
]  # fmt: skip
STEP_CONFIG = [
    "mode", "init_value", "end_value", "num_steps", "batch_size", "smooth_beta",
    "diverge_threshold", "rebound", "data", "hyperparam",
]  # fmt: skip
ITERABLE = ["batches_skipped", "data_restarts"]
GRID_MEMORY = ["state_bytes", "member_bytes", "members", "padded_members", "estimate"]
# lr_grid; + "family" from recipe_grid
GRID_CONFIG = [
    "batch_size", "epochs", "seeds", "num_lrs", "eval_batch_size", "n_train", "n_val",
]  # fmt: skip

N, BATCH = 64, 16


def _data():
    x = np.random.default_rng(0).normal(size=(N, 3)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32)


LOSS = lrjax.classification_loss(lambda p, x: x @ p)
W = jnp.zeros((3, 2))


def _momentum(lr, momentum=0.0):
    return optax.sgd(lr, momentum=momentum)


def assert_json(doc: dict, record, keys: list[str]) -> None:
    """``doc`` (a result's JSON entry) has exactly ``keys`` in that order, each
    the record's value (a tuple as a list, a nested record as its dict)."""
    assert list(doc) == keys
    for k in keys:
        value = getattr(record, k)
        if hasattr(value, "to_json"):
            value = value.to_json()
        elif isinstance(value, tuple):
            value = list(value)
        assert doc[k] == value, k


def assert_range_timings(r: lrjax.RangeTestResult, members: int) -> None:
    t, doc = r.timings, r.to_json()["timings"]
    keys = RANGE_TIMINGS + (["population"] if members > 1 else [])
    assert t.driver == "lr_range_test"
    assert_json(doc, t, keys)
    assert t.compile_s > 0 and t.run_s > 0 and t.loop == "scan"
    assert t.steps_per_s == pytest.approx(r.steps_run * members / t.run_s)
    assert t.population == (None if members == 1 else "vmap")


# ------------------------------------------------------------------ each driver


def test_lr_range_test_writes_the_keys_it_wrote():
    sweep = lrjax.Sweep(num_steps=8, batch_size=BATCH, init_value=1e-3, end_value=1.0)
    r = lrjax.lr_range_test(W, optax.sgd, _data(), key=jax.random.key(0),
                            loss_fn=LOSS, sweep=sweep)  # fmt: skip
    assert_range_timings(r, members=1)
    c, doc = r.config, r.to_json()["config"]
    assert_json(doc, c, RANGE_CONFIG)
    assert doc | {"chunks": None, "chunk_steps": None, "memory": None} == {
        "optimizer": "sgd", "mode": "exponential", "init_value": 1e-3,
        "end_value": 1.0, "num_steps": 8, "batch_size": BATCH, "accumulate_steps": 1,
        "smooth_beta": 0.98, "diverge_threshold": 4.0, "rebound": 0.5,
        "chunks": None, "chunk_steps": None, "data": "arrays", "memory": None,
    }  # fmt: skip
    assert c.chunks >= 1 and 1 <= c.chunk_steps <= 8
    assert_json(doc["memory"], c.memory, ESTIMATE)
    again = estimate_population(c.memory.member_state_bytes, c.memory.batch_bytes, 1)
    limit = c.memory.device_limit_bytes  # the host's free memory: it moves
    assert c.memory == dataclasses.replace(again, device_limit_bytes=limit)
    assert c.sweep is None and c.hyperparam is None and c.data_restarts is None


def test_lr_range_test_with_seeds_a_sweep_and_an_iterable():
    key = jax.random.key(0)
    sweep = lrjax.Sweep(num_steps=6, batch_size=BATCH)
    pop = lrjax.Population(seeds=2, sweep_over={"momentum": [0.0, 0.5]})
    r = lrjax.lr_range_test(W, _momentum, _data(), key=key, loss_fn=LOSS,
                            sweep=sweep, population=pop)  # fmt: skip
    assert_range_timings(r, members=4)
    doc = r.to_json()["config"]
    assert_json(doc, r.config, RANGE_CONFIG + ["sweep"])
    assert doc["optimizer"] == "_momentum" and doc["memory"]["members"] == 4
    assert doc["sweep"] == {
        "name": "momentum", "values": [0.0, 0.5], "shown": r.sweep.best or 0
    }  # fmt: skip
    x, y = _data()
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, N, BATCH)]
    it = lrjax.lr_range_test(W, optax.sgd, iter(batches), key=key, loss_fn=LOSS,
                             sweep=lrjax.Sweep(num_steps=4))  # fmt: skip
    doc = it.to_json()["config"]
    assert_json(doc, it.config, RANGE_CONFIG + ITERABLE)
    assert doc["data"] == "iterable" and doc["batch_size"] == BATCH
    assert doc["batches_skipped"] == 0 and doc["data_restarts"] == 0
    assert doc["memory"]["batch_bytes"] == 0  # an iterable's batches: not counted


def _own_step():
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)

    def loss(p, batch):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(x @ p, y).mean()

    @jax.jit
    def step(state, batch):
        params, opt = state
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), {"loss": value}

    return step, (W, tx.init(W))


def test_step_range_test_writes_the_keys_it_wrote():
    step, state = _own_step()
    sweep = lrjax.Sweep(num_steps=6, batch_size=BATCH, end_value=1.0)
    r = lrjax.step_range_test(step, state, _data(), key=jax.random.key(0),
                              sweep=sweep)  # fmt: skip
    t = r.timings
    assert t.driver == "step_range_test"
    assert_json(r.to_json()["timings"], t, STEP_TIMINGS)
    assert t.loop == "dispatch" and 0 < t.first_step_s <= t.run_s
    rate = (r.steps_run - 1) / (t.run_s - t.first_step_s)  # after the first
    assert t.steps_per_s == pytest.approx(rate)
    assert t.compile_s is None and t.population is None
    doc = r.to_json()["config"]
    assert_json(doc, r.config, STEP_CONFIG)
    assert doc == {
        "mode": "exponential", "init_value": 1e-5, "end_value": 1.0, "num_steps": 6,
        "batch_size": BATCH, "smooth_beta": 0.98, "diverge_threshold": 4.0,
        "rebound": 0.5, "data": "arrays", "hyperparam": r.config.hyperparam,
    }  # fmt: skip
    assert r.config.hyperparam.endswith("hyperparams['learning_rate']")
    assert r.config.optimizer is None and r.config.memory is None
    x, y = _data()
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, N, BATCH)]
    it = lrjax.step_range_test(step, state, batches, sweep=lrjax.Sweep(num_steps=6))
    doc = it.to_json()["config"]
    assert_json(doc, it.config, STEP_CONFIG + ITERABLE)
    assert doc["data"] == "iterable" and doc["data_restarts"] == 1


def _grid(**kw):
    data = _data()
    return dict(
        model=W, optimizer=optax.sgd, train_data=data, val_data=data,
        lrs=[0.1, 1.0], key=jax.random.key(0), loss_fn=LOSS,
        config=lrjax.GridConfig(batch_size=BATCH),
        population=lrjax.Population(seeds=2), **kw,
    )  # fmt: skip


def test_lr_grid_and_recipe_grid_write_the_keys_they_wrote():
    g = lrjax.lr_grid(**_grid())
    doc = g.to_json()
    t = g.timings
    assert t.driver == "lr_grid"
    assert_json(doc["timings"], t, GRID_TIMINGS)
    steps = N // BATCH
    assert t.steps_per_s == pytest.approx(steps * 4 / t.run_s)
    assert t.model_epochs_per_s == pytest.approx(4 / t.run_s)
    assert (t.loop, t.population) == ("scan", "vmap")
    assert_json(doc["memory"], g.memory, GRID_MEMORY)
    assert_json(doc["memory"]["estimate"], g.memory.estimate, ESTIMATE)
    assert g.memory.members == 4 and g.memory.state_bytes == 4 * g.memory.member_bytes
    assert_json(doc["config"], g.config, GRID_CONFIG)
    assert doc["config"] == {
        "batch_size": BATCH, "epochs": 1, "seeds": 2, "num_lrs": 2,
        "eval_batch_size": N, "n_train": N, "n_val": N,
    }  # fmt: skip
    assert g.config.family is None and "stop_reason" not in doc

    half = lambda t: 0.5 * jnp.ones_like(t, jnp.float32)  # noqa: E731
    grids = lrjax.recipe_grid(**_grid(), families={"constant": None, "half": half})
    assert list(grids) == ["constant", "half"]
    for name, r in grids.items():
        doc = r.to_json()
        assert r.config.family == name  # built with it, not set afterwards
        assert_json(doc["config"], r.config, GRID_CONFIG + ["family"])
        assert doc["config"]["family"] == name
        assert_json(doc["timings"], r.timings, GRID_TIMINGS)
        assert doc["memory"]["members"] == 8  # the whole program's
    assert grids["constant"].timings is grids["half"].timings
    assert repr(grids["half"]).startswith("GridResult(family='half', ")


def test_fit_writes_the_keys_it_wrote():
    def run(**kw):
        config = lrjax.FitConfig(
            epochs=2, batch_size=BATCH, learning_rate=0.1, chunks_per_epoch=2, **kw
        )
        return lrjax.fit(W, optax.sgd, _data(), key=jax.random.key(0), loss_fn=LOSS,
                         config=config)  # fmt: skip

    r = run()
    t = r.timings
    assert t.driver == "fit"
    assert_json(t.to_json(), t, FIT_TIMINGS)
    assert len(t.epoch_s) == 2 and t.run_s == pytest.approx(sum(t.epoch_s))
    assert t.mean_epoch_s == pytest.approx(np.mean(t.epoch_s))
    assert t.total_s >= t.run_s and t.average_s is None
    assert isinstance(t.to_json()["epoch_s"], list)
    averaged = run(average_start=0)
    assert averaged.average_count > 0
    t = averaged.timings
    assert_json(t.to_json(), t, FIT_TIMINGS + ["average_s"])
    assert t.average_s >= 0


# ------------------------------------------------------------------ the records


def test_the_records_are_frozen():
    estimate = MemoryEstimate(10, 20, 2, 80, 80, None)
    records = {
        "compile_s": Timings("lr_range_test", compile_s=1.0),
        "members": estimate,
        "num_steps": lrjax.RangeTestSettings(
            driver="step_range_test", mode="linear", init_value=1e-3,
            end_value=1.0, num_steps=10, batch_size=8, smooth_beta=0.9,
            diverge_threshold=4.0, rebound=None, data="arrays", hyperparam="set_lr",
        ),
        "shown": lrjax.SweepOver("momentum", (0.0, 0.9), 1),
        "family": lrjax.GridSettings(8, 1, 1, 2, 8, 64, 64),
        "estimate": lrjax.GridMemory(20, 10, 2, 2, estimate),
    }  # fmt: skip
    for field, record in records.items():
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, field, None)
        assert not hasattr(record, "__getitem__")  # attributes, not keys
    assert records["num_steps"].to_json()["rebound"] is None  # written when None


def test_a_record_holds_only_what_its_driver_fills():
    with pytest.raises(ValueError, match="step_range_test does not fill compile_s"):
        Timings("step_range_test", compile_s=1.0)
    with pytest.raises(ValueError, match="driver must be one of"):
        Timings("train")
    with pytest.raises(ValueError, match="lr_range_test does not fill hyperparam"):
        lrjax.RangeTestSettings(
            driver="lr_range_test", mode="linear", init_value=1e-3, end_value=1.0,
            num_steps=10, batch_size=8, smooth_beta=0.9, diverge_threshold=4.0,
            rebound=None, data="arrays", hyperparam="set_lr",
        )  # fmt: skip
    # a rate that could not be measured is written as None, not left out
    t = Timings("lr_grid", compile_s=0.0, run_s=0.0, loop="scan", population="vmap")
    assert list(t.to_json()) == GRID_TIMINGS and t.to_json()["steps_per_s"] is None
