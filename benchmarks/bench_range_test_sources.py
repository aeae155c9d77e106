"""The seed recipe's range test fed three ways, timed side by side in one run.

    python benchmarks/bench_range_test_sources.py [--out
        benchmarks/results/range_test_sources.json]

* ``array``: ``(x, y)`` in memory, the MLP as an NNX module (the default path:
  the data go to the device once, the compiled chunk gathers batches by index);
* ``generator``: the same recipe fed by a Python generator yielding numpy
  batches ``(x[idx], y[idx])`` one by one (stacked on the host per chunk and
  transferred while the previous chunk computes);
* ``pure``: the array path with the MLP as a pure function,
  ``lrjax._src.models.pure(mlp)`` and ``loss_fn=lrjax.classification_loss(apply)``.

The uint8 images are scaled in compiled code by :func:`lrjax.scale_images`: the
module is ``nnx.Sequential(lrjax.scale_images, mlp)``, the pure function's
loss scales them before ``apply``.

Fashion-MNIST, MLP 300-100, SGD, batch 32, 1719 steps, 1e-5 -> 10, no early stop.
Each repeat runs the three in turn; the minimum ``run_s`` (after compilation,
host checks between chunks included) is reported. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report_util import HeadlineRow, json_block, load_result, md_table, where  # noqa: E402
from bench_find import BATCH, STEPS, _data, meta  # noqa: E402

# The targets, written into the JSON with the measurements.
TARGET_GENERATOR_VS_ARRAY = 1.25  # a generator's sweep against the arrays'
TARGET_NNX_VS_PURE = 1.03  # the NNX module against the same MLP as a function


def variant(name: str, x, y) -> dict:
    import jax
    import numpy as np
    import optax
    from flax import nnx

    import lrjax
    from lrjax._src.batches import batch_indices
    from lrjax._src.models import pure

    key = jax.random.key(0)
    mlp = lrjax.mlp(784, 10, key=key)
    # The uint8 images scaled in compiled code: in front of the module, or in
    # the pure function's loss.
    module = nnx.Sequential(lrjax.scale_images, mlp)
    kw = dict(key=key, divergence=lrjax.Divergence(stop=False))
    sweep = lrjax.Sweep(num_steps=STEPS, batch_size=BATCH)
    if name == "array":
        r = lrjax.lr_range_test(module, optax.sgd, (x, y), sweep=sweep, **kw)
    elif name == "pure":
        apply, params = pure(mlp)
        r = lrjax.lr_range_test(
            params,
            optax.sgd,
            (x, y),
            sweep=sweep,
            loss_fn=lrjax.classification_loss(
                lambda p, xb: apply(p, lrjax.scale_images(xb))
            ),
            **kw,
        )
    elif name == "generator":
        # The same batch order as the array path, drawn on the host; endless, so
        # the last (uniform) chunk is as long as the others.
        order = np.asarray(batch_indices(key, len(y), BATCH, 2 * STEPS))

        def batches():
            while True:
                for idx in order:
                    yield x[idx], y[idx]

        sweep = lrjax.Sweep(num_steps=STEPS)  # the iterable's batches as they come
        r = lrjax.lr_range_test(module, optax.sgd, batches(), sweep=sweep, **kw)
    else:
        raise ValueError(name)
    return {**r.timings.to_json(), "steps_run": r.steps_run, "data": r.config.data}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/range_test_sources.json")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    res = {
        "benchmark": "lr range test data sources and model forms, Fashion-MNIST "
        f"MLP 300-100, SGD, batch {BATCH}, {STEPS} steps, 1e-5 -> 10",
        **meta(),
        "repeats": args.repeats,
        "note": "min over interleaved repeats; the 2 cores are shared with other "
        "processes, run_s_all shows the noise",
    }
    print(f"device: {res['device']}", flush=True)
    x, y = _data()
    names = ("array", "generator", "pure")
    runs = {n: [] for n in names}
    for _ in range(args.repeats):
        for n in names:
            runs[n].append(variant(n, x, y))
            print(f"{n}: run {runs[n][-1]['run_s']:.3f} s", flush=True)
    for n in names:
        times = [r["run_s"] for r in runs[n]]
        res[n] = {
            "compile_s": min(r["compile_s"] for r in runs[n]),
            "run_s": min(times),
            "run_s_all": times,
            "steps_per_s": STEPS / min(times),
            "loop": runs[n][0]["loop"],
            "data": runs[n][0]["data"],
        }
    res["generator_vs_array"] = res["generator"]["run_s"] / res["array"]["run_s"]
    res["target_generator_vs_array"] = TARGET_GENERATOR_VS_ARRAY
    res["nnx_vs_pure"] = res["array"]["run_s"] / res["pure"]["run_s"]
    res["target_nnx_vs_pure"] = TARGET_NNX_VS_PURE
    print(
        f"generator/array {res['generator_vs_array']:.3f}x, "
        f"nnx/pure {res['nnx_vs_pure']:.3f}x"
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")


# --- what benchmarks/report.py stitches into the documents -----------------------


def markdown(d: dict) -> str:
    """The ``range_test_sources`` block: each source against the arrays."""
    rows = []
    for n, what in (
        ("array", "arrays, NNX module"),
        ("generator", "generator of numpy batches, NNX module"),
        ("pure", "arrays, pure function"),
    ):
        v = d[n]
        rows.append(
            [
                what,
                f"{v['compile_s']:.2f}",
                f"{v['run_s']:.3f}",
                f"{v['steps_per_s']:.0f}",
                f"{v['run_s'] / d['array']['run_s']:.2f}",
            ]
        )
    out = md_table(["variant", "compile s", "run s", "steps/s", "x arrays"], rows)
    return out + (
        f"\n\ngenerator / arrays: {d['generator_vs_array']:.2f}x "
        f"(target <= {d['target_generator_vs_array']}); NNX / pure: "
        f"{d['nnx_vs_pure']:.3f}x (target <= {d['target_nnx_vs_pure']})."
        f"\n\nMeasured on {where(d)}."
    )


def headline_rows(results: Path) -> list[HeadlineRow]:
    s = load_result(results, "range_test_sources")
    return [
        (
            "same sweep fed by a Python generator / the MLP as a pure function",
            s
            and f"{s['generator_vs_array']:.2f}x / "
            f"{s['pure']['run_s'] / s['array']['run_s']:.2f}x the array, NNX path",
        )
    ]


BLOCKS = {"range_test_sources": json_block("range_test_sources", markdown)}
HEADLINE_ROWS = {"range_test_sources": headline_rows}


if __name__ == "__main__":
    main()
