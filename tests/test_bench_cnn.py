"""benchmarks/bench_cnn.py at a tiny size, in-process: the epoch, range-test and
--augment parts write every number the JSON's note describes."""

from __future__ import annotations

import json
import math

import pytest

from .conftest import load_benchmark


def load_bench():
    return load_benchmark("bench_cnn")


def check_entry(entry: dict, steps: int) -> None:
    assert entry["run_s"] > 0 and entry["run_s"] == min(entry["run_s_all"])
    assert entry["steps"] == steps
    assert math.isclose(entry["ms_per_step"], 1e3 * entry["run_s"] / steps)


def test_smoke_epoch_range_augment(tiny_fashion_mnist, monkeypatch, tmp_path):
    pytest.importorskip("torch")
    monkeypatch.setenv("LRJAX_DATA_DIR", str(tiny_fashion_mnist))
    out = tmp_path / "cnn.json"
    argv = ["--parts", "epoch,range,augment", "--epoch-steps", "2"]
    argv += ["--repeats", "1", "--out", str(out)]
    assert load_bench().main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu x1 (cpu)" and doc["torch_threads"] == 2
    assert doc["parts"] == ["epoch", "range", "augment"]
    assert doc["n_train"] == 600 and doc["epoch_steps"] == 2  # 600 tiny images
    assert set(doc["note"]) == {"all", "epoch", "range_test", "augment"}

    ep = doc["epoch"]
    check_entry(ep["lrjax_fit"], 2)
    check_entry(ep["torch"], 2)
    assert ep["lrjax_fit"]["compile_s"] > 0 and ep["lrjax_fit"]["loop"] == "dispatch"
    assert ep["lrjax_fit"]["wall_s"] > ep["lrjax_fit"]["run_s"]
    assert ep["lrjax_vs_torch"] == ep["lrjax_fit"]["run_s"] / ep["torch"]["run_s"]

    rt = doc["range_test"]
    assert rt["num_steps"] == 2 and rt["steps_run_all"] == [2]
    check_entry(rt["lrjax"], 2)
    check_entry(rt["torch"], 2)  # as many updates as lrjax ran
    assert rt["lrjax_vs_torch"] == rt["lrjax"]["run_s"] / rt["torch"]["run_s"]

    aug = doc["augment"]
    check_entry(aug["lrjax_fit"], 2)
    assert aug["vs_plain_epoch"] == aug["lrjax_fit"]["run_s"] / ep["lrjax_fit"]["run_s"]
    assert "lrjax_auto" not in doc  # the steps part was not chosen


def test_parts_are_checked():
    bench = load_bench()
    assert bench.parse_parts("augment, epoch") == ("epoch", "augment")
    with pytest.raises(SystemExit):
        bench.main(["--parts", "epoch,bogus"])
