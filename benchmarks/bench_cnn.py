"""The CNN on XLA:CPU: lrjax against hand-written JAX and a plain PyTorch CPU loop.

    python benchmarks/bench_cnn.py [--out benchmarks/results/cnn.json]
        [--parts steps,epoch,range,augment] [--repeats 2]
        [--steps 60] [--scan-steps 4] [--epoch-steps N] [--n-train N]

The CNN: Conv3x3-32-BN-ReLU-MaxPool, Conv3x3-64-BN-ReLU-MaxPool, Dense 128 +
Dropout 0.3, Dense 10 (``lrjax.cnn``; its pools are reshape-and-max, whose
backward is cheap on XLA:CPU, unlike ``reduce_window``'s; the PyTorch copy has
the same layers with ``nn.MaxPool2d``), on Fashion-MNIST's 55000 training
images, batch 128, so an epoch is 429 updates.

One run measures the chosen ``--parts`` side by side, every repeat running each
part's variants in turn (interleaved), the minimum over ``--repeats`` reported:

* ``epoch``: one training epoch through :func:`lrjax.fit` (``FitConfig(epochs=1)``,
  SGD Nesterov momentum 0.9, lr 0.05, L2 weight decay 5e-4 built as
  ``lrjax-train --optimizer nesterov --weight-decay 5e-4`` builds it) against
  the same epoch in a plain PyTorch loop (``torch.optim.SGD(..., nesterov=True,
  weight_decay=5e-4)``, which applies the same update);
* ``range``: the whole range test as a user runs it (:func:`lrjax.lr_range_test`,
  SGD momentum 0.9, one epoch swept 1e-5 -> 10, stopping on divergence) against
  a hand-written PyTorch range test over as many updates as lrjax ran;
* ``augment``: the ``epoch`` fit with the model behind
  :class:`lrjax.models.Augment`, as ``--augment`` builds it, against the plain
  fit epoch;
* ``steps``: the evidence for ``loop="auto"``: ``--steps`` updates of the range
  test through ``lrjax.lr_range_test(loop="auto")``, a hand-written jitted step
  dispatched per update, and PyTorch; and, once, ``--scan-steps`` updates of
  the same step inside ``lax.scan`` (hand-written and ``loop="scan"``).

lrjax's times are after compilation (the compile time it reports is recorded
beside them); PyTorch runs a few warm-up updates once, before any timing. The
JSON's ``note`` says what each number is. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report_util import (  # noqa: E402
    NOT_MEASURED,
    HeadlineRow,
    TargetRow,
    fmt,
    json_block,
    load_result,
    md_table,
    plural,
    where,
)
from bench_find import _data, meta  # noqa: E402

BATCH = 128
LR0, LR1, SWEEP = 1e-5, 10.0, 429  # the sweep of one epoch; `steps` runs its start
WARMUP = 3
PARTS = ("steps", "epoch", "range", "augment")
# The epoch's optimizer: lrjax-train --optimizer nesterov --lr 0.05
# --weight-decay 5e-4, and torch.optim.SGD with the same arguments.
EPOCH_LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


def cnn(key):
    """The issue's CNN: ``lrjax.cnn`` (the layers the PyTorch copy mirrors)."""
    from lrjax._src import models

    return models.cnn(10, key=key)


def optimizer(lr):
    """The range test's optimizer."""
    import optax

    return optax.sgd(lr, momentum=MOMENTUM)


def sweep_lrs(num_steps: int):
    """The range test's lr of every update, as :func:`lrjax.exponential_sweep`."""
    import numpy as np

    return LR0 * (LR1 / LR0) ** (np.arange(num_steps) / (num_steps - 1))


def lrjax_run(
    x, y, steps: int, loop: str = "auto", chunks: int = 8, stop: bool = True
) -> dict:
    """One :func:`lrjax.lr_range_test` of ``steps`` updates, in ``chunks``
    compiled chunks, stopping at the divergence if ``stop``."""
    import jax
    from flax import nnx

    import lrjax

    key = jax.random.key(0)
    t0 = time.perf_counter()
    r = lrjax.lr_range_test(
        nnx.Sequential(lrjax.scale_images, cnn(key)),  # the uint8 images scaled
        optimizer,
        (x, y),
        key=key,
        sweep=lrjax.Sweep(num_steps=steps, batch_size=BATCH),
        divergence=lrjax.Divergence(stop=stop),
        execution=lrjax.Execution(chunks=chunks, loop=loop),
    )
    wall = time.perf_counter() - t0
    t = r.timings
    return {
        "compile_s": t.compile_s,
        "run_s": t.run_s,
        "wall_s": wall,
        "loop": t.loop,
        "steps_run": r.steps_run,
        "stop_reason": r.stop_reason,
        "suggested_lr": r.suggested_lr,
    }


def lrjax_epoch(x, y, steps: int, *, augment: bool) -> dict:
    """One epoch of ``steps`` updates through :func:`lrjax.fit`."""
    import jax
    from flax import nnx

    import lrjax
    from lrjax._src import models
    from lrjax.cli import optimizer_factory

    key = jax.random.key(0)
    k = jax.random.fold_in(key, 0)
    # As lrjax.cli.model_choice builds --model cnn [--augment].
    layers = [lrjax.scale_images]
    if augment:
        layers.append(models.Augment(rngs=nnx.Rngs(augment=jax.random.fold_in(k, 1))))
    model = nnx.Sequential(*layers, models.cnn(10, key=k))
    config = lrjax.FitConfig(
        epochs=1,
        batch_size=BATCH,
        learning_rate=EPOCH_LR,
        steps_per_epoch=steps,
    )
    t0 = time.perf_counter()
    r = lrjax.fit(
        model,
        optimizer_factory("nesterov", WEIGHT_DECAY),
        (x, y),
        key=key,
        config=config,
    )
    wall = time.perf_counter() - t0
    t = r.timings
    return {
        "run_s": t.epoch_s[0],
        "compile_s": t.compile_s,
        "wall_s": wall,
        "loop": t.loop,
        "steps_run": r.step,
        "train_loss": r.history[-1]["train_loss"],
    }


def hand_written(x, y):
    """``(dispatch(steps) -> s, compile_s, scan(steps) -> (compile_s, run_s))``."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from lrjax._src.batches import batch_indices

    model = cnn(jax.random.key(0))
    model.train()
    graphdef, params0, rest0 = nnx.split(model, nnx.Param, ...)
    tx = optimizer(optax.exponential_decay(LR0, SWEEP - 1, LR1 / LR0))
    xd, yd = jnp.asarray(x), jnp.asarray(y)

    def step(carry, idx, xd, yd):
        params, rest, opt_state = carry

        def loss_fn(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            logits = m(xd[idx].astype(jnp.float32) / 255.0)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, yd[idx])
            return loss.mean(), nnx.split(m, nnx.Param, ...)[2]

        (loss, rest), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return (optax.apply_updates(params, updates), rest, opt_state), loss

    def fresh():
        copy = lambda t: jax.tree.map(lambda a: a.copy(), t)  # noqa: E731
        return copy(params0), copy(rest0), tx.init(params0)

    one = jax.jit(step, donate_argnums=0)
    idx_all = batch_indices(jax.random.key(1), len(y), BATCH, SWEEP)
    rows = [idx_all[i] for i in range(SWEEP)]
    t0 = time.perf_counter()
    one_c = one.lower(fresh(), rows[0], xd, yd).compile()
    dispatch_compile = time.perf_counter() - t0

    def dispatch(steps: int) -> float:
        carry = fresh()
        for i in range(WARMUP):
            carry, loss = one_c(carry, rows[i], xd, yd)
        loss.block_until_ready()
        t0 = time.perf_counter()
        for i in range(WARMUP, WARMUP + steps):
            carry, loss = one_c(carry, rows[i], xd, yd)
        loss.block_until_ready()
        return time.perf_counter() - t0

    def scan(steps: int) -> tuple[float, float]:
        run = jax.jit(
            lambda c, idx, xd, yd: jax.lax.scan(
                lambda c, i: step(c, i, xd, yd), c, idx
            ),
            donate_argnums=0,
        )
        idx = idx_all[:steps]
        t0 = time.perf_counter()
        run_c = run.lower(fresh(), idx, xd, yd).compile()
        compile_s = time.perf_counter() - t0
        carry = fresh()
        t0 = time.perf_counter()
        _, losses = run_c(carry, idx, xd, yd)
        losses.block_until_ready()
        return compile_s, time.perf_counter() - t0

    return dispatch, dispatch_compile, scan


class TorchCNN:
    """The same CNN in a plain PyTorch CPU loop, as a user writes one.

    2 threads; every run starts from the same fresh initialisation; each batch
    is gathered from a uint8 tensor by a shuffled index row and scaled to
    [0, 1]; ``loss.item()`` every update. A few updates run once at
    construction, so that one-time setup is not timed (as JAX's compile is not).
    """

    def __init__(self, x, y):
        import numpy as np
        import torch

        torch.set_num_threads(2)
        self.torch = torch
        self.version = torch.__version__
        self.threads = torch.get_num_threads()
        self.xt = torch.from_numpy(x)
        self.yt = torch.from_numpy(y.astype(np.int64))
        self.rng = np.random.default_rng(1)
        net = self.net()
        self.loop(net, self.sgd(net, LR0), WARMUP)

    def net(self):
        from torch import nn

        self.torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(128, 10),
        )
        return net.train()

    def sgd(self, net, lr, **kw):
        return self.torch.optim.SGD(net.parameters(), lr=lr, momentum=MOMENTUM, **kw)

    def rows(self, steps: int):
        """``steps`` index rows of ``BATCH``: shuffled epochs, as a DataLoader's."""
        import numpy as np

        n = len(self.yt)
        per = n // BATCH
        perms = [
            self.rng.permutation(n)[: per * BATCH] for _ in range(-(-steps // per))
        ]
        idx = np.concatenate(perms)[: steps * BATCH].reshape(steps, BATCH)
        return list(self.torch.from_numpy(idx))

    def loop(self, net, opt, steps: int, lrs=None, *, warmup: int = 0) -> float:
        """Runs ``warmup + steps`` updates (update ``i`` at ``lrs[i]`` if given);
        returns the seconds of the last ``steps``."""
        f = self.torch.nn.functional
        rows = self.rows(warmup + steps)
        losses = []
        t0 = time.perf_counter()
        for i, idx in enumerate(rows):
            if i == warmup:
                t0 = time.perf_counter()
            if lrs is not None:
                for g in opt.param_groups:
                    g["lr"] = float(lrs[i])
            xb = self.xt[idx].unsqueeze(1).float().div_(255.0)
            loss = f.cross_entropy(net(xb), self.yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return time.perf_counter() - t0

    def epoch(self, steps: int) -> float:
        net = self.net()
        opt = self.sgd(net, EPOCH_LR, nesterov=True, weight_decay=WEIGHT_DECAY)
        return self.loop(net, opt, steps)

    def range_test(self, steps: int, num_steps: int) -> float:
        """The first ``steps`` updates of a ``num_steps`` sweep."""
        net = self.net()
        return self.loop(net, self.sgd(net, LR0), steps, sweep_lrs(num_steps))

    def sweep_start(self, steps: int) -> float:
        """The ``steps`` part: updates ``WARMUP..WARMUP+steps`` of the epoch sweep."""
        net = self.net()
        lrs = sweep_lrs(SWEEP)
        return self.loop(net, self.sgd(net, LR0), steps, lrs, warmup=WARMUP)


def measured(times, steps, **extra) -> dict:
    """The best of ``times`` (seconds of ``steps`` updates each)."""
    steps = steps if isinstance(steps, list) else [steps] * len(times)
    i = min(range(len(times)), key=times.__getitem__)
    return {
        "run_s": times[i],
        "run_s_all": times,
        "steps": steps[i],
        "ms_per_step": 1e3 * times[i] / steps[i],
        **extra,
    }


def projected(times, n: int, epoch: int, **extra) -> dict:
    """:func:`measured` plus ``epoch_s``, the epoch projected from ``n`` updates."""
    e = measured(times, n, **extra)
    return {**e, "epoch_s": e["run_s"] / n * epoch}


def parse_parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(
            f"--parts takes a comma-separated subset of {','.join(PARTS)}, got {text!r}"
        )
    return tuple(p for p in PARTS if p in parts)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


NOTES = {
    "all": "Seconds are wall-clock on the device named in `device`, lrjax's after "
    "compilation; `run_s` is the minimum over `repeats` repeats (in `run_s_all`) "
    "in which every chosen part's variants run in turn; other processes may "
    "share the cores, so run_s_all shows the noise. `ms_per_step` is run_s / "
    "steps. `compile_s` is the compile time lrjax reports; `wall_s` is the whole "
    "lrjax call (compile, setup, run) of the best repeat, what a user waits. "
    "PyTorch runs 3 warm-up updates once at setup, untimed; every timed PyTorch "
    "run starts from a fresh model, gathers each batch from a uint8 tensor and "
    "calls loss.item() every update.",
    "epoch": "`epoch`: seconds of one training epoch of `steps` updates at batch "
    "128. lrjax_fit: lrjax.fit(FitConfig(epochs=1, steps_per_epoch=steps)), "
    "timings['epoch_s'][0] (after compile, host hooks included, no validation); "
    "torch: the same number of updates, shuffled batches. Both SGD Nesterov "
    "momentum 0.9, lr 0.05, L2 weight decay 5e-4 on every parameter. "
    "lrjax_vs_torch = lrjax_fit.run_s / torch.run_s.",
    "range_test": "`range_test`: lrjax: lrjax.lr_range_test as a user runs it "
    "(SGD momentum 0.9, `num_steps` updates swept 1e-5 -> 10 exponentially, "
    "stop_on_divergence=True, default chunks, loop auto); `steps` is "
    "steps_run, run_s is timings['run_s'] (after compile, the host's "
    "divergence checks between chunks included). torch: a plain loop over the "
    "same steps_run updates with the same per-update lr. lrjax_vs_torch = "
    "lrjax.run_s / torch.run_s.",
    "augment": "`augment`: lrjax_fit is the `epoch` fit with the model "
    "nnx.Sequential(lrjax.scale_images, lrjax._src.models.Augment(...), cnn) as "
    "--augment builds it (random 2-pixel shifts and flips on the device); "
    "vs_plain_epoch = its run_s / epoch.lrjax_fit.run_s.",
    "steps": "top-level lrjax_auto, hand_dispatch, torch, hand_scan, lrjax_scan "
    "(the `steps` part, the evidence for loop='auto'): each variant is timed "
    "over `steps_timed` updates of the range test's sweep (not a full epoch); "
    "epoch_s is ms_per_step x 429 (a full epoch), a projection. The scan "
    "variants are timed over `scan_steps_timed` updates, once. hand_dispatch "
    "runs 3 warm-up "
    "updates first, torch runs updates 3.. of the sweep; lrjax_auto's first "
    "timed update is its first execution; its run_s includes the host checks "
    "between its 4 chunks.",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/cnn.json")
    ap.add_argument("--parts", type=parse_parts, default=PARTS)
    ap.add_argument("--repeats", type=positive_int, default=2)
    ap.add_argument("--steps", type=positive_int, default=60)
    ap.add_argument("--scan-steps", type=positive_int, default=4)
    ap.add_argument(
        "--n-train",
        type=positive_int,
        default=None,
        help="use the first N training images (default all 55000)",
    )
    ap.add_argument(
        "--epoch-steps",
        type=positive_int,
        default=None,
        help="updates in the epoch and the range test (default N // 128)",
    )
    args = ap.parse_args(argv)
    parts = args.parts

    x, y = _data()
    if args.n_train is not None:
        x, y = x[: args.n_train], y[: args.n_train]
    full = len(y) // BATCH
    epoch = full if args.epoch_steps is None else args.epoch_steps
    if not 2 <= epoch <= full:
        ap.error(f"--epoch-steps must be between 2 and {full} ({len(y)} images)")
    if "steps" in parts and not (
        2 <= args.steps <= SWEEP - WARMUP and args.scan_steps >= 2
    ):
        # lr_range_test runs at least 2 updates
        ap.error(f"need 2 <= --steps <= {SWEEP - WARMUP} and --scan-steps >= 2")

    res = {
        "benchmark": "CNN (Conv3x3-32-BN-ReLU-MaxPool, Conv3x3-64-BN-ReLU-MaxPool, "
        f"Dense 128 + Dropout 0.3, Dense 10), Fashion-MNIST, batch {BATCH}: one "
        "training epoch, the range test (1e-5 -> 10) and --augment, lrjax beside a "
        "plain PyTorch CPU loop",
        **meta(),
        "parts": list(parts),
        "repeats": args.repeats,
        "n_train": len(y),
        "batch_size": BATCH,
        "epoch_steps": epoch,
        "note": {"all": NOTES["all"]},
    }
    print(f"device: {res['device']}", flush=True)
    torch = TorchCNN(x, y)
    res["torch_version"] = torch.version
    res["torch_threads"] = torch.threads
    print(f"torch {torch.version}, {torch.threads} threads", flush=True)

    if "steps" in parts:
        dispatch, dispatch_compile, scan = hand_written(x, y)
    runs: dict[str, list] = {}

    def add(name, value):
        runs.setdefault(name, []).append(value)
        v = value if isinstance(value, float) else value["run_s"]
        print(f"  {name}: {v:.2f} s", flush=True)

    for rep in range(args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}", flush=True)
        if "epoch" in parts:
            add("epoch_lrjax", lrjax_epoch(x, y, epoch, augment=False))
            add("epoch_torch", torch.epoch(epoch))
        if "range" in parts:
            r = lrjax_run(x, y, epoch)
            add("range_lrjax", r)
            add("range_torch", torch.range_test(r["steps_run"], epoch))
        if "augment" in parts:
            add("augment_lrjax", lrjax_epoch(x, y, epoch, augment=True))
        if "steps" in parts:
            add(
                "lrjax_auto",
                lrjax_run(x, y, args.steps, chunks=4, stop=False),
            )
            add("hand_dispatch", dispatch(args.steps))
            add("torch", torch.sweep_start(args.steps))

    def best_lrjax(name) -> dict:
        rs = runs[name]
        e = measured([r["run_s"] for r in rs], [r["steps_run"] for r in rs])
        b = rs[e["run_s_all"].index(e["run_s"])]
        keep = ("compile_s", "wall_s", "loop", "stop_reason", "suggested_lr")
        return {**e, **{k: b[k] for k in keep if k in b}}

    if "epoch" in parts:
        ep = {
            "lrjax_fit": best_lrjax("epoch_lrjax"),
            "torch": measured(runs["epoch_torch"], epoch),
            "optimizer": f"SGD Nesterov momentum {MOMENTUM}, lr {EPOCH_LR}, L2 "
            f"weight decay {WEIGHT_DECAY}",
        }
        ep["lrjax_vs_torch"] = ep["lrjax_fit"]["run_s"] / ep["torch"]["run_s"]
        res["epoch"] = ep
        res["note"]["epoch"] = NOTES["epoch"]
    if "range" in parts:
        steps_run = [r["steps_run"] for r in runs["range_lrjax"]]
        rt = {
            "num_steps": epoch,
            "steps_run_all": steps_run,
            "lrjax": best_lrjax("range_lrjax"),
            "torch": measured(runs["range_torch"], steps_run),
        }
        rt["lrjax_vs_torch"] = rt["lrjax"]["run_s"] / rt["torch"]["run_s"]
        res["range_test"] = rt
        res["note"]["range_test"] = NOTES["range_test"]
    if "augment" in parts:
        res["augment"] = {"lrjax_fit": best_lrjax("augment_lrjax")}
        if "epoch" in parts:
            plain = res["epoch"]["lrjax_fit"]["run_s"]
            res["augment"]["vs_plain_epoch"] = (
                res["augment"]["lrjax_fit"]["run_s"] / plain
            )
        res["note"]["augment"] = NOTES["augment"]
    if "steps" in parts:
        steps_part(res, runs, args, scan, dispatch_compile, x, y)
        res["note"]["steps"] = NOTES["steps"]

    for name in ("epoch", "range_test", "augment"):
        if name in res:
            print(f"{name}: " + json.dumps(summary(res[name])), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


def summary(section: dict) -> dict:
    """Seconds and ratios of a section, rounded, for the printed log."""
    out = {}
    for k, v in section.items():
        if isinstance(v, dict) and "run_s" in v:
            out[k] = round(v["run_s"], 2)
        elif isinstance(v, float):
            out[k] = round(v, 2)
    return out


def steps_part(res, runs, args, scan, dispatch_compile, x, y) -> None:
    """The ``steps`` part's entries, at the JSON's top level (as before)."""
    steps, epoch = args.steps, SWEEP
    auto = runs["lrjax_auto"]
    res.update(steps_timed=steps, scan_steps_timed=args.scan_steps)
    res["lrjax_steps_run"] = auto[-1]["steps_run"]  # the chunks cover exactly `steps`
    res["lrjax_loop_choice"] = auto[-1]["loop"]
    res["lrjax_auto"] = projected(
        [r["run_s"] for r in auto],
        steps,
        epoch,
        compile_s=min(r["compile_s"] for r in auto),
        loop=res["lrjax_loop_choice"],
    )
    res["hand_dispatch"] = projected(
        runs["hand_dispatch"], steps, epoch, compile_s=dispatch_compile
    )
    res["torch"] = projected(runs["torch"], steps, epoch)
    sc_compile, sc_run = scan(args.scan_steps)
    res["hand_scan"] = projected([sc_run], args.scan_steps, epoch, compile_s=sc_compile)
    print(f"hand scan: {res['hand_scan']['ms_per_step']:.0f} ms/step", flush=True)
    r = lrjax_run(x, y, args.scan_steps, "scan", chunks=1, stop=False)
    res["lrjax_scan"] = projected(
        [r["run_s"]], args.scan_steps, epoch, compile_s=r["compile_s"]
    )
    names = ("lrjax_auto", "hand_dispatch", "torch", "hand_scan", "lrjax_scan")
    ms = {k: res[k]["ms_per_step"] for k in names}
    res["ratios"] = {
        "lrjax_auto_vs_hand_dispatch": ms["lrjax_auto"] / ms["hand_dispatch"],
        "lrjax_auto_vs_torch": ms["lrjax_auto"] / ms["torch"],
        "hand_dispatch_vs_torch": ms["hand_dispatch"] / ms["torch"],
        "hand_scan_vs_hand_dispatch": ms["hand_scan"] / ms["hand_dispatch"],
        "lrjax_scan_vs_lrjax_auto": ms["lrjax_scan"] / ms["lrjax_auto"],
    }
    for k, v in ms.items():
        print(f"{k}: {v:.1f} ms/step, epoch {v * epoch / 1e3:.1f} s")
    print({k: round(v, 2) for k, v in res["ratios"].items()})


# --- what benchmarks/report.py stitches into the documents -----------------------


def _steps_markdown(d: dict) -> str:
    """The ``steps`` part (top-level keys): the per-step evidence for loop="auto"."""
    threads = d.get("torch_threads", 2)
    names = (
        ("lrjax_auto", f'lrjax, loop="auto" (chose {d["lrjax_loop_choice"]})'),
        ("hand_dispatch", "hand-written jitted step, dispatched, donated"),
        ("torch", f"PyTorch {d.get('torch_version', '')} CPU, {threads} threads"),
        ("hand_scan", "hand-written step inside lax.scan"),
        ("lrjax_scan", 'lrjax, loop="scan"'),
    )
    torch_ms = d["torch"]["ms_per_step"]
    rows = []
    for k, what in names:
        v = d[k]
        c = v.get("compile_s")
        rows.append(
            [
                what,
                str(v["steps"]),
                "-" if c is None else f"{c:.1f}",
                f"{v['ms_per_step']:.0f}",
                f"{v['epoch_s']:.0f}",
                f"{v['ms_per_step'] / torch_ms:.2f}",
            ]
        )
    r = d["ratios"]
    out = md_table(
        [
            "variant",
            "steps timed",
            "compile s",
            "ms/step",
            "epoch s (projected)",
            "x PyTorch",
        ],
        rows,
    )
    return out + (
        f"\n\nlrjax auto / hand dispatch: {r['lrjax_auto_vs_hand_dispatch']:.2f}x; "
        f"hand scan / hand dispatch: {r['hand_scan_vs_hand_dispatch']:.1f}x; "
        f"lrjax scan / lrjax auto: {r['lrjax_scan_vs_lrjax_auto']:.1f}x."
    )


def _parts_markdown(d: dict) -> str:
    """The ``epoch``, ``range_test`` and ``augment`` parts, one row per variant."""
    torch = f"PyTorch {d.get('torch_version', '')} CPU, {d.get('torch_threads', 2)} "
    torch += "threads"
    rows, notes = [], []

    def add(part: str, what: str, v: dict, ratio: str) -> None:
        c = v.get("compile_s")
        rows.append(
            [
                part,
                what,
                str(v["steps"]),
                "-" if c is None else f"{c:.1f}",
                f"{v['run_s']:.1f}",
                f"{v['ms_per_step']:.0f}",
                ratio,
            ]
        )

    ep = d.get("epoch")
    if ep:
        lj = ep["lrjax_fit"]
        ratio = f"{ep['lrjax_vs_torch']:.2f}x PyTorch"
        add("epoch", f"`lrjax.fit` (loop {lj.get('loop', '?')})", lj, ratio)
        add("epoch", torch, ep["torch"], "1.00")
        notes.append(
            f"Epoch: both {ep['optimizer']}; lrjax / PyTorch "
            f"**{ep['lrjax_vs_torch']:.2f}x**."
        )
    rt = d.get("range_test")
    if rt:
        lj = rt["lrjax"]
        what = f"`lrjax.lr_range_test` (loop {lj.get('loop', '?')})"
        add("range test", what, lj, f"{rt['lrjax_vs_torch']:.2f}x PyTorch")
        add("range test", f"{torch}, same updates", rt["torch"], "1.00")
        sug = lj.get("suggested_lr")
        notes.append(
            f"Range test: {rt['num_steps']} updates swept 1e-5 -> 10, stopping on "
            f"divergence; steps run {', '.join(map(str, rt['steps_run_all']))} "
            f"(stop reason: {lj.get('stop_reason') or 'none, the sweep ran out'}; "
            f"suggested lr {fmt(sug)}); lrjax / PyTorch "
            f"**{rt['lrjax_vs_torch']:.2f}x**."
        )
    au = d.get("augment")
    if au:
        vs = au.get("vs_plain_epoch")
        ratio = "-" if vs is None else f"{vs:.2f}x plain epoch"
        what = "`lrjax.fit`, the model behind `models.Augment`"
        add("epoch, `--augment`", what, au["lrjax_fit"], ratio)
        if vs is not None:
            notes.append(f"`--augment` epoch / plain epoch: **{vs:.2f}x**.")
    out = md_table(
        ["part", "variant", "updates", "compile s", "run s", "ms/step", "ratio"],
        rows,
    )
    head = (
        f"An epoch of {d['epoch_steps']} updates (batch {d['batch_size']}, "
        f"{d['n_train']} images); run s is the fastest of "
        f"{plural(d['repeats'], 'interleaved repeat')}, after compilation."
    )
    return "\n\n".join([head, out, *([" ".join(notes)] if notes else [])])


def markdown(d: dict) -> str:
    """The ``cnn`` block: whichever parts of ``--parts`` the JSON holds."""
    parts = []
    if any(k in d for k in ("epoch", "range_test", "augment")):
        parts.append(_parts_markdown(d))
    if "lrjax_auto" in d:
        steps = _steps_markdown(d)
        if parts:
            steps = (
                f"Per step (the `steps` part, {d['steps_timed']} updates of the "
                'sweep; the evidence for `loop="auto"`):\n\n' + steps
            )
        parts.append(steps)
    if not parts:
        return NOT_MEASURED
    return "\n\n".join([*parts, f"Measured on {where(d)}."])


def target_rows(results: Path) -> list[TargetRow]:
    """lrjax against PyTorch: no target in the issue, so "met?" stays "-"."""
    c = load_result(results, "cnn")
    ep, rt = c and c.get("epoch"), c and c.get("range_test")
    return [
        (
            "CNN epoch: lrjax vs a plain PyTorch CPU loop, same run (no target)",
            ep
            and f"{ep['lrjax_vs_torch']:.2f}x: {ep['lrjax_fit']['run_s']:.1f} s "
            f"against {ep['torch']['run_s']:.1f} s for {ep['lrjax_fit']['steps']} "
            f"updates ({c['device']})",
            None,
        ),
        (
            "CNN range test: lrjax vs PyTorch, same run (no target)",
            rt
            and f"{rt['lrjax_vs_torch']:.2f}x: {rt['lrjax']['run_s']:.1f} s against "
            f"{rt['torch']['run_s']:.1f} s for {rt['lrjax']['steps']} updates "
            f"({c['device']})",
            None,
        ),
    ]


def headline_rows(results: Path) -> list[HeadlineRow]:
    b = load_result(results, "cnn") or {}
    parts = [("epoch", "epoch"), ("range_test", "range test")]
    return [
        (
            "BatchNorm CNN epoch / range test vs a plain PyTorch CPU loop",
            any(b.get(k) for k, _ in parts)
            and "; ".join(
                f"{w}: {b[k]['lrjax_vs_torch']:.2f}x PyTorch's time"
                if b.get(k)
                else f"{w}: {NOT_MEASURED}"
                for k, w in parts
            ),
        )
    ]


BLOCKS = {"cnn": json_block("cnn", markdown)}
TARGET_ROWS = {"cnn": target_rows}
HEADLINE_ROWS = {"cnn": headline_rows}


if __name__ == "__main__":
    raise SystemExit(main())
