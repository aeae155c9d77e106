"""The range test's host-side rules (lrjax.suggestions) on known curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrjax._src import suggestions

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
    np.testing.assert_allclose(suggestions.smooth(losses, beta), want, rtol=1e-12)
    assert suggestions.smooth(losses, 0.0).tolist() == losses.tolist()


def test_smooth_treats_leading_axes_as_independent_rows():
    rng = np.random.default_rng(1)
    rows = rng.uniform(0.5, 2.5, (3, 50))
    rows[1, 20] = np.nan
    both = suggestions.smooth(rows)
    for k in range(3):
        np.testing.assert_array_equal(both[k], suggestions.smooth(rows[k]))
    assert np.isnan(both[1, 20:]).all() and np.isfinite(both[[0, 2]]).all()


def test_smooth_is_nan_after_the_first_non_finite_loss():
    out = suggestions.smooth(np.array([1.0, 2.0, np.inf, 1.0]))
    assert np.isfinite(out[:2]).all() and np.isnan(out[2:]).all()


# ---------------------------------------------------------------------- divergence


def test_divergence_by_threshold():
    s = np.array([2.0, 1.0, 0.5, 0.6, 1.0, 2.01, 3.0])
    assert suggestions.find_divergence(s, s, threshold=4.0, rebound=None) == 5
    assert suggestions.find_divergence(s, s, threshold=6.5, rebound=None) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_divergence_at_first_non_finite_loss(bad):
    raw = np.array([2.0, 1.9, 1.8, bad, 1.0])
    assert suggestions.find_divergence(raw, suggestions.smooth(raw)) == 3


def test_divergence_by_rebound_onto_a_plateau():
    # Best 0.6: 4 x best = 2.4 is never reached by the ln(10) plateau, the rebound
    # rule fires once the loss has climbed back half way (0.6 + 0.5 * 1.7 = 1.45).
    s = np.concatenate([np.linspace(2.3, 0.6, 50), np.linspace(0.6, 2.3, 30)])
    s = np.concatenate([s, np.full(40, 2.3)])
    assert suggestions.find_divergence(s, s, rebound=None) is None
    i = suggestions.find_divergence(s, s)
    assert s[i] >= 1.45 and s[i - 1] < 1.45


def test_no_divergence_on_a_falling_curve_or_without_real_descent():
    s = np.linspace(2.3, 0.3, 100)
    assert suggestions.find_divergence(s, s) is None
    flat = 2.3 + 0.01 * np.sin(np.arange(100))  # noise, no descent: no rebound
    assert suggestions.find_divergence(flat, flat) is None


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
    assert suggestions._valley_index(losses) == fastai_valley(list(losses))


def sigmoid_curve(n=400, center=1e-2, blowup=None):
    lrs = np.geomspace(1e-5, 10, n)
    x = np.log(lrs / center)
    loss = 0.5 + 1.8 / (1 + np.exp(2 * x))  # steepest descent exactly at center
    if blowup is not None:
        loss = loss + np.where(lrs > blowup, 50 * (lrs - blowup), 0.0)
    return lrs, loss


def test_steep_finds_the_steepest_point_on_a_log_axis():
    lrs, loss = sigmoid_curve()
    got = suggestions.suggest(lrs, loss, None)["steep"]
    step = lrs[1] / lrs[0]
    assert 1e-2 / step <= got <= 1e-2 * step


def test_minimum_divergence_and_balanced_on_a_known_curve():
    lrs, loss = sigmoid_curve(blowup=1.0)
    smoothed = loss
    div = suggestions.find_divergence(loss, smoothed)
    s = suggestions.suggest(lrs, smoothed, div)
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
    got = suggestions.suggest(lrs, loss, None)["knee"]
    step = lrs[1] / lrs[0]
    assert exact <= got <= exact * step  # the first sweep point past the target
    assert 1e-2 < got < 2e-2  # the 75% point lies just past the steepest descent


def test_knee_moves_a_quarter_of_the_way_to_divergence():
    lrs, loss = sigmoid_curve(blowup=1.0)
    div = suggestions.find_divergence(loss, loss)
    s = suggestions.suggest(lrs, loss, div)
    # the same cut
    alone = suggestions.suggest(lrs[: div + 1], loss[: div + 1], None)["knee"]
    assert s["knee"] == pytest.approx(alone**0.75 * s["divergence"] ** 0.25)
    assert alone < s["knee"] < s["divergence"]


def test_knee_without_a_descent_is_the_first_kept_lr():
    lrs = np.geomspace(1e-5, 1, 100)
    rising = np.linspace(1.0, 2.0, 100)  # the loss never falls: no knee past the start
    assert suggestions.suggest(lrs, rising, None)["knee"] == pytest.approx(lrs[10])


def test_suggestions_ignore_everything_after_the_first_nan():
    lrs, loss = sigmoid_curve(n=200)
    cut = np.concatenate([loss[:100], [np.nan] * 100])
    s_cut = suggestions.suggest(lrs, cut, None)
    s_ref = suggestions.suggest(lrs[:100], loss[:100], None)
    assert s_cut == s_ref
    assert s_cut["minimum"] * 10 <= lrs[99]


def test_suggestions_skip_start_and_end():
    lrs = np.geomspace(1e-5, 1, 100)
    loss = np.linspace(2.0, 1.0, 100)
    loss[0:5] = 0.1  # inside the skipped first 10%: ignored
    loss[-3:] = 0.05  # inside the skipped last 5 points: ignored
    s = suggestions.suggest(lrs, loss, None)
    assert s["minimum"] == pytest.approx(lrs[94] / 10)
    assert s["divergence"] is None and s["balanced"] is None


def test_too_short_a_curve_gives_none():
    s = suggestions.suggest(np.geomspace(1e-3, 1, 6), np.ones(6), None)
    assert all(v is None for v in s.values())
    assert suggestions.pick(s, "balanced") is None


def test_pick_falls_back_to_valley():
    assert (
        suggestions.pick({"balanced": None, "valley": 0.1, "minimum": 0.2}, "balanced")
        == 0.1
    )


# -------------------------------------------------- incremental = whole-curve rules


def test_smoother_fed_in_chunks_equals_smooth():
    rng = np.random.default_rng(3)
    rows = rng.uniform(0.5, 2.5, (2, 97))
    rows[1, 40] = np.inf
    sm = suggestions.Smoother(2, 0.9)
    parts = [sm.push(rows[:, a:b]) for a, b in ((0, 10), (10, 11), (11, 97))]
    np.testing.assert_allclose(
        np.concatenate(parts, axis=1), suggestions.smooth(rows, 0.9), rtol=1e-12
    )


@pytest.mark.parametrize("rebound", [0.5, None])
@pytest.mark.parametrize("seed", range(6))
def test_divergence_tracker_equals_find_divergence(seed, rebound):
    rng = np.random.default_rng(seed)
    n = 120
    base = np.concatenate([np.linspace(2.3, 0.4, 60), np.linspace(0.4, 3.0, 60)])
    raw = base * rng.uniform(0.7, 1.3, n)
    if seed == 5:
        raw[70] = np.nan
    smoothed = suggestions.smooth(raw, 0.9)
    want = suggestions.find_divergence(raw, smoothed, 4.0, rebound)
    t = suggestions.DivergenceTracker(4.0, rebound)
    got = None
    for a in range(0, n, 17):
        got = t.push(raw[a : a + 17], smoothed[a : a + 17])
    assert got == want
