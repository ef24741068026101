"""Eager validation of a training run's inputs, on concrete values, before anything is compiled.

Every error names the function (``fit``/``fit_many``) and the dataset at fault (``train_data`` or
``eval_data``), with the expected and the received.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bpjax import _errors
from bpjax.losses import accuracy


def check_data(where: str, data, what: str):
    """``data = (x, y)``: arrays sharing a non-empty leading axis; ``x`` real floating point or integer
    (token ids, for a model that starts with an ``Embedding``); floating ``x`` and ``y`` finite.

    Returns ``(x, y)`` as JAX arrays.
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise _errors.BpjaxTypeError(where, f"{what} must be a pair (x, y) of arrays, got {type(data).__name__}")
    x, y = (as_array(where, f"{what} {name}", a) for name, a in zip("xy", data))
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise _errors.BpjaxTypeError(where, f"{what} x must be real floating point (or integer ids for a model "
                                            f"that starts with an Embedding), got dtype {x.dtype}")
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise _errors.BpjaxError(where, f"{what}: x and y must share a non-empty leading (example) axis, got "
                                        f"x {tuple(x.shape)} and y {tuple(y.shape)}")
    for name, a in (("x", x), ("y", y)):
        if jnp.issubdtype(a.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(a))):
            bad = int(np.argwhere(~np.isfinite(np.asarray(a)))[0][0])
            raise _errors.BpjaxError(where, f"{what} {name} contains NaN or Inf (first at example {bad})")
    return x, y


def as_array(where: str, what: str, a):
    """``a`` as a JAX array (numpy arrays and nested lists of numbers too), or a clear error."""
    try:
        return jnp.asarray(a)
    except (TypeError, ValueError) as e:
        raise _errors.BpjaxTypeError(where, f"{what} must be an array (or a nested list of numbers), got "
                                            f"{type(a).__name__}: {e}") from None


def check_targets(where: str, what: str, loss, y, pred_shape) -> None:
    """The loss's own target check (labels in range, probabilities in [0, 1], ...) on a whole dataset.

    ``pred_shape`` is the model's output shape for a batch; errors are prefixed with the dataset.
    """
    check = getattr(loss, "check_targets", None)
    with _errors.context(f"{where} {what}:"):
        if check is not None:
            check(y, pred_shape)
        elif jnp.issubdtype(y.dtype, jnp.integer) and len(pred_shape) == 2:  # integer class labels in [0, C)
            C = pred_shape[-1]
            lo, hi = int(jnp.min(y)), int(jnp.max(y))
            if lo < 0 or hi >= C:
                raise _errors.BpjaxError(loss.name, f"labels must lie in [0, {C}) for a model with {C} outputs, "
                                                    f"got min {lo} and max {hi}")


def resolve_metrics(where: str, metrics, y) -> dict:
    """``name -> fn(pred, y)`` (``None`` for the loss); default loss and, for integer labels, accuracy."""
    if metrics is None:
        metrics = ("loss", "accuracy") if jnp.issubdtype(y.dtype, jnp.integer) else ("loss",)
    if isinstance(metrics, dict):
        return dict(metrics)
    if isinstance(metrics, str):
        metrics = (metrics,)
    known = {"accuracy": accuracy}
    out = {}
    for m in metrics:
        if m == "loss":
            out["loss"] = None  # filled in with the training loss
        elif m in known:
            out[m] = known[m]
        else:
            raise _errors.BpjaxError(where, f"unknown metric {m!r}: expected 'loss', 'accuracy' or a dict "
                                            f"name -> fn(pred, y)")
    return out
