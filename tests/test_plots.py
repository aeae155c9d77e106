"""The plot helpers on curves that end in NaN: no warning, the right band.

After a seed diverges its smoothed loss is NaN; with several seeds the last steps
are NaN for every seed (``lrjax-find --seeds 2`` used to print numpy's
"All-NaN slice encountered" there). The band and median are checked against a
per-step Python reference over the seeds' non-NaN values. plot_learning_curves is
checked on each form of input it takes.
"""

from __future__ import annotations

import statistics
import types

import numpy as np
import pytest
from matplotlib.figure import Figure

from lrjax._src.plots import plot_range_test, plot_sweep

NAN = float("nan")


def _result(smoothed: np.ndarray, sweep=None):
    steps = smoothed.shape[-1]
    return types.SimpleNamespace(
        lrs=np.geomspace(1e-4, 1.0, steps),
        losses=smoothed,
        smoothed_losses=smoothed,
        suggestions={"knee": 1e-2, "steep": None},
        method="knee",
        diverged_at_lr=0.5,
        steps_run=steps,
        sweep=sweep,
    )


def _reference(rows: list[list[float]]) -> list[tuple[float, float, float]]:
    """(min, median, max) over the seeds at each step; NaN where all are NaN."""
    out = []
    for column in zip(*rows, strict=True):
        seen = [v for v in column if v == v]
        out.append(
            (min(seen), statistics.median(seen), max(seen)) if seen else (NAN,) * 3
        )
    return out


def _ydata(ax, label: str) -> np.ndarray:
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return np.asarray(line.get_ydata(), np.float64)


def test_seeds_diverged_at_different_steps_draw_without_a_warning():
    # seed 1 diverges at step 3, seed 0 at step 5; steps 5..6 are NaN for both
    rows = [
        [2.0, 1.5, 1.0, 0.8, 0.9, NAN, NAN],
        [2.2, 1.4, 1.1, NAN, NAN, NAN, NAN],
    ]
    ax = Figure().subplots()
    # pytest's filterwarnings = error turns numpy's RuntimeWarning into a failure
    assert plot_range_test(_result(np.array(rows)), ax) is ax
    want = np.array(_reference(rows)).T  # [3, steps]
    np.testing.assert_array_equal(_ydata(ax, "smoothed (median)"), want[1])
    (band,) = ax.collections
    lo_hi = band.get_paths()[0].vertices[:, 1]  # the band's outline: lo, then hi
    finite = np.isfinite(want[0])
    assert set(np.round(lo_hi, 9)) >= set(np.round(want[0][finite], 9))
    assert set(np.round(lo_hi, 9)) >= set(np.round(want[2][finite], 9))


def test_a_sweep_whose_values_end_in_nan_draws_each_median():
    curves = np.array(
        [
            [[1.0, 0.5, NAN], [1.2, NAN, NAN]],  # value 0: seeds 0 and 1
            [[0.9, 0.7, 0.6], [1.1, 0.3, NAN]],  # value 1
        ]
    )
    sweep = types.SimpleNamespace(
        name="weight_decay",
        values=[0.0, 1e-4],
        smoothed_losses=curves,
        suggested_lr=[None, 1e-2],
        best=1,
    )
    ax = plot_sweep(_result(curves[0], sweep), Figure().subplots())
    for value, rows in zip(sweep.values, curves.tolist(), strict=True):
        label = f"weight_decay={value:g}" + (": lr 0.01" if value else "")
        label += " (recommended)" if value else ""
        want = [m for _, m, _ in _reference(rows)]
        np.testing.assert_array_equal(_ydata(ax, label), want)


def test_one_seed_keeps_its_axis_and_draws_its_own_curves():
    """``[seeds=1, steps]`` and a sweep's ``[values, 1, steps]``: the curve drawn is
    the seed's row itself."""
    rows = np.array([[2.0, 1.5, 1.0, NAN]])
    ax = plot_range_test(_result(rows), Figure().subplots())
    np.testing.assert_array_equal(_ydata(ax, "smoothed loss"), rows[0])
    curves = np.array([[[1.0, 0.5, NAN]], [[0.9, 0.7, 0.6]]])  # [values, 1, steps]
    sweep = types.SimpleNamespace(
        name="momentum", values=[0.0, 0.9], smoothed_losses=curves,
        suggested_lr=[None, None], best=None,
    )  # fmt: skip
    ax = plot_sweep(_result(curves[0], sweep), Figure().subplots())
    for value, curve in zip(sweep.values, curves, strict=True):
        np.testing.assert_array_equal(_ydata(ax, f"momentum={value:g}"), curve[0])


def test_plot_sweep_names_what_it_needs():
    result = _result(np.ones((1, 4)))
    with pytest.raises(ValueError, match="sweep_over="):
        plot_sweep(result, Figure().subplots())


def _history() -> list[dict[str, float]]:
    """Three epochs; the last one took a snapshot (``ensemble_val_accuracy``)."""
    rows = []
    for e in (1, 2, 3):
        rows.append(
            {"epoch": e, "lr_min": 0.01 * e, "lr_max": 0.1 * e,
             "train_loss": 1.0 / e, "val_loss": 1.2 / e,
             "train_accuracy": 0.5 + 0.1 * e, "val_accuracy": 0.4 + 0.1 * e}
        )  # fmt: skip
    rows[-1]["ensemble_val_accuracy"] = 0.75
    return rows


def test_plot_learning_curves_takes_a_history_or_metrics_and_one_or_two_axes():
    from lrjax._src.plots import plot_learning_curves

    history = _history()
    loss_ax, acc_ax = Figure().subplots(1, 2)  # an ndarray of two Axes
    assert plot_learning_curves({"history": history}, (loss_ax, acc_ax)) is acc_ax
    ys = [list(line.get_ydata()) for line in loss_ax.get_lines()]
    assert ys == [[h["train_loss"] for h in history], [h["val_loss"] for h in history]]
    acc_lines = {line.get_label(): line for line in acc_ax.get_lines()}
    snap = acc_lines["ensemble of snapshots so far"]
    assert list(snap.get_xdata()) == [3] and list(snap.get_ydata()) == [0.75]

    ax = Figure().subplots()
    assert plot_learning_curves(history, ax) is ax
    labels = [line.get_label() for line in ax.get_lines()]
    assert "train acc" in labels and "train loss" not in labels
