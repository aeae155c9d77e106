"""Results in a notebook: a short repr (no arrays), ``plot()`` and a rich display.

Each result is checked twice: as the library returns it from a tiny real run, and
built by hand at a realistic size (2 seeds x 500 steps, a sweep of 4 values, a
long warning) whose arrays hold a sentinel value that must never reach the repr.
"""

from __future__ import annotations

import base64
import dataclasses
import re

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import lrjax
from lrjax._src.range_test import SweepResult
from lrjax._src.results import REPR_LIMIT, short_repr

SENTINEL = 123.456  # every array element of the hand-built results


def _filled(*shape: int) -> np.ndarray:
    return np.full(shape, SENTINEL, np.float32)


def assert_short(text: str, result) -> None:
    """Bounded, one result's name first, and no array's data in it."""
    assert len(text) <= REPR_LIMIT, (len(text), text)
    assert text.startswith(type(result).__name__ + "(")
    assert "array(" not in text and "[[" not in text
    assert "123.4" not in text, text


def _tiny_data():
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32)


LINEAR_LOSS = lrjax.classification_loss(lambda p, x: x @ p)


@pytest.fixture(scope="module")
def range_result() -> lrjax.RangeTestResult:
    return lrjax.lr_range_test(
        jnp.zeros((3, 2)), optax.sgd, _tiny_data(), key=jax.random.key(0),
        loss_fn=LINEAR_LOSS, sweep=lrjax.Sweep(num_steps=30, batch_size=16),
    )  # fmt: skip


@pytest.fixture(scope="module")
def grid_result() -> lrjax.GridResult:
    data = _tiny_data()
    return lrjax.lr_grid(
        jnp.zeros((3, 2)), optax.sgd, data, data, lrs=[0.01, 0.1, 1.0],
        key=jax.random.key(0), loss_fn=LINEAR_LOSS,
        config=lrjax.GridConfig(batch_size=16), population=lrjax.Population(seeds=2),
    )  # fmt: skip


def big_range_result() -> lrjax.RangeTestResult:
    seeds, steps, values = 2, 500, 4
    methods = dict.fromkeys(lrjax.METHODS, 0.0123)
    sweep = SweepResult(
        name="weight_decay", values=[0.0, 1e-4, 1e-3, 1e-2],
        losses=_filled(values, seeds, steps),
        smoothed_losses=_filled(values, seeds, steps),
        metrics={"accuracy": _filled(values, seeds, steps)},
        suggestions=[methods] * values, suggested_lr=[0.0123] * values,
        diverged_at_lr=[0.9] * values, diverged_at_step=[[450, 460]] * values,
        min_loss=[0.5] * values, spread=[None] * values, best=1, value=1e-4,
        lr=0.0123, tolerance=0.01,
    )  # fmt: skip
    return lrjax.RangeTestResult(
        lrs=np.geomspace(1e-5, 10, steps), losses=_filled(seeds, steps),
        smoothed_losses=_filled(seeds, steps),
        metrics={"accuracy": _filled(seeds, steps), "top5": _filled(seeds, steps)},
        diverged_at_lr=0.987654, diverged_at_step=[450, 460], suggestions=methods,
        suggested_lr=0.0123, method="knee", seeds=seeds, spread=None,
        steps_run=steps, stop_reason="diverged",
        timings=lrjax.Timings("lr_range_test", loop="scan"), device="cpu x1 (cpu)",
        config=lrjax.RangeTestSettings(
            driver="lr_range_test", optimizer="x" * 1000, mode="exponential",
            init_value=1e-5, end_value=10.0, num_steps=steps, batch_size=32,
            smooth_beta=0.98, diverge_threshold=4.0, rebound=0.5, data="arrays",
        ),
        sweep=sweep,
        warning="the loss was not finite before any descent: " + "check " * 40,
    )  # fmt: skip


def test_short_repr_cuts_what_would_not_fit():
    text = short_repr("R", {f"field{i}": "x" * 50 for i in range(20)})
    assert len(text) == REPR_LIMIT and text.endswith("...)")
    cut = "R(xs=[0, 1, 2, 3, 4, 5, +4 more])"
    assert short_repr("R", {"xs": list(range(10))}) == cut
    assert short_repr("R", {"model": lrjax.mlp}) == "R(model=function)"


def test_range_test_repr_of_a_real_run(range_result):
    r = range_result
    text = repr(r)
    assert_short(text, r)
    assert f"suggested_lr={r.suggested_lr:.4g}" in text
    assert f"method='{r.method}'" in text
    assert f"steps_run={r.steps_run}" in text
    assert f"stop_reason={r.stop_reason!r}" in text
    assert f"losses={r.losses.dtype}[1,{r.steps_run}]" in text  # [seeds, steps_run]
    assert "warning" not in text  # only shown when there is one


def test_range_test_repr_of_a_big_result_with_a_sweep_and_a_warning():
    r = big_range_result()
    assert len(str(dataclasses.asdict(r))) > 10 * REPR_LIMIT  # what it replaces
    text = repr(r)
    assert_short(text, r)
    for part in (
        "suggested_lr=0.0123", "method='knee'", "diverged_at_lr=0.9877",
        "stop_reason='diverged'", "steps_run=500", "seeds=2", "lrs=float64[500]",
        "losses=float32[2,500]", "metrics=['accuracy', 'top5']",
        "sweep='weight_decay: 4 values, best 0.0001 at lr 0.0123'",
        "warning='the loss was not finite before any descent: check check c...')",
    ):  # fmt: skip
        assert part in text, (part, text)
    sweep_text = repr(r.sweep)
    assert_short(sweep_text, r.sweep)
    assert "losses=float32[4,2,500]" in sweep_text and "best=1" in sweep_text


def test_grid_repr(grid_result):
    g = grid_result
    text = repr(g)
    assert_short(text, g)
    for part in (
        f"best_lr={g.best_lr:.4g}", f"best_accuracy={g.best_accuracy:.4g}",
        "lrs=float64[3]" if g.lrs.dtype == np.float64 else f"lrs={g.lrs.dtype}[3]",
        "lr_range=(0.01, 1)", "seeds=2", "epochs=1",
        f"val_accuracy={g.val_accuracy.dtype}[3,2,1]",
    ):  # fmt: skip
        assert part in text, (part, text)
    hand = dataclasses.replace(
        g, val_accuracy=_filled(3, 2, 1), val_loss=_filled(3, 2, 1),
        train_loss=_filled(3, 2, 1), applied_lr=_filled(3, 400),
        config=dataclasses.replace(g.config, family="one_cycle"),
    )  # fmt: skip
    assert_short(repr(hand), hand)
    assert repr(hand).startswith("GridResult(family='one_cycle', ")


def _line_xs(ax: Axes) -> list[np.ndarray]:
    return [np.asarray(line.get_xdata(), np.float64) for line in ax.get_lines()]


def test_range_test_plot_draws_the_curve_on_the_given_axes(range_result):
    ax = Figure().subplots()
    assert range_result.plot(ax) is ax
    xs = _line_xs(ax)
    assert any(np.array_equal(x, range_result.lrs) for x in xs)
    assert ax.get_xscale() == "log"


def test_range_test_plot_makes_its_own_axes():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = big_range_result()
    r.sweep = None
    ax = r.plot()
    try:
        assert isinstance(ax, Axes)
        assert any(np.array_equal(x, r.lrs) for x in _line_xs(ax))
    finally:
        plt.close(ax.figure)


def test_grid_plot(grid_result):
    ax = Figure().subplots()
    assert grid_result.plot(ax, suggestions={"knee": 0.05}) is ax
    means = grid_result.val_accuracy[:, :, -1].mean(axis=1)
    drawn = [np.asarray(line.get_ydata(), np.float64) for line in ax.get_lines()]
    assert any(np.allclose(y, means) for y in drawn if len(y) == len(means))
    assert any(np.array_equal(x, [0.05, 0.05]) for x in _line_xs(ax))


@pytest.mark.parametrize("which", ["range", "grid"])
def test_notebook_display_is_the_repr_and_a_png(which, range_result, grid_result):
    import html

    result = range_result if which == "range" else grid_result
    page = result._repr_html_()
    assert f"<pre>{html.escape(repr(result))}</pre>" in page
    png = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert png is not None
    assert base64.b64decode(png.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    assert len(page) < 150_000  # a small inline image, not a full-size figure


def test_fit_result_repr_plot_and_display(tmp_path):
    """FitResult: a short line with the key numbers and the model's type only
    (never the NNX graph), plot() draws the history, and the notebook display."""
    from flax import nnx

    x = np.random.default_rng(0).normal(size=(128, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    config = lrjax.FitConfig(epochs=2, batch_size=16, learning_rate=0.1,
                             average_start=4)  # fmt: skip
    r = lrjax.fit(model, optax.sgd, (x, y), key=jax.random.key(0), config=config,
                  val_data=(x, y), test_data=(x, y))  # fmt: skip
    text = repr(r)
    assert_short(text, r)
    assert "model=Linear" in text and "kernel" not in text and "Param" not in text
    assert f"epochs_run={r.epochs_run}" in text and "average_count=" in text
    assert f"val_accuracy={r.history[-1]['val_accuracy']:.4g}" in text
    ax = r.plot()
    assert list(ax.lines[0].get_xdata()) == [h["epoch"] for h in r.history]
    html = r._repr_html_()
    assert html.startswith("<pre>FitResult(") and "data:image/png;base64," in html
