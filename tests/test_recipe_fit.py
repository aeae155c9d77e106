"""benchmarks/recipe_quality.py --fit: the procedure finds a rule it is built to
find, and leave-one-out says what it costs on a setting it did not see.

Synthetic settings whose grids peak at exactly ``2.828 x knee x (1000 / T)^0.5``
(accuracy falls 2 pp per octave away from it, linear in log lr, as the grid's
interpolation is), at three budgets; the other suggestions stand in ratios to the
knee that no (factor, exponent) pair fits. A fourth setting (a "different model")
peaks 4 x higher: a rule fitted on the other three must miss it by 2 octaves x 2 pp.
"""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import load_benchmark

FAMILY_OFFSET = {"wsd": 0.0, "linear_decay": 0.001, "one_cycle": 0.002,
                 "warmup_cosine": 0.003}  # fmt: skip
RATIOS = {  # each suggestion / knee, per setting (T = 500, 2000, 8000, 2000)
    "steep": [0.1, 0.3, 0.05, 0.2],
    "valley": [0.3, 0.1, 0.5, 0.2],
    "minimum": [0.5, 0.2, 0.9, 0.3],
    "divergence": [20.0, 50.0, 8.0, 30.0],
    "balanced": [3.0, 1.5, 6.0, 2.5],
    "knee": [1.0, 1.0, 1.0, 1.0],
}


def _setting(i: int, total: int, shift: float = 1.0) -> dict:
    knee = 0.01 * (1 + i)
    best = shift * 2.828 * knee * (1000 / total) ** 0.5
    lrs = best * 2.0 ** (np.arange(-8, 9) / 2)  # the optimum is a grid point
    acc = 0.9 - 0.02 * np.abs(np.log2(lrs / best))
    grids = {
        fam: {"lrs": lrs.tolist(), "final_accuracy_mean": (acc - off).tolist()}
        for fam, off in FAMILY_OFFSET.items()
    }
    per_seed = [knee / 1.05, knee, knee * 1.05]  # the median is the knee
    per_method = {m: [r[i] * k for k in per_seed] for m, r in RATIOS.items()}
    return {
        "setting": {"model": "mlp", "optimizer": "sgd", "batch_size": 32,
                    "weight_decay": None, "epochs": i + 1},
        "range_test": {"per_method": per_method,
                       "suggestions": {m: v[1] for m, v in per_method.items()}},
        "grid": {"total_steps": total},
        "grids": grids,
    }  # fmt: skip


@pytest.fixture(scope="module")
def rq():
    return load_benchmark("recipe_quality")


def test_choose_finds_the_rule_and_the_family(rq):
    docs = [_setting(i, t) for i, t in enumerate((500, 2000, 8000))]
    c = rq.choose(docs)
    assert c["rule"] == ("knee", 2.828, 0.5, (500, 8000))  # and its budgets
    assert c["shared"]["budgets"] == (500, 8000)
    assert c["auto"] == "wsd"
    # every seed 1.05 x off the median: 2 pp per octave x log2(1.05)
    # the worst family (0.3 pp below the best cell) at the worst seed
    assert c["shared"]["worst_pp"] == pytest.approx(0.3 + 2 * np.log2(1.05))
    assert c["auto_fit_worst_seed_regret_pp"]["wsd"] == pytest.approx(2 * np.log2(1.05))


def test_leave_one_out_scores_each_setting_with_a_rule_fitted_without_it(rq):
    docs = [_setting(i, t) for i, t in enumerate((500, 2000, 8000))]
    other = _setting(3, 2000, shift=4.0)  # a model whose best peak is 4 x higher
    loo = rq.leave_one_out(docs + [other])
    assert list(loo) == ["sgd"] and len(loo["sgd"]) == 4
    shifted = loo["sgd"][3]
    # fitted on the three consistent settings: the true rule, two octaves low
    assert (shifted["method"], shifted["factor"], shifted["budget_exponent"]) == (
        "knee", 2.828, 0.5)  # fmt: skip
    assert shifted["family"] == "wsd"
    assert shifted["regret_pp"] == pytest.approx(2 * 2.0)
    assert shifted["regret_seed_max_pp"] == pytest.approx(4.0 + 2 * np.log2(1.05))
    # leaving out a consistent one: the others include the shifted setting, and
    # the rule then pays for it on the one left out (more than its seed spread)
    for row in loo["sgd"][:3]:
        assert row["regret_seed_max_pp"] is None or row["regret_seed_max_pp"] > 0.14
    # without the shifted setting: the budget inside the others' (2000) is scored
    # at its seed spread; one outside them gets the multiple of the nearest
    # budget fitted (2000), not an extrapolation, which costs one octave here,
    # where the power law happens to hold beyond them: 2 pp
    clean = rq.leave_one_out(docs)["sgd"]
    for row, off in zip(clean, (2.0, 0.0, 2.0), strict=True):
        assert (row["method"], row["factor"]) == ("knee", 2.828)
        assert row["regret_pp"] == pytest.approx(off, abs=1e-9)
        assert row["regret_seed_max_pp"] == pytest.approx(off + 2 * np.log2(1.05))


def test_a_kind_with_one_setting_has_no_leave_one_out(rq):
    assert rq.leave_one_out([_setting(0, 500)]) == {}
