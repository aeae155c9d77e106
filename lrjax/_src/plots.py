"""Matplotlib helpers: each takes an ``Axes``, draws, and returns it.

They never call ``plt.show()`` and never pick a backend; the command lines use Agg.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from lrjax._src.lr_grid import GridResult
    from lrjax._src.range_test import RangeTestResult

_METHOD_STYLE = {
    "steep": ("tab:orange", "v"),
    "valley": ("tab:green", "o"),
    "minimum": ("tab:purple", "s"),
    "divergence": ("tab:red", "D"),
    "balanced": ("black", "*"),
    "knee": ("tab:brown", "P"),
}


def _over_seeds(curves: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Percentiles ``qs`` of ``float[seeds, steps]`` over the seeds, ignoring NaN.

    Returns ``float[len(qs), steps]``, NaN at a step where every seed is NaN (after
    every seed has diverged): numpy's nan-functions warn "All-NaN slice" there.
    """
    curves = np.asarray(curves, np.float64)
    out = np.full((len(qs), curves.shape[1]), np.nan)
    seen = ~np.isnan(curves).all(axis=0)
    if seen.any():
        with np.errstate(invalid="ignore"):  # inf - inf between two infinite seeds
            out[:, seen] = np.nanpercentile(curves[:, seen], qs, axis=0)
    return out


def plot_range_test(result: RangeTestResult, ax: Axes | None = None) -> Axes:
    """Loss vs lr on a log axis: raw (faint), smoothed, suggestions, divergence.

    With several seeds the smoothed curves' min-max band is shaded around their
    median, and the suggestions are the medians over seeds. A result with a
    ``sweep`` (``lr_range_test(..., population=Population(sweep_over=...))``) is
    drawn by
    :func:`plot_sweep`.

    A range test of least squares with noisy targets (``Figure().subplots()``
    draws without pyplot; ``plot_range_test(result)`` opens a pyplot figure):

    >>> import jax, optax
    >>> from matplotlib.figure import Figure
    >>> from lrjax import Sweep, lr_range_test
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(256, 2)).astype(np.float32)
    >>> y = (x @ np.array([1.0, -2.0]) + rng.normal(size=256)).astype(np.float32)
    >>> def loss_fn(w, batch):
    ...     return jax.numpy.mean((batch[0] @ w - batch[1]) ** 2)
    >>> result = lr_range_test(jax.numpy.zeros(2), optax.sgd, (x, y),
    ...                        key=jax.random.key(0), loss_fn=loss_fn,
    ...                        sweep=Sweep(num_steps=100, init_value=1e-3,
    ...                                    end_value=10.0, batch_size=64))
    >>> ax = plot_range_test(result, Figure().subplots())
    >>> ax.get_xscale(), ax.get_title() == f"LR range test ({result.steps_run} steps)"
    ('log', True)
    >>> curve = next(ln for ln in ax.get_lines() if ln.get_label() == "smoothed loss")
    >>> bool(np.array_equal(curve.get_ydata(), result.smoothed_losses[0]))
    True
    >>> [ln.get_label().split(":")[0] for ln in ax.get_lines()][2:]  # the markers
    ['steep', 'valley', 'minimum', 'divergence', 'balanced', 'knee', 'diverged at 1.71']
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    if getattr(result, "sweep", None) is not None:
        return plot_sweep(result, ax)
    lrs = np.asarray(result.lrs)
    raw = np.asarray(result.losses)  # [seeds, steps]
    sm = np.asarray(result.smoothed_losses)
    for row in raw:
        ax.plot(lrs, row, color="tab:blue", alpha=0.15, lw=0.6)
    if len(sm) > 1:
        lo, mid, hi = _over_seeds(sm, (0, 50, 100))
        ax.fill_between(
            lrs,
            lo,
            hi,
            color="tab:blue",
            alpha=0.25,
            label=f"smoothed, {len(sm)} seeds (min-max)",
        )
        curve = mid
        ax.plot(lrs, curve, color="tab:blue", lw=1.6, label="smoothed (median)")
    else:
        curve = sm[0]
        ax.plot(lrs, curve, color="tab:blue", lw=1.6, label="smoothed loss")
    finite = curve[np.isfinite(curve)]
    if len(finite):
        top = min(np.nanmax(finite), 4 * np.nanmin(finite) + 0.5)
        ax.set_ylim(max(0.0, np.nanmin(finite) - 0.1), top + 0.1)
    for m, lr in result.suggestions.items():
        if lr is None:
            continue
        color, marker = _METHOD_STYLE.get(m, ("gray", "x"))
        i = int(np.clip(np.searchsorted(lrs, lr), 0, len(lrs) - 1))
        chosen = " (suggested)" if m == result.method else ""
        ax.plot(
            [lr],
            [curve[i]],
            marker=marker,
            color=color,
            ls="none",
            ms=9,
            label=f"{m}: {lr:.3g}{chosen}",
        )
    if result.diverged_at_lr is not None:
        ax.axvline(
            result.diverged_at_lr,
            color="tab:red",
            ls="--",
            lw=1,
            label=f"diverged at {result.diverged_at_lr:.3g}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test ({result.steps_run} steps)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return ax


def plot_sweep(result: RangeTestResult, ax: Axes | None = None) -> Axes:
    """One smoothed loss curve per value of a swept hyperparameter, vs lr.

    Each value's curve (the median over seeds when several) carries a marker at
    its suggested lr; the recommended value's curve is drawn thicker and its
    suggestion starred.

    Raises:
      ValueError: ``result`` has no sweep (it was not run with
        ``Population(sweep_over=...)``).
    """
    import matplotlib.pyplot as plt

    sw = result.sweep
    if sw is None:
        raise ValueError(
            "plot_sweep draws a range test run with Population(sweep_over=...); "
            "this one has no sweep (plot_range_test draws it)"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    lrs = np.asarray(result.lrs)
    sm = np.asarray(sw.smoothed_losses, np.float64)  # [values, seeds, steps]
    if sm.shape[1] == 1:
        sm = sm[:, 0]
    else:  # the median over seeds
        sm = np.stack([_over_seeds(v, (50,))[0] for v in sm])
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(sw.values)))
    lows, highs = [], []
    for i, (value, curve) in enumerate(zip(sw.values, sm, strict=True)):
        best = i == sw.best
        label = f"{sw.name}={value:g}"
        lr = sw.suggested_lr[i]
        if lr is not None:
            label += f": lr {lr:.3g}"
        ax.plot(
            lrs,
            curve,
            color=colors[i],
            lw=2.4 if best else 1.2,
            label=label + (" (recommended)" if best else ""),
        )
        finite = curve[np.isfinite(curve)]
        if len(finite):
            lows.append(finite.min())
            highs.append(min(finite.max(), 4 * finite.min() + 0.5))
        if lr is not None:
            j = int(np.clip(np.searchsorted(lrs, lr), 0, len(lrs) - 1))
            ax.plot(
                [lr],
                [curve[j]],
                marker="*" if best else "o",
                ms=14 if best else 7,
                color=colors[i],
                mec="black",
                ls="none",
            )
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 0.1), max(highs) + 0.1)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.set_title(
        f"LR range test over {sw.name} ({len(sw.values)} values, "
        f"{result.steps_run} steps, one program)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return ax


def plot_learning_curves(
    history: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    ax: Axes | tuple[Axes, Axes] | list[Axes] | np.ndarray,
) -> Axes:
    """Loss and accuracy per epoch, the lr on a second axis, snapshots marked.

    Args:
      history: a list of per-epoch records (``FitResult.history``) or a
        ``metrics.json`` dict holding one under ``"history"``.
      ax: one Axes (accuracy only) or a pair ``(loss_ax, accuracy_ax)``.

    Returns:
      The accuracy Axes.

    >>> from matplotlib.figure import Figure
    >>> history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e,
    ...             "train_accuracy": 1 - 0.2 / e, "val_accuracy": 1 - 0.3 / e,
    ...             "lr_min": 0.0, "lr_max": 0.1} for e in (1, 2, 3)]
    >>> loss_ax, acc_ax = Figure().subplots(1, 2)
    >>> plot_learning_curves(history, (loss_ax, acc_ax)) is acc_ax
    True
    >>> [line.get_label() for line in acc_ax.get_lines()]
    ['train acc', 'val acc']
    >>> acc_ax.get_lines()[1].get_ydata().round(3).tolist()  # 1 - 0.3 / epoch
    [0.7, 0.85, 0.9]
    """
    records: Sequence[Mapping[str, Any]] = (
        history["history"] if isinstance(history, Mapping) else history
    )
    loss_ax: Axes | None
    if isinstance(ax, (list, tuple, np.ndarray)):
        loss_ax, acc_ax = ax[0], ax[-1]
    else:
        loss_ax, acc_ax = None, ax
    epoch = np.array([h["epoch"] for h in records])

    def lr_twin(a):
        # Linear: a log axis would be dominated by the ~0 lr at cycle ends.
        t = a.twinx()
        t.fill_between(
            epoch,
            [h["lr_min"] for h in records],
            [h["lr_max"] for h in records],
            color="0.85",
            alpha=0.5,
            step="pre",
            label="lr range in epoch",
        )
        t.plot(
            epoch,
            [h["lr_max"] for h in records],
            color="0.5",
            lw=1,
            ls="--",
            drawstyle="steps-pre",
            label="lr (max in epoch)",
        )
        t.set_ylim(bottom=0)
        t.set_ylabel("learning rate (dashed)")
        a.set_zorder(t.get_zorder() + 1)
        a.patch.set_visible(False)
        return t

    if loss_ax is not None:
        loss_ax.plot(epoch, [h["train_loss"] for h in records], label="train loss")
        loss_ax.plot(epoch, [h["val_loss"] for h in records], label="val loss")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("loss")
        loss_ax.legend(loc="upper center")
        lr_twin(loss_ax)
    acc_ax.plot(epoch, [h["train_accuracy"] for h in records], label="train acc")
    acc_ax.plot(epoch, [h["val_accuracy"] for h in records], label="val acc")
    snaps = [h for h in records if "ensemble_val_accuracy" in h]
    if snaps:
        acc_ax.scatter(
            [h["epoch"] for h in snaps],
            [h["val_accuracy"] for h in snaps],
            marker="o",
            facecolors="none",
            edgecolors="k",
            zorder=3,
            label="snapshot (val acc)",
        )
        acc_ax.plot(
            [h["epoch"] for h in snaps],
            [h["ensemble_val_accuracy"] for h in snaps],
            "k*-",
            ms=8,
            label="ensemble of snapshots so far",
        )
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy")
    acc_ax.legend(loc="lower center")
    if loss_ax is None:
        lr_twin(acc_ax)
    return acc_ax


def plot_grid(
    result: GridResult,
    ax: Axes | None = None,
    suggestions: Mapping[str, float | None] | None = None,
) -> Axes:
    """Final validation accuracy vs lr (log axis): mean over seeds, min-max band.

    Args:
      result: a :class:`lrjax.GridResult`.
      ax: the Axes to draw on (a new figure when None).
      suggestions: optional ``{method: lr}`` (e.g. a range test's
        ``suggestions``), each drawn as a vertical line.

    A grid of 3 lrs x 2 seeds x 1 epoch (built by hand here; :func:`lrjax.lr_grid`
    returns one):

    >>> from matplotlib.figure import Figure
    >>> from lrjax import GridResult
    >>> lrs = np.array([0.01, 0.1, 1.0])
    >>> acc = np.array([[0.80, 0.82], [0.86, 0.90], [0.10, 0.12]])[..., None]
    >>> result = GridResult(lrs, 2, 1, 1 - acc, acc, 1 - acc, acc, 0.1, 0.88, 1,
    ...                     {}, "cpu", {}, {})  # loss, accuracy, ..., best lr, best acc
    >>> ax = plot_grid(result, Figure().subplots(), suggestions={"knee": 0.05})
    >>> [line.get_label() for line in ax.get_lines()]
    ['mean over seeds', 'best 0.1 (0.880)', 'knee: 0.05']
    >>> ax.get_lines()[0].get_ydata().round(3).tolist()  # the mean over the seeds
    [0.81, 0.88, 0.11]
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    lrs = np.asarray(result.lrs)
    acc = np.asarray(result.val_accuracy)[:, :, -1]  # [num_lrs, seeds]
    mean = acc.mean(axis=1)
    if acc.shape[1] > 1:
        ax.fill_between(
            lrs,
            acc.min(axis=1),
            acc.max(axis=1),
            color="tab:blue",
            alpha=0.25,
            label=f"{acc.shape[1]} seeds (min-max)",
        )
    ax.plot(lrs, mean, "o-", color="tab:blue", lw=1.6, ms=4, label="mean over seeds")
    ax.plot(
        [result.best_lr],
        [result.best_accuracy],
        marker="*",
        color="gold",
        mec="black",
        ms=14,
        ls="none",
        label=f"best {result.best_lr:.3g} ({result.best_accuracy:.3f})",
    )
    for m, lr in (suggestions or {}).items():
        if lr is None:
            continue
        color, _ = _METHOD_STYLE.get(m, ("gray", "x"))
        ax.axvline(lr, color=color, ls="--", lw=1.2, label=f"{m}: {lr:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"validation accuracy after {result.epochs} epoch(s)")
    ax.set_title(f"LR grid: {len(lrs)} lrs x {result.seeds} seed(s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return ax


def plot_recipe_grid(
    results: Mapping[str, GridResult],
    ax: Axes | None = None,
    recipes: Mapping[str, float] | None = None,
) -> Axes:
    """Final validation accuracy vs peak lr, one line per schedule family.

    Args:
      results: ``{family: GridResult}`` (:func:`lrjax.recipe_grid`).
      ax: the Axes to draw on (a new figure when None).
      recipes: optional ``{family: peak lr}`` (e.g. the recommended peaks),
        each marked on its family's line.

    Two families over 3 peaks, 1 seed, 1 epoch (built by hand here;
    :func:`lrjax.recipe_grid` returns such a dict):

    >>> from matplotlib.figure import Figure
    >>> from lrjax import GridResult
    >>> lrs = np.array([0.01, 0.1, 1.0])
    >>> def grid(accuracies):  # [num_lrs, seeds, epochs]
    ...     acc = np.array(accuracies)[:, None, None]
    ...     best = int(acc.argmax())
    ...     return GridResult(lrs, 1, 1, 1 - acc, acc, 1 - acc, acc, lrs[best],
    ...                       float(acc.max()), 1, {}, "cpu", {}, {})
    >>> results = {"wsd": grid([0.80, 0.88, 0.10]), "one_cycle": grid([0.8, 0.84, 0.9])}
    >>> ax = plot_recipe_grid(results, Figure().subplots(), recipes={"wsd": 0.1})
    >>> [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    ['wsd', 'one_cycle']
    >>> ax.get_lines()[2].get_xydata().round(3).tolist()  # wsd's recommended peak
    [[0.1, 0.88]]
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (family, r) in enumerate(results.items()):
        color = colors[i % len(colors)]
        lrs = np.asarray(r.lrs)
        mean = np.asarray(r.val_accuracy)[:, :, -1].mean(axis=1)
        ax.plot(lrs, mean, "o-", color=color, lw=1.4, ms=4, label=family)
        ax.plot([r.best_lr], [r.best_accuracy], marker="*", color=color,
                mec="black", ms=12, ls="none")  # fmt: skip
        peak = (recipes or {}).get(family)
        if peak is not None and lrs[0] <= peak <= lrs[-1]:
            acc = np.interp(np.log(peak), np.log(lrs), mean)
            ax.plot([peak], [acc], marker="v", color=color, mec="black", ms=9,
                    ls="none")  # fmt: skip
    first = next(iter(results.values()))
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(f"validation accuracy after {first.epochs} epoch(s)")
    ax.set_title(
        f"Recipe grid: {len(results)} families x {len(first.lrs)} peaks x "
        f"{first.seeds} seed(s) (star: best; triangle: recommended)"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return ax
