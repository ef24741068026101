"""Data parallelism with ``jax.sharding``: a 1-D mesh, batches split over it, parameters replicated."""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["data_parallel_mesh", "replicate", "shard_batch"]


def data_parallel_mesh(devices: Optional[Sequence[jax.Device]] = None, axis: str = "data") -> Mesh:
    """A 1-D :class:`jax.sharding.Mesh` over ``devices`` (default: all of ``jax.devices()``)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis,))


def shard_batch(x, mesh: Mesh, axis: Optional[str] = None):
    """``x`` (or a pytree of arrays) placed with its leading (batch) axis split over ``mesh``'s axis."""
    axis = axis or mesh.axis_names[0]
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(axis)))


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` copied in full to each device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
