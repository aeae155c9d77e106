"""Small pieces every result shares: JSON-safe floats, device descriptions, meshes."""

from __future__ import annotations

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
    """A 1-D mesh over as many local devices as divide ``size``; None if only one.

    A population (seeds, learning rates) vmapped along a leading axis of ``size``
    is spread over this mesh by sharding that axis: on a CPU with several XLA host
    devices (``jax.config.update("jax_num_cpu_devices", n)`` before JAX starts)
    each core then runs its own share.
    """
    devices = jax.local_devices()
    n = max(d for d in range(1, min(size, len(devices)) + 1) if size % d == 0)
    if n == 1:
        return None
    return jax.sharding.Mesh(np.array(devices[:n]), (axis,))


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf of ``tree``."""
    return int(
        sum(np.dtype(a.dtype).itemsize * np.size(a) for a in jax.tree.leaves(tree))
    )
