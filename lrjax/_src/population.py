"""A population of models, built once for every driver that trains one.

The range test (seeds x swept values) and the grid (families x lrs x seeds) both
train a population: members ``p = cell * seeds + s``, where a cell is one
setting of the hyperparameters the driver varies (a swept value; a (family, lr)
pair) and ``s`` the seed. This module holds what both build the same way:

* the seeds' keys and their models (:func:`init_members`: seed ``s`` draws its
  batch order from ``fold_in(key, s)`` and a factory's initialisation from
  ``fold_in(fold_in(key, s), 1)``);
* the layout (:class:`Layout`): how many members run, the mesh that spreads them
  over the devices and its axis name (:data:`AXIS`);
* each member's batches (:class:`MemberBatches`: member ``p`` follows its seed's
  batch order);
* the members' initial states (:func:`init_states`), a cell's hyperparameters
  given to each of its members as data;
* the memory estimate, checked from the first member before the others exist
  (:func:`check_memory`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lrjax._src.batches import ArraySource, is_arrays
from lrjax._src.results import (
    MemoryEstimate,
    estimate_population,
    population_mesh,
    refuse_population,
    tree_bytes,
)
from lrjax._src.step import fresh, init_member, model_form

#: The mesh axis the member axis is sharded over (one name for every driver).
AXIS = "pop"


def member_key(key: jax.Array, s: int) -> jax.Array:
    """Seed ``s``'s key ``fold_in(key, s)``: its batch order, and the root of its
    initialisation and update rngs (:func:`lrjax._src.step.init_member`)."""
    return jax.random.fold_in(key, s)


def member_keys(key: jax.Array, seeds: int) -> list[jax.Array]:
    """Every seed's :func:`member_key`."""
    return [member_key(key, s) for s in range(seeds)]


class Layout(NamedTuple):
    """Members ``p = cell * seeds + s`` and where they run.

    The rule (one for every driver): the population uses as many devices as it
    has members, up to all of them, and is padded with copies of its last member
    to a multiple of that count; the padded members' results are dropped. A
    population whose size has no divisor near the device count (5 members on 4
    devices) thus still spreads over every device instead of falling back to
    fewer (the range test's earlier rule, the largest divisor, ran it on one).
    """

    cells: int  # hyperparameter settings
    seeds: int
    padded: int  # members run: a multiple of the mesh's devices
    mesh: jax.sharding.Mesh | None  # 1-D, axis AXIS; None on one device

    @classmethod
    def of(cls, cells: int, seeds: int) -> Layout:
        size = cells * seeds
        n_dev = min(len(jax.devices()), size)
        padded = -(-size // n_dev) * n_dev
        return cls(cells, seeds, padded, population_mesh(padded, AXIS))

    @property
    def size(self) -> int:  # members that count
        return self.cells * self.seeds

    def member_of(self) -> np.ndarray:
        """int[padded]: the member each runs (a padded one copies the last)."""
        return np.minimum(np.arange(self.padded), self.size - 1)

    def cell_of(self) -> np.ndarray:  # int[padded]
        return self.member_of() // self.seeds

    def seed_of(self) -> np.ndarray:  # int[padded]
        return self.member_of() % self.seeds

    def sharding(self, *axes: str | None) -> jax.sharding.NamedSharding | None:
        """``PartitionSpec(*axes)`` over the mesh; None on one device."""
        if self.mesh is None:
            return None
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*axes))

    def devices(self) -> list[jax.Device]:
        """The devices the population runs on."""
        return (
            list(self.mesh.devices.flat) if self.mesh is not None else jax.devices()[:1]
        )


class MemberBatches:
    """Each member's batch indices: member ``p`` follows its seed's batch order.

    ``base`` draws one order per seed (``[C, seeds, ...]`` indices), or one for
    all (``[C, ...]``, shared by every member); ``seed_of`` picks each member's
    row, None when the rows are already the members (one per seed, in order).
    """

    gathers = True

    def __init__(
        self,
        base: ArraySource,
        seed_of: np.ndarray | None,
        sharding: jax.sharding.Sharding | None,
    ):
        self.base, self.seed_of, self.sharding = base, seed_of, sharding

    @classmethod
    def of(cls, base: ArraySource, layout: Layout) -> MemberBatches:
        """``base`` (per seed when ``layout.seeds > 1``) laid out over the members."""
        if layout.seeds == 1:  # every member shares the one order: replicated
            return cls(base, None, layout.sharding())
        seed_of = layout.seed_of()
        # one member per seed (in order): the rows as they come, no gather
        rows = None if np.array_equal(seed_of, np.arange(layout.seeds)) else seed_of
        return cls(base, rows, layout.sharding(None, AXIS))

    @property
    def data(self):
        return self.base.data

    def chunk(self, lo: int, hi: int) -> jax.Array:
        idx = self.base.chunk(lo, hi)  # [C, seeds, ...], or [C, ...] for one seed
        if self.seed_of is not None:
            idx = idx[:, self.seed_of]  # [C, members, ...]
        return idx if self.sharding is None else jax.device_put(idx, self.sharding)


def _fold_rngs(model_state: Any, k: int) -> Any:
    """Every rng key in ``model_state`` folded with ``k``: seed k's own streams."""

    def fold(a):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.fold_in(a, k)
        return a

    return jax.tree.map(fold, model_state)


def init_members(
    model: Any,
    key: jax.Array,
    seeds: int,
    check: Callable | None = None,
    *,
    model_state: Any = None,
    has_loss_fn: bool = True,
):
    """``(Model, params, model_state)`` per seed: stacked ``[seeds, ...]`` if > 1.

    ``model`` is an ``nnx.Module`` or a params pytree (shared by every seed; a
    module's rng streams are folded with the seed index), or a factory
    ``key -> model`` called with ``fold_in(fold_in(key, k), 1)`` for seed ``k``.
    With ``model_state``, ``model`` is a params pytree whose model state it is
    (:func:`lrjax._src.step.split_stateful`), or with ``model_state="from_factory"``
    a factory ``key -> (params, model_state)``; seed ``k``'s update rngs start
    from ``fold_in(fold_in(key, k), 2)`` (:func:`lrjax._src.step.init_member`).
    Every array is a fresh copy: the caller's model is never donated or changed.
    ``check(spec, params, model_state)`` sees the first member before the others
    are built (a memory estimate refuses an impossible population there).
    ``has_loss_fn``: whether the caller gave a ``loss_fn`` (:func:`model_form`).
    """
    form = model_form(model, has_loss_fn=has_loss_fn, model_state=model_state)
    factory = form == "factory"
    members = []
    for k in range(seeds):  # one key at a time: the check may refuse at k == 0
        spec, params, rest, _ = init_member(
            model,
            member_key(key, k),
            form,
            model_state=model_state,
            has_loss_fn=has_loss_fn,
        )
        if not factory and k > 0 and model_state is None:
            rest = _fold_rngs(rest, k)
        if k == 0 and check is not None:
            check(spec, params, rest)
        members.append((spec, fresh(params), fresh(rest)))
    spec = members[0][0]
    if seeds == 1:
        return spec, members[0][1], members[0][2]
    if spec.is_module and any(m[0].train_def != spec.train_def for m in members):
        raise ValueError("the model factory built modules of different structures")
    params = jax.tree.map(lambda *a: jnp.stack(a), *[m[1] for m in members])
    rest = jax.tree.map(lambda *a: jnp.stack(a), *[m[2] for m in members])
    return spec, params, rest


def init_states(
    layout: Layout,
    params: Any,
    rest: Any,
    init: Callable,
    per_cell: Sequence[jax.typing.ArrayLike] = (),
    *,
    stacked: bool = True,
) -> Any:
    """Every member's state, ``[padded, ...]`` and split over the mesh.

    Member ``p`` gets ``init(params, rest, *hyper)``: seed ``seed_of[p]``'s
    ``params`` and ``rest`` (from :func:`init_members`) and its cell's row of
    each ``per_cell`` array (``[cells]``, e.g. its lr or swept value). The
    hyperparameters are traced under ``vmap``, so they are data of the one
    program, never constants. ``stacked=False`` (a population of one) builds
    the one member without a member axis.
    """
    cell_of, seed_of = layout.cell_of(), layout.seed_of()
    hyper = [jnp.asarray(np.asarray(a)[cell_of]) for a in per_cell]  # [padded]
    if not stacked:
        assert layout.padded == 1, layout
        return jax.jit(init)(params, rest, *[h[0] for h in hyper])
    seeds = layout.seeds

    def member(s, params, rest, *hyper):
        if seeds > 1:
            params, rest = jax.tree.map(lambda a: a[s], (params, rest))
        return init(params, rest, *hyper)

    in_axes = (0, None, None) + (0,) * len(hyper)
    return jax.jit(
        jax.vmap(member, in_axes=in_axes), out_shardings=layout.sharding(AXIS)
    )(jnp.asarray(seed_of, jnp.int32), params, rest, *hyper)


def check_memory(
    member: Any, data: Any, examples: int, own_bytes: int, layout: Layout, fewer: str
) -> MemoryEstimate:
    """The population's memory estimate, refused in one line when too large.

    ``member`` is one member's state (or its shapes); each member also reads
    ``examples`` examples of in-memory ``data`` per update (an iterable's
    batches are not counted: unknown before they come) and ``own_bytes`` of its
    own inputs (its row of a chunk's indices). Every member that runs counts,
    padded ones too (:func:`lrjax._src.results.estimate_population`).

    Raises:
      lrjax.MemoryRefused: more than the device has; ``fewer`` names
        the setting to lower.
    """
    batch = 0
    if is_arrays(data):
        batch = tree_bytes(jax.tree.map(lambda a: a[:1], data)) * examples
    estimate = estimate_population(tree_bytes(member), batch + own_bytes, layout.padded)
    refuse_population(estimate, fewer)
    return estimate
