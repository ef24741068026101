"""Data parallelism with ``jax.sharding``: datasets laid out over a mesh's data axis, batches gathered from the shards.

A dataset of ``N`` rows on a mesh whose data axis has ``D`` devices is stored as ``D`` shards of
``n = ceil(N / D)`` rows: device ``d`` holds rows ``d*n .. d*n+n-1`` (copies of the last row appended
to reach ``D*n``; never read, and they pass every check the data passes). No device holds the
whole set: each keeps ``1/D`` of it.
A step's batch is ``B`` global row ids ``idx`` (in order or from the epoch's permutation, exactly
as on one device); :func:`take_rows` gathers them from the shards into a batch split over the
same axis, ``B/D`` rows per device, with one reduce-scatter of ``B`` rows. Parameters are
replicated and the compiler inserts the gradient all-reduce; on a 2-D mesh ``(data, model)`` the
weight matrices are split by columns over ``model`` as well (:func:`param_spec`), and the same
hand-written backward runs partitioned by the compiler.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from bpjax import errors

__all__ = ["data_parallel_mesh", "device_bytes", "make_mesh", "param_spec", "replicate", "shard_batch",
           "shard_params", "shard_rows", "take_rows"]


def make_mesh(axis_shapes: Sequence[int], axis_names: Sequence[str],
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A :class:`jax.sharding.Mesh` of shape ``axis_shapes`` from :func:`jax.make_mesh`, its devices grouped by process.

    ``jax.make_mesh`` lays the devices out in the platform's topology-aware order (GPU: XLA's global
    device ids; TPU: rings of the interconnect), which reshaping ``jax.devices()`` loses. That order
    is then regrouped, stably, by process: in the mesh's flattened (row-major) order every process's
    devices are contiguous, process 0's first, each process keeping ``make_mesh``'s order among its
    own. So the first (data) axis is split by process, as :func:`bpjax.train.process_local` and
    :func:`shard_rows` expect (with one process this is ``make_mesh``'s mesh). The axes are
    ``AxisType.Auto`` (``jax.make_mesh``'s default is ``Explicit``, sharding in types, which bpjax's
    training step does not use).

    Args:
      axis_shapes: the size of each axis, e.g. ``(4, 2)``; their product devices are used.
      axis_names: one name per axis, the data axis first, e.g. ``("data", "model")``.
      devices: the devices to lay out (default: ``jax.devices()``, every process's).

    Examples:
      >>> mesh = bp.train.make_mesh((jax.device_count(),), ("data",))
      >>> mesh.axis_names, mesh.devices.shape == (jax.device_count(),)
      (('data',), True)
    """
    shape, names = tuple(axis_shapes), tuple(axis_names)
    if len(shape) != len(names) or not all(isinstance(n, str) for n in names):
        raise errors.BpjaxError("make_mesh", f"expected one axis name (a str) per axis size, got sizes {shape} "
                                             f"and names {names}")
    devices = jax.devices() if devices is None else list(devices)
    for size in shape:
        errors.positive_int("make_mesh", "an axis size", size)
    if int(np.prod(shape)) > len(devices):
        raise errors.BpjaxError("make_mesh", f"a mesh of shape {shape} needs {int(np.prod(shape))} devices, got "
                                             f"{len(devices)}")
    auto = (AxisType.Auto,) * len(shape)
    laid_out = jax.make_mesh(shape, names, axis_types=auto, devices=devices).devices
    by_process = sorted(laid_out.flat, key=lambda d: d.process_index)  # stable: make_mesh's order within a process
    return Mesh(np.asarray(by_process).reshape(shape), names, axis_types=auto)


def data_parallel_mesh(devices: Optional[Sequence[jax.Device]] = None, axis: str = "data") -> Mesh:
    """A 1-D mesh over ``devices`` (default: all of ``jax.devices()``, every process's), process 0's first
    (:func:`make_mesh`).

    Examples:
      >>> mesh = bp.train.data_parallel_mesh()
      >>> mesh.axis_names, mesh.size == jax.device_count()
      (('data',), True)
    """
    devices = jax.devices() if devices is None else list(devices)
    return make_mesh((len(devices),), (axis,), devices)


def data_axis(mesh: Mesh) -> str:
    """The mesh axis that splits the data: its first."""
    return mesh.axis_names[0]


def put(tree, sharding: NamedSharding):
    """``jax.device_put(tree, sharding)``, also from one process's arrays onto a mesh that spans several.

    There a leaf held by this process alone (an array on one of its devices) goes through the host:
    ``device_put`` takes a host value as the global one (and checks that every process passes the
    same). A global array is resharded as it is; typed PRNG keys travel as their key data.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(a):
        if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(a)), impl=jax.random.key_impl(a))
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return jax.device_put(a, sharding)
        return jax.device_put(np.asarray(a), sharding)

    return jax.tree.map(one, tree)


def shard_batch(x, mesh: Mesh, axis: Optional[str] = None):
    """``x`` (or a pytree of arrays) placed with its leading (batch) axis split over ``mesh``'s axis.

    Examples:
      >>> mesh = bp.train.data_parallel_mesh()
      >>> x = bp.train.shard_batch(jnp.ones((8, 3)), mesh)   # rows split over the devices
      >>> x.shape, len(x.sharding.device_set) == jax.device_count()
      ((8, 3), True)
    """
    return put(x, NamedSharding(mesh, PartitionSpec(axis or data_axis(mesh))))


def replicate(tree, mesh: Mesh):
    """Every leaf of ``tree`` copied in full to each device of ``mesh``.

    Examples:
      >>> mesh = bp.train.data_parallel_mesh()
      >>> params = bp.train.replicate({"W": jnp.ones((3, 4))}, mesh)
      >>> params["W"].shape, params["W"].sharding.is_fully_replicated
      ((3, 4), True)
    """
    return put(tree, NamedSharding(mesh, PartitionSpec()))


def param_spec(shape, mesh: Mesh, lead: int = 0) -> PartitionSpec:
    """Where a parameter (or optimiser-state) leaf of ``shape`` lives on ``mesh``.

    On a 2-D mesh ``(data, model)``, a matrix ``W: (D_in, D_out)`` (any leaf with at least two axes
    after ``lead`` stacking axes) whose last axis divides over ``model`` is split along it: each
    device holds ``D_out / M`` of its columns (tensor parallelism; Dense and attention weights,
    conv kernels). Everything else, and everything on a 1-D mesh, is replicated.
    """
    if len(mesh.axis_names) < 2 or len(shape) - lead < 2 or shape[-1] % mesh.shape[mesh.axis_names[1]]:
        return PartitionSpec()
    return PartitionSpec(*([None] * (len(shape) - 1)), mesh.axis_names[1])


def shard_params(tree, mesh: Mesh, lead: int = 0):
    """Every leaf of ``tree`` placed as :func:`param_spec` says (replicated on a 1-D mesh)."""
    return jax.tree.map(lambda a: put(a, NamedSharding(mesh, param_spec(np.shape(a), mesh, lead))), tree)


def constrain_params(tree, mesh: Mesh):
    """Inside ``jit``: every leaf of ``tree`` kept where :func:`param_spec` puts it (so chunks agree)."""
    return jax.tree.map(lambda a: lax.with_sharding_constraint(a, NamedSharding(mesh, param_spec(a.shape, mesh))),
                        tree)


def shard_rows(data: Tuple, mesh: Mesh) -> Tuple[Tuple, Optional[int]]:
    """``((x, y) laid out over the data axis, N)``, or ``(data, None)`` unchanged when it is not a pair of
    arrays sharing a leading axis (the caller's validation then names the fault).

    Each array of ``N`` rows becomes ``D`` shards of ``n = ceil(N / D)`` rows, copies of the last row
    appended (``x: (D*n, ...)``). A host array is split on the host, so no device ever holds all of it; a
    ``jax.Array`` already laid out so (:func:`bpjax.train.process_local`) is used as it is.
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        return data, None
    arrays = []
    for a in data:
        if not isinstance(a, jax.Array):
            try:
                a = np.asarray(a)
            except (TypeError, ValueError):
                return data, None
        arrays.append(a)
    x, y = arrays
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0 or x.dtype == object:
        return data, None
    N, D = int(x.shape[0]), mesh.shape[data_axis(mesh)]
    sharding = NamedSharding(mesh, PartitionSpec(data_axis(mesh)))

    def lay_out(a):
        pad = (-N) % D
        if pad and isinstance(a, jax.Array):
            a = jax.jit(lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1), mode="edge"),
                        out_shardings=sharding)(a)
        elif pad:
            a = np.concatenate([a, np.repeat(a[-1:], pad, axis=0)])
        return put(a, sharding)  # no copy when it already lies so

    return (lay_out(x), lay_out(y)), N


def check_mesh(where: str, mesh) -> None:
    """``mesh`` is ``None`` or a :class:`jax.sharding.Mesh` whose axes are ``AxisType.Auto`` (bpjax's step places
    its arrays with sharding constraints, not with sharding in types)."""
    if mesh is not None and not isinstance(mesh, Mesh):
        raise errors.BpjaxTypeError(where, f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    types = tuple(getattr(mesh, "axis_types", ()) or ()) if mesh is not None else ()
    if any(t != AxisType.Auto for t in types):
        raise errors.BpjaxError(where, f"mesh: expected Auto axes, got {types} (jax.make_mesh's default is "
                                       f"Explicit): build it with bp.train.make_mesh(shape, names), or "
                                       f"jax.make_mesh(..., axis_types=(jax.sharding.AxisType.Auto,) * ndim)")


def data_sharding(where: str, mesh, batch_size: int) -> Optional[NamedSharding]:
    """The batch sharding of a run on ``mesh`` (``None`` without one; the mesh checked by the caller,
    :func:`check_mesh`): ``batch_size`` must split evenly."""
    if mesh is None:
        return None
    axis = data_axis(mesh)
    if batch_size % mesh.shape[axis]:
        raise errors.BpjaxError(where, f"batch_size={batch_size} must be divisible by the {mesh.shape[axis]} "
                                       f"devices of the mesh axis {axis!r}")
    return NamedSharding(mesh, PartitionSpec(axis))


def split_or_replicate(tree, mesh: Mesh):
    """``tree`` split over the data axis when every leaf's rows divide evenly (an evaluation set), else replicated."""
    D = mesh.shape[data_axis(mesh)]
    even = all(np.ndim(a) >= 1 and np.shape(a)[0] % D == 0 for a in jax.tree.leaves(tree))
    return shard_batch(tree, mesh) if even else replicate(tree, mesh)


def take_rows(tree, idx, mesh: Mesh):
    """Rows ``idx: (B,)`` (global row ids) of each array of ``tree`` laid out by :func:`shard_rows`, as a batch
    ``(B, ...)`` split over the data axis; call it inside ``jax.jit``.

    Device ``d`` holds rows ``d*n .. d*n+n-1``: it gathers the rows of ``idx`` it owns into a ``(B, ...)``
    block (zeros elsewhere), and ``psum_scatter`` adds the ``D`` blocks and hands device ``d`` rows
    ``d*B/D .. (d+1)*B/D-1``. Each row of the sum is one device's row plus zeros, so it is exact.
    """
    axis = data_axis(mesh)

    def local(shards, idx):
        d = lax.axis_index(axis)

        def one(a):  # a: (n, ...), this device's shard
            n = a.shape[0]
            owner = idx // n
            rows = jnp.take(a, idx - owner * n, axis=0, mode="clip")
            mine = (owner == d).reshape((-1,) + (1,) * (a.ndim - 1))
            part = jnp.where(mine, rows, jnp.zeros_like(rows))
            if part.dtype == jnp.bool_:  # collectives add numbers
                return lax.psum_scatter(part.astype(jnp.int8), axis, scatter_dimension=0, tiled=True) > 0
            return lax.psum_scatter(part, axis, scatter_dimension=0, tiled=True)

        return jax.tree.map(one, shards)

    spec = PartitionSpec(axis)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, PartitionSpec()), out_specs=spec)(tree, idx)


def device_bytes(tree) -> dict:
    """``{device: bytes}`` of the shards of ``tree``'s arrays that this process holds (its addressable devices)."""
    out: dict = {}
    for leaf in jax.tree.leaves(tree):
        for s in leaf.addressable_shards:
            out[s.device] = out.get(s.device, 0) + s.data.nbytes
    return out
