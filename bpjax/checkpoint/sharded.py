"""The sharded backend (orbax-checkpoint): each process writes the shards it holds and reads back only the shards
that its devices of the target sharding need, with no full gather.

A checkpoint is the directory that ``orbax.checkpoint.Checkpointer(StandardCheckpointHandler())`` writes::

    path/
      _CHECKPOINT_METADATA     orbax's JSON record of the step; its "custom_metadata" holds bpjax's record
                               (format, versions, user metadata, tree structure, per-leaf path/kind/dtype/shape)
      _METADATA, _sharding, manifest.ocdbt, d/, ocdbt.process_<i>/, array_metadatas/, commit_success.txt
                               orbax's tree metadata and TensorStore's data (zarr chunks in OCDBT files)

The leaves are stored as one flat dict ``{"leaf_00000": ..., "leaf_00001": ...}`` in the order of bpjax's
record, so the tree structure (optax NamedTuples included) lives only in that record. Typed PRNG keys are
stored as their key data, Python numbers as 0-d numpy arrays, both encoded and decoded by
:mod:`~bpjax.checkpoint.encoding` as in the ``.npz`` format. Nothing is pickled: orbax writes JSON and
msgpack, TensorStore raw (zstd-compressed) array chunks.

Atomic: orbax writes into ``<path>.orbax-checkpoint-tmp...`` and, once every process has written its
shards and process 0 the record, renames it onto ``path`` (its commit), so a directory at ``path`` is whole;
a save killed before the commit leaves only that temporary directory, which is never read and which the
next save to the same path removes. The record holds a 64-bit checksum per leaf (:func:`checksums`), linear
in the leaf's bits so that each device sums its own block: it is the same under any sharding, computed where
the shards are and verified on every restore (two numbers per leaf cross processes, never the arrays). It
catches damage, not tampering (the ``.npz`` format's SHA-256 covers the whole file).

Every process calls :func:`save` and :func:`read_arrays` with the same path, on a file system they all see
(process ``i`` writes ``ocdbt.process_<i>/``; process 0 the records). orbax-checkpoint is imported only here,
when a sharded checkpoint is written or read: ``pip install -e ".[orbax]"``.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from bpjax import errors
from bpjax.checkpoint.encoding import check_format, leaf_label, spans_processes

STEP_METADATA = "_CHECKPOINT_METADATA"  # orbax's record of a step, JSON; its "custom_metadata" holds bpjax's
INSTALL = 'pip install -e ".[orbax]" (or pip install orbax-checkpoint)'


def require(where: str):
    """The ``orbax.checkpoint`` module, imported now (about 0.5-1 s on a 2-core machine), else a BpjaxError saying
    how to install it."""
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise errors.BpjaxError(where, f"the sharded backend needs orbax-checkpoint, which is not installed: "
                                       f"{INSTALL}") from None
    return ocp


def _names(count: int) -> list:
    return [f"leaf_{i:05d}" for i in range(count)]


# ---------------------------------------------------------------- a checksum that no sharding changes


def _words(xp, a):
    """``a``'s bits as uint32 words (8- and 16-bit values widened, 64-bit ones as two words on a new last axis),
    with ``xp`` numpy or jax.numpy."""
    size = np.dtype(a.dtype).itemsize
    if a.dtype == bool:
        return a.astype(xp.uint32)
    if size == 8:
        return a.reshape(*a.shape, 1).view(np.uint32) if xp is np else jax.lax.bitcast_convert_type(a, xp.uint32)
    unsigned = {1: xp.uint8, 2: xp.uint16, 4: xp.uint32}[size]
    u = a.view(unsigned) if xp is np else jax.lax.bitcast_convert_type(a, unsigned)
    return u.astype(xp.uint32)


def _sums(xp, a):
    """``(s1, s2)``: ``s_k = sum_i u_i * w_k(i) mod 2**32`` over the words ``u`` of ``a`` at row-major position
    ``i``, with the odd weights ``w_1(i) = (2i + 1) * 0x9E3779B1`` and ``w_2(i) = ((2i + 1) * 0x85EBCA77) | 1``
    xor-mixed with ``i >> 5``. A changed word changes ``s_1`` (its weight is odd, so invertible mod 2**32); the
    pair catches other damage with probability about 1 - 2**-64. Linear in the words, so each device sums its
    own block and only two numbers per leaf cross processes: the same value under any sharding."""
    u = _words(xp, a)
    if xp is np:
        i = np.arange(u.size, dtype=np.uint32).reshape(u.shape)
    else:
        i = jnp.zeros(u.shape, jnp.uint32)
        stride = 1
        for axis in reversed(range(u.ndim)):  # the row-major position, laid out like `u` (no reshape, no gather)
            i = i + jax.lax.broadcasted_iota(jnp.uint32, u.shape, axis) * xp.uint32(stride % 2 ** 32)
            stride *= u.shape[axis]
    odd = i * xp.uint32(2) + xp.uint32(1)
    w1 = odd * xp.uint32(0x9E3779B1)
    w2 = ((odd * xp.uint32(0x85EBCA77)) | xp.uint32(1)) ^ ((i >> xp.uint32(5)) << xp.uint32(1))
    return xp.stack([xp.sum(u * w1, dtype=xp.uint32), xp.sum(u * w2, dtype=xp.uint32)])


_device_sums = jax.jit(lambda a: _sums(jnp, a))  # one program per leaf shape, dtype and sharding


def checksums(values) -> list:
    """The checksum of each stored value (a numpy array or a ``jax.Array``, anywhere), as 16 hex digits: summed on
    the devices for an array split over several processes, on the host for the others (no compiling)."""
    out = []
    for v in values:
        pair = np.asarray(_device_sums(v) if spans_processes(v) else _sums(np, np.ascontiguousarray(v)))
        out.append(f"{int(pair[0]):08x}{int(pair[1]):08x}")
    return out


# ---------------------------------------------------------------- save and read


def _local(value) -> bool:
    """Whether ``value`` is a ``jax.Array`` held by this process alone while there are several: orbax writes only
    arrays laid out over the processes' devices, so such a leaf goes as numpy, process 0's copy written and
    every process reading it whole (as the ``.npz`` backend does)."""
    return isinstance(value, jax.Array) and jax.process_count() > 1 and value.is_fully_addressable


def save(where: str, path: str, values: list, meta: dict) -> None:
    """Write ``values`` (from :func:`~bpjax.checkpoint.encoding.encode_leaf`) and bpjax's record ``meta`` to the
    new directory ``path``; every process calls it, each writing the shards it holds."""
    ocp = require(where)
    if os.path.exists(path):
        raise errors.BpjaxError(where, "expected a new path, the directory exists: a sharded checkpoint is "
                                       "written once (orbax commits it by renaming its temporary directory onto "
                                       "the path, and never replaces one); remove it first or save to a new path")
    if not values:
        raise errors.BpjaxError(where, 'expected a tree with at least one leaf (orbax stores no empty tree): save '
                                       'an empty tree with backend="npz"')
    values = [np.asarray(v) if _local(v) else v for v in values]
    meta = dict(meta, checksums=checksums(values))
    try:
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            checkpointer.save(path, args=ocp.args.StandardSave(dict(zip(_names(len(values)), values))),
                              custom_metadata={"bpjax": meta})
    except Exception as e:  # noqa: BLE001 -- orbax and TensorStore raise OSError, ValueError and bare Exception
        raise errors.BpjaxError(where, f"could not write the checkpoint: {type(e).__name__}: {e}") from e


def read_meta(where: str, path: str) -> dict:
    """bpjax's record of the sharded checkpoint at ``path`` (a directory), checked; reads one small JSON file and
    needs no orbax."""
    file = os.path.join(path, STEP_METADATA)
    try:
        with open(file, "rb") as f:
            step = json.load(f)
    except FileNotFoundError:
        found = sorted(os.listdir(path))
        raise errors.BpjaxError(where, f"expected a checkpoint file, got a directory, and not one of a sharded "
                                       f"checkpoint either (it has no {STEP_METADATA}; found "
                                       f"{found[:5]}{' ...' if len(found) > 5 else ''})") from None
    except (OSError, ValueError) as e:
        raise errors.BpjaxError(where, f"corrupted sharded checkpoint: {STEP_METADATA} is not readable JSON "
                                       f"({type(e).__name__}: {e})") from None
    meta = step.get("custom_metadata", {}).get("bpjax") if isinstance(step, dict) else None
    if meta is None:
        raise errors.BpjaxError(where, f"not a bpjax checkpoint: orbax's {STEP_METADATA} holds no bpjax record "
                                       f"(a directory written by orbax itself, not by bp.checkpoint.save?)")
    check_format(where, meta)
    return meta


def _target(record: dict, like):
    """What orbax restores leaf ``record`` as: a ``jax.ShapeDtypeStruct`` with the sharding of ``like``'s leaf
    (each process reads only its devices' shards), else a numpy array of the stored dtype (read whole)."""
    if record["kind"] == "key":
        data = jax.eval_shape(jax.random.key_data, like)
        sharding = (None if _local(like) else jax.random.key_data(like).sharding) if isinstance(like, jax.Array) \
            else _key_data_sharding(like)
        dtype, shape = data.dtype, data.shape
    else:
        dtype, shape = np.dtype(record["dtype"]), tuple(record["shape"])
        sharding = getattr(like, "sharding", None) if isinstance(like, (jax.Array, jax.ShapeDtypeStruct)) \
            and not _local(like) else None
    if sharding is None:
        return np.empty((0,), dtype)  # a numpy target: orbax reads the stored array whole, in this dtype
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _key_data_sharding(like):
    """The sharding of the key data of a ``jax.ShapeDtypeStruct`` of typed keys: its own, the trailing key axes
    replicated (``None`` when it has none or it is not a NamedSharding)."""
    sharding = getattr(like, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return None
    extra = jax.eval_shape(jax.random.key_data, like).ndim - len(like.shape)
    return NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec, *([None] * extra)))


def read_arrays(where: str, path: str, meta: dict, like_leaves) -> list:
    """The stored values of the sharded checkpoint at ``path`` (its record ``meta``), in the order of its leaves,
    their checksums verified: each as a ``jax.Array`` in the sharding of its leaf of ``like_leaves`` (``like``'s
    leaves, checked against the record), or a numpy array where that leaf has no sharding or ``like_leaves`` is
    ``None``. Every process calls it."""
    ocp = require(where)
    records = meta["leaves"]
    names = _names(len(records))
    try:
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            if like_leaves is None:
                stored = checkpointer.metadata(path).item_metadata.tree
                targets = {n: np.empty((0,), stored[n].dtype) for n in names}
            else:
                targets = {n: _target(r, leaf) for n, r, leaf in zip(names, records, like_leaves)}
            out = checkpointer.restore(path, args=ocp.args.StandardRestore(targets))
    except Exception as e:  # noqa: BLE001 -- a missing file is a ValueError, a truncated one a bare Exception
        raise errors.BpjaxError(where, f"damaged or incomplete sharded checkpoint (expected the directory that "
                                       f"bp.checkpoint.save(backend=\"orbax\") wrote): {type(e).__name__}: "
                                       f"{str(e)[:500]}") from None
    values = [out[n] for n in names]
    for rec, want, found in zip(records, meta["checksums"], checksums(values)):
        if found != want:
            raise errors.BpjaxError(where, f"checksum mismatch at leaf {leaf_label(rec['path'])}, the checkpoint's "
                                           f"data is corrupted: expected {want}, got {found}")
    return values
