"""Training: one jit-compiled step ``params -= optimizer(grads)`` with any optax transformation, and ``fit``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bpjax import _errors
from bpjax.core import Layer, is_contextual
from bpjax.grad import _check_model, autodiff_value_and_grad, value_and_grad
from bpjax.losses import as_loss

BACKWARDS = ("manual", "autodiff")


def grad_fn(model: Layer, loss, backward: str = "manual"):
    """``value_and_grad`` (``"manual"``, hand-written) or ``autodiff_value_and_grad`` (``"autodiff"``)."""
    if backward not in BACKWARDS:
        raise _errors.BpjaxError("backward", f"expected one of {BACKWARDS}, got {backward!r}")
    return (value_and_grad if backward == "manual" else autodiff_value_and_grad)(model, loss)


def _check_optimizer(optimizer):
    if not isinstance(optimizer, optax.GradientTransformation):
        raise _errors.BpjaxTypeError("optimizer", f"expected an optax GradientTransformation (e.g. "
                                                  f"optax.adam(1e-3)), got {type(optimizer).__name__}")


def make_step(model: Layer, loss, optimizer: optax.GradientTransformation, *, backward: str = "manual",
              checks: bool = True, jit: bool = True, donate: bool = False):
    """A training step for any optax optimiser (SGD, momentum, Nesterov, RMSProp, Adam, AdamW, schedules, clipping).

    ``step(params, opt_state, x, y) -> (params, opt_state, loss)`` for a simple model;
    ``step(params, opt_state, x, y, *, state, key) -> (params, opt_state, loss, new_state)`` for a
    contextual one (batch-norm statistics, dropout keys). One step computes the gradients with the
    chosen ``backward`` and applies ``updates, opt_state = optimizer.update(grads, opt_state, params)``,
    ``params = optax.apply_updates(params, updates)``.

    Args:
      model, loss: what to train.
      optimizer: an optax ``GradientTransformation``; ``opt_state = optimizer.init(params)``.
      backward: ``"manual"`` (hand-written) or ``"autodiff"`` (``jax.grad``, the reference).
      checks: verify values inside the compiled step (labels in range, finite inputs) with
        ``checkify``, raising a clear error after the step; costs one small device-to-host read per
        step. With ``checks=False`` a bad label turns the loss into NaN instead.
      jit: compile the step (default). ``jit=False`` returns the raw function, e.g. to put inside a
        ``lax.scan`` of your own.
      donate: let the compiled step write the new ``params`` and ``opt_state`` into the buffers of the
        ones passed in (``jax.jit(..., donate_argnums=(0, 1))``): no fresh allocation per step (about 5%
        faster on the 784-1024-1024-1024-10 MLP), but the arrays passed in are deleted by the call, so
        always continue from the returned ones.
    """
    _check_model(model)
    loss = as_loss(loss)
    _check_optimizer(optimizer)
    vg = grad_fn(model, loss, backward)
    contextual = is_contextual(model)

    def step(params, opt_state, x, y, state=None, key=None):
        if checks:
            _errors.check_value(model.name, jnp.all(jnp.isfinite(x)), "input x contains NaN or Inf")
        if contextual:
            (value, new_state), grads = vg(params, x, y, state=state, key=key, train=True)
        else:
            value, grads = vg(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, value, new_state) if contextual else (params, opt_state, value)

    if not jit:
        return step
    donated = (0, 1) if donate else ()
    inner = jax.jit(_errors.checked(step) if checks else step, donate_argnums=donated)

    def compiled(*args):
        if not checks:
            return inner(*args)
        err, out = inner(*args)
        _errors.throw(err)
        return out

    def run_contextual(params, opt_state, x, y, *, state, key=None):
        return compiled(params, opt_state, x, y, state, key)

    def run(params, opt_state, x, y):
        return compiled(params, opt_state, x, y)

    chosen = run_contextual if contextual else run
    chosen.__doc__ = step.__doc__
    return chosen


# Whole runs in one compiled program (imported last: bpjax.fit builds on grad_fn above).
from bpjax.fit import (  # noqa: E402
    FitResult,
    data_parallel_mesh,
    fit,
    fit_many,
    init_many,
    replicate,
    shard_batch,
)

__all__ = ["BACKWARDS", "FitResult", "data_parallel_mesh", "fit", "fit_many", "grad_fn", "init_many",
           "make_step", "replicate", "shard_batch"]
