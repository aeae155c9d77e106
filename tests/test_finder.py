"""The range test: host-side rules on curves with known answers, and the compiled
sweep against a plain Python loop of the same step."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrjax
from lrjax import finder
from lrjax.training import batch_indices, init_state, make_optimizer, make_step

from .conftest import make_images

# ----------------------------------------------------------------------- smoothing


def test_smooth_matches_the_bias_corrected_sum():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.5, 2.5, 200)
    beta = 0.98
    # smoothed_i = sum_j (1-b) b^(i-j) loss_j / (1 - b^(i+1)): the closed form of
    # the recursion, evaluated independently here.
    want = [
        sum((1 - beta) * beta ** (i - j) * losses[j] for j in range(i + 1))
        / (1 - beta ** (i + 1))
        for i in range(len(losses))
    ]
    np.testing.assert_allclose(finder.smooth(losses, beta), want, rtol=1e-12)
    assert finder.smooth(losses, 0.0).tolist() == losses.tolist()


def test_smooth_treats_leading_axes_as_independent_rows():
    rng = np.random.default_rng(1)
    rows = rng.uniform(0.5, 2.5, (3, 50))
    rows[1, 20] = np.nan
    both = finder.smooth(rows)
    for k in range(3):
        np.testing.assert_array_equal(both[k], finder.smooth(rows[k]))
    assert np.isnan(both[1, 20:]).all() and np.isfinite(both[[0, 2]]).all()


def test_smooth_is_nan_after_the_first_non_finite_loss():
    out = finder.smooth(np.array([1.0, 2.0, np.inf, 1.0]))
    assert np.isfinite(out[:2]).all() and np.isnan(out[2:]).all()


# ---------------------------------------------------------------------- divergence


def test_divergence_by_threshold():
    s = np.array([2.0, 1.0, 0.5, 0.6, 1.0, 2.01, 3.0])
    assert finder.find_divergence(s, s, threshold=4.0, rebound=None) == 5
    assert finder.find_divergence(s, s, threshold=6.5, rebound=None) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_divergence_at_first_non_finite_loss(bad):
    raw = np.array([2.0, 1.9, 1.8, bad, 1.0])
    assert finder.find_divergence(raw, finder.smooth(raw)) == 3


def test_divergence_by_rebound_onto_a_plateau():
    # Best 0.6: 4 x best = 2.4 is never reached by the ln(10) plateau, the rebound
    # rule fires once the loss has climbed back half way (0.6 + 0.5 * 1.7 = 1.45).
    s = np.concatenate([np.linspace(2.3, 0.6, 50), np.linspace(0.6, 2.3, 30)])
    s = np.concatenate([s, np.full(40, 2.3)])
    assert finder.find_divergence(s, s, rebound=None) is None
    i = finder.find_divergence(s, s)
    assert s[i] >= 1.45 and s[i - 1] < 1.45


def test_no_divergence_on_a_falling_curve_or_without_real_descent():
    s = np.linspace(2.3, 0.3, 100)
    assert finder.find_divergence(s, s) is None
    flat = 2.3 + 0.01 * np.sin(np.arange(100))  # noise, no descent: no rebound
    assert finder.find_divergence(flat, flat) is None


# ----------------------------------------------------------------------- suggestions


def fastai_valley(losses):
    """fastai's valley rule written as its plain double loop (the reference)."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


@pytest.mark.parametrize("seed", range(5))
def test_valley_index_matches_fastai_loop(seed):
    rng = np.random.default_rng(seed)
    losses = np.cumsum(rng.normal(0, 1, 120))
    assert finder._valley_index(losses) == fastai_valley(list(losses))


def sigmoid_curve(n=400, center=1e-2, blowup=None):
    lrs = np.geomspace(1e-5, 10, n)
    x = np.log(lrs / center)
    loss = 0.5 + 1.8 / (1 + np.exp(2 * x))  # steepest descent exactly at center
    if blowup is not None:
        loss = loss + np.where(lrs > blowup, 50 * (lrs - blowup), 0.0)
    return lrs, loss


def test_steep_finds_the_steepest_point_on_a_log_axis():
    lrs, loss = sigmoid_curve()
    got = finder.suggest(lrs, loss, None)["steep"]
    step = lrs[1] / lrs[0]
    assert 1e-2 / step <= got <= 1e-2 * step


def test_minimum_divergence_and_balanced_on_a_known_curve():
    lrs, loss = sigmoid_curve(blowup=1.0)
    smoothed = loss
    div = finder.find_divergence(loss, smoothed)
    s = finder.suggest(lrs, smoothed, div)
    assert s["divergence"] == pytest.approx(lrs[div] / 2)
    # The minimum lies just before the blow-up at 1.0 (the sigmoid keeps falling).
    assert 0.05 <= s["minimum"] * 10 <= 1.0
    assert s["balanced"] == pytest.approx(math.sqrt(s["valley"] * s["divergence"]))
    # Valley: half way down the longest decreasing stretch, so inside the descent.
    assert 1e-4 < s["valley"] < 0.5


def test_knee_is_the_75_percent_descent_point_in_closed_form():
    # loss = 0.5 + 1.8 / (1 + (lr / c)**2): the point where 75% of the descent
    # from the first kept point (10% in) to the minimum is done, solved exactly.
    lrs, loss = sigmoid_curve()
    kept = loss[int(0.1 * len(loss)) : len(loss) - 5]
    target = kept.min() + 0.25 * (kept[0] - kept.min())
    exact = 1e-2 * math.sqrt(1.8 / (target - 0.5) - 1)
    got = finder.suggest(lrs, loss, None)["knee"]
    step = lrs[1] / lrs[0]
    assert exact <= got <= exact * step  # the first sweep point past the target
    assert 1e-2 < got < 2e-2  # the 75% point lies just past the steepest descent


def test_knee_moves_a_quarter_of_the_way_to_divergence():
    lrs, loss = sigmoid_curve(blowup=1.0)
    div = finder.find_divergence(loss, loss)
    s = finder.suggest(lrs, loss, div)
    alone = finder.suggest(lrs[: div + 1], loss[: div + 1], None)["knee"]  # same cut
    assert s["knee"] == pytest.approx(alone**0.75 * s["divergence"] ** 0.25)
    assert alone < s["knee"] < s["divergence"]


def test_knee_without_a_descent_is_the_first_kept_lr():
    lrs = np.geomspace(1e-5, 1, 100)
    rising = np.linspace(1.0, 2.0, 100)  # the loss never falls: no knee past the start
    assert finder.suggest(lrs, rising, None)["knee"] == pytest.approx(lrs[10])


def test_suggestions_ignore_everything_after_the_first_nan():
    lrs, loss = sigmoid_curve(n=200)
    cut = np.concatenate([loss[:100], [np.nan] * 100])
    s_cut = finder.suggest(lrs, cut, None)
    s_ref = finder.suggest(lrs[:100], loss[:100], None)
    assert s_cut == s_ref
    assert s_cut["minimum"] * 10 <= lrs[99]


def test_suggestions_skip_start_and_end():
    lrs = np.geomspace(1e-5, 1, 100)
    loss = np.linspace(2.0, 1.0, 100)
    loss[0:5] = 0.1  # inside the skipped first 10%: ignored
    loss[-3:] = 0.05  # inside the skipped last 5 points: ignored
    s = finder.suggest(lrs, loss, None)
    assert s["minimum"] == pytest.approx(lrs[94] / 10)
    assert s["divergence"] is None and s["balanced"] is None


def test_too_short_a_curve_gives_none():
    s = finder.suggest(np.geomspace(1e-3, 1, 6), np.ones(6), None)
    assert all(v is None for v in s.values())
    assert finder.pick(s, "balanced") is None


def test_pick_falls_back_to_valley():
    assert (
        finder.pick({"balanced": None, "valley": 0.1, "minimum": 0.2}, "balanced")
        == 0.1
    )


# ------------------------------------------------------------------ the sweep itself


@pytest.fixture(scope="module")
def problem():
    x, y = make_images(1024, 0)
    y = y.astype(np.int32)
    apply, params = lrjax.mlp(784, 10, (32,), key=jax.random.key(1))
    return apply, params, x, y


def test_scan_equals_a_python_loop_of_the_same_step(problem):
    apply, params, x, y = problem
    key = jax.random.key(7)
    r = lrjax.lr_range_test(
        apply,
        params,
        optax.sgd,
        x,
        y,
        key=key,
        batch_size=16,
        num_steps=60,
        init_value=1e-3,
        end_value=1.0,
        chunks=4,
        stop_on_divergence=False,
    )
    sched = lrjax.exponential_sweep(1e-3, 1.0, 60)
    tx = make_optimizer(optax.sgd, sched)
    step = jax.jit(make_step(apply, tx))
    state = init_state(params, tx)
    idx = batch_indices(jax.random.fold_in(key, 0), len(y), 16, 60)
    data = (jnp.asarray(x), jnp.asarray(y))
    losses, lrs = [], []
    for t in range(60):
        state, m = step(state, idx[t], data)
        losses.append(float(m["loss"]))
        lrs.append(float(m["lr"]))
    assert r.steps_run == 60
    np.testing.assert_allclose(r.losses, losses, rtol=2e-5, atol=1e-6)
    # The applied lr is the schedule's value at every step. XLA may fuse the
    # exponent t * log(end/init) / (n-1) differently inside the scan: its float32
    # rounding (|log(1e3)| * eps absolute) becomes a relative error of exp(...).
    rtol = (math.log(1e3) + 1) * np.finfo(np.float32).eps
    np.testing.assert_allclose(r.lrs, lrs, rtol=rtol, atol=0)
    np.testing.assert_allclose(r.lrs, sched(np.arange(60)), rtol=rtol, atol=0)


def test_caller_params_are_untouched(problem):
    apply, params, x, y = problem
    before = jax.tree.map(np.array, params)
    r = lrjax.lr_range_test(
        apply,
        params,
        optax.adam,
        x,
        y,
        key=jax.random.key(0),
        num_steps=40,
        init_value=1e-4,
        end_value=1.0,
        chunks=3,
    )
    assert r.steps_run >= 1
    after = jax.tree.map(np.array, params)  # raises if a buffer was donated
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_stops_early_on_divergence(problem):
    apply, params, x, y = problem
    y = np.random.default_rng(0).permutation(y)  # unlearnable: the loss must blow up
    r = lrjax.lr_range_test(
        apply,
        params,
        optax.sgd,
        x,
        y,
        key=jax.random.key(0),
        batch_size=32,
        num_steps=400,
        init_value=1e-3,
        end_value=1e4,
        chunks=20,
    )
    assert r.diverged_at_lr is not None
    assert r.steps_run < 400
    i = r.diverged_at_step[0]
    assert r.lrs[i] == pytest.approx(r.diverged_at_lr)
    assert r.suggestions["divergence"] == pytest.approx(r.diverged_at_lr / 2)
    assert r.suggested_lr == r.suggestions["knee"]


def test_linear_mode_sweeps_arithmetically(problem):
    apply, params, x, y = problem
    r = lrjax.lr_range_test(
        apply,
        params,
        optax.sgd,
        x,
        y,
        key=jax.random.key(0),
        mode="linear",
        num_steps=20,
        init_value=0.01,
        end_value=0.2,
        stop_on_divergence=False,
    )
    np.testing.assert_allclose(r.lrs, np.linspace(0.01, 0.2, 20), rtol=1e-6)


def test_seeds_are_vmapped_and_each_equals_its_own_run(problem):
    apply, _, x, y = problem

    def init(k):
        return lrjax.mlp(784, 10, (32,), key=k)[1]

    kw = dict(
        key=jax.random.key(3),
        num_steps=50,
        init_value=1e-3,
        end_value=3.0,
        stop_on_divergence=False,
        chunks=2,
    )
    many = lrjax.lr_range_test(apply, init, optax.sgd, x, y, seeds=3, **kw)
    one = lrjax.lr_range_test(apply, init, optax.sgd, x, y, seeds=1, **kw)
    assert many.losses.shape == (3, 50) and one.losses.shape == (50,)
    np.testing.assert_allclose(many.losses[0], one.losses, rtol=1e-4, atol=1e-5)
    assert not np.allclose(many.losses[0], many.losses[1])  # different seeds
    sp = many.spread
    assert len(sp["per_seed"]) == 3
    valid = [v for v in sp["per_seed"] if v is not None]
    assert sp["min"] == min(valid) and sp["max"] == max(valid)
    assert set(sp["per_method"]) == set(finder.METHODS)


def test_seed_axis_sharded_over_host_devices_matches_one_device(tmp_path):
    """Two XLA host devices (a subprocess: the flag must precede JAX's start)."""
    script = textwrap.dedent(
        """
        import jax, numpy as np, optax, sys
        sys.path.insert(0, %r)
        from conftest import make_images
        import lrjax
        x, y = make_images(512, 0)
        init = lambda k: lrjax.mlp(784, 10, (16,), key=k)[1]
        apply = lrjax.mlp(784, 10, (16,), key=jax.random.key(0))[0]
        r = lrjax.lr_range_test(apply, init, optax.sgd, x, y.astype(np.int32),
            key=jax.random.key(0), seeds=2, num_steps=30, stop_on_divergence=False)
        print(r.device)
        np.save(sys.argv[1], r.losses)
        """
    ) % os.path.dirname(__file__)
    outs = {}
    for n in (1, 2):
        env = dict(
            os.environ,
            XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
            JAX_PLATFORMS="cpu",
        )
        out = tmp_path / f"{n}.npy"
        proc = subprocess.run(
            [sys.executable, "-c", script, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert f"x{n}" in proc.stdout
        outs[n] = np.load(out)
    np.testing.assert_allclose(outs[1], outs[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(init_value=0.0), "learning rates must be > 0"),
        (dict(init_value=1.0, end_value=0.1), "init_value must be < end_value"),
        (dict(num_steps=1), "num_steps must be an integer >= 2, got 1"),
        (dict(seeds=0), "seeds must be an integer >= 1, got 0"),
        (dict(mode="cosine"), "mode must be one of"),
        (dict(method="best"), "method must be one of"),
        (dict(batch_size=5000), "batch_size must be between 1 and"),
        (dict(smooth_beta=1.0), "smoothing beta must be in"),
        (dict(diverge_threshold=1.0), "diverge threshold must be > 1"),
    ],
)
def test_bad_arguments(problem, kwargs, match):
    apply, params, x, y = problem
    with pytest.raises(ValueError, match=match):
        lrjax.lr_range_test(
            apply, params, optax.sgd, x, y, key=jax.random.key(0), **kwargs
        )


def test_result_json_has_no_nan(problem):
    apply, params, x, y = problem
    r = lrjax.lr_range_test(
        apply,
        params,
        optax.sgd,
        x,
        y,
        key=jax.random.key(0),
        num_steps=100,
        init_value=1e-2,
        end_value=1e6,
        chunks=1,
        stop_on_divergence=False,
    )
    doc = r.to_json()
    import json

    text = json.dumps(doc, allow_nan=False)  # raises on NaN/inf
    assert '"suggested_lr"' in text
