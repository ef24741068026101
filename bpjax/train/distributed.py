"""Many processes (one per host, or several on one machine): start-up, process-local data, one writer, agreement.

JAX's multi-controller runtime is the engine: every process runs the same program on its own
devices, ``jax.devices()`` lists every process's devices (process 0's first), and the compiler
inserts the collectives (gloo on CPU). This module adds what a training run needs on top:

- :func:`initialize`: ``jax.distributed.initialize`` from arguments or the ``BPJAX_*`` variables
  that :mod:`bpjax.train.launch` sets;
- :func:`process_local`: global arrays from each process's own rows;
- :func:`on_main` and :func:`everywhere`: work done by process 0 only (checkpoint files, progress,
  callbacks) or by every process, with every process learning whether it failed, so that none
  waits forever in the next collective;
- :func:`broadcast` and :func:`to_host`: values of process 0 sent to all, global arrays fetched
  without reading non-addressable data.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bpjax import errors

__all__ = ["EveryProcess", "broadcast", "every_process", "initialize", "is_main", "on_main", "process_local",
           "to_host"]

ENV = ("BPJAX_COORDINATOR_ADDRESS", "BPJAX_NUM_PROCESSES", "BPJAX_PROCESS_ID")


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
    """``jax.distributed.initialize(coordinator_address, num_processes, process_id)``, CPU collectives gloo.

    Call it first in every process, before any other use of jax. Arguments left ``None`` are read
    from ``BPJAX_COORDINATOR_ADDRESS`` (``"host:port"`` of process 0), ``BPJAX_NUM_PROCESSES`` and
    ``BPJAX_PROCESS_ID`` (what ``python -m bpjax.train.launch`` sets). With no argument and none of
    the variables, the script runs as one process and nothing is done.

    Returns:
      ``True`` when it started the distributed runtime, ``False`` for one process.
    """
    env = [os.environ.get(k) for k in ENV]
    given = (coordinator_address or env[0], env[1] if num_processes is None else num_processes,
             env[2] if process_id is None else process_id)
    if all(v is None for v in given):
        return False
    missing = [k for k, v in zip(ENV, given) if v is None]
    if missing:
        raise errors.BpjaxError("initialize", f"expected coordinator_address, num_processes and process_id "
                                              f"(or the variables {', '.join(ENV)}) together, got none for "
                                              f"{missing}")
    try:
        count, index = int(given[1]), int(given[2])  # type: ignore[arg-type]  # not None: checked above
    except ValueError:
        raise errors.BpjaxError("initialize", f"num_processes and process_id must be integers, got "
                                              f"{given[1]!r} and {given[2]!r}") from None
    count = errors.positive_int("initialize", "num_processes", count)
    if not 0 <= index < count:
        raise errors.BpjaxError("initialize", f"process_id must lie in [0, {count}), got {index}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=given[0], num_processes=count, process_id=index)
    return True


def is_main() -> bool:
    """Whether this is process 0, the one that writes files and shows progress."""
    return jax.process_index() == 0


def process_local(tree, mesh: Mesh):
    """Global arrays, split over ``mesh``'s data axis, from this process's own rows (a pytree of arrays).

    Process ``p`` passes rows ``p*N/P .. (p+1)*N/P-1`` of the global ``(N, ...)`` arrays (with the mesh
    over ``jax.devices()``, whose order is process 0's devices first); each process holds only its
    rows. With one process it is ``shard_batch``. Row counts must divide over the local devices.
    """
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


class EveryProcess(NamedTuple):
    """A ``fit`` callback run by every process (a bare callback runs on process 0 only)."""

    fn: Callable

    def __call__(self, *args):
        return self.fn(*args)


def every_process(callback: Callable) -> EveryProcess:
    """Mark ``callback(step, FitResult)`` to run in every process, not only in process 0."""
    return EveryProcess(callback)


def on_main(fn: Callable[[], Any], what: str, *, all_processes: bool = False):
    """Run ``fn()`` in process 0 (in every process with ``all_processes``); every process then learns whether
    it raised anywhere: the process where it raised re-raises, the others raise a ``BpjaxError`` naming
    ``what`` and the process, so that no process is left waiting in a collective."""
    error = None
    if all_processes or is_main():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 -- passed on below, after the others are told
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
        if error is None and failed.any():
            raise errors.BpjaxError("fit", f"{what} raised in process {int(np.argmax(failed))}; every process "
                                           f"stops here")
    if error is not None:
        raise error


def broadcast(tree, like):
    """Process 0's ``tree`` (a pytree of arrays, typed PRNG keys and numbers) in every process, as numpy leaves
    (keys as keys); the other processes pass ``tree=None`` and ``like``, a tree of the same structure."""
    source = tree if is_main() else like
    if jax.process_count() == 1:
        return source
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(source)
    keys = [isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key) for a in leaves]
    raw = [np.asarray(jax.random.key_data(a)) if k else np.asarray(a) for a, k in zip(leaves, keys)]
    out = multihost_utils.broadcast_one_to_all(raw)
    impls = [jax.random.key_impl(a) if k else None for a, k in zip(leaves, keys)]
    out = [jax.random.wrap_key_data(o, impl=i) if k else o for o, k, i in zip(out, keys, impls)]
    return jax.tree.unflatten(treedef, [type(a)(o) if isinstance(a, (int, float, bool)) else o
                                        for a, o in zip(leaves, out)])


def to_host(tree):
    """Every array leaf of ``tree`` as numpy; an array split over other processes' devices is gathered first
    (a collective: every process calls it), a replicated or local one is read where it is."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable and not a.is_fully_replicated:
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(a, tiled=True)
        return a

    return jax.tree.map(one, tree)
