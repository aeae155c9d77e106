"""Several JAX processes, one job: JAX's own distributed runtime, nothing home-made.

Every process runs the same program. :func:`initialize` (before any JAX
computation) connects them through ``jax.distributed.initialize``; from then on
``jax.devices()`` lists the devices of every process and ``jax.local_devices()``
this process's own. lrjax then builds its meshes over the global devices
(:func:`lrjax._src.results.population_mesh`, :func:`lrjax.data_mesh`), each
process feeds its share of every global batch
(``jax.make_array_from_process_local_data``), and the host driver brings results
back with :func:`host` (``process_allgather`` for arrays spread over processes).

On the CPU the collectives go over gloo (TCP); on GPUs over NCCL and on TPUs
over ICI, both chosen by JAX. A process that dies stops sending heartbeats: after
``heartbeat_timeout_s`` the coordination service fails the job, and every other
process aborts with ``Terminating process because the JAX distributed service
detected fatal errors`` (a collective in flight fails sooner, with a connection
error) instead of waiting forever.

In a single process every function here is the identity or trivial, so the
library calls them unconditionally.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

__all__ = [
    "agree",
    "host",
    "initialize",
    "is_main",
    "process_count",
    "process_index",
]


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | list[int] | None = None,
    bind_address: str | None = None,
    initialization_timeout_s: int = 300,
    heartbeat_timeout_s: int = 100,
    shutdown_timeout_s: int = 300,
) -> None:
    """Connects this process to the others (``jax.distributed.initialize``).

    Call it first, before any JAX computation (``jax.devices()`` included). With
    no address, count and id, JAX detects them on SLURM, Open MPI and Cloud TPU.
    CPU collectives are set to gloo (the CPU backend alone reads that setting).

    Args:
      coordinator_address: ``HOST:PORT`` of process 0, reachable from all.
      num_processes, process_id: the job's size and this process's rank
        (``0 .. num_processes - 1``).
      local_device_ids: the local devices this process uses (default: JAX's).
      bind_address: ``HOST:PORT`` process 0's coordinator listens on (default:
        every interface, on the port of ``coordinator_address``).
      initialization_timeout_s: how long to wait for every process to connect.
      heartbeat_timeout_s: a process silent this long is dead; the job fails.
      shutdown_timeout_s: how long a finishing process waits for the others.

    Raises:
      RuntimeError: JAX already started its backends, or the processes did not
        connect within ``initialization_timeout_s``.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        local_device_ids=local_device_ids,
        coordinator_bind_address=bind_address,
        initialization_timeout=initialization_timeout_s,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
        shutdown_timeout_seconds=shutdown_timeout_s,
    )


def process_count() -> int:
    """The processes of this run (``jax.process_count()``; 1 without
    :func:`initialize`)."""
    return jax.process_count()


def process_index() -> int:
    """This process's index, 0 to :func:`process_count` - 1 (0 is the main
    process: :func:`is_main`)."""
    return jax.process_index()


def is_main() -> bool:
    """Whether this is process 0: the one that prints and writes files."""
    return jax.process_index() == 0


def host(a: Any) -> np.ndarray:
    """A device array as numpy on every process, wherever its shards live.

    Arrays held by this process (or replicated on every process) are read
    directly; an array sharded over several processes is first replicated by
    one compiled identity (a collective: every process must call it, in the same
    order), as ``multihost_utils.process_allgather`` does, but compiled once per
    sharding instead of once per call.
    """
    if not isinstance(a, jax.Array) or a.is_fully_addressable or a.is_fully_replicated:
        return np.asarray(a)
    if isinstance(a.sharding, jax.sharding.NamedSharding):
        return np.asarray(_replicate(a.sharding.mesh)(a))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


@functools.cache
def _replicate(mesh: jax.sharding.Mesh):
    """An identity whose result is replicated over ``mesh``: a cached all-gather."""
    out = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(lambda x: x, out_shardings=out)


@functools.cache
def _process_mesh() -> jax.sharding.Mesh:
    """One device of every process, in rank order, on a ``("process",)`` axis."""
    first: dict[int, jax.Device] = {}
    for d in sorted(jax.devices(), key=lambda d: d.id):
        first.setdefault(d.process_index, d)
    return jax.sharding.Mesh(np.array([first[p] for p in sorted(first)]), ("process",))


def agree(reason: str | None, width: int = 64) -> str | None:
    """The first process's non-empty ``reason`` (in rank order), on every process.

    A run stops on every process or on none: a signal that reached only one
    process (or any host decision that could differ) stops all of them at the
    same chunk boundary, so none waits in a collective the others left. One
    small collective; in a single process, ``reason`` itself.
    """
    if jax.process_count() == 1:
        return reason
    raw = (reason or "").encode()[:width]
    mine = np.zeros((1, width), np.uint8)
    mine[0, : len(raw)] = np.frombuffer(raw, np.uint8)
    mesh = _process_mesh()
    rows = jax.make_array_from_process_local_data(
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("process")),
        mine,
        (mesh.size, width),
    )
    for row in np.asarray(_replicate(mesh)(rows)):  # [processes, width]
        text = bytes(row).rstrip(b"\0").decode(errors="replace")
        if text:
            return text
    return None
