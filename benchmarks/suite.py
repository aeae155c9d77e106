"""One accelerator suite: every headline figure of lrjax in one command, one JSON.

    python benchmarks/suite.py [--size smoke|full]
        [--out benchmarks/results/suite_<platform>.json]

Runs, on whatever JAX's default backend is (no platform flags are set: on a GPU
machine it runs on the GPU, here on the CPU as one XLA device):

* ``range_test``: :func:`lrjax.lr_range_test` of the seed recipe (MLP 300-100,
  SGD, batch 32, exponential sweep 1e-5 -> 10) with 1 seed and with 8 seeds
  (vmapped), and the hand-written floor of the same sweep (one jitted
  ``lax.scan`` of a minimal step, no host work);
* ``population``: :func:`lrjax.lr_grid`, 36 models (12 lrs x 3 seeds) for one
  epoch with evaluation, and one model alone the same way;
* ``train``: one epoch of :func:`lrjax.fit` on the MLP (SGD 0.05, batch 32,
  validation after the epoch) against the hand-written epoch of
  ``benchmarks/bench_train.py`` (the minimum over the epochs run);
* ``cnn``: the issue's CNN (Conv3x3-32-BN-ReLU-MaxPool, Conv3x3-64-BN-ReLU-MaxPool,
  Dense 128 + Dropout 0.3, Dense 10; :func:`lrjax.cnn`), SGD momentum 0.9,
  batch 128: a range test against a hand-written floor that runs in the loop
  lrjax chose (per-step dispatch on XLA:CPU, a scan elsewhere; see
  :mod:`lrjax._src.loop`), and a few steps of :func:`lrjax.fit`.

Every program is compiled before its clock starts and every clock stops on
``block_until_ready`` (or on the host reading the results); lrjax's times include
its host work between compiled chunks. Repeats of a comparison are interleaved
(floor, lrjax, floor, ...) and the minimum is reported. ``--size smoke`` runs the
same code on tiny synthetic arrays (CI, seconds); ``--size full`` on real
Fashion-MNIST (:func:`lrjax.load_dataset`).

Targets on a GPU, printed as met/missed wherever the suite runs: the range test's
per-step time within 1.1x of the floor; 8 seeds at most 1.5x one seed; 36 models
at most 3x one model.

Time on one H200 (never measured: no GPU was lent so far). The JSON's
``gpu_estimate`` is computed by this script from the run it just made, as

    startup (30 s: CUDA init, imports, Fashion-MNIST to the device)
    + sum over programs of 2 x its compile time measured here (GPU autotuning)
    + sum over timed runs of steps x max(FLOPs per step / 10 TFLOP/s, 0.3 ms)

with FLOPs per step from XLA's cost analysis of the hand-written step (x the
members it trains), 10 TFLOP/s being ~15% of an H200's 67 TFLOP/s float32 peak,
and 0.3 ms per step a pessimistic floor for launching one small step's kernels.
XLA counts 36.7 MFLOP per MLP step (batch 32) and 3.13 GFLOP per CNN step (batch
128), so at full size every timed step sits at the 0.3 ms floor (the 36-model
step is 1.3 GFLOP, 0.13 ms) and the run term is about 7 s (about 22,000 timed
steps). The compile term dominates: about 15 programs, 1-2 s each on an idle
CPU, so about 1.5 minutes in all on the GPU; it is inflated when this CPU is
shared (the compile times are measured under whatever load there is).
The measured CPU wall time is in the same JSON (``wall_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report_util import NOT_MEASURED, TargetRow, load_result, md_table, yes  # noqa: E402

SIZES = {
    # tiny synthetic arrays: the same programs, compiled and run in seconds
    "smoke": {
        "n_train": 512,
        "n_val": 256,
        "range_steps": 16,
        "seeds": 8,
        "grid_lrs": 12,
        "grid_seeds": 3,
        "fit_epochs": 1,
        "cnn_steps": 4,
        "cnn_fit_steps": 2,
        "repeats": 1,
    },
    # real Fashion-MNIST: a whole-epoch sweep (8 chunks of 215 updates = 55040
    # examples), full-epoch populations and fits, a one-epoch CNN sweep
    "full": {
        "n_train": None,
        "n_val": None,
        "range_steps": 1720,
        "seeds": 8,
        "grid_lrs": 12,
        "grid_seeds": 3,
        "fit_epochs": 2,
        "cnn_steps": 429,
        "cnn_fit_steps": 50,
        "repeats": 2,
    },
}
BATCH, CNN_BATCH = 32, 128
SWEEP = (1e-5, 10.0)
TARGETS = {
    "range_test_vs_floor": 1.1,
    "seeds_8_vs_1": 1.5,
    "population_36_vs_1": 3.0,
}
# The GPU time model (see the docstring).
GPU_STARTUP_S, GPU_COMPILE_FACTOR = 30.0, 2.0
GPU_FLOPS, GPU_STEP_FLOOR_S = 10e12, 3e-4


def load(size: str):
    """``(x, y, xv, yv)``: uint8 images [N, 28, 28] and int labels."""
    import numpy as np

    cfg = SIZES[size]
    if size == "smoke":
        rng = np.random.default_rng(0)
        n, nv = cfg["n_train"], cfg["n_val"]
        y = rng.integers(0, 10, n + nv).astype(np.int32)
        x = rng.integers(0, 120, (n + nv, 28, 28)).astype(np.uint8)
        for c in range(10):  # learnable: class c lights up rows 2c..2c+2
            x[y == c, 2 * c : 2 * c + 3] += 120
        return x[:n], y[:n], x[n:], y[n:]
    from lrjax._src.data import load_dataset

    ds = load_dataset("fashion_mnist")
    return ds.x_train, ds.y_train, ds.x_val, ds.y_val


def make_mlp(key):
    from lrjax._src.models import mlp

    return mlp(784, 10, key=key)


def make_cnn(key):
    """The issue's CNN: ``lrjax.cnn`` (reshape-and-max pooling)."""
    from lrjax._src import models

    return models.cnn(10, key=key)


def scaled(make):
    """``make``'s model behind :func:`lrjax.scale_images`, as the command lines
    build it: the uint8 images scaled in compiled code (the floor scales them
    itself, the same op)."""
    from flax import nnx

    from lrjax._src.batches import scale_images

    def build(key):
        return nnx.Sequential(scale_images, make(key))

    return build


def momentum(lr):
    import optax

    return optax.sgd(lr, momentum=0.9)


def flops_of(lowered) -> float | None:
    """XLA's FLOP count of a lowered program (None where there is none)."""
    try:
        cost = lowered.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    value = (cost or {}).get("flops")
    return float(value) if value else None


class Floor:
    """The hand-written range test: a minimal step of ``module`` (its params,
    its other state carried along, e.g. BatchNorm statistics and Dropout's rng),
    compiled once as a ``lax.scan`` over the sweep or as one step dispatched
    per update; data on the device, batches gathered by index."""

    def __init__(self, module, opt, x, y, steps: int, batch: int, loop: str):
        import jax
        import jax.numpy as jnp
        import optax
        from flax import nnx

        from lrjax._src.batches import batch_indices

        module.train()
        graphdef, self.params, self.rest = nnx.split(module, nnx.Param, ...)
        lo, hi = SWEEP
        self.tx = opt(optax.exponential_decay(lo, steps - 1, hi / lo))
        self.xd, self.yd = jnp.asarray(x), jnp.asarray(y)
        self.idx = batch_indices(jax.random.key(1), len(y), batch, steps)
        self.loop, self.steps = loop, steps
        tx = self.tx

        def step(carry, i, xd, yd):
            params, rest, opt_state = carry

            def loss_fn(p):
                m = nnx.merge(graphdef, p, rest, copy=True)
                logits = m(xd[i].astype(jnp.float32) / 255.0)
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, yd[i])
                return loss.mean(), nnx.split(m, nnx.Param, ...)[2]

            (loss, rest), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), rest, opt_state), loss

        t0 = time.perf_counter()
        one = jax.jit(step, donate_argnums=0)
        lowered = one.lower(self.fresh(), self.idx[0], self.xd, self.yd)
        self.flops_per_step = flops_of(lowered)
        if loop == "dispatch":
            self.run_c = lowered.compile()
            self.rows = [self.idx[i] for i in range(steps)]
        else:
            scan = jax.jit(
                lambda c, idx, xd, yd: jax.lax.scan(
                    lambda c, i: step(c, i, xd, yd), c, idx
                ),
                donate_argnums=0,
            )
            self.run_c = scan.lower(self.fresh(), self.idx, self.xd, self.yd).compile()
        self.compile_s = time.perf_counter() - t0

    def fresh(self):
        import jax

        copy = lambda t: jax.tree.map(lambda a: a.copy(), t)  # noqa: E731
        return copy(self.params), copy(self.rest), self.tx.init(self.params)

    def __call__(self) -> float:
        """Seconds of one sweep, from a fresh state, after compilation."""
        import jax

        carry = jax.block_until_ready(self.fresh())
        t0 = time.perf_counter()
        if self.loop == "dispatch":
            for row in self.rows:
                carry, loss = self.run_c(carry, row, self.xd, self.yd)
        else:
            carry, loss = self.run_c(carry, self.idx, self.xd, self.yd)
        jax.block_until_ready(loss)
        return time.perf_counter() - t0


def range_test(make, opt, x, y, steps, batch, seeds=1, loop="auto") -> dict:
    import jax

    import lrjax

    key = jax.random.key(0)
    make = scaled(make)
    r = lrjax.lr_range_test(
        make(key) if seeds == 1 else make,
        opt,
        (x, y),
        key=key,
        sweep=lrjax.Sweep(num_steps=steps, batch_size=batch),
        divergence=lrjax.Divergence(stop=False),
        population=lrjax.Population(seeds=seeds),
        execution=lrjax.Execution(loop=loop),
    )
    t = r.timings
    return {
        "compile_s": t.compile_s,
        "run_s": t.run_s,
        "loop": t.loop,
        "steps": r.steps_run,
        "memory": r.config.memory.to_json(),
    }


def best(runs: list[dict], steps: int, members: int = 1, **extra) -> dict:
    """The least disturbed of interleaved runs, with its per-step time."""
    times = [r["run_s"] for r in runs]
    out = {k: v for k, v in runs[0].items() if k != "run_s"}
    out.update(
        run_s=min(times),
        run_s_all=times,
        steps=steps,
        members=members,
        ms_per_step=1e3 * min(times) / steps,
        **extra,
    )
    return out


def bench_range_test(cfg, x, y) -> dict:
    import jax
    import optax

    steps, rep = cfg["range_steps"], cfg["repeats"]
    floor = Floor(make_mlp(jax.random.key(0)), optax.sgd, x, y, steps, BATCH, "scan")
    floors, ones = [], []
    for _ in range(rep):
        floors.append({"run_s": floor(), "compile_s": floor.compile_s})
        ones.append(range_test(make_mlp, optax.sgd, x, y, steps, BATCH))
    many = [
        range_test(make_mlp, optax.sgd, x, y, steps, BATCH, seeds=cfg["seeds"])
        for _ in range(max(1, rep - 1))
    ]
    out = {
        "floor": best(floors, steps, loop="scan", flops_per_step=floor.flops_per_step),
        "lrjax_1_seed": best(ones, steps),
        f"lrjax_{cfg['seeds']}_seeds": best(many, steps, cfg["seeds"]),
    }
    out["vs_floor"] = out["lrjax_1_seed"]["run_s"] / out["floor"]["run_s"]
    out["seeds_vs_1"] = (
        out[f"lrjax_{cfg['seeds']}_seeds"]["run_s"] / out["lrjax_1_seed"]["run_s"]
    )
    return out


def grid_once(x, y, xv, yv, lrs, seeds) -> dict:
    import jax
    import optax

    from lrjax._src.lr_grid import lr_grid
    from lrjax._src.specs import GridConfig, Population

    r = lr_grid(scaled(make_mlp), optax.sgd, (x, y), (xv, yv), lrs=lrs,
                key=jax.random.key(0),
                config=GridConfig(batch_size=BATCH),
                population=Population(seeds=seeds))  # fmt: skip
    return {
        "compile_s": r.timings.compile_s,
        "run_s": r.timings.run_s,
        "loop": r.timings.loop,
        "memory_estimate_bytes": r.memory.estimate.estimate_bytes,
        "best_lr": r.best_lr,
        "best_accuracy": r.best_accuracy,
    }


def bench_population(cfg, x, y, xv, yv) -> dict:
    import numpy as np

    lrs = np.geomspace(1e-3, 3.0, cfg["grid_lrs"])
    n = cfg["grid_lrs"] * cfg["grid_seeds"]
    steps = len(y) // BATCH
    ones = [grid_once(x, y, xv, yv, [0.1], 1) for _ in range(cfg["repeats"])]
    pops = [
        grid_once(x, y, xv, yv, lrs, cfg["grid_seeds"])
        for _ in range(max(1, cfg["repeats"] - 1))
    ]
    out = {
        "one_model": best(ones, steps),
        f"population_{n}": best(pops, steps, n),
    }
    out["population_vs_1"] = out[f"population_{n}"]["run_s"] / out["one_model"]["run_s"]
    return out


def bench_train(cfg, x, y, xv, yv) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from bench_train import hand_written
    from flax import nnx

    from lrjax._src.batches import scale_images
    from lrjax._src.fit import FitConfig, fit
    from lrjax._src.models import pure

    module = make_mlp(jax.random.key(0))
    apply, params = pure(module)
    model = nnx.Sequential(scale_images, module)  # the hand loop scales, the same op
    epochs, lr = cfg["fit_epochs"], 0.05
    lrjax_epochs, hand_epochs, compiles = [], [], {"lrjax": [], "hand": []}
    for _ in range(max(1, cfg["repeats"] - 1)):
        r = fit(model, optax.sgd, (x, y), key=jax.random.key(1),
                config=FitConfig(epochs=epochs, batch_size=BATCH, learning_rate=lr),
                val_data=(xv, yv))  # fmt: skip
        lrjax_epochs += r.timings.epoch_s
        compiles["lrjax"].append(r.timings.compile_s)
        times, c = hand_written(apply, params, jnp.asarray(x), jnp.asarray(y),
                                jnp.asarray(xv), jnp.asarray(yv), lr, BATCH, epochs,
                                jax.random.key(1))  # fmt: skip
        hand_epochs += times
        compiles["hand"].append(c)
    steps = len(y) // BATCH
    out = {
        "floor": best([{"run_s": t} for t in hand_epochs], steps,
                      compile_s=min(compiles["hand"])),  # fmt: skip
        "lrjax_fit": best([{"run_s": t} for t in lrjax_epochs], steps,
                          compile_s=min(compiles["lrjax"]), loop=r.timings.loop),
    }  # fmt: skip
    out["vs_floor"] = out["lrjax_fit"]["run_s"] / out["floor"]["run_s"]
    return out


def bench_cnn(cfg, x, y, xv, yv) -> dict:
    import jax

    from lrjax._src.fit import FitConfig, fit

    steps, rep = cfg["cnn_steps"], max(1, cfg["repeats"] - 1)
    ones = [range_test(make_cnn, momentum, x, y, steps, CNN_BATCH)]
    loop = ones[0]["loop"]
    floor = Floor(make_cnn(jax.random.key(0)), momentum, x, y, steps, CNN_BATCH,
                  "dispatch" if loop == "dispatch" else "scan")  # fmt: skip
    floors = [{"run_s": floor(), "compile_s": floor.compile_s}]
    for _ in range(rep - 1):
        ones.append(range_test(make_cnn, momentum, x, y, steps, CNN_BATCH))
        floors.append({"run_s": floor(), "compile_s": floor.compile_s})
    fit_steps = cfg["cnn_fit_steps"]
    r = fit(scaled(make_cnn)(jax.random.key(2)), momentum, (x, y),
            key=jax.random.key(1),
            config=FitConfig(epochs=2, batch_size=CNN_BATCH, learning_rate=0.01,
                             steps_per_epoch=fit_steps))  # fmt: skip
    out = {
        "floor": best(floors, steps, loop=floor.loop,
                      flops_per_step=floor.flops_per_step),  # fmt: skip
        "lrjax_range_test": best(ones, steps),
        "lrjax_fit": best([{"run_s": t} for t in r.timings.epoch_s], fit_steps,
                          compile_s=r.timings.compile_s, loop=r.timings.loop),
    }  # fmt: skip
    out["vs_floor"] = out["lrjax_range_test"]["run_s"] / out["floor"]["run_s"]
    return out


def gpu_estimate(res: dict) -> dict:
    """Seconds the same suite would take on one H200, from this run (docstring)."""
    mlp_flops = res["range_test"]["floor"]["flops_per_step"] or 0.0
    cnn_flops = res["cnn"]["floor"]["flops_per_step"] or 0.0
    compile_s, run_s = 0.0, 0.0

    def add(entry, flops_per_member_step, steps=None):
        nonlocal compile_s, run_s
        compile_s += GPU_COMPILE_FACTOR * entry.get("compile_s", 0.0)
        steps = entry["steps"] if steps is None else steps
        members = entry.get("members", 1)
        per_step = max(flops_per_member_step * members / GPU_FLOPS, GPU_STEP_FLOOR_S)
        run_s += len(entry["run_s_all"]) * steps * per_step

    rt = res["range_test"]
    for _name, entry in rt.items():
        if isinstance(entry, dict):
            add(entry, mlp_flops)
    for _name, entry in res["population"].items():
        if isinstance(entry, dict):  # + an evaluation per epoch, ~1/3 of a step
            add(entry, mlp_flops)
    for _name, entry in res["train"].items():
        if isinstance(entry, dict):
            add(entry, mlp_flops)
    for _name, entry in res["cnn"].items():
        if isinstance(entry, dict):
            add(entry, cnn_flops)
    total = GPU_STARTUP_S + compile_s + run_s
    return {
        "total_s": total,
        "startup_s": GPU_STARTUP_S,
        "compile_s": compile_s,
        "run_s": run_s,
        "model": f"startup {GPU_STARTUP_S:g} s + {GPU_COMPILE_FACTOR:g} x each "
        f"compile measured here + every timed run's steps x max(FLOPs per step x "
        f"members / {GPU_FLOPS / 1e12:g} TFLOP/s, {GPU_STEP_FLOOR_S * 1e3:g} ms)",
        "mlp_flops_per_step": mlp_flops,
        "cnn_flops_per_step": cnn_flops,
    }


def targets(res: dict) -> dict:
    seeds = SIZES[res["size"]]["seeds"]
    measured = {
        "range_test_vs_floor": res["range_test"]["vs_floor"],
        "seeds_8_vs_1": res["range_test"]["seeds_vs_1"] if seeds == 8 else None,
        "population_36_vs_1": res["population"]["population_vs_1"],
    }
    return {
        name: {
            "measured": value,
            "target": TARGETS[name],
            "met": None if value is None else bool(value <= TARGETS[name]),
        }
        for name, value in measured.items()
    }


def table(res: dict) -> str:
    rows = [("figure", "ms/step", "x floor / x one")]
    for section in ("range_test", "population", "train", "cnn"):
        sec = res[section]
        for name, entry in sec.items():
            if isinstance(entry, dict):
                rows.append((f"{section}.{name}", f"{entry['ms_per_step']:.3f}", ""))
        for k, v in sec.items():
            if k.endswith(("vs_floor", "vs_1")):
                rows.append((f"{section}.{k}", "", f"{v:.3f}"))
    lines = [f"{a:38s} {b:>10s} {c:>16s}" for a, b, c in rows]
    for name, t in res["targets"].items():
        m = t["measured"]
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "missed")
        shown = "-" if m is None else f"{m:.3f}"
        lines.append(f"target {name}: {shown} <= {t['target']} {verdict}")
    g = res["gpu_estimate"]
    lines.append(
        f"device {res['device']}, jax {res['jax']}, wall {res['wall_s']:.1f} s; "
        f"estimated on one H200: {g['total_s']:.0f} s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=tuple(SIZES), default="full")
    p.add_argument(
        "--out", default=None, help="default benchmarks/results/suite_<platform>.json"
    )
    args = p.parse_args(argv)

    import jax

    from lrjax._src.results import describe_devices

    cfg = SIZES[args.size]
    backend = jax.default_backend()
    res = {
        "suite": "lrjax accelerator suite",
        "size": args.size,
        "config": cfg,
        "device": describe_devices(),
        "backend": backend,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "batch_size": BATCH,
        "cnn_batch_size": CNN_BATCH,
    }
    print(f"device: {res['device']}, jax {res['jax']}, size {args.size}", flush=True)
    x, y, xv, yv = load(args.size)
    res["n_train"], res["n_val"] = len(y), len(yv)
    for name, fn in (
        ("range_test", lambda: bench_range_test(cfg, x, y)),
        ("population", lambda: bench_population(cfg, x, y, xv, yv)),
        ("train", lambda: bench_train(cfg, x, y, xv, yv)),
        ("cnn", lambda: bench_cnn(cfg, x, y, xv, yv)),
    ):
        t0 = time.perf_counter()
        res[name] = fn()
        res[name]["section_s"] = time.perf_counter() - t0
        print(f"{name}: {res[name]['section_s']:.1f} s", flush=True)
    res["targets"] = targets(res)
    res["gpu_estimate"] = gpu_estimate(res)
    res["wall_s"] = time.perf_counter() - t_start
    out = Path(args.out or f"benchmarks/results/suite_{backend}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    print(f"wrote {out}")
    return 0


# --- what benchmarks/report.py stitches into the documents -----------------------


def markdown(results: Path) -> str:
    """The ``suite`` block: each platform's ratios and targets, and the command."""
    parts = []
    for backend in ("cpu", "gpu"):
        d = load_result(results, f"suite_{backend}")
        if d is None:
            parts.append(f"`suite_{backend}.json`: {NOT_MEASURED}")
            continue
        rows = []
        for section, ratios in (
            ("range_test", ("vs_floor", "seeds_vs_1")),
            ("population", ("population_vs_1",)),
            ("train", ("vs_floor",)),
            ("cnn", ("vs_floor",)),
        ):
            s = d.get(section)
            if s is None:
                continue
            for r in ratios:
                rows.append([section, r, f"{s[r]:.3f}x", f"{s['section_s']:.0f}"])
        out = md_table(["section", "ratio", "measured", "section s"], rows)
        t = [
            [k, f"{v['measured']:.3f}", f"{v['target']:g}", yes(v["met"])]
            for k, v in d["targets"].items()
        ]
        out += "\n\n" + md_table(["target", "measured", "target", "met?"], t)
        g = d.get("gpu_estimate")
        out += (
            f"\n\n`suite_{backend}.json`: `python benchmarks/suite.py "
            f"{' '.join(d['argv'])}` on {d['device']}, {d['cpu_count']} cores, jax "
            f"{d['jax']}; {d['wall_s']:.0f} s wall"
            + (
                f"; estimated {g['total_s']:.0f} s on one GPU ({g['model']})"
                if g
                else ""
            )
            + "."
        )
        parts.append(out)
    return "\n\n".join(parts)


def target_rows(results: Path) -> list[TargetRow]:
    """The GPU's targets, as the GPU run (or else the CPU run) recorded them."""
    gpu = load_result(results, "suite_gpu")
    ref = gpu or load_result(results, "suite_cpu")
    rows: list[TargetRow] = []
    for key, what, one in (
        ("seeds_8_vs_1", "8 seeds", "one seed"),
        ("population_36_vs_1", "36 models", "one model"),
    ):
        g = gpu and gpu["targets"][key]
        target = ref["targets"][key]["target"] if ref else None
        rows.append(
            (
                f"GPU: {what} "
                + ("against " if target is None else f"at most {target:g}x ")
                + one,
                g and f"{g['measured']:.2f}x ({gpu['device']})",
                g and yes(g["met"]),
            )
        )
    return rows


BLOCKS = {"suite": markdown}
TARGET_ROWS = {"suite": target_rows}


if __name__ == "__main__":
    raise SystemExit(main())
