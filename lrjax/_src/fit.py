"""Training: your model, your loss, your data, one small config object.

:func:`fit` trains through the one step (:func:`lrjax.make_step`, the same
step the range test runs) in compiled chunks (:mod:`lrjax._src.loop`); every epoch is
cut into ``chunks_per_epoch`` chunks at fixed update positions. Between chunks,
and only there, the run keeps its books (the epoch's sums, its record, the best
epoch and early stopping) and then host actions run (:mod:`lrjax.hooks`, the one
protocol of every driver: progress bar, TensorBoard, checkpoints, signals, yours);
at every epoch end the model is evaluated in evaluation mode on ``val_data``.

Batch order of in-memory data: epoch ``e`` (0-based) is the first
``steps_per_epoch * k`` batches of ``lrjax._src.batches.epoch_order(fold_in(key, e),
0, N, B)`` (equally ``batch_indices(fold_in(key, e), N, B, steps_per_epoch *
k)``), so a resumed run computes the same chunks on the same inputs as an
uninterrupted one: the checkpoint holds the whole train state (params, optimizer
state, BatchNorm statistics, rng streams), the best epoch's state, the snapshot
buffer, the weight average and the host state (history, early stopping, the
partial sums of an unfinished epoch). An iterable is read again from its start
after a resume (not exact).

Weight averaging (SWA; ``FitConfig.average_start``): the compiled chunk keeps a
running mean of the params, ``avg <- avg + (params - avg) / (n + 1)`` after
every averaged update (:func:`lrjax._src.ensembles.update_average`); at the end the
averaged weights get BatchNorm statistics of their own from one pass over the
training data (:func:`lrjax._src.ensembles.stats_pass_step`) and are evaluated with
and without them.

A pure model with a state of its own (Linen's ``batch_stats``, Equinox's
``eqx.nn.State``; ``model_state=``) trains through ``loss_fn(params,
model_state, batch, key)`` like :func:`lrjax.lr_range_test`: the state and the
key of its update rngs are part of the train state, so checkpoints, exact resume,
the best epoch and snapshots carry them. Its evaluation is the caller's
``eval_fn(params, model_state, batch)``. Its weight average averages the params
only and keeps the last update's ``model_state`` (lrjax cannot tell which of its
leaves are batch statistics; re-estimate them from the averaged params with your
own pass over the training data if the model has BatchNorm).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lrjax._src import ensembles
from lrjax._src.batches import (
    ArraySource,
    IterSource,
    ProcessShare,
    Source,
    check_batch_size,
    epoch_order,
    is_arrays,
    leading_size,
    take,
)
from lrjax._src.hooks import (
    CheckpointError,
    Checkpoints,
    ChunkEnd,
    FitRun,
    Hook,
    ProgressBar,
    Run,
    TensorBoard,
    Trigger,
    default_mode,
)
from lrjax._src.loop import Program, check_loop, drive, epoch_plan
from lrjax._src.results import Timings, describe_devices
from lrjax._src.specs import _set, check_hooks, takes_moved_keywords
from lrjax._src.step import (
    STATEFUL_EVAL,
    LossFn,
    Model,
    OptimizerFactory,
    TrainState,
    check_accumulate,
    check_classification_data,
    check_optimizer,
    classification_loss,
    fresh,
    init_member,
    init_state,
    make_eval_batch,
    make_optimizer,
    make_step,
    model_form,
    split_model,
    split_stateful,
)

__all__ = ["CheckpointError", "FitConfig", "FitResult", "data_mesh", "evaluate", "fit"]

P = jax.sharding.PartitionSpec


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How :func:`fit` trains. Every field has a default.

    Attributes:
      epochs, batch_size: ``batch_size`` is the (micro-)batch of in-memory data;
        an iterable's batches are used as they come.
      learning_rate: a float or a schedule ``step -> lr`` (any optax schedule).
      accumulate_steps: micro-batches averaged into one update.
      patience: early stopping after this many epochs without improvement of
        ``monitor`` (0: off).
      monitor: any key of an epoch record: ``"val_loss"``, ``"val_accuracy"``,
        ``"val_<metric>"`` of the loss or eval function, ``"train_loss"``...
      monitor_mode: ``"min"`` or ``"max"``; default ``"max"`` when the name
        contains ``accuracy``, else ``"min"``.
      restore_best: return the best epoch's model (default: when patience > 0).
      snapshot_steps: update indices after which the model is snapshotted
        (:func:`lrjax.snapshot_steps`); None for none.
      average_start: weight averaging (SWA): the index ``s`` of the first update
        after which the params enter a running mean; None (default) for none.
        The mean takes the params after every update ``t >= s`` with
        ``(t - s) % average_every == 0``:
        ``avg <- avg + (params - avg) / (n + 1)``, ``n <- n + 1``, in float32
        inside the compiled chunk (``torch.optim.swa_utils.AveragedModel``).
        Only ``nnx.Param`` variables are averaged; BatchNorm statistics are
        re-estimated for the average at the end (``FitResult.averaged_model``).
        With ``model_state`` (a pure model) the params are averaged and the
        last update's model state is kept, not re-estimated.
        Must be below the run's ``epochs * steps_per_epoch`` updates.
      average_every: average every this many updates from ``average_start``.
      chunks_per_epoch: compiled chunks per epoch (host actions run between).
      log_every: TensorBoard's ``train/*`` scalars every this many updates.
      loop: ``"auto"``, ``"scan"``, ``"unroll"`` or ``"dispatch"``
        (:mod:`lrjax._src.loop`).
      data_parallel: shard every batch over the devices (a ``("data",)`` mesh,
        params replicated); default when there are several devices. Under
        several processes (:mod:`lrjax.distributed`) the mesh spans every
        process and each process reads only its rows of every global batch:
        for in-memory data (the same arrays on every process) it gathers its
        slice of the batch indices; an iterable must yield this process's rows
        of each global batch (``batch_size`` is then the global batch).
      steps_per_epoch: updates per epoch; required for an iterable without
        ``len()`` (default ``len(data) // accumulate_steps``; for arrays
        ``N // batch_size // accumulate_steps``).
      eval_batch_size: examples per evaluation batch of in-memory data.
      checkpoint_dir, resume, max_to_keep: Orbax checkpoints (``latest/`` every
        epoch and when a hook stops the run, ``best/``); ``resume`` continues
        from ``latest``.
      logdir: TensorBoard event files (:class:`lrjax._src.hooks.TensorBoard`).
      progress: a tqdm progress bar per epoch (:class:`lrjax.hooks.ProgressBar`).
      hooks: your :class:`lrjax.Hook` objects (a sequence, kept as a tuple),
        acting after the built-in ones (TensorBoard, checkpoints, progress) when
        their trigger fires; ``run`` is a :class:`lrjax.hooks.FitRun` (its
        ``carry``, ``best``, ``history``), an epoch's ``end.record`` its history
        entry. The best epoch and early stopping are the run's, kept before any
        hook acts. The range tests and grids take them in ``Execution.hooks``.
    """

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float | Callable = 0.01
    accumulate_steps: int = 1
    patience: int = 0
    monitor: str = "val_loss"
    monitor_mode: str | None = None
    restore_best: bool | None = None
    snapshot_steps: Any = None
    average_start: int | None = None
    average_every: int = 1
    chunks_per_epoch: int = 8
    log_every: int = 10
    loop: str = "auto"
    data_parallel: bool | None = None
    steps_per_epoch: int | None = None
    eval_batch_size: int = 1000
    checkpoint_dir: str | Path | None = None
    resume: bool = False
    max_to_keep: int = 2
    logdir: str | Path | None = None
    progress: bool = False
    hooks: Sequence[Hook] = ()

    def __post_init__(self):
        _check(self)  # a bad value is refused here, as by the other specs


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    ``model`` is a NEW module (in the caller's module's mode; ``.eval()`` it for
    inference) from the final, or with ``restore_best`` the best, ``params`` and
    ``model_state``; for a pure model it is the params pytree. For a model
    given with ``model_state`` (Linen, Equinox), ``params`` and ``model_state``
    are the trained params and the caller's kind of state (e.g.
    ``{"batch_stats": ...}``, an ``eqx.nn.State``), without lrjax's rng key.
    ``snapshots`` are ``(params, model_state)`` stacked ``[m, ...]``, for
    :func:`lrjax.ensemble_curve` with ``spec`` (a module), the same kind of
    state.

    With snapshots of a module, ``ensemble_curve[m - 1]`` is the test accuracy
    of the ensemble of the last ``m`` snapshots (mean softmax, m = 1..M), and
    ``snapshot_test_accuracy`` each snapshot's; ``ensemble_val_curve`` and
    ``snapshot_val_accuracy`` are the same on ``val_data`` (an ``(x, y)``
    tuple), computed by the same :func:`lrjax.ensemble_curve`. Choose
    ``m`` on the validation curve and read its test accuracy off
    ``ensemble_curve``: ``m`` chosen on the test curve overstates the test
    accuracy. Each is None without that data, without a snapshot written, for a
    pure model, or when the run was interrupted.

    With ``FitConfig.average_start``, ``averaged_model`` is a new module (or the
    params pytree) of the weight average ``average_params`` (the mean of
    ``average_count`` weights, cast to the params' dtypes) and
    ``average_model_state``: the final ``model_state`` whose BatchNorm
    statistics were re-estimated for the averaged weights with one pass of
    ``average_bn_batches`` training batches (0: no BatchNorm, or an iterable
    that gave no batch again; always 0 with ``model_state=``, whose final state
    is kept as it is). ``average_val`` / ``average_test`` are its
    metrics on ``val_data`` / ``test_data``; with BatchNorm, ``*_no_bn`` are
    those of the same weights with the final training statistics (no
    re-estimation). None when averaging is off, nothing was averaged, or the
    run was interrupted (``average_count`` still says how far it got).
    """

    model: Any  #: the trained model: a new module, or the params pytree
    params: Any  #: the trained params (final, or best with ``restore_best``)
    #: the model's other state (batch statistics, rngs), the caller's kind
    model_state: Any
    spec: Model  #: how lrjax split the model (what :func:`lrjax.ensemble_curve` needs)
    history: list[dict[str, Any]]  #: one record per epoch
    best_epoch: int | None  #: 1-based epoch of the best monitored value
    epochs_run: int  #: epochs completed (resumed ones included)
    stopped_early: bool  #: early stopping (``patience``) ended the run
    interrupted: bool  #: a hook (a signal) stopped it; the checkpoint is saved
    #: ``"early_stop"``, a hook's reason (``"signal"``), ``"data"``, or None
    stop_reason: str | None
    step: int  #: updates completed
    #: ``(params, model_state)`` at the snapshot steps, stacked ``[m, ...]``
    snapshots: Any
    snapshot_steps: list[int]  #: the updates after which the snapshots were taken
    snapshot_epochs: list[float]  #: the same, in epochs
    timings: Timings  #: driver "fit": compile_s, run_s, epoch_s, ..., total_s
    device: str  #: the device the run used, in words
    test: dict[str, float] | None = None  #: eval metrics of ``model`` on test_data
    snapshot_test_accuracy: list[float] | None = None  #: each snapshot's test accuracy
    ensemble_curve: list[float] | None = None  #: last-m ensembles, m = 1..M
    #: each snapshot's validation accuracy
    snapshot_val_accuracy: list[float] | None = None
    ensemble_val_curve: list[float] | None = None  #: the same ensembles on val_data
    averaged_model: Any = None  #: the weight average, BatchNorm re-estimated
    average_params: Any = None  #: the weight average (``FitConfig.average_start``)
    average_model_state: Any = None  #: its state, BatchNorm statistics re-estimated
    average_start: int | None = None  #: first update index averaged
    average_count: int = 0  #: weights averaged
    average_bn_batches: int = 0  #: batches of the BatchNorm re-estimation
    #: the average's metrics on ``val_data``
    average_val: dict[str, float] | None = None
    #: the average's metrics on ``test_data``
    average_test: dict[str, float] | None = None
    average_val_no_bn: dict[str, float] | None = None  #: only with BatchNorm
    average_test_no_bn: dict[str, float] | None = None  #: only with BatchNorm

    def __repr__(self) -> str:
        from lrjax._src.results import short_repr

        last = self.history[-1] if self.history else {}
        fields: dict[str, Any] = {
            "epochs_run": self.epochs_run,
            "step": self.step,
            "best_epoch": self.best_epoch,
            "stop_reason": self.stop_reason,
            "val_accuracy": last.get("val_accuracy"),
            "val_loss": last.get("val_loss"),
            "test": self.test,
        }
        if self.snapshot_steps:
            fields["snapshots"] = len(self.snapshot_steps)
            fields["ensemble_curve"] = self.ensemble_curve
        if self.average_start is not None:
            fields["average_count"] = self.average_count
            fields["average_test"] = self.average_test
        fields["model"] = self.model  # its type's name, never the graph
        return short_repr("FitResult", fields)

    def plot(self, ax: Any = None) -> Any:
        """Loss and accuracy per epoch with the lr (:func:`lrjax.plot_learning_curves`).

        Args:
          ax: one matplotlib Axes (accuracy only), a pair ``(loss_ax, acc_ax)``,
            or None for a new figure with both.

        Returns:
          The accuracy Axes.
        """
        from lrjax._src.plots import plot_learning_curves

        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(1, 2, figsize=(11, 4.2))
        return plot_learning_curves(self.history, ax)

    def _repr_html_(self) -> str:
        from lrjax._src.results import html_with_plot

        return html_with_plot(repr(self), self.plot)


class Carry(NamedTuple):
    state: TrainState
    snaps: ensembles.SnapshotBuffer | None
    average: ensembles.WeightAverage | None  # None: averaging off (no leaves)


def data_mesh(
    batch_size: int, devices: Iterable[jax.Device] | None = None
) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over all devices of every process.

    The devices are grouped by process, so each process holds one contiguous
    block of every batch (its share, :class:`lrjax._src.batches.ProcessShare`).

    Raises:
      ValueError: if ``batch_size`` is not divisible by the device count.

    >>> mesh = data_mesh(64)  # batch size 64 over every device, grouped by process
    >>> mesh.axis_names, mesh.devices.size == jax.device_count()
    (('data',), True)
    >>> data_mesh(3, [jax.devices()[0]] * 2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: batch size 3 must be divisible by the number of devices (2) ...
    """
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    devices = list(devices)
    if batch_size % len(devices):
        raise ValueError(
            f"batch size {batch_size} must be divisible by the number of devices "
            f"({len(devices)}) for data-parallel training"
        )
    return jax.sharding.Mesh(np.array(devices), ("data",))


class Evaluator:
    """``evaluator(params, model_state, data) -> {name: float}`` in eval mode.

    One jitted batch evaluation dispatched per batch (the smaller tail batch
    compiles once more); the metrics are means weighted by batch size. ``data``
    is in-memory arrays (cut into ``batch_size`` batches) or an iterable.
    """

    def __init__(self, spec, loss_fn, eval_fn, batch_size: int):
        self.fn = jax.jit(make_eval_batch(spec, loss_fn, eval_fn=eval_fn))
        self.batch_size = batch_size

    def __call__(self, params, model_state, data) -> dict[str, float]:
        if is_arrays(data):
            n = leading_size(data, "data")
            bs = self.batch_size
            batches = (
                jax.tree.map(lambda a, i=i: a[i : i + bs], data)
                for i in range(0, n, bs)
            )
        else:
            batches = iter(data)
        outs, sizes = [], []
        for b in batches:
            outs.append(self.fn(params, model_state, b))
            sizes.append(leading_size(b))
        if not outs:
            raise ValueError("the evaluation data gave no batch")
        w = np.asarray(sizes, np.float64) / sum(sizes)
        host = jax.device_get(outs)
        return {
            name: float(sum(wi * float(o[name]) for wi, o in zip(w, host, strict=True)))
            for name in host[0]
        }


def evaluate(
    model: Any,
    data: Any,
    *,
    loss_fn: LossFn | None = None,
    model_state: Any = None,
    eval_fn: Callable | None = None,
    batch_size: int = 1000,
) -> dict[str, float]:
    """The eval-mode metrics of ``model`` (a module or params) on ``data``.

    ``eval_fn(model, batch) -> {name: scalar}`` if given, else the loss and
    metrics of ``loss_fn`` (default :func:`lrjax.classification_loss`), as
    weighted means over the batches. With ``model_state`` (params with a state
    of their own, e.g. ``FitResult.params`` and ``FitResult.model_state``):
    ``eval_fn(params, model_state, batch) -> {name: scalar}``, required.

    >>> w = jnp.eye(2)  # a linear model: logits = x @ w
    >>> x = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [3.0, 0.0]])
    >>> y = jnp.array([0, 1, 1, 0])  # example 2 is wrong
    >>> m = evaluate(w, (x, y), loss_fn=classification_loss(lambda w, x: x @ w),
    ...              batch_size=3)  # batches of 3 and 1, weighted by size
    >>> round(m["accuracy"], 6), round(m["loss"], 4)  # mean of log(1 + e**-2), ...
    (0.75, 0.4505)
    """
    if model_state is not None and eval_fn is None:
        raise ValueError(STATEFUL_EVAL)  # what is missing, before the model's form
    own = loss_fn is not None or eval_fn is not None
    form = model_form(model, has_loss_fn=own, model_state=model_state, factory=False)
    if form == "stateful":
        # the key of the update rngs: never used by an evaluation
        spec, params, rest = split_stateful(model, model_state, jax.random.key(0))
    else:
        spec, params, rest = split_model(model)
    loss_fn = classification_loss() if loss_fn is None else loss_fn
    return Evaluator(spec, loss_fn, eval_fn, batch_size)(params, rest, data)


class _EpochArrays(ArraySource):
    """In-memory data in fit's batch order (a :class:`lrjax._src.batches.Source`).

    Epoch ``e`` is the first ``steps_per_epoch * k`` micro-batches of
    :func:`lrjax._src.batches.epoch_order` ``(fold_in(key, e), 0, N, B)``: each epoch
    starts a fresh permutation, the micro-batches left over by
    ``steps_per_epoch`` are skipped, and update ``t`` of the epoch takes
    micro-batches ``t * k .. t * k + k - 1``.
    """

    def __init__(self, data, batch_size, key, *, steps_per_epoch, **kw):
        super().__init__(data, batch_size, key, **kw)
        self.epoch_length = steps_per_epoch * self.k

    def _order(self, m: int, epoch: int) -> jax.Array:
        key = jax.random.fold_in(self.keys[m], epoch)
        order = epoch_order(key, 0, self.num_examples, self.batch_size)
        return order[: self.epoch_length]


def _batch_sharding(mesh: jax.sharding.Mesh, k: int) -> jax.sharding.NamedSharding:
    """A chunk's batches ``[C, (k,) B, ...]`` split along ``B`` over ``mesh``."""
    return jax.sharding.NamedSharding(
        mesh, P(None, None, "data") if k > 1 else P(None, "data")
    )


def _check(cfg: FitConfig) -> None:
    """Every field of ``cfg`` in range (one line each); ``hooks`` as a tuple."""

    def integer(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, int)

    if not integer(cfg.patience) or cfg.patience < 0:
        raise ValueError(f"patience must be an integer >= 0, got {cfg.patience!r}")
    for name in (
        "epochs",
        "batch_size",
        "chunks_per_epoch",
        "log_every",
        "eval_batch_size",
        "max_to_keep",
        "average_every",
    ):
        v = getattr(cfg, name)
        if not integer(v) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    start = cfg.average_start
    if start is not None and (not integer(start) or start < 0):
        raise ValueError(
            f"average_start must be None or an update index >= 0, got {start!r}"
        )
    spe = cfg.steps_per_epoch
    if spe is not None and (not integer(spe) or spe < 1):
        raise ValueError(
            f"steps_per_epoch must be None or an integer >= 1, got {spe!r}"
        )
    if cfg.monitor_mode not in (None, "min", "max"):
        raise ValueError(
            f"monitor_mode must be 'min' or 'max', got {cfg.monitor_mode!r}"
        )
    if not isinstance(cfg.monitor, str) or not cfg.monitor:
        raise ValueError(f"monitor must be a metric name, got {cfg.monitor!r}")
    check_loop(cfg.loop)
    check_accumulate(cfg.accumulate_steps)
    _set(cfg, "hooks", check_hooks(cfg.hooks))


def _snapshot_steps(steps) -> np.ndarray | None:
    if steps is None:
        return None
    a = np.asarray(steps, np.int64)
    if a.ndim != 1 or len(a) < 1 or np.any(np.diff(a) <= 0) or a[0] < 0:
        raise ValueError("snapshot_steps must be increasing step indices >= 0")
    return a


def _init_model(model, key, has_loss_fn: bool, model_state):
    """The one member of a fit: :func:`lrjax._src.step.init_member` at ``fold_in(key,
    0)``, as seed 0 of a range test or grid; and the graph definition of the
    caller's module (None for a pure model) for the result's ``model``."""
    form = model_form(model, has_loss_fn=has_loss_fn, model_state=model_state)
    spec, params, rest, built = init_member(
        model,
        jax.random.fold_in(key, 0),
        form,
        model_state=model_state,
        has_loss_fn=has_loss_fn,
    )
    graphdef = nnx.graphdef(built) if spec.is_module else None
    return spec, params, rest, graphdef


@takes_moved_keywords("fit")
def fit(
    model: Any,
    optimizer: OptimizerFactory,
    data: Any,
    *,
    key: jax.Array,
    config: FitConfig | None = None,
    loss_fn: LossFn | None = None,
    model_state: Any = None,
    eval_fn: Callable | None = None,
    val_data: Any = None,
    test_data: Any = None,
) -> FitResult:
    """Trains ``model`` on ``data``; the caller's model is never changed.

    Args:
      model: an ``nnx.Module`` (BatchNorm, Dropout, any state; gradients wrt its
        ``nnx.Param`` only), a params pytree with ``loss_fn(params, batch)``
        (or with ``model_state``), or a factory ``key -> model`` (called with
        ``fold_in(fold_in(key, 0), 1)``; with ``model_state="from_factory"``
        it returns ``(params, model_state)``).
      optimizer: ``learning_rate -> optax.GradientTransformation``, e.g.
        ``optax.sgd``; the logged lr is the lr each update applied.
      data: in-memory arrays (a pytree with a common leading example axis, on the
        device once, batches gathered in compiled code) or an iterable of batches
        (:mod:`lrjax._src.batches`).
      key: a ``jax.random.key``; epoch ``e`` draws its batch order from
        ``fold_in(key, e)``.
      config: a :class:`FitConfig` (default ``FitConfig()``).
      loss_fn: ``loss_fn(model, batch) -> loss | (loss, {name: scalar})``;
        default :func:`lrjax.classification_loss`, with which in-memory data are
        checked once first (:func:`lrjax._src.step.check_classification_data`). With
        ``model_state``: ``loss_fn(params, model_state, batch, key) -> (loss,
        model_state)`` or ``(loss, model_state, {name: scalar})``.
      model_state: the state of a params-pytree model that training updates
        (Linen's ``{"batch_stats": ...}``, Equinox's ``eqx.nn.State``), or
        ``"from_factory"``; never the caller's arrays. Update ``t``'s ``key``
        (dropout) is ``fold_in(fold_in(fold_in(key, 0), 2), t)``, as seed 0 of
        :func:`lrjax.lr_range_test`.
      eval_fn: ``eval_fn(model, batch) -> {name: scalar}`` for evaluation
        (default: the loss and metrics of ``loss_fn``), in eval mode. With
        ``model_state``: ``eval_fn(params, model_state, batch)`` (the model in
        evaluation mode: running averages, no dropout), required when there
        is ``val_data`` or ``test_data``.
      val_data: evaluated after every epoch (``val_<name>`` in the history).
      test_data: evaluated once at the end (``FitResult.test``).

    Raises:
      ValueError, TypeError: bad arguments.
      CheckpointError: an unreadable or incompatible checkpoint.

    A Linen model with BatchNorm and Dropout, its state carried by lrjax:

    >>> import flax.linen as nn, optax
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x, train: bool):
    ...         x = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
    ...         x = nn.Dropout(0.2, deterministic=not train)(nn.relu(x))
    ...         return nn.Dense(2)(x)
    >>> def loss_fn(params, state, batch, key):  # key: this update's rng
    ...     (x, y), variables = batch, {"params": params, **state}
    ...     logits, state = Net().apply(variables, x, train=True,
    ...                                 mutable=list(state), rngs={"dropout": key})
    ...     loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    ...     return loss.mean(), state
    >>> def eval_fn(params, state, batch):  # running averages, no dropout
    ...     (x, y), variables = batch, {"params": params, **state}
    ...     logits = Net().apply(variables, x, train=False)
    ...     return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
    >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32)
    >>> variables = Net().init(jax.random.key(0), x[:1], train=False)
    >>> state = {"batch_stats": variables["batch_stats"]}
    >>> r = fit(variables["params"], optax.sgd, (x, y), key=jax.random.key(1),
    ...         loss_fn=loss_fn, model_state=state, eval_fn=eval_fn,
    ...         val_data=(x, y), config=FitConfig(epochs=2, batch_size=16))
    >>> mean = r.model_state["batch_stats"]["BatchNorm_0"]["mean"]
    >>> bool(jnp.any(mean != 0)), sorted(r.history[-1])[-2:]
    (True, ['train_loss', 'val_accuracy'])
    """
    cfg, snap_steps = _checked(
        config, optimizer, model_state, eval_fn, val_data, test_data
    )
    t_start = time.perf_counter()
    default_loss = loss_fn is None
    loss_fn = classification_loss() if loss_fn is None else loss_fn
    num_snaps = 0 if snap_steps is None else len(snap_steps)
    spec, params, rest, graphdef = _init_model(
        model, key, not default_loss, model_state
    )
    if default_loss and is_arrays(data):
        check_classification_data(spec, params, rest, data, batch_size=cfg.batch_size)
    par = _data_parallel(cfg)
    source, spe = _train_source(data, key, cfg, par)
    averaging = _check_average_start(cfg, spe)
    stats_spec = None  # re-estimates the weight average's BatchNorm statistics
    if averaging and spec.is_module and ensembles.has_batch_stats(rest):
        stats_spec = ensembles.batch_stats_model(spec, params, rest)

    tx = make_optimizer(optimizer, cfg.learning_rate)
    build = _carry_builder(spec, loss_fn, tx, par.constrain, snap_steps, cfg)
    program = Program(build, gathers=source.gathers, loop=cfg.loop)
    carry, best_state = _init_carry(
        spec, tx, params, rest, num_snaps, averaging, par.rep
    )
    del params, rest

    if par.rep is not None and is_arrays(val_data):
        val_data = jax.device_put(val_data, par.rep)
    evaluator = Evaluator(spec, loss_fn, eval_fn, cfg.eval_batch_size)
    ens = num_snaps and spec.is_module and isinstance(val_data, tuple)
    ens_val = val_data if ens else None
    record = functools.partial(
        _epoch_record, evaluator=evaluator, val_data=val_data, ens_val=ens_val,
        spec=spec, num_snaps=num_snaps,
    )  # fmt: skip
    run = _new_run(cfg, spe, num_snaps, carry, best_state)
    actions, ckpt = _actions(cfg)
    on_chunk = _OnChunk(record)
    reason = _train(
        program, run, source, actions, on_chunk,
        resume=ckpt if cfg.resume else None, chunks_per_epoch=cfg.chunks_per_epoch,
    )  # fmt: skip

    restore_best = cfg.patience > 0 if cfg.restore_best is None else cfg.restore_best
    final = _final(run, restore_best)
    result = _fit_result(run, reason, final, spec, graphdef, snap_steps, par.mesh)
    if test_data is not None and not result.interrupted:
        _test(result, final, run, evaluator, test_data)
    if ens_val is not None and not result.interrupted and _has_snapshots(result, run):
        curves = _snapshot_curves(result, ens_val)  # as the test's, on val_data
        result.snapshot_val_accuracy, result.ensemble_val_curve = curves
    average_s = None
    if averaging:
        t0 = time.perf_counter()
        result.average_start = cfg.average_start
        stats_pass = None
        if stats_spec is not None:
            stats_pass = functools.partial(
                _stats_pass, stats_spec, loss_fn, par.constrain, source,
                program.loop, spe=spe, k=cfg.accumulate_steps,
                chunks=cfg.chunks_per_epoch,
            )  # fmt: skip
        _finish_average(
            result, run.carry, spec, graphdef, evaluator, val_data, test_data,
            stats_pass,
        )  # fmt: skip
        average_s = time.perf_counter() - t0
    result.timings = _timings(program, on_chunk.epoch_times, t_start, average_s)
    return result


def _checked(
    config: FitConfig | None,
    optimizer: OptimizerFactory,
    model_state: Any,
    eval_fn: Callable | None,
    val_data: Any,
    test_data: Any,
) -> tuple[FitConfig, np.ndarray | None]:
    """``(config, snapshot steps)``, checked with what the run will evaluate."""
    cfg = config or FitConfig()  # checked when it was built
    check_optimizer(optimizer)
    if val_data is None and cfg.monitor.startswith("val_") and cfg.patience:
        raise ValueError(f"patience needs val_data to monitor {cfg.monitor!r}")
    snap_steps = _snapshot_steps(cfg.snapshot_steps)
    if (
        model_state is not None
        and eval_fn is None
        and (val_data is not None or test_data is not None)
    ):
        raise ValueError(STATEFUL_EVAL)
    return cfg, snap_steps


class _Parallel(NamedTuple):
    """How the batches are split over the devices (all None: one device)."""

    mesh: jax.sharding.Mesh | None  # ("data",): params replicated, batches split
    rep: jax.sharding.NamedSharding | None  # replicated over the mesh
    constrain: Callable | None  # batch -> batch split along its examples
    shares: bool  # several processes: each one feeds its rows of every batch


def _data_parallel(cfg: FitConfig) -> _Parallel:
    """The data-parallel mesh (default: when there are several devices)."""
    data_parallel = cfg.data_parallel
    if data_parallel is None:
        data_parallel = jax.device_count() > 1
    # Several processes: each one feeds its rows of every global batch.
    shares = data_parallel and jax.process_count() > 1
    if not data_parallel:
        return _Parallel(None, None, None, shares)
    mesh = data_mesh(cfg.batch_size)
    shard = jax.sharding.NamedSharding(mesh, P("data"))

    def constrain(batch):
        return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, shard), batch)

    return _Parallel(mesh, jax.sharding.NamedSharding(mesh, P()), constrain, shares)


def _train_source(
    data: Any, key: jax.Array, cfg: FitConfig, par: _Parallel
) -> tuple[Source, int]:
    """``(source, steps_per_epoch)``: the training batches, epoch ``e`` of
    in-memory data in the order of ``fold_in(key, e)``; an iterable's as they come.
    """
    k, b = cfg.accumulate_steps, cfg.batch_size
    if not is_arrays(data):
        if par.shares:  # this process's rows of every global batch
            assert par.mesh is not None  # shares: data parallel
            sharding = _batch_sharding(par.mesh, k)
            source = IterSource(
                data, accumulate_steps=k, sharding=sharding, local_share=True
            )
        else:
            source = IterSource(data, accumulate_steps=k, sharding=par.rep)
        spe = cfg.steps_per_epoch
        if spe is None:
            if not hasattr(data, "__len__"):
                raise ValueError(
                    "steps_per_epoch is required for an iterable without len()"
                )
            spe = len(data) // k
        if isinstance(spe, bool) or not isinstance(spe, int) or spe < 1:
            raise ValueError(f"steps_per_epoch must be an integer >= 1, got {spe!r}")
        return source, spe
    n = leading_size(data, "data")
    spe = (n // check_batch_size(b, n)) // k
    if spe < 1:
        raise ValueError(
            f"batch_size * accumulate_steps ({b} * {k}) is more than the {n} examples"
        )
    if cfg.steps_per_epoch is not None:
        if not 1 <= cfg.steps_per_epoch <= spe:
            raise ValueError(f"steps_per_epoch must be between 1 and {spe}")
        spe = cfg.steps_per_epoch
    arrays = _EpochArrays(
        data, b, key, steps_per_epoch=spe, accumulate_steps=k,
        sharding=None if par.shares else par.rep,
    )  # fmt: skip
    if not par.shares:
        return arrays, spe
    assert par.mesh is not None  # shares: data parallel
    return ProcessShare(arrays, _batch_sharding(par.mesh, k)), spe


def _check_average_start(cfg: FitConfig, spe: int) -> bool:
    """Whether the run averages weights; its start must be inside the run."""
    start, total = cfg.average_start, cfg.epochs * spe
    if start is not None and start >= total:
        raise ValueError(
            f"average_start {start} is past the last update of the run "
            f"({total} updates: {cfg.epochs} epochs of {spe}); use an index in "
            f"[0, {total})"
        )
    return start is not None


def _carry_builder(
    spec: Model,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    constrain: Callable | None,
    snap_steps: np.ndarray | None,
    cfg: FitConfig,
) -> Callable[[bool], Callable]:
    """``build(unroll) -> carry_step`` for :class:`lrjax._src.loop.Program`.

    ``carry_step`` is the one step (:func:`lrjax.make_step`) followed, inside
    the compiled chunk, by the snapshot (after the updates in ``snap_steps``) and
    the running weight average (``cfg.average_start``, ``cfg.average_every``).
    """
    snap_dev = None if snap_steps is None else jnp.asarray(snap_steps, jnp.int32)
    avg_start, avg_every = cfg.average_start, cfg.average_every

    def build(unroll: bool):
        step = make_step(
            spec, loss_fn, tx,
            accumulate_steps=cfg.accumulate_steps, unroll=unroll, constrain=constrain,
        )  # fmt: skip

        def carry_step(carry: Carry, batch):
            state, metrics = step(carry.state, batch)
            snaps, average = carry.snaps, carry.average
            if snaps is not None:
                take = jnp.any(snap_dev == state.step - 1)
                member = (state.params, spec.user_state(state.model_state))
                snaps = ensembles.write(snaps, member, take)
            if average is not None and avg_start is not None:  # (both or neither)
                t = state.step - 1  # the update just applied
                take = (t >= avg_start) & ((t - avg_start) % avg_every == 0)
                average = ensembles.update_average(average, state.params, take)
            return Carry(state, snaps, average), metrics

        return carry_step

    return build


def _init_carry(spec, tx, params, rest, num_snaps: int, averaging: bool, rep):
    """``(carry, best_state)`` on the devices: the train state, snapshot buffer
    and weight average, and the best epoch's ``(params, model_state)`` so far.
    Fresh buffers: the carry is donated, never the caller's arrays."""

    def init(p, r):
        state = init_state(p, r, tx)
        snaps = None
        if num_snaps:
            snaps = ensembles.init_buffer((p, spec.user_state(r)), num_snaps)
        average = ensembles.init_average(p) if averaging else None
        return Carry(state, snaps, average), (p, r)

    carry, best_state = jax.jit(init, out_shardings=rep)(fresh(params), fresh(rest))
    return carry, fresh(best_state)


def _new_run(cfg: FitConfig, spe: int, num_snaps: int, carry, best_state) -> FitRun:
    """A run at its start; its signature is what a resumed run must share."""
    averaging = cfg.average_start is not None
    return FitRun(
        total_steps=cfg.epochs * spe,
        steps_per_epoch=spe,
        signature={
            "steps_per_epoch": spe,
            "num_snapshots": num_snaps,
            # None when off: checkpoints from before averaging existed still match
            "average": [cfg.average_start, cfg.average_every] if averaging else None,
        },
        carry=carry,
        best_state=best_state,
        monitor=cfg.monitor,
        mode=cfg.monitor_mode or default_mode(cfg.monitor),
        patience=cfg.patience,
    )


def _actions(cfg: FitConfig) -> tuple[list[Hook], Checkpoints | None]:
    """The built-in hooks the config asks for, then the caller's; and the
    checkpoints (None without ``checkpoint_dir``). No hook reads what another
    wrote: the best epoch and early stopping are the run's (:class:`_OnChunk`)."""
    actions: list[Hook] = []
    if cfg.logdir is not None:
        actions.append(TensorBoard(cfg.logdir, cfg.log_every))
    ckpt = None
    if cfg.checkpoint_dir is not None:
        ckpt = Checkpoints(cfg.checkpoint_dir, cfg.max_to_keep)
        actions.append(ckpt)
    if cfg.progress:
        actions.append(ProgressBar(unit="step", per_epoch=True, postfix=_postfix))
    actions.extend(cfg.hooks)
    return actions, ckpt


def _postfix(run: Run, end: ChunkEnd) -> dict[str, str]:
    """The progress bar's last loss and lr of the chunk."""
    loss, lr = end.metrics["loss"][-1], end.metrics["lr"][-1]
    return {"loss": f"{loss:.4f}", "lr": f"{lr:.3g}"}


class _OnChunk:
    """fit's books after every chunk (:func:`lrjax._src.loop.drive`'s ``observe``).

    Moves the run on and adds the chunk's metrics to the epoch's sums; at an
    epoch's end, ``record(run)`` makes its record (timed from
    :meth:`start_clock`: the start, or the previous epoch's hooks done), the
    history and the best epoch (:meth:`lrjax.hooks.FitRun.end_epoch`) take it,
    and so does ``end.record``: all of it before any hook acts. Returns
    ``"early_stop"`` when the run's patience has run out.
    """

    def __init__(self, record: Callable[[FitRun], dict]):
        self.record = record
        self.epoch_times: list[float] = []
        self.start_clock()

    def start_clock(self) -> None:
        self.clock = time.perf_counter()

    def __call__(self, run: Run, end: ChunkEnd) -> str | None:
        assert isinstance(run, FitRun) and run.steps_per_epoch is not None
        run.carry = end.state
        _accumulate(run.partial, end.metrics)
        if end.hi % run.steps_per_epoch:
            return None
        rec = self.record(run)
        rec["time_s"] = time.perf_counter() - self.clock
        self.epoch_times.append(rec["time_s"])
        run.history.append(rec)
        run.epoch, run.partial = rec["epoch"], {}
        end.record = rec
        return run.end_epoch(rec)


class _EpochClock(Hook):
    """Restarts the epoch's clock after the hooks acted at its end (it acts last),
    so that an epoch's ``time_s`` leaves out the checkpoint and logs of the one
    before, as it always did; and after every hook started (it starts last), so
    that the first epoch's leaves out opening TensorBoard's writer."""

    trigger = Trigger(every_epochs=1)

    def __init__(self, on_chunk: _OnChunk):
        self.on_chunk = on_chunk

    def start(self, run: Run) -> None:
        self.on_chunk.start_clock()

    def act(self, run: Run, end: ChunkEnd) -> str | None:
        self.on_chunk.start_clock()
        return None


def _train(
    program: Program,
    run: FitRun,
    source: Source,
    actions: list[Hook],
    on_chunk: _OnChunk,
    *,
    resume: Checkpoints | None,
    chunks_per_epoch: int,
) -> str | None:
    """Runs the rest of the run (from ``resume``'s checkpoint if given) and
    returns why it stopped: None (it ran to its end), ``"early_stop"``,
    ``"data"``, a hook's reason. Every hook's ``start`` runs first and its
    ``end`` last (reason ``"error"`` when an exception leaves the run)."""
    total, spe = run.total_steps, run.steps_per_epoch
    assert spe is not None  # a fit has epochs
    ckpt = next((h for h in actions if isinstance(h, Checkpoints)), None)
    try:
        if resume is not None:
            resume.restore(run)
        plan = (
            []
            if run.stopped_early
            else epoch_plan(run.step, total, spe, chunks_per_epoch)
        )
        if isinstance(source, ArraySource | ProcessShare):
            for lo, hi in {hi - lo: (lo, hi) for lo, hi in plan}.values():
                program.compile(run.carry, source.chunk(lo, hi), source.data)
    except BaseException:
        if ckpt is not None:  # the only hook holding something before its start
            ckpt.close()
        raise
    on_chunk.start_clock()
    out = drive(
        program, run.carry, source, plan, run=run, observe=on_chunk,
        hooks=[*actions, _EpochClock(on_chunk)],
    )  # fmt: skip
    run.carry = out.state
    reason = out.stop_reason
    if run.stopped_early:
        reason = "early_stop"
    elif reason is not None and run.step >= total and reason != "data":
        reason = None  # a stop request after the last epoch: nothing was cut
    return reason


def _final(run: FitRun, restore_best: bool) -> tuple[Any, Any]:
    """The ``(params, model_state)`` returned: the best epoch's or the last."""
    state = run.carry.state
    if restore_best and run.best["epoch"] is not None:
        return run.best_state
    return state.params, state.model_state


def _fit_result(
    run: FitRun,
    reason: str | None,
    final: tuple[Any, Any],
    spec: Model,
    graphdef: Any,
    snap_steps: np.ndarray | None,
    mesh: jax.sharding.Mesh | None,
) -> FitResult:
    """The result of the training itself (no test, no average; the timings,
    measured last, are empty)."""
    trained = nnx.merge(graphdef, *final) if spec.is_module else final[0]
    spe = run.steps_per_epoch
    return FitResult(
        model=trained,
        params=final[0],
        model_state=spec.user_state(final[1]),
        spec=spec,
        history=run.history,
        best_epoch=run.best["epoch"],
        epochs_run=run.epoch,
        stopped_early=run.stopped_early,
        interrupted=reason not in (None, "early_stop", "data"),
        stop_reason=reason,
        step=run.step,
        snapshots=None if snap_steps is None else ensembles.snapshots(run.carry.snaps),
        snapshot_steps=[] if snap_steps is None else snap_steps.tolist(),
        snapshot_epochs=[] if snap_steps is None else ((snap_steps + 1) / spe).tolist(),
        timings=Timings("fit"),
        device=describe_devices(
            list(mesh.devices.flat) if mesh is not None else jax.devices()[:1]
        ),
    )


def _test(result: FitResult, final, run: FitRun, evaluator, test_data):
    """``result.test``; with snapshots of a module, each one's test accuracy and
    the ensembles' curve (:func:`_snapshot_curves`)."""
    result.test = evaluator(*final, test_data)
    if _has_snapshots(result, run):
        curves = _snapshot_curves(result, test_data)
        result.snapshot_test_accuracy, result.ensemble_curve = curves


def _has_snapshots(result: FitResult, run: FitRun) -> bool:
    """Whether the run wrote a snapshot of a module (one the curves can predict)."""
    return (
        result.snapshots is not None
        and result.spec.is_module
        and bool(int(run.carry.snaps.count))
    )


def _snapshot_curves(result: FitResult, data) -> tuple[list, list]:
    """``(single, ensemble)`` accuracies on ``data``, an ``(x, y)``
    pair (:func:`lrjax.ensemble_curve`): each snapshot's, and the
    last-m ensembles', m = 1..M. The test and the validation curves both."""
    x, y = data
    single, ens = ensembles.ensemble_curve(result.spec, result.snapshots, x, y)
    return single.tolist(), ens.tolist()


def _timings(
    program: Program, epoch_times: list[float], t_start: float, average_s
) -> Timings:
    """``FitResult.timings``; ``average_s`` is None without averaging."""
    return Timings(
        "fit",
        compile_s=program.compile_s,
        run_s=float(sum(epoch_times)),
        epoch_s=tuple(epoch_times),
        mean_epoch_s=float(np.mean(epoch_times)) if epoch_times else None,
        total_s=time.perf_counter() - t_start,
        loop=program.loop,
        average_s=average_s,  # the BatchNorm pass and evaluations
    )


def _finish_average(
    result: FitResult,
    carry: Carry,
    spec: Model,
    graphdef,
    evaluator: Evaluator,
    val_data,
    test_data,
    stats_pass: Callable | None,
) -> None:
    """Fills ``result``'s ``average_*`` fields from the carried weight average.

    ``stats_pass(params, model_state) -> (model_state, batches)`` re-estimates
    the BatchNorm statistics (:func:`_stats_pass`); None without BatchNorm.
    """
    state, average = carry.state, carry.average
    assert average is not None  # called when averaging
    result.average_count = int(average.count)
    if result.interrupted or not result.average_count:
        return
    params = ensembles.averaged_params(average, state.params)
    model_state = state.model_state
    if stats_pass is not None:
        no_bn = model_state
        model_state, result.average_bn_batches = stats_pass(params, no_bn)
        if val_data is not None:
            result.average_val_no_bn = evaluator(params, no_bn, val_data)
        if test_data is not None:
            result.average_test_no_bn = evaluator(params, no_bn, test_data)
    if val_data is not None:
        result.average_val = evaluator(params, model_state, val_data)
    if test_data is not None:
        result.average_test = evaluator(params, model_state, test_data)
    result.average_params = params
    result.average_model_state = spec.user_state(model_state)
    result.averaged_model = (
        nnx.merge(graphdef, params, model_state) if spec.is_module else params
    )


def _stats_pass(
    stats_spec: Model,
    loss_fn: LossFn,
    constrain,
    source: Source,
    loop: str,
    params,
    model_state,
    *,
    spe: int,
    k: int,
    chunks: int,
) -> tuple[Any, int]:
    """BatchNorm statistics of ``params`` from one epoch of training batches.

    In-memory data: the micro-batches of epoch 0 (the key's first batch order);
    an iterable: its next ``spe * k`` batches (a list or a loader starts over; a
    one-shot generator gives none, and the statistics are left as they are).
    Each batch runs ``loss_fn`` in training mode through ``stats_spec``
    (:func:`lrjax._src.ensembles.batch_stats_model`: momentum 0, so the module holds
    the batch's statistics), and the statistics are the plain mean over the
    batches, as ``torch.optim.swa_utils.update_bn`` with ``momentum=None``. The
    chunks run like the training's (``loop``: scanned, or one batch per call).

    Returns:
      ``(model_state with the new statistics, number of batches)``.
    """
    gathers = source.gathers

    def one(carry, params, data, x):
        batch = take(data, x) if gathers else x
        if constrain is not None:
            batch = constrain(batch)
        return ensembles.stats_pass_step(stats_spec, loss_fn, params, carry, batch)

    def flat(xs):  # [C, k, B, ...] -> [C * k, B, ...]: every micro-batch
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), xs) if k > 1 else xs

    if loop == "dispatch":  # one batch per call (a conv on XLA:CPU)
        flat_jit, one_jit = jax.jit(flat), jax.jit(one)

        def run_chunk(carry, params, data, xs):
            xs = flat_jit(xs)
            for i in range(jax.tree.leaves(xs)[0].shape[0]):
                x = jax.tree.map(lambda a, i=i: a[i], xs)
                carry = one_jit(carry, params, data, x)
            return carry

    else:

        @jax.jit
        def run_chunk(carry, params, data, xs):
            def body(c, x):
                return one(c, params, data, x), None

            return jax.lax.scan(body, carry, flat(xs))[0]

    carry = ensembles.stats_pass_init(model_state)
    for lo, hi in epoch_plan(0, spe, spe, chunks):
        xs = source.chunk(lo, hi)
        if xs is None:
            break
        carry = run_chunk(carry, params, source.data, xs)
    count = int(carry.count)
    if not count:
        return model_state, 0
    return ensembles.stats_pass_state(carry, model_state), count


def _accumulate(partial: dict[str, Any], metrics: dict[str, np.ndarray]) -> None:
    """Adds a chunk's metrics to the epoch's sums (in place; JSON-safe floats)."""
    lrs = np.asarray(metrics["lr"], np.float64)
    sums = partial.setdefault("sums", {})
    for name, v in metrics.items():
        if name != "lr":
            sums[name] = sums.get(name, 0.0) + float(np.asarray(v, np.float64).sum())
    partial["steps"] = partial.get("steps", 0) + len(lrs)
    partial["lr"] = float(lrs[-1])
    lo, hi = float(lrs.min()), float(lrs.max())
    partial["lr_min"] = min(partial.get("lr_min", lo), lo)
    partial["lr_max"] = max(partial.get("lr_max", hi), hi)


def _epoch_record(run: FitRun, evaluator, val_data, ens_val, spec, num_snaps) -> dict:
    p, state = run.partial, run.carry.state
    rec: dict[str, Any] = {"epoch": run.epoch + 1, "step": run.step}
    names = sorted(p["sums"], key=lambda n: n != "loss")  # loss first
    rec.update({f"train_{n}": p["sums"][n] / p["steps"] for n in names})
    if val_data is not None:
        ev = evaluator(state.params, state.model_state, val_data)
        rec.update({f"val_{n}": v for n, v in ev.items()})
    # the lr applied by the epoch's last update, and the epoch's range
    rec.update(lr=p["lr"], lr_min=p["lr_min"], lr_max=p["lr_max"])
    if num_snaps:
        count = int(run.carry.snaps.count)
        rec["snapshots"] = count
        prev = run.history[-1]["snapshots"] if run.history else 0
        if count > prev and ens_val is not None:
            stacked = ensembles.snapshots(run.carry.snaps)
            _, ens = ensembles.ensemble_curve(spec, stacked, *ens_val)
            rec["ensemble_val_accuracy"] = float(ens[-1])
    return rec
