"""Small pieces every result shares: JSON-safe floats, device descriptions, meshes."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np


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


def estimate_population(member_bytes: int, batch_bytes: int, members: int) -> dict:
    """Bytes a vmapped population needs before activations: every member's state
    (params, model state, optimizer state) twice (the donated carry and its update)
    and its batch, over as many devices as hold the population."""
    local = jax.local_devices()
    # CPU host devices share one memory; accelerators each hold their share.
    devices = 1 if local[0].platform == "cpu" else max(1, min(members, len(local)))
    total = members * (2 * member_bytes + batch_bytes)
    return {
        "member_state_bytes": int(member_bytes),
        "batch_bytes": int(batch_bytes),
        "members": int(members),
        "estimate_bytes": int(total),
        "per_device_bytes": int(-(-total // devices)),
        "device_limit_bytes": device_memory_bytes(),
    }


def check_memory(estimate: dict, flag: str) -> None:
    """Refuses, in one line, a population whose estimate exceeds the device.

    Raises:
      MemoryRefused: naming the estimate, the limit and the setting to change.
    """
    limit, need = estimate["device_limit_bytes"], estimate["per_device_bytes"]
    if limit is not None and need > limit:
        raise MemoryRefused(
            f"{estimate['members']} members need about {need / 2**30:.1f} GiB per "
            f"device ({estimate['member_state_bytes'] / 2**20:.2f} MiB of state and "
            f"{estimate['batch_bytes'] / 2**20:.2f} MiB of batch each, before "
            f"activations), more than the {limit / 2**30:.1f} GiB available; "
            f"lower {flag}"
        )
