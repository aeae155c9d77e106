"""lr_grid: the vmapped population against a plain Python loop over the one step."""

from __future__ import annotations

import functools
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
from flax import nnx

from lrjax._src.batches import batch_indices, scale_images
from lrjax._src.lr_grid import GridResult, accuracy_at, lr_grid
from lrjax._src.models import mlp, pure
from lrjax._src.results import MemoryRefused, tree_bytes
from lrjax._src.schedules import cosine_restarts
from lrjax._src.specs import Execution, GridConfig, Population
from lrjax._src.step import (
    classification_loss,
    init_state,
    make_eval_batch,
    make_optimizer,
    make_step,
    split_model,
)

N_TRAIN, N_VAL, BATCH = 256, 120, 32
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


def init(k):
    """The MLP fed uint8 images: ``scale_images`` in front of it."""
    return nnx.Sequential(scale_images, mlp(64, 4, (16,), key=k))


class Noisy(nnx.Module):
    """Linear -> BatchNorm -> relu -> Dropout -> Linear: state and randomness;
    it takes uint8 images."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        x = scale_images(x).reshape(x.shape[0], -1)
        return self.out(self.drop(jax.nn.relu(self.norm(self.hidden(x)))))


def noisy(k):
    return Noisy(rngs=nnx.Rngs(params=k, dropout=jax.random.fold_in(k, 7)))


def momentum(lr):
    return optax.sgd(lr, momentum=0.9)


def grid(
    model,
    optimizer=momentum,
    *,
    seeds=1,
    epochs=1,
    batch_size=BATCH,
    schedule=None,
    eval_batch_size=1000,
    loop="auto",
    population="auto",
    **kwargs,
):
    """lr_grid on (X, Y) with the specs built from the fields the tests vary."""
    config = GridConfig(epochs, batch_size, schedule, eval_batch_size)
    return lr_grid(
        model, optimizer, (X, Y), (XV, YV), config=config,
        population=Population(seeds, layout=population),
        execution=Execution(loop=loop), **kwargs,
    )  # fmt: skip


@functools.cache
def member_program(factory, schedule, optimizer):
    """A jitted ``step(state, batch, lr)`` and ``evaluate`` of one member alone."""
    spec, _, _ = split_model(factory(jax.random.key(0)))
    loss_fn = classification_loss()

    def make_tx(lr):
        return make_optimizer(
            optimizer, lr if schedule is None else (lambda t: lr * schedule(t))
        )

    def step(state, batch, lr):
        inner = make_step(spec, loss_fn, make_tx(lr))
        return inner(state, batch)

    def init(params, rest, lr):
        return init_state(params, rest, make_tx(lr))

    evaluate = make_eval_batch(spec, loss_fn)
    return jax.jit(init), jax.jit(step), jax.jit(evaluate)


def reference(factory, lr, seed, epochs, key, schedule=None, optimizer=momentum):
    """One member trained alone: a Python loop over the jitted step, one by one;
    evaluated in one batch of the whole validation split."""
    init, step, evaluate = member_program(factory, schedule, optimizer)
    seed_key = jax.random.fold_in(key, seed)
    _, params, rest = split_model(factory(jax.random.fold_in(seed_key, 1)))
    lr = jnp.float32(lr)
    state = init(params, rest, lr)
    steps = N_TRAIN // BATCH
    idx = np.asarray(batch_indices(seed_key, N_TRAIN, BATCH, steps * epochs))
    val_loss, val_acc, train_loss, lrs = [], [], [], []
    for e in range(epochs):
        losses = []
        for i in range(steps):
            j = idx[e * steps + i]
            state, m = step(state, (X[j], Y[j]), lr)
            losses.append(float(m["loss"]))
            lrs.append(float(m["lr"]))
        ev = evaluate(state.params, state.model_state, (XV, YV))
        val_loss.append(float(ev["loss"]))
        val_acc.append(float(ev["accuracy"]))
        train_loss.append(float(np.mean(losses)))
    return np.array(val_loss), np.array(val_acc), np.array(train_loss), np.array(lrs)


def check_against_reference(r, factory, lrs, seeds, epochs, key, unit=None):
    for i, lr in enumerate(lrs):
        for s in range(seeds):
            vl, va, tl, applied = reference(factory, lr, s, epochs, key, unit)
            np.testing.assert_allclose(r.val_loss[i, s], vl, rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(r.train_loss[i, s], tl, rtol=RTOL, atol=ATOL)
            # accuracy is a count / N_VAL: a near-tie may flip one example
            np.testing.assert_allclose(r.val_accuracy[i, s], va, atol=1.5 / N_VAL)
        np.testing.assert_allclose(r.applied_lr[i], applied, rtol=1e-6)


@pytest.mark.parametrize(
    "scheduled, population", [(False, "auto"), (True, "auto"), (False, "unroll"),
                              (True, "map")]
)  # fmt: skip
def test_population_equals_members_trained_one_by_one(scheduled, population):
    key = jax.random.key(7)
    lrs = [0.01, 0.05, 0.2]
    unit = cosine_restarts(1.0, first_period=5, min_value=0.1) if scheduled else None
    # eval batches of 50: two full batches and a remainder of 20
    r = grid(init, lrs=lrs, seeds=2, epochs=2, schedule=unit, key=key,
             eval_batch_size=50, population=population)  # fmt: skip
    assert r.val_accuracy.shape == r.val_loss.shape == r.train_loss.shape == (3, 2, 2)
    assert r.timings.loop == "scan"
    assert r.timings.population == ("vmap" if population == "auto" else population)
    check_against_reference(r, init, lrs, 2, 2, key, unit)
    # the learning rates really differ: the test would fail if lr were ignored
    assert np.ptp(r.val_loss[:, 0, -1]) > 1e-3


def test_batchnorm_dropout_factory_matches_members_and_evaluates_in_eval_mode():
    key = jax.random.key(3)
    lrs = [0.02, 0.2]

    def eval_fn(model, batch):
        loss, m = classification_loss()(model, batch)
        mode = model.drop.deterministic and model.norm.use_running_average
        return {"loss": loss, **m, "eval_mode": jnp.float32(mode)}

    r = grid(noisy, lrs=lrs, seeds=2, epochs=2, key=key, eval_fn=eval_fn)
    np.testing.assert_array_equal(r.val_metrics["eval_mode"], 1.0)
    check_against_reference(r, noisy, lrs, 2, 2, key)
    # seeds differ (init, dropout streams, batch order) and so do the lrs
    assert np.all(np.abs(r.val_loss[:, 0] - r.val_loss[:, 1]) > 1e-4)
    assert np.all(np.abs(r.val_loss[0] - r.val_loss[1]) > 1e-4)


class ConvNet(nnx.Module):
    """Conv-BatchNorm-relu-pool, Dropout, Linear on the 8x8 images."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(4 * 4 * 4, 4, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.norm(self.conv(x[..., None])))
        x = x.reshape(x.shape[0], 4, 2, 4, 2, 4).max((2, 4))
        return self.out(self.drop(x.reshape(x.shape[0], -1)))


def conv_net(k):
    return ConvNet(rngs=nnx.Rngs(params=k, dropout=jax.random.fold_in(k, 7)))


def test_a_conv_population_is_unrolled_on_cpu_and_matches_its_members():
    """``Population(layout="auto")``: a convolution on the CPU runs the members one
    after another (a vmapped conv is a slow grouped conv on XLA:CPU), dispatched
    one update at a time; the numbers are each member's own."""
    key = jax.random.key(4)
    lrs = [0.02, 0.2]
    r = grid(conv_net, lrs=lrs, seeds=2, epochs=1, key=key)
    assert r.timings.population == "unroll" and r.timings.loop == "dispatch"
    check_against_reference(r, conv_net, lrs, 2, 1, key)
    assert np.all(np.abs(r.val_loss[0] - r.val_loss[1]) > 1e-4)


def leaves(module):
    def host(a):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a = jax.random.key_data(a)
        return np.array(a)

    return jax.tree.map(host, jax.tree.leaves(nnx.state(module)))


def test_a_shared_module_is_unchanged_and_its_seeds_differ():
    model = noisy(jax.random.key(11))
    before = leaves(model)
    r = grid(model, lrs=[0.05, 0.1], seeds=2, epochs=1, key=jax.random.key(0))
    for a, b in zip(before, leaves(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.drop.deterministic is False and model.norm.use_running_average is False
    # same init, other batch order and dropout stream for seed 1
    assert np.all(r.val_loss[:, 0] != r.val_loss[:, 1])
    assert np.all(np.isfinite(r.val_loss))


def test_dict_batches_with_a_custom_loss_and_an_eval_without_accuracy():
    apply, params = pure(init(jax.random.key(2)))
    key = jax.random.key(4)
    kw = {"lrs": [0.01, 0.1, 3.0], "key": key}
    tuples = grid(params, loss_fn=classification_loss(apply), seeds=2, **kw)

    def loss_fn(p, batch):
        logits = apply(p, batch["image"])  # init's model scales the images
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, batch["label"]
        ).mean()

    def eval_fn(p, batch):
        return {"loss": loss_fn(p, batch), "twice": 2 * loss_fn(p, batch)}

    data = {"image": X, "label": Y}
    val = {"image": XV, "label": YV}
    r = lr_grid(
        params, momentum, data, val, loss_fn=loss_fn, eval_fn=eval_fn,
        config=GridConfig(batch_size=BATCH), population=Population(seeds=2), **kw,
    )  # fmt: skip
    # the same batches and updates as the (x, y) run
    np.testing.assert_allclose(r.val_loss, tuples.val_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.train_loss, tuples.train_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.val_metrics["twice"], 2 * r.val_loss, rtol=1e-6)
    # no accuracy: NaN, and the best lr is the lowest mean validation loss
    assert r.best_by == "loss" and np.all(np.isnan(r.val_accuracy))
    assert r.best_lr == kw["lrs"][int(np.argmin(r.val_loss[:, :, -1].mean(1)))]
    assert json.loads(json.dumps(r.to_json()))["best_accuracy"] is None


def test_applied_lr_is_lr_times_schedule():
    unit = cosine_restarts(1.0, first_period=6, period_mult=2)
    lrs = [1e-3, 0.3]
    r = grid(init, optax.adam, lrs=lrs, epochs=3, schedule=unit, key=jax.random.key(0))
    t = np.arange(3 * (N_TRAIN // BATCH))
    # the formula itself, independently of lrjax.schedules (T_0 = 6, T_mult = 2)
    n = np.floor(np.log2(t / 6 + 1))
    t_cur, t_i = t - 6 * (2**n - 1), 6 * 2**n
    expected = (1 + np.cos(np.pi * t_cur / t_i)) / 2
    assert r.applied_lr.shape == (2, len(t))
    for i, lr in enumerate(lrs):
        np.testing.assert_allclose(r.applied_lr[i], lr * expected, rtol=1e-5, atol=1e-9)


def test_result_fields_memory_and_best_lr():
    model = init(jax.random.key(3))
    n_params = sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
    lrs = np.geomspace(1e-3, 1.0, 4)
    r = grid(model, optax.adam, lrs=lrs, seeds=2, batch_size=64, key=jax.random.key(1))
    np.testing.assert_array_equal(r.lrs, lrs)
    assert r.steps_per_epoch == N_TRAIN // 64
    # adam: params + mu + nu (float32), plus a few scalars (counts, the lr)
    assert 3 * 4 * n_params <= r.memory.member_bytes < 3 * 4 * n_params + 64
    assert r.memory.state_bytes == 8 * r.memory.member_bytes
    final = r.val_accuracy[:, :, -1].mean(axis=1)
    assert r.best_by == "accuracy"
    assert r.best_lr == lrs[np.argmax(final)] and r.best_accuracy == final.max()
    assert accuracy_at(r, r.best_lr) == pytest.approx(final.max())
    assert accuracy_at(r, 2.0) is None
    # same init for both seeds with one module: only the batch order differs
    assert not np.array_equal(r.val_loss[:, 0], r.val_loss[:, 1])
    doc = json.loads(json.dumps(r.to_json()))
    assert np.array(doc["val_accuracy"]).shape == (4, 2, 1)
    assert r.timings.compile_s > 0 and r.timings.run_s > 0
    assert r.device.startswith(jax.devices()[0].platform)


def test_memory_estimate_is_the_member_state_twice_plus_its_inputs():
    """The estimate counts each member's exact state (step, params, optimizer
    state, whose inject_hyperparams state holds its lr and schedule family),
    twice, plus its batch and its row of the epoch's indices."""
    model = init(jax.random.key(3))
    r = grid(model, optax.adam, lrs=[0.01, 0.1], seeds=2, key=jax.random.key(1))
    est = r.memory.estimate
    assert est.member_state_bytes == r.memory.member_bytes
    per_example = X[0].nbytes + Y[0].nbytes
    steps = N_TRAIN // BATCH
    assert est.batch_bytes == BATCH * per_example + 4 * steps * BATCH
    assert est.members == 4
    assert est.estimate_bytes == 4 * (2 * est.member_state_bytes + est.batch_bytes)
    assert est.device_limit_bytes > est.per_device_bytes > 0
    doc = json.loads(json.dumps(r.to_json()))
    assert doc["memory"]["estimate"] == est.to_json()
    # one seed: the members share the batch indices
    one = grid(model, optax.adam, lrs=[0.01, 0.1], key=jax.random.key(1))
    assert one.memory.estimate.batch_bytes == BATCH * per_example


def test_a_population_over_the_device_limit_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr("lrjax._src.results.device_memory_bytes", lambda: 2**19)
    member = 8 + tree_bytes(init_state(*split_model(init(jax.random.key(0)))[1:],
                                       make_optimizer(optax.sgd, 0.1)))  # fmt: skip
    assert 4 * member < 2**19 < 100 * 2 * member  # one fits, 100 do not
    grid(init, optax.sgd, lrs=[0.1], key=jax.random.key(0))  # fits: runs
    with pytest.raises(MemoryRefused) as e:
        grid(init, optax.sgd, lrs=np.geomspace(1e-3, 1, 50), seeds=2,
             key=jax.random.key(0))  # fmt: skip
    message = str(e.value)
    assert "\n" not in message and isinstance(e.value, ValueError)
    assert message.startswith("100 members need about ")
    assert " GiB available; lower the number of lrs or seeds " in message
    assert message.endswith("(lrs, Population.seeds; lrjax-grid --num, --seeds)")


def test_an_impossible_population_is_refused_before_it_is_built():
    """10 million members: refused from the first member, not after building 100
    seeds' models, 10 million lr states or compiling."""
    calls = []

    def factory(k):
        calls.append(k)
        return init(k)

    with pytest.raises(ValueError, match=r"^10000000 members need about \d+\.\d GiB"):
        grid(factory, optax.sgd, lrs=np.geomspace(1e-3, 1, 100_000), seeds=100,
             key=jax.random.key(0))  # fmt: skip
    assert len(calls) == 1


def test_dispatch_loop_gives_the_scan_numbers():
    kw = {"lrs": [0.02, 0.2], "seeds": 2, "epochs": 2, "key": jax.random.key(9)}
    scan = grid(noisy, loop="scan", eval_batch_size=50, **kw)
    dispatch = grid(noisy, loop="dispatch", eval_batch_size=50, **kw)
    assert dispatch.timings.loop == "dispatch"
    np.testing.assert_allclose(dispatch.val_loss, scan.val_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        dispatch.train_loss, scan.train_loss, rtol=RTOL, atol=ATOL
    )


def test_a_diverged_member_does_not_poison_the_others():
    key = jax.random.key(5)
    both = grid(init, optax.sgd, lrs=[0.05, 1e30], key=key)
    alone = grid(init, optax.sgd, lrs=[0.05], key=key)
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
        # out of order: accuracy_at's interpolation and the plots read an axis
        (
            {"lrs": [1.0, 0.001, 0.1]},
            r"lrs must increase \(sorted, no repeats\): "
            r"lrs\[0\] = 1 is followed by 0.001; pass np.unique\(lrs\)",
        ),
        ({"lrs": [0.1, 0.1]}, r"lrs\[0\] = 0.1 is followed by 0.1"),
        ({"epochs": 0}, r"epochs must be an integer >= 1, got 0"),
        ({"seeds": 0}, r"seeds must be an integer >= 1, got 0"),
        ({"batch_size": 1000}, r"batch_size must be an integer .*\(256\), got 1000"),
        ({"loop": "fast"}, r"loop must be one of"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(kwargs, message):
    args = {"lrs": [0.1], "epochs": 1, "seeds": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        grid(init, optax.sgd, key=jax.random.key(0), **args)


def test_empty_val_data_is_refused_before_anything_is_built():
    # it reached divmod(n_val, 0) after building the population before
    with pytest.raises(ValueError, match="^val_data has no examples$"):
        lr_grid(init, optax.sgd, (X, Y), (XV[:0], YV[:0]), lrs=[0.1],
                key=jax.random.key(0))  # fmt: skip


def test_iterables_and_callables_are_refused_with_a_clear_error():
    with pytest.raises(TypeError, match="train_data must be in-memory arrays"):
        lr_grid(init, optax.sgd, iter([(X, Y)]), (XV, YV), lrs=[0.1],
                key=jax.random.key(0))  # fmt: skip


_SHARDED = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
sys.path.insert(0, {tests!r})
import test_lr_grid as t
for population in ("vmap", "unroll"):
    r = t.grid(t.init, lrs=[0.01, 0.05, 0.2], key=jax.random.key(7),
               population=population)
    print(json.dumps({{"asked": population, "device": r.device,
                      "val_loss": r.val_loss.tolist(), "memory": r.memory.to_json(),
                      "population": r.timings.population}}))
"""


@pytest.fixture(scope="module")
def sharded_grids():
    """``{population: doc}``: both populations' grids on 2 XLA host devices, in
    one subprocess (one JAX start for both tests)."""
    from tests.conftest import jax_cache_env  # here: the script imports this file

    code = _SHARDED.format(tests=os.path.dirname(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu", **jax_cache_env())
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env,
        check=True, timeout=120,
    )  # fmt: skip
    docs = [json.loads(line) for line in out.stdout.strip().splitlines()]
    return {doc["asked"]: doc for doc in docs}


@pytest.mark.parametrize("population", ["vmap", "unroll"])
def test_population_spread_over_two_host_devices_matches(sharded_grids, population):
    """3 members padded to 4 and sharded over 2 XLA host devices: same numbers
    (unrolled members run under shard_map, each device over its own)."""
    doc = sharded_grids[population]
    assert doc["device"] == "cpu x2 (cpu)" and doc["population"] == population
    assert doc["memory"]["members"] == 3 and doc["memory"]["padded_members"] == 4
    key = jax.random.key(7)
    for i, lr in enumerate([0.01, 0.05, 0.2]):
        vl, *_ = reference(init, lr, 0, 1, key)
        np.testing.assert_allclose(doc["val_loss"][i][0], vl, rtol=RTOL, atol=ATOL)


def test_accuracy_at_refuses_a_hand_built_result_with_unsorted_lrs():
    """np.interp reads an increasing axis: lrs [0.001, 0.1, 0.01, 1] with
    accuracies [.4, .8, .6, .2] gave 0.4 at lr 0.1, where the grid has 0.8."""
    acc = np.array([0.4, 0.8, 0.6, 0.2]).reshape(4, 1, 1)
    lrs = np.array([0.001, 0.1, 0.01, 1.0])
    r = GridResult(lrs, 1, 1, acc, acc, acc, acc, 0.1, 0.8, 1,
                         timings=None, device="", memory=None, config=None)  # fmt: skip
    with pytest.raises(ValueError, match=r"lrs\[1\] = 0.1 is followed by 0.01"):
        accuracy_at(r, 0.1)
