"""A run's checkpoints: its run folder opened before the first step, a save every ``checkpoint_every`` steps, resume.

The run folder (:mod:`bpjax.checkpoint.folder`) is checked (created, writable, a probe write) and
locked before the first step, so a bad path fails at once, not after the run, and two runs never
share one. Every save writes a new entry ``step_<s>.npz`` holding params, opt_state, state, the step
and the history so far, with the run's fingerprint (:mod:`bpjax.train.fingerprint`) in its
metadata, then keeps the newest ``keep`` entries. A non-finite state is never saved: the newest
finite entry stays the one to resume from. Resuming reads the newest entry that passes its checks,
compares fingerprints and refuses another run's checkpoint unless the difference is accepted.

With several processes, process 0 alone holds the lock, reads and writes the folder: every
process takes part in fetching the arrays, process 0 writes, and all of them wait until it has (a
barrier that also tells them if the write failed). On resume process 0 reads the step and the
arrays and sends them to every process, so all agree on where the run continues even when only
process 0 can see the folder (or the hosts see different ones).

A run whose params are split over the devices of several processes (a model axis spanning hosts:
:func:`bpjax.checkpoint.spans_processes`) saves with the sharded backend instead
(``step_<s>.orbax``, :mod:`bpjax.checkpoint.sharded`): every process writes and reads only its own
shards, nothing is gathered, and the folder must be one that every process sees.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import errors
from bpjax.checkpoint import folder
from bpjax.checkpoint.reading import decode, read
from bpjax.train import distributed, fingerprint
from bpjax.train.sharding import put

KEEP = 3  # checkpoints kept per run folder by default


class NonFiniteStateWarning(UserWarning):
    """A run's state was not finite at a save (``nan_guard=False``): nothing was written, the last finite
    checkpoint is kept."""


@dataclasses.dataclass
class RunFolder:
    """An open run folder: its path, retention, the run's fingerprint, accepted changes and this process's lock."""

    path: str
    keep: int
    record: Dict[str, Any]
    accept: tuple
    lock: Optional[dict]
    sharded: bool = False
    last_saved: Optional[int] = None
    warned: bool = False


def open_folder(where: str, path: str, keep: int, record: Dict[str, Any], accept: Sequence[str],
                sharded: bool) -> RunFolder:
    """Check, create and lock ``path`` (process 0) and remove the temporary files of unfinished saves.

    ``sharded``: the run's params span processes, so its entries are written by the sharded backend.
    """
    lock: list = [None]

    def take():
        folder.prepare(path, where)
        lock[0] = folder.acquire(path, where)
        folder.remove_temporaries(path)

    distributed.on_main(take, f"opening the run folder {path!r}")
    if sharded:
        from bpjax.checkpoint import sharded as backend

        backend.require(where)  # orbax installed in every process, before the first step
    return RunFolder(path, keep, record, tuple(accept), lock[0], sharded)


def close_folder(run: RunFolder) -> None:
    """Release the run folder's lock (process 0)."""
    if run.lock is not None:
        folder.release(run.path, run.lock)


def save(run: RunFolder, plan, carry, history, done: int, finite: bool) -> None:
    """Write the entry of step ``done`` (process 0, atomically), then keep the newest ``run.keep``.

    A non-finite carry is not written: a :class:`NonFiniteStateWarning` (once per run) says that the
    last finite checkpoint is kept.
    """
    from bpjax import checkpoint

    if not finite:
        if not run.warned and distributed.is_main():
            kept = f"step {run.last_saved}" if run.last_saved is not None else "none yet"
            warnings.warn(f"fit: the params, optimizer state or state after step {done} are not finite, so no "
                          f"checkpoint is written from here on; the newest finite checkpoint ({kept}) stays in "
                          f"{run.path!r}. nan_guard=True stops a run at its first non-finite step",
                          NonFiniteStateWarning, stacklevel=4)
        run.warned = True
        return
    tree = {"params": carry[0], "opt_state": carry[1], "state": carry[2], "step": done,
            "history": {k: v for k, v in history.items() if k not in ("step", "eval_step")}}
    metadata = {"step": done, "steps": plan.steps, "run": run.record}
    what = f"writing the checkpoint of step {done} in {run.path!r}"
    if run.sharded:  # every process writes its own shards
        checkpoint.save(folder.entry_path(run.path, done, "orbax"), tree, model=plan.model, metadata=metadata,
                        backend="orbax")
        distributed.on_main(lambda: folder.prune(run.path, run.keep), what)
    else:
        tree = distributed.to_host(tree)

        def write():
            checkpoint.save(folder.entry_path(run.path, done), tree, model=plan.model, metadata=metadata)
            folder.prune(run.path, run.keep)

        distributed.on_main(write, what)
    run.last_saved = done
    distributed.checkpoint_written(run.path, done)


def resume_step(path) -> int:
    """The step that a run with ``checkpoint_path=path`` resumes from (``0``: no checkpoint, a fresh start).

    The newest entry of the run folder that passes its checks; read by process 0 and sent to every
    process, so all agree. For a streamed run, start the iterator at this step's batch.

    Examples:
      >>> import os, tempfile
      >>> model = bp.serial(L.Dense(4), L.Relu(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> run = os.path.join(tempfile.mkdtemp(), "run")
      >>> bp.train.resume_step(run)                                                   # nothing saved yet
      0
      >>> _ = bp.train.fit(model, bp.losses.softmax_cross_entropy, optax.sgd(0.1), params, (x, y), steps=3,
      ...                  batch_size=4, verbose=False, checkpoint_path=run, checkpoint_every=3)
      >>> bp.train.resume_step(run)
      3
    """
    where = "resume_step"

    def newest():
        found = folder.newest(path, lambda entry: read(entry, f"{where} {entry}"), where) if path is not None else None
        return 0 if found is None else found[0]

    step = [0]
    distributed.on_main(lambda: step.__setitem__(0, newest()), f"reading the run folder {path!r}")
    return int(distributed.broadcast(np.int64(step[0]), np.int64(0)))


def _like(plan, carry, names, batched, start):
    lead = (batched,) if batched else ()
    f32 = lambda *shape: np.zeros((*lead, *shape), np.float32)  # noqa: E731
    eval_steps = [s for s in range(1, start + 1) if plan.eval_every is not None and
                  (s % plan.eval_every == 0 or s == plan.steps)]
    history = {"loss": f32(start)}
    if plan.eval_every is not None:
        history.update({"eval_" + n: f32(len(eval_steps)) for n in names})
    if carry is None:
        return None, eval_steps
    return {"params": carry[0], "opt_state": carry[1], "state": carry[2], "step": 0, "history": history}, eval_steps


def _restore(run: RunFolder, plan, carry, names, batched):
    """``(start, tree)`` from the newest readable entry, its fingerprint compared with the run's (process 0, or
    every process of a sharded run, each reading its own shards)."""
    where = "fit"
    found = folder.newest(run.path, lambda entry: read(entry, f"{where} checkpoint {entry}"), where)
    if found is None:
        return 0, None
    start, entry, (meta, arrays) = found
    if not 0 < start <= plan.steps:
        raise errors.BpjaxError(where, f"the checkpoint in {run.path!r} is at step {start}, past steps="
                                       f"{plan.steps}: pass steps >= {start} to train on, or use another "
                                       f"checkpoint_path for a new run")
    diffs = fingerprint.differences(meta["metadata"].get("run") or {}, run.record)
    fingerprint.refuse(where, run.path, start, diffs, run.accept)
    like, _ = _like(plan, carry, names, batched, start)
    fresh_optimizer = "optimizer" in diffs and "structure" in diffs["optimizer"]
    if not fresh_optimizer:
        return start, decode(f"{where} checkpoint {entry}", entry, meta, arrays, like)
    if arrays is None:
        raise errors.BpjaxError(where, f"{entry!r}: a sharded checkpoint is restored whole, so an optimizer whose "
                                       f"state has another structure cannot continue it; start a new run")
    # accepted: another optimizer whose state has another structure starts from its init
    warnings.warn(f"fit: resuming {entry!r} with another optimizer (accept_changes): params and state restored, "
                  f"the optimizer state starts afresh", UserWarning, stacklevel=5)
    keep = [i for i, r in enumerate(meta["leaves"]) if not r["path"].startswith("['opt_state']")]
    partial = {**meta, "leaves": [meta["leaves"][i] for i in keep]}
    tree = decode(f"{where} checkpoint {entry}", entry, partial, [arrays[i] for i in keep],
                  {k: v for k, v in like.items() if k != "opt_state"})
    return start, {**tree, "opt_state": distributed.to_host(carry[1])}


def resume(run: RunFolder, plan, carry, names, batched):
    """``(start, carry, losses so far, evals so far)`` from the run folder (``start = 0``: a fresh run)."""
    found: list = [0, None]

    def load():
        found[:] = _restore(run, plan, carry, names, batched)

    if run.sharded:  # every process reads the record and its own shards, straight into the carry's shardings
        load()
        if not found[0]:
            return 0, carry, None, None
        start, saved = found
        run.last_saved = start
        distributed.checkpoint_written(run.path, start)
        return start, (saved["params"], saved["opt_state"], saved["state"]), np.asarray(saved["history"]["loss"]), \
            _evals(plan, saved, names, batched, start)
    distributed.on_main(load, f"reading the run folder {run.path!r}")
    start = int(distributed.broadcast(np.int64(found[0]), np.int64(0)))
    if not start:
        return 0, carry, None, None
    run.last_saved = start
    distributed.checkpoint_written(run.path, start)
    like, _ = _like(plan, carry, names, batched, start)
    saved = distributed.broadcast(found[1], distributed.to_host(like))
    # back where the arrays of a fresh run live (replicated over the mesh, or the default device)
    restored = tuple(jax.tree.map(lambda a, old: put(a, old.sharding) if isinstance(old, jax.Array)  # type: ignore
                                  else jnp.asarray(a), saved[k], carry[i])
                     for i, k in enumerate(("params", "opt_state", "state")))
    return start, restored, np.asarray(saved["history"]["loss"]), _evals(plan, saved, names, batched, start)


def _evals(plan, saved, names, batched, start) -> tuple:
    """The evaluations so far at their steps; other steps hold NaN, as a compiled chunk returns them."""
    _, eval_steps = _like(plan, None, names, batched, start)
    lead = (batched,) if batched else ()
    evals = []
    for n in names:
        full = np.full((*lead, start), np.nan, np.float32)
        if eval_steps:
            full[..., [s - 1 for s in eval_steps]] = np.asarray(saved["history"]["eval_" + n])
        evals.append(full)
    return tuple(evals)


def raise_if_bad_input(finite, lo) -> None:
    """A streamed batch with NaN or Inf: a ``BpjaxError`` naming its step (``finite: (length,)`` from the chunk)."""
    finite = np.asarray(finite)
    if finite.size and not finite.all():
        step = lo + int(np.argmin(finite.reshape(-1, finite.shape[-1]).all(0)))
        raise errors.BpjaxError("fit", f"train_data batch of step {step} (0-based) contains NaN or Inf")


def check_folder_args(where: str, path, keep) -> tuple:
    """``(path as a str or None, keep)``, checked."""
    if path is not None:
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str) or not path:
            raise errors.BpjaxTypeError(where, f"checkpoint_path must be a folder path (str or os.PathLike), got "
                                               f"{path!r:.60}")
    return path, errors.positive_int(where, "keep_checkpoints", keep)
