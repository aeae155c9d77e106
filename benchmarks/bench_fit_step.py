"""What one update costs in ``lrjax.fit`` against ``lrjax.lr_range_test``, same work.

    python benchmarks/bench_fit_step.py [--out benchmarks/results/fit_step.json]
        [--steps 60] [--repeats 2]

The BatchNorm CNN (``lrjax.cnn``) on all 55,000 Fashion-MNIST training images,
batch 128, ``--steps`` updates through each driver with the SAME optimizer, in
turn, ``--repeats`` times (interleaved; the minimum is reported):

* ``fit_<opt>``: ``lrjax.fit`` with ``FitConfig(epochs=1, steps_per_epoch=steps,
  learning_rate=0.01)``, no validation data; ``timings.epoch_s[0] / steps``
  (after compilation, the host's work between chunks included);
* ``range_<opt>``: ``lrjax.lr_range_test`` sweeping 1e-3 -> 1e-2 over the same
  number of updates (no divergence at these lrs); ``timings.run_s / steps_run``.

``<opt>`` is ``momentum`` (SGD momentum 0.9, the range test's usual optimizer)
or ``nesterov_wd`` (Nesterov 0.9 after L2 weight decay 5e-4, what ``bench_cnn``'s
epoch trains with). ``bench_cnn`` compares fit's epoch and the range test each
with its own PyTorch loop, under different optimizers; this benchmark asks the
narrower question whether ``fit`` adds anything per update. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_find import meta  # noqa: E402

BATCH = 128


def optimizers():
    import optax

    def momentum(learning_rate):
        return optax.sgd(learning_rate, momentum=0.9)

    def nesterov_wd(learning_rate):
        return optax.chain(
            optax.add_decayed_weights(5e-4),
            optax.sgd(learning_rate, momentum=0.9, nesterov=True),
        )

    return {"momentum": momentum, "nesterov_wd": nesterov_wd}


def run(driver: str, optimizer, data, steps: int) -> dict:
    """One driver's ``steps`` updates: ms per update and the loop it chose."""
    import jax
    from flax import nnx

    import lrjax

    def model(key):  # the uint8 images scaled in front, in compiled code
        return nnx.Sequential(lrjax.scale_images, lrjax.cnn(10, key=key))

    kw = dict(key=jax.random.key(0))
    if driver == "fit":
        config = lrjax.FitConfig(
            epochs=1, batch_size=BATCH, learning_rate=0.01, steps_per_epoch=steps
        )
        r = lrjax.fit(model, optimizer, data, config=config, **kw)
        seconds, updates = r.timings.epoch_s[0], steps
    else:
        sweep = lrjax.Sweep(
            init_value=1e-3, end_value=1e-2, num_steps=steps, batch_size=BATCH
        )
        r = lrjax.lr_range_test(model, optimizer, data, sweep=sweep, **kw)
        seconds, updates = r.timings.run_s, r.steps_run
    return {
        "ms_per_update": 1e3 * seconds / updates,
        "updates": updates,
        "loop": r.timings.loop,
        "compile_s": r.timings.compile_s,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/fit_step.json")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    import lrjax

    ds = lrjax.load_dataset("fashion_mnist")
    data = (ds.x_train, ds.y_train)
    runs: dict[str, list[dict]] = {}
    print(meta()["device"], flush=True)
    for rep in range(args.repeats):
        for opt_name, opt in optimizers().items():
            for driver in ("fit", "range"):
                name = f"{driver}_{opt_name}"
                r = run(driver, opt, data, args.steps)
                runs.setdefault(name, []).append(r)
                print(f"{rep} {name}: {r['ms_per_update']:.1f} ms/update "
                      f"({r['loop']})", flush=True)  # fmt: skip
    best = {k: min(v, key=lambda r: r["ms_per_update"]) for k, v in runs.items()}
    result = {
        "benchmark": "ms per update, lrjax.fit against lrjax.lr_range_test, the "
        f"BatchNorm CNN, batch {BATCH}, the same optimizer",
        **meta(),
        "steps": args.steps,
        "repeats": args.repeats,
        "note": "min over interleaved repeats of each driver's own timing after "
        "compilation; ms_per_update_all shows the noise",
        **{
            k: {**best[k], "ms_per_update_all": [r["ms_per_update"] for r in v]}
            for k, v in runs.items()
        },
        "fit_vs_range": {
            opt: best[f"fit_{opt}"]["ms_per_update"]
            / best[f"range_{opt}"]["ms_per_update"]
            for opt in optimizers()
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["fit_vs_range"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
