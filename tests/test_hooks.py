"""One hook protocol (#18): a trigger says when, an action what, for every driver.

The same hook class runs under fit, lr_range_test, step_range_test and lr_grid;
what it sees is checked against the results' own arrays.
"""

from __future__ import annotations

import io
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrjax
import lrjax.hooks
from lrjax import Divergence, Execution, FitConfig, GridConfig, Hook, Sweep, Trigger
from lrjax._src.hooks import Checkpoints, ChunkEnd, Run
from lrjax._src.loop import epoch_plan, uniform_plan
from lrjax._src.models import mlp

N, BATCH = 256, 32
SPE = N // BATCH  # 8 updates per epoch


def synthetic(n: int, seed: int):
    """Float features, labels from a fixed linear rule (4 classes)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    w = np.random.default_rng(123).normal(size=(16, 4))
    return x, np.argmax(x @ w, axis=1).astype(np.int32)


TRAIN, VAL = synthetic(N, 0), synthetic(64, 1)


def model(k):
    return mlp(16, 4, (8,), key=k)


class Seen(Hook):
    """Everything a hook is shown: start, each act, end."""

    def __init__(self, trigger: Trigger | None = None, stop_at: int | None = None):
        if trigger is not None:
            self.trigger = trigger
        self.stop_at = stop_at
        self.started: int | None = None
        self.ends: list[ChunkEnd] = []
        self.steps: list[int] = []  # run.step at each act
        self.reason: str | None = "never ended"

    def start(self, run):
        self.started = run.step

    def act(self, run, end):
        assert run.step == end.hi  # the run is current before any hook acts
        copy = {k: np.array(v) for k, v in end.metrics.items()}
        self.ends.append(ChunkEnd(end.lo, end.hi, copy, None, end.record))
        self.steps.append(run.step)
        if self.stop_at is not None and end.hi >= self.stop_at:
            return "enough"
        return None

    def end(self, run, reason):
        self.reason = reason

    def his(self):
        return [e.hi for e in self.ends]

    def metric(self, name):
        return np.concatenate([e.metrics[name] for e in self.ends])


def range_test(*hooks, num_steps=40, chunks=4, stop=False, **sweep):
    """A sweep of ``num_steps``; it stops at a divergence only with ``stop``."""
    return lrjax.lr_range_test(
        model,
        optax.sgd,
        TRAIN,
        key=jax.random.key(0),
        sweep=Sweep(num_steps=num_steps, batch_size=BATCH, **sweep),
        divergence=Divergence(stop=stop),
        execution=Execution(chunks=chunks, hooks=hooks),
    )


def grid(*hooks, epochs=2):
    return lrjax.lr_grid(
        model,
        optax.sgd,
        TRAIN,
        VAL,
        lrs=[0.01, 0.3],
        key=jax.random.key(0),
        config=GridConfig(epochs=epochs, batch_size=BATCH),
        execution=Execution(hooks=hooks),
    )


def fit(*hooks, epochs=2, **config):
    config.setdefault("chunks_per_epoch", 2)
    return lrjax.fit(
        model,
        optax.sgd,
        TRAIN,
        key=jax.random.key(0),
        config=FitConfig(
            epochs=epochs, batch_size=BATCH, learning_rate=0.1, hooks=hooks, **config
        ),
        val_data=VAL,
    )


def test_triggers_fire_at_the_worked_updates_and_epochs():
    run = Run(total_steps=24, steps_per_epoch=6)
    chunks = [ChunkEnd(lo, hi, {}, None) for lo, hi in epoch_plan(0, 24, 6, 2)]
    assert [c.hi for c in chunks] == [3, 6, 9, 12, 15, 18, 21, 24]

    def fired(trigger, seconds=0.0):
        return [c.hi for c in chunks if trigger.fires(run, c, seconds)]

    # a multiple of 5 completed in (lo, hi]: 5 in (3, 6], 10 in (9, 12], ...
    assert fired(Trigger(every_steps=5)) == [6, 12, 15, 21]
    assert fired(Trigger(every_steps=3)) == [3, 6, 9, 12, 15, 18, 21, 24]
    assert fired(Trigger(every_epochs=1)) == [6, 12, 18, 24]
    assert fired(Trigger(every_epochs=3)) == [18]
    assert fired(Trigger()) == [c.hi for c in chunks]  # no condition: every chunk
    assert fired(Trigger(at_end=True)) == []  # the driver's, after the last chunk
    assert fired(Trigger(every_seconds=2.0), 1.9) == []
    assert fired(Trigger(every_seconds=2.0), 2.0) == [c.hi for c in chunks]
    assert fired(Trigger(every_steps=12, every_epochs=3)) == [12, 18, 24]  # any
    # without epochs (a range test) an epoch trigger never fires
    assert [c.hi for c in chunks if Trigger(every_epochs=1).fires(Run(24), c, 0)] == []
    for bad in (dict(every_steps=0), dict(every_epochs=1.5), dict(every_seconds=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Trigger(**bad)


def test_triggers_act_at_those_updates_under_the_drivers():
    # lr_range_test: 40 updates in chunks of 10 (uniform_plan); every 15 updates
    assert uniform_plan(40, 4) == [(0, 10), (10, 20), (20, 30), (30, 40)]
    every15, at_end = Seen(Trigger(every_steps=15)), Seen(Trigger(at_end=True))
    r = range_test(every15, at_end, init_value=1e-4, end_value=1e-2)
    assert r.stop_reason is None and r.steps_run == 40
    assert every15.his() == [20, 30]  # 15 in (10, 20], 30 in (20, 30]
    assert at_end.his() == [40] and at_end.reason is None
    # a sweep that diverges stops early: at_end acts once, on the last chunk run
    at_end = Seen(Trigger(at_end=True))
    r = range_test(at_end, num_steps=400, chunks=40, stop=True, end_value=1e6)
    assert r.stop_reason == "diverged" and r.steps_run < 400
    assert at_end.his() == [r.steps_run] and at_end.reason == "diverged"
    # fit: 4 epochs of 8 updates, 2 chunks each; every 2nd epoch, every 12 updates
    every2, every12 = Seen(Trigger(every_epochs=2)), Seen(Trigger(every_steps=12))
    r = fit(every2, every12, epochs=4)
    assert every2.his() == [2 * SPE, 4 * SPE]
    assert [e.record["epoch"] for e in every2.ends] == [2, 4]
    assert every12.his() == [12, 24]  # 12 in (8, 12], 24 in (20, 24]; 36 > 32
    # lr_grid: one chunk per epoch; every 2nd of 3 epochs
    every2 = Seen(Trigger(every_epochs=2))
    grid(every2, epochs=3)
    assert every2.his() == [2 * SPE]


def test_the_same_hook_sees_each_drivers_steps_and_metrics():
    # lr_range_test: the per-update metrics of each chunk are the result's curves
    seen = Seen()
    r = range_test(seen, init_value=1e-4, end_value=1e-2)
    assert seen.started == 0 and seen.reason is None
    assert [(e.lo, e.hi) for e in seen.ends] == [(0, 10), (10, 20), (20, 30), (30, 40)]
    assert seen.steps == [10, 20, 30, 40]
    np.testing.assert_array_equal(seen.metric("loss"), r.losses[0])
    np.testing.assert_array_equal(seen.metric("lr"), r.lrs)
    assert all(e.record is None for e in seen.ends)  # a range test has no epochs

    # step_range_test: every update is a chunk of one
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    w = jnp.zeros((16, 4))
    state = (w, tx.init(w))

    @jax.jit
    def step(state, batch):
        w, opt = state
        loss, g = jax.value_and_grad(
            lambda w: optax.softmax_cross_entropy_with_integer_labels(
                batch[0] @ w, batch[1]
            ).mean()
        )(w)
        updates, opt = tx.update(g, opt)
        return (optax.apply_updates(w, updates), opt), {"loss": loss}

    seen = Seen()
    r = lrjax.step_range_test(
        step, state, TRAIN, key=jax.random.key(0),
        sweep=Sweep(num_steps=12, batch_size=BATCH, end_value=1e-2),
        execution=Execution(hooks=[seen]),
    )  # fmt: skip
    assert [(e.lo, e.hi) for e in seen.ends] == [(t, t + 1) for t in range(12)]
    np.testing.assert_array_equal(seen.metric("loss"), r.losses[0])
    np.testing.assert_array_equal(seen.metric("lr"), r.lrs)
    assert seen.reason is None

    # lr_grid: [updates, members] per chunk; each epoch's record is its evaluation
    seen = Seen()
    r = grid(seen)
    assert seen.his() == [SPE, 2 * SPE] and seen.reason is None
    losses = seen.metric("loss").astype(np.float64)  # [2 * SPE, members]
    assert losses.shape == (2 * SPE, 2)
    train_loss = losses.reshape(2, SPE, 2).mean(axis=1).T  # [members, epochs]
    np.testing.assert_array_equal(train_loss, r.train_loss[:, 0])
    np.testing.assert_array_equal(seen.metric("lr").T, r.applied_lr)
    for e, end in enumerate(seen.ends):
        assert end.record["epoch"] == e + 1 and end.record["step"] == (e + 1) * SPE
        acc = end.record["val_accuracy"].astype(np.float64)
        np.testing.assert_array_equal(acc, r.val_accuracy[:, 0, e])

    # fit: the chunks of 2 epochs, each epoch's record is its history entry
    seen = Seen()
    r = fit(seen)
    assert [(e.lo, e.hi) for e in seen.ends] == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert seen.started == 0 and seen.reason is None
    assert [e.record for e in seen.ends] == [None, r.history[0], None, r.history[1]]
    for h in r.history:
        rows = slice((h["epoch"] - 1) * SPE, h["epoch"] * SPE)
        losses = seen.metric("loss")[rows].astype(np.float64)
        assert h["train_loss"] == pytest.approx(losses.mean(), rel=1e-12)
        assert h["lr"] == seen.metric("lr")[rows][-1]


def test_a_hooks_reason_stops_each_driver_at_that_chunk():
    stop = Seen(stop_at=20)
    r = range_test(stop, init_value=1e-4, end_value=1e-2)
    assert r.stop_reason == "enough" and r.steps_run == 20 and stop.reason == "enough"
    assert r.losses.shape == (1, 20)

    stop = Seen(stop_at=SPE)  # after the first of 3 epochs
    r = grid(stop, epochs=3)
    assert r.stop_reason == "enough" and r.epochs == 1 and stop.his() == [SPE]
    assert r.val_accuracy.shape == (2, 1, 1) and r.applied_lr.shape == (2, SPE)
    assert json.loads(json.dumps(r.to_json()))["stop_reason"] == "enough"

    stop = Seen(stop_at=12)  # mid-epoch 2 (chunks of 4)
    r = fit(stop, epochs=3)
    assert r.stop_reason == "enough" and r.interrupted and r.step == 12
    assert r.epochs_run == 1 and stop.his() == [4, 8, 12]

    # the first reason wins, and every hook still acts on that chunk
    first, second = Seen(stop_at=20), Seen()
    r = range_test(first, second, init_value=1e-4, end_value=1e-2)
    assert r.stop_reason == "enough" and second.his() == [10, 20]
    assert second.reason == "enough"
    later = Seen(Trigger(every_epochs=1))  # early stopping is the run's own
    r = fit(later, epochs=8, monitor="train_loss", monitor_mode="max", patience=1)
    assert r.stop_reason == "early_stop" and later.his() == [SPE, 2 * SPE]


def checkpoint_steps(directory):
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def latest_meta(directory):
    """The host state of the newest ``latest/`` checkpoint (Orbax's JSON item)."""
    step = checkpoint_steps(directory / "latest")[-1]
    meta = directory / "latest" / str(step) / "meta" / "metadata"
    return json.loads(meta.read_text())


class Best(Hook):
    """What the run says the best epoch is when each epoch's hooks act."""

    trigger = Trigger(every_epochs=1)

    def __init__(self):
        self.best = []

    def act(self, run, end):
        self.best.append((end.record["epoch"], dict(run.best)))


def test_checkpoints_need_no_early_stopping_hook_before_them(tmp_path):
    """The best epoch was EarlyStopping's: Checkpoints wrote ``best/`` only when
    that hook had acted before it in the same epoch (placed after it, or absent,
    ``best/`` stayed empty and ``latest/`` held the previous epoch's best). The
    run keeps it now, before any hook acts: Checkpoints alone, first, is right."""
    ckpt, best = Checkpoints(tmp_path / "alone"), Best()
    r = fit(ckpt, best, epochs=4, monitor="val_loss")
    want = min(r.history, key=lambda h: h["val_loss"])
    assert r.best_epoch == want["epoch"]
    for epoch, seen in best.best:  # current when the hooks act, epoch by epoch
        so_far = min(r.history[:epoch], key=lambda h: h["val_loss"])
        assert seen["epoch"] == so_far["epoch"] and seen["value"] == so_far["val_loss"]
    assert checkpoint_steps(tmp_path / "alone" / "best") == [want["epoch"] * SPE]
    meta = latest_meta(tmp_path / "alone")
    assert meta["best"]["epoch"] == want["epoch"]
    assert meta["best"]["value"] == want["val_loss"]

    # early stopping: the checkpoint saved at the stop knows the run stopped, so
    # a resume trains no further (a hook order could lose that before)
    kw = dict(epochs=8, monitor="train_loss", monitor_mode="max", patience=1)
    cut = fit(checkpoint_dir=tmp_path / "stop", **kw)
    assert cut.stopped_early and cut.stop_reason == "early_stop" and cut.step == 2 * SPE
    assert latest_meta(tmp_path / "stop")["stopped_early"] is True
    again = fit(checkpoint_dir=tmp_path / "stop", resume=True, **kw)
    assert again.stopped_early and again.step == cut.step
    assert again.history == cut.history


def test_execution_hooks_are_checked():
    assert Execution(hooks=[Seen()]).hooks[0].__class__ is Seen  # kept as a tuple
    with pytest.raises(ValueError, match="lrjax.Hook objects, got function"):
        Execution(hooks=[lambda end: None])
    with pytest.raises(ValueError, match="a sequence of lrjax.Hook objects"):
        Execution(hooks=Seen())


def test_the_first_epochs_time_leaves_out_the_hooks_start(monkeypatch):
    """A hook's ``start`` (TensorBoard's writer took 2.3 s) is not epoch 1's time:
    a start that moves the clock 100 s on leaves ``epoch_s[0]`` under it."""
    import time

    real = time.perf_counter
    offset = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real() + offset[0])

    class SlowStart(Hook):
        def start(self, run):
            offset[0] += 100.0

    r = fit(SlowStart(), epochs=2)
    assert r.timings.epoch_s[0] < 50 and r.timings.run_s < 50
    assert r.timings.total_s > 100  # the hook's start happened, inside the run


def test_fit_takes_its_hooks_in_its_config_and_checks_them():
    """FitConfig.hooks, as Execution.hooks; 0.2's fit(..., hooks=) is told where
    it went; a bad hook is one line before any update."""
    seen = Seen()
    r = fit(seen, epochs=1)  # the helper: FitConfig(hooks=(seen,))
    assert r.epochs_run == 1 and seen.his() == [SPE // 2, SPE]  # 2 chunks an epoch
    moved = r"^fit: hooks moved in 0.3.0: pass config=lrjax.FitConfig\(hooks=\.\.\.\)$"
    with pytest.raises(TypeError, match=moved):
        lrjax.fit(model, optax.sgd, TRAIN, key=jax.random.key(0), hooks=[seen])
    with pytest.raises(ValueError, match="lrjax.Hook objects, got builtin_function"):
        fit(print, epochs=1)
    with pytest.raises(ValueError, match="a sequence of lrjax.Hook objects, got Seen"):
        lrjax.fit(model, optax.sgd, TRAIN, key=jax.random.key(0),
                  config=FitConfig(hooks=seen))  # fmt: skip


def test_one_progress_bar_for_every_driver(capsys):
    """The range test's bar counts updates, the grid's epochs, fit's one bar per
    epoch with the loss and lr; each is closed at the end."""
    from tqdm import tqdm

    lrjax.lr_range_test(
        model, optax.sgd, TRAIN, key=jax.random.key(0),
        sweep=Sweep(num_steps=40, batch_size=BATCH, end_value=1e-2),
        divergence=Divergence(stop=False), execution=Execution(chunks=4, progress=True),
    )  # fmt: skip
    err = capsys.readouterr().err
    assert "lr range test:" in err and "40/40" in err and "lr=0.01" in err
    assert "step/s" in err or "s/step" in err
    lrjax.lr_grid(
        model, optax.sgd, TRAIN, VAL, lrs=[0.01, 0.3], key=jax.random.key(0),
        config=GridConfig(epochs=2, batch_size=BATCH),
        execution=Execution(progress=True),
    )  # fmt: skip
    err = capsys.readouterr().err
    assert "lr grid:" in err and "2/2" in err and "best_acc=" in err
    assert "epoch/s" in err or "s/epoch" in err
    fit(progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2:" in err and "epoch 2/2:" in err and f"{SPE}/{SPE}" in err
    assert "loss=" in err and "lr=0.1" in err
    assert not tqdm._instances  # every bar closed


LINE = re.compile(
    r"^(\w+): step (\d+) of (\d+) \((\d+\.\d)%\)(?:, epoch (\d+) of (\d+))?, "
    r"([0-9.e+]+) steps/s(, about \S+ (?:s|min|h|days) left)?$"
)


def progress_lines(text: str) -> list[tuple]:
    """Each line's (desc, step, total, percent, epoch, epochs, rate, left)."""
    rows = [LINE.match(line) for line in text.splitlines()]
    assert all(rows), text
    return [m.groups() for m in rows if m]


def test_progress_lines_count_every_drivers_steps():
    """Every chunk's line (``every_seconds`` tiny, nothing first): the step it
    ended, its percent, the epoch where the run has epochs, a time left until
    the last."""
    lines = lrjax.hooks.ProgressLines("rt", first_after=0, every_seconds=1e-9)
    lines.file = io.StringIO()
    range_test(lines, num_steps=40, chunks=4)
    rows = progress_lines(lines.file.getvalue())
    assert [(d, int(s), int(t)) for d, s, t, *_ in rows] == [
        ("rt", s, 40) for s in (10, 20, 30, 40)
    ]
    assert [p for *_, p, _, _, _, _ in rows] == ["25.0", "50.0", "75.0", "100.0"]
    assert all(r[6] is not None and float(r[6]) > 0 for r in rows)
    assert [r[7] is None for r in rows] == [False, False, False, True]
    assert all(r[4] is None for r in rows)  # no epochs in a range test

    lines.file = io.StringIO()
    grid(lines, epochs=2)
    rows = progress_lines(lines.file.getvalue())
    assert [(int(s), int(t), e, es) for _, s, t, _, e, es, _, _ in rows] == [
        (SPE, 2 * SPE, "1", "2"), (2 * SPE, 2 * SPE, "2", "2"),
    ]  # fmt: skip


def test_progress_lines_name_the_epoch_a_step_is_in():
    lines = lrjax.hooks.ProgressLines("fit", first_after=0, every_seconds=1e-9)
    lines.file = io.StringIO()
    run = Run(total_steps=4 * SPE, steps_per_epoch=SPE)
    lines.start(run)
    for hi in (SPE // 2, SPE, SPE + 1):  # inside epoch 1, its end, epoch 2's start
        run.step, run.epoch = hi, hi // SPE
        lines.act(run, ChunkEnd(hi - 1, hi, {}, None))
    rows = progress_lines(lines.file.getvalue())
    assert [(int(s), e, es) for _, s, _, _, e, es, _, _ in rows] == [
        (SPE // 2, "1", "4"), (SPE, "1", "4"), (SPE + 1, "2", "4"),
    ]  # fmt: skip


def test_progress_lines_wait_first_after_then_every_seconds(monkeypatch):
    clock = iter([0.0, 1.0, 4.0, 6.0, 7.0, 40.0])  # start, then one per chunk
    monkeypatch.setattr(lrjax._src.hooks.time, "perf_counter", lambda: next(clock))
    lines = lrjax.hooks.ProgressLines("p", file=io.StringIO())  # 5 s, then 30 s
    run = Run(total_steps=1000)
    lines.start(run)
    for hi in (100, 200, 300, 400, 500):  # at 1, 4, 6, 7, 40 s
        lines.act(run, ChunkEnd(hi - 100, hi, {}, None))
    rows = progress_lines(lines.file.getvalue())
    # at 6 s (first after 5 s) and 40 s (30 s later); the rate counts from the
    # first chunk's end (1 s, step 100): 200 / 5 s, then 400 / 39 s
    assert [(s, rate, left) for _, s, _, _, _, _, rate, left in rows] == [
        ("300", "40", ", about 18 s left"),
        ("500", "10.26", ", about 49 s left"),
    ]
    with pytest.raises(ValueError, match="every_seconds must be > 0 or None, got 0"):
        lrjax.hooks.ProgressLines("p", every_seconds=0)
