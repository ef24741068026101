"""Streamed input: ``train_data`` as an iterable of ``(xb, yb)`` batches, sent to the devices a chunk ahead.

For data that does not fit in device memory. The driver asks for one block per compiled chunk:
:meth:`Stream.take` reads that chunk's ``L`` batches from the iterator, stacks them into
``xs: (L, B, ...)``, ``ys: (L, B, ...)`` and starts their transfer. It does so for chunk ``k+1`` right
after chunk ``k`` has been dispatched (the call returns at once), so reading and transfer overlap
the device's work: two blocks are on the devices at a time (double buffering). Every block has
the same shape, so the chunk compiles once (once more for a shorter last chunk).

With a mesh, each process's iterator yields its own ``B / process_count`` rows of every global
batch (process 0's rows first) and the block is laid out over the data axis
(``jax.make_array_from_process_local_data``); with one process it yields whole batches.

The iterator's position is the caller's: a run resumed from a checkpoint at step ``s`` reads its
next batch as the batch of step ``s``, so pass an iterator that starts there
(``s = bp.train.resume_step(path)``; for a grain ``DataLoader``, restore its iterator state).
"""

from __future__ import annotations

import itertools
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bpjax import errors

__all__ = ["Stream", "is_stream"]


def aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """``np.empty(shape, dtype)`` starting on an ``align``-byte boundary: a CPU device then uses the host
    buffer as it is (``jax.device_put`` copies a misaligned one)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def is_stream(data) -> bool:
    """Whether ``train_data`` is a stream of batches: an iterable other than a tuple/list pair, an array or a str."""
    return (hasattr(data, "__iter__") and not isinstance(data, (tuple, list, str, bytes, dict))
            and not hasattr(data, "shape"))


class Stream:
    """Batches ``(xb, yb)`` from an iterable, ``rows`` per process each, handed out in device blocks."""

    def __init__(self, where: str, data, batch_size: int, mesh: Optional[Mesh]):
        self.where, self.mesh = where, mesh
        self.iterator = iter(data)
        self.global_rows = batch_size
        self.rows = batch_size // jax.process_count() if mesh is not None else batch_size
        self.read = 0  # batches taken from the iterator so far
        self.first = self.next_batch()  # kept for the caller's checks; handed out first

    def next_batch(self):
        """The next ``(xb, yb)`` as numpy arrays, checked against the first batch's shapes and dtypes."""
        try:
            batch = next(self.iterator)
        except StopIteration:
            raise errors.BpjaxError(self.where, f"train_data ended after {self.read} batches; the run needs "
                                                f"one batch per step") from None
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise errors.BpjaxTypeError(self.where, f"train_data batch {self.read}: expected a pair (xb, yb) of "
                                                    f"arrays, got {type(batch).__name__}")
        xb, yb = np.asarray(batch[0]), np.asarray(batch[1])
        if self.read == 0:
            if xb.ndim < 1 or yb.ndim < 1 or xb.shape[0] != self.rows or yb.shape[0] != self.rows:
                per = " per process" if self.mesh is not None and jax.process_count() > 1 else ""
                raise errors.BpjaxError(self.where, f"train_data batch 0: expected xb and yb with {self.rows} "
                                                    f"rows{per} (batch_size={self.global_rows}), got xb "
                                                    f"{xb.shape} and yb {yb.shape}")
            self.spec = ((xb.shape, xb.dtype), (yb.shape, yb.dtype))
        elif ((xb.shape, xb.dtype), (yb.shape, yb.dtype)) != self.spec:
            (sx, dx), (sy, dy) = self.spec
            raise errors.BpjaxError(self.where, f"train_data batch {self.read}: expected xb {sx} {dx} and yb "
                                                f"{sy} {dy} like batch 0, got xb {xb.shape} {xb.dtype} and yb "
                                                f"{yb.shape} {yb.dtype}")
        self.read += 1
        return xb, yb

    @property
    def batch_bytes(self) -> int:
        """Bytes of one batch as this process reads it (``xb`` and ``yb``)."""
        (sx, dx), (sy, dy) = self.spec
        return int(np.prod(sx)) * np.dtype(dx).itemsize + int(np.prod(sy)) * np.dtype(dy).itemsize

    def take(self, n: int):
        """The next ``n`` batches as a device block ``(xs: (n, B, ...), ys: (n, B, ...))`` (transfer started)."""
        first, self.first = self.first, None
        batches = list(itertools.chain([first] if first is not None else [],
                                       (self.next_batch() for _ in range(n - (first is not None)))))
        block = tuple(np.stack(part, out=aligned_empty((n, *part[0].shape), part[0].dtype)) for part in zip(*batches))
        if self.mesh is None:
            return jax.device_put(block)
        sharding = NamedSharding(self.mesh, PartitionSpec(None, self.mesh.axis_names[0]))
        return tuple(jax.make_array_from_process_local_data(sharding, b, (n, self.global_rows, *b.shape[2:]))
                     for b in block)
