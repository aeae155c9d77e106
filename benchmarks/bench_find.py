"""Range-test benchmark: the seed recipe (Fashion-MNIST, MLP 300-100, SGD, batch 32,
1719 steps, 1e-5 -> 10), lrjax against a minimal hand-written JAX + optax scan of
the same work, timed in the same run.

    python benchmarks/bench_find.py [--out benchmarks/results/find.json]

Reports compile and run time separately (run = after compilation, timed with
block_until_ready), steps per second, the whole-process time of
``python -m lrjax.find`` with a warm compilation cache, and K = 8 seeds vmapped on
one device and spread over one XLA host device per core. Nothing is asserted.
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

STEPS, BATCH = 1719, 32


def _data():
    from lrjax.data import load_dataset

    ds = load_dataset("fashion_mnist")
    return ds.x_train, ds.y_train


def floor_loop(x, y, repeats: int) -> dict:
    """The minimal hand-written version: one jit, one scan, no host round trip."""
    import jax
    import jax.numpy as jnp
    import optax

    from lrjax.models import mlp
    from lrjax.training import batch_indices

    apply, params = mlp(784, 10, key=jax.random.key(0))
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
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        (_, _), losses = compiled(params, s0, idx, xd, yd)
        losses.block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"compile_s": compile_s, "run_s": min(times), "run_s_all": times}


def lrjax_run(x, y, repeats: int, seeds: int = 1) -> dict:
    import jax
    import optax

    import lrjax

    apply, params = lrjax.mlp(784, 10, key=jax.random.key(0))

    def init(k):
        return lrjax.mlp(784, 10, key=k)[1]

    times, compiles = [], []
    for _ in range(repeats):
        r = lrjax.lr_range_test(
            apply,
            params if seeds == 1 else init,
            optax.sgd,
            x,
            y,
            key=jax.random.key(0),
            num_steps=STEPS,
            seeds=seeds,
            stop_on_divergence=False,
        )
        times.append(r.timings["run_s"])
        compiles.append(r.timings["compile_s"])
    return {
        "compile_s": compiles[0],
        "run_s": min(times),
        "run_s_all": times,
        "steps_per_s": STEPS * seeds / min(times),
        "device": r.device,
    }


def seeds_on_host_devices(n_devices: int, seeds: int) -> dict:
    """Runs :func:`lrjax_run` in a subprocess with ``n_devices`` XLA host devices."""
    # The flags python -m lrjax.find --seeds K sets (lrjax.cli.setup_jax): one
    # host device per core, each on one thread.
    flags = f"--xla_force_host_platform_device_count={n_devices}"
    if n_devices > 1:
        flags += " --xla_cpu_multi_thread_eigen=false"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import bench_find as b;"
        f"x, y = b._data(); print(json.dumps(b.lrjax_run(x, y, 2, seeds={seeds})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def whole_process(repeats: int = 3) -> dict:
    """Wall time of ``python -m lrjax.find`` (plot included), warm caches."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "lrjax.find",
                    "--quiet",
                    "--out",
                    os.path.join(tmp, str(i)),
                ],
                check=True,
            )
            times.append(time.perf_counter() - t0)
    return {
        "cold_or_first_s": times[0],
        "warm_s": min(times[1:]),
        "warm_s_all": times[1:],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/find.json")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import jax

    from lrjax.training import describe_devices

    device = describe_devices()
    print(f"device: {device}", flush=True)
    x, y = _data()
    floor = floor_loop(x, y, args.repeats)
    one = lrjax_run(x, y, args.repeats)
    print(f"floor: compile {floor['compile_s']:.2f} s, run {floor['run_s']:.3f} s")
    print(
        f"lrjax: compile {one['compile_s']:.2f} s, run {one['run_s']:.3f} s "
        f"({one['run_s'] / floor['run_s']:.2f}x floor)",
        flush=True,
    )
    res = {
        "benchmark": "lr range test, Fashion-MNIST MLP 300-100, SGD, batch 32, "
        f"{STEPS} steps, 1e-5 -> 10",
        "device": device,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "floor_hand_written": floor,
        "lrjax_1_seed": one,
        "lrjax_vs_floor": one["run_s"] / floor["run_s"],
    }
    if jax.default_backend() == "cpu":
        k = 8
        plain = seeds_on_host_devices(1, k)
        spread = seeds_on_host_devices(os.cpu_count() or 1, k)
        res["seeds_8_vmap_1_device"] = plain
        res["seeds_8_host_devices"] = spread
        res["seeds_8_cost_vs_1_seed"] = {
            "vmap_1_device": plain["run_s"] / one["run_s"],
            "spread_over_host_devices": spread["run_s"] / one["run_s"],
        }
    else:
        k = 8
        many = lrjax_run(x, y, args.repeats, seeds=k)
        res["seeds_8"] = many
        res["seeds_8_cost_vs_1_seed"] = {"vmap": many["run_s"] / one["run_s"]}
    print(f"8 seeds cost vs 1: {res['seeds_8_cost_vs_1_seed']}", flush=True)
    res["whole_process"] = whole_process()
    print(f"whole process (warm): {res['whole_process']['warm_s']:.2f} s")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
