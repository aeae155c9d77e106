"""Host-side actions between compiled chunks: one protocol for every driver.

CLU's periodic actions: :func:`lrjax.fit`, :func:`lrjax.lr_range_test` and
:func:`lrjax.lr_grid` run compiled chunks of updates (:func:`lrjax._src.loop.drive`)
and, between two chunks, never inside one, call their hooks
(:func:`lrjax.step_range_test` after each update of your step). A
:class:`Hook` says what to do (``act``); its :class:`Trigger` says when (every
``n`` updates, every ``n`` seconds, at every ``n``-th epoch end, at the end, or
after every chunk, the default). A hook may implement

* ``start(run)`` once before the first chunk (after a resume, ``run`` holds the
  restored progress);
* ``act(run, end)`` after a chunk when its trigger fires; ``end`` is a
  :class:`ChunkEnd` with the chunk's per-update metrics on the host and, when the
  chunk ended an epoch, the driver's record of it. It returns a reason to stop
  (any string), or None;
* ``end(run, reason)`` once at the end, however the run ended (``reason``: None
  when the plan ran to its end, the stop reason, or ``"error"``).

``run`` is a :class:`Run`, the same for every driver (``fit``'s is a
:class:`FitRun`). The driver keeps it current before any hook acts: what
decides the future of a run (the best epoch, early stopping, divergence) is the
driver's, never a hook's, so no hook depends on another having acted first.

>>> class Every100(Hook):
...     trigger = Trigger(every_steps=100)
...     def act(self, run, end):
...         print(run.step, end.metrics["loss"].shape)
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrjax._src.distributed import is_main
from lrjax._src.step import fresh


@dataclasses.dataclass
class Run:
    """Where a run stands: what every hook sees, kept current by the driver.

    ``step`` and ``epoch`` count what has completed; ``history`` holds the
    records of the completed epochs (each also a :class:`ChunkEnd`'s ``record``).
    A range test has no epochs (``steps_per_epoch`` None).
    """

    total_steps: int  # the updates of the whole plan (the run's end)
    steps_per_epoch: int | None = None
    step: int = 0  # completed updates
    epoch: int = 0  # completed epochs
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def epochs(self) -> int | None:
        """The epochs of the whole plan (None without epochs)."""
        spe = self.steps_per_epoch
        return None if spe is None else self.total_steps // spe


@dataclasses.dataclass
class FitRun(Run):
    """The progress of one :func:`lrjax.fit` run: what a checkpoint holds.

    ``carry`` and ``best_state`` are device pytrees; the rest is JSON
    (:meth:`host_state`). ``carry`` is valid until the next chunk runs (its
    buffers are donated to it): copy what must outlive it (:func:`fresh`). The
    best epoch (by ``monitor``, ``mode``) and early stopping are kept here by
    :meth:`end_epoch`, which ``fit`` calls before any hook acts.
    """

    signature: dict[str, Any] = dataclasses.field(default_factory=dict)
    carry: Any = None  # Carry(TrainState, SnapshotBuffer | None, WeightAverage | None)
    best_state: Any = None  # (params, model_state) of the best epoch
    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 0  # epochs without improvement before a stop (0: never)
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

    def end_epoch(self, record: dict[str, Any]) -> str | None:
        """Tracks the best ``monitor`` value (and a copy of that epoch's model);
        ``"early_stop"`` after ``patience`` epochs without improvement.

        A missing value changes nothing; a non-finite one never improves.
        """
        value = record.get(self.monitor)
        if value is None:
            return None
        best = self.best["value"]
        better = math.isfinite(value) and (
            best is None or (value < best if self.mode == "min" else value > best)
        )
        if better:
            self.best = {"value": value, "epoch": record["epoch"], "wait": 0}
            state = self.carry.state
            self.best_state = fresh((state.params, state.model_state))
            return None
        self.best = {**self.best, "wait": self.best["wait"] + 1}
        if self.patience and self.best["wait"] >= self.patience:
            self.stopped_early = True
            return "early_stop"
        return None


@dataclasses.dataclass
class ChunkEnd:
    """What a hook sees after a chunk: updates ``[lo, hi)``.

    ``metrics`` are on the host, a row per update: ``[hi - lo]`` for one model,
    ``[hi - lo, P]`` for a population (P members, padded with copies of the last
    to a multiple of the devices). ``state`` is the driver's device state, valid
    until the next chunk runs (its buffers are donated). ``record`` is the
    driver's record of the epoch this chunk ended, else None: ``fit``'s history
    entry (``epoch``, ``step``, ``train_<metric>``, ``val_<metric>``, ``lr``,
    ...); ``lr_grid``'s ``epoch``, ``step`` and ``val_<metric>`` (``[members]``).
    """

    lo: int  # first update of the chunk
    hi: int  # one past its last update (that counts: a sweep's plan may run past)
    metrics: dict[str, np.ndarray]
    state: Any
    record: dict[str, Any] | None = None


def _every(name: str, value: float | None, integer: bool) -> None:
    if value is None:
        return
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0 or None, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Trigger:
    """When a hook acts: after a chunk that meets any of the conditions set.

    Attributes:
      every_steps: the chunk ``[lo, hi)`` completed a multiple of ``n`` updates
        (``lo // n < hi // n``): a chunk is never cut, so a hook acting every
        100 updates acts once after a chunk of 300.
      every_seconds: ``n`` seconds or more since the hook last acted (or
        started).
      every_epochs: the chunk ended epoch ``e`` (1-based) with ``e % n == 0``
        (``fit`` and ``lr_grid``; a range test has no epochs).
      at_end: once after the last chunk run, however the run stopped (unless
        the hook acted after that chunk already, or an exception ended the run).

    ``Trigger()``, no condition: after every chunk.

    >>> from lrjax._src.loop import epoch_plan
    >>> run = Run(total_steps=20, steps_per_epoch=5)
    >>> chunks = [ChunkEnd(lo, hi, {}, None) for lo, hi in epoch_plan(0, 20, 5, 2)]
    >>> [(c.lo, c.hi) for c in chunks]
    [(0, 2), (2, 5), (5, 7), (7, 10), (10, 12), (12, 15), (15, 17), (17, 20)]
    >>> every3 = Trigger(every_steps=3)
    >>> [c.hi for c in chunks if every3.fires(run, c, 0.0)]
    [5, 7, 10, 12, 15, 20]
    >>> [c.hi for c in chunks if Trigger(every_epochs=2).fires(run, c, 0.0)]
    [10, 20]
    >>> Trigger(every_seconds=60).fires(run, chunks[0], 61.0)
    True
    """

    every_steps: int | None = None
    every_seconds: float | None = None
    every_epochs: int | None = None
    at_end: bool = False

    def __post_init__(self):
        _every("every_steps", self.every_steps, True)
        _every("every_seconds", self.every_seconds, False)
        _every("every_epochs", self.every_epochs, True)

    def fires(self, run: Run, end: ChunkEnd, seconds: float) -> bool:
        """Whether the hook acts after chunk ``end``, ``seconds`` since it last
        acted (or started); ``at_end`` is the driver's, after the last chunk."""
        steps, secs, epochs = self.every_steps, self.every_seconds, self.every_epochs
        if steps is None and secs is None and epochs is None:
            return not self.at_end  # no condition: every chunk
        if steps is not None and end.lo // steps < end.hi // steps:
            return True
        if secs is not None and seconds >= secs:
            return True
        spe = run.steps_per_epoch
        return bool(
            epochs is not None
            and spe
            and end.hi % spe == 0
            and (end.hi // spe) % epochs == 0
        )


class Hook:
    """A host action between chunks (``act``) and when it runs (``trigger``).

    Override what you need; every method is a no-op. The same hook serves
    ``fit`` (``config=lrjax.FitConfig(hooks=[...])``), ``lr_range_test`` and
    ``lr_grid`` (``execution=lrjax.Execution(hooks=[...])``).
    """

    trigger: Trigger = Trigger()  # after every chunk; set yours on the class or self

    def start(self, run: Run) -> None:
        """Called once before the first chunk (after a resume: with ``run`` as
        restored); open files or writers here. Its time is not the first
        epoch's."""

    def act(self, run: Run, end: ChunkEnd) -> str | None:
        """Called after a chunk when ``trigger`` fires. Return a stop reason
        (a short string, e.g. ``"requested"``: the run's ``stop_reason``, unless
        the chunk was the plan's last) to stop the run after this chunk, or None
        to go on. Every hook acts after a chunk even when an earlier one asked
        to stop."""
        return None

    def end(self, run: Run, reason: str | None) -> None:
        """Called once when the run ends, however it ended: ``reason`` is the
        stop reason (None: the plan ran to its end; ``"error"``: an exception
        is on its way to the caller). Close what ``start`` opened."""


#: A driver's own books after a chunk, before any hook: ``(run, end) -> reason``.
Observe = Callable[[Run, ChunkEnd], str | None]


class Hooks:
    """The hooks of one run, called by the driver (:func:`lrjax._src.loop.drive`).

    :meth:`after` moves ``run`` on to a chunk's end, lets the driver's own
    ``observe(run, end)`` keep its books first (curves, divergence, the epoch's
    record, the best epoch: it may set ``end.record``), then every hook whose
    trigger fires acts. The first stop reason wins (the driver's before the
    hooks'); every hook acts even so.
    """

    def __init__(
        self, run: Run, hooks: Sequence[Hook] = (), observe: Observe | None = None
    ):
        for h in hooks:
            if not isinstance(h, Hook):
                raise TypeError(
                    "a hook must be an lrjax.Hook (act(run, end) and its trigger), "
                    f"got {type(h).__name__}"
                )
        self.run, self.hooks, self.observe = run, list(hooks), observe
        self.last: ChunkEnd | None = None  # the last chunk, for at_end triggers
        self.acted_last = [False] * len(self.hooks)
        self.clock = [0.0] * len(self.hooks)  # when each hook last acted

    def start(self) -> None:
        now = time.monotonic()
        self.clock = [now] * len(self.hooks)
        for h in self.hooks:
            h.start(self.run)

    def after(self, end: ChunkEnd) -> str | None:
        run = self.run
        run.step = end.hi
        reason = self.observe(run, end) if self.observe is not None else None
        spe = run.steps_per_epoch
        if spe and end.hi % spe == 0:
            run.epoch = end.hi // spe
        self.last = end
        for i, h in enumerate(self.hooks):
            now = time.monotonic()
            fires = h.trigger.fires(run, end, now - self.clock[i])
            self.acted_last[i] = fires
            if fires:
                self.clock[i] = now
                asked = h.act(run, end)  # every hook acts, even after a stop
                reason = reason or asked
        return reason

    def end(self, reason: str | None) -> None:
        """``at_end`` hooks act on the last chunk, then every hook's ``end``."""
        last = self.last
        if reason != "error" and last is not None:
            for h, acted in zip(self.hooks, self.acted_last, strict=True):
                if h.trigger.at_end and not acted:
                    h.act(self.run, last)
        for h in self.hooks:
            h.end(self.run, reason)


def default_mode(monitor: str) -> str:
    """``"max"`` for an accuracy-like metric, else ``"min"``.

    >>> default_mode("val_accuracy"), default_mode("val_loss")
    ('max', 'min')
    """
    return "max" if "accuracy" in monitor else "min"


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
        # A new file per writer, named so that the names sort as they were made
        # (TensorBoard reads a directory's files in name order): a resume within
        # the same second wrote to, and truncated, the file it resumed from.
        name = (
            f"events.out.tfevents.{time.time():017.6f}.{socket.gethostname()}."
            f"{os.getpid()}"
        )
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
    ``s = k * log_every``: the mean of updates ``s - log_every .. s - 1`` (across
    chunk boundaries; after a resume the first window starts at the resume);
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
        # the last updates of the previous chunk (up to log_every - 1), which
        # the next chunk's first window includes; ``_tail_at``: where they end
        self._tail: dict[str, np.ndarray] = {}
        self._tail_at: int | None = None

    def start(self, run: Run) -> None:
        self._tail, self._tail_at = {}, None
        if is_main():
            # a resume drops what a later, lost part of the run wrote, and keeps
            # everything up to the checkpoint's step (its epoch's scalars too)
            purge = run.step + 1 if run.step else None
            self.writer = _EventFile(self.logdir, purge_step=purge)

    def act(self, run: Run, end: ChunkEnd) -> str | None:
        every, w = self.log_every, self.writer
        if w is None:
            return None
        joined = {}  # name -> (the tail + this chunk's values, the tail's length)
        for name, v in end.metrics.items():
            tail = self._tail.get(name) if self._tail_at == end.lo else None
            joined[name] = (
                (v, 0) if tail is None else (np.concatenate([tail, v]), len(tail))
            )
        for j in range(-(end.lo + 1) % every, end.hi - end.lo, every):
            s = end.lo + j + 1
            for name, v in end.metrics.items():
                if name == "lr":
                    w.scalar("train/lr", float(v[j]), s)
                else:
                    seen, k = joined[name][0], j + joined[name][1]
                    window = np.asarray(seen[max(0, k + 1 - every) : k + 1], np.float64)
                    w.scalar(f"train/{name}", float(window.mean()), s)
        keep = every - 1
        self._tail = {n: seen[len(seen) - min(keep, len(seen)) :]
                      for n, (seen, _) in joined.items()}  # fmt: skip
        self._tail_at = end.hi
        if end.record is not None:
            self._epoch(w, end.record)
        return None

    def _epoch(self, w: _EventFile, record: dict[str, Any]) -> None:
        s = record["step"]
        for name, value in record.items():
            if name.startswith("train_"):
                w.scalar(f"train/epoch_{name[6:]}", value, s)
            elif name.startswith("val_"):
                w.scalar(f"val/{name[4:]}", value, s)
        if "ensemble_val_accuracy" in record:
            w.scalar("ensemble/accuracy", record["ensemble_val_accuracy"], s)
            w.scalar("ensemble/members", record["snapshots"], s)
        w.flush()

    def end(self, run: Run, reason: str | None) -> None:
        w, self.writer = self.writer, None
        if w is None:
            return
        try:
            w.close()
        except WriteError:
            if reason != "error":  # else the error that stopped the run is reported
                raise


Postfix = Callable[[Run, ChunkEnd], dict[str, str]]


class ProgressBar(Hook):
    """A tqdm bar (on process 0 only), closed at the end.

    ``unit="step"`` counts the run's updates, on one bar (the range test), or
    with ``per_epoch`` on one bar per epoch, ``"epoch i/E"`` (``fit``);
    ``unit="epoch"`` counts epochs and acts at each epoch's end (the grid).
    ``postfix(run, end) -> {name: text}`` is shown after each move (none if
    None or empty).
    """

    def __init__(
        self,
        desc: str = "",
        *,
        unit: str = "step",
        per_epoch: bool = False,
        postfix: Postfix | None = None,
    ):
        if unit not in ("step", "epoch"):
            raise ValueError(f"unit must be 'step' or 'epoch', got {unit!r}")
        self.desc, self.unit, self.per_epoch = desc, unit, per_epoch
        self.postfix = postfix
        self.trigger = Trigger(every_epochs=1) if unit == "epoch" else Trigger()
        self.bar: Any = None
        self.done = 0  # where the bar stands, in its unit

    def _open(self, run: Run, lo: int) -> Any:
        from tqdm.auto import tqdm

        if self.per_epoch:  # a bar over this epoch's updates
            spe = run.steps_per_epoch
            assert spe is not None, "per_epoch needs a run with epochs"
            epoch = lo // spe
            return tqdm(
                total=spe,
                initial=lo - epoch * spe,
                desc=f"epoch {epoch + 1}/{run.epochs}",
                unit=self.unit,
                leave=False,
            )
        total = run.epochs if self.unit == "epoch" else run.total_steps
        done = run.epoch if self.unit == "epoch" else run.step
        return tqdm(
            total=total, initial=done, desc=self.desc, unit=self.unit, leave=False
        )

    def _position(self, run: Run, step: int) -> int:
        return run.epoch if self.unit == "epoch" else step

    def start(self, run: Run) -> None:
        if is_main() and not self.per_epoch:  # shown while the first chunk compiles
            self.bar = self._open(run, run.step)
            self.done = self._position(run, run.step)

    def act(self, run: Run, end: ChunkEnd) -> str | None:
        if not is_main():
            return None
        if self.bar is None:  # per epoch: the epoch's first chunk
            self.bar, self.done = self._open(run, end.lo), end.lo
        now = self._position(run, end.hi)
        self.bar.update(now - self.done)
        self.done = now
        shown = self.postfix(run, end) if self.postfix is not None else None
        if shown:
            self.bar.set_postfix(shown)
        spe = run.steps_per_epoch
        if self.per_epoch and spe and end.hi % spe == 0:
            self.end(run, None)
        return None

    def end(self, run: Run, reason: str | None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.4 h``, ``2.1 days``: an estimate, not a timing.

    >>> [_duration(s) for s in (42.4, 725, 12240, 181440)]
    ['42 s', '12 min', '3.4 h', '2.1 days']
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class ProgressLines(Hook):
    """Progress as plain lines, for a log or a pipe where a tqdm bar cannot redraw.

    After the first chunk that ends ``first_after`` seconds or more after the
    start, then every ``every_seconds``, process 0 writes ``"{desc}: step i of N
    (p%), r steps/s, about T left"`` (``, epoch e of E`` where the run has
    epochs: the epoch step ``i`` is in, counted from 1) to ``file`` (default
    ``sys.stderr``). The rate counts the updates since the first chunk ended, so
    compilation is not in it (the first line, before a second chunk, counts from
    the start). A range test usually stops at divergence before its last step:
    its time left is at most ``T``.

    >>> import io
    >>> lines = ProgressLines("find", first_after=0, file=io.StringIO())
    >>> run = Run(total_steps=400)
    >>> lines.start(run)
    >>> run.step = 100
    >>> lines.act(run, ChunkEnd(0, 100, {}, None))
    >>> lines.file.getvalue().startswith("find: step 100 of 400 (25.0%), ")
    True
    """

    def __init__(
        self,
        desc: str,
        *,
        every_seconds: float = 30.0,
        first_after: float = 5.0,
        file: Any = None,
    ):
        _every("every_seconds", every_seconds, False)
        if not first_after >= 0:
            raise ValueError(f"first_after must be >= 0 seconds, got {first_after!r}")
        self.desc, self.every, self.first_after = desc, every_seconds, first_after
        self.file = file
        self.t_next = 0.0
        self.origin = (0.0, 0)  # (time, step) the rate counts from
        self.first_chunk: tuple[float, int] | None = None

    def start(self, run: Run) -> None:
        now = time.perf_counter()
        self.t_next = now + self.first_after
        self.origin, self.first_chunk = (now, run.step), None

    def act(self, run: Run, end: ChunkEnd) -> str | None:
        now = time.perf_counter()
        t0, s0 = self.origin if self.first_chunk is None else self.first_chunk
        if self.first_chunk is None:
            self.first_chunk = (now, end.hi)
        if now < self.t_next or not is_main():
            return None
        self.t_next = now + self.every
        rate = (end.hi - s0) / max(now - t0, 1e-9)
        total = run.total_steps
        line = f"{self.desc}: step {end.hi} of {total} ({100 * end.hi / total:.1f}%)"
        spe = run.steps_per_epoch
        if spe:  # the epoch the step is in, as the epoch lines number it
            line += f", epoch {-(-end.hi // spe)} of {run.epochs}"
        line += f", {rate:.4g} steps/s"
        if rate > 0 and end.hi < total:
            line += f", about {_duration((total - end.hi) / rate)} left"
        print(line, file=self.file or sys.stderr, flush=True)
        return None


class EpochEnd(Hook):
    """Calls ``fn(record)`` after every epoch (e.g. to print a summary line)."""

    trigger = Trigger(every_epochs=1)

    def __init__(self, fn: Callable[[dict[str, Any]], Any]):
        self.fn = fn

    def act(self, run: Run, end: ChunkEnd) -> str | None:
        assert end.record is not None  # the driver records every epoch it ends
        self.fn(end.record)
        return None


class StopOnSignals(Hook, contextlib.AbstractContextManager):
    """A context manager whose handlers only record SIGINT/SIGTERM; as a hook it
    stops the run at the next chunk boundary (reason ``"signal"``), where the
    checkpoint hook saves. The ``with`` block ends normally: exiting (the command
    lines exit with ``128 + received``) is the caller's choice. ``signals``: the
    signals it records (default SIGINT and SIGTERM); ``received``: the first one
    received, or None.

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

    def act(self, run: Run, end: ChunkEnd) -> str | None:
        return "signal" if self.got else None


def orbax_checkpoint() -> Any:
    """``orbax.checkpoint``, imported without the deprecation warnings its own
    import raises: a newer jax deprecates names that orbax still reads at import
    (``jax.sharding.SingleDeviceSharding`` under jax 0.12 and orbax 0.12.8), which
    no lrjax user can act on and which ``python -W error`` turns into a crash."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, module=r"orbax(\.|$)"
        )
        import orbax.checkpoint as ocp
    return ocp


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read (corrupt, or from an incompatible run)."""


def _why_unreadable(e: Exception) -> str:
    """Orbax's error on a restore, as what it means for the run (one line).

    >>> print(_why_unreadable(ValueError("Requested shape: (64,) is not "
    ...     "compatible with the stored shape: (128,). Truncating/padding is off.")))
    ... # doctest: +NORMALIZE_WHITESPACE
    an array of this run has shape (64,) where the saved one has (128,): another
    model or optimizer?
    """
    text = str(e).strip()
    shapes = re.search(r"Requested shape: (\(.*?\)).*stored shape: (\(.*?\))", text)
    if shapes:
        return (
            f"an array of this run has shape {shapes[1]} where the saved one has "
            f"{shapes[2]}: another model or optimizer?"
        )
    if "tree structures do not match" in text:
        return (
            "the saved arrays are arranged as another model's or optimizer's "
            "(their tree structures differ)"
        )
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:300]}" if first else type(e).__name__


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
    """Orbax checkpoints of a :func:`lrjax.fit` run: ``latest/`` and ``best/``.

    ``latest/<step>`` (``max_to_keep`` of them) holds the carry (the train state
    with the model state, rng streams included, the snapshot buffer and the weight
    average with its count), the best epoch's state and the host state
    (:meth:`FitRun.host_state`); it is written after every epoch and when the run
    stops before its end. ``best/<step>`` holds the best epoch's ``(params,
    model_state)`` by the run's ``monitor``: the run (:meth:`FitRun.end_epoch`)
    tracks the best epoch before any hook acts, so this hook reads it whatever
    the hooks' order. :meth:`restore` makes a resumed run compute what an
    uninterrupted one does. A save that fails raises :class:`WriteError` (one
    line, Orbax's thread tracebacks left out): the run stops, the failed step's
    partial directory is removed and the earlier checkpoints are kept.
    """

    trigger = Trigger(every_epochs=1)

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        ocp = orbax_checkpoint()
        self.ocp = ocp
        self.directory = Path(directory).absolute()
        self.latest = ocp.CheckpointManager(
            self.directory / "latest",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=True,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,  # a save cut short by a crash or kill
            ),
        )
        self.best: Any = None  # best/, opened at the start with the run's monitor
        self.monitor = ""

    def start(self, run: Run) -> None:
        assert isinstance(run, FitRun), "Checkpoints is for lrjax.fit"
        ocp, sign, monitor = self.ocp, -1.0 if run.mode == "min" else 1.0, run.monitor
        self.monitor = monitor
        self.best = ocp.CheckpointManager(
            self.directory / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda m: sign * m[monitor],
                best_mode="max",
                create=True,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
            ),
        )

    def _tree(self, run: FitRun):
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

    def save(self, run: FitRun) -> None:
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

    def restore(self, run: FitRun) -> bool:
        """Loads the latest checkpoint into ``run``; False if there is none.

        Raises:
          CheckpointError: unreadable, or saved by a different kind of run.
        """
        step = self.latest.latest_step()
        if step is None:
            return False
        where = self.latest.directory / str(step)
        a = self.ocp.args

        def unreadable(e: Exception) -> CheckpointError:
            return CheckpointError(
                f"cannot resume from checkpoint {where}: {_why_unreadable(e)}; it "
                "was left untouched (delete it or use another directory)"
            )

        try:  # the metadata first: a different run is named before its arrays
            meta = self.latest.restore(step, args=a.Composite(meta=a.JsonRestore()))
            meta = meta["meta"]
            if not isinstance(meta, dict) or "epoch" not in meta:
                raise ValueError("metadata is missing")
        except Exception as e:  # orbax raises many kinds; report one clear line
            raise unreadable(e) from None
        saved = {k: meta.get(k) for k in run.signature}
        if saved != run.signature:
            differ = ", ".join(
                f"{k} {saved[k]} saved, {v} now"
                for k, v in run.signature.items()
                if saved[k] != v
            )
            hint = (
                " (another batch_size, accumulate_steps or data size?)"
                if saved["steps_per_epoch"] != run.signature["steps_per_epoch"]
                else ""
            )
            raise CheckpointError(
                f"checkpoint {where} is from a different run: {differ}{hint}; it "
                "was left untouched"
            )
        if meta["step"] > run.total_steps:
            spe = run.steps_per_epoch
            part = meta["step"] - meta["epoch"] * spe  # saved inside an epoch
            held = f"{meta['epoch']} epochs" + (f" and {part} updates" if part else "")
            raise CheckpointError(
                f"checkpoint {where} holds {held}, more than this run's "
                f"{run.epochs}: resume with epochs >= {-(-meta['step'] // spe)} (it "
                "continues) or train in another directory; it was left untouched"
            )
        try:
            out = self.latest.restore(
                step,
                args=a.Composite(state=a.StandardRestore(_abstract(self._tree(run)))),
            )
            tree = out["state"]
        except Exception as e:
            raise unreadable(e) from None
        run.carry = from_disk(run.carry, tree["carry"])
        run.best_state = from_disk(run.best_state, tree["best"])
        run.load_host_state(meta)
        return True

    def act(self, run: Run, end: ChunkEnd) -> str | None:
        assert isinstance(run, FitRun) and end.record is not None
        epoch = end.record["epoch"]
        self.save(run)
        if run.best["epoch"] == epoch:
            a = self.ocp.args
            value = run.best["value"]
            self._save(
                self.best,
                run.step,
                args=a.Composite(
                    state=a.StandardSave(to_disk(run.best_state)),
                    meta=a.JsonSave({"epoch": epoch, self.monitor: value}),
                ),
                metrics={self.monitor: value},
            )
        return None

    def close(self) -> None:
        """Closes the managers (what :meth:`end` does after its last save)."""
        self.latest.close()
        if self.best is not None:
            self.best.close()

    def end(self, run: Run, reason: str | None) -> None:
        try:
            if reason not in (None, "error"):
                assert isinstance(run, FitRun)
                self.save(run)
        finally:
            self.close()
