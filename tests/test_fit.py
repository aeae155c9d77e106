"""The fit loop: lr logging, early stopping, TensorBoard, exact resume, devices."""

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

from lrjax import schedules, trainer
from lrjax.data import Dataset
from lrjax.models import mlp

N, BATCH = 512, 32
SPE = N // BATCH  # steps per epoch


def synthetic_dataset(seed=0, n=N):
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(123).integers(0, 200, (10, 8, 8))

    def split(m):
        y = rng.integers(0, 10, m).astype(np.int32)
        x = np.clip(templates[y] + rng.integers(-90, 90, (m, 8, 8)), 0, 255)
        return x.astype(np.uint8), y

    return Dataset(*split(n), *split(128), *split(128), num_classes=10, name="synth")


DS = synthetic_dataset()


def model(seed=0):
    return mlp(64, 10, (16,), key=jax.random.key(seed))


def run(epochs, **kw):
    apply, params = model()
    kw.setdefault("learning_rate", schedules.cosine_restarts(0.05, 2 * SPE))
    kw.setdefault("chunks_per_epoch", 3)
    return trainer.fit(
        apply, params, optax.sgd, DS, key=jax.random.key(1), epochs=epochs, **kw
    )


def assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def strip_times(history):
    return [{k: v for k, v in h.items() if k != "time_s"} for h in history]


def test_fit_learns_and_logs_the_applied_lr():
    sched = schedules.cosine_restarts(0.05, 2 * SPE)
    r = run(3, learning_rate=sched)
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    assert r.test["accuracy"] > 0.25  # 10 classes: chance is 0.1
    for h in r.history:
        # The last update of epoch e has index e * SPE - 1.
        assert h["lr"] == pytest.approx(float(sched(h["epoch"] * SPE - 1)), rel=1e-6)
    assert r.step == 3 * SPE and r.epochs_run == 3 and not r.stopped_early
    assert r.timings["compile_s"] > 0 and len(r.timings["epoch_s"]) == 3


def test_early_stopping_restores_best_params():
    # lr 0: the val loss never improves after epoch 1, so patience 2 stops at 3.
    apply, params = model()
    r = run(10, learning_rate=0.0, patience=2)
    assert r.stopped_early and r.epochs_run == 3 and r.best_epoch == 1
    assert_same_params(r.params, params)
    # A real run: the returned params are those of the best val-loss epoch.
    r = run(6, learning_rate=0.3, patience=6, monitor="val_loss")
    best = min(r.history, key=lambda h: h["val_loss"])
    assert r.best_epoch == best["epoch"]
    ev = jax.jit(__import__("lrjax.training").training.make_evaluate(apply))(
        r.params, jnp.asarray(DS.x_val), jnp.asarray(DS.y_val)
    )
    assert float(ev["loss"]) == pytest.approx(best["val_loss"], rel=1e-6)


def test_tensorboard_events_readable_by_tensorboard(tmp_path):
    ea_mod = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    sched = schedules.cosine_restarts(0.05, 2 * SPE)
    ends = schedules.cosine_restart_steps(2 * SPE, num_steps=4 * SPE)
    r = run(4, learning_rate=sched, logdir=tmp_path, log_every=4, snapshot_steps=ends)
    acc = ea_mod.EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "val/accuracy"} <= tags
    assert "ensemble/accuracy" in tags
    lrs = acc.Scalars("train/lr")
    assert [e.step for e in lrs] == list(range(4, 4 * SPE + 1, 4))
    for e in lrs:  # logged at step s: the lr applied by update s - 1
        assert e.value == pytest.approx(float(sched(e.step - 1)), rel=1e-6)
    val = acc.Scalars("val/accuracy")
    assert [v.value for v in val] == pytest.approx(
        [h["val_accuracy"] for h in r.history]
    )
    ens = acc.Scalars("ensemble/accuracy")
    assert [e.step for e in ens] == [2 * SPE, 4 * SPE]


def test_resume_is_exact_at_an_epoch_and_mid_epoch(tmp_path):
    ends = schedules.cosine_restart_steps(2 * SPE, num_steps=4 * SPE)
    common = dict(snapshot_steps=ends, patience=3, monitor="val_accuracy")
    full = run(4, checkpoint_dir=tmp_path / "full", **common)

    # Stopped after epoch 2 (the run was launched for 2 epochs), resumed to 4.
    run(2, checkpoint_dir=tmp_path / "a", **common)
    resumed = run(4, checkpoint_dir=tmp_path / "a", resume=True, **common)

    # Interrupted between two chunks of epoch 3 (as SIGINT does), resumed.
    calls = []

    def stop():
        calls.append(1)
        # Polled after every chunk and after every epoch: 4 calls an epoch.
        return len(calls) == 10  # after the 2nd of 3 chunks of epoch 3

    cut = run(4, checkpoint_dir=tmp_path / "b", should_stop=stop, **common)
    assert cut.interrupted and cut.epochs_run == 2 and cut.step == 2 * SPE + 10
    assert cut.test is None
    resumed_mid = run(4, checkpoint_dir=tmp_path / "b", resume=True, **common)

    for other in (resumed, resumed_mid):
        assert_same_params(other.params, full.params)
        assert_same_params(other.snapshots, full.snapshots)
        assert strip_times(other.history) == strip_times(full.history)
        assert other.test == full.test
        assert other.ensemble_curve == full.ensemble_curve
        assert other.best_epoch == full.best_epoch


def test_corrupt_checkpoint_is_a_clear_error_and_left_alone(tmp_path):
    run(1, checkpoint_dir=tmp_path)
    step_dir = tmp_path / "latest" / str(SPE)
    victims = sorted(p for p in (step_dir / "state").rglob("*") if p.is_file())
    assert victims
    for p in victims:
        p.write_bytes(b"garbage")
    before = {p: p.read_bytes() for p in step_dir.rglob("*") if p.is_file()}
    with pytest.raises(trainer.CheckpointError, match="cannot resume") as e:
        run(2, checkpoint_dir=tmp_path, resume=True)
    assert "\n" not in str(e.value)
    after = {p: p.read_bytes() for p in step_dir.rglob("*") if p.is_file()}
    assert after == before


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="epochs and patience"):
        run(-1)
    with pytest.raises(ValueError, match="monitor"):
        run(1, monitor="loss")
    with pytest.raises(ValueError, match="divisible by the number of devices"):
        trainer.data_mesh(30, devices=[object()] * 4)


DP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np, optax
    sys.path.insert(0, {tests!r})
    from test_trainer import DS, SPE, model
    from lrjax import schedules, trainer
    assert jax.local_device_count() == 4, jax.local_devices()
    out = {{}}
    for dp in (False, True):
        apply, params = model()
        r = trainer.fit(apply, params, optax.sgd, DS, key=jax.random.key(1),
                        epochs=2, learning_rate=schedules.cosine_restarts(0.05, SPE),
                        data_parallel=dp, chunks_per_epoch=2)
        out[str(dp)] = {{
            "params": [np.asarray(x).tolist() for x in jax.tree.leaves(r.params)],
            "val_loss": [h["val_loss"] for h in r.history],
            "sharding": str(jax.tree.leaves(r.params)[0].sharding),
        }}
    print(json.dumps(out))
    """
)


def test_data_parallel_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
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
