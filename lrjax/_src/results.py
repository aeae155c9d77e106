"""Small pieces every result shares: JSON-safe floats, device descriptions, meshes,
the records of a run's timings and memory estimate, and the short repr and
notebook display of a result."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def json_floats(a: Any) -> Any:
    """An array as (nested lists of) Python floats, NaN and inf as None: JSON-safe.

    >>> json_floats(np.array([[1.0, np.nan], [np.inf, 2.0]]))
    [[1.0, None], [None, 2.0]]
    """

    def walk(x):
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x if np.isfinite(x) else None

    return walk(np.asarray(a, np.float64).tolist())


def describe_devices(devices: list[jax.Device] | None = None) -> str:
    """E.g. ``"cpu x2 (cpu)"`` or ``"gpu x1 (NVIDIA H100 80GB HBM3)"``."""
    devices = list(devices if devices is not None else jax.devices())
    d = devices[0]
    return f"{d.platform} x{len(devices)} ({d.device_kind})"


def population_mesh(size: int, axis: str = "pop") -> jax.sharding.Mesh | None:
    """A 1-D mesh over as many devices as divide ``size``; None if only one.

    A population (seeds, learning rates) vmapped along a leading axis of ``size``
    is spread over this mesh by sharding that axis: on a CPU with several XLA host
    devices (``jax.config.update("jax_num_cpu_devices", n)`` before JAX starts)
    each core then runs its own share.

    Under several processes (:mod:`lrjax.distributed`) the mesh takes the same
    number of devices from every process, so each process holds an equal share
    of the population; when ``size`` is not a multiple of the process count it
    is None, and every process runs the whole population on its own device.
    """
    procs = jax.process_count()
    if procs == 1:
        devices = jax.local_devices()
        n = max(d for d in range(1, min(size, len(devices)) + 1) if size % d == 0)
        return None if n == 1 else jax.sharding.Mesh(np.array(devices[:n]), (axis,))
    per = [
        sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)
        for p in range(procs)
    ]
    fits = [m for m in range(1, min(map(len, per)) + 1) if size % (procs * m) == 0]
    if not fits:
        return None
    m = max(fits)
    return jax.sharding.Mesh(np.array([d for p in per for d in p[:m]]), (axis,))


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf of ``tree`` (an rng key counts as its raw data)."""

    def nbytes(a):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a = jax.eval_shape(jax.random.key_data, a)
        return np.dtype(a.dtype).itemsize * int(np.prod(np.shape(a)))

    return int(sum(nbytes(a) for a in jax.tree.leaves(tree)))


class MemoryRefused(ValueError):
    """A request that cannot fit in the device's memory (refused before it starts)."""


def device_memory_bytes(device: jax.Device | None = None) -> int | None:
    """What one device can hold: its allocator limit, or the host's free memory."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # not every backend reports (the CPU client raises or is empty)
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def record_json(
    record: Any, fields: Sequence[str] | None = None, when_set: Sequence[str] = ()
) -> dict[str, Any]:
    """``{name: value}`` of a record's ``fields`` (default: all of them), in that
    order, JSON-ready.

    A field named in ``when_set`` is left out while it is None; a nested record
    is written by its own ``to_json()``, a tuple as a list.
    """
    out: dict[str, Any] = {}
    if fields is None:
        fields = [f.name for f in dataclasses.fields(record)]
    for name in fields:
        value = getattr(record, name)
        if value is None and name in when_set:
            continue
        if hasattr(value, "to_json"):
            value = value.to_json()
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def check_driver(record: Any, fields: Mapping[str, Sequence[str]]) -> None:
    """Checks a record filled by ``record.driver``: ``fields[driver]`` names what
    that driver fills, and every other field must be None.

    Raises:
      ValueError: an unknown driver, or a field it does not fill that is set.
    """
    driver = record.driver
    if driver not in fields:
        raise ValueError(f"driver must be one of {', '.join(fields)}, got {driver!r}")
    stray = [
        f.name
        for f in dataclasses.fields(record)
        if f.name != "driver"
        and f.name not in fields[driver]
        and getattr(record, f.name) is not None
    ]
    if stray:
        raise ValueError(f"{driver} does not fill {', '.join(stray)}")


# The fields each driver measures, in the order to_json writes them; of these,
# population (a range test of one member) and average_s (fit without weight
# averaging) are written only when measured.
_TIMED: dict[str, tuple[str, ...]] = {
    "lr_range_test": ("compile_s", "run_s", "steps_per_s", "loop", "population"),
    "step_range_test": ("first_step_s", "run_s", "steps_per_s", "loop"),
    "lr_grid": ("compile_s", "run_s", "steps_per_s", "model_epochs_per_s", "loop",
                "population"),
    "fit": ("compile_s", "run_s", "epoch_s", "mean_epoch_s", "total_s", "loop",
            "average_s"),
}  # fmt: skip
_TIMED_WHEN_SET = ("population", "average_s")


@dataclasses.dataclass(frozen=True)
class Timings:
    """Where a run's time went: seconds of host wall clock, and what ran.

    One record for every driver; ``driver`` names the one that measured it and
    the fields it fills (the others are None):

    * ``"lr_range_test"``: ``compile_s``, ``run_s``, ``steps_per_s``, ``loop``,
      and ``population`` when the sweep has more than one member;
    * ``"step_range_test"``: ``first_step_s``, ``run_s``, ``steps_per_s``,
      ``loop`` (always ``"dispatch"``);
    * ``"lr_grid"`` (:func:`lrjax.lr_grid` and :func:`lrjax.recipe_grid`):
      ``compile_s``, ``run_s``, ``steps_per_s``, ``model_epochs_per_s``,
      ``loop``, ``population``;
    * ``"fit"``: ``compile_s``, ``run_s``, ``epoch_s``, ``mean_epoch_s``,
      ``total_s``, ``loop``, and ``average_s`` with weight averaging.

    Attributes:
      driver: the function that measured them (above).
      compile_s: seconds compiling the program (for the grid, the evaluation
        too) before the clock of ``run_s`` starts.
      first_step_s: seconds of the first update of your step, its compilation
        included (:func:`lrjax.step_range_test`).
      run_s: seconds running the updates after compiling (for
        ``step_range_test``, every update, the first included; for ``fit``,
        the sum of ``epoch_s``).
      epoch_s: seconds of each epoch (``fit``; host hooks and the validation
        included).
      mean_epoch_s: the mean of ``epoch_s`` in seconds; None when no epoch ran.
      total_s: seconds of the whole call (``fit``: building, compiling,
        training, testing, averaging).
      steps_per_s: updates per second of ``run_s`` summed over the members
        (``step_range_test``: after the first); None when ``run_s`` is 0.
      model_epochs_per_s: members x epochs trained per second of ``run_s``
        (the grid); None when ``run_s`` is 0.
      loop: how a chunk of updates ran: ``"scan"``, ``"unroll"`` or
        ``"dispatch"`` (:mod:`lrjax._src.loop`).
      population: how the members ran inside an update: ``"vmap"``,
        ``"unroll"`` or ``"map"`` (:mod:`lrjax._src.loop`).
      average_s: seconds of the weight average's BatchNorm pass and
        evaluations (``fit`` with ``FitConfig.average_start``).

    >>> t = Timings("step_range_test", first_step_s=0.25, run_s=1.25,
    ...             steps_per_s=99.0, loop="dispatch")
    >>> t.to_json()
    {'first_step_s': 0.25, 'run_s': 1.25, 'steps_per_s': 99.0, 'loop': 'dispatch'}
    """

    driver: str
    compile_s: float | None = None
    first_step_s: float | None = None
    run_s: float | None = None
    epoch_s: tuple[float, ...] | None = None
    mean_epoch_s: float | None = None
    total_s: float | None = None
    steps_per_s: float | None = None
    model_epochs_per_s: float | None = None
    loop: str | None = None
    population: str | None = None
    average_s: float | None = None

    def __post_init__(self):
        check_driver(self, _TIMED)

    def to_json(self) -> dict[str, Any]:
        """The fields ``driver`` measures (the others left out), JSON-ready."""
        return record_json(self, _TIMED[self.driver], _TIMED_WHEN_SET)


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a vmapped population needs before activations
    (:func:`estimate_population`), checked against the device before it starts.

    Attributes:
      member_state_bytes: one member's state (params, model state, optimizer
        state), in bytes.
      batch_bytes: one member's inputs per update (its batch of in-memory data,
        and its own row of a chunk's indices), in bytes.
      members: the members that run, padded ones included.
      estimate_bytes: the whole population, ``members x (2 x
        member_state_bytes + batch_bytes)`` (the donated carry and its update),
        in bytes.
      per_device_bytes: ``estimate_bytes`` over the devices that hold the
        population (CPU host devices share one memory), rounded up, in bytes.
      device_limit_bytes: what one device can hold (its allocator limit, or the
        host's free memory), in bytes; None when unknown.
    """

    member_state_bytes: int
    batch_bytes: int
    members: int
    estimate_bytes: int
    per_device_bytes: int
    device_limit_bytes: int | None

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return record_json(self)


def estimate_population(
    member_bytes: int, batch_bytes: int, members: int
) -> MemoryEstimate:
    """Bytes a vmapped population needs before activations: every member's state
    (params, model state, optimizer state) twice (the donated carry and its update)
    and its batch, over as many devices as hold the population."""
    local = jax.local_devices()
    # CPU host devices share one memory; accelerators each hold their share.
    devices = 1 if local[0].platform == "cpu" else max(1, min(members, len(local)))
    total = members * (2 * member_bytes + batch_bytes)
    return MemoryEstimate(
        member_state_bytes=int(member_bytes),
        batch_bytes=int(batch_bytes),
        members=int(members),
        estimate_bytes=int(total),
        per_device_bytes=int(-(-total // devices)),
        device_limit_bytes=device_memory_bytes(),
    )


def refuse_population(estimate: MemoryEstimate, flag: str) -> None:
    """Refuses, in one line, a population whose estimate exceeds the device.

    Raises:
      MemoryRefused: naming the estimate, the limit and the setting to change.
    """
    limit, need = estimate.device_limit_bytes, estimate.per_device_bytes
    if limit is not None and need > limit:
        raise MemoryRefused(
            f"{estimate.members} members need about {need / 2**30:.1f} GiB per "
            f"device ({estimate.member_state_bytes / 2**20:.2f} MiB of state and "
            f"{estimate.batch_bytes / 2**20:.2f} MiB of batch each, before "
            f"activations), more than the {limit / 2**30:.1f} GiB available; "
            f"lower {flag}"
        )


REPR_LIMIT = 400  # characters: a result's repr is a line or two in a notebook


def _short(value: Any, items: int = 6) -> str:
    """One value of :func:`short_repr`: arrays as ``dtype[shape]``, never their data."""
    if isinstance(value, np.generic):
        value = value.item()
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype}[{','.join(str(d) for d in value.shape)}]"
    if value is None or isinstance(value, bool | int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, Mapping):
        parts = [f"{k}: {_short(v, items=3)}" for k, v in list(value.items())[:items]]
        more = len(value) - items
        return "{" + ", ".join(parts + ([f"+{more} more"] if more > 0 else [])) + "}"
    if isinstance(value, list | tuple):
        parts = [_short(v, items=3) for v in value[:items]]
        more = len(value) - items
        text = ", ".join(parts + ([f"+{more} more"] if more > 0 else []))
        return f"({text})" if isinstance(value, tuple) else f"[{text}]"
    return type(value).__name__  # a model, a schedule: its name, not its graph


def short_repr(name: str, fields: Mapping[str, Any]) -> str:
    """``name(field=value, ...)`` in at most :data:`REPR_LIMIT` characters.

    Arrays show their dtype and shape, floats 4 significant digits; long strings,
    lists and mappings are cut short, and any other object shows its type's name.
    Every result's ``__repr__`` is built here, so that a notebook cell ending in a
    result prints a line or two, not its arrays.

    >>> short_repr("R", {"lr": 0.0123456, "losses": np.zeros((2, 100), np.float32),
    ...                  "stop": None, "methods": {"knee": 0.01, "steep": None}})
    'R(lr=0.01235, losses=float32[2,100], stop=None, methods={knee: 0.01, steep: None})'
    """
    text = f"{name}({', '.join(f'{k}={_short(v)}' for k, v in fields.items())})"
    return text if len(text) <= REPR_LIMIT else text[: REPR_LIMIT - 4] + "...)"


def html_with_plot(text: str, plot: Callable[[Axes], Any]) -> str:
    """A result's notebook display: its short repr above its plot, as HTML.

    ``plot(ax)`` draws on a figure of its own (``matplotlib.figure.Figure``, not
    pyplot's current figure, so nothing else is shown twice or left open); the
    figure is embedded as a PNG.
    """
    import base64
    import html
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    plot(fig.subplots())
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f"<pre>{html.escape(text)}</pre>"
        f'<img src="data:image/png;base64,{png}" alt="plot">'
    )
