"""Population speed: 36 models (12 lrs x 3 seeds), one epoch, three ways.

* ``sequential``: the one-member program (the same step, scan and evaluation as a
  population member, without vmap), compiled once, then run for each of the 36
  models one after another;
* ``vmap x1``: ``lr_grid`` on one device;
* ``vmap xN``: ``lr_grid`` with the population axis sharded over N XLA host devices
  (``jax_num_cpu_devices``, one per core) or the local accelerators.

Each variant runs in its own subprocess (the device count is fixed when JAX
starts), compiles first and times the run with ``block_until_ready``. MLP 300-100,
Fashion-MNIST, SGD, batch 32 by default.

    python benchmarks/bench_population.py [--n-train 55000] [--devices 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report_util import NOT_MEASURED, TargetRow, load_result, md_table, yes  # noqa: E402

LRS = (1e-3, 3.0)
# The target: the fastest population against one model after another.
TARGET_VS_SEQUENTIAL = 0.8


def child(args) -> dict:
    from lrjax.cli import setup_jax

    setup_jax(args.child_devices)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from lrjax._src.batches import batch_indices, scale_images, take
    from lrjax._src.data import load_dataset
    from lrjax._src.lr_grid import lr_grid
    from lrjax._src.models import mlp
    from lrjax._src.results import describe_devices
    from lrjax._src.specs import GridConfig, Population
    from lrjax._src.step import (
        classification_loss,
        init_state,
        make_eval_batch,
        make_optimizer,
        make_step,
        split_model,
    )

    ds = load_dataset("fashion_mnist")
    n = args.n_train
    x, y = ds.x_train[:n], ds.y_train[:n]
    key = jax.random.key(0)

    def model(k):  # the uint8 images scaled in front, in compiled code
        return nnx.Sequential(scale_images, mlp(784, 10, (300, 100), key=k))

    lrs = np.geomspace(*LRS, args.num_lrs)
    if args.child == "population":
        r = lr_grid(
            model, optax.sgd, (x, y), (ds.x_val, ds.y_val),
            lrs=lrs, key=key,
            config=GridConfig(epochs=1, batch_size=args.batch_size),
            population=Population(seeds=args.seeds),
        )  # fmt: skip
        return {
            "variant": f"vmap x{args.child_devices}",
            "compile_s": r.timings.compile_s,
            "run_s": r.timings.run_s,
            "device": r.device,
            "memory": r.memory.to_json(),
            "best_lr": r.best_lr,
            "loop": r.timings.loop,
        }

    # sequential: one member's program (the same step, a scan over the epoch and
    # an evaluation in batches of 1000), compiled once, run model after model
    spec, _, _ = split_model(model(key))
    loss_fn = classification_loss()

    def make_tx(lr):
        return make_optimizer(optax.sgd, lambda t: lr * jnp.ones((), jnp.float32))

    eval_batch = make_eval_batch(spec, loss_fn)

    def member_epoch(lr, state, idx, data, val):
        step = make_step(spec, loss_fn, make_tx(lr))
        state, m = jax.lax.scan(lambda s, i: step(s, take(data, i)), state, idx)
        batches = jax.tree.map(lambda a: a.reshape(-1, 1000, *a.shape[1:]), val)
        ev = jax.lax.map(
            lambda b: eval_batch(state.params, state.model_state, b), batches
        )
        return state, jax.tree.map(jnp.mean, ev)

    steps = n // args.batch_size
    data = (jnp.asarray(x), jnp.asarray(y))
    nv = len(ds.y_val) // 1000 * 1000
    val = (jnp.asarray(ds.x_val[:nv]), jnp.asarray(ds.y_val[:nv]))
    init_member = jax.jit(lambda lr, p, r: init_state(p, r, make_tx(lr)))
    run = jax.jit(member_epoch, donate_argnums=1)
    members = []
    for s in range(args.seeds):
        sk = jax.random.fold_in(key, s)
        idx = batch_indices(sk, n, args.batch_size, steps)
        _, p, r = split_model(model(jax.random.fold_in(sk, 1)))
        members += [(jnp.float32(lr), p, r, idx) for lr in lrs]
    lr0, p0, r0, i0 = members[0]
    t0 = time.perf_counter()
    compiled = run.lower(lr0, init_member(lr0, p0, r0), i0, data, val).compile()
    compile_s = time.perf_counter() - t0
    run_s = 0.0
    for lr, p, r, idx in members:
        state = jax.block_until_ready(init_member(lr, p, r))
        t0 = time.perf_counter()
        state, ev = compiled(lr, state, idx, data, val)
        jax.block_until_ready(ev)
        run_s += time.perf_counter() - t0
    return {
        "variant": "sequential",
        "compile_s": compile_s,
        "run_s": run_s,
        "per_model_s": run_s / len(members),
        "device": describe_devices(jax.devices()[:1]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-lrs", type=int, default=12)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=55000)
    p.add_argument("--devices", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "population.json")
    )
    p.add_argument(
        "--child", choices=("population", "sequential"), help=argparse.SUPPRESS
    )
    p.add_argument("--child-devices", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0

    common = [
        "--num-lrs", str(args.num_lrs), "--seeds", str(args.seeds),
        "--batch-size", str(args.batch_size), "--n-train", str(args.n_train),
    ]  # fmt: skip
    variants = [("sequential", 1), ("population", 1)]
    if args.devices > 1:
        variants.append(("population", args.devices))
    runs = []
    for kind, d in variants:
        cmd = [sys.executable, __file__, *common, "--child", kind]
        cmd += ["--child-devices", str(d)]
        load = os.getloadavg()[0]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["load_avg_1min_before"] = load
        runs.append(r)
        print(json.dumps(r), flush=True)
    seq = runs[0]["run_s"]
    for r in runs:
        r["vs_sequential"] = r["run_s"] / seq
    doc = {
        "description": f"{args.num_lrs * args.seeds} models (MLP 300-100, SGD, batch "
        f"{args.batch_size}, {args.n_train} examples), one epoch + evaluation",
        "command": "python benchmarks/bench_population.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "note": "load_avg_1min_before: the machine is shared; other processes "
        "competing for its cores slow every variant unevenly",
        "runs": runs,
        "target": f"spread population <= {TARGET_VS_SEQUENTIAL}x sequential",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    for r in runs:
        print(
            f"{r['variant']:>12}: run {r['run_s']:7.2f} s  compile {r['compile_s']:.2f}"
            f" s  {r['vs_sequential']:.2f}x sequential  on {r['device']}"
        )
    return 0


# --- what benchmarks/report.py stitches into the documents -----------------------


def markdown(results: Path) -> str:
    """The ``population`` block: each variant against the sequential run, and
    the memory a member takes (here and in the finder-quality grids)."""
    import finder_quality

    d = load_result(results, "population")
    if d is None:
        return NOT_MEASURED
    rows = [
        [
            r["variant"],
            r["device"],
            f"{r['compile_s']:.2f}",
            f"{r['run_s']:.1f}",
            f"{r['vs_sequential']:.2f}x",
            f"{r['load_avg_1min_before']:.1f}",
        ]
        for r in d["runs"]
    ]
    out = md_table(
        ["variant", "device", "compile s", "run s", "vs sequential", "load avg before"],
        rows,
    )
    out += f"\n\n{d['description']}; `{d['command'].strip()}`; target: {d['target']}."
    mem = next((r["memory"] for r in d["runs"] if "memory" in r), None)
    if mem:
        out += (
            f"\n\nMemory (params + optimizer state, SGD): {mem['members']} members "
            f"hold {mem['state_bytes']:,} bytes ({mem['state_bytes'] / 2**20:.1f} "
            f"MiB), {mem['member_bytes']:,} bytes a member."
        )
    per_opt = {}
    for f in finder_quality.finder_docs(results).values():
        if f.get("model", "mlp") != "mlp" or f["config"].get("hidden") not in (
            None,
            [300, 100],
        ):
            continue
        for r in f["results"]:
            per_opt.setdefault(r["optimizer"], r["grid"]["memory"]["member_bytes"])
    if per_opt:
        out += (
            " A member of the same MLP in the finder-quality grids: "
            + ", ".join(f"{k} {v:,} bytes" for k, v in sorted(per_opt.items()))
            + "."
        )
    return out


def target_rows(results: Path) -> list[TargetRow]:
    p = load_result(results, "population")
    if p:
        spread = min(
            (r for r in p["runs"] if r["variant"] != "sequential"),
            key=lambda r: r["vs_sequential"],
        )
    return [
        (
            f"population of 36 models at most {TARGET_VS_SEQUENTIAL}x sequential (CPU)",
            p
            and f"{spread['vs_sequential']:.2f}x ({spread['variant']}, "
            f"{spread['device']})",
            p and yes(spread["vs_sequential"] <= TARGET_VS_SEQUENTIAL),
        )
    ]


BLOCKS = {"population": markdown}
TARGET_ROWS = {"population": target_rows}


if __name__ == "__main__":
    raise SystemExit(main())
