"""``python -m lrjax.grid``: train a grid of learning rates at once and compare them.

One model per (lr, seed), log-spaced lrs from ``--min-lr`` to ``--max-lr``, trained
for ``--epochs`` in one vmapped program (:func:`lrjax.lr_grid`); writes
``grid.json`` and ``grid.png`` (final validation accuracy vs lr). With ``--find`` the
range test runs first with the same model and optimizer and its suggestions are
marked on the plot, so a suggestion can be checked against the ground truth.
With ``--around-recipe FACTOR`` the lrs are centred on the recommended recipe's
peak instead (``lrjax.recommend`` for ``--epochs``): a check of the recipe on
this model.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lrjax._src.recipes import FAMILIES, build_schedule
from lrjax.cli import (
    ArgumentParser,
    UsageError,
    add_model_args,
    check_budget,
    decay_of,
    fail,
    int_at_least,
    interrupted,
    load_data,
    model_choice,
    nonneg_float,
    optimizer_factory,
    positive_float,
    prepare_out_dir,
    progress,
    save_png,
    setup_jax,
    usage_name,
    write_atomic,
)
from lrjax.cli.distributed import add_distributed_args, init_distributed

PROG = "lrjax.grid"
SCHEDULES = ("constant", "cosine", "restarts", "step", *FAMILIES, "all")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=usage_name("lrjax-grid"),
        description="Train one model per learning rate (and seed) in one compiled "
        "program and report validation accuracy per lr.",
    )
    add_model_args(p)
    p.add_argument(
        "--min-lr", type=positive_float, default=None, help="lowest lr (default 1e-3)"
    )
    p.add_argument(
        "--max-lr", type=positive_float, default=None, help="highest lr (default 1)"
    )
    p.add_argument(
        "--around-recipe",
        type=positive_float,
        default=None,
        metavar="FACTOR",
        help="check the recommended recipe on this model: run the range test "
        "(implies --find), then put the --num lrs from peak / FACTOR to peak x "
        "FACTOR around the recipe's peak for --epochs (an odd --num puts one on "
        "it); with a recipe family or all (the optimizer's auto family's peak), "
        "instead of --min-lr and --max-lr",
    )
    p.add_argument(
        "--num", type=int_at_least(2), default=12, help="lrs, log-spaced (default 12)"
    )
    p.add_argument(
        "--seeds", type=int_at_least(1), default=1, help="seeds per lr (default 1)"
    )
    p.add_argument("--epochs", type=int_at_least(1), default=1)
    p.add_argument(
        "--schedule",
        default="constant",
        choices=SCHEDULES,
        help="shape scaled by each lr: constant, cosine (one cosine decay over the "
        "run), restarts (a cosine cycle per epoch), step (halve every epoch), a "
        "recipe family (one_cycle, warmup_cosine, linear_decay, wsd: the shape "
        "lrjax-train --schedule FAMILY builds for --epochs), or all (every recipe "
        "family, one program: a grid over family x peak)",
    )
    p.add_argument(
        "--weight-decay",
        type=nonneg_float,
        default=None,
        help="as lrjax-train: adamw's decoupled decay (default 1e-4), L2 added to "
        "the gradient for the others (default none)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--find",
        action="store_true",
        help="run lrjax-train --lr auto's range test for this --seed first (the "
        "same initialisation, optimizer and batch size; --seeds runs of it) and mark "
        "its suggestions",
    )
    p.add_argument("--find-min-lr", type=positive_float, default=1e-5)
    p.add_argument("--find-max-lr", type=positive_float, default=10.0)
    p.add_argument("--out", default=None, help="output directory (default runs/grid-*)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--json", action="store_true", help="print the JSON result")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_distributed_args(p)
    return p


def _check(args) -> None:
    if args.around_recipe is not None:
        if args.min_lr is not None or args.max_lr is not None:
            raise UsageError(
                "--around-recipe sets the lrs around the recipe's peak; drop "
                "--min-lr and --max-lr"
            )
        if args.around_recipe <= 1:
            raise UsageError(
                f"--around-recipe must be > 1 (the peak / FACTOR .. peak x FACTOR), "
                f"got {args.around_recipe:g}"
            )
        if args.schedule not in (*FAMILIES, "all"):
            raise UsageError(
                f"--around-recipe needs a recipe family ({', '.join(FAMILIES)}) or "
                f"all, got --schedule {args.schedule}"
            )
        args.find = True
    else:
        args.min_lr = 1e-3 if args.min_lr is None else args.min_lr
        args.max_lr = 1.0 if args.max_lr is None else args.max_lr
    if args.min_lr is not None and args.min_lr >= args.max_lr:
        raise UsageError(
            f"--min-lr must be < --max-lr, got {args.min_lr:g} >= {args.max_lr:g}"
        )
    if args.find and args.find_min_lr >= args.find_max_lr:
        raise UsageError(
            f"--find-min-lr must be < --find-max-lr, got {args.find_min_lr:g} >= "
            f"{args.find_max_lr:g}"
        )


def unit_schedule(name: str, steps_per_epoch: int, epochs: int):
    """The schedule's shape with peak 1; each member applies ``lr * shape(t)``."""
    from lrjax._src import schedules
    from lrjax._src.recipes import unit_schedule as recipe_unit

    if name in FAMILIES:
        return recipe_unit(name, steps_per_epoch * epochs)
    if name == "constant":
        return None
    if name == "cosine":  # a single cosine cycle over the whole run, down to 0
        return schedules.cosine_restarts(1.0, first_period=steps_per_epoch * epochs)
    if name == "restarts":
        return schedules.cosine_restarts(1.0, first_period=steps_per_epoch)
    return schedules.step_decay(1.0, 0.5, steps_per_epoch)


def _summary(r, find, out, total_s, full: bool = True) -> str:
    acc = r.final_accuracy()
    lines = [f"{'lr':>10}  val acc (mean over {r.seeds} seed(s), epoch {r.epochs})"]
    for lr, a, row in zip(r.lrs, acc, r.val_accuracy[:, :, -1], strict=True):
        band = f"  [{row.min():.4f}, {row.max():.4f}]" if r.seeds > 1 else ""
        mark = "  <- best" if lr == r.best_lr else ""
        lines.append(f"{lr:10.4g}  {a:.4f}{band}{mark}")
    lines.append(f"best lr: {r.best_lr:.4g} (val acc {r.best_accuracy:.4f})")
    if find is not None:
        fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        lines.append(
            "range test: "
            + "  ".join(f"{m}={fmt(v)}" for m, v in find.suggestions.items())
        )
    if not full:
        return "\n".join(lines)
    t, m = r.timings, r.memory
    lines += [
        f"population: {m.members} models, {m.state_bytes / 2**20:.1f} MiB of "
        f"params + optimizer state",
        f"time: compile {t.compile_s:.2f} s, run {t.run_s:.2f} s, total "
        f"{total_s:.2f} s on {r.device}",
        f"written to: {out}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # outside the runs (in them: StopOnSignals)
        return interrupted(PROG)


def _main(argv: list[str] | None) -> int:
    t_start = time.perf_counter()
    try:
        args = build_parser().parse_args(argv)
        _check(args)
        init_distributed(args)  # before JAX starts its backends
    except (UsageError, ValueError) as e:
        return fail(PROG, str(e))

    setup_jax(min(os.cpu_count() or 1, args.num * args.seeds))

    from lrjax._src import data

    try:
        ds = load_data(args)
        if len(ds.y_val) == 0:
            raise UsageError(f"dataset {args.dataset} has no validation split")
        choice = model_choice(args, ds)
        spe = len(ds.y_train) // args.batch_size  # updates an epoch
        if args.schedule in (*FAMILIES, "all"):
            names = FAMILIES if args.schedule == "all" else [args.schedule]
            check_budget(args, spe, names, args.schedule)
        opt = optimizer_factory(args.optimizer, args.weight_decay)
        out = prepare_out_dir(args.out, "grid", args.force)
    except (UsageError, data.DatasetError) as e:
        return fail(PROG, str(e))
    from lrjax._src.hooks import StopOnSignals

    stop = StopOnSignals()  # Ctrl-C: the epochs so far, at an epoch's end
    try:  # e.g. a population too big to fit (MemoryRefused): one line
        with stop:
            find, results = _run(args, ds, choice, opt, stop)
    except ValueError as e:
        return fail(PROG, str(e))
    if not results:
        return interrupted(PROG, "during the range test (--find); nothing written")
    stopped = next(iter(results.values())).stop_reason == "signal"
    steps = spe * args.epochs
    recipes = {}
    if find is not None and not stopped:  # a recipe is for the whole budget
        recipes = recommended(find, results, steps, args.optimizer)
    doc = _document(args, choice, results, find, recipes, spe)
    write_atomic(out / "grid.json", json.dumps(doc, indent=1) + "\n")
    _plot(args, results, find, recipes, out / "grid.png")
    if args.json:
        print(json.dumps(doc))
    elif not args.quiet:
        _print_summary(results, find, recipes, out, time.perf_counter() - t_start)
    if stopped and stop.received is not None:
        ran = next(iter(results.values())).epochs
        print(
            f"{PROG}: stopped by signal {stop.received} after epoch {ran} of "
            f"{args.epochs}; the epochs so far are in {out}",
            file=sys.stderr,
        )
        return 128 + stop.received
    return 0


def _run(args, ds, choice, opt, stop) -> tuple[Any, dict]:
    """``(range test | None, {family: GridResult})``: the optional range test
    (``--find``), then the grid, one population for every family asked for;
    ``{}`` for the grid when ``stop`` (a signal) ended the range test."""
    import jax
    import numpy as np

    from lrjax._src.lr_grid import recipe_grid
    from lrjax._src.range_test import lr_range_test
    from lrjax._src.specs import Execution, GridConfig, Population, Sweep

    key = jax.random.key(args.seed)
    model = choice.build  # one initialisation per seed
    shown = progress(PROG, args.quiet)
    execution = Execution(progress=shown["progress"], hooks=[*shown["hooks"], stop])
    find = None
    if args.find:  # lrjax-train --lr auto's range test for this --seed, the same
        find = lr_range_test(  # model and key, so that the recipe is the one it trains
            choice.build(jax.random.fold_in(key, 0)),
            opt,
            (ds.x_train, ds.y_train),
            key=jax.random.fold_in(key, 2),
            loss_fn=choice.loss_fn,
            sweep=Sweep(
                init_value=args.find_min_lr,
                end_value=args.find_max_lr,
                batch_size=args.batch_size,
            ),
            population=Population(seeds=args.seeds),
            execution=execution,
        )
        if find.stop_reason == "signal":
            return find, {}
    steps = len(ds.y_train) // args.batch_size
    names = list(FAMILIES) if args.schedule == "all" else [args.schedule]
    lo, hi = args.min_lr, args.max_lr
    if args.around_recipe is not None:  # the lrs around the recipe's peak
        from lrjax._src.recipes import recommend

        family = "auto" if args.schedule == "all" else args.schedule
        rec = recommend(find, steps * args.epochs, family, optimizer=args.optimizer)
        lo, hi = rec.peak_lr / args.around_recipe, rec.peak_lr * args.around_recipe
    results = recipe_grid(
        model,
        opt,
        (ds.x_train, ds.y_train),
        (ds.x_val, ds.y_val),
        lrs=np.geomspace(lo, hi, args.num),
        families={n: unit_schedule(n, steps, args.epochs) for n in names},
        key=key,
        loss_fn=choice.loss_fn,
        config=GridConfig(epochs=args.epochs, batch_size=args.batch_size),
        population=Population(seeds=args.seeds),
        execution=execution,
    )
    return find, results


def _document(
    args, choice, results: dict, find, recipes: dict, steps_per_epoch: int
) -> dict:
    """``grid.json``: one grid (or every family's and the best cell), the range
    test and the recipes' regrets when ``--find`` ran. Each grid's ``config``
    holds the command line's settings beside the grid's; ``min_lr`` and
    ``max_lr`` are the lrs the grid ran (``--around-recipe`` sets them)."""
    lrs = next(iter(results.values())).lrs
    flags = {
        "dataset": args.dataset,
        "optimizer": args.optimizer,
        "weight_decay": decay_of(args.optimizer, args.weight_decay),  # applied
        **choice.config,
        "seed": args.seed,
        "schedule": args.schedule,
        "min_lr": float(lrs[0]),
        "max_lr": float(lrs[-1]),
        "around_recipe": args.around_recipe,
    }

    total = args.epochs * steps_per_epoch  # the planned budget

    def grid_json(name: str, r) -> dict:
        doc = r.to_json()
        doc["config"] |= flags
        if name in FAMILIES:  # the shape every member's lr scales (peak 1)
            _, shape = build_schedule(name, 1.0, total)
            doc["config"]["shape"] = shape
        return doc

    if args.schedule == "all":
        best = max(results, key=lambda n: results[n].best_accuracy)
        doc = {
            "families": {n: grid_json(n, r) for n, r in results.items()},
            "best": {
                "family": best,
                "lr": results[best].best_lr,
                "accuracy": results[best].best_accuracy,
            },
        }
    else:
        doc = grid_json(args.schedule, results[args.schedule])
    if find is not None:
        doc["range_test"] = {
            "suggestions": find.suggestions,
            "suggested_lr": find.suggested_lr,
            "method": find.method,
            "diverged_at_lr": find.diverged_at_lr,
            "spread": find.spread,
            "steps_run": find.steps_run,
            "timings": find.timings.to_json(),
            "config": find.config.to_json(),
        }
        if recipes:
            doc["recipes"] = recipes
    return doc


def _plot(args, results: dict, find, recipes: dict, path: Path) -> None:
    """``grid.png``: accuracy against lr per family (or of the one grid, with the
    range test's suggestions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrjax._src.plots import plot_grid, plot_recipe_grid

    fig, ax = plt.subplots(figsize=(8, 5))
    if args.schedule == "all":
        plot_recipe_grid(
            results, ax, recipes={n: r["peak_lr"] for n, r in recipes.items()}
        )
    else:
        plot_grid(
            results[args.schedule],
            ax,
            suggestions=None if find is None else find.suggestions,
        )
        ax.set_title(f"{args.schedule}: {ax.get_title()}")
        if args.schedule in recipes:
            peak = recipes[args.schedule]["peak_lr"]
            ax.axvline(peak, color="black", ls=":", lw=1.5, label=f"recipe: {peak:.3g}")
            ax.legend(fontsize=8, loc="lower left")
    save_png(fig, path)


def _print_summary(results: dict, find, recipes: dict, out: Path, total_s: float):
    for i, (name, r) in enumerate(results.items()):
        print(f"--- schedule {name}")
        last = i == len(results) - 1
        print(_summary(r, find if last else None, out, total_s, full=last))
    for name, rec in recipes.items():
        regret = rec["regret_pp"]
        print(
            f"recipe {name}: {rec['rule']} -> peak {rec['peak_lr']:.4g}, "
            + (
                "outside the grid"
                if regret is None
                else f"val acc {rec['val_accuracy']:.4f}, regret {regret:.2f} pp "
                "against the grid's best cell"
            )
        )


def recommended(find, results, total_steps: int, optimizer: str) -> dict:
    """Each family's recommended recipe and its regret against the whole grid.

    Regret (pp) = the best cell of all families (final validation accuracy, mean
    over seeds) minus the family's accuracy at the recommended peak,
    interpolated in log lr; None when the peak lies outside the grid.
    """
    from lrjax._src.lr_grid import accuracy_at
    from lrjax._src.recipes import FAMILIES, recommend

    best = max(r.best_accuracy for r in results.values())
    out = {}
    for name, r in results.items():
        if name not in FAMILIES:
            continue
        try:
            rec = recommend(find, total_steps, name, optimizer=optimizer)
        except ValueError:  # no suggestion to build a peak on
            continue
        acc = accuracy_at(r, rec.peak_lr)
        out[name] = {
            **rec.to_json(),
            "val_accuracy": acc,
            "regret_pp": None if acc is None else 100 * (best - acc),
        }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
