"""``python -m lrjax.grid`` in-process on tiny IDX files: outputs, and bad input as one
line on stderr with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lrjax import grid
from lrjax.cli import grid as grid_cli
from tests.test_find_cli import ctrl_c_in_the_run
from tests.test_records import (
    GRID_CONFIG,
    GRID_MEMORY,
    GRID_TIMINGS,
    RANGE_CONFIG,
    RANGE_TIMINGS,
)


def run(capsys, *argv):
    code = grid.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_grid_with_find_writes_json_and_png(tiny_fashion_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys,
        "--data-dir", str(tiny_fashion_mnist), "--out", str(out),
        "--hidden", "16", "--batch-size", "20", "--optimizer", "momentum",
        "--min-lr", "1e-3", "--max-lr", "1", "--num", "4", "--seeds", "2",
        "--epochs", "2", "--schedule", "cosine", "--find", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["grid.json", "grid.png"]
    doc = json.loads((out / "grid.json").read_text())
    assert json.loads(stdout) == doc
    np.testing.assert_allclose(doc["lrs"], [1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)
    acc = np.array(doc["val_accuracy"], dtype=float)
    assert acc.shape == (4, 2, 2)  # [lr][seed][epoch]
    assert np.array(doc["val_loss"], dtype=float).shape == (4, 2, 2)
    final = acc[:, :, -1].mean(axis=1)
    assert doc["best_lr"] == pytest.approx(doc["lrs"][int(np.argmax(final))])
    assert doc["memory"]["members"] == 8 and doc["memory"]["state_bytes"] > 0
    assert set(doc["timings"]) >= {"compile_s", "run_s"} and doc["device"]
    assert doc["config"]["schedule"] == "cosine" and doc["config"]["hidden"] == [16]
    # the grid's keys, then the command line's (#18: the JSON is unchanged)
    assert list(doc["timings"]) == GRID_TIMINGS
    assert list(doc["memory"]) == GRID_MEMORY
    flags = [
        "dataset", "optimizer", "weight_decay", "model", "augment", "hidden", "seed",
        "schedule", "min_lr", "max_lr", "around_recipe",
    ]  # fmt: skip
    assert list(doc["config"]) == GRID_CONFIG + ["family"] + flags
    assert doc["config"]["around_recipe"] is None
    assert doc["config"]["weight_decay"] == 0.0  # applied (momentum: none)
    assert doc["config"]["family"] == "cosine"
    assert list(doc["range_test"]["timings"]) == RANGE_TIMINGS + ["population"]
    assert list(doc["range_test"]["config"]) == RANGE_CONFIG  # no flags there
    assert doc["steps_per_epoch"] == 600 // 20
    rt = doc["range_test"]
    assert set(rt["suggestions"]) >= {"steep", "valley", "minimum", "divergence"}
    assert len(rt["spread"]["per_seed"]) == 2  # the range test ran with --seeds
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_names_the_best_lr(tiny_fashion_mnist, tmp_path, capsys):
    code, stdout, err = run(
        capsys,
        "--data-dir", str(tiny_fashion_mnist), "--out", str(tmp_path / "o"),
        "--hidden", "16", "--batch-size", "50", "--num", "3",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((tmp_path / "o" / "grid.json").read_text())
    assert f"best lr: {doc['best_lr']:.4g}" in stdout
    assert "range_test" not in doc


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--min-lr", "1", "--max-lr", "0.1"], "--min-lr must be < --max-lr"),
        (["--min-lr", "-1"], "must be a finite number > 0, got -1"),
        (["--num", "1"], "must be >= 2, got 1"),
        (["--epochs", "0"], "must be >= 1, got 0"),
        (["--seeds", "zero"], "expected an integer, got 'zero'"),
        (["--schedule", "linear"], "invalid choice: 'linear'"),
        (["--hidden", "16,x"], "hidden must be a comma-separated list"),
        (["--batch-size", "100000"], "--batch-size 100000 is larger than the training"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (
            ["--around-recipe", "4", "--schedule", "wsd", "--min-lr", "0.1"],
            "--around-recipe sets the lrs around the recipe's peak; drop --min-lr",
        ),
        (["--around-recipe", "1", "--schedule", "wsd"], "must be > 1"),
        (["--around-recipe", "2"], "needs a recipe family (one_cycle, "),
        (  # 600 // 200 = 3 updates: too short for a one-cycle, refused at once
            ["--schedule", "all", "--batch-size", "200", "--epochs", "1"],
            "--schedule all needs at least 4 updates, got 3 (1 epoch(s) of 3 at "
            "--batch-size 200): raise --epochs or lower --batch-size",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tiny_fashion_mnist, tmp_path, capsys, argv, message
):
    base = ["--data-dir", str(tiny_fashion_mnist), "--out", str(tmp_path / "o")]
    code, out, err = run(capsys, *base, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("lrjax.grid: error: ")
    assert message in err


def test_refuses_a_non_empty_out_dir(tiny_fashion_mnist, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    code, _, err = run(
        capsys, "--data-dir", str(tiny_fashion_mnist), "--out", str(tmp_path / "o")
    )
    assert code == 2 and "is not empty; pass --force" in err
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"


def test_an_impossible_population_is_one_line_and_exit_2_in_seconds(
    tiny_fashion_mnist, tmp_path, capsys
):
    """10 million models: refused from the memory estimate before they are built
    (tests/test_lr_grid.py checks that the factory ran once)."""
    code, out, err = run(
        capsys,
        "--data-dir", str(tiny_fashion_mnist), "--out", str(tmp_path / "o"),
        "--num", "100000", "--seeds", "100",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("lrjax.grid: error: ")
    assert "10000000 members need about " in err
    assert " GiB available; lower the number of lrs or seeds (lrs, " in err
    assert "lrjax-grid --num, --seeds)" in err


def test_schedule_all_is_a_family_x_peak_grid_with_recipe_regret(
    tiny_fashion_mnist, tmp_path, capsys
):
    """--schedule all --find: every recipe family in one program, and each
    family's recommended peak scored against the best cell of the whole grid."""
    import math

    from lrjax._src.recipes import FAMILIES, PEAK_RULES

    out = tmp_path / "all"
    code, stdout, err = run(
        capsys,
        "--data-dir", str(tiny_fashion_mnist), "--out", str(out),
        "--hidden", "16", "--batch-size", "20", "--optimizer", "momentum",
        "--min-lr", "1e-3", "--max-lr", "3", "--num", "3", "--epochs", "2",
        "--schedule", "all", "--find",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "grid.json").read_text())
    assert list(doc["families"]) == list(FAMILIES)
    finals = {}
    for name, g in doc["families"].items():
        assert np.array(g["val_accuracy"], dtype=float).shape == (3, 1, 2)
        assert g["config"]["family"] == name and g["memory"]["members"] == 12
        finals[name] = np.array(g["final_accuracy_mean"], dtype=float)
    best = max(f.max() for f in finals.values())
    assert doc["best"]["accuracy"] == pytest.approx(best)
    assert doc["recipes"], "the range test gave no suggestion to build a peak on"
    for name, rec in doc["recipes"].items():
        rule = PEAK_RULES["momentum"][name]
        peak = (
            rule.multiple(rec["total_steps"])
            * (doc["range_test"]["suggestions"][rule.method])
        )
        assert rec["peak_lr"] == pytest.approx(peak)
        lrs = np.array(doc["families"][name]["lrs"])
        if lrs[0] <= peak <= lrs[-1]:
            acc = np.interp(math.log(peak), np.log(lrs), finals[name])
            assert rec["regret_pp"] == pytest.approx(100 * (best - acc))
            assert f"recipe {name}: " in stdout and "regret" in stdout
        else:
            assert rec["regret_pp"] is None
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_around_recipe_centres_the_grid_on_the_recipe_peak(
    tiny_fashion_mnist, tmp_path, capsys
):
    """--around-recipe F: the range test, then --num lrs from peak / F to peak x F
    around the family's recommended peak for --epochs (the middle one on it), and
    the recipe's regret read at that grid point."""
    from lrjax._src.recipes import recommend

    out = tmp_path / "around"
    code, stdout, err = run(
        capsys,
        "--data-dir", str(tiny_fashion_mnist), "--out", str(out),
        "--hidden", "16", "--batch-size", "20", "--optimizer", "momentum",
        "--num", "3", "--epochs", "2", "--schedule", "wsd", "--around-recipe", "4",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "grid.json").read_text())

    class Found:  # the stored range test, as recommend reads it
        suggestions = doc["range_test"]["suggestions"]

    steps = doc["recipes"]["wsd"]["total_steps"]
    assert steps == 2 * (600 // 20)
    peak = recommend(Found(), steps, "wsd", optimizer="momentum").peak_lr
    assert np.array(doc["lrs"]) == pytest.approx([peak / 4, peak, peak * 4])
    assert doc["config"]["around_recipe"] == 4
    assert doc["config"]["min_lr"] == pytest.approx(peak / 4)
    final = np.array(doc["final_accuracy_mean"], dtype=float)
    rec = doc["recipes"]["wsd"]
    assert rec["peak_lr"] == pytest.approx(peak)
    assert rec["val_accuracy"] == pytest.approx(final[1])
    assert rec["regret_pp"] == pytest.approx(100 * (final.max() - final[1]))
    assert "recipe wsd: " in stdout and "regret" in stdout
    assert stdout.startswith("--- schedule wsd\n")  # which family the table is
    from lrjax._src.recipes import build_schedule

    assert doc["config"]["shape"] == build_schedule("wsd", 1.0, steps)[1]
    # the peak lrjax-train trains with for the same flags and seed (the grid ran
    # its range test with another model key, 1.4x off on the MLP, before)
    from lrjax import train

    logdir = tmp_path / "train"
    assert train.main([
        "--data-dir", str(tiny_fashion_mnist), "--logdir", str(logdir),
        "--hidden", "16", "--batch-size", "20", "--optimizer", "momentum",
        "--epochs", "2", "--schedule", "wsd", "--lr", "auto", "--quiet", "--no-plot",
    ]) == 0  # fmt: skip
    trained = json.loads((logdir / "metrics.json").read_text())
    assert trained["lr"] == pytest.approx(peak, rel=1e-6)


def test_ctrl_c_stops_the_grid_after_an_epoch_and_writes_the_epochs_so_far(
    tiny_fashion_mnist, tmp_path, monkeypatch, capsys
):
    ctrl_c_in_the_run(monkeypatch, grid_cli)
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys, "--data-dir", str(tiny_fashion_mnist), "--out", str(out),
        "--epochs", "3", "--num", "2", "--batch-size", "32",
    )  # fmt: skip
    doc = json.loads((out / "grid.json").read_text())
    assert code == 130 and doc["stop_reason"] == "signal" and doc["epochs"] == 1
    assert np.asarray(doc["val_accuracy"]).shape == (2, 1, 1)  # [lrs, seeds, epochs]
    assert err == (
        f"lrjax.grid: stopped by signal 2 after epoch 1 of 3; the epochs so far "
        f"are in {out}\n"
    )
    assert "val acc (mean over 1 seed(s), epoch 1)" in stdout


def test_ctrl_c_in_the_range_test_of_find_writes_nothing(
    tiny_fashion_mnist, tmp_path, monkeypatch, capsys
):
    ctrl_c_in_the_run(monkeypatch, grid_cli)
    out = tmp_path / "run"
    code, stdout, err = run(
        capsys, "--data-dir", str(tiny_fashion_mnist), "--out", str(out),
        "--find", "--num", "2", "--batch-size", "32",
    )  # fmt: skip
    assert (code, stdout) == (130, "")
    assert (
        err
        == "lrjax.grid: interrupted during the range test (--find); nothing written\n"
    )  # noqa: E501
    assert not (out / "grid.json").exists()
