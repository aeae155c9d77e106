"""The scripts of examples/ run as a user runs them, at tiny sizes, and report.

Each script runs in a subprocess, in a fresh directory, under the environment of
the docs' code blocks (tests/test_docs_blocks.py): ``LRJAX_DOCS_TINY=1`` on the
generated Fashion-MNIST stand-ins, which cuts every split to a few hundred
examples; the scripts themselves have no test knob. Their output is read back: a
finite positive suggestion, a recipe built on it by ``lrjax.recommend``'s rule,
one validation accuracy per epoch and a test accuracy above chance (the
stand-ins are learnable). The scripts run two at a time, started at once.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_docs_blocks import _environment, datasets  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# script -> the optional package it needs (None: the core install)
SCRIPTS = {
    "nnx_model.py": None,
    "linen_model.py": None,
    "equinox_model.py": "equinox",
    "own_train_step.py": None,
}
EPOCHS = 2
WORKERS = 2
TIMEOUT_S = 300
NUMBER = r"([-+0-9.eE]+|nan|inf)"


def _runnable(script: str) -> bool:
    needs = SCRIPTS[script]
    return needs is None or importlib.util.find_spec(needs) is not None


@pytest.fixture(scope="module")
def runs(datasets, tmp_path_factory):  # noqa: F811
    base = tmp_path_factory.mktemp("example-runs")
    env = _environment(datasets, base / "cache")

    def run(script: str):
        cwd = base / script.removesuffix(".py")
        cwd.mkdir()
        argv = [sys.executable, str(EXAMPLES / script)]
        try:
            return subprocess.run(
                argv, cwd=cwd, env=env, capture_output=True, text=True,
                timeout=TIMEOUT_S,
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            return e

    pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
    futures = {s: pool.submit(run, s) for s in SCRIPTS if _runnable(s)}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def _one(pattern: str, text: str) -> re.Match:
    found = list(re.finditer(pattern, text, re.M))
    assert len(found) == 1, f"{pattern!r}: {len(found)} matches in:\n{text}"
    return found[0]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_example_runs_and_reports(script, runs):
    if SCRIPTS[script] is not None:
        pytest.importorskip(SCRIPTS[script])
    done = runs[script].result()
    if isinstance(done, subprocess.TimeoutExpired):
        pytest.fail(f"{script} ran past {TIMEOUT_S} s")
    out = done.stdout
    tail = (out[-2000:] + "\n" + done.stderr[-4000:]).strip()
    assert done.returncode == 0, f"{script} failed:\n{tail}"
    assert "Traceback" not in done.stderr and "Warning:" not in done.stderr, tail

    assert _one(r"^RangeTestResult\(suggested_lr=", out)
    suggested = _one(rf"^suggested lr: {NUMBER} \((\w+)\)$", out)
    lr, method = float(suggested[1]), suggested[2]
    assert math.isfinite(lr) and lr > 0, suggested[0]

    # the recipe is recommend's rule on that very suggestion
    recipe = _one(
        rf"^recipe: \w+ peak {NUMBER} \(peak = {NUMBER} x (\w+) \({NUMBER}\)"
        rf"(?:; \d+ updates, outside the [\d-]+ it was fitted on)?\) over (\d+) "
        rf"updates",
        out,
    )
    peak, factor, base = (float(recipe[i]) for i in (1, 2, 4))
    assert recipe[3] == method and base == pytest.approx(lr, rel=1e-3)
    assert peak == pytest.approx(factor * base, rel=1e-3) and peak > 0
    assert int(recipe[5]) >= EPOCHS, "a budget of at least one update an epoch"

    epochs = re.findall(rf"^epoch (\d+): .*validation accuracy {NUMBER}$", out, re.M)
    assert [int(e) for e, _ in epochs] == list(range(1, EPOCHS + 1)), out
    for _, acc in epochs:
        assert 0.0 <= float(acc) <= 1.0, epochs
    test = float(_one(rf"^test accuracy: {NUMBER}$", out)[1])
    assert 0.5 < test <= 1.0, f"chance is 0.1; the stand-ins are learnable:\n{out}"


def test_every_example_script_is_run_and_linked():
    """A new script of examples/ is run here and linked from the guide and README
    (mynet.py, a --model file, runs in the README's lrjax-find line)."""
    assert {p.name for p in EXAMPLES.glob("*.py")} - {"mynet.py"} == set(SCRIPTS)
    guide = (ROOT / "docs" / "guide.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for script in SCRIPTS:
        assert f"(../examples/{script})" in guide, script
        assert f"(examples/{script})" in readme, script
