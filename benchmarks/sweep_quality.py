"""Is the sweep's recommendation good, and what does one program save?

    python benchmarks/sweep_quality.py [--model mlp] [--optimizer adamw]
        [--values 0,1e-5,1e-4,1e-3] [--devices 2]
        [--out benchmarks/results/sweep_mlp_adamw.json]
    python benchmarks/sweep_quality.py --model cnn --optimizer nesterov \
        --batch-size 128 --values 0,5e-4,5e-3 --epochs 1 --per-decade 2 \
        --grid-lo 1e-3 --repeats 1 --out benchmarks/results/sweep_cnn.json

On real Fashion-MNIST (the MLP 300-100 or the BatchNorm CNN), one range test
with ``Population(sweep_over={"weight_decay": values})`` (one epoch, 1e-5 -> 10,
one seed, the optimizers of ``python -m lrjax.find --sweep``) recommends a
(weight decay, lr) pair. Ground truth: ``lrjax.lr_grid`` over lr x weight decay
(one grid per value, ``--epochs`` epochs, validation accuracy), on log-spaced lrs
covering every value's suggestion (at least ``--grid-lo`` to ``--grid-hi``). Reported:

* regret: the best grid pair's accuracy minus the accuracy at the recommended
  pair (``lrjax.accuracy_at``, log-lr interpolation in the recommended value's
  grid); also each value's own suggestion's regret, so one sees what picking
  the value adds;
* cost: wall time (compile included, persistent compilation cache off) and run
  time of the one-program sweep against the same values run one after another
  as plain range tests, over ``--devices`` XLA host devices
  (``lrjax.cli.setup_jax``); repeats interleaved, the minimum reported, because
  the cores are shared. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _report_util import (
    NOT_MEASURED,
    HeadlineRow,
    TargetRow,
    fmt,
    load_result,
    yes,
)

# The results files the documents show: name -> the model it sweeps.
SWEEPS = {"sweep_mlp_adamw": "MLP", "sweep_cnn": "CNN"}
# The one program's wall time against the values' range tests one by one.
TARGET_RATIO = 0.8


def markdown(doc: dict) -> str:
    """The benchmarks/README.md table of one results JSON (``--report``)."""
    c = doc["cost"]
    lines = [
        f"{doc['benchmark']} ({doc['device']}, {doc['cpu_count']} cores).",
        "",
        f"| {doc['name']} | min smoothed loss | diverged at lr | suggested lr "
        f"| grid best lr | grid best acc | acc at suggestion |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(doc["per_value"]):
        mark = " **(recommended)**" if i == doc["recommended"]["index"] else ""
        lines.append(
            f"| {row['value']:g}{mark} | {fmt(row['min_loss'], '.4f')} "
            f"| {fmt(row['diverged_at_lr'])} | {fmt(row['suggested_lr'])} "
            f"| {fmt(row['grid_best_lr'])} | {fmt(row['grid_best_accuracy'], '.4f')} "
            f"| {fmt(row['accuracy_at_suggestion'], '.4f')} |"
        )
    b = doc["best_pair"]
    lines += [
        "",
        f"Best grid pair: {doc['name']}={b['value']:g}, lr {b['lr']:.3g} "
        f"(accuracy {b['accuracy']:.4f}); recommended pair: "
        f"{doc['name']}={fmt(doc['recommended']['value'], 'g')}, lr "
        f"{fmt(doc['recommended']['lr'])}; **regret {fmt(doc['regret'], '.4f')}**.",
        f"Cost: one program {c['one_program_wall_s']:.1f} s against "
        f"{c['one_by_one_wall_s']:.1f} s one value after another "
        f"(**{c['wall_ratio']:.2f}x** wall, compiles included; "
        f"{c['run_ratio']:.2f}x in run time alone; target <= "
        f"{c['target_ratio']}x), on {c['sweep_device']}.",
    ]
    return "\n".join(lines)


def cost_parent(args, argv) -> int:
    """Interleaved fresh processes: the sweep, then the values one by one."""
    import subprocess

    argv = list(sys.argv[1:] if argv is None else argv)
    base = [a for a in argv if a != "--cost-only"]
    if "--out" in base:
        i = base.index("--out")
        del base[i : i + 2]
    runs: dict[str, list[dict]] = {"sweep": [], "one_by_one": []}
    for i in range(args.repeats):
        for child in runs:
            cmd = [sys.executable, __file__, *base, "--child", child]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[child].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(
                f"repeat {i} {child}: {runs[child][-1]['wall_s']:.1f} s",
                file=sys.stderr,
            )
    best = {k: min(v, key=lambda x: x["wall_s"]) for k, v in runs.items()}
    fastest_run = {k: min(x["run_s"] for x in v) for k, v in runs.items()}
    cost = {
        "one_program_wall_s": best["sweep"]["wall_s"],
        "one_by_one_wall_s": best["one_by_one"]["wall_s"],
        "wall_ratio": best["sweep"]["wall_s"] / best["one_by_one"]["wall_s"],
        "one_program_run_s": fastest_run["sweep"],
        "one_by_one_run_s": fastest_run["one_by_one"],
        "run_ratio": fastest_run["sweep"] / fastest_run["one_by_one"],
        "one_program_compile_s": best["sweep"]["compile_s"],
        "one_by_one_compile_s": best["one_by_one"]["compile_s"],
        "target_ratio": TARGET_RATIO,
        "runs": runs,
        "sweep_device": best["sweep"]["device"],
        "one_by_one_device": best["one_by_one"]["device"],
        "loop": best["sweep"]["loop"],
        "population": best["sweep"].get("population"),
        "command": "python " + " ".join([sys.argv[0], *argv]),
        "load_avg_1min_after": os.getloadavg()[0],
        "note": "min over interleaved repeats, each a fresh process (JAX start and a "
        "2-step warm-up excluded, compiles included, persistent cache off): the "
        "sweep over --devices XLA host devices, against a plain range test per "
        "value in a process with JAX's defaults (one device, every core), as "
        "python -m lrjax.find would run them; each plain test stops at its own "
        "divergence, the sweep when every value has diverged",
    }
    if args.out:
        with open(args.out) as f:
            doc = json.load(f)
        if "cost" in doc and "runs" not in doc["cost"]:
            doc["cost_same_process"] = doc.pop("cost")
        doc["cost"] = cost
        with open(args.out, "w") as f:
            f.write(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(cost, indent=1))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--steps", type=int, default=None, help="default one epoch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--grid-lo", type=float, default=1e-4, help="grid lrs from")
    p.add_argument("--grid-hi", type=float, default=0.3, help="grid lrs up to")
    p.add_argument("--name", default="weight_decay")
    p.add_argument("--values", default="0,1e-5,1e-4,1e-3")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--per-decade", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--n-train", type=int, default=None, help="first N examples")
    p.add_argument("--out", default=None)
    p.add_argument("--report", default=None, help="print a results JSON's table")
    p.add_argument(
        "--cost-only",
        action="store_true",
        help="time the sweep (--devices host devices) against the values one by "
        "one (default JAX, one device) in fresh processes; with --out, merged "
        "into that JSON as its cost",
    )
    p.add_argument("--child", choices=("sweep", "one_by_one"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(markdown(json.load(f)))
        return 0
    if args.cost_only:
        return cost_parent(args, argv)
    values = [float(v) for v in args.values.split(",")]

    os.environ.setdefault("LRJAX_JAX_CACHE", "off")  # compiles count in the cost
    from lrjax.cli import setup_jax

    setup_jax(1 if args.child == "one_by_one" else args.devices)

    import jax
    import numpy as np
    from flax import nnx

    from lrjax._src.batches import scale_images
    from lrjax._src.data import load_dataset
    from lrjax._src.lr_grid import accuracy_at, lr_grid
    from lrjax._src.models import mlp
    from lrjax._src.range_test import lr_range_test
    from lrjax._src.results import describe_devices
    from lrjax._src.specs import GridConfig, Population, Sweep
    from lrjax.cli.find import sweep_factory

    ds = load_dataset("fashion_mnist")
    n = args.n_train or len(ds.y_train)
    train = (ds.x_train[:n], ds.y_train[:n])
    key = jax.random.key(0)
    opt = sweep_factory(args.optimizer)

    def at(v):
        return lambda lr: opt(lr, **{args.name: v})

    def model():  # the uint8 images scaled in front, in compiled code
        if args.model == "cnn":  # lrjax.models.cnn, where it has landed
            from lrjax._src.models import cnn

            net = cnn(ds.num_classes, key=jax.random.key(1))
        else:
            net = mlp(784, ds.num_classes, (300, 100), key=jax.random.key(1))
        return nnx.Sequential(scale_images, net)

    sweep = Sweep(args.steps, 1e-5, 10.0, batch_size=args.batch_size)
    rt = dict(key=key, sweep=sweep)

    def one_program():
        t0 = time.perf_counter()
        over = Population(sweep_over={args.name: values})
        r = lr_range_test(model(), opt, train, population=over, **rt)
        return time.perf_counter() - t0, r

    def one_by_one():
        t0 = time.perf_counter()
        rs = [lr_range_test(model(), at(v), train, **rt) for v in values]
        return time.perf_counter() - t0, rs

    warm = dataclasses.replace(sweep, num_steps=2)
    lr_range_test(model(), at(values[0]), train, **dict(rt, sweep=warm))  # warm-up
    if args.child:
        w, r = one_program() if args.child == "sweep" else one_by_one()
        rs = [r] if args.child == "sweep" else r
        print(
            json.dumps(
                {
                    "wall_s": w,
                    "run_s": sum(x.timings.run_s for x in rs),
                    "compile_s": sum(x.timings.compile_s for x in rs),
                    "steps_run": [x.steps_run for x in rs],
                    "device": rs[0].device,
                    "loop": rs[0].timings.loop,
                    "population": rs[0].timings.population,
                }
            )
        )
        return 0
    sweep_wall, seq_wall, sweep_run, seq_run = [], [], [], []
    for i in range(args.repeats):
        w, r = one_program()
        sweep_wall.append(w)
        sweep_run.append(r.timings.run_s)
        w, rs = one_by_one()
        seq_wall.append(w)
        seq_run.append(sum(x.timings.run_s for x in rs))
        print(
            f"repeat {i}: one program {sweep_wall[-1]:.1f} s, one by one "
            f"{seq_wall[-1]:.1f} s",
            file=sys.stderr,
        )
    sw = r.sweep

    # Ground truth: an lr grid per value, on lrs covering every value's suggestion.
    suggested = [v for v in sw.suggested_lr if v is not None]
    lo = min([args.grid_lo, *suggested]) / 1.5
    hi = max([args.grid_hi, *suggested]) * 1.5
    k = int(np.ceil(np.log10(hi / lo) * args.per_decade)) + 1
    lrs = np.logspace(np.log10(lo), np.log10(hi), k)
    grids, grid_s = [], 0.0
    for v in values:
        t0 = time.perf_counter()
        g = lr_grid(
            model(),
            at(v),
            train,
            (ds.x_val, ds.y_val),
            lrs=lrs.tolist(),
            key=key,
            config=GridConfig(epochs=args.epochs, batch_size=args.batch_size),
        )
        grid_s += time.perf_counter() - t0
        grids.append(g)
        print(f"grid {args.name}={v:g}: best {g.best_accuracy:.4f}", file=sys.stderr)
    best_per_value = [float(g.best_accuracy) for g in grids]
    b = int(np.argmax(best_per_value))

    def regret(i, lr):
        acc = accuracy_at(grids[i], lr)
        return None if acc is None else best_per_value[b] - acc

    rec = sw.best
    doc = {
        "benchmark": (
            f"sweep over {args.name} on Fashion-MNIST "
            f"{'MLP 300-100' if args.model == 'mlp' else 'CNN'}, "
            f"{args.optimizer}, batch {args.batch_size}, "
            f"{r.config.num_steps} steps 1e-5 -> 10, "
            "one seed; ground "
            f"truth lr_grid {len(lrs)} lrs x {len(values)} values x "
            f"{args.epochs} epochs"
        ),
        "command": "python " + " ".join(sys.argv),
        "device": describe_devices(),
        "jax": jax.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "model": args.model,
        "n_train": n,
        "name": args.name,
        "values": values,
        "optimizer": args.optimizer,
        "recommended": {"index": rec, "value": sw.value, "lr": sw.lr},
        "rule": sw.rule,
        "tolerance": sw.tolerance,
        "per_value": [
            {
                "value": v,
                "min_loss": sw.min_loss[i],
                "diverged_at_lr": sw.diverged_at_lr[i],
                "suggested_lr": sw.suggested_lr[i],
                "grid_best_lr": float(grids[i].best_lr),
                "grid_best_accuracy": best_per_value[i],
                "accuracy_at_suggestion": accuracy_at(grids[i], sw.suggested_lr[i]),
                "regret_of_suggestion": regret(i, sw.suggested_lr[i]),
            }
            for i, v in enumerate(values)
        ],
        "best_pair": {
            "value": values[b],
            "lr": float(grids[b].best_lr),
            "accuracy": best_per_value[b],
        },
        "regret": None if rec is None else regret(rec, sw.lr),
        "grid": {
            "lrs": lrs.tolist(),
            "epochs": args.epochs,
            "final_accuracy": [g.final_accuracy().tolist() for g in grids],
            "run_s": grid_s,
        },
        "cost": {
            "one_program_wall_s": min(sweep_wall),
            "one_by_one_wall_s": min(seq_wall),
            "wall_ratio": min(sweep_wall) / min(seq_wall),
            "one_program_run_s": min(sweep_run),
            "one_by_one_run_s": min(seq_run),
            "run_ratio": min(sweep_run) / min(seq_run),
            "target_ratio": TARGET_RATIO,
            "wall_s_all": {"one_program": sweep_wall, "one_by_one": seq_wall},
            "steps_run": r.steps_run,
            "loop": r.timings.loop,
            "population": r.timings.population,
            "sweep_device": r.device,
            "note": "min over interleaved repeats; one by one = a plain range test "
            "per value (one device each, as a user would run them), each compiled; "
            "the one program runs until every value has diverged",
        },
        "load_avg_1min_after": os.getloadavg()[0],
    }
    text = json.dumps(doc, indent=1) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


# --- what benchmarks/report.py stitches into the documents -----------------------


def sweep_block(name: str) -> Callable[[Path], str]:
    """The ``--report`` table of one results JSON, with the cost of
    the same sweep run as a map over members (``<name>_cost_map.json``)."""

    def block(results: Path) -> str:
        d = load_result(results, name)
        if d is None:
            return NOT_MEASURED
        losses = [r["min_loss"] for r in d["per_value"] if r["min_loss"] is not None]
        out = markdown(d)
        if losses:
            out += (
                f"\nMinimum smoothed losses within "
                f"{100 * (max(losses) / min(losses) - 1):.2f}% of the lowest (the "
                f"rule's tie tolerance: {100 * d['tolerance']:g}%)."
            )
        m = load_result(results, f"{name}_cost_map")
        if m is not None:
            out += (
                f'\nWith `population="{m.get("population", "map")}"` '
                f"(`{m['command']}`): one program {m['one_program_wall_s']:.1f} s "
                f"against {m['one_by_one_wall_s']:.1f} s (**{m['wall_ratio']:.2f}x** "
                f"wall; {m['run_ratio']:.2f}x in run time), on {m['sweep_device']}."
            )
        return out

    return block


def target_rows(results: Path) -> list[TargetRow]:
    rows = []
    for name in SWEEPS:
        s = load_result(results, name)
        c = s and s["cost"]
        rows.append(
            (
                f"range test over a second hyperparameter in one program: at most "
                f"{c['target_ratio'] if c else TARGET_RATIO}x the wall time of one "
                f"range test per value (`{name}.json`)",
                c and f"{c['wall_ratio']:.2f}x (on {c['sweep_device']})",
                c and yes(c["wall_ratio"] <= c["target_ratio"]),
            )
        )
    return rows


def headline_rows(results: Path) -> list[HeadlineRow]:
    rows = []
    for name, model in SWEEPS.items():
        w = load_result(results, name)
        regret = w and w["regret"]
        rows.append(
            (
                f"lr x weight decay in one program (`sweep_over=`), {model}",
                w
                and f"regret {fmt(regret and 100 * regret, '.2f')} pp; "
                f"{w['cost']['wall_ratio']:.2f}x the time of the {len(w['values'])} "
                "values one by one",
            )
        )
    return rows


BLOCKS = {name: sweep_block(name) for name in SWEEPS}
TARGET_ROWS = {"sweep": target_rows}
HEADLINE_ROWS = {"sweep": headline_rows}


if __name__ == "__main__":
    raise SystemExit(main())
