"""Recipes: build_schedule's shapes, recommend's rules, recipe_grid's population."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import optax
import pytest

from lrjax import GridConfig, Population
from lrjax._src import recipes, schedules
from lrjax._src.lr_grid import lr_grid, recipe_grid
from lrjax._src.recipes import FAMILIES, build_schedule, recommend, unit_schedule
from tests.test_lr_grid import XV, YV, X, Y, init, momentum, noisy


class FakeResult:
    def __init__(self, **suggestions):
        self.suggestions = suggestions


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("total", [2, 7, 100, 1719])
def test_shapes_peak_start_and_end(family, total):
    if family == "one_cycle" and total < 4:  # PyTorch's first phase would be empty
        with pytest.raises(
            ValueError,
            match=r"total_steps must be an integer >= 4 for one_cycle \(its warmup "
            rf"needs an update\), got {total}",
        ):
            build_schedule(family, 0.3, total)
        return
    """Every family peaks at peak_lr (never above), starts low, ends at its final lr."""
    peak = 0.3
    sched, p = build_schedule(family, peak, total)
    lr = np.asarray(sched(np.arange(total + 5)), np.float64)
    assert p["family"] == family and p["total_steps"] == total
    assert lr.max() <= peak * (1 + 1e-6)
    assert lr.max() >= peak * 0.95  # reaches (about) the peak even at tiny budgets
    assert lr[0] == pytest.approx(p["initial_lr"], rel=1e-5, abs=1e-12)
    np.testing.assert_allclose(lr[total:], lr[total], rtol=0)  # held after the end
    if family == "one_cycle":
        assert p["initial_lr"] == pytest.approx(peak / 25)
        assert lr[total - 1] == pytest.approx(p["final_lr"], rel=1e-4)
    else:
        assert lr[total] == 0.0 and p["final_lr"] == 0.0
        assert p["warmup_steps"] == min(round(0.05 * total), total - 1)
    # the last update applies a decayed lr at every budget (a wsd of 2-7 updates
    # used to decay over one step, whose lr is the peak: a constant lr)
    assert lr[total - 1] < peak * (1 - 1e-3)


def test_a_rules_peak_is_capped_at_the_divergence_suggestion():
    """Above half the lr where the range test diverged no recipe grid's best
    cell lies; a short budget's range test can put a rule's multiple there (an
    MLP of 55 updates at 2.828 x knee trained to 10-23%). A factor the caller
    gives is not capped."""
    r = FakeResult(knee=0.5, divergence=0.8)
    rec = recommend(r, 1000, "wsd", optimizer="sgd")  # 2.828 x 0.5 = 1.414 > 0.8
    assert rec.peak_lr == 0.8 and rec.factor == pytest.approx(1.6)
    assert rec.params["peak_lr"] == 0.8
    assert float(rec.schedule(500)) == pytest.approx(0.8)  # float32
    assert rec.rule == (
        "peak = 2.828 x knee (0.5), capped at the divergence suggestion (0.8)"
    )
    assert rec.to_json()["optimizer_kind"] == "sgd"
    assert rec.describe().endswith(", sgd rule")
    assert recommend(FakeResult(knee=0.2, divergence=0.8), 1000, "wsd",
                     optimizer="sgd").peak_lr == pytest.approx(0.5656)  # fmt: skip
    mine = recommend(r, 100, "wsd", method="knee", factor=3)
    assert mine.peak_lr == 1.5 and mine.optimizer_kind is None


def test_a_budget_outside_the_fitted_ones_is_said():
    """Every rule keeps the budgets it was fitted on (recipe_fit.json); a
    constant multiple applies at any budget, and the rule says when the budget
    lies outside its evidence."""
    r = FakeResult(knee=0.01, balanced=0.02, divergence=1.0)
    assert recipes.PEAK_RULES["sgd"]["wsd"].budgets == (429, 51540)
    inside = recommend(r, 1000, "wsd", optimizer="sgd")
    assert inside.rule == "peak = 2.828 x knee (0.01)"
    short = recommend(r, 100, "wsd", optimizer="sgd")
    assert short.peak_lr == inside.peak_lr
    assert short.rule == (
        "peak = 2.828 x knee (0.01); 100 updates, outside the 429-51540 it was "
        "fitted on"
    )
    assert recommend(r, 6435, optimizer="nesterov").rule == (
        "peak = 2 x balanced (0.02); 6435 updates, outside the 1287 it was fitted on"
    )


def test_shapes_match_their_definitions_at_worked_values():
    """Each family against a hand-written formula at a few steps (T = 200)."""
    T, peak = 200, 1.0
    lin, _ = build_schedule("linear_decay", peak, T)
    # warmup 10 steps from 0, then linear from 1 at step 10 to 0 at step 200
    assert float(lin(5)) == pytest.approx(0.5)
    assert float(lin(105)) == pytest.approx(1 - 95 / 190, rel=1e-6)
    cos, _ = build_schedule("warmup_cosine", peak, T)
    assert float(cos(105)) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 95 / 190)), rel=1e-6
    )
    w, p = build_schedule("wsd", peak, T)
    assert p["decay_steps"] == 40
    assert float(w(100)) == 1.0 and float(w(159)) == 1.0
    assert float(w(180)) == pytest.approx(0.5, rel=1e-6)
    oc, _ = build_schedule("one_cycle", peak, 100)
    assert float(oc(29)) == pytest.approx(1.0) and float(oc(0)) == pytest.approx(0.04)


@pytest.mark.parametrize("family", FAMILIES)
def test_unit_schedule_scales_to_the_built_one(family):
    """A grid member at lr p (p * unit) follows the schedule training builds."""
    t = np.arange(0, 1000, 7)
    sched, _ = build_schedule(family, 0.05, 1000)
    np.testing.assert_allclose(
        0.05 * np.asarray(unit_schedule(family, 1000)(t)),
        np.asarray(sched(t)),
        rtol=2e-7,
        atol=1e-12,
    )


def test_recommend_applies_the_rule_and_the_overrides():
    r = FakeResult(knee=0.01, valley=0.004, divergence=0.2)
    for opt, kind in recipes.OPTIMIZER_KINDS.items():
        for family in FAMILIES:
            rule = recipes.PEAK_RULES[kind][family]
            method, factor = rule.method, rule.multiple(500)
            rec = recommend(FakeResult(**{method: 0.01}), 500, family, optimizer=opt)
            assert rec.peak_lr == pytest.approx(factor * 0.01)
            assert rec.params["peak_lr"] == rec.peak_lr and rec.family == family
            assert np.asarray(rec.schedule(np.arange(500))).max() == pytest.approx(
                rec.peak_lr, rel=1e-5
            )
    for opt, kind in recipes.OPTIMIZER_KINDS.items():
        family = recipes.AUTO_FAMILIES[kind]
        rule = recipes.PEAK_RULES[kind][family]
        method, factor = rule.method, rule.multiple(500)
        auto = recommend(FakeResult(**{method: 0.01}), 500, optimizer=opt)
        assert auto.family == family and auto.peak_lr == pytest.approx(factor * 0.01)
    with pytest.raises(ValueError, match="family='auto' is chosen per optimizer"):
        recommend(r, 500, method="valley")  # no optimizer: no auto family
    assert recommend(r, 500, "wsd", method="valley").peak_lr == 0.004
    assert recommend(r, 500, "wsd", method="valley", factor=2).peak_lr == 0.008
    assert recommend(r, 500, "wsd", factor=2.5, optimizer="adam").factor == 2.5
    doc = recommend(r, 500, "one_cycle", method="divergence").to_json()
    assert doc["rule"] == "peak = 1 x divergence (0.2)" and doc["peak_lr"] == 0.2
    assert doc["initial_lr"] == pytest.approx(0.2 / 25)


def test_a_budget_exponent_lowers_the_multiple_as_the_budget_grows(monkeypatch):
    """PeakRule: factor x (1000 / T) ** exponent x the suggestion, worked out:
    2 x (1000 / 4000) ** 0.5 = 1 and 2 x (1000 / 250) ** 0.5 = 4; the rule's
    words say both numbers, and a factor given is the multiple itself."""
    rule = recipes.PeakRule("knee", 2.0, 0.5)
    assert rule.multiple(1000) == 2.0
    assert rule.multiple(4000) == pytest.approx(1.0)
    assert rule.multiple(250) == pytest.approx(4.0)
    monkeypatch.setitem(recipes.PEAK_RULES, "adam", dict.fromkeys(FAMILIES, rule))
    r = FakeResult(knee=0.01)
    long = recommend(r, 4000, "wsd", optimizer="adam")
    assert long.peak_lr == pytest.approx(0.01) and long.factor == pytest.approx(1.0)
    assert long.rule == "peak = 1 x knee (0.01); 2 x (1000 / 4000 updates)^0.5"
    assert recommend(r, 250, "wsd", optimizer="adamw").peak_lr == pytest.approx(0.04)
    given = recommend(r, 250, "wsd", optimizer="adam", factor=3.0)
    assert given.peak_lr == pytest.approx(0.03)
    assert given.rule == "peak = 3 x knee (0.01)"


def test_a_budget_outside_the_fitted_ones_gets_the_nearest_ones_multiple():
    """Adam's rule was fitted on 429 and 8590 updates: 62 updates get the
    multiple of 429 (10.23 x knee, not the power law's 39.6 x, which a user's
    run diverged at), 10^6 that of 8590; the rule's words say so."""
    rule = recipes.PEAK_RULES["adam"]["one_cycle"]
    assert rule.budgets == (429, 8590)
    at_429 = 5.657 * (1000 / 429) ** 0.7
    assert rule.multiple(62) == rule.multiple(429) == pytest.approx(at_429)
    assert 5.657 * (1000 / 62) ** 0.7 == pytest.approx(39.6, abs=0.05)  # was
    assert rule.multiple(10**6) == pytest.approx(5.657 * (1000 / 8590) ** 0.7)
    assert rule.multiple(2000) == pytest.approx(5.657 * 0.5**0.7)  # inside: as is
    r = FakeResult(knee=0.01)
    short = recommend(r, 62, optimizer="adam")
    assert short.peak_lr == pytest.approx(0.01 * at_429)
    assert short.rule == (
        "peak = 10.23 x knee (0.01); 5.657 x (1000 / 429 updates)^0.7, the "
        "shortest budget the rule was fitted on"
    )
    assert recommend(r, 10**6, optimizer="adamw").rule.endswith(
        "(1000 / 8590 updates)^0.7, the longest budget the rule was fitted on"
    )


def test_recommend_takes_numpy_budgets_and_refuses_too_short_a_one_cycle():
    r = FakeResult(knee=0.01)
    assert recommend(r, np.int64(1000), "wsd", optimizer="sgd").total_steps == 1000
    for total in (2, 3):  # one_cycle's warmup is 30% of the run: >= 4 updates
        with pytest.raises(
            ValueError,
            match=r"^total_steps must be an integer >= 4 for one_cycle \(its warmup "
            rf"needs an update\), got {total}$",
        ):
            recommend(r, total, optimizer="adam")  # auto: one_cycle
    assert recommend(r, 3, "wsd", optimizer="adam").total_steps == 3
    assert recommend(r, 4, optimizer="adam").family == "one_cycle"


def test_the_rules_are_the_fitted_ones():
    """PEAK_RULES and AUTO_FAMILIES are what ``benchmarks/recipe_quality.py --fit``
    wrote to benchmarks/results/recipe_fit.json (each kind's shared rule and its
    auto family), for exactly the kinds OPTIMIZER_KINDS names: a rule edited by
    hand, or a refit not copied into the code, fails here."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks/results/recipe_fit.json"
    fitted = json.loads(path.read_text())
    kinds = set(recipes.OPTIMIZER_KINDS.values())
    assert set(fitted["kinds"]) == set(recipes.PEAK_RULES) == kinds
    for kind, k in fitted["kinds"].items():
        sh = k["shared"]
        span = None if sh["budgets"] is None else tuple(sh["budgets"])
        rule = recipes.PeakRule(
            sh["method"], sh["factor"], sh["budget_exponent"], budgets=span
        )
        assert recipes.PEAK_RULES[kind] == dict.fromkeys(FAMILIES, rule), kind
    assert recipes.AUTO_FAMILIES == fitted["auto_families"]
    from lrjax._src.suggestions import METHODS

    r = FakeResult(**{**dict.fromkeys(METHODS, 0.01), "divergence": 1.0})  # no cap
    for opt, kind in recipes.OPTIMIZER_KINDS.items():
        factor = recipes.PEAK_RULES[kind][recipes.AUTO_FAMILIES[kind]].multiple(500)
        rec = recommend(r, 500, optimizer=opt)
        assert rec.peak_lr == pytest.approx(factor / 100)
        assert rec.family == recipes.AUTO_FAMILIES[kind]


def test_recommend_reads_the_optimizer_the_range_test_recorded():
    """lr_range_test records the factory's name; recommend picks its kind's rule
    from it, and refuses a factory it cannot name (a lambda)."""
    import functools

    import jax
    import optax

    import lrjax

    x = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = lrjax.mlp(8, 2, (16,), key=jax.random.key(0))
    kw = dict(key=jax.random.key(1), sweep=lrjax.Sweep(num_steps=40, batch_size=32))
    for factory, name, kind in [
        (optax.adamw, "adamw", "adam"),
        (functools.partial(optax.sgd), "sgd", "sgd"),
        # a momentum given by a partial is the momentum kind (it was "sgd")
        (functools.partial(optax.sgd, momentum=0.9), "momentum", "momentum"),
        (functools.partial(optax.sgd, momentum=0.9, nesterov=True), "nesterov",
         "momentum"),
    ]:  # fmt: skip
        res = lrjax.lr_range_test(model, factory, (x, y), **kw)
        assert res.config.optimizer == name
        rule = recipes.PEAK_RULES[kind][recipes.AUTO_FAMILIES[kind]]
        if res.suggestions.get(rule.method) is not None:
            rec = recommend(res, 100)
            assert rec.family == recipes.AUTO_FAMILIES[kind]
            assert rec.optimizer_kind == kind
            by_rule = rule.multiple(100) * res.suggestions[rule.method]
            cap = res.suggestions["divergence"] or by_rule
            assert rec.peak_lr == pytest.approx(min(by_rule, cap))
            assert ("capped at the divergence" in rec.rule) == (cap < by_rule)
    res = lrjax.lr_range_test(model, lambda lr: optax.sgd(lr), (x, y), **kw)
    assert res.config.optimizer is None
    with pytest.raises(ValueError, match="^the range test could not name its optim"):
        recommend(res, 100)
    method = "knee" if res.suggestions.get("knee") else "steep"
    assert recommend(res, 100, "wsd", method=method).factor == 1.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: build_schedule("cosine", 0.1, 100), "unknown schedule family"),
        (lambda: build_schedule("wsd", 0.0, 100), "peak_lr must be"),
        (lambda: build_schedule("wsd", 0.1, 1), "total_steps must be"),
        (lambda: build_schedule("wsd", 0.1, 10.0), "total_steps must be"),
        (
            lambda: recommend(FakeResult(knee=None), 100, optimizer="sgd"),
            r"no 'knee' suggestion \(its loss never descended far enough\)",
        ),
        (  # balanced needs the divergence lr: say so, and what there is instead
            lambda: recommend(
                FakeResult(knee=0.1, valley=0.05, divergence=None, balanced=None),
                100,
                optimizer="momentum",
            ),
            r"no 'balanced' suggestion \(the loss never diverged, .*; it has knee, "
            r"valley\); pass method= one it has, or build the schedule at a peak of "
            r"your own: lrjax.recipes.build_schedule\(family, peak_lr, total_steps\)",
        ),
        (lambda: recommend(FakeResult(knee=0.1), 100), "could not name its optim"),
        (
            lambda: recommend(FakeResult(knee=0.1), 100, method="knee"),
            "family='auto' is chosen per optimizer kind, and the range test could "
            "not name its optimizer",
        ),
        (lambda: build_schedule("wsd", "0.1", 100), "peak_lr must be .*got '0.1'"),
        (lambda: build_schedule("wsd", None, 100), "peak_lr must be .*got None"),
        (
            lambda: recommend(FakeResult(knee=0.1), 100, optimizer="sgd", factor="x"),
            "factor must be a finite number > 0, got 'x'",
        ),
        (
            lambda: recipes.PeakRule("knee", 2, 0.5, budgets=(4000, 1000)).multiple(9),
            r"budgets must be \(shortest, longest\)",
        ),
        (lambda: recipes.PeakRule("knee", 2, 0.5).multiple(0), "total_steps must be"),
        (lambda: recommend(FakeResult(knee=0.1), 100, optimizer="lion"), "'lion'"),
        (lambda: recommend(FakeResult(knee=0.1), 100, "wsd", method="no"), "unknown s"),
        (
            lambda: recommend(FakeResult(knee=0.1), 9, optimizer="sgd", factor=-1),
            "factor must be",
        ),
        (lambda: recommend(object(), 100, optimizer="sgd"), "needs a range-test"),
        (lambda: recommend(FakeResult(knee=0.1), 100, "auto2"), "unknown schedule"),
    ],
)
def test_bad_input_is_one_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_recipe_grid_equals_one_grid_per_family():
    """Families trained as one population equal each family's own lr_grid (the
    single-family grid is checked against a plain loop in test_lr_grid)."""
    total = 2 * (len(Y) // 32)
    fams = {
        "one_cycle": unit_schedule("one_cycle", total),
        "wsd": unit_schedule("wsd", total),
        "constant": None,
    }
    config = GridConfig(epochs=2, batch_size=32)
    args = dict(lrs=[0.03, 0.3], key=jax.random.key(3), population=Population(seeds=2))
    together = recipe_grid(
        noisy, momentum, (X, Y), (XV, YV), families=fams, config=config, **args
    )
    assert list(together) == list(fams)
    for name, unit in fams.items():
        alone = lr_grid(
            noisy, momentum, (X, Y), (XV, YV),
            config=dataclasses.replace(config, schedule=unit), **args,
        )  # fmt: skip
        got = together[name]
        assert got.config.family == name
        np.testing.assert_allclose(got.applied_lr, alone.applied_lr, rtol=1e-6)
        np.testing.assert_allclose(got.val_loss, alone.val_loss, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(got.val_accuracy, alone.val_accuracy, atol=0.01)
        assert got.best_lr == alone.best_lr


def test_recipe_grid_refuses_schedule_and_empty_families():
    with pytest.raises(ValueError, match="not schedule="):
        recipe_grid(init, optax.sgd, (X, Y), (XV, YV), lrs=[0.1], key=jax.random.key(0),
                    families={"a": None}, schedule=None)  # fmt: skip
    with pytest.raises(ValueError, match="not config.schedule"):
        recipe_grid(init, optax.sgd, (X, Y), (XV, YV), lrs=[0.1], key=jax.random.key(0),
                    families={"a": None},
                    config=GridConfig(schedule=lambda t: 1.0))  # fmt: skip
    with pytest.raises(ValueError, match="non-empty mapping"):
        recipe_grid(init, optax.sgd, (X, Y), (XV, YV), lrs=[0.1], key=jax.random.key(0),
                    families={})  # fmt: skip


def test_one_cycle_family_is_pytorch_onecycle():
    """The recipe's one_cycle is PyTorch's OneCycleLR with its defaults."""
    torch = pytest.importorskip("torch")
    T = 137
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=T)
    want = []
    for _ in range(T):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    sched, _ = build_schedule("one_cycle", 0.1, T)
    np.testing.assert_allclose(np.asarray(sched(np.arange(T))), want, rtol=2e-5)
    assert schedules.one_cycle is not None
