"""Range-test benchmark: the seed recipe (Fashion-MNIST, MLP 300-100, SGD, batch 32,
1719 steps, 1e-5 -> 10), lrjax against a minimal hand-written JAX + optax scan of
the same work, timed in the same run.

    python benchmarks/bench_find.py [--out benchmarks/results/find.json]

Reports compile and run time separately (run = after compilation, timed with
block_until_ready), steps per second, the whole-process time of
``python -m lrjax.find --no-plot --quiet`` with a warm compilation cache, and
K = 8 seeds vmapped on one device and spread over one XLA host device per core.
lrjax's ``run_s`` includes its host work between chunks (smoothing, divergence
checks, building the next chunk's indices). Repeats are interleaved (floor,
lrjax, floor, ...) and the minimum is reported, because other processes share
the cores. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report_util import (
    HeadlineRow,
    TargetRow,
    json_block,
    load_result,
    md_table,
    where,
    yes,
)

STEPS, BATCH = 1719, 32
# The targets: specifications, not measurements.
TARGET_VS_FLOOR = 1.1  # lrjax's run time against the hand-written scan
TARGET_WHOLE_PROCESS_S = 3.5  # python -m lrjax.find, warm caches
TARGET_SEEDS_8_VS_1_CPU = 4.5  # 8 seeds against 1 on this CPU


def _data():
    from lrjax._src.data import load_dataset

    ds = load_dataset("fashion_mnist")
    return ds.x_train, ds.y_train


def meta() -> dict:
    """What every result JSON records about where it ran."""
    import jax

    from lrjax._src.results import describe_devices

    return {
        "device": describe_devices(),
        "jax": jax.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
    }


def make_floor(x, y):
    """The minimal hand-written version: one jit, one scan, no host round trip.

    Returns ``run() -> seconds`` (compiled once, here) and the compile time.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from lrjax._src.batches import batch_indices
    from lrjax._src.models import mlp, pure

    apply, params = pure(mlp(784, 10, key=jax.random.key(0)))
    sched = optax.exponential_decay(1e-5, STEPS - 1, 10 / 1e-5)  # same sweep
    tx = optax.sgd(sched)
    # 1719 full batches of 32 = one epoch of 55000 and 8 examples into the next.
    idx = batch_indices(jax.random.key(1), len(y), BATCH, STEPS)
    xd, yd = jnp.asarray(x), jnp.asarray(y)

    def loss_fn(p, xb, yb):
        logits = apply(p, xb.astype(jnp.float32) / 255.0)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def body(carry, i, xd, yd):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, xd[i], yd[i])
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    # Data enters as an argument (as in lrjax): closing over it would bake 43 MB
    # of constants into the executable.
    run = jax.jit(
        lambda p, s, idx, xd, yd: jax.lax.scan(
            lambda c, i: body(c, i, xd, yd), (p, s), idx
        )
    )
    s0 = tx.init(params)
    t0 = time.perf_counter()
    compiled = run.lower(params, s0, idx, xd, yd).compile()
    compile_s = time.perf_counter() - t0

    def once() -> float:
        t0 = time.perf_counter()
        (_, _), losses = compiled(params, s0, idx, xd, yd)
        losses.block_until_ready()
        return time.perf_counter() - t0

    return once, compile_s


def lrjax_once(x, y, seeds: int = 1) -> dict:
    """One lrjax range test of the recipe (the MLP as an NNX module)."""
    import jax
    import optax
    from flax import nnx

    import lrjax

    def build(k):  # the uint8 images scaled in front, as the command lines build it
        return nnx.Sequential(lrjax.scale_images, lrjax.mlp(784, 10, key=k))

    key = jax.random.key(0)
    r = lrjax.lr_range_test(
        build(key) if seeds == 1 else build,
        optax.sgd,
        (x, y),
        key=key,
        sweep=lrjax.Sweep(num_steps=STEPS, batch_size=BATCH),
        divergence=lrjax.Divergence(stop=False),
        population=lrjax.Population(seeds=seeds),
    )
    return {**r.timings.to_json(), "device": r.device, "steps_run": r.steps_run}


def summarize(runs: list[dict], steps: int) -> dict:
    times = [r["run_s"] for r in runs]
    return {
        "compile_s": runs[0]["compile_s"],
        "run_s": min(times),
        "run_s_all": times,
        "steps_per_s": steps / min(times),
        "loop": runs[0]["loop"],
        "device": runs[0]["device"],
    }


def seeds_on_host_devices(n_devices: int, seeds: int, repeats: int) -> dict:
    """K seeds in a subprocess with ``n_devices`` XLA host devices."""
    # The flags python -m lrjax.find --seeds K sets (lrjax.cli.setup_jax): one
    # host device per core, each on one thread.
    flags = f"--xla_force_host_platform_device_count={n_devices}"
    if n_devices > 1:
        flags += " --xla_cpu_multi_thread_eigen=false"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import bench_find as b;"
        f"x, y = b._data(); runs = [b.lrjax_once(x, y, {seeds}) for _ in "
        f"range({repeats})]; print(json.dumps(b.summarize(runs, {STEPS * seeds})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def whole_process(repeats: int) -> dict:
    """Wall time of ``python -m lrjax.find --no-plot --quiet``, warm caches."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "lrjax.find",
                    "--out",
                    tmp,
                    "--force",
                    "--no-plot",
                    "--quiet",
                ],
                check=True,
            )
            times.append(time.perf_counter() - t0)
    return {
        "command": "python -m lrjax.find --out TMP --force --no-plot --quiet",
        "first_s": times[0],
        "warm_s": min(times[1:]),
        "warm_s_all": times[1:],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/find.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed-repeats", type=int, default=2)
    args = ap.parse_args()

    import jax

    res = {
        "benchmark": "lr range test, Fashion-MNIST MLP 300-100, SGD, batch 32, "
        f"{STEPS} steps, 1e-5 -> 10",
        **meta(),
        "repeats": args.repeats,
        "seed_repeats": args.seed_repeats,
        "note": "min over interleaved repeats; the 2 cores are shared with other "
        "processes, run_s_all shows the noise. lrjax's run_s includes its host "
        "smoothing and divergence checks between its 8 chunks, and its uniform "
        "chunks compute 1720 updates (8 x 215) where the floor computes 1719.",
    }
    print(f"device: {res['device']}", flush=True)
    x, y = _data()
    floor_once, floor_compile = make_floor(x, y)
    floor_times, lrjax_runs = [], []
    for _ in range(args.repeats):
        floor_times.append(floor_once())
        lrjax_runs.append(lrjax_once(x, y))
    floor = {
        "compile_s": floor_compile,
        "run_s": min(floor_times),
        "run_s_all": floor_times,
        "steps_per_s": STEPS / min(floor_times),
    }
    one = summarize(lrjax_runs, STEPS)
    res["floor_hand_written"] = floor
    res["lrjax_1_seed"] = one
    res["lrjax_vs_floor"] = one["run_s"] / floor["run_s"]
    res["target_lrjax_vs_floor"] = TARGET_VS_FLOOR
    print(f"floor: compile {floor['compile_s']:.2f} s, run {floor['run_s']:.3f} s")
    print(
        f"lrjax: compile {one['compile_s']:.2f} s, run {one['run_s']:.3f} s "
        f"({res['lrjax_vs_floor']:.3f}x floor, {one['loop']} loop)",
        flush=True,
    )
    k = 8
    if jax.default_backend() == "cpu":
        plain = seeds_on_host_devices(1, k, args.seed_repeats)
        spread = seeds_on_host_devices(os.cpu_count() or 1, k, args.seed_repeats)
        res["seeds_8_vmap_1_device"] = plain
        res["seeds_8_host_devices"] = spread
        res["seeds_8_cost_vs_1_seed"] = {
            "vmap_1_device": plain["run_s"] / one["run_s"],
            "spread_over_host_devices": spread["run_s"] / one["run_s"],
        }
    else:
        many = summarize(
            [lrjax_once(x, y, k) for _ in range(args.seed_repeats)], STEPS * k
        )
        res["seeds_8"] = many
        res["seeds_8_cost_vs_1_seed"] = {"vmap": many["run_s"] / one["run_s"]}
    print(f"8 seeds cost vs 1: {res['seeds_8_cost_vs_1_seed']}", flush=True)
    res["whole_process"] = whole_process(args.repeats)
    print(f"whole process (warm): {res['whole_process']['warm_s']:.2f} s")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")


# --- what benchmarks/report.py stitches into the documents -----------------------


def markdown(d: dict) -> str:
    """The ``find`` block: each variant against the hand-written floor."""
    f, one = d["floor_hand_written"], d["lrjax_1_seed"]
    rows = [
        [
            "hand-written scan (floor)",
            f"{f['compile_s']:.2f}",
            f"{f['run_s']:.3f}",
            f"{f['steps_per_s']:.0f}",
            "1.00",
        ],
        [
            f"lrjax, 1 seed ({one['loop']})",
            f"{one['compile_s']:.2f}",
            f"{one['run_s']:.3f}",
            f"{one['steps_per_s']:.0f}",
            f"{d['lrjax_vs_floor']:.2f}",
        ],
    ]
    cost = d["seeds_8_cost_vs_1_seed"]
    for name, key, ck in (
        ("lrjax, 8 seeds, vmap on 1 device", "seeds_8_vmap_1_device", "vmap_1_device"),
        (
            "lrjax, 8 seeds, over host devices",
            "seeds_8_host_devices",
            "spread_over_host_devices",
        ),
        ("lrjax, 8 seeds", "seeds_8", "vmap"),
    ):
        if key in d:
            s = d[key]
            rows.append(
                [
                    f"{name} ({s['device']})",
                    f"{s['compile_s']:.2f}",
                    f"{s['run_s']:.3f}",
                    f"{s['steps_per_s']:.0f}",
                    f"{cost[ck]:.2f} (vs 1 seed)",
                ]
            )
    w = d["whole_process"]
    out = md_table(["variant", "compile s", "run s", "steps/s", "x floor"], rows)
    out += (
        f"\n\nTarget: lrjax within {d.get('target_lrjax_vs_floor', TARGET_VS_FLOOR)}x "
        f"of the floor. Whole process, `{w['command']}`: {w['warm_s']:.2f} s warm "
        f"(first {w['first_s']:.2f} s)."
    )
    return f"{out}\n\nMeasured on {where(d)}."


def target_rows(results: Path) -> list[TargetRow]:
    """Run time against the floor, the whole process, 8 seeds against one."""
    f = load_result(results, "find")
    limit = f.get("target_lrjax_vs_floor", TARGET_VS_FLOOR) if f else TARGET_VS_FLOOR
    w = f and f["whole_process"]
    cost = f and f["seeds_8_cost_vs_1_seed"]
    key = cost and next(
        k for k in ("spread_over_host_devices", "vmap", "vmap_1_device") if k in cost
    )
    return [
        (
            f"range test run time within {limit}x of a hand-written JAX loop",
            f and f"{f['lrjax_vs_floor']:.3f}x",
            f and yes(f["lrjax_vs_floor"] <= limit),
        ),
        (
            f"`python -m lrjax.find` whole process < {TARGET_WHOLE_PROCESS_S} s, warm",
            w and f"{w['warm_s']:.2f} s",
            w and yes(w["warm_s"] < TARGET_WHOLE_PROCESS_S),
        ),
        (
            f"8 seeds in at most {TARGET_SEEDS_8_VS_1_CPU}x one seed (CPU)",
            cost and f"{cost[key]:.2f}x ({key.replace('_', ' ')})",
            cost and yes(cost[key] <= TARGET_SEEDS_8_VS_1_CPU),
        ),
    ]


def headline_rows(results: Path) -> list[HeadlineRow]:
    f = load_result(results, "find")
    return [
        (
            "range test vs a hand-written JAX scan of the same sweep",
            f and f"{f['lrjax_vs_floor']:.3f}x",
        )
    ]


BLOCKS = {"find": json_block("find", markdown)}
TARGET_ROWS = {"find": target_rows}
HEADLINE_ROWS = {"find": headline_rows}


if __name__ == "__main__":
    main()
