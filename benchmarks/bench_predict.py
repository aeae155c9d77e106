"""Prediction cost of an ensemble against one model (issue #17's "prediction cost").

A snapshot ensemble of m snapshots and an ensemble of m independent runs both
predict with m models; a weight average predicts with one. This times the
forward pass (evaluation mode, softmax outputs) over the real Fashion-MNIST test
set (10,000 images) for m = 1, 3, 5 members of the MLP (300-100) and the BatchNorm
CNN, two ways: one program (the members under one ``vmap``, the batches in one
``lax.map``), and one dispatch per member and batch; ``member_probs`` picks the
second for a convolution on the CPU (:mod:`lrjax._src.loop`'s rule). Compiled first,
timed with ``block_until_ready``, the median of ``--repeats``; the variants are
interleaved.

    python benchmarks/bench_predict.py [--repeats 5] [--out FILE]

Writes ``benchmarks/results/predict.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from _report_util import json_block, load_result, md_table

OUT = Path(__file__).resolve().parent / "results" / "predict.json"
MEMBERS = (1, 3, 5)


def _members(name: str, m: int):
    """``(Model, stacked (params, model_state))`` of ``m`` freshly initialised
    members: the weights' values do not change the cost of a forward pass."""
    import jax
    import jax.numpy as jnp

    from lrjax._src import models
    from lrjax._src.step import split_model

    def build(key):
        if name == "mlp":
            return models.mlp(28 * 28, 10, key=key)
        return models.cnn(10, key=key)

    parts = [split_model(build(jax.random.key(i))) for i in range(m)]
    spec = parts[0][0]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[(p, s) for _, p, s in parts])
    return spec, stacked


def _time(fn, repeats: int) -> list[float]:
    import jax

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return times


def measure(repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from lrjax._src import ensembles
    from lrjax._src.data import load_dataset
    from lrjax._src.loop import conv_on_cpu

    ds = load_dataset("fashion_mnist")
    x = jnp.asarray(ds.x_test, jnp.float32) / 255.0
    out: dict = {}
    for name in ("mlp", "cnn"):
        variants = {}
        for m in MEMBERS:
            spec, stacked = _members(name, m)
            logits, members = ensembles._logits_fn(spec, stacked)
            variants[f"one_program_{m}"] = functools.partial(
                ensembles._probs_in_one_program, logits, members, x, 1000
            )
            variants[f"dispatched_{m}"] = functools.partial(
                ensembles._probs_dispatched, logits, members, x, 1000
            )
        chosen = (
            "dispatched"
            if conv_on_cpu(logits, ensembles._member(members, 0), x[:1])
            else "one_program"
        )
        for fn in variants.values():  # compile every variant first
            jax.block_until_ready(fn())
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(repeats):  # interleaved: load hits every variant alike
            for k, fn in variants.items():
                times[k] += _time(fn, 1)
        med = {k: float(np.median(v)) for k, v in times.items()}
        out[name] = {
            "images": int(x.shape[0]),
            "member_probs_uses": chosen,  # lrjax._src.ensembles.member_probs's rule
            "median_s": med,
            "times_s": times,
        }
        print(
            f"{name} (member_probs uses {chosen}): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in med.items()),
            flush=True,
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    import jax

    doc = {
        "description": "softmax outputs of m models over the Fashion-MNIST test set, "
        "as one program (vmap over members, lax.map over batches) and as one "
        "dispatch per member and batch",
        "models": measure(args.repeats),
        "repeats": args.repeats,
        "device": f"{jax.devices()[0].platform} x{jax.device_count()}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"written to {args.out}")
    return 0


def prediction_cost(results: Path, model: str, m: int) -> str | None:
    """``"predicting 10,000 test images: 1 model 0.12 s, 3 models 0.35 s"``, as
    ``lrjax.member_probs`` runs them (``m`` rounded up to a measured
    count)."""
    d = load_result(results, "predict")
    if d is None or model not in d["models"]:
        return None
    r = d["models"][model]
    med, how = r["median_s"], r["member_probs_uses"]
    k = min((k for k in MEMBERS if k >= m), default=max(MEMBERS))
    return (
        f"predicting {r['images']:,} test images: 1 model {med[f'{how}_1']:.2f} s, "
        f"{k} models {med[f'{how}_{k}']:.2f} s"
    )


def markdown(d: dict) -> str:
    """The table of ``predict.json``: seconds per test-set pass, each way."""
    rows = []
    for name, r in d["models"].items():
        med = r["median_s"]
        for how in ("one_program", "dispatched"):
            cells = [f"{med[f'{how}_{m}']:.2f} s" for m in MEMBERS]
            used = "yes" if r["member_probs_uses"] == how else ""
            rows.append([name.upper(), how.replace("_", " "), *cells, used])
    table = md_table(
        ["model", "how", *(f"{m} model{'s' * (m > 1)}" for m in MEMBERS),
         "`member_probs` uses it"],
        rows,
    )  # fmt: skip
    return (
        f"{table}\n\nSeconds to predict the {r['images']:,} test images (median of "
        f"{d['repeats']}; {d['device']}, {d['machine']}; load average at the end "
        f"{d['load_average'][0]:.1f})."
    )


BLOCKS = {"predict": json_block("predict", markdown)}


if __name__ == "__main__":
    raise SystemExit(main())
