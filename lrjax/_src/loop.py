"""The host driver: compiled chunks of updates, host hooks between them.

A :class:`Program` runs ``C`` updates of the one step
(:func:`lrjax.make_step`) in one of three ways:

* ``"scan"``: one compiled ``lax.scan`` over the chunk (nothing returns to the
  host until the chunk ends; the fastest for MLPs and on accelerators);
* ``"unroll"``: the same scan, fully unrolled (long compiles; for short chunks);
* ``"dispatch"``: one jitted update at a time, dispatched asynchronously.

Rule for ``loop="auto"`` (measured on this project's 2-core CPU,
``benchmarks/bench_cnn.py``): ``"dispatch"`` when the backend is the CPU and the
step contains a convolution, ``"scan"`` otherwise. XLA:CPU runs a convolution
inside a loop body about 13x slower than the same step alone
(jax-ml/jax#12868); on GPU and TPU a scan is fine. The choice is reported in
the results (``timings.loop``).

A population (seeds, lrs, a swept hyperparameter: a state with a leading member
axis) runs inside each compiled update in one of three ways:

* ``"vmap"``: batched, one op for every member (the fastest for MLPs and on
  accelerators);
* ``"unroll"``: the members one after another, each member's step inlined
  (``P`` copies of the step in the program);
* ``"map"``: ``lax.map`` over the members (one copy of the step in a loop).

``population="auto"`` (the drivers' ``lrjax.Population(layout="auto")``) is
``"unroll"`` when the backend is the CPU and the step contains a convolution,
``"vmap"`` otherwise: XLA:CPU turns a vmapped convolution into a grouped
convolution, several times slower per member than the plain one, while an
unrolled member costs about what it costs alone
(``benchmarks/bench_conv_population.py``). When the population is sharded over
several devices, unrolled or mapped members run under ``shard_map``: each
device runs its own members.

:func:`drive` runs a plan of chunks: it dispatches chunk ``i``, asks the source
for chunk ``i + 1`` while the device computes (the prefetch), then blocks on chunk
``i``'s metrics, lets the driver keep its books and calls the hooks whose trigger
fires (:mod:`lrjax.hooks`, CLU-style periodic actions: progress, TensorBoard,
checkpoints, signals, yours). The same protocol serves :func:`lrjax.fit`,
:func:`lrjax.lr_range_test` and :func:`lrjax.lr_grid`. A hook returns a reason to
stop, or None.

Under several processes (:mod:`lrjax.distributed`) every process runs the same
plan: the metrics reach every host whole (gathered when the population is
sharded over processes), and a stop asked by any process stops them all at the
same chunk boundary.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrjax._src.batches import Source, take
from lrjax._src.distributed import agree, host
from lrjax._src.hooks import ChunkEnd, Hook, Hooks, Observe, Run

LOOPS = ("auto", "scan", "unroll", "dispatch")
POPULATIONS = ("auto", "vmap", "unroll", "map")


def _has_conv(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            return True
        for v in eqn.params.values():
            for sub in v if isinstance(v, tuple | list) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns") and _has_conv(inner):
                    return True
    return False


def check_loop(loop: str) -> str:
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    return loop


def check_population(population: str) -> str:
    if population not in POPULATIONS:
        raise ValueError(f"population must be one of {POPULATIONS}, got {population!r}")
    return population


def conv_on_cpu(fn: Callable, *example_args, backend: str | None = None) -> bool:
    """Whether ``fn`` contains a convolution and runs on XLA:CPU: the case where
    the ``"auto"`` rules leave the defaults (a scanned loop, a vmapped population)."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return False
    return _has_conv(jax.make_jaxpr(fn)(*example_args).jaxpr)


def member_of(tree, i: int):
    """Member ``i`` of a population: every leaf's row ``i``."""
    return jax.tree.map(lambda a: a[i], tree)


def _sharded_mesh(tree) -> jax.sharding.Mesh | None:
    """The 1-D mesh a population state is sharded over (its leading axis), or None
    when it lives on one device."""
    sharding = getattr(jax.tree.leaves(tree)[0], "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.size == 1 or not isinstance(mesh, jax.sharding.Mesh):
        return None
    return mesh


def population_fn(one: Callable, own: bool, how: str, mesh=None) -> Callable:
    """``one(state, x, data)`` of ONE member, made to run a population: ``state``
    with a leading member axis, ``x`` per member (``own``) or shared.

    ``how`` is ``"vmap"``, ``"unroll"`` or ``"map"`` (module docstring). With a
    ``mesh`` (a 1-D mesh the population is sharded over) an unrolled or mapped
    population runs under ``shard_map``, each device over its own members.
    """
    if how == "vmap":
        return jax.vmap(one, in_axes=(0, 0 if own else None, None))

    def members(state, x, data):
        if how == "map":
            if own:
                return jax.lax.map(lambda sx: one(*sx, data), (state, x))
            return jax.lax.map(lambda s: one(s, x, data), state)
        n = jax.tree.leaves(state)[0].shape[0]
        outs = [
            one(member_of(state, i), member_of(x, i) if own else x, data)
            for i in range(n)
        ]
        return jax.tree.map(lambda *a: jnp.stack(a), *outs)

    if mesh is None:
        return members
    P = jax.sharding.PartitionSpec
    (axis,) = mesh.axis_names
    return jax.shard_map(
        members,
        mesh=mesh,
        in_specs=(P(axis), P(axis) if own else P(), P()),
        out_specs=P(axis),
        check_vma=False,
    )


class Program:
    """``program(state, xs, data) -> (state, metrics)`` over a chunk of updates.

    Args:
      build: ``build(unroll) -> step`` with ``step(state, batch) -> (state,
        metrics)``; ``unroll`` asks for inner loops (gradient accumulation)
        unrolled, as the ``"unroll"`` and ``"dispatch"`` loops want.
      gathers: ``xs`` are batch indices into ``data``; otherwise ``xs`` are the
        stacked batches themselves (the source's
        :attr:`lrjax._src.batches.Source.gathers`).
      members: ``None`` for one model; else the state has a leading population
        axis and ``members`` says whether each member gets its own inputs
        (``"own"``: ``xs[c, p]``) or all share them (``"shared"``).
      loop: ``"scan"``, ``"unroll"``, ``"dispatch"`` (or ``"auto"``, decided at
        the first :meth:`compile`).
      population: with ``members``, ``"vmap"``, ``"unroll"`` or ``"map"`` (or
        ``"auto"``, decided at the first :meth:`compile`).

    ``xs`` has the chunk axis first; metrics come back ``[C]`` or ``[C, P]``.
    """

    def __init__(
        self,
        build: Callable[[bool], Callable],
        *,
        gathers: bool,
        members: str | None = None,
        loop: str = "auto",
        population: str = "auto",
    ):
        self.build = build
        self.gathers = gathers
        self.members = members
        self.loop = check_loop(loop)
        self.population = check_population(population) if members else None
        self.mesh: jax.sharding.Mesh | None = None
        self.one: Callable | None = None  # (state, x, data) -> (state, metrics)
        self._jitted: jax.stages.Wrapped | None = None
        self._compiled: dict[int, Any] = {}
        self.compile_s = 0.0

    def _one(self, unroll: bool, population: str = "vmap") -> Callable:
        step = self.build(unroll)
        gathers = self.gathers

        def one(state, x, data):
            return step(state, take(data, x) if gathers else x)

        if self.members is not None:
            own = self.members == "own"
            one = population_fn(one, own, population, self.mesh)
        return one

    def _jit(self, one: Callable) -> jax.stages.Wrapped:
        if self.loop == "dispatch":
            return jax.jit(one, donate_argnums=0)
        unroll = self.loop == "unroll"

        def chunk(state, xs, data):
            n = jax.tree.leaves(xs)[0].shape[0]
            return jax.lax.scan(
                lambda s, x: one(s, x, data), state, xs, unroll=n if unroll else 1
            )

        return jax.jit(chunk, donate_argnums=0)

    def compile(self, state, xs, data) -> None:
        """Compiles for a chunk like ``xs`` (once per chunk length when scanned)."""
        t0 = time.perf_counter()

        def first():  # one update's inputs (a device op: only when needed)
            return jax.tree.map(lambda a: a[0], xs)

        if self.one is None:
            if "auto" in (self.loop, self.population):
                conv = conv_on_cpu(self._one(False), state, first(), data)
                if self.loop == "auto":
                    self.loop = "dispatch" if conv else "scan"
                if self.population == "auto":
                    self.population = "unroll" if conv else "vmap"
            if self.population in ("unroll", "map"):
                self.mesh = _sharded_mesh(state)
            self.one = self._one(self.loop != "scan", self.population or "vmap")
        if self._jitted is None:
            self._jitted = self._jit(self.one)
        key = 0 if self.loop == "dispatch" else jax.tree.leaves(xs)[0].shape[0]
        if key not in self._compiled:
            args = (state, first() if self.loop == "dispatch" else xs, data)
            self._compiled[key] = self._jitted.lower(*args).compile()
        self.compile_s += time.perf_counter() - t0

    def __call__(self, state, xs, data):
        self.compile(state, xs, data)
        if self.loop != "dispatch":
            return self._compiled[jax.tree.leaves(xs)[0].shape[0]](state, xs, data)
        run = self._compiled[0]
        metrics = []
        for i in range(jax.tree.leaves(xs)[0].shape[0]):
            state, m = run(state, jax.tree.map(lambda a, i=i: a[i], xs), data)
            metrics.append(m)
        return state, jax.tree.map(lambda *a: jnp.stack(a), *metrics)


#: A long plan's first chunk (updates): the first progress, its rate and the time
#: left show after this many updates, not after a whole long chunk.
FIRST_CHUNK_STEPS = 256


def uniform_plan(num_steps: int, chunks: int, max_chunk: int | None = None):
    """``chunks`` equal chunks covering ``num_steps`` (the last may run past it).

    One chunk length, so one compile; the caller drops the updates past the end.
    When the chunks would be ``16 * FIRST_CHUNK_STEPS`` (4096) updates or longer,
    the plan starts with one chunk of :data:`FIRST_CHUNK_STEPS` and cuts the rest
    alike, for a first report after seconds (``lrjax-find --steps 100000000``
    showed nothing until its first 4096-update chunk had run). That costs a second
    compile (:func:`drive` compiles it while the first chunk runs), so shorter
    plans, where a chunk takes seconds anyway, keep one length.

    >>> uniform_plan(10, 3)
    [(0, 4), (4, 8), (8, 12)]
    >>> uniform_plan(20_000, 8)[:2]
    [(0, 2500), (2500, 5000)]
    >>> plan = uniform_plan(10**8, 8, max_chunk=4096)
    >>> plan[:3], plan[-1], len(plan)
    ([(0, 256), (256, 4352), (4352, 8448)], (99995904, 100000000), 24415)
    """

    def cut(start: int, steps: int) -> list[tuple[int, int]]:
        length = -(-steps // max(1, min(chunks, steps)))
        if max_chunk is not None:
            length = min(length, max_chunk)
        n = -(-steps // length)
        return [(start + i * length, start + (i + 1) * length) for i in range(n)]

    plan = cut(0, num_steps)
    first = FIRST_CHUNK_STEPS
    if plan[0][1] >= 16 * first:
        plan = [(0, first), *cut(first, num_steps - first)]
    return plan


def epoch_plan(start: int, end: int, steps_per_epoch: int, chunks_per_epoch: int):
    """Chunks of ``[start, end)``, cut at every epoch end and at fixed points inside.

    The cut points depend only on absolute positions, so a run resumed at any
    cut computes the same chunks as one that never stopped.

    >>> epoch_plan(0, 10, 5, 2)
    [(0, 2), (2, 5), (5, 7), (7, 10)]
    >>> epoch_plan(7, 10, 5, 2)
    [(7, 10)]
    """
    inner = np.unique(
        np.linspace(0, steps_per_epoch, chunks_per_epoch + 1).astype(int)
    ).tolist()
    cuts: set[int] = set()
    for e in range(start // steps_per_epoch, -(-end // steps_per_epoch) + 1):
        cuts.update(e * steps_per_epoch + c for c in inner)
    pts = sorted({start, end} | {c for c in cuts if start < c < end})
    return list(zip(pts[:-1], pts[1:], strict=True))


@dataclasses.dataclass
class DriveResult:
    state: Any
    stop_reason: str | None  # None: the plan ran to its end
    run_s: float
    lo: int
    hi: int  # updates [lo, hi) were run


def drive(
    program: Program,
    state: Any,
    source: Source,
    plan: Sequence[tuple[int, int]],
    *,
    run: Run,
    observe: Observe | None = None,
    hooks: Sequence[Hook] = (),
) -> DriveResult:
    """Runs ``plan``'s chunks with ``source``'s inputs; hooks run between chunks.

    Every hook's ``start`` runs first, its ``end`` last (also when an exception
    leaves: reason ``"error"``). After each chunk, cut at ``run.total_steps``
    (a sweep's plan may run past it), ``run.step`` moves on, the driver's
    ``observe(run, end)`` keeps its books, then the hooks whose trigger fires act
    (:class:`lrjax._src.hooks.Hooks`). The stop reason is the first one given, or
    ``"data"`` when an iterable source ran out: a chunk came back short or None
    (the result's ``hi`` says how far it got).
    """
    calls = Hooks(run, hooks, observe)
    reason: str | None = "error"
    try:
        calls.start()
        out = _drive(program, state, source, plan, calls)
        reason = out.stop_reason
    finally:
        calls.end(reason)
    return out


def _drive(
    program: Program,
    state: Any,
    source: Source,
    plan: Sequence[tuple[int, int]],
    calls: Hooks,
) -> DriveResult:
    if not plan:
        return DriveResult(state, None, 0.0, 0, 0)
    lo0 = plan[0][0]
    xs = source.chunk(*plan[0])
    if xs is not None:
        program.compile(state, xs, source.data)
    reason = None
    hi_run = lo0
    total = calls.run.total_steps
    t0 = time.perf_counter()
    for i, (lo, hi) in enumerate(plan):
        if xs is None:
            reason = "data"
            break
        n = jax.tree.leaves(xs)[0].shape[0]
        state, metrics = program(state, xs, source.data)
        # Prefetch: the next chunk's inputs are built while this one computes,
        # and its program compiled if its length is new (a short first chunk).
        xs = source.chunk(*plan[i + 1]) if i + 1 < len(plan) else None
        if xs is not None:
            program.compile(state, xs, source.data)
        # Sharded over processes (a population), metrics are gathered first.
        metrics = jax.tree.map(host, metrics)
        hi_run = lo + n
        last = min(hi_run, total)  # the updates past the plan's end do not count
        if last < hi_run:
            metrics = {name: v[: last - lo] for name, v in metrics.items()}
        reason = reason or calls.after(ChunkEnd(lo, last, metrics, state))
        if n < hi - lo or (xs is None and i + 1 < len(plan)):
            reason = reason or "data"  # the iterable ran out
        reason = agree(reason)  # every process stops at the same chunk, or none
        if reason:
            break
    return DriveResult(state, reason, time.perf_counter() - t0, lo0, hi_run)
