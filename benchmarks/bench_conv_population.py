"""How should a population of models run inside one compiled update?

    python benchmarks/bench_conv_population.py [--members 4] [--steps 20]
        [--repeats 3] [--out benchmarks/results/conv_population.json]

The evidence for ``Population(layout="auto")`` (lrjax.loop). For the BatchNorm CNN
(``lrjax.cnn``, batch 128, one dispatched update at a time) and the MLP
300-100 (batch 32, a scan of ``--mlp-steps`` updates), the time of one update of:

* ``single``: one model alone (the plain step);
* ``vmap``: ``--members`` models batched with ``jax.vmap``;
* ``unroll``: the members one after another, each step inlined;
* ``map``: ``lax.map`` over the members;

all built from :func:`lrjax.make_step` and :func:`lrjax._src.loop.population_fn`,
compiled and run once before timing, timed with ``block_until_ready``, repeats
interleaved and the minimum kept. A second process runs ``vmap`` and ``unroll``
with the members sharded over 2 XLA host devices (``unroll`` under
``shard_map``). Reported per member: the population's time / members / single.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report_util import HeadlineRow, fmt, json_block, load_result, md_table  # noqa: E402

HOWS = ("single", "vmap", "unroll", "map")
# The population variants (how, devices), in the order of the documents' table.
VARIANTS = ("vmap x1", "unroll x1", "map x1", "vmap x2", "unroll x2")


def child(args) -> dict:
    from lrjax.cli import setup_jax

    setup_jax(args.child_devices)
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from lrjax._src.batches import scale_images
    from lrjax._src.loop import population_fn
    from lrjax._src.models import cnn, mlp
    from lrjax._src.results import describe_devices, population_mesh
    from lrjax._src.step import (
        classification_loss,
        init_state,
        make_optimizer,
        make_step,
        split_model,
    )

    rng = np.random.default_rng(0)
    out = {"device": describe_devices(), "jax": jax.__version__, "models": {}}
    for name in args.models.split(","):
        conv = name == "cnn"
        batch = 128 if conv else 32
        model = (
            cnn(10, key=jax.random.key(0))
            if conv
            else mlp(784, 10, key=jax.random.key(0))
        )
        # The uint8 images scaled in front of the model, in compiled code.
        spec, params, rest = split_model(nnx.Sequential(scale_images, model))
        tx = make_optimizer(lambda lr: optax.sgd(lr, momentum=0.9), 0.01)
        step = make_step(spec, classification_loss(), tx)
        state = init_state(params, rest, tx)
        n = 1 if conv else args.mlp_steps  # the CNN dispatched, the MLP scanned
        x = rng.integers(0, 255, (n, batch, 28, 28)).astype(np.uint8)
        y = rng.integers(0, 10, (n, batch)).astype(np.int32)
        data = (jnp.asarray(x), jnp.asarray(y))
        mesh = population_mesh(args.members, "pop") if args.child_devices > 1 else None
        pop = jax.tree.map(lambda a: jnp.stack([a] * args.members), state)
        if mesh is not None:
            sharding = jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec("pop")
            )
            pop = jax.device_put(pop, sharding)

        def one(s, b, _, step=step):
            return step(s, b)

        hows = HOWS if args.child_devices == 1 else ("vmap", "unroll")
        fns = {}
        for how in hows:
            f = (
                one
                if how == "single"
                else population_fn(one, False, how, mesh if how != "vmap" else None)
            )
            if conv:
                run = jax.jit(
                    lambda s, d, f=f: f(s, jax.tree.map(lambda a: a[0], d), None),
                    donate_argnums=0,
                )
            else:
                run = jax.jit(
                    lambda s, d, f=f: jax.lax.scan(lambda c, b: f(c, b, None), s, d),
                    donate_argnums=0,
                )
            fns[how] = (run, state if how == "single" else pop)
        times: dict[str, list[float]] = {h: [] for h in fns}
        compiled = {}
        for how, (run, st) in fns.items():
            t0 = time.perf_counter()
            compiled[how] = run.lower(st, data).compile()
            s, m = compiled[how](jax.tree.map(jnp.copy, st), data)
            jax.block_until_ready((s, m))
            times[how + "_compile_s"] = time.perf_counter() - t0
        for _ in range(args.repeats):
            for how, (_, st) in fns.items():
                s = jax.tree.map(jnp.copy, st)
                jax.block_until_ready(s)
                reps = args.steps if conv else 1
                t0 = time.perf_counter()
                for _ in range(reps):
                    s, m = compiled[how](s, data)
                jax.block_until_ready((s, m))
                times[how].append((time.perf_counter() - t0) / (reps * n))
        out["models"][name] = {
            "batch": batch,
            "loop": "dispatch" if conv else "scan",
            "ms_per_update": {h: 1000 * min(times[h]) for h in fns},
            "ms_per_update_all": {h: [1000 * t for t in times[h]] for h in fns},
            "compile_s": {h: times[h + "_compile_s"] for h in fns},
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--mlp-steps", type=int, default=500, help="the MLP's scan")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", default="cnn,mlp")
    p.add_argument(
        "--out",
        default=str(Path(__file__).parent / "results" / "conv_population.json"),
    )
    p.add_argument("--child-devices", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_devices:
        print(json.dumps(child(args)))
        return 0
    common = ["--members", str(args.members), "--steps", str(args.steps)]
    common += ["--mlp-steps", str(args.mlp_steps)]
    common += ["--repeats", str(args.repeats), "--models", args.models]
    runs = {}
    for d in (1, 2):
        cmd = [sys.executable, __file__, *common, "--child-devices", str(d)]
        load = os.getloadavg()[0]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs[f"devices{d}"] = json.loads(proc.stdout.strip().splitlines()[-1])
        runs[f"devices{d}"]["load_avg_1min_before"] = load
    per_member = {}
    for name in args.models.split(","):
        single = runs["devices1"]["models"][name]["ms_per_update"]["single"]
        per_member[name] = {
            f"{how} x{d}": ms / args.members / single
            for d in (1, 2)
            for how, ms in runs[f"devices{d}"]["models"][name]["ms_per_update"].items()
            if how != "single"
        }
    doc = {
        "benchmark": f"one update of {args.members} members vs one model "
        "(BatchNorm CNN batch 128 dispatched; MLP 300-100 batch 32 scanned)"
        f" over {args.steps} / {args.mlp_steps} updates",
        "command": "python benchmarks/bench_conv_population.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "members": args.members,
        "per_member_vs_single": per_member,
        "runs": runs,
        "note": "per_member_vs_single: the population's time per update / members / "
        "one model's time per update on one device (1.0: a member costs what it "
        "costs alone). Minimum over interleaved repeats; the machine is shared "
        "(load_avg_1min_before).",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    for name, v in per_member.items():
        print(name, "  ".join(f"{k}: {x:.2f}x" for k, x in v.items()))
    return 0


# --- what benchmarks/report.py stitches into the documents -----------------------


def markdown(d: dict) -> str:
    """Per member, a population's update against one model's, for each model."""
    runs, per = d["runs"], d["per_member_vs_single"]
    hows = [h for h in VARIANTS if any(h in v for v in per.values())]
    rows, fastest = [], []
    for name, v in per.items():
        m = runs["devices1"]["models"][name]
        rows.append(
            [
                f"{name} (batch {m['batch']}, {m['loop']})",
                fmt(m["ms_per_update"]["single"]),
                *(fmt(v.get(h), ".2f") + ("x" if h in v else "") for h in hows),
            ]
        )
        one = [h for h in v if h.endswith("x1")]
        if one:
            best = min(one, key=v.get)
            fastest.append(f"{name} `{best.split()[0]}` ({v[best]:.2f}x)")
    out = md_table(
        ["model", "single: ms/update", *(f"{h} per member" for h in hows)], rows
    )
    load = ", ".join(
        f"{r['device']} {r['load_avg_1min_before']:.1f}" for r in runs.values()
    )
    r1 = runs["devices1"]
    return out + (
        f"\n\n{d['members']} members; per member: the population's time per update "
        f"/ {d['members']} / one model's (single) on one device, so 1.00x means a "
        "member costs what it costs alone; x1: on one device, x2: the members sharded "
        "over 2 XLA host devices. Fastest on one device: " + "; ".join(fastest) + "."
        f"\n\n`{d['command'].strip()}` on {r1['device']}, {d['cpu_count']} cores, "
        f"jax {r1['jax']}; load average before: {load}."
    )


def headline_rows(results: Path) -> list[HeadlineRow]:
    p = load_result(results, "conv_population")
    per = (p and p["per_member_vs_single"].get("cnn")) or {}
    return [
        (
            "CNN population, members unrolled vs vmapped (CPU, 1 device)",
            "unroll x1" in per
            and "vmap x1" in per
            and f"per member {per['unroll x1']:.2f}x (unroll) / "
            f"{per['vmap x1']:.2f}x (vmap) one model's time",
        )
    ]


BLOCKS = {"conv_population": json_block("conv_population", markdown)}
HEADLINE_ROWS = {"conv_population": headline_rows}


if __name__ == "__main__":
    raise SystemExit(main())
