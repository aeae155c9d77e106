"""Matplotlib helpers: each takes an ``Axes``, draws, and returns it.

They never call ``plt.show()`` and never pick a backend; the command lines use Agg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from lrjax.finder import RangeTestResult

_METHOD_STYLE = {
    "steep": ("tab:orange", "v"),
    "valley": ("tab:green", "o"),
    "minimum": ("tab:purple", "s"),
    "divergence": ("tab:red", "D"),
    "balanced": ("black", "*"),
}


def plot_range_test(result: RangeTestResult, ax: Axes | None = None) -> Axes:
    """Loss vs lr on a log axis: raw (faint), smoothed, suggestions, divergence.

    With several seeds the smoothed curves' min-max band is shaded around their
    median, and the suggestions are the medians over seeds.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    lrs = np.asarray(result.lrs)
    raw = np.atleast_2d(result.losses)
    sm = np.atleast_2d(result.smoothed_losses)
    for row in raw:
        ax.plot(lrs, row, color="tab:blue", alpha=0.15, lw=0.6)
    if len(sm) > 1:
        with np.errstate(all="ignore"):
            lo, mid, hi = (np.nanpercentile(sm, q, axis=0) for q in (0, 50, 100))
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


def plot_grid(result, ax: Axes | None = None, suggestions=None) -> Axes:
    """Final validation accuracy vs lr (log axis): mean over seeds, min-max band.

    Args:
      result: a :class:`lrjax.population.GridResult`.
      ax: the Axes to draw on (a new figure when None).
      suggestions: optional ``{method: lr}`` (e.g. a range test's
        ``suggestions``), each drawn as a vertical line.
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
