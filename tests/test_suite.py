"""benchmarks/suite.py --size smoke: one command writes every figure, the device and
the targets into one JSON (a subprocess, as a user runs it)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import jax_cache_env

ROOT = Path(__file__).resolve().parents[1]

SECTIONS = {
    "range_test": ("floor", "lrjax_1_seed", "lrjax_8_seeds"),
    "population": ("one_model", "population_36"),
    "train": ("floor", "lrjax_fit"),
    "cnn": ("floor", "lrjax_range_test", "lrjax_fit"),
}
RATIOS = {
    "range_test": ("vs_floor", "seeds_vs_1"),
    "population": ("population_vs_1",),
    "train": ("vs_floor",),
    "cnn": ("vs_floor",),
}


def test_smoke_suite_writes_every_figure(tmp_path):
    out = tmp_path / "suite.json"
    # the suite's JAX compilation cache (tests/conftest.py): compiles are lookups
    # after the first run; the test checks the figures, not what compiling costs
    env = dict(os.environ, JAX_PLATFORMS="cpu", **jax_cache_env())
    proc = subprocess.run(
        [sys.executable, "benchmarks/suite.py", "--size", "smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu x1 (cpu)" and doc["backend"] == "cpu"
    assert doc["jax"] and doc["size"] == "smoke"
    for section, names in SECTIONS.items():
        for name in names:
            entry = doc[section][name]
            assert entry["run_s"] > 0 and entry["ms_per_step"] > 0, (section, name)
            assert entry["run_s"] == min(entry["run_s_all"])
            assert entry["steps"] >= 1
            assert math.isclose(
                entry["ms_per_step"], 1e3 * entry["run_s"] / entry["steps"]
            )
        for ratio in RATIOS[section]:
            assert doc[section][ratio] > 0, (section, ratio)
    rt = doc["range_test"]
    assert rt["vs_floor"] == rt["lrjax_1_seed"]["run_s"] / rt["floor"]["run_s"]
    assert rt["lrjax_8_seeds"]["members"] == 8
    assert rt["floor"]["flops_per_step"] > 0 and doc["cnn"]["floor"]["flops_per_step"]
    assert doc["population"]["population_36"]["members"] == 36
    assert doc["cnn"]["lrjax_range_test"]["loop"] == "dispatch"  # conv on XLA:CPU
    assert doc["cnn"]["floor"]["loop"] == "dispatch"
    assert set(doc["targets"]) == {
        "range_test_vs_floor",
        "seeds_8_vs_1",
        "population_36_vs_1",
    }
    for t in doc["targets"].values():
        assert t["met"] == (t["measured"] <= t["target"])
    assert doc["gpu_estimate"]["total_s"] > doc["gpu_estimate"]["startup_s"]
    assert doc["wall_s"] > 0
    # the printed table names every target's verdict and the device
    for name in doc["targets"]:
        assert f"target {name}: " in proc.stdout
    assert "device cpu x1 (cpu)" in proc.stdout
