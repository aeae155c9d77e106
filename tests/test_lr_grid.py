"""lr_grid: the vmapped population against a plain Python loop over make_step."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrjax.models import mlp
from lrjax.population import accuracy_at, lr_grid
from lrjax.schedules import cosine_restarts
from lrjax.training import (
    batch_indices,
    init_state,
    make_evaluate,
    make_optimizer,
    make_step,
)

N_TRAIN, N_VAL, BATCH = 256, 128, 32
# float32 sums in a different order (vmapped vs single matmuls) over a few dozen
# updates: relative differences of ~1e-6 per op, grown by training to ~1e-5.
RTOL, ATOL = 2e-4, 2e-5


def synthetic(n: int, seed: int):
    """8x8 uint8 images with labels from a fixed random linear rule (4 classes)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    w = np.random.default_rng(123).normal(size=(64, 4))
    y = np.argmax((x.reshape(n, -1) / 255.0 - 0.5) @ w, axis=1).astype(np.int32)
    return x, y


X, Y = synthetic(N_TRAIN, 0)
XV, YV = synthetic(N_VAL, 1)
APPLY, _ = mlp(64, 4, (16,), key=jax.random.key(0))


def init(k):
    return mlp(64, 4, (16,), key=k)[1]


def momentum(lr):
    return optax.sgd(lr, momentum=0.9)


def reference(lr, seed, epochs, key, schedule=None, optimizer=momentum):
    """One member trained alone: a Python loop over the jitted step, one by one."""
    seed_key = jax.random.fold_in(key, seed)
    params = init(jax.random.fold_in(seed_key, 1))
    lr_value = lr if schedule is None else (lambda t: lr * schedule(t))
    tx = make_optimizer(optimizer, lr_value)
    state = init_state(params, tx)
    step = jax.jit(make_step(APPLY, tx))
    evaluate = jax.jit(make_evaluate(APPLY, N_VAL))
    steps = N_TRAIN // BATCH
    idx = batch_indices(seed_key, N_TRAIN, BATCH, steps * epochs)
    val_loss, val_acc, train_loss, lrs = [], [], [], []
    for e in range(epochs):
        losses = []
        for i in range(steps):
            state, m = step(state, idx[e * steps + i], (jnp.asarray(X), jnp.asarray(Y)))
            losses.append(float(m["loss"]))
            lrs.append(float(m["lr"]))
        ev = evaluate(state.params, XV, YV)
        val_loss.append(float(ev["loss"]))
        val_acc.append(float(ev["accuracy"]))
        train_loss.append(float(np.mean(np.float32(losses))))
    return np.array(val_loss), np.array(val_acc), np.array(train_loss), np.array(lrs)


@pytest.mark.parametrize("scheduled", [False, True])
def test_population_equals_members_trained_one_by_one(scheduled):
    key = jax.random.key(7)
    lrs = [0.01, 0.05, 0.2]
    unit = cosine_restarts(1.0, first_period=5, min_value=0.1) if scheduled else None
    r = lr_grid(
        APPLY, init, momentum, X, Y, XV, YV,
        lrs=lrs, seeds=2, epochs=2, batch_size=BATCH, schedule=unit, key=key,
    )  # fmt: skip
    assert r.val_accuracy.shape == r.val_loss.shape == r.train_loss.shape == (3, 2, 2)
    for i, lr in enumerate(lrs):
        for s in range(2):
            vl, va, tl, applied = reference(lr, s, 2, key, unit)
            np.testing.assert_allclose(r.val_loss[i, s], vl, rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(r.train_loss[i, s], tl, rtol=RTOL, atol=ATOL)
            # accuracy is a count / N_VAL: a near-tie may flip one example
            np.testing.assert_allclose(r.val_accuracy[i, s], va, atol=1.5 / N_VAL)
        np.testing.assert_allclose(r.applied_lr[i], applied, rtol=1e-6)
    # the learning rates really differ: the test would fail if lr were ignored
    assert np.ptp(r.val_loss[:, 0, -1]) > 1e-3


def test_applied_lr_is_lr_times_schedule():
    unit = cosine_restarts(1.0, first_period=6, period_mult=2)
    lrs = [1e-3, 0.3]
    r = lr_grid(
        APPLY, init, optax.adam, X, Y, XV, YV,
        lrs=lrs, epochs=3, batch_size=BATCH, schedule=unit, key=jax.random.key(0),
    )  # fmt: skip
    t = np.arange(3 * (N_TRAIN // BATCH))
    # the formula itself, independently of lrjax.schedules (T_0 = 6, T_mult = 2)
    n = np.floor(np.log2(t / 6 + 1))
    t_cur, t_i = t - 6 * (2**n - 1), 6 * 2**n
    expected = (1 + np.cos(np.pi * t_cur / t_i)) / 2
    assert r.applied_lr.shape == (2, len(t))
    for i, lr in enumerate(lrs):
        np.testing.assert_allclose(r.applied_lr[i], lr * expected, rtol=1e-5, atol=1e-9)


def test_result_fields_memory_and_best_lr():
    params = init(jax.random.key(3))
    before = jax.tree.map(np.array, params)
    lrs = np.geomspace(1e-3, 1.0, 4)
    r = lr_grid(
        APPLY, params, optax.adam, X, Y, XV, YV,
        lrs=lrs, seeds=2, epochs=1, batch_size=64, key=jax.random.key(1),
    )  # fmt: skip
    # the caller's params are untouched (the population trains copies)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, params))
    np.testing.assert_array_equal(r.lrs, lrs)
    assert r.steps_per_epoch == N_TRAIN // 64
    n_params = sum(a.size for a in jax.tree.leaves(params))
    # adam: params + mu + nu (float32), plus a few scalars (counts, the lr)
    assert 3 * 4 * n_params <= r.memory["member_bytes"] < 3 * 4 * n_params + 64
    assert r.memory["state_bytes"] == 8 * r.memory["member_bytes"]
    final = r.val_accuracy[:, :, -1].mean(axis=1)
    assert r.best_lr == lrs[np.argmax(final)] and r.best_accuracy == final.max()
    assert accuracy_at(r, r.best_lr) == pytest.approx(final.max())
    assert accuracy_at(r, 2.0) is None
    # same init for both seeds with a params pytree: only the batch order differs
    assert not np.array_equal(r.val_loss[:, 0], r.val_loss[:, 1])
    doc = json.loads(json.dumps(r.to_json()))
    assert np.array(doc["val_accuracy"]).shape == (4, 2, 1)
    assert r.timings["compile_s"] > 0 and r.timings["run_s"] > 0
    assert r.device.startswith(jax.devices()[0].platform)


def test_a_diverged_member_does_not_poison_the_others():
    key = jax.random.key(5)
    both = lr_grid(
        APPLY, init, optax.sgd, X, Y, XV, YV,
        lrs=[0.05, 1e30], epochs=1, batch_size=BATCH, key=key,
    )  # fmt: skip
    alone = lr_grid(
        APPLY, init, optax.sgd, X, Y, XV, YV,
        lrs=[0.05], epochs=1, batch_size=BATCH, key=key,
    )  # fmt: skip
    assert not np.isfinite(both.val_loss[1, 0, 0])
    assert both.val_accuracy[1, 0, 0] < 0.6  # a NaN model: just low accuracy
    np.testing.assert_allclose(both.val_loss[0], alone.val_loss[0], rtol=RTOL)
    assert both.best_lr == 0.05
    assert json.loads(json.dumps(both.to_json()))["val_loss"][1][0][0] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lrs": []}, r"lrs must be a non-empty 1-D sequence, got \[\]"),
        ({"lrs": [0.1, -0.5]}, r"learning rates must be finite and > 0, got -0.5"),
        ({"lrs": [0.1, 0.0]}, r"learning rates must be finite and > 0, got 0.0"),
        ({"lrs": [math.nan]}, r"learning rates must be finite and > 0, got nan"),
        ({"epochs": 0}, r"epochs must be an integer >= 1, got 0"),
        ({"seeds": 0}, r"seeds must be an integer >= 1, got 0"),
        ({"batch_size": 1000}, r"batch_size must be between 1 .*\(256\), got 1000"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(kwargs, message):
    args = {"lrs": [0.1], "epochs": 1, "seeds": 1, "batch_size": BATCH} | kwargs
    with pytest.raises(ValueError, match=message):
        lr_grid(APPLY, init, optax.sgd, X, Y, XV, YV, key=jax.random.key(0), **args)


_SHARDED = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
sys.path.insert(0, {tests!r})
import test_population as t
from lrjax.population import lr_grid
r = lr_grid(t.APPLY, t.init, t.momentum, t.X, t.Y, t.XV, t.YV, lrs=[0.01, 0.05, 0.2],
            epochs=1, batch_size=t.BATCH, key=jax.random.key(7))
print(json.dumps({{"device": r.device, "val_loss": r.val_loss.tolist(),
                  "memory": r.memory}}))
"""


def test_population_spread_over_two_host_devices_matches():
    """3 members padded to 4 and sharded over 2 XLA host devices: same numbers."""
    code = _SHARDED.format(tests=os.path.dirname(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env,
        check=True, timeout=120,
    )  # fmt: skip
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["device"] == "cpu x2 (cpu)"
    assert doc["memory"]["members"] == 3 and doc["memory"]["padded_members"] == 4
    key = jax.random.key(7)
    for i, lr in enumerate([0.01, 0.05, 0.2]):
        vl, *_ = reference(lr, 0, 1, key)
        np.testing.assert_allclose(doc["val_loss"][i][0], vl, rtol=RTOL, atol=ATOL)
