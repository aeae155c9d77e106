"""Weight averaging (SWA) in fit and lrjax-train, against independent references."""

from __future__ import annotations

import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lrjax._src import ensembles
from lrjax._src.batches import batch_indices, scale_images
from lrjax._src.fit import CheckpointError, FitConfig, evaluate, fit
from lrjax._src.hooks import Hook, StopOnSignals
from lrjax.cli import train
from tests.test_fit import BATCH, SPE, TEST, TRAIN, VAL, N, assert_same, leaves, run


class BNMLP(nnx.Module):
    """Linear-BN-ReLU twice, Dropout, Linear: two BatchNorm layers in a row; it
    takes uint8 images."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(64, 16, rngs=rngs)
        self.bn1 = nnx.BatchNorm(16, rngs=rngs)
        self.l2 = nnx.Linear(16, 16, rngs=rngs)
        self.bn2 = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)  # after the BNs: no effect on them
        self.out = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        x = scale_images(x).reshape(x.shape[0], -1)
        x = jax.nn.relu(self.bn1(self.l1(x)))
        x = jax.nn.relu(self.bn2(self.l2(x)))
        return self.out(self.drop(x))


def bn_run(epochs=2, hooks=(), **kw):
    kw.setdefault("chunks_per_epoch", 3)
    return fit(BNMLP(rngs=nnx.Rngs(0)), lambda lr: optax.sgd(lr, momentum=0.9),
               TRAIN, key=jax.random.key(1), val_data=VAL, test_data=TEST,
               config=FitConfig(epochs=epochs, batch_size=BATCH, learning_rate=0.05,
                                hooks=hooks, **kw))  # fmt: skip


class Carries(Hook):
    def __init__(self):
        self.averages = []

    def act(self, run, end):
        self.averages.append(run.carry.average)
        return None


def test_running_average_is_the_numpy_mean_of_the_weights_at_the_chosen_steps():
    # A snapshot after every update is an independent record of the weights.
    start, every = 10, 3
    r = run(2, snapshot_steps=list(range(2 * SPE)), average_start=start,
            average_every=every)  # fmt: skip
    taken = list(range(start, 2 * SPE, every))
    assert r.average_start == start and r.average_count == len(taken) == 8
    stacked = r.snapshots[0]
    for avg, snaps in zip(leaves(r.average_params), leaves(stacked), strict=True):
        ref = snaps[taken].astype(np.float64).mean(0)
        assert avg.dtype == np.float32
        # float32 running mean of 8 terms: a few ulps of the weights' scale
        np.testing.assert_allclose(avg, ref, rtol=1e-6, atol=1e-6 * np.abs(snaps).max())
    ev = evaluate(r.averaged_model, TEST)
    assert ev == r.average_test
    assert r.average_val == evaluate(r.averaged_model, VAL)
    assert r.average_test_no_bn is None and r.average_bn_batches == 0  # no BN
    assert r.average_model_state == r.model_state  # nothing but params to average

    # Off: no average in the carry, and training is the same either way.
    rec = Carries()
    plain = run(2, snapshot_steps=list(range(2 * SPE)), hooks=[rec])
    assert all(a is None for a in rec.averages) and plain.averaged_model is None
    assert_same(plain.params, r.params)
    assert plain.timings.average_s is None and r.timings.average_s is not None


def numpy_batch_stats(params, xs):
    """Mean over the batches ``xs`` (uint8 images) of each BN layer's batch mean
    and (biased) variance, in float64, the layers in training mode."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(params))
    means = {"bn1": [], "bn2": []}
    vars_ = {"bn1": [], "bn2": []}
    for x in xs:
        h = x.reshape(len(x), -1).astype(np.float64) / 255.0
        for lin, bn in (("l1", "bn1"), ("l2", "bn2")):
            h = h @ p[lin]["kernel"] + p[lin]["bias"]
            m, v = h.mean(0), h.var(0)
            means[bn].append(m)
            vars_[bn].append(v)
            h = (h - m) / np.sqrt(v + 1e-5) * p[bn]["scale"] + p[bn]["bias"]
            h = np.maximum(h, 0)
    return {bn: (np.mean(means[bn], 0), np.mean(vars_[bn], 0)) for bn in means}


def assert_stats_close(stats, ref):
    # float32 forward passes against float64: a few ulps, relative
    for bn, (mean, var) in ref.items():
        np.testing.assert_allclose(stats[bn]["mean"][...], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[bn]["var"][...], var, rtol=1e-5, atol=1e-6)


def test_batchnorm_reestimation_equals_a_hand_written_pass():
    r = bn_run(average_start=SPE)
    assert r.timings.loop == "scan" and r.average_count == SPE
    assert r.average_bn_batches == SPE  # one epoch: epoch 0's batches
    idx = batch_indices(jax.random.fold_in(jax.random.key(1), 0), N, BATCH, SPE)
    ref = numpy_batch_stats(r.average_params, [TRAIN[0][i] for i in np.asarray(idx)])
    stats = nnx.state(r.averaged_model, nnx.BatchStat)
    assert_stats_close(stats, ref)
    # The params are the average, untouched by the pass; the rng streams are the
    # final training state's; the final running stats differ from the new ones.
    assert_same(nnx.state(r.averaged_model, nnx.Param), r.average_params)
    assert_same(nnx.state(r.averaged_model, nnx.RngState),
                nnx.state(r.model, nnx.RngState))  # fmt: skip
    old = nnx.state(r.model, nnx.BatchStat)
    assert not np.allclose(old["bn1"]["var"][...], stats["bn1"]["var"][...])
    # With and without the re-estimation, both through fit's evaluator.
    assert set(r.average_test) == set(r.average_test_no_bn) == {"loss", "accuracy"}
    no_bn = nnx.merge(nnx.graphdef(r.model), r.average_params, r.model_state)
    assert r.average_test_no_bn == evaluate(no_bn, TEST)
    assert r.average_test == evaluate(r.averaged_model, TEST)
    # The public update_bn equivalent gives the same statistics on those batches.
    again = ensembles.update_batch_stats(
        no_bn, [(TRAIN[0][i], TRAIN[1][i]) for i in np.asarray(idx)]
    )
    for a, b in zip(leaves(nnx.state(again, nnx.BatchStat)), leaves(stats),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_reestimation_over_an_iterable_of_micro_batches():
    # A list of 8 batches of 16, 2 micro-batches an update: 4 updates an epoch.
    # After training the list starts over: the pass sees all 8 micro-batches.
    xb = [TRAIN[0][i * 16 : (i + 1) * 16] for i in range(8)]
    data = [(x, TRAIN[1][i * 16 : (i + 1) * 16]) for i, x in enumerate(xb)]
    r = fit(BNMLP(rngs=nnx.Rngs(0)), optax.sgd, data, key=jax.random.key(1),
            config=FitConfig(epochs=2, learning_rate=0.05, accumulate_steps=2,
                             average_start=3, chunks_per_epoch=2))  # fmt: skip
    assert r.step == 8 and r.average_count == 5 and r.average_bn_batches == 8
    stats = nnx.state(r.averaged_model, nnx.BatchStat)
    assert_stats_close(stats, numpy_batch_stats(r.average_params, xb))


class RaiseSignal(Hook):
    """A real SIGTERM, delivered after chunk ``at`` (what `kill` does)."""

    def __init__(self, at):
        self.left = at

    def act(self, run, end):
        self.left -= 1
        if self.left == 0:
            signal.raise_signal(signal.SIGTERM)
        return None


def test_killed_and_resumed_run_gives_a_bit_identical_average(tmp_path):
    # Dispatched steps (as a conv on the CPU runs), BatchNorm and Dropout.
    common = dict(average_start=SPE // 2, loop="dispatch")
    full = bn_run(**common)
    with StopOnSignals() as stop:  # killed in the 2nd chunk of epoch 2
        cut = bn_run(checkpoint_dir=tmp_path / "cut", hooks=[RaiseSignal(5), stop],
                     **common)  # fmt: skip
    assert stop.received == signal.SIGTERM
    assert cut.interrupted and cut.stop_reason == "signal" and cut.step == 26
    assert cut.average_count == 26 - SPE // 2 and cut.averaged_model is None
    resumed = bn_run(checkpoint_dir=tmp_path / "cut", resume=True, **common)
    assert resumed.average_count == full.average_count == 2 * SPE - SPE // 2
    assert_same(resumed.params, full.params)
    assert_same(resumed.average_params, full.average_params)
    assert_same(resumed.average_model_state, full.average_model_state)
    assert resumed.average_test == full.average_test
    assert resumed.average_test_no_bn == full.average_test_no_bn
    # Averaging is part of what a checkpoint is for: another start is refused.
    with pytest.raises(CheckpointError, match="different run"):
        bn_run(checkpoint_dir=tmp_path / "cut", resume=True, average_start=3)


class StatModule(nnx.Module):
    """A BatchStat outside an nnx.BatchNorm: its update rule is unknown."""

    def __init__(self, *, rngs):
        self.lin = nnx.Linear(64, 10, rngs=rngs)
        self.seen = nnx.BatchStat(jnp.zeros(()))

    def __call__(self, x):
        return self.lin(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"average_start": -1}, "average_start must be None or an update index >= 0"),
        ({"average_start": 1.5}, "average_start must be None or an update index"),
        ({"average_start": 2 * SPE}, rf"past the last update of the run \({2 * SPE} "),
        ({"average_start": 0, "average_every": 0}, "average_every must be an integer"),
        ({"average_start": 0, "model": "stat"}, "BatchStat seen belongs to another"),
    ],
)
def test_bad_average_settings_are_one_clear_value_error(kw, needle):
    kw = dict(kw)
    m = StatModule(rngs=nnx.Rngs(0)) if kw.pop("model", None) else None
    with pytest.raises(ValueError, match=needle) as e:
        run(2, m=m, **kw)
    assert "\n" not in str(e.value)


def test_cli_average_from_writes_metrics_and_probs(tiny_fashion_mnist, tmp_path,
                                                   capsys):  # fmt: skip
    out = tmp_path / "run"
    argv = ["--data-dir", str(tiny_fashion_mnist), "--hidden", "16", "--lr", "0.1",
            "--schedule", "constant", "--epochs", "2", "--chunks", "2",
            "--no-plot", "--logdir", str(out), "--seed", "3"]  # fmt: skip
    assert train.main([*argv, "--average-from", "0.5", "--save-probs"]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    steps = m["history"][-1]["step"]  # 600 training images / 32: 18 an epoch
    avg = m["average"]
    assert avg["start_step"] == steps // 2 and avg["count"] == steps - steps // 2
    assert 0.3 < avg["test_accuracy"] <= 1 and 0 < avg["val_accuracy"] <= 1
    assert avg["test_accuracy_no_bn_update"] is None and avg["bn_batches"] == 0
    assert f"average({avg['count']}) {avg['test_accuracy']:.4f}" in printed
    probs = np.load(out / "test_probs_average.npy")
    assert probs.shape == (400, 10) and probs.dtype == np.float32
    assert np.mean(probs.argmax(1) == tiny_test_labels()) == pytest.approx(
        avg["test_accuracy"], abs=1e-6
    )
    assert not np.array_equal(probs, np.load(out / "test_probs.npy"))


def test_cli_refuses_a_fraction_outside_0_1(tiny_fashion_mnist, tmp_path, capsys):
    for bad in ("1", "-0.1", "1.5", "nan"):
        argv = ["--data-dir", str(tiny_fashion_mnist), "--average-from", bad,
                "--logdir", str(tmp_path / "r")]  # fmt: skip
        assert train.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--average-from must be a fraction" in err[0], err
        assert not (tmp_path / "r").exists()


def tiny_test_labels():
    from tests.conftest import TINY_TEST, make_images

    return make_images(TINY_TEST, 1)[1]
