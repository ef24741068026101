"""The NaN guard: when a chunk ends with a non-finite loss or state, find the first bad step and name its cause.

The compiled loop costs nothing per step for this (:mod:`bpjax.train.loop`): the driver sees each
chunk's losses and a per-leaf finite flag of its final carry. When one fails, :func:`stop` runs the
chunk again from its start with the diagnosing program, which freezes the carry before the first
step whose loss, gradients, new params, optimizer state or model state are not finite, and raises a
:class:`~bpjax.BpjaxError` that names the step, the cause and the leaf, with the last finite
``params``, ``opt_state`` and ``state`` on the error.
"""

from __future__ import annotations

import jax
import numpy as np

from bpjax import errors
from bpjax.train.cache import compiled_chunk
from bpjax.train.loop import CAUSES

FLOAT16_HINT = ("; in float16, Adam's default eps=1e-8 is 0 (float16(1e-8) == 0), so a gradient that "
                "underflows gives 0/0: pass optax.adam(lr, eps=1e-4) or keep the params in float32")
UPDATE_HINT = "; a learning rate too large for this model? (optax.clip_by_global_norm bounds each step)"


def healthy(losses, finite) -> bool:
    """Whether a chunk's ``losses`` and the finite flags of its final carry are all finite."""
    return bool(np.isfinite(np.asarray(losses)).all() and np.asarray(finite).all())


def leaf_names(tree) -> list:
    """``["[0]['W']", ...]``: the path of every leaf of ``tree``."""
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _cause(carry, cause: int, leaf: int, batched: int) -> str:
    one = jax.tree.map(lambda a: a[0], carry) if batched else carry
    params, opt_state, state = one
    what = CAUSES[cause]
    if what == "loss":
        return "non-finite loss"
    if what == "gradient":
        return f"non-finite gradient of params{leaf_names(params)[leaf]} (the loss was finite)"
    if what == "state":
        return f"the model's state{leaf_names(state)[leaf]} became non-finite (loss and gradients finite)"
    tree = params if what == "params" else opt_state
    name, value = [(n, a) for n, (_, a) in zip(leaf_names(tree), jax.tree_util.tree_leaves_with_path(tree))][leaf]
    low = any(np.dtype(a.dtype) == np.float16 for a in jax.tree.leaves(params))
    hint = FLOAT16_HINT if low else UPDATE_HINT
    if what == "params":
        return f"the optimizer's update made params{name} non-finite (the loss and every gradient were finite){hint}"
    return f"the optimizer's state opt_state{name} became non-finite (the loss and every gradient were finite){hint}"


def stop(plan, carry, hp, keys, block, lo: int, hi: int, batched: int):
    """Run steps ``lo..hi`` again from ``carry`` with the diagnosing program and raise the guard's error.

    The error has ``params``, ``opt_state`` and ``state`` (the carry before the first non-finite step;
    with ``fit_many``, each model's before its own), ``step`` (0-based) and ``cause`` (one of
    ``loss``, ``gradient``, ``params``, ``opt_state``, ``state``).
    """
    diagnosing = plan._replace(diagnose=True, eval_every=None, metrics=())
    frozen, out = compiled_chunk(diagnosing, hi - lo, batched)(carry, hp, keys, block, (), lo)
    steps, causes, leaves = (np.asarray(a).reshape(-1) for a in out[-1])
    found = np.flatnonzero(steps >= 0)
    model = int(found[np.argmin(steps[found])]) if found.size else None
    who = f"model {model}: " if batched and model is not None else ""
    if model is None:
        message = (f"non-finite values in steps {lo}..{hi - 1} (0-based) that a second run of those steps did not "
                   f"reproduce; the returned params are those at step {lo}")
        step, cause_name, frozen = lo, "unknown", carry
    else:
        step, cause_name = int(steps[model]), CAUSES[int(causes[model])]
        message = (f"{who}{_cause(frozen, int(causes[model]), int(leaves[model]), batched)} at step {step} "
                   f"(0-based); the returned params are those before that step (nan_guard=True)")
    err = errors.BpjaxError("fit", message)
    err.params, err.opt_state, err.state = frozen  # type: ignore[attr-defined]  # the guard's report, on the error
    err.step, err.cause = step, cause_name  # type: ignore[attr-defined]
    raise err
