"""``python -m lrjax.find``: the learning-rate range test from the command line.

Defaults reproduce the seed recipe on real Fashion-MNIST: MLP 784-300-100-10, SGD,
batch 32, an exponential sweep from 1e-5 to 10 over one epoch, one seed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time

from lrjax.cli import (
    ArgumentParser,
    UsageError,
    add_model_args,
    fail,
    int_at_least,
    load_data,
    optimizer_factory,
    positive_float,
    prepare_out_dir,
    save_png,
    setup_jax,
    write_atomic,
)
from lrjax.suggest import DEFAULT_METHOD, METHODS

PROG = "lrjax.find"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m lrjax.find",
        description="LR range test: sweep the learning rate over one epoch, record "
        "the loss, and suggest a learning rate.",
    )
    add_model_args(p)
    p.add_argument("--min-lr", type=positive_float, default=1e-5)
    p.add_argument("--max-lr", type=positive_float, default=10.0)
    p.add_argument(
        "--steps",
        type=int_at_least(2),
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


def _csv(result) -> str:
    import numpy as np

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    columns = {
        "loss": np.atleast_2d(result.losses),
        "smoothed_loss": np.atleast_2d(result.smoothed_losses),
    }
    columns.update({k: np.atleast_2d(v) for k, v in result.metrics.items()})
    names = []
    for k in range(result.seeds):
        suffix = "" if result.seeds == 1 else f"_seed{k}"
        names += [f"{name}{suffix}" for name in columns]
    w.writerow(["step", "lr", *names])
    for i, lr in enumerate(result.lrs):
        row = [i, repr(float(lr))]
        for k in range(result.seeds):
            row += [repr(float(v[k, i])) for v in columns.values()]
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
    if r.spread is not None:
        lines.append(
            f"over {r.seeds} seeds: {r.method} from {fmt(r.spread['min'])} "
            f"to {fmt(r.spread['max'])}"
        )
    t = r.timings
    lines += [
        f"steps run:    {r.steps_run} of {r.config['num_steps']}"
        + (f" x {r.seeds} seeds" if r.seeds > 1 else ""),
        f"time:         compile {t['compile_s']:.2f} s, run {t['run_s']:.2f} s, "
        f"total {total_s:.2f} s on {r.device} ({t['loop']} loop)",
        f"written to:   {out}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    try:
        args = build_parser().parse_args(argv)
        _check(args)
    except (UsageError, ValueError) as e:
        return fail(PROG, str(e))
    hidden = args.hidden

    seeds = args.seeds
    cores = os.cpu_count() or 1
    setup_jax(max(d for d in range(1, min(cores, seeds) + 1) if seeds % d == 0))

    import jax

    from lrjax.batches import scale_images
    from lrjax.data import DatasetError
    from lrjax.models import mlp
    from lrjax.range_test import lr_range_test

    try:
        ds = load_data(args)
        opt = optimizer_factory(args.optimizer)
        out = prepare_out_dir(args.out, "find", args.force)
    except (UsageError, DatasetError) as e:
        return fail(PROG, str(e))

    key = jax.random.key(args.seed)
    input_size = math.prod(ds.input_shape)

    def build(k):
        return mlp(input_size, ds.num_classes, hidden, key=k)

    try:
        result = lr_range_test(
            build(key) if seeds == 1 else build,
            opt,
            (ds.x_train, ds.y_train),
            key=key,
            preprocess=scale_images,
            batch_size=args.batch_size,
            mode=args.mode,
            init_value=args.min_lr,
            end_value=args.max_lr,
            num_steps=args.steps,
            smooth_beta=args.smooth,
            diverge_threshold=args.diverge_threshold,
            seeds=seeds,
            method=args.method,
            progress=not args.quiet and sys.stderr.isatty(),
        )
    except (ValueError, TypeError) as e:  # e.g. a population too big to fit
        return fail(PROG, str(e))
    result.config.update(
        dataset=args.dataset,
        optimizer=args.optimizer,
        hidden=list(hidden),
        seed=args.seed,
        method=args.method,
    )
    doc = result.to_json()
    write_atomic(out / "lr_find.json", json.dumps(doc, indent=1) + "\n")
    write_atomic(out / "lr_find.csv", _csv(result))
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from lrjax.plots import plot_range_test

        fig, ax = plt.subplots(figsize=(8, 5))
        plot_range_test(result, ax)
        save_png(fig, out / "lr_find.png")
    if args.json:
        print(json.dumps(doc))
    elif not args.quiet:
        print(_summary(result, out, time.perf_counter() - t_start))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
