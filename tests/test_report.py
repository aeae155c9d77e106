"""benchmarks/report.py: the documents show what the results JSON holds.

The committed benchmarks/README.md and docs/results.md must be what the report
regenerates from the committed benchmarks/results/*.json (in-process, as
``report.py --check``); a block is replaced with the prose around it kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    return load_benchmark("report")


def test_committed_documents_match_the_results_json(report):
    stale = report.check()
    assert stale == [], "run: python benchmarks/report.py\n" + "\n".join(stale)
    assert report.main(["--check"]) == 0


def test_a_block_is_replaced_and_the_prose_around_it_kept(report):
    text = (
        "# Title\n\nProse before, 1.5x.\n\n"
        "<!-- BEGIN report:a -->\nold table\n<!-- END report:a -->\n\n"
        "Prose between.\n\n"
        "<!-- BEGIN report:b -->\nkept\n<!-- END report:b -->\n\nProse after.\n"
    )
    new = report.replace_block(text, "a", "| new | table |")
    assert new == text.replace("old table", "| new | table |")
    assert report.block_text(new, "a") == "| new | table |"
    assert report.block_text(new, "b") == "kept"
    # A block the document lacks is appended, the rest left as it was.
    added = report.replace_block(text, "c", "fresh")
    assert added.startswith(text.rstrip("\n"))
    assert report.block_text(added, "c") == "fresh"


def test_check_names_the_stale_block(report, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Intro.\n\n<!-- BEGIN report:sweep_cnn -->\nan old number: 0.92x\n"
        "<!-- END report:sweep_cnn -->\n\nOutro.\n"
    )
    documents = {doc: ("sweep_cnn",)}
    assert report.check(results, documents) == [f"{doc}: block sweep_cnn differs"]
    doc.write_text(report.render(doc, ("sweep_cnn",), results))
    assert report.block_text(doc.read_text(), "sweep_cnn") == report.NOT_MEASURED
    assert report.check(results, documents) == []
    assert doc.read_text().startswith("Intro.\n") and "Outro." in doc.read_text()


def test_sections_not_measured_yet_and_then_measured(report, tmp_path):
    src, results = ROOT / "benchmarks" / "results", tmp_path / "results"
    results.mkdir()
    names = ("cnn_results", "finder_quality_cnn", "sweep_cnn")
    for name in names:
        assert report.BLOCKS[name](results) == report.NOT_MEASURED
    rows = report.BLOCKS["targets"](results).splitlines()[2:]
    assert rows and all(f"| {report.NOT_MEASURED} | - |" in r for r in rows)

    shutil.copy(src / "sweep_mlp_adamw.json", results / "sweep_cnn.json")
    fq = json.loads((src / "finder_quality.json").read_text())
    (results / "finder_quality_cnn.json").write_text(json.dumps({**fq, "model": "cnn"}))
    cnn = json.loads((src / "cnn_results.json").read_text())
    (results / "cnn_results.json").write_text(json.dumps(cnn))
    for seed in cnn["per_seed"].values():
        seed["lr_method"] = "divergence"
        seed["schedule"] = {"name": "cosine_restarts", "cycle_ends_epochs": [5, 10]}
    (results / "cnn_results_balanced.json").write_text(json.dumps(cnn))

    table = report.BLOCKS["cnn_results"](results)
    rows = [line for line in table.splitlines() if line.startswith("| `cnn_results")]
    assert [r.split(" | ")[2] for r in rows] == ["knee", "divergence"]
    first = report.cnn_results.schedule_cell(
        next(
            iter(
                json.loads((src / "cnn_results.json").read_text())["per_seed"].values()
            )
        )
    )
    assert [r.split(" | ")[1] for r in rows] == [first, "cosine_restarts (5, 10)"]
    # every file of the table but the two written above
    assert table.count(report.NOT_MEASURED) == len(report.cnn_results.FILES) - 2
    assert "`cnn_results_huang.json`: (not measured yet)" in table
    assert "`cnn_results_auto.json`: (not measured yet)" in table
    assert "`cnn_results_auto_rule5657.json`: (not measured yet)" in table
    # a recipe run shows its family and is held to issue #16's target
    for seed in cnn["per_seed"].values():
        seed["schedule"] = {"name": "auto", "family": "one_cycle"}
    (results / "cnn_results_auto.json").write_text(json.dumps(cnn))
    row = next(
        line
        for line in report.BLOCKS["cnn_results"](results).splitlines()
        if line.startswith("| `cnn_results_auto")
    )
    assert " | one_cycle (`auto`) | " in row and "92.90%: missed" in row
    # a peak picked by hand: calibration, held to no target and named so
    for seed in cnn["per_seed"].values():
        seed["lr_method"] = None
    (results / "cnn_results_onecycle_p01.json").write_text(json.dumps(cnn))
    row = next(
        line
        for line in report.BLOCKS["cnn_results"](results).splitlines()
        if line.startswith("| `cnn_results_onecycle_p01")
    )
    assert " | none (--lr given) | " in row and "calibration" in row
    assert "missed" not in row and "met" not in row.split(" | ")[-1]
    # --augment: the data change, so beside the target, not held to it
    for seed in cnn["per_seed"].values():
        seed["lr_method"] = "balanced"
    (results / "cnn_results_auto_augment.json").write_text(json.dumps(cnn))
    row = next(
        line
        for line in report.BLOCKS["cnn_results"](results).splitlines()
        if line.startswith("| `cnn_results_auto_augment")
    )
    assert row.endswith("| beside the target (--augment changes the data) |")
    targets = report.BLOCKS["targets"](results)
    assert "cnn_results_onecycle_p01" not in targets
    assert "cnn_results_auto_augment" not in targets
    assert "`cnn_results_auto.json`" in targets
    finder = report.BLOCKS["finder_quality_cnn"](results)
    assert "model `cnn`" in finder and "| knee | **" in finder
    assert "**(recommended)**" in report.BLOCKS["sweep_cnn"](results)


def _timed(run_s: float, steps: int, **extra) -> dict:
    """A bench_cnn.py ``measured`` entry."""
    return {
        "run_s": run_s,
        "run_s_all": [run_s],
        "steps": steps,
        "ms_per_step": 1e3 * run_s / steps,
        **extra,
    }


META = {"device": "cpu x1 (cpu)", "cpu_count": 2, "jax": "0.0", "argv": ["bench"]}


def _cnn_parts() -> dict:
    """bench_cnn.py's epoch, range_test and augment parts (no ``steps``)."""
    return {
        **META,
        "parts": ["epoch", "range", "augment"],
        "repeats": 2,
        "n_train": 55000,
        "batch_size": 128,
        "epoch_steps": 429,
        "torch_version": "9.9",
        "torch_threads": 2,
        "epoch": {
            "lrjax_fit": _timed(300.0, 429, compile_s=5.0, loop="dispatch"),
            "torch": _timed(600.0, 429),
            "optimizer": "SGD Nesterov momentum 0.9, lr 0.05, L2 weight decay 0.0005",
            "lrjax_vs_torch": 0.5,
        },
        "range_test": {
            "num_steps": 429,
            "steps_run_all": [350, 351],
            "lrjax": _timed(
                280.0,
                350,
                loop="dispatch",
                stop_reason="diverged",
                suggested_lr=0.0123,
            ),
            "torch": _timed(400.0, 350),
            "lrjax_vs_torch": 0.7,
        },
        "augment": {
            "lrjax_fit": _timed(330.0, 429, compile_s=6.0, loop="dispatch"),
            "vs_plain_epoch": 1.1,
        },
    }


def _cnn_steps() -> dict:
    """bench_cnn.py's ``steps`` part: the top-level keys of the old layout."""

    def v(ms, steps, **kw):
        return {**_timed(ms * steps / 1e3, steps, **kw), "epoch_s": ms * 0.429}

    return {
        **META,
        "steps_timed": 60,
        "torch_version": "9.9",
        "lrjax_loop_choice": "dispatch",
        "lrjax_auto": v(900, 60, compile_s=10.0, loop="dispatch"),
        "hand_dispatch": v(910, 60, compile_s=15.0),
        "torch": v(1500, 60),
        "hand_scan": v(11000, 4, compile_s=12.0),
        "lrjax_scan": v(11500, 4, compile_s=18.0),
        "ratios": {
            "lrjax_auto_vs_hand_dispatch": 0.99,
            "lrjax_auto_vs_torch": 0.6,
            "hand_dispatch_vs_torch": 0.61,
            "hand_scan_vs_hand_dispatch": 12.1,
            "lrjax_scan_vs_lrjax_auto": 12.8,
        },
    }


def _cnn_rows(report, results: Path) -> list[str]:
    """The targets table's two CNN-against-PyTorch rows."""
    rows = report.BLOCKS["targets"](results).splitlines()
    rows = [r for r in rows if r.startswith("| CNN ") and "PyTorch" in r]
    assert len(rows) == 2
    return rows


def test_cnn_block_renders_whichever_parts_the_json_holds(report, tmp_path):
    assert report.BLOCKS["cnn"](tmp_path) == report.NOT_MEASURED
    epoch_row, range_row = _cnn_rows(report, tmp_path)
    assert f"| {report.NOT_MEASURED} | - |" in epoch_row
    assert f"| {report.NOT_MEASURED} | - |" in range_row

    # The new parts alone: no "steps" keys at the top level.
    (tmp_path / "cnn.json").write_text(json.dumps(_cnn_parts()))
    block = report.BLOCKS["cnn"](tmp_path)
    lines = block.splitlines()
    assert (
        "| epoch | `lrjax.fit` (loop dispatch) | 429 | 5.0 | 300.0 | 699 | "
        "0.50x PyTorch |" in lines
    )
    assert "| epoch | PyTorch 9.9 CPU, 2 threads | 429 | - | 600.0 | 1399 | 1.00 |" in (
        lines
    )
    assert any(
        r.startswith("| range test | `lrjax.lr_range_test`")
        and "| 350 | - | 280.0 | 800 | 0.70x PyTorch |" in r
        for r in lines
    )
    assert any(
        r.startswith("| epoch, `--augment` |") and r.endswith("| 1.10x plain epoch |")
        for r in lines
    )
    assert "steps run 350, 351 (stop reason: diverged; suggested lr 0.0123)" in block
    assert "steps timed" not in block and block.endswith("`bench`.")
    epoch_row, range_row = _cnn_rows(report, tmp_path)
    assert "| 0.50x: 300.0 s against 600.0 s for 429 updates" in epoch_row
    assert "| 0.70x: 280.0 s against 400.0 s for 350 updates" in range_row
    # Informational rows: the issue sets no target, so "met?" stays "-".
    assert epoch_row.endswith("| - | `bench_cnn.py` |")
    assert range_row.endswith("| - | `bench_cnn.py` |")

    # The steps part alone (the committed layout): the per-step table only.
    (tmp_path / "cnn.json").write_text(json.dumps(_cnn_steps()))
    block = report.BLOCKS["cnn"](tmp_path)
    assert block.startswith("| variant | steps timed |")
    assert '| lrjax, loop="auto" (chose dispatch) | 60 | 10.0 | 900 |' in block
    assert "| PyTorch 9.9 CPU, 2 threads | 60 | - | 1500 | 644 | 1.00 |" in block
    assert "`lrjax.fit`" not in block
    assert all(report.NOT_MEASURED in r for r in _cnn_rows(report, tmp_path))

    # Both: the parts' table, then the per-step one.
    (tmp_path / "cnn.json").write_text(json.dumps({**_cnn_steps(), **_cnn_parts()}))
    block = report.BLOCKS["cnn"](tmp_path)
    assert block.index("`lrjax.fit`") < block.index("| variant | steps timed |")
    assert "Per step (the `steps` part, 60 updates" in block

    # --augment without the plain epoch: no ratio to show.
    parts = _cnn_parts()
    del parts["epoch"], parts["augment"]["vs_plain_epoch"]
    (tmp_path / "cnn.json").write_text(json.dumps(parts))
    block = report.BLOCKS["cnn"](tmp_path)
    assert "| epoch, `--augment` |" in block and block.count("| epoch |") == 0
    assert any(r.endswith("| - |") for r in block.splitlines() if "augment" in r)
    assert "\n\n\n" not in block


def _conv_population() -> dict:
    """bench_conv_population.py's JSON, cut down to what the report reads."""

    def run(device, models):
        return {
            "device": device,
            "jax": "0.0",
            "load_avg_1min_before": 1.5,
            "models": models,
        }

    def model(batch, loop, **ms):
        return {"batch": batch, "loop": loop, "ms_per_update": ms}

    return {
        "command": "python benchmarks/bench_conv_population.py ",
        "cpu_count": 2,
        "members": 4,
        "per_member_vs_single": {
            "cnn": {
                "vmap x1": 3.0,
                "unroll x1": 1.05,
                "map x1": 7.5,
                "vmap x2": 2.25,
                "unroll x2": 0.6,
            },
            "mlp": {
                "vmap x1": 0.5,
                "unroll x1": 1.2,
                "map x1": 1.3,
                "vmap x2": 0.4,
                "unroll x2": 0.35,
            },
        },
        "runs": {
            "devices1": run(
                "cpu x1 (cpu)",
                {
                    "cnn": model(
                        128,
                        "dispatch",
                        single=160.0,
                        vmap=1920.0,
                        unroll=672.0,
                        map=4800.0,
                    ),
                    "mlp": model(
                        32, "scan", single=0.9, vmap=1.8, unroll=4.32, map=4.68
                    ),
                },
            ),
            "devices2": run(
                "cpu x2 (cpu)",
                {
                    "cnn": model(128, "dispatch", vmap=1440.0, unroll=384.0),
                    "mlp": model(32, "scan", vmap=1.44, unroll=1.26),
                },
            ),
        },
    }


def test_conv_population_block(report, tmp_path):
    assert report.BLOCKS["conv_population"](tmp_path) == report.NOT_MEASURED
    (tmp_path / "conv_population.json").write_text(json.dumps(_conv_population()))
    block = report.BLOCKS["conv_population"](tmp_path)
    lines = block.splitlines()
    assert lines[0] == (
        "| model | single: ms/update | vmap x1 per member | unroll x1 per member | "
        "map x1 per member | vmap x2 per member | unroll x2 per member |"
    )
    assert (
        "| cnn (batch 128, dispatch) | 160 | 3.00x | 1.05x | 7.50x | 2.25x | "
        "0.60x |" in lines
    )
    assert "| mlp (batch 32, scan) | 0.9 | 0.50x | 1.20x | 1.30x | 0.40x | 0.35x |" in (
        lines
    )
    assert "Fastest on one device: cnn `unroll` (1.05x); mlp `vmap` (0.50x)." in block
    assert "`python benchmarks/bench_conv_population.py` on cpu x1 (cpu)" in block

    # A run of the MLP alone on one device's variants: the other columns go.
    d = _conv_population()
    d["per_member_vs_single"] = {
        "mlp": {"vmap x1": 0.5, "unroll x1": 1.2, "map x1": 1.3}
    }
    (tmp_path / "conv_population.json").write_text(json.dumps(d))
    block = report.BLOCKS["conv_population"](tmp_path)
    rows = [r for r in block.splitlines() if r.startswith("| ")]
    assert len(rows) == 2 and rows[1].startswith("| mlp ")
    assert "x2 per member" not in block and "map x1 per member" in rows[0]


def _headline_rows(report, results: Path, rows: int = 9) -> dict[str, str]:
    """The headline table's rows: the "what" cell's start -> the measured cell."""
    lines = report.BLOCKS["headline"](results).splitlines()
    assert lines[0] == "| what | measured | where |"
    cells = [line.split(" | ") for line in lines[2:]]
    assert len(cells) == rows and all(c[2].startswith("[") for c in cells)
    return {c[0].removeprefix("| "): c[1] for c in cells}


def test_headline_block(report, tmp_path):
    rows = _headline_rows(report, tmp_path)
    assert set(rows.values()) == {report.NOT_MEASURED}

    def write(name: str, d: dict) -> None:
        (tmp_path / f"{name}.json").write_text(json.dumps(d))

    write("find", {"lrjax_vs_floor": 1.0412})
    write(
        "range_test_sources",
        {"generator_vs_array": 0.98, "array": {"run_s": 2.0}, "pure": {"run_s": 2.2}},
    )
    write(
        "finder_quality_validation",
        {"results": [{}] * 5, "summary": {"knee": {"worst_regret_pp": 0.414}}},
    )
    acc = {"mean": 0.9012, "values": [0.9, 0.9024, 0.9012]}
    write(
        "train_results",
        {"variants": {report.train_results.DEFAULT_VARIANT: {"test_accuracy": acc}}},
    )
    write(
        "cnn_results",
        {
            "description": "CNN: python -m lrjax.train --model cnn --lr auto "
            "--optimizer nesterov --weight-decay 5e-4 --epochs 14",
            "seeds_done": [0, 1],
            "mean_test_accuracy": 0.9312,
        },
    )
    write("cnn", _cnn_steps())  # the steps part alone: no epoch, no range test
    write(
        "sweep_mlp_adamw",
        {"regret": 0.0042, "cost": {"wall_ratio": 0.7}, "values": [0, 1e-4, 1e-3]},
    )
    write("conv_population", _conv_population())
    rows = _headline_rows(report, tmp_path)
    # Both sweeps' rows: the MLP's measured, the CNN's (no sweep_cnn.json) not yet.
    assert [m for w, m in rows.items() if w.startswith("lr x weight decay")] == [
        "regret 0.42 pp; 0.70x the time of the 3 values one by one",
        report.NOT_MEASURED,
    ]
    measured = {
        what.split(" (")[0].split(":")[0]: m
        for what, m in rows.items()
        if not what.startswith("lr x weight decay")
    }
    assert measured == {
        "range test vs a hand-written JAX scan of the same sweep": "1.041x",
        "same sweep fed by a Python generator / the MLP as a pure function": (
            "0.98x / 1.10x the array, NNX path"
        ),
        "default suggestion": "<= 0.41 pp",
        "MLP, `lrjax-train` defaults vs the seed recipe's 88.37%": (
            "90.12% (3 seeds), +1.75 pp"
        ),
        "BatchNorm CNN, `lrjax-train --model cnn --lr auto`": (
            "93.12% test, 2 seeds (target 93.0%: met)"
        ),
        "BatchNorm CNN epoch / range test vs a plain PyTorch CPU loop": (
            report.NOT_MEASURED
        ),
        "CNN population, members unrolled vs vmapped": (
            "per member 1.05x (unroll) / 3.00x (vmap) one model's time"
        ),
    }
    assert (
        "BatchNorm CNN, `lrjax-train --model cnn --lr auto` (nesterov, wd 5e-4, "
        "14 epochs)" in rows
    )
    assert "default suggestion (`knee`): regret vs a vmapped lr grid, 5 fresh " in (
        " ".join(rows)
    )

    # the default command at another batch size: its own row, the flag's last
    # value (the script's --batch-size 128, then --extra's 64) as argparse reads it
    write(
        "cnn_results_auto_b64",
        {
            "description": "CNN: python -m lrjax.train --model cnn --lr auto "
            "--optimizer nesterov --batch-size 128 --weight-decay 5e-4 --epochs 15 "
            "--batch-size 64",
            "seeds_done": [0, 1, 2],
            "mean_test_accuracy": 0.9292,
        },
    )
    b64 = "BatchNorm CNN, `lrjax-train --model cnn --lr auto` (nesterov, batch 64, "
    assert _headline_rows(report, tmp_path, 10)[b64 + "wd 5e-4, 15 epochs)"] == (
        "92.92% test, 3 seeds (target 92.9%: met)"
    )

    (tmp_path / "cnn_results_auto_b64.json").unlink()

    # bench_cnn.py's epoch and range-test parts against PyTorch; then one alone.
    write("cnn", _cnn_parts())
    torch = "BatchNorm CNN epoch / range test vs a plain PyTorch CPU loop"
    assert _headline_rows(report, tmp_path)[torch] == (
        "epoch: 0.50x PyTorch's time; range test: 0.70x PyTorch's time"
    )
    parts = _cnn_parts()
    del parts["range_test"]
    write("cnn", parts)
    assert _headline_rows(report, tmp_path)[torch] == (
        f"epoch: 0.50x PyTorch's time; range test: {report.NOT_MEASURED}"
    )
    # The seed recipe's baseline is the published constant, not a measurement.
    assert report.train_results.SEED_RECIPE_ACCURACY == 0.8837


def _cnn_metrics(best: dict | None, snapshots: list[dict]) -> dict:
    """An lrjax-train metrics.json, cut down to what cnn_results.summarize reads."""
    return {
        "test_accuracy": 0.9,
        "val_accuracy": 0.9,
        "lr": 0.01,
        "lr_finder": {"method": "knee", "time_s": 1.0},
        "schedule": {"name": "cosine_restarts", "cycle_ends": [9, 29]},
        "epochs_run": 3,
        "history": [{"step": 30}],
        "timings": {"mean_epoch_s": 2.0, "wall_s": 7.0},
        "device": "cpu x1 (cpu)",
        "snapshots": snapshots,
        "best_ensemble": best,
    }


def test_cnn_snapshot_gain_chooses_on_validation_and_marks_old_runs(report, tmp_path):
    """A run that chose m on validation gains over the snapshot chosen on
    validation; a run from before ``chosen_on`` is shown as chosen on test."""
    cnn = report.cnn_results
    snaps = [
        {"val_accuracy": 0.90, "test_accuracy": 0.88},
        {"val_accuracy": 0.93, "test_accuracy": 0.87},  # the val-chosen single
        {"val_accuracy": 0.89, "test_accuracy": 0.92},  # the best on test
    ]
    new = {"m": 2, "chosen_on": "val", "val_accuracy": 0.94, "test_accuracy": 0.89}
    old = {"m": 1, "test_accuracy": 0.92}  # m chosen on the test curve
    assert cnn.snapshot_gain_pp(_cnn_metrics(new, snaps)) == pytest.approx(2.0)
    assert cnn.snapshot_gain_pp(_cnn_metrics(old, snaps)) == pytest.approx(0.0)
    assert cnn.snapshot_gain_pp(_cnn_metrics(None, [])) is None

    def rendered(*bests):
        done = {s: _cnn_metrics(b, snaps) for s, b in enumerate(bests)}
        doc = cnn.summarize(done, tmp_path / "runs", ["--snapshots", "3"])
        doc["independent_ensemble"] = {"members": 2, "gain_pp": 0.5}  # no probs here
        (tmp_path / "cnn_results.json").write_text(json.dumps(doc))
        return doc, cnn.results_markdown(tmp_path), cnn.target_rows(tmp_path)

    doc, block, rows = rendered(new, new)
    assert cnn.chosen_on(doc) == "val" and doc["snapshot_gain_pp"]["mean"] == (
        pytest.approx(2.0)
    )
    assert "snapshot gain pp (mean; m chosen on validation)" in block
    assert "| +2.00 |" in block and "old run" not in block
    assert any(
        "snapshots +2.00 pp (mean over seeds) against" in str(r[1]) for r in rows
    )
    for bests in ((old, old), (new, old)):  # old runs, or some seeds old
        doc, block, rows = rendered(*bests)
        assert cnn.chosen_on(doc) == "test"
        assert "(m chosen on test, old run)" in block
        assert any("m chosen on test, old run" in str(r[1]) for r in rows)


def test_short_budget_means_the_runs_that_differ_only_in_the_seed(report, tmp_path):
    """Rows of one command and rule over seeds get their mean, against the 88%
    target for the CNN; a run under another rule, or alone, gets none."""

    def run(opt, seed, acc, rule):
        return {
            "optimizer": opt,
            "command": f"lrjax-train --model cnn --epochs 1 --lr auto "
            f"--optimizer {opt} --seed {seed} --quiet",
            "test_accuracy": acc,
            "family": "one_cycle",
            "peak_lr": 0.05,
            "rule": f"peak = {rule} (0.0{seed}1)",
            "wall_s": 60.0,
        }

    docs = {
        "short_budget_cnn": [run("sgd", 0, 0.8790, "2 x knee"),
                             run("adam", 0, 0.881, "8 x knee")],
        "short_budget_cnn_s1": [run("sgd", 1, 0.8800, "2 x knee"),
                                run("adam", 1, 0.879, "4 x knee")],
        "short_budget_cnn_s2": [run("sgd", 2, 0.8840, "2 x knee")],
    }  # fmt: skip
    for name, runs in docs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"runs": runs}))
    text = report.short_budget.markdown(tmp_path)
    assert text.count("| `lrjax-train") == 5
    means = [line for line in text.splitlines() if line.startswith("- ")]
    assert means == [
        "- sgd (peak = 2 x knee): 87.90, 88.00, 88.40% over 3 seeds, mean "
        "**88.10%** (met)."
    ]
