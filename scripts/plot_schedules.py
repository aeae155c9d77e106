"""Draws every lrjax schedule in a grid of small plots.

Usage: python scripts/plot_schedules.py [--out docs/schedules.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

# Runs from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrjax._src import schedules as S  # noqa: E402

PANELS = [
    # (title, schedule, number of steps, log y axis, restart marks)
    (
        "exponential_sweep(1e-6, 1.0, 1000)",
        S.exponential_sweep(1e-6, 1.0, 1000),
        1200,
        True,
        None,
    ),
    ("linear_sweep(0.0, 0.1, 1000)", S.linear_sweep(0.0, 0.1, 1000), 1200, False, None),
    (
        "triangular(1e-3, 6e-3, 2000)",
        S.triangular(1e-3, 6e-3, 2000),
        12000,
        False,
        None,
    ),
    (
        "triangular(1e-3, 6e-3, 500,\nstep_size_down=1500)",
        S.triangular(1e-3, 6e-3, 500, step_size_down=1500),
        12000,
        False,
        None,
    ),
    (
        "triangular2(1e-3, 6e-3, 2000)",
        S.triangular2(1e-3, 6e-3, 2000),
        12000,
        False,
        None,
    ),
    (
        "exp_range(1e-3, 6e-3, 2000,\ngamma=0.99994)",
        S.exp_range(1e-3, 6e-3, 2000, gamma=0.99994),
        12000,
        False,
        None,
    ),
    (
        "cosine_restarts(0.1, 1000)",
        S.cosine_restarts(0.1, 1000),
        5000,
        False,
        S.cosine_restart_steps(1000, num_steps=5000),
    ),
    (
        "cosine_restarts(0.1, 300, period_mult=2,\npeak_decay=0.7)",
        S.cosine_restarts(0.1, 300, period_mult=2, peak_decay=0.7),
        9300,
        False,
        S.cosine_restart_steps(300, 2, num_steps=9300),
    ),
    (
        "cosine_restarts(0.1, 600, period_mult=1.5,\nmin_value=0.01, warmup_steps=150)",
        S.cosine_restarts(0.1, 600, 1.5, min_value=0.01, warmup_steps=150),
        7000,
        False,
        S.cosine_restart_steps(600, 1.5, num_steps=7000),
    ),
    ("step_decay(0.1, 0.5, 1000)", S.step_decay(0.1, 0.5, 1000), 5000, False, None),
    (
        "join_schedules([linear_schedule(0, 0.1, 500),\n"
        "cosine_restarts(0.1, 1000, 2)], [500])",
        optax.join_schedules(
            [optax.linear_schedule(0.0, 0.1, 500), S.cosine_restarts(0.1, 1000, 2)],
            boundaries=[500],
        ),
        7500,
        False,
        500 + S.cosine_restart_steps(1000, 2, num_steps=7000),
    ),
    (
        "cosine_restarts(0.1, 500, min_value=1e-4,\npeak_decay=0.5)  (log y)",
        S.cosine_restarts(0.1, 500, min_value=1e-4, peak_decay=0.5),
        3000,
        True,
        S.cosine_restart_steps(500, num_steps=3000),
    ),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/schedules.png", help="PNG to write")
    args = parser.parse_args(argv)

    fig, axes = plt.subplots(3, 4, figsize=(16, 10), layout="constrained")
    for ax, (title, schedule, n, log_y, marks) in zip(axes.flat, PANELS, strict=True):
        steps = np.arange(n)
        lr = np.asarray(jax.jit(schedule)(steps))
        ax.plot(steps, lr, lw=1.2)
        if marks is not None and len(marks):
            ax.plot(marks, lr[marks], "o", ms=3, color="C3", label="restart steps")
            ax.legend(fontsize=7, loc="upper right")
        if log_y:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("lr", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("lrjax schedules: schedule(t) is the lr of update t", fontsize=12)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
