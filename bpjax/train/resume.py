"""Checkpoints of a run (save every ``checkpoint_every`` steps, resume from the file) and the NaN guard's report."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import _errors


def leaf_names(tree) -> list:
    """``["[0]['W']", ...]``: the path of every leaf of ``tree``."""
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def save(path, plan, carry, history, done) -> None:
    """Write params, opt_state, state, the step and the history so far to ``path`` (atomically)."""
    from bpjax import checkpoint

    checkpoint.save(path, {"params": carry[0], "opt_state": carry[1], "state": carry[2], "step": done,
                           "history": {k: v for k, v in history.items() if k not in ("step", "eval_step")}},
                    metadata={"step": done, "steps": plan.steps, "batch_size": plan.batch_size})


def resume(plan, carry, path, names, batched):
    """Restore ``(carry, start step, losses so far, evals so far)`` from the checkpoint at ``path``."""
    from bpjax import checkpoint as ckpt
    start = int(ckpt.read_metadata(path)["metadata"].get("step", -1))
    if not 0 < start <= plan.steps:
        raise _errors.BpjaxError("fit", f"checkpoint {path!r} is at step {start}, outside (0, steps={plan.steps}]")
    lead = (batched,) if batched else ()
    f32 = lambda *shape: jax.ShapeDtypeStruct((*lead, *shape), jnp.float32)  # noqa: E731
    history = {"loss": f32(start)}
    if plan.eval_every is not None:
        n_eval = sum(1 for s in range(1, start + 1) if s % plan.eval_every == 0 or s == plan.steps)
        history.update({"eval_" + n: f32(n_eval) for n in names})
    like = {"params": carry[0], "opt_state": carry[1], "state": carry[2], "step": 0, "history": history}
    saved = ckpt.restore(path, like=like)
    restored = tuple(jax.tree.map(jnp.asarray, saved[k]) for k in ("params", "opt_state", "state"))
    # evaluations so far sit at their steps; other steps hold NaN, as a compiled chunk returns them
    evals = []
    for n in names:
        full = np.full((*lead, start), np.nan, np.float32)
        if plan.eval_every is not None:
            idx = [s - 1 for s in range(1, start + 1) if s % plan.eval_every == 0 or s == plan.steps]
            full[..., idx] = saved["history"]["eval_" + n]
        evals.append(full)
    return (*restored, carry[3]), start, np.asarray(saved["history"]["loss"]), tuple(evals)


def raise_if_bad(carry, batched) -> None:
    """The NaN guard's report: a ``BpjaxError`` naming the model, the step and the first non-finite leaf."""
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
    err.params, err.step = carry[0], step
    raise err
