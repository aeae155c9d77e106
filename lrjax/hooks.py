"""Host-side actions between compiled chunks: progress, TensorBoard, checkpoints.

CLU's periodic actions, for :func:`lrjax.fit`: each action is a small object
that the driver (:func:`lrjax.loop.drive`) calls between compiled chunks, never
inside one. A :class:`Hook` may implement

* ``start(run)`` once before the first chunk (after a resume, ``run`` holds the
  restored progress);
* ``chunk(run, end)`` after every chunk (``end`` is a :class:`lrjax.loop.ChunkEnd`
  with the chunk's per-update metrics on the host);
* ``epoch(run, record)`` after every epoch's evaluation (``record`` is the
  history entry: ``train_<metric>``, ``val_<metric>``, ``lr``, ...);
* ``end(run, reason)`` once at the end (``reason``: None when every epoch ran,
  ``"early_stop"``, ``"data"``, a hook's reason, or ``"error"``).

``chunk`` and ``epoch`` return a reason to stop (any string) or None. Everything
that decides the future of a run lives in :class:`Run`, not in the hooks, so a
checkpoint of the run resumes it exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrjax.distributed import is_main
from lrjax.loop import ChunkEnd
from lrjax.step import fresh


@dataclasses.dataclass
class Run:
    """The progress of one :func:`lrjax.fit` run: what a checkpoint holds.

    ``carry`` and ``best_state`` are device pytrees; the rest is JSON
    (:meth:`host_state`). ``carry`` is valid until the next chunk runs (its
    buffers are donated to it): copy what must outlive it (:func:`fresh`).
    """

    steps_per_epoch: int
    epochs: int
    signature: dict[str, Any]  # what a resumed run must share with the saved one
    carry: Any = None  # Carry(TrainState, SnapshotBuffer | None, WeightAverage | None)
    best_state: Any = None  # (params, model_state) of the best epoch
    step: int = 0  # completed updates
    epoch: int = 0  # completed epochs
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    partial: dict[str, Any] = dataclasses.field(default_factory=dict)
    best: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"value": None, "epoch": None, "wait": 0}
    )
    stopped_early: bool = False

    def host_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "history": self.history,
            "partial": self.partial,
            "best": self.best,
            "stopped_early": self.stopped_early,
            **self.signature,
        }

    def load_host_state(self, doc: dict[str, Any]) -> None:
        for name in ("step", "epoch", "history", "partial", "best", "stopped_early"):
            setattr(self, name, doc[name])


class Hook:
    """A host action between chunks; override what you need (all no-ops)."""

    def start(self, run: Run) -> None:
        pass

    def chunk(self, run: Run, end: ChunkEnd) -> str | None:
        return None

    def epoch(self, run: Run, record: dict[str, Any]) -> str | None:
        return None

    def end(self, run: Run, reason: str | None) -> None:
        pass


def default_mode(monitor: str) -> str:
    """``"max"`` for an accuracy-like metric, else ``"min"``.

    >>> default_mode("val_accuracy"), default_mode("val_loss")
    ('max', 'min')
    """
    return "max" if "accuracy" in monitor else "min"


class EarlyStopping(Hook):
    """Tracks the best ``monitor`` value (and a copy of that epoch's model).

    Stops after ``patience`` epochs without improvement (0: never stops). A
    non-finite value never counts as an improvement.
    """

    def __init__(self, monitor: str, mode: str, patience: int):
        self.monitor, self.mode, self.patience = monitor, mode, patience

    def epoch(self, run: Run, record: dict[str, Any]) -> str | None:
        value = record.get(self.monitor)
        if value is None:
            return None
        best = run.best["value"]
        better = math.isfinite(value) and (
            best is None or (value < best if self.mode == "min" else value > best)
        )
        if better:
            run.best = {"value": value, "epoch": record["epoch"], "wait": 0}
            state = run.carry.state
            run.best_state = fresh((state.params, state.model_state))
            return None
        run.best = {**run.best, "wait": run.best["wait"] + 1}
        if self.patience and run.best["wait"] >= self.patience:
            run.stopped_early = True
            return "early_stop"
        return None


class WriteError(OSError):
    """A file of the run could not be written (a full disk, a lost mount, ...).

    ``path`` is what could not be written, ``cause`` why, e.g. ``"[Errno 28] No
    space left on device"``. The run stops at once; checkpoints written before
    are kept (a failed one leaves no partial step behind).
    """

    def __init__(self, path: str | Path, cause: str):
        super().__init__(f"cannot write {path}: {cause}")
        self.path, self.cause = Path(path), cause

    @classmethod
    def of(cls, path: str | Path, error: BaseException) -> WriteError:
        """The failure ``error`` (an ``OSError``, Orbax's ``ValueError``...)
        of writing ``path``; a ``WriteError`` already is one.

        >>> str(WriteError.of("m.json", OSError(28, "No space left on device")))
        'cannot write m.json: [Errno 28] No space left on device'
        """
        if isinstance(error, WriteError):
            return error
        return cls(path, _cause(error))

    def __str__(self) -> str:
        return str(self.args[0])


def _cause(e: BaseException) -> str:
    """``"[Errno N] reason"`` of a write failure, also from Orbax's (TensorStore's)
    ``ValueError`` that only carries ``os_error_code='N'`` in its text.

    >>> _cause(OSError(28, "No space left on device"))
    '[Errno 28] No space left on device'
    >>> _cause(ValueError("RESOURCE_EXHAUSTED: ... to file 11: [os_error_code='28']"))
    '[Errno 28] No space left on device'
    """
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
        found = re.search(r"os_error_code='?(\d+)", str(e))
        code = int(found[1]) if found else None
    if code:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else None
        return f"[Errno {code}] {reason or os.strerror(code)}"
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:300]}" if first else type(e).__name__


class _EventFile:
    """One TensorBoard event file, written in the calling thread.

    tensorboardX's ``SummaryWriter`` writes from a thread fed by a bounded queue:
    when a write fails (a full disk) the thread dies with the error and the next
    ``add_scalar`` blocks forever on the full queue (so does its ``atexit``
    close). Here every write, flush and close raises :class:`WriteError` in the
    caller instead. The records are tensorboardX's (no TensorFlow).
    """

    def __init__(self, logdir: Path, purge_step: int | None):
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.record_writer import RecordWriter
        from tensorboardX.summary import scalar

        self._event, self._scalar = Event, scalar
        name = f"events.out.tfevents.{str(time.time())[:10]}.{socket.gethostname()}"
        self.path = logdir / name
        with self._io():
            logdir.mkdir(parents=True, exist_ok=True)
            self._records = RecordWriter(str(self.path))
        self._write(Event(file_version="brain.Event:2"))
        if purge_step:  # TensorBoard drops the old file's events from this step on
            start = SessionLog(status=SessionLog.START)
            self._write(Event(step=purge_step, file_version="brain.Event:2"))
            self._write(Event(step=purge_step, session_log=start))

    @contextlib.contextmanager
    def _io(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise WriteError.of(self.path, e) from e

    def _write(self, event: Any) -> None:
        event.wall_time = time.time()
        with self._io():
            self._records.write(event.SerializeToString())

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._write(self._event(summary=self._scalar(tag, value), step=int(step)))

    def flush(self) -> None:
        with self._io():
            self._records.flush()

    def close(self) -> None:
        with self._io():  # the file is closed even when its last flush fails
            self._records.close()


class TensorBoard(Hook):
    """Scalars for TensorBoard (tensorboardX's event files, no TensorFlow).

    ``train/<metric>`` (``loss``, the loss function's metrics) at global steps
    ``s = k * log_every``: the mean over that window's updates within the chunk;
    ``train/lr``: the lr applied by update ``s - 1``. Per epoch:
    ``train/epoch_<metric>``, ``val/<metric>``, and after a snapshot
    ``ensemble/accuracy`` (validation) and ``ensemble/members``. Under several
    processes only process 0 writes (every process sees the same metrics).

    Written in the driver's thread and flushed after every epoch: a write that
    fails (a full disk) raises :class:`WriteError` and stops the run.
    """

    def __init__(self, logdir: str | Path, log_every: int = 10):
        self.logdir, self.log_every = Path(logdir), log_every
        self.writer: _EventFile | None = None

    def start(self, run: Run) -> None:
        if is_main():
            self.writer = _EventFile(self.logdir, purge_step=run.step or None)

    def chunk(self, run: Run, end: ChunkEnd) -> str | None:
        every, w = self.log_every, self.writer
        if w is None:
            return None
        for j in range(-(end.lo + 1) % every, end.hi - end.lo, every):
            s = end.lo + j + 1
            for name, v in end.metrics.items():
                if name == "lr":
                    w.scalar("train/lr", float(v[j]), s)
                else:
                    window = np.asarray(v[max(0, j + 1 - every) : j + 1], np.float64)
                    w.scalar(f"train/{name}", float(window.mean()), s)
        return None

    def epoch(self, run: Run, record: dict[str, Any]) -> str | None:
        s, w = record["step"], self.writer
        if w is None:
            return None
        for name, value in record.items():
            if name.startswith("train_"):
                w.scalar(f"train/epoch_{name[6:]}", value, s)
            elif name.startswith("val_"):
                w.scalar(f"val/{name[4:]}", value, s)
        if "ensemble_val_accuracy" in record:
            w.scalar("ensemble/accuracy", record["ensemble_val_accuracy"], s)
            w.scalar("ensemble/members", record["snapshots"], s)
        w.flush()
        return None

    def end(self, run: Run, reason: str | None) -> None:
        w, self.writer = self.writer, None
        if w is None:
            return
        try:
            w.close()
        except WriteError:
            if reason != "error":  # else the error that stopped the run is reported
                raise


class ProgressBar(Hook):
    """A tqdm bar per epoch with the last loss and lr (on process 0 only)."""

    def __init__(self):
        self.bar = None

    def chunk(self, run: Run, end: ChunkEnd) -> str | None:
        spe = run.steps_per_epoch
        if not is_main():
            return None
        if self.bar is None:
            from tqdm.auto import tqdm

            epoch = end.lo // spe
            self.bar = tqdm(
                total=spe,
                initial=end.lo - epoch * spe,
                desc=f"epoch {epoch + 1}/{run.epochs}",
                unit="step",
                leave=False,
            )
        self.bar.update(end.hi - end.lo)
        loss, lr = end.metrics["loss"][-1], end.metrics["lr"][-1]
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}")
        if end.hi % spe == 0:
            self.end(run, None)
        return None

    def end(self, run: Run, reason: str | None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochEnd(Hook):
    """Calls ``fn(record)`` after every epoch (e.g. to print a summary line)."""

    def __init__(self, fn):
        self.fn = fn

    def epoch(self, run: Run, record: dict[str, Any]) -> str | None:
        self.fn(record)
        return None


class StopOnSignals(Hook, contextlib.AbstractContextManager):
    """A context manager whose handlers only record SIGINT/SIGTERM; as a hook it
    stops the run at the next chunk boundary (reason ``"signal"``), where the
    checkpoint hook saves. Exit with ``128 + received``.

    >>> with StopOnSignals() as stop:
    ...     stop.received is None
    True
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = tuple(signals)
        self.got: list[int] = []
        self.old: dict = {}

    @property
    def received(self) -> int | None:
        return self.got[0] if self.got else None

    def __enter__(self) -> StopOnSignals:
        def handler(signum: int, frame: object) -> None:
            self.got.append(signum)

        self.old = {s: signal.signal(s, handler) for s in self.signals}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)
        return None

    def chunk(self, run: Run, end: ChunkEnd) -> str | None:
        return "signal" if self.got else None

    def epoch(self, run: Run, record: dict[str, Any]) -> str | None:
        return "signal" if self.got else None


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read (corrupt, or from an incompatible run)."""


def _is_key(a) -> bool:
    return jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


def to_disk(tree: Any) -> dict[str, jax.Array]:
    """Leaves by index; rng keys as their ``key_data`` (Orbax stores plain arrays)."""
    return {
        f"{i:04d}": jax.random.key_data(a) if _is_key(a) else a
        for i, a in enumerate(jax.tree.leaves(tree))
    }


def from_disk(template: Any, flat: dict[str, jax.Array]) -> Any:
    """The inverse of :func:`to_disk`, keys rewrapped like ``template``'s."""
    leaves = jax.tree.leaves(template)
    out = [
        jax.random.wrap_key_data(flat[f"{i:04d}"], impl=jax.random.key_impl(t))
        if _is_key(t)
        else flat[f"{i:04d}"]
        for i, t in enumerate(leaves)
    ]
    return jax.tree.unflatten(jax.tree.structure(template), out)


class _OrbaxThreadErrors(logging.Filter):
    """Drops the traceback that Orbax's write threads log for an exception that
    the save then raises in the caller (reported there in one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_SignalingThread.run() raised an exception" not in str(record.msg)


@contextlib.contextmanager
def _orbax_errors_to_caller() -> Iterator[None]:
    absl_logger = logging.getLogger("absl")
    quiet = _OrbaxThreadErrors()
    absl_logger.addFilter(quiet)
    try:
        yield
    finally:
        absl_logger.removeFilter(quiet)


class _OrphanedCallbacks:
    """``sys.unraisablehook`` that drops the ``RuntimeError('Event loop is
    closed')`` of TensorStore writes completing after their Orbax save failed.

    The save's event loop is closed by then, so every write still in flight calls
    back into a closed loop: bare tracebacks on stderr, some even after the
    failure was reported. Installed at the first save (they may come before the
    save raises), it drops only those; anything else reaches the previous hook.
    """

    def __init__(self, previous: Any):
        self.previous = previous

    def __call__(self, u: Any) -> None:
        late = isinstance(u.exc_value, RuntimeError) and u.object is None
        if not (late and str(u.exc_value) == "Event loop is closed"):
            self.previous(u)


def _drop_orphaned_callbacks() -> None:
    if not isinstance(sys.unraisablehook, _OrphanedCallbacks):
        sys.unraisablehook = _OrphanedCallbacks(sys.unraisablehook)


def _abstract(tree):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
    )


class Checkpoints(Hook):
    """Orbax checkpoints of the whole run: ``latest/`` and ``best/``.

    ``latest/<step>`` (``max_to_keep`` of them) holds the carry (the train state
    with the model state, rng streams included, the snapshot buffer and the weight
    average with its count), the best epoch's state and the host state
    (:meth:`Run.host_state`); it is written after
    every epoch and when a hook stops the run. ``best/<step>`` holds the best
    epoch's ``(params, model_state)``. :meth:`restore` makes a resumed run compute
    what an uninterrupted one does. A save that fails raises :class:`WriteError`
    (one line, Orbax's thread tracebacks left out): the run stops, the failed
    step's partial directory is removed and the earlier checkpoints are kept.
    """

    def __init__(
        self, directory: str | Path, max_to_keep: int, monitor: str, mode: str
    ):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        directory = Path(directory).absolute()
        self.latest = ocp.CheckpointManager(
            directory / "latest",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,  # a save cut short by a crash or kill
            ),
        )
        sign = -1.0 if mode == "min" else 1.0
        self.monitor = monitor
        self.best = ocp.CheckpointManager(
            directory / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda m: sign * m[monitor],
                best_mode="max",
                create=True,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
            ),
        )

    def _tree(self, run: Run):
        return {"carry": to_disk(run.carry), "best": to_disk(run.best_state)}

    def _save(self, manager: Any, step: int, **kwargs: Any) -> None:
        """``manager.save(step, ...)``; a failure is a :class:`WriteError` naming the
        step's directory, and the partial step is removed (it would hold space)."""
        _drop_orphaned_callbacks()  # they may come before the save raises
        try:
            with _orbax_errors_to_caller():
                manager.save(step, force=True, **kwargs)
        except (OSError, ValueError) as e:  # Orbax wraps TensorStore's in ValueError
            where = Path(str(manager.directory))
            if is_main():
                for tmp in where.glob(f"{step}.orbax-checkpoint-tmp*"):
                    shutil.rmtree(tmp, ignore_errors=True)
            raise WriteError.of(where / str(step), e) from e

    def save(self, run: Run) -> None:
        """Writes ``latest/<step>`` (once per step).

        Raises:
          WriteError: it could not be written; the earlier ones are kept.
        """
        if self.latest.latest_step() == run.step:
            return
        a = self.ocp.args
        self._save(
            self.latest,
            run.step,
            args=a.Composite(
                state=a.StandardSave(self._tree(run)), meta=a.JsonSave(run.host_state())
            ),
        )

    def restore(self, run: Run) -> bool:
        """Loads the latest checkpoint into ``run``; False if there is none.

        Raises:
          CheckpointError: unreadable, or saved by a different kind of run.
        """
        step = self.latest.latest_step()
        if step is None:
            return False
        where = self.latest.directory / str(step)
        a = self.ocp.args
        try:
            out = self.latest.restore(
                step,
                args=a.Composite(
                    state=a.StandardRestore(_abstract(self._tree(run))),
                    meta=a.JsonRestore(),
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
        saved = {k: meta.get(k) for k in run.signature}
        if saved != run.signature:
            raise CheckpointError(
                f"checkpoint {where} is from a different run ({saved}; now "
                f"{run.signature}); it was left untouched"
            )
        run.carry = from_disk(run.carry, tree["carry"])
        run.best_state = from_disk(run.best_state, tree["best"])
        run.load_host_state(meta)
        return True

    def epoch(self, run: Run, record: dict[str, Any]) -> str | None:
        self.save(run)
        if run.best["epoch"] == record["epoch"]:
            a = self.ocp.args
            value = run.best["value"]
            self._save(
                self.best,
                run.step,
                args=a.Composite(
                    state=a.StandardSave(to_disk(run.best_state)),
                    meta=a.JsonSave({"epoch": record["epoch"], self.monitor: value}),
                ),
                metrics={self.monitor: value},
            )
        return None

    def end(self, run: Run, reason: str | None) -> None:
        try:
            if reason not in (None, "error"):
                self.save(run)
        finally:
            self.latest.close()
            self.best.close()
