"""benchmarks/finder_quality.py --refit: the scan finds a rule it is built to find.

Synthetic stored runs whose grids peak at exactly twice the ``knee`` suggestion
(accuracy falls 5 pp per octave away from it, linear in log lr, as the grid's
interpolation is): the default ``knee`` must score 5 pp of regret, and the refit,
chosen on one run, must find a rule with no regret on the other, held out.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import load_benchmark


def _run(knees: list[float]) -> dict:
    results = []
    for optimizer, k in zip(("sgd", "adam", "momentum"), knees, strict=True):
        per_seed = [k * 0.9, k, k * 1.1]  # the median is k
        best = 2 * k
        lrs = best * 2.0 ** (np.arange(-8, 9) / 2)  # the optimum is a grid point
        acc = 0.9 - 0.05 * np.abs(np.log2(lrs / best))
        methods = {
            m: {"lr_per_seed": [f * x for x in per_seed]}
            for m, f in {"steep": 0.1, "valley": 0.3, "minimum": 0.5,
                         "divergence": 30.0, "balanced": 3.0, "knee": 1.0}.items()
        }  # fmt: skip
        results.append(
            {
                "optimizer": optimizer,
                "batch_size": 32,
                "grid": {"lrs": lrs.tolist(),
                         "val_accuracy": np.repeat(acc[:, None, None], 2, 1).tolist()},
                "methods": methods,
            }
        )  # fmt: skip
    return {"results": results}


@pytest.fixture(scope="module")
def fq():
    return load_benchmark("finder_quality")


def test_refit_finds_the_rule_the_grids_were_built_on(fq, tmp_path):
    fit = tmp_path / "finder_quality.json"
    held = tmp_path / "finder_quality_heldout.json"
    fit.write_text(json.dumps(_run([0.05, 0.001, 0.01])))
    held.write_text(json.dumps(_run([0.2, 0.0003, 0.03])))
    out = tmp_path / "refit.json"
    assert fq.refit([str(fit), str(held)], str(out)) == 0
    d = json.loads(out.read_text())
    assert d["candidates"] == len(fq._refit_candidates())
    assert len(d["fit_on"]) == 3 and len(d["heldout"]) == 3
    default = d["default"]
    assert default["rule"] == "knee"
    # knee is one octave below the optimum: 5 pp at the median, and the seed
    # 10% further below regrets 5 * (1 + log2(1/0.9)) pp
    assert default["fit"]["worst_regret_pp"] == pytest.approx(5.0, abs=1e-4)
    assert default["heldout"]["worst_seed_regret_pp"] == pytest.approx(
        5.0 * (1 + np.log2(1 / 0.9)), abs=1e-4
    )
    assert default["fit"]["worst_spread_factor"] == pytest.approx(1.1 / 0.9)
    refit = d["refit"]
    assert refit["fit"]["worst_regret_pp"] == pytest.approx(0.0, abs=1e-4)
    assert refit["heldout"]["worst_regret_pp"] == pytest.approx(0.0, abs=1e-4)
    # the per-kind refits each see one fit setting, and find the same optimum
    for kind in ("sgd", "adam", "momentum"):
        assert d["per_kind"][kind]["refit"]["heldout"]["worst_regret_pp"] == (
            pytest.approx(0.0, abs=1e-4)
        )
    assert "held out 3" in fq.refit_markdown(d)


def test_refit_skips_rules_that_spread_too_wide(fq):
    """A rule whose per-seed suggestions spread more than TARGET_SPREAD is never
    chosen, however low its regret at the median."""
    good = {"regret_pp": 0.3, "regret_pp_max": 0.4, "spread_factor": 1.5}
    wide = {"regret_pp": 0.0, "regret_pp_max": 0.1, "spread_factor": 2.5}
    lost = {"regret_pp": None, "regret_pp_max": None, "spread_factor": 1.0}
    ranked = fq._choose({"good": [good], "wide": [wide], "lost": [lost]}, [0])
    assert [r for *_, r in ranked] == ["good"]
