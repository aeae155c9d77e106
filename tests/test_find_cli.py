"""``python -m lrjax.find`` in-process: outputs agree with each other, bad input is
one line and exit code 2, nothing a user saved is overwritten."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys

import numpy as np
import pytest

import lrjax
import lrjax.hooks
from lrjax import find
from lrjax.cli import find as find_cli
from lrjax.cli import progress
from tests.test_records import RANGE_CONFIG, RANGE_TIMINGS


def run(capsys, *argv):
    code = find.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_outputs_exist_and_agree(tiny_fashion_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys,
        "--data-dir",
        str(tiny_fashion_mnist),
        "--out",
        str(out),
        "--hidden",
        "32",
        "--steps",
        "60",
        "--batch-size",
        "16",
        "--min-lr",
        "1e-3",
        "--max-lr",
        "1",
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "lr_find.csv",
        "lr_find.json",
        "lr_find.png",
    ]
    doc = json.loads((out / "lr_find.json").read_text())
    for k in (
        "suggested_lr",
        "method",
        "suggestions",
        "diverged_at_lr",
        "lrs",
        "losses",
        "smoothed_losses",
        "seeds",
        "spread",
        "steps_run",
        "timings",
        "device",
        "config",
    ):
        assert k in doc
    assert doc["seeds"] == 1 and doc["spread"] is None
    assert doc["method"] == "knee" and set(doc["timings"]) >= {"compile_s", "run_s"}
    assert doc["config"]["num_steps"] == 60 and doc["config"]["hidden"] == [32]
    # the range test's keys, then the command line's (#18: the JSON is unchanged)
    assert list(doc["timings"]) == RANGE_TIMINGS
    flags = ["dataset", "model", "augment", "hidden", "seed", "method"]
    assert list(doc["config"]) == RANGE_CONFIG + flags
    assert doc["config"]["optimizer"] == "sgd" and doc["config"]["method"] == "knee"
    n = doc["steps_run"]
    # one seed keeps its axis: [seeds, steps_run]
    assert np.shape(doc["lrs"]) == (n,) and np.shape(doc["losses"]) == (1, n)
    assert np.shape(doc["smoothed_losses"]) == np.shape(doc["metrics"]["accuracy"])
    assert np.shape(doc["metrics"]["accuracy"]) == (1, n)
    assert doc["lrs"][0] == pytest.approx(1e-3, rel=1e-6)
    with (out / "lr_find.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    np.testing.assert_allclose([float(r["lr"]) for r in rows], doc["lrs"])
    np.testing.assert_allclose([float(r["loss"]) for r in rows], doc["losses"][0])
    np.testing.assert_allclose(
        [float(r["smoothed_loss"]) for r in rows], doc["smoothed_losses"][0]
    )
    np.testing.assert_allclose(
        [float(r["accuracy"]) for r in rows], doc["metrics"]["accuracy"][0]
    )
    assert doc["timings"]["loop"] == "scan" and doc["stop_reason"] in (None, "diverged")
    assert f"suggested lr: {doc['suggested_lr']:.4g}" in stdout
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_flag_several_seeds(tiny_fashion_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys,
        "--data-dir",
        str(tiny_fashion_mnist),
        "--out",
        str(out),
        "--json",
        "--hidden",
        "16",
        "--steps",
        "40",
        "--seeds",
        "2",
        "--no-plot",
        "--method",
        "minimum",
        "--optimizer",
        "adam",
        "--min-lr",
        "1e-4",
        "--max-lr",
        "1",
    )
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc == json.loads((out / "lr_find.json").read_text())
    assert doc["seeds"] == 2 and np.shape(doc["losses"]) == (2, doc["steps_run"])
    assert len(doc["spread"]["per_seed"]) == 2
    assert doc["suggested_lr"] == doc["suggestions"]["minimum"]
    assert not (out / "lr_find.png").exists()
    header = (out / "lr_find.csv").read_text().splitlines()[0]
    assert header == (
        "step,lr,loss_seed0,smoothed_loss_seed0,accuracy_seed0,"
        "loss_seed1,smoothed_loss_seed1,accuracy_seed1"
    )
    assert np.shape(doc["metrics"]["accuracy"]) == (2, doc["steps_run"])


def test_existing_output_is_never_overwritten(tiny_fashion_mnist, tmp_path, capsys):
    out = tmp_path / "saved"
    out.mkdir()
    (out / "lr_find.json").write_text("precious")
    args = [
        "--data-dir",
        str(tiny_fashion_mnist),
        "--out",
        str(out),
        "--hidden",
        "8",
        "--steps",
        "10",
        "--no-plot",
        "--quiet",
    ]
    code, _, err = run(capsys, *args)
    assert code == 2 and "--force" in err and err.count("\n") == 1
    assert (out / "lr_find.json").read_text() == "precious"
    code, _, err = run(capsys, *args, "--force")
    assert code == 0, err
    assert json.loads((out / "lr_find.json").read_text())["steps_run"] >= 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--min-lr", "0"], "--min-lr: must be a finite number > 0, got 0"),
        (["--min-lr", "-1"], "--min-lr: must be a finite number > 0, got -1"),
        (["--min-lr", "1", "--max-lr", "0.1"], "--min-lr must be < --max-lr"),
        (["--steps", "1"], "--steps: must be >= 2, got 1"),
        (["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        (["--batch-size", "100000"], "--batch-size 100000 is larger than"),
        (["--optimizer", "lion"], "invalid choice: 'lion'"),
        (["--method", "best"], "invalid choice: 'best'"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--hidden", "300,x"], "hidden must be a comma-separated list"),
        (["--smooth", "1.5"], "--smooth must be in [0, 1)"),
        (["--diverge-threshold", "0.5"], "--diverge-threshold must be > 1"),
        (["--seeds", "0"], "--seeds: must be >= 1, got 0"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_fashion_mnist, capsys, argv, needle):
    code, out, err = run(capsys, "--data-dir", str(tiny_fashion_mnist), *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("lrjax.find: error: ")
    assert needle in err
    assert "Traceback" not in err and out == ""


def test_missing_or_corrupt_dataset_exit_2(tiny_fashion_mnist, tmp_path, capsys):
    code, _, err = run(
        capsys, "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")
    )
    assert code == 2 and "not found" in err and err.count("\n") == 1
    (tiny_fashion_mnist / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    code, _, err = run(
        capsys, "--data-dir", str(tiny_fashion_mnist), "--out", str(tmp_path / "o2")
    )
    assert code == 2 and "train-labels-idx1-ubyte.gz" in err
    assert err.count("\n") == 1


def test_unwritable_out_exit_2(tiny_fashion_mnist, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(
        capsys, "--data-dir", str(tiny_fashion_mnist), "--out", str(blocker / "sub")
    )
    assert code == 2 and "cannot write to output directory" in err
    code, _, err = run(
        capsys, "--data-dir", str(tiny_fashion_mnist), "--out", str(blocker)
    )
    assert code == 2 and "is not a directory" in err


# ------------------------------------------------ --sweep: a second hyperparameter


def test_sweep_weight_decay_writes_every_curve(tiny_fashion_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys,
        "--data-dir",
        str(tiny_fashion_mnist),
        "--out",
        str(out),
        "--hidden",
        "16",
        "--steps",
        "40",
        "--seeds",
        "2",
        "--optimizer",
        "adamw",
        "--min-lr",
        "1e-4",
        "--max-lr",
        "1",
        "--sweep",
        "weight_decay=0,1e-5,1e-3",
    )
    assert code == 0, err
    doc = json.loads((out / "lr_find.json").read_text())
    sw = doc["sweep"]
    n = doc["steps_run"]
    assert sw["name"] == "weight_decay" and sw["values"] == [0.0, 1e-5, 1e-3]
    assert np.shape(sw["losses"]) == np.shape(sw["smoothed_losses"]) == (3, 2, n)
    assert np.shape(sw["metrics"]["accuracy"]) == (3, 2, n)
    assert len(sw["suggested_lr"]) == len(sw["diverged_at_lr"]) == 3
    best = sw["recommended"]["index"]
    assert sw["recommended"]["value"] == sw["values"][best]
    assert doc["suggested_lr"] == sw["recommended"]["lr"] == sw["suggested_lr"][best]
    assert doc["losses"] == sw["losses"][best]
    with (out / "lr_find.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and len(rows[0]) == 2 + 3 * 2 * 3
    for i, v in enumerate(["0", "1e-05", "0.001"]):
        for k in range(2):
            np.testing.assert_allclose(
                [float(r[f"smoothed_loss_weight_decay={v}_seed{k}"]) for r in rows],
                sw["smoothed_losses"][i][k],
            )
    assert f"weight_decay={sw['values'][best]:g}, lr=" in stdout
    assert stdout.count("<- recommended") == 1 and "x 3 values x 2 seeds" in stdout
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_momentum_of_sgd_one_seed(tiny_fashion_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys,
        "--data-dir",
        str(tiny_fashion_mnist),
        "--out",
        str(out),
        "--json",
        "--no-plot",
        "--hidden",
        "16",
        "--steps",
        "30",
        "--sweep",
        "momentum=0,0.9",
    )
    assert code == 0, err
    doc = json.loads(stdout)
    assert np.shape(doc["sweep"]["losses"]) == (2, 1, doc["steps_run"])
    header = (out / "lr_find.csv").read_text().splitlines()[0]
    assert header == (
        "step,lr,loss_momentum=0,smoothed_loss_momentum=0,accuracy_momentum=0,"
        "loss_momentum=0.9,smoothed_loss_momentum=0.9,accuracy_momentum=0.9"
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["--sweep", "beta=0,1"],
            "the optimizer has no hyperparameter 'beta'; it takes weight_decay, "
            "momentum",
        ),
        (
            ["--optimizer", "adam", "--sweep", "momentum=0,0.9"],
            "no hyperparameter 'momentum'; it takes weight_decay",
        ),
        (["--sweep", "weight_decay="], "weight_decay needs a comma-separated list"),
        (["--sweep", "weight_decay=0,,1"], "weight_decay needs a comma-separated list"),
        (["--sweep", "weight_decay=0,big"], "values must be numbers, got 'big'"),
        (["--sweep", "weight_decay"], "expected NAME=V1,V2,..."),
        (["--sweep", "weight_decay=0,-1e-4"], "weight_decay must be >= 0, got -0.0001"),
        (["--sweep", "momentum=0,1.5"], "momentum must be in [0, 1), got 1.5"),
        (["--sweep", "weight_decay=nan"], "values must be finite"),
        (
            ["--sweep", "weight_decay=0,1e-4", "--sweep", "momentum=0,0.9"],
            "--sweep takes one hyperparameter, got 2 (weight_decay, momentum)",
        ),
    ],
)
def test_bad_sweep_is_one_line_and_exit_2(tiny_fashion_mnist, capsys, argv, needle):
    code, out, err = run(capsys, "--data-dir", str(tiny_fashion_mnist), *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("lrjax.find: error: ")
    assert needle in err
    assert "Traceback" not in err and out == ""


class CtrlC(lrjax.hooks.Hook):
    """Sends this process SIGINT after its first chunk, as a user's Ctrl-C."""

    def act(self, run, end):
        if not getattr(self, "sent", False):
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def ctrl_c_in_the_run(monkeypatch, module):
    """The command line's progress hooks replaced by :class:`CtrlC`."""
    monkeypatch.setattr(
        module, "progress", lambda prog, quiet: {"progress": False, "hooks": [CtrlC()]}
    )


def test_ctrl_c_stops_the_sweep_and_writes_the_curve_so_far(
    tiny_fashion_mnist, tmp_path, monkeypatch, capsys
):
    ctrl_c_in_the_run(monkeypatch, find_cli)
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys, "--data-dir", str(tiny_fashion_mnist), "--out", str(out),
        "--steps", "1000000", "--batch-size", "16", "--no-plot",
    )  # fmt: skip
    doc = json.loads((out / "lr_find.json").read_text())
    steps = doc["steps_run"]
    assert code == 130 and doc["stop_reason"] == "signal"
    assert 0 < steps < 1_000_000 and len(doc["lrs"]) == steps
    assert err == (
        f"lrjax.find: stopped by signal 2 at step {steps} of 1000000; the curve so "
        f"far is in {out}\n"
    )
    assert f"steps run:    {steps} of 1000000" in stdout


def test_ctrl_c_before_the_sweep_is_one_line(
    tiny_fashion_mnist, tmp_path, monkeypatch, capsys
):
    def load(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(find_cli, "load_data", load)
    code, stdout, err = run(capsys, "--out", str(tmp_path / "o"))
    assert (code, stdout) == (130, "")
    assert err == "lrjax.find: interrupted\n"


def test_progress_is_a_bar_on_a_terminal_lines_on_a_pipe(monkeypatch):
    assert progress("p", quiet=True) == {"progress": False, "hooks": []}
    (lines,) = progress("p", quiet=False)["hooks"]  # stderr is pytest's capture
    assert isinstance(lines, lrjax.hooks.ProgressLines) and lines.desc == "p"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress("p", quiet=False) == {"progress": True, "hooks": []}


def test_steps_beyond_the_step_counter_are_refused(tmp_path, capsys):
    code, stdout, err = run(capsys, "--steps", str(2**31 + 1), "--out", str(tmp_path))
    assert code == 2 and stdout == ""
    assert err == (
        "lrjax.find: error: argument --steps: must be <= 2147483648, got 2147483649\n"
    )
