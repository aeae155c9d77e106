"""Range tests over a second hyperparameter in one program (``Population.sweep_over``).

The recommendation rule against curves with known answers; every value's member
against a plain range test with the optimizer built at that value; the shapes of
values x seeds; bad input.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import lrjax
from lrjax import Divergence, Execution, Population, Sweep
from lrjax._src.batches import scale_images
from lrjax._src.range_test import check_sweep, sweepable
from lrjax._src.suggestions import (
    best_sweep_value,
    curve_minimum,
    find_divergence,
    smooth,
)

from .conftest import make_images


@pytest.fixture(scope="module")
def images():
    x, y = make_images(1024, 0)
    return x, y.astype(np.int32)


def mlp(key):
    """An MLP fed uint8 images: ``scale_images`` in front of it."""
    return nnx.Sequential(scale_images, lrjax.mlp(784, 10, (32,), key=key))


def adamw(lr, weight_decay=0.0):
    return optax.adamw(lr, weight_decay=weight_decay)


# ------------------------------------------------- the rule, on known curves


def curve(lrs, floor, blow_up_at):
    """A range-test curve: 2.3 falling to ``floor`` on a log axis, then a blow-up.

    The loss reaches ``floor`` one decade before ``blow_up_at`` and grows tenfold
    per half decade past it, so the divergence point and the minimum are known.
    """
    x = np.log10(lrs)
    top = math.log10(blow_up_at)
    fall = np.clip((x - (top - 3)) / 2, 0, 1)  # 0 -> 1 over the two decades
    loss = 2.3 - (2.3 - floor) * fall
    return np.where(x > top, loss * 100 ** (x - top), loss)


def scores(lrs, losses):
    s = smooth(losses, beta=0.0)  # beta 0: the smoothed curve is the curve
    d = find_divergence(losses, s)
    return curve_minimum(s, d), None if d is None else float(lrs[d])


def test_curves_with_known_minimum_and_divergence_score_as_built():
    lrs = np.logspace(-5, 1, 601)
    lo, div = scores(lrs, curve(lrs, 0.4, 0.1))
    assert lo == pytest.approx(0.4)
    # the rebound: back up by half the descent, 0.4 + (2.3 - 0.4) / 2 = 1.35
    assert div == pytest.approx(0.1 * math.sqrt(1.35 / 0.4), rel=0.03)


def test_the_lowest_loss_wins_when_it_is_clearly_lower():
    lrs = np.logspace(-5, 1, 601)
    built = [(0.50, 1.0), (0.30, 0.1), (0.40, 3.0)]  # (floor, blow-up lr)
    lows, divs = zip(*(scores(lrs, curve(lrs, *b)) for b in built), strict=True)
    assert best_sweep_value(lows, divs, [0.01] * 3) == 1


def test_a_tie_in_loss_goes_to_the_value_stable_to_the_highest_lr():
    """Smith's picture: equally low curves, the one that diverges later wins."""
    lrs = np.logspace(-5, 1, 601)
    built = [(0.300, 0.1), (0.301, 1.0), (0.3015, 0.3), (0.5, 5.0)]
    lows, divs = zip(*(scores(lrs, curve(lrs, *b)) for b in built), strict=True)
    assert best_sweep_value(lows, divs, [0.01] * 4) == 1  # within 1% of 0.300
    assert best_sweep_value(lows, divs, [0.01] * 4, tolerance=0.0) == 0
    assert best_sweep_value(lows, divs, [0.01] * 4, tolerance=1.0) == 3  # all tied


def test_never_diverging_is_the_most_stable_and_ties_fall_to_the_first():
    assert best_sweep_value([0.3, 0.3, 0.3], [1.0, None, 2.0], [0.1, 0.1, 0.1]) == 1
    assert best_sweep_value([0.3, 0.3], [None, None], [0.1, 0.1]) == 0
    # equal divergence: the lower minimum, even inside the tolerance
    assert best_sweep_value([0.301, 0.300], [1.0, 1.0], [0.1, 0.1]) == 1


def test_values_without_a_usable_curve_are_skipped():
    # value 0 has the lowest loss but no suggested lr; value 1 is NaN throughout
    assert best_sweep_value([0.1, None, 0.5], [1.0, None, 1.0], [None, None, 0.2]) == 2
    assert best_sweep_value([0.1, 0.5], [1.0, 2.0], [None, None]) == 0  # none has one
    assert best_sweep_value([None, float("nan")], [None, None], [0.1, None]) is None
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        best_sweep_value([0.1], [1.0], [0.1], tolerance=-1)
    with pytest.raises(ValueError, match="differ in length"):
        best_sweep_value([0.1, 0.2], [1.0], [0.1])


def test_curve_minimum_stops_at_the_divergence():
    s = np.array([2.0, np.nan, 1.0, 0.5, 3.0, 0.1])
    assert curve_minimum(s, None) == 0.1
    assert curve_minimum(s, 4) == 0.5
    assert curve_minimum(np.array([np.nan]), None) is None


# ----------------------------------------- one program == one run per value

# no divergence before 0.05: float32 chaos past it would swamp a check
SWEEP = Sweep(num_steps=40, init_value=1e-4, end_value=0.05)
KW = dict(
    sweep=SWEEP,
    divergence=Divergence(stop=False),
    execution=Execution(chunks=2),
)


def kw_steps(num_steps: int) -> dict:
    """KW with a sweep of ``num_steps`` updates."""
    return dict(KW, sweep=dataclasses.replace(SWEEP, num_steps=num_steps))


def over(sweep_over, seeds: int = 1, layout: str = "auto") -> Population:
    return Population(seeds=seeds, sweep_over=sweep_over, layout=layout)


def test_each_value_equals_a_plain_run_at_that_value_with_seeds(images):
    values = [0.0, 1e-2, 1.0]
    key = jax.random.key(3)
    r = lrjax.lr_range_test(
        mlp, adamw, images, key=key, population=over({"weight_decay": values}, 2), **KW
    )
    sw = r.sweep
    assert sw.name == "weight_decay" and sw.values == values
    assert sw.losses.shape == sw.smoothed_losses.shape == (3, 2, 40)
    assert sw.metrics["accuracy"].shape == (3, 2, 40)
    assert len(sw.suggestions) == len(sw.diverged_at_step) == 3
    assert all(len(d) == 2 for d in sw.diverged_at_step)
    for i, v in enumerate(values):
        plain = lrjax.lr_range_test(
            mlp,
            lambda lr, v=v: adamw(lr, weight_decay=v),
            images,
            key=key,
            population=Population(seeds=2),
            **KW,
        )
        np.testing.assert_allclose(sw.losses[i], plain.losses, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            sw.metrics["accuracy"][i], plain.metrics["accuracy"], atol=1e-6
        )
        np.testing.assert_allclose(r.lrs, plain.lrs, rtol=1e-6)
        for m, lr in plain.suggestions.items():
            got = sw.suggestions[i][m]
            assert got == lr if lr is None else got == pytest.approx(lr, rel=1e-3)
    # The decay matters (so the check above could fail) ...
    assert not np.allclose(sw.losses[0], sw.losses[2], rtol=1e-3)
    # ... and the top-level fields are the recommended value's run.
    assert sw.best is not None and sw.value == values[sw.best]
    np.testing.assert_array_equal(r.losses, sw.losses[sw.best])
    assert r.suggested_lr == sw.lr == sw.suggested_lr[sw.best]
    assert r.config.sweep == lrjax.SweepOver("weight_decay", tuple(values), sw.best)
    assert r.to_json()["config"]["sweep"] == {
        "name": "weight_decay",
        "values": values,
        "shown": sw.best,
    }
    assert r.config.memory.members == 6


def test_sgd_momentum_on_one_seed_shares_the_batches(images):
    model = mlp(jax.random.key(1))
    key = jax.random.key(0)
    r = lrjax.lr_range_test(
        model,
        optax.sgd,
        images,
        key=key,
        population=over({"momentum": [0.0, 0.9]}),
        **KW,
    )
    # one seed keeps its axis: [values, seeds, steps_run] and [seeds, steps_run]
    assert r.sweep.losses.shape == r.sweep.smoothed_losses.shape == (2, 1, 40)
    assert r.sweep.metrics["accuracy"].shape == (2, 1, 40)
    assert r.losses.shape == (1, 40)
    for i, m in enumerate([0.0, 0.9]):
        plain = lrjax.lr_range_test(
            model, lambda lr, m=m: optax.sgd(lr, momentum=m), images, key=key, **KW
        )
        np.testing.assert_allclose(
            r.sweep.losses[i], plain.losses, rtol=1e-4, atol=1e-5
        )
    doc = json.loads(json.dumps(r.to_json(), allow_nan=False))
    assert doc["sweep"]["values"] == [0.0, 0.9]
    assert np.shape(doc["sweep"]["losses"]) == (2, 1, 40)
    assert np.shape(doc["sweep"]["smoothed_losses"]) == (2, 1, 40)
    assert np.shape(doc["sweep"]["metrics"]["accuracy"]) == (2, 1, 40)
    assert np.shape(doc["losses"]) == (1, 40)
    assert doc["sweep"]["recommended"]["index"] == r.sweep.best
    assert (
        "sweep"
        not in lrjax.lr_range_test(model, optax.sgd, images, key=key, **KW).to_json()
    )


@pytest.mark.parametrize("seeds", [1, 2])
def test_mapped_unrolled_and_vmapped_members_agree(images, seeds):
    kw = dict(kw_steps(20), key=jax.random.key(0))
    sweep = {"weight_decay": [0.0, 0.5]}
    r = {
        p: lrjax.lr_range_test(
            mlp, adamw, images, population=over(sweep, seeds, p), **kw
        )
        for p in ("map", "vmap", "unroll")
    }
    for p in ("map", "unroll"):
        assert r[p].timings.population == p
        np.testing.assert_allclose(
            r[p].sweep.losses, r["vmap"].sweep.losses, rtol=1e-4, atol=1e-5
        )
    assert r["vmap"].timings.population == "vmap"
    with pytest.raises(ValueError, match="layout must be one of"):
        over(sweep, seeds, "x")


def test_an_iterable_of_batches_feeds_every_value(images):
    x, y = images
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 320, 32)]
    kw = kw_steps(10)
    r = lrjax.lr_range_test(
        mlp(jax.random.key(1)),
        adamw,
        batches,
        key=jax.random.key(0),
        population=over({"weight_decay": [0.0, 0.5]}),
        **kw,
    )
    plain = lrjax.lr_range_test(
        mlp(jax.random.key(1)),
        lambda lr: adamw(lr, weight_decay=0.5),
        batches,
        key=jax.random.key(0),
        **kw,
    )
    assert r.config.data == "iterable" and r.sweep.losses.shape == (2, 1, 10)
    np.testing.assert_allclose(r.sweep.losses[1], plain.losses, rtol=1e-4, atol=1e-5)


def test_one_value_on_one_seed_is_a_plain_run(images):
    """A population of one member has no member axis in the program (it used to
    crash); its result keeps the value and seed axes."""
    model, key, kw = mlp(jax.random.key(1)), jax.random.key(0), kw_steps(20)
    r = lrjax.lr_range_test(
        model, adamw, images, key=key, population=over({"weight_decay": [0.5]}), **kw
    )
    plain = lrjax.lr_range_test(
        model, lambda lr: adamw(lr, weight_decay=0.5), images, key=key, **kw
    )
    assert r.sweep.losses.shape == (1, 1, 20) and r.losses.shape == (1, 20)
    assert r.timings.population is None and r.config.memory.members == 1
    np.testing.assert_allclose(r.losses, plain.losses, rtol=1e-4, atol=1e-5)
    assert r.sweep.values == [0.5] and r.config.sweep.shown == 0


# -------------------------------------------------------------- bad input


def test_sweepable_names_are_the_factory_keywords():
    assert sweepable(adamw) == ["weight_decay"]
    assert sweepable(optax.sgd) == ["momentum"]
    assert "weight_decay" in sweepable(optax.adamw) and "mask" not in sweepable(
        optax.adamw
    )
    assert sweepable(lambda lr, **kw: None) is None  # any name is tried


@pytest.mark.parametrize(
    ("sweep_over", "match"),
    [
        ({"momentum": [0.9]}, r"no hyperparameter 'momentum'; it takes weight_decay"),
        ({}, "must map ONE hyperparameter"),
        ({"weight_decay": [0.0], "b1": [0.9]}, "must map ONE hyperparameter"),
        ({"weight_decay": []}, r"sweep_over\['weight_decay'\] is empty"),
        ({"weight_decay": "0,1e-4"}, "must be a list of numbers"),
        ({"weight_decay": [0.0, "x"]}, "values must be numbers, got 'x'"),
        ({"weight_decay": [True]}, "values must be numbers, got True"),
        ({"weight_decay": [float("nan")]}, "values must be finite"),
        ({"weight_decay": [1e-4, 1e-4]}, "repeats a value"),
        ({"weight_decay": [0.0, -1e-4]}, "weight_decay must be >= 0, got -0.0001"),
        ({"learning_rate": [0.1]}, "cannot name the learning rate"),
    ],
)
def test_bad_sweeps_are_value_errors(sweep_over, match):
    with pytest.raises(ValueError, match=match):
        check_sweep(sweep_over, adamw)
    if "no hyperparameter" not in match:  # the spec checks all but the name
        with pytest.raises(ValueError, match=match):
            Population(sweep_over=sweep_over)


def test_a_value_the_optimizer_rejects_is_a_value_error(images):
    def picky(lr, eps=1e-8):
        if eps > 1.0:
            raise ValueError("eps is far too large")
        return optax.adam(lr, eps=eps)

    with pytest.raises(ValueError, match="rejected eps=5: eps is far too large"):
        lrjax.lr_range_test(
            mlp(jax.random.key(0)),
            picky,
            images,
            key=jax.random.key(0),
            sweep=Sweep(num_steps=4),
            population=over({"eps": [1e-8, 5.0]}),
        )
    with pytest.raises(ValueError, match="it takes none besides the learning rate"):
        lrjax.lr_range_test(
            mlp(jax.random.key(0)),
            lambda lr: optax.adam(lr),
            images,
            key=jax.random.key(0),
            population=over({"weight_decay": [0.0]}),
        )
