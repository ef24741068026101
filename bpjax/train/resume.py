"""Checkpoints of a run (save every ``checkpoint_every`` steps, resume from the file) and the NaN guard's report.

With several processes, process 0 alone reads and writes the file: every process takes part in
fetching the arrays, process 0 writes, and all of them wait until it has (a barrier that also
tells them if the write failed). On resume process 0 reads the step and the arrays and sends
them to every process, so all agree on where the run continues even when only process 0 can see
the file (or the hosts see different ones).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import _errors
from bpjax.train import distributed
from bpjax.train.sharding import put


def leaf_names(tree) -> list:
    """``["[0]['W']", ...]``: the path of every leaf of ``tree``."""
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def save(path, plan, carry, history, done) -> None:
    """Write params, opt_state, state, the step and the history so far to ``path`` (atomically, process 0)."""
    from bpjax import checkpoint

    tree = distributed.to_host({"params": carry[0], "opt_state": carry[1], "state": carry[2], "step": done,
                                "history": {k: v for k, v in history.items() if k not in ("step", "eval_step")}})
    distributed.on_main(lambda: checkpoint.save(path, tree, metadata={"step": done, "steps": plan.steps,
                                                                      "batch_size": plan.batch_size}),
                        f"writing the checkpoint {path!r}")
    distributed.checkpoint_written(path, done)


def resume_step(path) -> int:
    """The step that a run with ``checkpoint_path=path`` resumes from (``0``: no checkpoint, a fresh start).

    Read by process 0 and sent to every process, so all agree. For a streamed run, start the
    iterator at this step's batch.
    """
    from bpjax import checkpoint as ckpt

    def read():
        if path is None or not os.path.exists(path):
            return 0
        return int(ckpt.read_metadata(path)["metadata"].get("step", -1))

    found = [0]
    distributed.on_main(lambda: found.__setitem__(0, read()), f"reading the checkpoint {path!r}")
    return int(distributed.broadcast(np.int64(found[0]), np.int64(0)))


def resume(plan, carry, path, names, batched, start):
    """Restore ``(carry, losses so far, evals so far)`` from the checkpoint at ``path`` of step ``start``."""
    from bpjax import checkpoint as ckpt
    if not 0 < start <= plan.steps:
        raise _errors.BpjaxError("fit", f"checkpoint {path!r} is at step {start}, outside (0, steps={plan.steps}]")
    lead = (batched,) if batched else ()
    f32 = lambda *shape: np.zeros((*lead, *shape), np.float32)  # noqa: E731
    eval_steps = [s for s in range(1, start + 1) if plan.eval_every is not None and
                  (s % plan.eval_every == 0 or s == plan.steps)]
    history = {"loss": f32(start)}
    if plan.eval_every is not None:
        history.update({"eval_" + n: f32(len(eval_steps)) for n in names})
    like = {"params": carry[0], "opt_state": carry[1], "state": carry[2], "step": 0, "history": history}
    saved = [None]
    distributed.on_main(lambda: saved.__setitem__(0, ckpt.restore(path, like=like)),
                        f"reading the checkpoint {path!r}")
    saved = distributed.broadcast(saved[0], distributed.to_host(like))
    # back where the arrays of a fresh run live (replicated over the mesh, or the default device)
    restored = tuple(jax.tree.map(lambda a, old: put(a, old.sharding) if isinstance(old, jax.Array)
                                  else jnp.asarray(a), saved[k], carry[i])
                     for i, k in enumerate(("params", "opt_state", "state")))
    # evaluations so far sit at their steps; other steps hold NaN, as a compiled chunk returns them
    evals = []
    for n in names:
        full = np.full((*lead, start), np.nan, np.float32)
        if eval_steps:
            full[..., [s - 1 for s in eval_steps]] = saved["history"]["eval_" + n]
        evals.append(full)
    return (*restored, carry[3]), np.asarray(saved["history"]["loss"]), tuple(evals)


def raise_if_bad(carry, batched) -> None:
    """The NaN guard's report: a ``BpjaxError`` naming the model, the step and the first non-finite leaf.

    It reads only the guard's flags, replicated on every device, never the (possibly sharded) params.
    """
    bad_step, finite = carry[3]
    bad_step, finite = np.asarray(bad_step), np.asarray(finite)
    if (bad_step < 0).all():
        return
    names = leaf_names(carry[0] if not batched else jax.tree.map(lambda a: a[0], carry[0]))
    model = int(np.argmax(bad_step >= 0)) if batched else None
    step = int(bad_step[model] if batched else bad_step)
    fin = finite[model] if batched else finite
    leaf = names[int(np.argmin(fin))] if not fin.all() else None
    what = f"gradient of params{leaf}" if leaf is not None else "loss"
    who = f"model {model}: " if batched else ""
    err = _errors.BpjaxError("fit", f"{who}non-finite {what} at step {step} (0-based); the returned params "
                                    f"are those before that step (nan_guard=True)")
    err.params, err.step = carry[0], step  # type: ignore[attr-defined]  # the guard's report, on the error
    raise err


def raise_if_bad_input(finite, lo) -> None:
    """A streamed batch with NaN or Inf: a ``BpjaxError`` naming its step (``finite: (length,)`` from the chunk)."""
    finite = np.asarray(finite)
    if finite.size and not finite.all():
        step = lo + int(np.argmin(finite.reshape(-1, finite.shape[-1]).all(0)))
        raise _errors.BpjaxError("fit", f"train_data batch of step {step} (0-based) contains NaN or Inf")
