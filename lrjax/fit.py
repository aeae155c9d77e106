"""The training loop: compiled scan chunks, decisions on the host between them.

:func:`fit` trains with :func:`lrjax.training.make_step` (the same step the range
test runs). An epoch is a few compiled ``lax.scan`` chunks over
``int32[steps, batch]`` index arrays; the dataset lives on the device once
(uint8) and enters every chunk as an argument. Between chunks, and only there,
the host updates the progress bar, writes TensorBoard scalars, checks for a
SIGINT/SIGTERM and saves checkpoints; between epochs it evaluates and decides on
early stopping.

Exact resume: everything that decides the future of a run is in the checkpoint
(params, optimizer state, step, the RNG key, the early-stopping state with the
best params, the snapshot buffer, the epoch history and the partial sums of an
interrupted epoch), and the batch order of epoch ``e`` is
``batch_indices(fold_in(key, e), ...)``, so a resumed run computes the same
chunks on the same inputs as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrjax import snapshots as snap_lib
from lrjax.training import (
    TrainState,
    batch_indices,
    describe_devices,
    init_state,
    make_evaluate,
    make_optimizer,
    make_step,
)

Params = Any
P = jax.sharding.PartitionSpec

MONITORS = ("val_loss", "val_accuracy")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read (corrupt, or from an incompatible run)."""


class Carry(NamedTuple):
    state: TrainState
    snaps: snap_lib.SnapshotBuffer | None


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns; ``params`` are the best params if restored."""

    params: Params
    history: list[dict[str, Any]]  # one dict per epoch
    best_epoch: int | None  # 1-based epoch of the best monitored value
    epochs_run: int
    stopped_early: bool
    interrupted: bool  # stopped by ``should_stop`` (a signal); checkpoint saved
    step: int
    snapshots: Params | None  # stacked [m, ...] snapshots written so far
    snapshot_steps: list[int]
    snapshot_epochs: list[float]
    timings: dict[str, float]
    device: str
    test: dict[str, float] | None = None  # loss/accuracy of ``params`` on test
    snapshot_test_accuracy: list[float] | None = None
    ensemble_curve: list[float] | None = None  # last-m ensembles, m = 1..M


class ProgressBar:
    """tqdm per epoch; a no-op when disabled."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def start(self, epoch: int, epochs: int, total: int, done: int) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                desc=f"epoch {epoch}/{epochs}",
                unit="step",
                leave=False,
            )

    def update(self, n: int, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def stop_on_signals(
    signals=(signal.SIGINT, signal.SIGTERM),
) -> Iterator[Callable[[], int | None]]:
    """Installs handlers that only record the signal; yields ``received()``.

    Pass ``should_stop=received`` to :func:`fit`: it saves a checkpoint at the
    next chunk boundary and returns. Exit with ``128 + received()``.
    """
    got: list[int] = []

    def handler(signum, frame):
        got.append(signum)

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield lambda: got[0] if got else None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def data_mesh(batch_size: int, devices=None) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over all local devices.

    Raises:
      ValueError: if ``batch_size`` is not divisible by the device count.
    """
    devices = list(devices if devices is not None else jax.local_devices())
    if batch_size % len(devices):
        raise ValueError(
            f"batch size {batch_size} must be divisible by the number of devices "
            f"({len(devices)}) for data-parallel training"
        )
    return jax.sharding.Mesh(np.array(devices), ("data",))


def _chunk_fn(step, write_cond: bool):
    writer = snap_lib.write_cond if write_cond else snap_lib.write

    def chunk(carry: Carry, idx, data, snap_steps):
        def body(c: Carry, i):
            state, metrics = step(c.state, i, data)
            snaps = c.snaps
            if snaps is not None:
                take = jnp.any(snap_steps == state.step - 1)
                snaps = writer(snaps, state.params, take)
            return Carry(state, snaps), metrics

        return jax.lax.scan(body, carry, idx)

    return chunk


def _flatten(tree) -> dict[str, jax.Array]:
    return {f"{i:04d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def _checkpoint_tree(carry: Carry, best_params, key) -> dict[str, Any]:
    return {
        "carry": _flatten(carry),
        "best": _flatten(best_params),
        "key": jax.random.key_data(key),
    }


class _Checkpoints:
    """Orbax managers: ``latest`` (full state, ``max_to_keep``) and ``best``."""

    def __init__(self, directory: Path, max_to_keep: int, monitor: str):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        directory = Path(directory).absolute()
        self.latest = ocp.CheckpointManager(
            directory / "latest",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            ),
        )
        sign = -1.0 if monitor == "val_loss" else 1.0
        self.best = ocp.CheckpointManager(
            directory / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda m: sign * m[monitor],
                best_mode="max",
                create=True,
                enable_async_checkpointing=False,
            ),
        )

    def save(self, step: int, tree, meta) -> None:
        a = self.ocp.args
        self.latest.save(
            step,
            args=a.Composite(state=a.StandardSave(tree), meta=a.JsonSave(meta)),
            force=True,
        )

    def save_best(self, step: int, params, meta, metrics) -> None:
        a = self.ocp.args
        self.best.save(
            step,
            args=a.Composite(
                params=a.StandardSave(_flatten(params)), meta=a.JsonSave(meta)
            ),
            metrics=metrics,
            force=True,
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, template) -> tuple[Any, dict]:
        step = self.latest.latest_step()
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            template,
        )
        a = self.ocp.args
        where = self.latest.directory / str(step)
        try:
            out = self.latest.restore(
                step,
                args=a.Composite(
                    state=a.StandardRestore(abstract), meta=a.JsonRestore()
                ),
            )
            tree, meta = out["state"], out["meta"]
            if not isinstance(meta, dict) or "epoch" not in meta:
                raise ValueError("metadata is missing")
        except Exception as e:  # orbax raises many kinds; report one clear line
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"cannot resume from checkpoint {where}: {type(e).__name__}: "
                f"{msg[:300]}; it was left untouched (delete it or use a new logdir)"
            ) from None
        return tree, meta

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _unflatten(template, flat: dict[str, jax.Array]):
    leaves = [flat[f"{i:04d}"] for i in range(len(flat))]
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


def _scalar_writer(logdir, purge_step):
    if logdir is None:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(logdir), purge_step=purge_step, flush_secs=30)


def fit(
    apply: Callable,
    params: Params,
    optimizer: Callable[[Any], optax.GradientTransformation],
    dataset,
    *,
    key: jax.Array,
    learning_rate: float | Callable = 0.01,
    epochs: int = 30,
    batch_size: int = 32,
    patience: int = 0,
    monitor: str = "val_loss",
    restore_best: bool | None = None,
    snapshot_steps: Any = None,
    logdir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    max_to_keep: int = 2,
    chunks_per_epoch: int = 8,
    log_every: int = 10,
    data_parallel: bool | None = None,
    evaluate_test: bool = True,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], Any] | None = None,
    snapshot_write: str = "cond",
) -> FitResult:
    """Trains ``apply``/``params`` on ``dataset`` for ``epochs`` epochs.

    Args:
      apply, params: the model (``lrjax.models.mlp``).
      optimizer: ``learning_rate -> optax.GradientTransformation`` (e.g.
        ``optax.sgd``); wrapped in ``inject_hyperparams`` so the logged lr is the
        lr each update applied.
      dataset: a :class:`lrjax.data.Dataset` (uint8 or float inputs).
      key: a ``jax.random.key``; epoch ``e`` (0-based) draws its batch order
        from ``fold_in(key, e)``.
      learning_rate: a float or a schedule ``step -> lr`` (any optax schedule).
      patience: early stopping after this many epochs without improvement of
        ``monitor`` (``"val_loss"`` or ``"val_accuracy"``); 0 disables it.
      restore_best: return the params of the best epoch (default: when
        ``patience > 0``).
      snapshot_steps: update indices after which the params are snapshotted
        (e.g. :func:`lrjax.snapshots.snapshot_steps`); None for no snapshots.
      logdir: TensorBoard event files go here (tensorboardX, no TensorFlow):
        ``train/loss`` and ``train/lr`` every ``log_every`` steps (the mean loss
        of those steps and the lr applied by the last), ``train/accuracy``,
        ``val/loss``, ``val/accuracy`` per epoch and ``ensemble/accuracy`` (val,
        all snapshots so far) when a snapshot was taken.
      checkpoint_dir: Orbax checkpoints (``latest/`` every epoch and on a stop
        request, ``best/`` params of the best epoch); ``resume`` continues from
        ``latest``.
      chunks_per_epoch: compiled scan chunks per epoch (host work runs between).
      data_parallel: shard each batch over all local devices (a ``("data",)``
        mesh, params replicated); default when there are several devices.
      on_epoch: called with each epoch's history record (for a summary line).
      should_stop: polled between chunks; when truthy the run saves a checkpoint
        and returns with ``interrupted=True``.
      snapshot_write: how the scan writes the snapshot buffer: ``"cond"`` (a
        ``lax.cond`` that copies the params only at a snapshot step; measured
        +0.3% epoch time) or ``"dus"`` (a ``dynamic_update_slice`` into slot
        ``where(is_end, count, M)`` at every step, slot M being scratch: no
        branch, but a params-sized copy per step, measured +30% on the MLP).

    Raises:
      ValueError: bad arguments. CheckpointError: an unreadable checkpoint.
    """
    if epochs < 0 or patience < 0:
        raise ValueError(f"epochs and patience must be >= 0, got {epochs}, {patience}")
    if monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {MONITORS}, got {monitor!r}")
    if chunks_per_epoch < 1 or log_every < 1:
        raise ValueError("chunks_per_epoch and log_every must be >= 1")
    n = len(dataset.y_train)
    if not 1 <= batch_size <= n:
        raise ValueError(
            f"batch size must be between 1 and the training set size ({n}), "
            f"got {batch_size}"
        )
    restore_best = patience > 0 if restore_best is None else restore_best
    steps_per_epoch = n // batch_size
    snap_arr = None
    num_snaps = 0
    if snapshot_steps is not None:
        snap_arr = np.asarray(snapshot_steps, np.int64)
        num_snaps = len(snap_arr)
        if num_snaps < 1 or np.any(np.diff(snap_arr) <= 0) or snap_arr[0] < 0:
            raise ValueError("snapshot_steps must be increasing step indices >= 0")
    snap_steps_dev = jnp.asarray(
        snap_arr if snap_arr is not None else np.full(1, -1), jnp.int32
    )

    t_start = time.perf_counter()
    tx = make_optimizer(optimizer, learning_rate)
    if data_parallel is None:
        data_parallel = jax.local_device_count() > 1
    batch_sharding = replicated = None
    if data_parallel:
        mesh = data_mesh(batch_size)
        batch_sharding = jax.sharding.NamedSharding(mesh, P("data"))
        replicated = jax.sharding.NamedSharding(mesh, P())
    step = make_step(apply, tx, batch_sharding=batch_sharding)
    if snapshot_write not in ("cond", "dus"):
        raise ValueError(
            f"snapshot_write must be 'cond' or 'dus', got {snapshot_write!r}"
        )
    chunk = _chunk_fn(step, snapshot_write == "cond")
    run = jax.jit(chunk, donate_argnums=0)
    evaluate = jax.jit(make_evaluate(apply))

    def replicate(tree):
        return tree if replicated is None else jax.device_put(tree, replicated)

    def put(tree):  # fresh buffers: the carry is donated, never the caller's arrays
        return replicate(jax.tree.map(lambda a: jnp.array(a, copy=True), tree))

    # The data are never donated: on the device once, not copied again.
    data = replicate((jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)))
    val = replicate((jnp.asarray(dataset.x_val), jnp.asarray(dataset.y_val)))
    params = put(params)
    state = jax.jit(lambda p: init_state(p, tx))(params)
    snaps = put(snap_lib.init_buffer(params, num_snaps)) if num_snaps else None
    carry = Carry(put(state), snaps)
    best_params = put(params)

    # Host state: epoch history, early stopping, partial sums of this epoch.
    history: list[dict[str, Any]] = []
    es = {"best": None, "best_epoch": None, "wait": 0}
    epoch, chunk_pos = 0, 0
    empty = {
        "loss": 0.0,
        "accuracy": 0.0,
        "steps": 0,
        "lr": None,
        "lr_min": None,
        "lr_max": None,
    }
    partial = dict(empty)  # sums over this epoch's steps so far; lr of the last
    stopped_early = False

    ckpt = None
    if checkpoint_dir is not None:
        ckpt = _Checkpoints(Path(checkpoint_dir), max_to_keep, monitor)
    try:
        if resume and ckpt is not None and ckpt.latest_step() is not None:
            template = _checkpoint_tree(carry, best_params, key)
            tree, meta = ckpt.restore(template)
            if (
                meta.get("steps_per_epoch") != steps_per_epoch
                or meta.get("num_snapshots") != num_snaps
            ):
                raise CheckpointError(
                    f"checkpoint in {checkpoint_dir} is from a different run "
                    f"(steps per epoch {meta.get('steps_per_epoch')}, snapshots "
                    f"{meta.get('num_snapshots')}; now {steps_per_epoch}, "
                    f"{num_snaps}); it was left untouched"
                )
            carry = _unflatten(carry, tree["carry"])
            best_params = _unflatten(best_params, tree["best"])
            key = jax.random.wrap_key_data(tree["key"])
            history, es = meta["history"], meta["es"]
            epoch, chunk_pos, partial = meta["epoch"], meta["chunk"], meta["partial"]
            stopped_early = meta.get("stopped_early", False)
        start_step = int(carry.state.step)
        writer = _scalar_writer(logdir, start_step if start_step else None)

        bounds = np.linspace(0, steps_per_epoch, chunks_per_epoch + 1).astype(int)
        bounds = np.unique(bounds)
        t0 = time.perf_counter()
        compiled = {}
        example_idx = batch_indices(key, n, batch_size, steps_per_epoch)
        for length in sorted(set(np.diff(bounds).tolist())):
            compiled[length] = run.lower(
                carry, example_idx[:length], data, snap_steps_dev
            ).compile()
        eval_c = evaluate.lower(carry.state.params, *val).compile()
        compile_s = time.perf_counter() - t0

        bar = ProgressBar(progress)
        run_s = 0.0
        epoch_times: list[float] = []
        interrupted = False

        def meta_doc():
            return {
                "epoch": epoch,
                "chunk": chunk_pos,
                "partial": partial,
                "history": history,
                "es": es,
                "stopped_early": stopped_early,
                "steps_per_epoch": steps_per_epoch,
                "num_snapshots": num_snaps,
                "step": int(carry.state.step),
            }

        def save():
            if ckpt is not None and ckpt.latest_step() != int(carry.state.step):
                ckpt.save(
                    int(carry.state.step),
                    _checkpoint_tree(carry, best_params, key),
                    meta_doc(),
                )

        while epoch < epochs and not stopped_early and not interrupted:
            t_epoch = time.perf_counter()
            idx = batch_indices(
                jax.random.fold_in(key, epoch), n, batch_size, steps_per_epoch
            )
            bar.start(epoch + 1, epochs, steps_per_epoch, int(bounds[chunk_pos]))
            while chunk_pos < len(bounds) - 1:
                lo, hi = int(bounds[chunk_pos]), int(bounds[chunk_pos + 1])
                step0 = int(carry.state.step)
                carry, m = compiled[hi - lo](carry, idx[lo:hi], data, snap_steps_dev)
                loss = np.asarray(m["loss"], np.float64)
                acc = np.asarray(m["accuracy"], np.float64)
                lrs = np.asarray(m["lr"], np.float64)
                lo_lr, hi_lr = float(lrs.min()), float(lrs.max())
                partial = {
                    "loss": partial["loss"] + float(loss.sum()),
                    "accuracy": partial["accuracy"] + float(acc.sum()),
                    "steps": partial["steps"] + len(loss),
                    "lr": float(lrs[-1]),
                    "lr_min": lo_lr
                    if partial["lr_min"] is None
                    else min(partial["lr_min"], lo_lr),
                    "lr_max": hi_lr
                    if partial["lr_max"] is None
                    else max(partial["lr_max"], hi_lr),
                }
                if writer is not None:
                    # At global steps s = k * log_every: the mean loss of the
                    # window's updates in this chunk, and the lr update s-1 applied.
                    first = -(step0 + 1) % log_every
                    for j in range(first, len(loss), log_every):
                        window = loss[max(0, j + 1 - log_every) : j + 1]
                        s = step0 + j + 1
                        writer.add_scalar("train/loss", float(window.mean()), s)
                        writer.add_scalar("train/lr", float(lrs[j]), s)
                bar.update(hi - lo, float(loss[-1]), float(lrs[-1]))
                chunk_pos += 1
                if should_stop is not None and should_stop():
                    interrupted = True
                    break
            bar.close()
            if interrupted:
                run_s += time.perf_counter() - t_epoch
                break
            ev = eval_c(carry.state.params, *val)
            val_loss, val_acc = float(ev["loss"]), float(ev["accuracy"])
            epoch += 1
            chunk_pos = 0
            rec = {
                "epoch": epoch,
                "step": int(carry.state.step),
                "train_loss": partial["loss"] / partial["steps"],
                "train_accuracy": partial["accuracy"] / partial["steps"],
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": partial["lr"],  # applied by the epoch's last update
                "lr_min": partial["lr_min"],
                "lr_max": partial["lr_max"],
            }
            partial = dict(empty)
            if num_snaps:
                count = int(carry.snaps.count)
                rec["snapshots"] = count
                prev = history[-1]["snapshots"] if history else 0
                if count > prev:
                    stacked = snap_lib.snapshots(carry.snaps)
                    _, ens = snap_lib.ensemble_curve(apply, stacked, *val)
                    rec["ensemble_val_accuracy"] = float(ens[-1])
            value = val_loss if monitor == "val_loss" else val_acc
            better = es["best"] is None or (
                value < es["best"] if monitor == "val_loss" else value > es["best"]
            )
            if not math.isfinite(value):
                better = False
            if better:
                es = {"best": value, "best_epoch": epoch, "wait": 0}
                best_params = put(carry.state.params)
            else:
                es = {**es, "wait": es["wait"] + 1}
                if patience and es["wait"] >= patience:
                    stopped_early = True
            rec["time_s"] = time.perf_counter() - t_epoch
            epoch_times.append(rec["time_s"])
            run_s += rec["time_s"]
            history.append(rec)
            if writer is not None:
                s = rec["step"]
                writer.add_scalar("train/epoch_loss", rec["train_loss"], s)
                writer.add_scalar("train/accuracy", rec["train_accuracy"], s)
                writer.add_scalar("val/loss", val_loss, s)
                writer.add_scalar("val/accuracy", val_acc, s)
                if "ensemble_val_accuracy" in rec:
                    writer.add_scalar(
                        "ensemble/accuracy", rec["ensemble_val_accuracy"], s
                    )
                    writer.add_scalar("ensemble/members", rec["snapshots"], s)
                writer.flush()
            if ckpt is not None:
                save()
                if better:
                    ckpt.save_best(
                        rec["step"],
                        best_params,
                        {"epoch": epoch, monitor: value},
                        {monitor: value},
                    )
            if on_epoch is not None:
                on_epoch(rec)
            if should_stop is not None and should_stop():
                interrupted = epoch < epochs and not stopped_early
        if interrupted:
            save()
        if writer is not None:
            writer.close()
    finally:
        if ckpt is not None:
            ckpt.close()

    final = (
        best_params
        if (restore_best and es["best_epoch"] is not None)
        else (carry.state.params)
    )
    result = FitResult(
        params=final,
        history=history,
        best_epoch=es["best_epoch"],
        epochs_run=epoch,
        stopped_early=stopped_early,
        interrupted=interrupted,
        step=int(carry.state.step),
        snapshots=snap_lib.snapshots(carry.snaps) if num_snaps else None,
        snapshot_steps=[] if snap_arr is None else snap_arr.tolist(),
        snapshot_epochs=[]
        if snap_arr is None
        else ((snap_arr + 1) / steps_per_epoch).tolist(),
        timings={},
        device=describe_devices(jax.local_devices()),
    )
    if evaluate_test and not interrupted and len(dataset.y_test):
        test = (jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test))
        ev = evaluate(final, *test)
        result.test = {k: float(v) for k, v in ev.items()}
        if num_snaps and int(carry.snaps.count):
            single, ens = snap_lib.ensemble_curve(apply, result.snapshots, *test)
            result.snapshot_test_accuracy = single.tolist()
            result.ensemble_curve = ens.tolist()
    result.timings = {
        "compile_s": compile_s,
        "run_s": run_s,
        "epoch_s": epoch_times,
        "mean_epoch_s": float(np.mean(epoch_times)) if epoch_times else None,
        "total_s": time.perf_counter() - t_start,
    }
    return result
