"""The range test on any model, loss and data: each against an independent reference
(a Python loop of the same step, the array path against a generator of the same
batches, one update of a big batch against accumulated micro-batches)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lrjax
from lrjax import Divergence, Execution, Population, Sweep
from lrjax._src.batches import batch_indices, scale_images
from lrjax._src.step import init_state, make_optimizer, make_step, split_model

from .conftest import jax_cache_env, make_images


class TinyCNN(nnx.Module):
    """Conv-BN-ReLU-pool, Dropout, Dense: every kind of state a module holds."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(4 * 4 * 4, 10, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.bn(self.conv(x[..., None])))
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4)).reshape(n, -1)
        return self.out(self.drop(x))


def state_leaves(module) -> list[np.ndarray]:
    """Every array a module holds (rng keys as their raw data), on the host."""
    out = []
    for a in jax.tree.leaves(nnx.state(module)):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a = jax.random.key_data(a)
        out.append(np.array(a))
    return out


def cnn_loss(model, batch):
    """Cross-entropy, plus two probes of the module's state as metrics."""
    logits = model(batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    probe = model.drop(jnp.ones(64)) > 0  # the dropout mask this stream draws next
    return loss.mean(), {
        "bn_mean": model.bn.mean[...].sum(),
        "mask": jnp.sum(probe * jnp.arange(64)),
    }


@pytest.fixture(scope="module")
def images():
    x, y = make_images(1024, 0)
    return x, y.astype(np.int32)


@pytest.fixture(scope="module")
def small_images():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 256).astype(np.int32)
    return {"image": x, "label": y}


def mlp(key):
    return lrjax.mlp(784, 10, (32,), key=key)


def scaled(key):
    """:func:`mlp` fed uint8 images: ``scale_images`` in front of it."""
    return nnx.Sequential(scale_images, mlp(key))


# ------------------------------------------------------------ the compiled sweep


@pytest.mark.parametrize("loop", ["scan", "dispatch"])
def test_sweep_equals_a_python_loop_of_the_same_step(images, loop):
    x, y = images
    key = jax.random.key(7)
    model = mlp(jax.random.key(1))
    r = lrjax.lr_range_test(
        nnx.Sequential(scale_images, model),  # the loop below scales on the host
        optax.sgd,
        (x, y),
        key=key,
        sweep=Sweep(num_steps=60, init_value=1e-3, end_value=1.0, batch_size=16),
        divergence=Divergence(stop=False),
        execution=Execution(chunks=4, loop=loop),
    )
    assert r.timings.loop == loop
    sched = lrjax.exponential_sweep(1e-3, 1.0, 60)
    tx = make_optimizer(optax.sgd, sched)
    spec, params, rest = split_model(model)
    step = jax.jit(make_step(spec, lrjax.classification_loss(), tx))
    state = init_state(params, rest, tx)
    idx = np.asarray(batch_indices(jax.random.fold_in(key, 0), len(y), 16, 60))
    losses, lrs, accs = [], [], []
    for t in range(60):
        xb = x[idx[t]].astype(np.float32) / 255.0
        state, m = step(state, (xb, y[idx[t]]))
        losses.append(float(m["loss"]))
        lrs.append(float(m["lr"]))
        accs.append(float(m["accuracy"]))
    assert r.steps_run == 60 and r.losses.shape == (1, 60)  # [seeds, steps_run]
    np.testing.assert_allclose(r.losses[0], losses, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(r.metrics["accuracy"][0], accs, atol=1e-6)
    # XLA may fuse the exponent t * log(end/init) / (n-1) differently inside the
    # scan: its float32 rounding (|log(1e3)| * eps) becomes exp's relative error.
    rtol = (math.log(1e3) + 1) * np.finfo(np.float32).eps
    np.testing.assert_allclose(r.lrs, lrs, rtol=rtol, atol=0)
    np.testing.assert_allclose(r.lrs, sched(np.arange(60)), rtol=rtol, atol=0)


def test_pure_params_with_a_loss_fn(images):
    x, y = images
    apply, params = lrjax._src.models.pure(scaled(jax.random.key(1)))
    kw = dict(key=jax.random.key(0))
    kw.update(sweep=Sweep(num_steps=30), divergence=Divergence(stop=False))
    pure = lrjax.lr_range_test(
        params,
        optax.sgd,
        (x, y),
        loss_fn=lrjax.classification_loss(apply),
        **kw,
    )
    module = lrjax.lr_range_test(scaled(jax.random.key(1)), optax.sgd, (x, y), **kw)
    np.testing.assert_allclose(pure.losses, module.losses, rtol=1e-6)
    before = jax.tree.map(np.array, params)
    jax.tree.map(np.testing.assert_array_equal, before, params)  # not donated


def test_stops_early_on_divergence(images):
    x, y = images
    y = np.random.default_rng(0).permutation(y)  # unlearnable: the loss blows up
    r = lrjax.lr_range_test(
        scaled(jax.random.key(1)),
        optax.sgd,
        (x, y),
        key=jax.random.key(0),
        sweep=Sweep(num_steps=400, init_value=1e-3, end_value=1e4),
        execution=Execution(chunks=20),
    )
    assert r.stop_reason == "diverged" and r.steps_run < 400
    i = r.diverged_at_step[0]
    assert r.lrs[i] == pytest.approx(r.diverged_at_lr)
    assert r.suggestions["divergence"] == pytest.approx(r.diverged_at_lr / 2)
    assert r.suggested_lr == r.suggestions["knee"]


def test_linear_mode_sweeps_arithmetically(images):
    r = lrjax.lr_range_test(
        mlp(jax.random.key(1)),
        optax.sgd,
        images,
        key=jax.random.key(0),
        sweep=Sweep(num_steps=20, init_value=0.01, end_value=0.2, mode="linear"),
        divergence=Divergence(stop=False),
    )
    np.testing.assert_allclose(r.lrs, np.linspace(0.01, 0.2, 20), rtol=1e-6)


def test_seeds_are_vmapped_and_each_equals_its_own_run(images):
    kw = dict(
        key=jax.random.key(3),
        sweep=Sweep(num_steps=50, init_value=1e-3, end_value=3.0),
        divergence=Divergence(stop=False),
        execution=Execution(chunks=2),
    )
    many = lrjax.lr_range_test(
        scaled, optax.sgd, images, population=Population(3), **kw
    )
    one = lrjax.lr_range_test(scaled, optax.sgd, images, population=Population(1), **kw)
    assert many.losses.shape == (3, 50) and one.losses.shape == (1, 50)
    np.testing.assert_allclose(many.losses[0], one.losses[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(many.losses[0], many.losses[1])  # different seeds
    sp = many.spread
    valid = [v for v in sp["per_seed"] if v is not None]
    assert sp["min"] == min(valid) and sp["max"] == max(valid)
    assert set(sp["per_method"]) == set(lrjax.METHODS)


@pytest.mark.parametrize("seeds", [1, 3])
def test_per_seed_arrays_keep_their_seed_axis_for_any_number_of_seeds(seeds):
    """The one rule: ``losses``, ``smoothed_losses`` and every metric are ``[seeds,
    steps_run]`` (one seed included), ``lrs`` is ``[steps_run]``; ``to_json`` too."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 2)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0], np.float32)).astype(np.float32)

    def loss_fn(w, batch):
        err = batch[0] @ w - batch[1]
        return jnp.mean(err**2), {"mae": jnp.mean(jnp.abs(err))}

    r = lrjax.lr_range_test(
        jnp.zeros(2),
        optax.sgd,
        (x, y),
        key=jax.random.key(0),
        loss_fn=loss_fn,
        sweep=Sweep(num_steps=12, batch_size=16),
        divergence=Divergence(stop=False),
        population=Population(seeds),
    )
    shape = (seeds, 12)
    assert r.seeds == seeds and r.steps_run == 12 and r.lrs.shape == (12,)
    assert r.losses.shape == r.smoothed_losses.shape == shape
    assert {k: v.shape for k, v in r.metrics.items()} == {"mae": shape}
    np.testing.assert_array_equal(r.smoothed_losses, lrjax.smooth(r.losses, 0.98))
    doc = json.loads(json.dumps(r.to_json()))
    assert np.shape(doc["lrs"]) == (12,)
    assert np.shape(doc["losses"]) == np.shape(doc["smoothed_losses"]) == shape
    assert np.shape(doc["metrics"]["mae"]) == shape


def test_conv_seeds_run_unrolled_on_cpu_and_equal_their_own_runs(small_images):
    """``Population(layout="auto")`` unrolls a conv model's seeds on the CPU (a vmapped
    conv is a slow grouped conv there); each seed equals its vmapped twin and the
    first its own single run."""
    kw = dict(
        key=jax.random.key(5),
        loss_fn=cnn_loss,
        sweep=Sweep(num_steps=12, init_value=1e-3, end_value=1.0, batch_size=16),
        divergence=Divergence(stop=False),
        execution=Execution(chunks=2),
    )

    def factory(k):
        return TinyCNN(rngs=nnx.Rngs(k))

    two = Population(seeds=2)
    auto = lrjax.lr_range_test(factory, optax.sgd, small_images, population=two, **kw)
    vmapped = lrjax.lr_range_test(
        factory, optax.sgd, small_images, population=Population(2, layout="vmap"), **kw
    )
    one = lrjax.lr_range_test(factory, optax.sgd, small_images, **kw)
    assert auto.timings.population == "unroll"
    assert auto.timings.loop == "dispatch"
    assert vmapped.timings.population == "vmap"
    np.testing.assert_allclose(auto.losses, vmapped.losses, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(auto.losses[0], one.losses[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        auto.metrics["bn_mean"], vmapped.metrics["bn_mean"], rtol=1e-4, atol=1e-5
    )
    assert not np.allclose(auto.losses[0], auto.losses[1])


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    """``{n: {population: (device, population run, losses)}}``: the range test of
    3 seeds on ``n`` XLA host devices, each population in the same subprocess
    (one JAX start per device count, not one per test)."""
    script = textwrap.dedent(
        """
        import json, jax, numpy as np, optax, sys
        sys.path.insert(0, %r)
        from conftest import make_images
        from flax import nnx
        import lrjax
        x, y = make_images(512, 0)
        for population in ("vmap", "unroll"):
            r = lrjax.lr_range_test(
                lambda k: nnx.Sequential(lrjax.scale_images,
                                         lrjax.mlp(784, 10, (16,), key=k)),
                optax.sgd, (x, y.astype(np.int32)), key=jax.random.key(0),
                sweep=lrjax.Sweep(num_steps=30),
                divergence=lrjax.Divergence(stop=False),
                population=lrjax.Population(seeds=3, layout=population))
            print(json.dumps([population, r.device, r.timings.population]))
            np.save(f"{sys.argv[1]}-{population}.npy", r.losses)
        """
    ) % os.path.dirname(__file__)
    runs = {}
    for n in (1, 2):
        env = dict(
            os.environ,
            XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
            JAX_PLATFORMS="cpu",
            **jax_cache_env(),
        )
        out = tmp_path_factory.mktemp(f"devices{n}") / "losses"
        proc = subprocess.run(
            [sys.executable, "-c", script, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        runs[n] = {
            asked: (device, ran, np.load(f"{out}-{asked}.npy"))
            for asked, device, ran in lines
        }
    return runs


@pytest.mark.parametrize("population", ["vmap", "unroll"])
def test_seed_axis_sharded_over_host_devices_matches_one_device(
    sharded_runs, population
):
    """Two XLA host devices (a subprocess: the flag must precede JAX's start);
    unrolled members run under shard_map, each device over its own seeds. Three
    seeds are padded to four, so that both devices run (not one, the largest
    divisor of 3); the padded member's curve is dropped."""
    outs = {}
    for n in (1, 2):
        device, ran, losses = sharded_runs[n][population]
        assert f"x{n}" in device and ran == population
        outs[n] = losses
    assert outs[2].shape == (3, 30)
    np.testing.assert_allclose(outs[1], outs[2], rtol=1e-5, atol=1e-6)


# -------------------------------------------------- NNX state: BatchNorm, Dropout


def test_nnx_module_with_batchnorm_and_dropout_is_untouched(small_images):
    model = TinyCNN(rngs=nnx.Rngs(0))
    before = state_leaves(model)
    r = lrjax.lr_range_test(
        model,
        optax.adam,
        small_images,
        loss_fn=cnn_loss,
        key=jax.random.key(0),
        sweep=Sweep(num_steps=12, batch_size=32),
        divergence=Divergence(stop=False),
    )
    for a, b in zip(before, state_leaves(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert r.timings.loop == "dispatch"  # a conv step on XLA:CPU
    # Inside the sweep the batch statistics moved, and each step drew a new mask.
    assert len(set(np.round(r.metrics["bn_mean"][0], 6).tolist())) == 12
    assert len(set(r.metrics["mask"][0].tolist())) >= 10
    assert sorted(r.metrics) == ["bn_mean", "mask"]


def test_dropout_masks_differ_between_seeds(small_images):
    kw = dict(loss_fn=cnn_loss, key=jax.random.key(0), population=Population(2))
    kw.update(
        sweep=Sweep(num_steps=4, batch_size=32), divergence=Divergence(stop=False)
    )
    factory = lrjax.lr_range_test(
        lambda k: TinyCNN(rngs=nnx.Rngs(k)), optax.sgd, small_images, **kw
    )
    shared = lrjax.lr_range_test(
        TinyCNN(rngs=nnx.Rngs(0)), optax.sgd, small_images, **kw
    )
    for r in (factory, shared):
        assert r.metrics["mask"].shape == (2, 4)
        assert not np.array_equal(r.metrics["mask"][0], r.metrics["mask"][1])


# ------------------------------------------------------------------- data sources


def test_a_generator_of_the_same_batches_gives_the_same_losses(images):
    x, y = images
    key = jax.random.key(5)
    kw = dict(execution=Execution(chunks=3))
    kw.update(divergence=Divergence(stop=False))
    sweep = Sweep(num_steps=40, init_value=1e-3, end_value=1.0)
    arrays = lrjax.lr_range_test(
        scaled(jax.random.key(1)), optax.sgd, (x, y), key=key,
        sweep=dataclasses.replace(sweep, batch_size=16), **kw,
    )  # fmt: skip
    idx = np.asarray(batch_indices(jax.random.fold_in(key, 0), len(y), 16, 40))

    def gen():
        for i in idx:
            yield x[i], y[i]

    streamed = lrjax.lr_range_test(
        scaled(jax.random.key(1)), optax.sgd, gen(), key=key, sweep=sweep, **kw
    )
    assert streamed.config.data == "iterable" and streamed.steps_run == 40
    np.testing.assert_allclose(streamed.losses, arrays.losses, rtol=1e-5, atol=1e-6)


def test_a_one_shot_iterator_that_runs_out_says_so(images):
    x, y = images
    batches = ((x[i : i + 32], y[i : i + 32]) for i in range(0, 320, 32))
    r = lrjax.lr_range_test(
        scaled(jax.random.key(1)),
        optax.sgd,
        batches,
        key=jax.random.key(0),
        sweep=Sweep(num_steps=50, init_value=1e-4, end_value=1e-2),
        execution=Execution(chunks=5),
    )
    assert r.stop_reason == "data" and r.steps_run == 10
    assert r.diverged_at_lr is None
    assert r.warning == (  # its suggestion is from the first 10 steps: said
        f"the sweep stopped at step 10 of 50 (lr {r.lrs[-1]:.3g}), the data ran "
        "out: the suggestion is from the lrs swept"
    )


def test_a_list_of_batches_is_restarted(images):
    x, y = images
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]
    r = lrjax.lr_range_test(
        scaled(jax.random.key(1)),
        optax.sgd,
        batches,
        key=jax.random.key(0),
        sweep=Sweep(num_steps=10, init_value=1e-4, end_value=1e-2),
    )
    assert r.stop_reason is None and r.steps_run == 10
    assert r.config.data_restarts >= 3


def test_a_grain_pipeline_runs_end_to_end(small_images):
    grain = pytest.importorskip("grain")
    n = len(small_images["label"])
    records = [{k: v[i] for k, v in small_images.items()} for i in range(n)]
    ds = (
        grain.MapDataset.source(records)
        .seed(0)
        .shuffle()
        .batch(32, drop_remainder=True)
        .to_iter_dataset()
    )
    r = lrjax.lr_range_test(
        TinyCNN(rngs=nnx.Rngs(0)),
        optax.sgd,
        ds,
        loss_fn=cnn_loss,
        key=jax.random.key(0),
        sweep=Sweep(num_steps=12),  # 8 batches an epoch: the dataset is iterated again
        divergence=Divergence(stop=False),
    )
    assert r.steps_run == 12 and r.config.data_restarts == 1
    assert np.isfinite(r.losses).all()


def test_an_autoencoder_on_real_fashion_mnist_diverges_and_suggests():
    """A non-classification loss (MSE) on the real data (Debian package)."""
    try:
        ds = lrjax.load_dataset("fashion_mnist")
    except lrjax.DatasetError as e:
        pytest.skip(f"real Fashion-MNIST is not installed here: {e}")
    x = ds.x_train[:16384]

    class AE(nnx.Module):
        def __init__(self, *, rngs):
            self.enc = nnx.Linear(784, 32, rngs=rngs)
            self.dec = nnx.Linear(32, 784, rngs=rngs)

        def __call__(self, x):
            return self.dec(jnp.tanh(self.enc(x)))

    def mse(model, batch):
        x = scale_images(batch["image"])
        flat = x.reshape(x.shape[0], -1)
        return jnp.mean((model(flat) - flat) ** 2)

    r = lrjax.lr_range_test(
        AE(rngs=nnx.Rngs(0)),
        optax.sgd,
        {"image": x},
        loss_fn=mse,
        key=jax.random.key(0),
        sweep=Sweep(init_value=1e-2, end_value=1e3, batch_size=32),
    )
    assert r.stop_reason == "diverged" and r.diverged_at_lr is not None
    sm = r.smoothed_losses[0]
    assert sm.min() < 0.8 * sm[0]  # it learned first
    assert 1e-2 < r.suggested_lr < r.diverged_at_lr
    assert r.metrics == {}


# ------------------------------------------------------------------- accumulation


def test_four_micro_batches_of_8_are_one_batch_of_32():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 32), jnp.int32)
    spec, params, rest = split_model(mlp(jax.random.key(0)))
    tx = make_optimizer(optax.sgd, 0.5)
    loss_fn = lrjax.classification_loss()
    big = make_step(spec, loss_fn, tx)
    acc = make_step(spec, loss_fn, tx, accumulate_steps=4)
    s_big, m_big = jax.jit(big)(init_state(params, rest, tx), (x, y))
    s_acc, m_acc = jax.jit(acc)(
        init_state(params, rest, tx), (x.reshape(4, 8, 784), y.reshape(4, 8))
    )
    assert int(s_acc.step) == 1
    np.testing.assert_allclose(m_acc["loss"], m_big["loss"], rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        s_acc.params,
        s_big.params,
    )


def test_accumulation_in_the_sweep_counts_updates(images):
    kw = dict(key=jax.random.key(0))
    kw.update(divergence=Divergence(stop=False))
    r = lrjax.lr_range_test(
        scaled(jax.random.key(1)),
        optax.sgd,
        images,
        sweep=Sweep(10, 1e-3, 1.0, batch_size=8, accumulate_steps=4),
        **kw,
    )
    assert r.steps_run == 10 and r.config.accumulate_steps == 4
    rtol = (math.log(1e3) + 1) * np.finfo(np.float32).eps
    sweep = lrjax.exponential_sweep(1e-3, 1.0, 10)
    np.testing.assert_allclose(r.lrs, sweep(np.arange(10)), rtol=rtol)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(method="best"), "method must be one of"),
        (dict(sweep=Sweep(batch_size=5000)), "batch_size must be an integer between"),
        (dict(loss_fn=lambda m, b: m(b[0]).sum(-1)), "must return a scalar loss"),
    ],
)
def test_bad_arguments(images, kwargs, match):
    """A bad spec field fails in the spec's constructor (tests/test_specs.py);
    these need the model or the data to be seen."""
    with pytest.raises(ValueError, match=match):
        lrjax.lr_range_test(
            mlp(jax.random.key(0)), optax.sgd, images, key=jax.random.key(0), **kwargs
        )


def test_bad_data_and_models(images):
    x, y = images
    key = jax.random.key(0)
    model = mlp(jax.random.key(0))
    with pytest.raises(ValueError, match=r"share their leading size.*1024.*1000"):
        lrjax.lr_range_test(model, optax.sgd, (x, y[:1000]), key=key)

    def changing():
        yield x[:32], y[:32]
        yield {"x": x[:32], "y": y[:32]}

    with pytest.raises(ValueError, match="another structure than the first batch"):
        lrjax.lr_range_test(model, optax.sgd, changing(), key=key, sweep=Sweep(4))
    with pytest.raises(TypeError, match="model is str .mlp.: not one of the accepted"):
        lrjax.lr_range_test("mlp", optax.sgd, (x, y), key=key)
    with pytest.raises(ValueError, match="num_steps is required"):
        lrjax.lr_range_test(model, optax.sgd, changing(), key=key)
    with pytest.raises(ValueError, match=r"batch_size=8 does not match.* of 1024"):
        lrjax.lr_range_test(
            model, optax.sgd, [(x, y)], key=key, sweep=Sweep(batch_size=8)
        )


def test_result_json_has_no_nan(images):
    r = lrjax.lr_range_test(
        mlp(jax.random.key(0)),
        optax.sgd,
        images,
        key=jax.random.key(0),
        sweep=Sweep(num_steps=100, init_value=1e-2, end_value=1e6),
        divergence=Divergence(stop=False),
        execution=Execution(chunks=1),
    )
    text = json.dumps(r.to_json(), allow_nan=False)  # raises on NaN/inf
    assert '"suggested_lr"' in text and '"accuracy"' in text


def test_an_impossible_population_is_refused_before_it_starts(images):
    built = []

    def factory(k):
        built.append(k)
        return mlp(k)

    with pytest.raises(ValueError, match=r"1000000 members need about .* lower seeds"):
        lrjax.lr_range_test(
            factory, optax.sgd, images, key=jax.random.key(0),
            population=Population(seeds=10**6),
        )  # fmt: skip
    assert len(built) == 1  # refused from the first member's size, not after building


def test_the_memory_estimate_is_in_the_result(images):
    r = lrjax.lr_range_test(
        mlp, optax.adam, images, key=jax.random.key(0),
        sweep=Sweep(num_steps=4), population=Population(seeds=2),
    )  # fmt: skip
    mem = r.config.memory
    n_params = 784 * 32 + 32 + 32 * 10 + 10
    # params, adam's mu and nu; adam's count, inject_hyperparams' count and lr
    assert mem.member_state_bytes == 4 * (3 * n_params) + 3 * 4
    assert mem.batch_bytes == (28 * 28 + 4) * 32 and mem.members == 2


def test_a_sweep_of_1e8_steps_builds_only_its_chunks_inputs(images):
    """No up-front [num_steps, batch] index array (51 GB here); it stops at the
    first chunk (a short one, lrjax._src.loop.FIRST_CHUNK_STEPS), where every loss is
    already non-finite."""
    r = lrjax.lr_range_test(
        mlp(jax.random.key(0)),
        optax.sgd,
        images,
        key=jax.random.key(0),
        sweep=Sweep(num_steps=10**8, init_value=1e6, end_value=1e7),
    )
    assert r.stop_reason == "diverged" and r.config.num_steps == 10**8
    # the largest chunk, not the first
    assert r.config.chunk_steps == lrjax._src.range_test.MAX_CHUNK_STEPS
    assert r.steps_run == lrjax._src.loop.FIRST_CHUNK_STEPS


def test_a_long_sweep_reports_progress_after_its_short_first_chunk(
    images, monkeypatch, capsys
):
    """lrjax-find --steps 100000000 printed nothing until a first chunk of 4096
    updates had run (25 s and more on a busy CPU): the first chunk of a long sweep
    is short, its progress (and the rate tqdm derives the time left from) shows
    after it; the rest of the plan keeps the long chunks."""
    from lrjax._src import loop, range_test

    seen = []

    class Stop(lrjax.Hook):
        def act(self, run, end):
            seen.append((end.lo, end.hi))
            return "enough"

    def drive(program, state, source, plan, *, hooks=(), **kw):
        seen.append(plan[:3])
        return loop.drive(program, state, source, plan, hooks=[*hooks, Stop()], **kw)

    monkeypatch.setattr(range_test, "drive", drive)
    r = lrjax.lr_range_test(
        mlp(jax.random.key(0)),
        optax.sgd,
        images,
        key=jax.random.key(0),
        sweep=Sweep(num_steps=10**8),
        execution=Execution(progress=True),
    )
    first = loop.FIRST_CHUNK_STEPS
    long = range_test.MAX_CHUNK_STEPS
    assert seen == [
        [(0, first), (first, first + long), (first + long, first + 2 * long)],
        (0, first),
    ]
    assert r.steps_run == first and r.stop_reason == "enough"
    assert f"{first}/{10**8}" in capsys.readouterr().err  # the bar, after 256 steps
