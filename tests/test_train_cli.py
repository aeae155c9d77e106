"""``python -m lrjax.train`` in-process on a tiny IDX dataset (the real data path)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import signal
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lrjax._src import data, hooks
from lrjax.cli import train
from tests.test_records import FIT_TIMINGS

N_TRAIN, N_VAL, N_TEST = 512, 5000, 128  # load_dataset holds out 5000 for val
BASE = ["--dataset", "mnist", "--hidden", "16", "--quiet", "--seed", "3"]


def write_idx(path: Path, array: np.ndarray) -> None:
    code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), 1))


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """MNIST's code path with 8x8 images: 512 train, 5000 val, 128 test."""
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 200, (10, 8, 8))
    d = tmp_path / "idx"
    d.mkdir()
    for prefix, n in (("train", N_TRAIN + N_VAL), ("t10k", N_TEST)):
        y = rng.integers(0, 10, n)
        x = np.clip(templates[y] + rng.integers(-90, 90, (n, 8, 8)), 0, 255)
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", y)
    spec = data._SPECS["mnist"]
    files = tuple(f._replace(raw_sha256=None) for f in spec.files)
    small = dataclasses.replace(
        spec,
        image_shape=(8, 8),
        train_count=N_TRAIN + N_VAL,
        test_count=N_TEST,
        files=files,
    )
    monkeypatch.setitem(data._SPECS, "mnist", small)
    monkeypatch.setenv("LRJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LRJAX_JAX_CACHE", "off")  # keep the session cache (conftest)
    monkeypatch.delenv("LRJAX_DATA_DIR", raising=False)

    def no_network(*args, **kwargs):
        pytest.fail("a test touched the network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    return ["--data-dir", str(d), *BASE]


def one_line_error(capsys, rc) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrjax.train: error:"), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--epochs", "-1"], "--epochs must be >= 0"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--patience", "-2"], "--patience must be >= 0"),
        (["--snapshots", "2", "--schedule", "constant"], "needs a cyclic schedule"),
        # a shape flag of another schedule would be ignored: refused
        (
            ["--schedule", "wsd", "--min-lr", "0.05", "--lr", "0.1"],
            "--min-lr 0.05 shapes --schedule cosine_restarts, not --schedule wsd",
        ),
        (["--cycle-epochs", "1", "--schedule", "auto"], "--cycle-epochs 1 shapes"),
        (["--base-lr", "0.01", "--schedule", "one_cycle"], "--base-lr 0.01 shapes"),
        (["--period-mult", "2", "--schedule", "triangular"], "--period-mult 2 shapes"),
        (["--factor", "0.1", "--schedule", "constant"], "--factor 0.1 shapes --sch"),
        (["--lr", "0.1", "--lr-method", "knee"], "--lr-method chooses the peak"),
        (  # 512 // 171 = 2 updates: refused before the range test
            ["--batch-size", "171", "--epochs", "1", "--optimizer", "momentum"],
            "--schedule auto (one_cycle for momentum) needs at least 4 updates, got "
            "2 (1 epoch(s) of 2 at --batch-size 171): raise --epochs",
        ),
        (
            ["--snapshots", "5", "--epochs", "2", "--cycle-epochs", "1"],
            "more than the 2 complete cycles",
        ),
        (["--schedule", "cosine"], "invalid choice"),
        (["--hidden", "300,x"], "hidden must be"),
        (["--hidden", ""], "hidden must be"),
        (["--lr", "fast"], "--lr"),
        (["--lr", "-1"], "--lr"),
        (["--optimizer", "rmsprop"], "invalid choice"),
        (["--batch-size", "100000"], "larger than the training set"),
        (["--period-mult", "0.5"], "--period-mult must be >= 1"),
        (["--resume"], "no checkpoint in"),
        (["--resume", "--force", "--logdir", "x"], "exclude each other"),
    ],
)
def test_bad_input_is_one_line_exit_2(tiny, tmp_path, capsys, argv, needle):
    logdir = ["--logdir", str(tmp_path / "run")] if "--logdir" not in argv else []
    rc = train.main([*tiny, *logdir, *argv])
    assert needle in one_line_error(capsys, rc)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_existing_logdir_refused_and_resume_without_checkpoint(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    line = one_line_error(capsys, train.main([*tiny, "--logdir", str(run)]))
    assert "--resume" in line and "--force" in line
    line = one_line_error(capsys, train.main([*tiny, "--logdir", str(run), "--resume"]))
    assert "no checkpoint" in line
    line = one_line_error(capsys, train.main([*tiny, "--resume"]))
    assert "--resume needs --logdir" in line
    assert (run / "keep.txt").read_text() == "mine"


def read(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def without_times(m: dict) -> dict:
    m = dict(m)
    m.pop("timings")
    m["history"] = [{k: v for k, v in h.items() if k != "time_s"} for h in m["history"]]
    return m


SNAP_ARGS = [
    "--lr",
    "0.1",
    "--epochs",
    "3",
    "--cycle-epochs",
    "1",
    "--snapshots",
    "3",
    "--patience",
    "5",
    "--chunks",
    "2",
]


def test_full_run_writes_metrics_plot_events_checkpoints(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    loud = [a for a in tiny if a != "--quiet"]
    rc = train.main([*loud, *SNAP_ARGS, "--logdir", str(out), "--json"])
    stdout, stderr = capsys.readouterr()
    assert rc == 0
    m = read(out)
    assert json.loads(stdout) == m  # stdout is the JSON alone
    assert "epoch   1/3" in stderr and "epoch   3/3" in stderr  # epoch lines: stderr
    for k in (
        "test_accuracy",
        "val_accuracy",
        "best_epoch",
        "epochs_run",
        "stopped_early",
        "lr",
        "schedule",
        "timings",
        "device",
        "snapshots",
        "ensemble_test_accuracy",
        "ensemble_curve",
    ):
        assert k in m, k
    assert m["epochs_run"] == 3 and m["lr"] == 0.1 and not m["stopped_early"]
    assert m["schedule"]["name"] == "cosine_restarts"
    assert [s["epoch"] for s in m["snapshots"]] == [1.0, 2.0, 3.0]
    assert [e["m"] for e in m["ensemble_curve"]] == [1, 2, 3]
    assert (
        m["ensemble_curve"][0]["test_accuracy"] == m["snapshots"][-1]["test_accuracy"]
    )
    # m is chosen on the validation curve (held out of train), judged on test.
    val = [e["val_accuracy"] for e in m["ensemble_val_curve"]]
    best = m["best_ensemble"]
    assert best["chosen_on"] == "val" and best["m"] == val.index(max(val)) + 1
    assert best["val_accuracy"] == max(val)
    assert best["test_accuracy"] == m["ensemble_curve"][best["m"] - 1]["test_accuracy"]
    assert val[-1] == m["history"][-1]["ensemble_val_accuracy"]
    assert m["test_accuracy"] > 0.3
    assert list(m["timings"]) == [*FIT_TIMINGS, "wall_s"]  # fit's, and the CLI's
    png = (out / "learning_curves.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) < 300_000
    assert list(out.glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "latest").is_dir()
    assert (out / "checkpoints" / "best").is_dir()


def test_best_ensemble_m_is_chosen_on_validation_not_test():
    """A stand-in FitResult whose val and test curves peak at different m: the
    best ensemble takes the val argmax (ties: the smallest m) and reports the
    test accuracy there, not the test curve's maximum; no val curve, no choice."""
    result = SimpleNamespace(
        snapshot_epochs=[1.0, 2.0, 3.0, 4.0],  # planned; 3 written (early stop)
        snapshot_steps=[9, 19, 29, 39],
        snapshot_test_accuracy=[0.70, 0.74, 0.80],
        snapshot_val_accuracy=[0.72, 0.75, 0.86],
        ensemble_curve=[0.80, 0.90, 0.85],  # test: best at m = 2
        ensemble_val_curve=[0.86, 0.84, 0.86],  # val: m = 1 and 3 tie
    )
    m = train._ensemble_metrics(result)
    assert m["best_ensemble"] == {
        "m": 1,
        "chosen_on": "val",
        "val_accuracy": 0.86,
        "test_accuracy": 0.80,
    }
    assert [e["val_accuracy"] for e in m["ensemble_val_curve"]] == [0.86, 0.84, 0.86]
    assert [e["test_accuracy"] for e in m["ensemble_curve"]] == [0.80, 0.90, 0.85]
    assert m["snapshots"][-1] == {
        "epoch": 3.0, "step": 30, "val_accuracy": 0.86, "test_accuracy": 0.80,
    }  # fmt: skip
    assert len(m["snapshots"]) == 3 and m["ensemble_test_accuracy"] == 0.85

    result.ensemble_val_curve = result.snapshot_val_accuracy = None  # no val split
    m = train._ensemble_metrics(result)
    assert m["best_ensemble"] is None and m["ensemble_val_curve"] == []
    assert [e["test_accuracy"] for e in m["ensemble_curve"]] == [0.80, 0.90, 0.85]
    assert m["snapshots"][0]["val_accuracy"] is None


def test_lr_auto_uses_the_range_test_suggestion(tiny, tmp_path):
    out = tmp_path / "auto"
    rc = train.main(
        [
            *tiny,
            "--lr",
            "auto",
            "--schedule",
            "constant",
            "--epochs",
            "1",
            "--logdir",
            str(out),
            "--no-plot",
        ]
    )
    assert rc == 0
    m = read(out)
    assert m["lr_finder"]["method"] == "knee"
    assert m["lr"] == m["lr_finder"]["suggested_lr"] > 0
    assert m["history"][0]["lr"] == pytest.approx(m["lr"], rel=1e-6)


def test_signals_save_exit_130_143_and_resume_is_identical(tiny, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert train.main([*tiny, *SNAP_ARGS, "--logdir", str(full), "--no-plot"]) == 0
    original = hooks.StopOnSignals.act
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    for signum, code, at in ((signal.SIGINT, 130, 3), (signal.SIGTERM, 143, 4)):
        calls = []

        def chunk(self, *a, signum=signum, at=at, calls=calls):
            calls.append(1)  # a real signal, delivered while a chunk is done
            if len(calls) == at:  # after the 1st / 2nd chunk of epoch 2
                signal.raise_signal(signum)
            return original(self, *a)

        monkeypatch.setattr(hooks.StopOnSignals, "act", chunk)
        cut = tmp_path / f"cut{code}"
        rc = train.main([*tiny, *SNAP_ARGS, "--logdir", str(cut), "--no-plot"])
        assert rc == code
        assert not (cut / "metrics.json").exists()
        assert {s: signal.getsignal(s) for s in handlers} == handlers  # restored
        monkeypatch.setattr(hooks.StopOnSignals, "act", original)
        argv = [*tiny, *SNAP_ARGS, "--logdir", str(cut), "--no-plot", "--resume"]
        assert train.main(argv) == 0
        assert without_times(read(cut)) == without_times(read(full))


def test_a_stop_agreed_from_another_process_exits_143(tiny, tmp_path, monkeypatch):
    """Under several processes every one stops when one gets a signal (the loop
    agrees on the reason); one that received none itself exits 143 with the
    checkpoint message (int(None) raised TypeError here before)."""
    calls = []

    def chunk(self, *a):
        calls.append(1)
        return "signal" if len(calls) == 3 else None  # the peer's signal, agreed

    monkeypatch.setattr(hooks.StopOnSignals, "act", chunk)
    cut = tmp_path / "cut"
    assert train.main([*tiny, *SNAP_ARGS, "--logdir", str(cut), "--no-plot"]) == 143
    assert (cut / "checkpoints").is_dir() and not (cut / "metrics.json").exists()


def schedule_of(argv, steps_per_epoch=100, peak=0.2):
    args = train.build_parser().parse_args(argv)
    train._check(args)
    return train.make_schedule(args, peak, steps_per_epoch)


def test_default_lr_method():
    assert train.default_lr_method("cosine_restarts", "sgd") == "divergence"
    assert train.default_lr_method("constant", "sgd") == "knee"
    assert train.default_lr_method("cosine_restarts", "nesterov") == "knee"
    assert train.default_lr_method("triangular", "adam") == "knee"


def test_schedules_and_snapshot_points():
    # SGDR with T0 = 2 epochs and T_mult = 2 (2+4+8+16 = 30 epochs), each
    # restart's peak 0.8 times the previous one.
    sched, desc, snaps = schedule_of(["--schedule", "cosine_restarts"])
    assert desc["cycle_ends"] == [199, 599, 1399, 2999] and snaps is None
    assert desc["peak_decay"] == 0.8
    assert float(sched(0)) == pytest.approx(0.2)
    assert float(sched(200)) == pytest.approx(0.16, rel=1e-5)
    assert float(sched(1400)) == pytest.approx(0.2 * 0.8**3, rel=1e-5)
    _, desc, _ = schedule_of(["--peak-decay", "1"])  # a restart flag: SGDR
    assert desc["name"] == "cosine_restarts" and desc["peak_decay"] == 1.0
    # Huang et al.: M cycles of P = T // M steps, T_mult = 1, eta_min = 0.
    sched, desc, snaps = schedule_of(["--snapshots", "6"])
    assert snaps.tolist() == [499, 999, 1499, 1999, 2499, 2999]
    assert desc["peak_decay"] == 1.0 and float(sched(2500)) == pytest.approx(0.2)
    assert float(sched(250)) == pytest.approx(0.1, rel=1e-5)
    # M does not divide T: the first cycle takes the leftover steps, so the
    # last cycle still ends at the last step (no restart at the very end).
    sched, desc, snaps = schedule_of(["--snapshots", "7"])
    assert snaps.tolist() == [432 + k * 428 - 1 for k in range(7)]  # 3000 = 7 * 428 + 4
    assert snaps[-1] == 2999 and float(sched(2999)) < 1e-4
    # A long first cycle then short ones; the snapshots are the last M ends.
    sched, desc, snaps = schedule_of(
        ["--first-cycle-epochs", "15", "--cycle-epochs", "5", "--snapshots", "3"]
    )
    assert desc["cycle_ends"] == [1499, 1999, 2499, 2999]
    assert snaps.tolist() == [1999, 2499, 2999]
    assert float(sched(1499)) < 1e-6 and float(sched(1500)) == pytest.approx(0.2)
    assert float(sched(750)) == pytest.approx(0.1, rel=1e-5)
    # Triangular cycles end at their lowest lr; M cycles over T here as well.
    _, desc, snaps = schedule_of(["--schedule", "triangular", "--snapshots", "2"])
    assert snaps.tolist() == [1499, 2999]
    _, desc, snaps = schedule_of(
        ["--schedule", "triangular", "--cycle-epochs", "4", "--snapshots", "2"]
    )
    assert snaps.tolist() == [2399, 2799]
    with pytest.raises(train.UsageError, match="first-cycle-epochs needs"):
        schedule_of(["--schedule", "triangular", "--first-cycle-epochs", "3"])


def test_default_schedule_is_the_recipe_and_names_every_number():
    """No --schedule: the recipe recommended for the optimizer's kind
    (lrjax.recipes.AUTO_FAMILIES) at the given peak, built by
    lrjax.recipes.build_schedule for the whole budget."""
    from lrjax._src.recipes import AUTO_FAMILIES, OPTIMIZER_KINDS, build_schedule

    sched, desc, snaps = schedule_of([])  # 30 epochs of 100 updates, peak 0.2
    ref, params = build_schedule(AUTO_FAMILIES["sgd"], 0.2, 3000)
    assert snaps is None and desc["name"] == "auto"
    assert {k: desc[k] for k in params} == params
    t = np.arange(0, 3001, 37)
    np.testing.assert_array_equal(np.asarray(sched(t)), np.asarray(ref(t)))
    for family in ("one_cycle", "warmup_cosine", "linear_decay", "wsd"):
        _, desc, _ = schedule_of(["--schedule", family, "--epochs", "2"])
        assert desc["family"] == family and desc["total_steps"] == 200
    _, desc, _ = schedule_of(["--schedule", "onecycle"])  # the 0.1 name
    assert desc["family"] == "one_cycle"
    for opt, kind in OPTIMIZER_KINDS.items():  # auto: the optimizer kind's family
        _, desc, _ = schedule_of(["--optimizer", opt, "--epochs", "2"])
        assert desc["family"] == AUTO_FAMILIES[kind] and desc["name"] == "auto"
    _, desc, _ = schedule_of(["--snapshots", "3"])  # Huang et al.'s restarts
    assert desc["name"] == "cosine_restarts"


def test_lr_auto_recipe_writes_family_rule_and_numbers(tiny, tmp_path, capsys):
    """--lr auto with the default schedule: the peak is the recipe rule's
    multiple of the range test's suggestion; metrics.json names them all."""
    from lrjax._src.recipes import AUTO_FAMILIES, PEAK_RULES

    AUTO_FAMILY = AUTO_FAMILIES["sgd"]  # the default optimizer, sgd

    out = tmp_path / "recipe"
    loud = [a for a in tiny if a != "--quiet"]  # the summary lines are the point
    rc = train.main([*loud, "--epochs", "2", "--logdir", str(out), "--no-plot"])
    assert rc == 0
    printed = capsys.readouterr().out
    m = read(out)
    rule = PEAK_RULES["sgd"][AUTO_FAMILY]  # the default optimizer, sgd
    finder = m["lr_finder"]
    s = m["schedule"]
    method, factor = rule.method, rule.multiple(s["total_steps"])
    assert finder["method"] == method
    assert m["lr"] == pytest.approx(factor * finder["suggestions"][method])
    assert s["family"] == AUTO_FAMILY and s["peak_lr"] == m["lr"]
    assert s["rule"].startswith(
        f"peak = {factor:.4g} x {method} ({finder['suggestions'][method]:.4g})"
    )
    assert "lr auto: recipe " + AUTO_FAMILY in printed and "schedule: " in printed
    # the lr each epoch ended with is the schedule's at that step
    from lrjax._src.recipes import build_schedule

    ref, _ = build_schedule(AUTO_FAMILY, m["lr"], s["total_steps"])
    steps = s["total_steps"] // 2
    assert m["history"][0]["lr"] == pytest.approx(float(ref(steps - 1)), rel=1e-5)
    # --lr-method overrides the peak: that suggestion itself
    out2 = tmp_path / "valley"
    argv = [*tiny, "--epochs", "1", "--lr-method", "valley", "--logdir", str(out2)]
    assert train.main([*argv, "--no-plot"]) == 0
    m2 = read(out2)
    assert m2["lr"] == pytest.approx(m2["lr_finder"]["suggestions"]["valley"])
    assert m2["schedule"]["rule"].startswith("peak = 1 x valley")


def test_resume_continues_the_saved_flags_and_refuses_others(
    tiny, tmp_path, monkeypatch, capsys
):
    """``--epochs 2`` interrupted, then ``--resume`` alone: it ends at epoch 2 (the
    default is 30), as the uninterrupted run did; a flag that contradicts the saved
    run is one line, exit 2, and leaves the run as it was."""
    flags = ["--lr", "0.1", "--epochs", "2", "--chunks", "2", "--no-plot"]
    full = tmp_path / "full"
    assert train.main([*tiny, *flags, "--logdir", str(full)]) == 0
    original = hooks.StopOnSignals.act
    calls = []

    def chunk(self, *a):
        calls.append(1)
        if len(calls) == 3:  # after the first chunk of epoch 2
            signal.raise_signal(signal.SIGINT)
        return original(self, *a)

    monkeypatch.setattr(hooks.StopOnSignals, "act", chunk)
    cut = tmp_path / "cut"
    assert train.main([*tiny, *flags, "--logdir", str(cut)]) == 130
    monkeypatch.setattr(hooks.StopOnSignals, "act", original)
    capsys.readouterr()

    for argv, needle in (
        (["--epochs", "3"], "--epochs 3 contradicts the saved run's --epochs 2"),
        (["--lr", "auto"], "--lr auto contradicts the saved run's --lr 0.1"),
        (["--schedule", "wsd"], "--schedule wsd contradicts"),
        (["--augment"], "--augment contradicts the saved run's no --augment"),
    ):
        rc = train.main(["--logdir", str(cut), "--resume", *argv])
        line = one_line_error(capsys, rc)
        assert needle in line and "run.json" in line, line
        assert not (cut / "metrics.json").exists()

    # only --logdir and --resume: the saved run goes on, its --data-dir included
    resume = ["--logdir", str(cut), "--resume"]
    assert train.main(resume) == 0
    got = read(cut)
    assert got["epochs_run"] == 2 and len(got["history"]) == 2
    assert without_times(got) == without_times(read(full))
    # flags that agree with the saved ones (or are the defaults they left) are fine
    agree = [*resume, "--epochs", "2", "--lr", "0.1", "--schedule", "auto", "--json"]
    assert train.main(agree) == 0
    assert (
        json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs_run"] == 2
    )


def test_ctrl_c_before_training_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    def setup(args):
        raise KeyboardInterrupt  # e.g. while the data load

    monkeypatch.setattr(train, "_setup", setup)
    assert train.main([*tiny, "--logdir", str(tmp_path / "o")]) == 130
    assert capsys.readouterr() == ("", "lrjax.train: interrupted\n")


def test_weight_decay_is_what_was_applied_for_every_optimizer(tiny, tmp_path):
    """metrics.json records the decay the optimizer applied (adamw's default 1e-4
    was recorded as null); adam takes --weight-decay as L2 (the guide's table),
    as lrjax-grid and lrjax-find --sweep already did (it was refused here)."""
    from lrjax.cli import decay_of

    assert [decay_of(o, None) for o in ("sgd", "adam", "adamw")] == [0.0, 0.0, 1e-4]
    assert decay_of("adamw", 0.0) == 0.0 and decay_of("sgd", 5e-4) == 5e-4
    for opt, flag, applied in (("adam", ["--weight-decay", "1e-3"], 1e-3),
                               ("adamw", [], 1e-4)):  # fmt: skip
        logdir = tmp_path / opt
        argv = [*tiny, "--optimizer", opt, *flag, "--lr", "0.001", "--epochs", "1",
                "--schedule", "constant", "--logdir", str(logdir), "--no-plot",
                "--quiet"]  # fmt: skip
        assert train.main(argv) == 0
        assert read(logdir)["weight_decay"] == applied


def test_the_summary_line_names_the_ensemble_chosen_on_validation():
    """The all-M ensemble overstated nothing but was not the one best_ensemble
    chose: the line shows the chosen m and its test accuracy."""
    metrics = {
        "test_accuracy": 0.85, "ensemble_curve": [{}, {}, {}],
        "ensemble_test_accuracy": 0.8555, "average": None, "best_epoch": 4,
        "epochs_run": 4, "stopped_early": False,
        "best_ensemble": {"m": 2, "chosen_on": "val", "val_accuracy": 0.8762,
                          "test_accuracy": 0.8604},
    }  # fmt: skip
    assert train._test_line(metrics) == (
        "test accuracy 0.8500  ensemble(last 2 of 3, m chosen on val) 0.8604  "
        "best epoch 4  epochs 4"
    )
    assert "ensemble(3) 0.8555" in train._test_line({**metrics, "best_ensemble": None})
