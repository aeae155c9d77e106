"""``python -m lrjax.find``: the learning-rate range test from the command line.

Defaults reproduce the seed recipe on real Fashion-MNIST: MLP 784-300-100-10, SGD,
batch 32, an exponential sweep from 1e-5 to 10 over one epoch, one seed.
``--sweep weight_decay=0,1e-5,1e-4,1e-3`` runs one lr sweep per value of a second
hyperparameter in the same compiled program and recommends a pair.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time

from lrjax._src.suggestions import DEFAULT_METHOD, METHODS
from lrjax.cli import (
    ArgumentParser,
    UsageError,
    add_model_args,
    fail,
    int_at_least,
    interrupted,
    load_data,
    model_choice,
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

PROG = "lrjax.find"
MOMENTUM = {"sgd": 0.0, "momentum": 0.9, "nesterov": 0.9}  # the built-in defaults


def sweep_spec(text: str) -> tuple[str, list[float]]:
    """``--sweep weight_decay=0,1e-5`` -> ``("weight_decay", [0.0, 1e-05])``."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"expected NAME=V1,V2,... (e.g. weight_decay=0,1e-4,1e-3), got {text!r}"
        )
    items = [v.strip() for v in rest.split(",")] if rest.strip() else []
    if not items or any(not v for v in items):
        raise argparse.ArgumentTypeError(
            f"{name} needs a comma-separated list of numbers, got {rest!r}"
        )
    values = []
    for v in items:
        try:
            values.append(float(v))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} values must be numbers, got {v!r}"
            ) from None
    return name, values


def sweep_factory(name: str):
    """The built-in optimizer ``name`` with its hyperparameters as keywords.

    Every optimizer takes ``weight_decay`` (adamw's decoupled decay, default
    1e-4; L2 through ``optax.add_decayed_weights`` before the others, default
    0), and sgd, momentum and nesterov take ``momentum`` (defaults 0, 0.9, 0.9):
    the same optimizers as :func:`lrjax.cli.optimizer_factory` at the defaults.
    A concrete negative decay or a momentum outside [0, 1) is a ValueError.
    """
    import optax

    def check(weight_decay, momentum=0.0):
        if isinstance(weight_decay, int | float) and not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay:g}")
        if isinstance(momentum, int | float) and not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum:g}")

    if name == "adamw":

        def adamw(learning_rate, weight_decay=1e-4):
            check(weight_decay)
            return optax.adamw(learning_rate, weight_decay=weight_decay)

        return adamw
    if name == "adam":

        def adam(learning_rate, weight_decay=0.0):
            check(weight_decay)
            return optax.chain(
                optax.add_decayed_weights(weight_decay), optax.adam(learning_rate)
            )

        return adam
    if name not in MOMENTUM:
        raise UsageError(f"unknown optimizer {name!r}")
    nesterov = name == "nesterov"

    def sgd(learning_rate, weight_decay=0.0, momentum=MOMENTUM[name]):
        check(weight_decay, momentum)
        return optax.chain(
            optax.add_decayed_weights(weight_decay),
            optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
        )

    return sgd


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=usage_name("lrjax-find"),
        description="LR range test: sweep the learning rate over one epoch, record "
        "the loss, and suggest a learning rate.",
    )
    add_model_args(p)
    p.add_argument("--min-lr", type=positive_float, default=1e-5)
    p.add_argument("--max-lr", type=positive_float, default=10.0)
    p.add_argument(
        "--steps",
        type=int_at_least(2, 2**31),
        default=None,
        help="sweep length (default: one epoch)",
    )
    p.add_argument("--mode", default="exponential", choices=("exponential", "linear"))
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=METHODS,
        help=f"suggestion reported as suggested_lr (default {DEFAULT_METHOD})",
    )
    p.add_argument(
        "--seeds",
        type=int_at_least(1),
        default=1,
        help="independent runs in one compiled program (default 1)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sweep",
        type=sweep_spec,
        action="append",
        default=None,
        metavar="NAME=V1,V2,...",
        help="one lr sweep per value of ONE more hyperparameter, in one compiled "
        "program: weight_decay (every optimizer) or momentum (sgd, momentum, "
        "nesterov), e.g. weight_decay=0,1e-5,1e-4,1e-3",
    )
    p.add_argument(
        "--smooth",
        type=float,
        default=0.98,
        metavar="BETA",
        help="EMA factor of the smoothed loss (default 0.98)",
    )
    p.add_argument(
        "--diverge-threshold",
        type=float,
        default=4.0,
        metavar="X",
        help="diverged when smoothed loss > X x best (default 4)",
    )
    p.add_argument("--out", default=None, help="output directory (default runs/find-*)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--json", action="store_true", help="print the JSON result")
    p.add_argument("--no-plot", action="store_true", help="do not write lr_find.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_distributed_args(p)
    return p


def _check(args) -> None:
    if args.min_lr >= args.max_lr:
        raise UsageError(
            f"--min-lr must be < --max-lr, got {args.min_lr:g} >= {args.max_lr:g}"
        )
    if not 0.0 <= args.smooth < 1.0:
        raise UsageError(f"--smooth must be in [0, 1), got {args.smooth}")
    if not args.diverge_threshold > 1.0:
        raise UsageError(
            f"--diverge-threshold must be > 1, got {args.diverge_threshold}"
        )
    if args.sweep is not None and len(args.sweep) > 1:
        names = ", ".join(name for name, _ in args.sweep)
        raise UsageError(
            f"--sweep takes one hyperparameter, got {len(args.sweep)} ({names}); "
            "run one find per hyperparameter"
        )


def _csv(result) -> str:
    """One row per update; a loss, smoothed loss and metric column per curve.

    Curves are the seeds (``_seed{k}``) and, with a sweep, every value
    (``_{name}={value}``, then the seed).
    """
    import numpy as np

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    sw = result.sweep
    src = result if sw is None else sw
    columns = {
        "loss": src.losses,
        "smoothed_loss": src.smoothed_losses,
        **src.metrics,
    }
    # [seeds, steps], with a sweep [values, seeds, steps]: as [curves, steps],
    # values x seeds in that order.
    n = len(result.lrs)
    columns = {k: np.asarray(v).reshape(-1, n) for k, v in columns.items()}
    prefixes = [""] if sw is None else [f"_{sw.name}={v:g}" for v in sw.values]
    suffixes = [
        p + ("" if result.seeds == 1 else f"_seed{k}")
        for p in prefixes
        for k in range(result.seeds)
    ]
    names = [f"{name}{suffix}" for suffix in suffixes for name in columns]
    w.writerow(["step", "lr", *names])
    for i, lr in enumerate(result.lrs):
        row = [i, repr(float(lr))]
        for c in range(len(suffixes)):
            row += [repr(float(v[c, i])) for v in columns.values()]
        w.writerow(row)
    return buf.getvalue()


def _summary(r, out, total_s) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
    lines = [
        f"suggested lr: {fmt(r.suggested_lr)}  (method: {r.method})",
        "suggestions:  " + "  ".join(f"{m}={fmt(v)}" for m, v in r.suggestions.items()),
        f"diverged at:  {fmt(r.diverged_at_lr)}"
        + ("" if r.diverged_at_lr is not None else " (did not diverge)"),
    ]
    if r.warning is not None:
        lines.append(f"warning:      {r.warning}")
    if r.spread is not None:
        lines.append(
            f"over {r.seeds} seeds: {r.method} from {fmt(r.spread['min'])} "
            f"to {fmt(r.spread['max'])}"
        )
    sw = r.sweep
    if sw is not None:
        lines.append(
            f"sweep over {sw.name}: {len(sw.values)} values in one compiled program"
        )
        lines.append(
            f"  {sw.name:>14}  {'min loss':>9}  {'diverged at':>11}  suggested lr"
        )
        for i, v in enumerate(sw.values):
            mark = "  <- recommended" if i == sw.best else ""
            lines.append(
                f"  {v:>14.4g}  {fmt(sw.min_loss[i]):>9}  "
                f"{fmt(sw.diverged_at_lr[i]):>11}  {fmt(sw.suggested_lr[i])}{mark}"
            )
        lines.append(
            "recommended:  "
            + (
                "none (no value gave a usable curve)"
                if sw.best is None
                else f"{sw.name}={sw.value:g}, lr={fmt(sw.lr)}"
            )
            + " (lowest smoothed loss, ties to the latest divergence)"
        )
    t = r.timings
    lines += [
        f"steps run:    {r.steps_run} of {r.config.num_steps}"
        + (f" x {len(sw.values)} values" if sw is not None else "")
        + (f" x {r.seeds} seeds" if r.seeds > 1 else ""),
        f"time:         compile {t.compile_s:.2f} s, run {t.run_s:.2f} s, "
        f"total {total_s:.2f} s on {r.device} ({t.loop} loop"
        + (f", {t.population} members" if t.population is not None else "")
        + ")",
        f"written to:   {out}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # outside the sweep (in it: StopOnSignals)
        return interrupted(PROG)


def _main(argv: list[str] | None) -> int:
    t_start = time.perf_counter()
    try:
        args = build_parser().parse_args(argv)
        _check(args)
        init_distributed(args)  # before JAX starts its backends
    except (UsageError, ValueError) as e:
        return fail(PROG, str(e))

    seeds = args.seeds
    members = seeds * (1 if args.sweep is None else len(args.sweep[0][1]))
    cores = os.cpu_count() or 1
    setup_jax(max(d for d in range(1, min(cores, members) + 1) if members % d == 0))

    import jax

    from lrjax._src.data import DatasetError
    from lrjax._src.hooks import StopOnSignals
    from lrjax._src.range_test import check_sweep, lr_range_test
    from lrjax._src.specs import Divergence, Execution, Population, Sweep

    sweep_over = None
    try:
        if args.sweep is None:
            opt = optimizer_factory(args.optimizer)
        else:
            opt = sweep_factory(args.optimizer)
            sweep_over = dict(args.sweep)
            check_sweep(sweep_over, opt)
        ds = load_data(args)
        choice = model_choice(args, ds)
        out = prepare_out_dir(args.out, "find", args.force)
    except (UsageError, DatasetError, ValueError) as e:
        return fail(PROG, str(e))

    key = jax.random.key(args.seed)
    build = choice.build

    shown = progress(PROG, args.quiet)
    stop = StopOnSignals()  # Ctrl-C: the curve so far, at a chunk boundary
    with stop:
        try:
            result = lr_range_test(
                build(key) if seeds == 1 else build,
                opt,
                (ds.x_train, ds.y_train),
                key=key,
                loss_fn=choice.loss_fn,
                method=args.method,
                sweep=Sweep(
                    num_steps=args.steps,
                    init_value=args.min_lr,
                    end_value=args.max_lr,
                    mode=args.mode,
                    batch_size=args.batch_size,
                ),
                divergence=Divergence(
                    smooth_beta=args.smooth, threshold=args.diverge_threshold
                ),
                population=Population(seeds=seeds, sweep_over=sweep_over),
                execution=Execution(
                    progress=shown["progress"], hooks=[*shown["hooks"], stop]
                ),
            )
        except ValueError as e:  # e.g. a population too big to fit (MemoryRefused)
            return fail(PROG, str(e))
    _write(args, result, choice.config, out, time.perf_counter() - t_start)
    if result.stop_reason == "signal" and stop.received is not None:
        print(
            f"{PROG}: stopped by signal {stop.received} at step {result.steps_run} "
            f"of {result.config.num_steps}; the curve so far is in {out}",
            file=sys.stderr,
        )
        return 128 + stop.received
    return 0


def _write(args, result, model_config: dict, out, elapsed: float) -> None:
    """lr_find.json / .csv / .png under ``out``, then the summary (or the JSON)."""
    doc = result.to_json()
    doc["config"] |= {  # the command line's settings, beside the range test's
        "dataset": args.dataset,
        "optimizer": args.optimizer,
        **model_config,
        "seed": args.seed,
        "method": args.method,
    }
    write_atomic(out / "lr_find.json", json.dumps(doc, indent=1) + "\n")
    write_atomic(out / "lr_find.csv", _csv(result))
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from lrjax._src.plots import plot_range_test

        fig, ax = plt.subplots(figsize=(8, 5))
        plot_range_test(result, ax)
        save_png(fig, out / "lr_find.png")
    if args.json:
        print(json.dumps(doc))
    elif not args.quiet:
        print(_summary(result, out, elapsed))


if __name__ == "__main__":
    raise SystemExit(main())
