"""Whole-model gradients: the hand-written backward, the ``jax.grad`` reference, and a custom VJP."""

from __future__ import annotations

from typing import Optional

import jax

from bpjax import _errors
from bpjax.core import Layer, apply, is_contextual
from bpjax.losses import as_loss


def _check_model(model) -> None:
    if not isinstance(model, Layer):
        raise _errors.BpjaxTypeError("model", f"expected a bpjax Layer (e.g. bp.serial(...)), "
                                              f"got {type(model).__name__}")


def _context(model, state, key, train):
    if is_contextual(model) and state is None:
        raise _errors.BpjaxError(model.name, "this model keeps state or draws random numbers: pass "
                                             "state=bp.init_state(model, key, input_shape) and key=...")
    return () if state is None else state


def value_and_grad(model: Layer, loss, *, wrt_input: bool = False):
    """The hand-written gradient of ``loss(model(params, x), y)``.

    Runs ``model.forward``, the loss's own ``value_and_grad`` (``dpred``) and ``model.backward``:
    no ``jax.grad`` anywhere.

    Returns ``fn(params, x, y) -> (value, grads)`` for a simple model, where ``grads`` has the
    structure of ``params``. For a contextual model (with state or randomness) it is
    ``fn(params, x, y, *, state, key=None, train=True) -> ((value, new_state), grads)``, the
    ``has_aux`` convention of ``jax.value_and_grad``. With ``wrt_input=True``, ``grads`` is
    ``(dparams, dx)``.
    """
    _check_model(model)
    loss = as_loss(loss)

    def fn(params, x, y, *, state=None, key=None, train=True):
        state = _context(model, state, key, train)
        pred, residuals, new_state = apply(model, params, x, state=state, key=key, train=train)
        value, dpred = loss.value_and_grad(pred, y)
        dparams, dx = model.backward(params, residuals, dpred)
        grads = (dparams, dx) if wrt_input else dparams
        return ((value, new_state), grads) if is_contextual(model) else (value, grads)

    return fn


def autodiff_value_and_grad(model: Layer, loss, *, wrt_input: bool = False):
    """The reference: ``jax.value_and_grad`` of the same forward and loss value (same signature as
    :func:`value_and_grad`). The forward is bpjax's, so only the backward differs."""
    _check_model(model)
    loss = as_loss(loss)

    def objective(params, x, y, state, key, train):
        pred, _, new_state = apply(model, params, x, state=state, key=key, train=train)
        return loss.value(pred, y), new_state

    grad_fn = jax.value_and_grad(objective, argnums=(0, 1) if wrt_input else 0, has_aux=True,
                                 allow_int=True)

    def fn(params, x, y, *, state=None, key=None, train=True):
        state = _context(model, state, key, train)
        (value, new_state), grads = grad_fn(params, x, y, state, key, train)
        return ((value, new_state), grads) if is_contextual(model) else (value, grads)

    return fn


def as_custom_vjp(model: Layer, *, train: bool = True):
    """``model``'s forward as a ``jax.custom_vjp`` function whose backward is the hand-written one.

    ``jax.grad`` of any user function of its output then runs bpjax's backward. Simple models give
    ``f(params, x) -> y``; contextual ones ``f(params, x, state, key=None) -> (y, new_state)``
    (``state`` and ``key`` get no gradient; ``train`` is fixed here). Works under ``jit`` and
    ``vmap`` (reverse mode only: JAX does not run forward mode through a custom VJP).
    """
    _check_model(model)

    if not is_contextual(model):
        @jax.custom_vjp
        def f(params, x):
            return model.forward(params, x)[0]

        def f_fwd(params, x):
            y, residuals = model.forward(params, x)
            return y, (params, residuals)

        def f_bwd(saved, dy):
            params, residuals = saved
            return model.backward(params, residuals, dy)

        f.defvjp(f_fwd, f_bwd)
        return f

    @jax.custom_vjp
    def g(params, x, state, key=None):
        y, _, new_state = model.forward(params, x, state=state, key=key, train=train)
        return y, new_state

    def g_fwd(params, x, state, key=None):
        y, residuals, new_state = model.forward(params, x, state=state, key=key, train=train)
        return (y, new_state), (params, residuals)

    def g_bwd(saved, cotangents):
        params, residuals = saved
        dy, _ = cotangents  # the state output is not differentiated
        dparams, dx = model.backward(params, residuals, dy)
        return dparams, dx, None, None

    g.defvjp(g_fwd, g_bwd)
    return g


def predict(model: Layer, params, x, *, state=None, key: Optional[jax.Array] = None, train: bool = False):
    """The model's output (eval mode by default): ``y = model(params, x)``."""
    _check_model(model)
    state = _context(model, state, key, train)
    return apply(model, params, x, state=state, key=key, train=train)[0]
