"""fit: chunks vs a Python loop of the step, resume, hooks, any model/loss/data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lrjax._src import schedules
from lrjax._src.batches import batch_indices, scale_images, take
from lrjax._src.fit import CheckpointError, FitConfig, data_mesh, evaluate, fit
from lrjax._src.hooks import Hook
from lrjax._src.models import mlp
from lrjax._src.step import (
    classification_loss,
    init_state,
    make_optimizer,
    make_step,
    split_model,
)

N, BATCH = 512, 32
SPE = N // BATCH  # steps per epoch
SCHED = schedules.cosine_restarts(0.05, 2 * SPE)


def synthetic(n, seed, size=8):
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(123).integers(0, 200, (10, size, size))
    y = rng.integers(0, 10, n).astype(np.int32)
    x = np.clip(templates[y] + rng.integers(-90, 90, (n, size, size)), 0, 255)
    return x.astype(np.uint8), y


TRAIN, VAL, TEST = synthetic(N, 0), synthetic(128, 1), synthetic(128, 2)


def model(seed=0):
    """The MLP fed uint8 images: ``scale_images`` in front of it."""
    return nnx.Sequential(scale_images, mlp(64, 10, (16,), key=jax.random.key(seed)))


def run(epochs, m=None, data=TRAIN, hooks=(), loss_fn=None, **kw):
    kw.setdefault("learning_rate", SCHED)
    kw.setdefault("chunks_per_epoch", 3)
    return fit(
        model() if m is None else m,
        optax.sgd,
        data,
        key=jax.random.key(1),
        config=FitConfig(epochs=epochs, batch_size=BATCH, hooks=hooks, **kw),
        loss_fn=loss_fn,
        val_data=VAL,
        test_data=TEST,
    )


def leaves(tree):
    return [np.asarray(jax.random.key_data(a) if _is_key(a) else a) for a in
            jax.tree.leaves(tree)]  # fmt: skip


def _is_key(a):
    return jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def assert_same(a, b):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def strip_times(history):
    return [{k: v for k, v in h.items() if k != "time_s"} for h in history]


class Losses(Hook):
    """Records every update's metrics."""

    def __init__(self):
        self.metrics, self.starts = [], []

    def act(self, run, end):
        self.metrics.append(end.metrics)
        self.starts.append(end.lo)
        return None

    def get(self, name):
        return np.concatenate([m[name] for m in self.metrics])


class StopAfter(Hook):
    def __init__(self, chunks):
        self.left = chunks

    def act(self, run, end):
        self.left -= 1
        return "requested" if self.left == 0 else None


def test_fit_learns_logs_the_applied_lr_and_scans_the_mlp():
    r = run(3)
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.test["accuracy"] > 0.25  # 10 classes: chance is 0.1
    for h in r.history:  # the last update of epoch e has index e * SPE - 1
        assert h["lr"] == pytest.approx(float(SCHED(h["epoch"] * SPE - 1)), rel=1e-6)
    assert r.step == 3 * SPE and r.epochs_run == 3 and not r.stopped_early
    assert r.timings.loop == "scan" and len(r.timings.epoch_s) == 3
    assert isinstance(r.model, type(model()))


def test_chunks_match_a_python_loop_of_the_step():
    """fit's scanned chunks == make_step dispatched once per batch on the host."""
    rec = Losses()
    r = run(2, hooks=[rec])
    spec, params, rest = split_model(model())
    tx = make_optimizer(optax.sgd, SCHED)
    step = jax.jit(make_step(spec, classification_loss(), tx))
    state, losses = init_state(params, rest, tx), []
    data = jax.tree.map(jnp.asarray, TRAIN)
    for e in range(2):
        idx = batch_indices(jax.random.fold_in(jax.random.key(1), e), N, BATCH, SPE)
        for i in idx:
            state, m = step(state, take(data, i))
            losses.append(float(m["loss"]))
    np.testing.assert_allclose(rec.get("loss"), losses, rtol=2e-5)
    for a, b in zip(leaves(r.params), leaves(state.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_accumulate_steps_equals_one_big_batch():
    """k micro-batches of B, averaged == one batch of k * B (same examples)."""
    small = fit(
        model(),
        optax.sgd,
        TRAIN,
        key=jax.random.key(1),
        config=FitConfig(
            epochs=1, batch_size=16, accumulate_steps=2, learning_rate=0.1
        ),
    )
    big = fit(model(), optax.sgd, TRAIN, key=jax.random.key(1),
              config=FitConfig(epochs=1, batch_size=32, learning_rate=0.1))  # fmt: skip
    assert small.step == big.step == SPE
    for x, y in zip(leaves(small.params), leaves(big.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    assert small.history[0]["train_loss"] == pytest.approx(
        big.history[0]["train_loss"], rel=1e-5
    )


def test_early_stopping_restores_best_model():
    # lr 0: the val loss never improves after epoch 1, so patience 2 stops at 3.
    r = run(10, learning_rate=0.0, patience=2)
    assert r.stopped_early and r.epochs_run == 3 and r.best_epoch == 1
    assert_same(nnx.state(r.model, nnx.Param), nnx.state(model(), nnx.Param))
    r = run(6, learning_rate=0.3, patience=6, monitor="val_loss")
    best = min(r.history, key=lambda h: h["val_loss"])
    assert r.best_epoch == best["epoch"]
    ev = evaluate(r.model, VAL)
    assert ev["loss"] == pytest.approx(best["val_loss"], rel=1e-6)


def test_custom_loss_metrics_reach_history_tensorboard_and_monitor(tmp_path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

    def loss_fn(m, batch):
        x, y = batch
        logits = m(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, {"margin": jnp.mean(jnp.max(logits, -1) - jnp.min(logits, -1))}

    ends = schedules.cosine_restart_steps(2 * SPE, num_steps=4 * SPE)
    rec = Losses()
    r = run(4, loss_fn=loss_fn, logdir=tmp_path, log_every=4, snapshot_steps=ends,
            monitor="val_margin", monitor_mode="max", patience=9,
            hooks=[rec])  # fmt: skip
    assert {"train_loss", "train_margin", "val_loss", "val_margin"} <= set(r.history[0])
    best = max(r.history, key=lambda h: h["val_margin"])["epoch"]
    assert r.best_epoch == best
    acc = ea.EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/margin", "val/loss", "val/margin"} <= tags
    assert "ensemble/accuracy" in tags
    lrs = acc.Scalars("train/lr")
    assert [e.step for e in lrs] == list(range(4, 4 * SPE + 1, 4))
    for e in lrs:  # logged at step s: the lr applied by update s - 1
        assert e.value == pytest.approx(float(SCHED(e.step - 1)), rel=1e-6)
    margins = rec.get("margin")
    assert any(a % 4 for a in rec.starts)  # windows that cross a chunk's start
    for e in acc.Scalars("train/margin"):  # the mean of the last 4 updates
        assert e.value == pytest.approx(margins[e.step - 4 : e.step].mean(), rel=1e-5)
    val = acc.Scalars("val/margin")
    assert [v.value for v in val] == pytest.approx([h["val_margin"] for h in r.history])
    assert [e.step for e in acc.Scalars("ensemble/accuracy")] == [2 * SPE, 4 * SPE]


def test_a_resume_keeps_the_saved_epochs_tensorboard_scalars(tmp_path):
    """TensorBoard drops a file's events from the purge step on: a resume purges
    after the checkpoint's step, so the saved epoch's own scalars (logged at that
    step) stay, and nothing is logged twice."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    kw = dict(logdir=tmp_path / "tb", checkpoint_dir=tmp_path / "ck", log_every=4)
    run(2, **kw)
    run(3, resume=True, **kw)
    acc = ea.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/loss")] == [SPE, 2 * SPE, 3 * SPE]
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(4, 3 * SPE + 1, 4))


def test_resume_is_exact_at_an_epoch_and_mid_epoch(tmp_path):
    ends = schedules.cosine_restart_steps(2 * SPE, num_steps=4 * SPE)
    common = dict(snapshot_steps=ends, patience=3, monitor="val_accuracy")
    full = run(4, checkpoint_dir=tmp_path / "full", **common)
    # Stopped after epoch 2 (launched for 2 epochs), resumed to 4.
    run(2, checkpoint_dir=tmp_path / "a", **common)
    resumed = run(4, checkpoint_dir=tmp_path / "a", resume=True, **common)
    # Stopped by a hook after the 2nd of 3 chunks of epoch 3 (as SIGTERM does).
    cut = run(4, checkpoint_dir=tmp_path / "b", hooks=[StopAfter(8)], **common)
    assert cut.interrupted and cut.stop_reason == "requested"
    assert cut.epochs_run == 2 and cut.step == 2 * SPE + 10 and cut.test is None
    assert cut.ensemble_val_curve is None  # interrupted: no curve of a partial run
    assert len(full.ensemble_val_curve) == len(ends)
    resumed_mid = run(4, checkpoint_dir=tmp_path / "b", resume=True, **common)
    for other in (resumed, resumed_mid):
        assert_same(other.params, full.params)
        assert_same(other.snapshots, full.snapshots)
        assert strip_times(other.history) == strip_times(full.history)
        assert other.test == full.test
        assert other.ensemble_curve == full.ensemble_curve
        assert other.ensemble_val_curve == full.ensemble_val_curve
        assert other.best_epoch == full.best_epoch


class CNN(nnx.Module):
    """Conv 3x3 (4 channels) - BatchNorm - ReLU - 2x2 max - Dropout - Dense."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(4 * 4 * 4, 10, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.bn(self.conv(scale_images(x)[..., None])))
        n = x.shape[0]
        x = x.reshape(n, 4, 2, 4, 2, 4).max((2, 4)).reshape(n, -1)
        return self.out(self.drop(x))


def cnn_run(tmp, module, **kw):
    ends = [3, 7]  # a snapshot at the end of each epoch: each keeps its BN stats
    return fit(module, lambda lr: optax.sgd(lr, momentum=0.9), synthetic(64, 5),
               key=jax.random.key(2), val_data=synthetic(32, 6),
               test_data=synthetic(32, 7),
               config=FitConfig(epochs=2, batch_size=16, learning_rate=0.05,
                                chunks_per_epoch=2, snapshot_steps=ends,
                                checkpoint_dir=tmp, hooks=kw.pop("hooks", ()),
                                **kw.pop("config", {})),
               **kw)  # fmt: skip


def test_cnn_with_batchnorm_and_dropout_resumes_bit_identically(tmp_path):
    module = CNN(rngs=nnx.Rngs(0))
    before = leaves(nnx.state(module))
    full = cnn_run(tmp_path / "full", module)
    assert full.timings.loop == "dispatch"  # a conv step on XLA:CPU
    for a, b in zip(leaves(nnx.state(module)), before, strict=True):
        np.testing.assert_array_equal(a, b)  # the caller's module is untouched
    stats = nnx.state(full.model, nnx.BatchStat)
    assert not np.allclose(leaves(stats)[1], 1.0)  # running var was trained
    counts = [leaves(nnx.state(full.model, nnx.RngCount))[0]]
    assert int(counts[0]) == 8  # Dropout drew once per update
    cut = cnn_run(tmp_path / "cut", CNN(rngs=nnx.Rngs(0)), hooks=[StopAfter(3)])
    assert cut.interrupted and cut.step == 6
    resumed = cnn_run(tmp_path / "cut", CNN(rngs=nnx.Rngs(0)),
                      config={"resume": True})  # fmt: skip
    assert_same(resumed.params, full.params)
    assert_same(resumed.model_state, full.model_state)  # BN stats and rng streams
    assert_same(resumed.snapshots, full.snapshots)
    assert strip_times(resumed.history) == strip_times(full.history)
    assert resumed.ensemble_curve == full.ensemble_curve
    assert resumed.ensemble_val_curve == full.ensemble_val_curve
    assert len(full.ensemble_val_curve) == 2  # each member with its own BN stats
    # Each snapshot predicts with its OWN batch stats: member 0 != final model.
    s_params, s_state = full.snapshots
    assert not np.array_equal(leaves(s_state)[0][0], leaves(s_state)[0][1])


def test_generator_data_and_a_pure_params_model():
    x, y = TRAIN
    apply_model = model()
    spec, params, _ = split_model(apply_model)

    def apply(p, xb):
        return spec.merge(p, nnx.State({}))(xb)  # model(): scales the images

    def batches():  # a one-shot generator: 2 epochs of 8 batches, then it ends
        for i in range(16):
            j = (i % 8) * 64
            yield x[j : j + 64], y[j : j + 64]

    loss_fn = classification_loss(apply)
    cfg = FitConfig(epochs=3, steps_per_epoch=8, learning_rate=0.1)
    r = fit(params, optax.sgd, batches(), key=jax.random.key(0), loss_fn=loss_fn,
            val_data=VAL, config=cfg)  # fmt: skip
    assert r.stop_reason == "data" and r.step == 16 and r.epochs_run == 2
    assert r.history[1]["val_loss"] < r.history[0]["val_loss"]
    assert jax.tree.structure(r.model) == jax.tree.structure(params)
    with pytest.raises(ValueError, match="steps_per_epoch is required"):
        fit(params, optax.sgd, batches(), key=jax.random.key(0), loss_fn=loss_fn)


def test_corrupt_checkpoint_is_a_clear_error_and_left_alone(tmp_path):
    run(1, checkpoint_dir=tmp_path)
    step_dir = tmp_path / "latest" / str(SPE)
    victims = sorted(p for p in (step_dir / "state").rglob("*") if p.is_file())
    assert victims
    for p in victims:
        p.write_bytes(b"garbage")
    before = {p: p.read_bytes() for p in step_dir.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="cannot resume") as e:
        run(2, checkpoint_dir=tmp_path, resume=True)
    assert "\n" not in str(e.value)
    after = {p: p.read_bytes() for p in step_dir.rglob("*") if p.is_file()}
    assert after == before


def test_a_checkpoint_of_another_run_is_one_line_naming_the_difference(tmp_path):
    """Resuming with fewer epochs than saved (an IndexError before), another
    batch size or another optimizer: one line each, the checkpoint left as it
    was. (Another model's shapes: hooks._why_unreadable's example; a failed
    array read leaves Orbax tasks that the next test's warnings would catch.)"""
    run(2, checkpoint_dir=tmp_path)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cases = [  # (match, epochs, batch size, model, optimizer)
        (r"holds 2 epochs, more than this run's 1: resume with epochs >= 2 \(it "
         r"continues\)", 1, BATCH, model(), optax.sgd),
        (rf"from a different run: steps_per_epoch {SPE} saved, {SPE // 2} now "
         r"\(another batch_size", 3, 2 * BATCH, model(), optax.sgd),
        (r"arranged as another model's or optimizer's", 3, BATCH, model(), optax.adam),
    ]  # fmt: skip
    for match, epochs, batch, m, optimizer in cases:
        config = FitConfig(epochs=epochs, batch_size=batch, learning_rate=SCHED,
                           checkpoint_dir=tmp_path, resume=True)  # fmt: skip
        with pytest.raises(CheckpointError, match=match) as e:
            fit(m, optimizer, TRAIN, key=jax.random.key(1), config=config)
        assert "\n" not in str(e.value) and "left untouched" in str(e.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files
    # Saved inside epoch 3 (stopped after 2 of its 3 chunks), resumed for 2.
    run(3, checkpoint_dir=tmp_path / "mid", hooks=[StopAfter(8)])
    with pytest.raises(CheckpointError, match=r"holds 2 epochs and 10 updates, more "
                       r"than this run's 2: resume with epochs >= 3 \(it"):  # fmt: skip
        run(2, checkpoint_dir=tmp_path / "mid", resume=True)
    # Saved with weight averaging, resumed without: named, not an array mismatch.
    run(1, checkpoint_dir=tmp_path / "avg", average_start=SPE // 2)
    saved = rf"from a different run: average \[{SPE // 2}, 1\] saved, None now"
    with pytest.raises(CheckpointError, match=saved):
        run(2, checkpoint_dir=tmp_path / "avg", resume=True)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="epochs must be"):
        run(-1)
    with pytest.raises(ValueError, match="monitor_mode"):
        run(1, monitor_mode="up")
    with pytest.raises(ValueError, match="loop must be"):
        run(1, loop="fast")
    with pytest.raises(ValueError, match="divisible by the number of devices"):
        data_mesh(30, devices=[object()] * 4)


DP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np, optax
    sys.path.insert(0, {tests!r})
    from test_fit import SPE, TRAIN, VAL, model
    from lrjax._src import schedules
    from lrjax._src.fit import FitConfig, fit
    assert jax.local_device_count() == 4, jax.local_devices()
    out = {{}}
    for dp in (False, True):
        cfg = FitConfig(epochs=2, learning_rate=schedules.cosine_restarts(0.05, SPE),
                        data_parallel=dp, chunks_per_epoch=2)
        r = fit(model(), optax.sgd, TRAIN, key=jax.random.key(1), config=cfg,
                val_data=VAL)
        out[str(dp)] = {{
            "params": [np.asarray(x).tolist() for x in jax.tree.leaves(r.params)],
            "val_loss": [h["val_loss"] for h in r.history],
            "sharding": str(jax.tree.leaves(r.params)[0].sharding),
        }}
    print(json.dumps(out))
    """
)


def test_data_parallel_matches_single_device():
    from tests.conftest import jax_cache_env  # here: the script imports this file

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.update(JAX_PLATFORMS="cpu", **jax_cache_env())
    code = DP_SCRIPT.format(tests=str(Path(__file__).parent))
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    single, dp = out["False"], out["True"]
    assert "data" not in single["sharding"] and "4" not in single["sharding"]
    for a, b in zip(single["params"], dp["params"], strict=True):
        # Same math, different reduction order across 4 shards: float32 noise.
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(single["val_loss"], dp["val_loss"], rtol=1e-4)


@pytest.mark.parametrize("k", [1, 2])
def test_process_share_in_one_process_is_the_gathered_batch(k):
    # Under several processes each one keeps its rows; alone, it keeps them all.
    from lrjax._src.batches import ProcessShare
    from lrjax._src.fit import _batch_sharding, _EpochArrays

    base = _EpochArrays(
        TRAIN, BATCH, jax.random.key(1), steps_per_epoch=SPE // k, accumulate_steps=k
    )
    share = ProcessShare(base, _batch_sharding(data_mesh(BATCH, jax.devices()[:1]), k))
    idx = np.asarray(base.chunk(3, 7))
    x, y = share.chunk(3, 7)
    assert x.shape == (4, *([k] if k > 1 else []), BATCH, 8, 8)
    np.testing.assert_array_equal(np.asarray(x), TRAIN[0][idx])
    np.testing.assert_array_equal(np.asarray(y), TRAIN[1][idx])
    assert not share.gathers and share.data is None
