"""Whole-model gradients: one gradient path (:func:`gradients`), its public forms, and a custom VJP.

:func:`gradients` is the only place where a model's gradient is made. Every caller (the public
:func:`value_and_grad` and :func:`autodiff_value_and_grad`, ``make_step``, ``fit``, per-example
gradients, second order, diagnostics, the backward rules, the gradient checker) calls it and gets
the same triple for every model, simple or contextual::

    fn(params, x, y, state=(), key=None, train=True) -> (value, new_state, grads)

``backward="manual"`` runs ``model.forward``, the loss's own ``value_and_grad`` (``dpred``) and
``model.backward`` (no ``jax.grad`` anywhere), with the layer contract checked
(:mod:`bpjax.contract`); ``backward="autodiff"`` is ``jax.value_and_grad`` of the same forward and
loss value, the reference.
"""

from __future__ import annotations

from typing import Optional

import jax

from bpjax import errors
from bpjax.core import Layer, apply, check_model, is_contextual, vjp
from bpjax.losses import as_loss

BACKWARDS = ("manual", "autodiff")


def check_inputs(where: str, x, y, key=None):
    """The eager argument checks of every public function that takes data, in one place.

    ``x`` and ``y`` as arrays (:func:`bpjax.errors.as_array`), ``key`` a PRNG key or ``None``
    (:func:`bpjax.errors.check_key`), a concrete ``x`` finite (:func:`bpjax.errors.check_finite`). Targets are the
    loss's to check (it raises at once on concrete ones). Returns ``(x, y)``.
    """
    errors.check_key(where, key)
    x = errors.as_array(where, "input x", x)
    y = y if y is None else errors.as_array(where, "target y", y)
    errors.check_finite(where, "input x", x)
    return x, y


def _state(model: Layer, state, where: str):
    if state is None:
        if is_contextual(model):
            raise errors.BpjaxError(where, f"{model.name} keeps state or draws random numbers: pass "
                                            f"state=bp.init_state(model, key, input_shape) (and key=...)")
        return ()
    return state


def gradients(model: Layer, loss, *, backward: str = "manual", wrt_input: bool = False,
              where: Optional[str] = None):
    """The one gradient path: ``fn(params, x, y, state=None, key=None, train=True) -> (value, new_state, grads)``.

    ``grads`` has the structure of ``params`` (``(dparams, dx)`` with ``wrt_input=True``);
    ``new_state`` is ``()`` for a simple model. A contextual model needs ``state``.

    Every call runs :func:`check_inputs` first, so every caller gets the same rule: concrete data are
    checked at once (a NaN input raises); traced data (inside ``jit``, ``vmap``, ``lax.scan``) are
    checked by the loss's traced value checks (``checkify`` or NaN), at no cost per step.

    Args:
      model, loss: what to differentiate: ``value = loss(model(params, x), y)``.
      backward: ``"manual"`` (the hand-written backward) or ``"autodiff"`` (``jax.grad``).
      wrt_input: also return the gradient with respect to ``x``.
      where: the public function named in errors (default: the model's name).
    """
    check_model(model)
    loss = as_loss(loss)
    if backward not in BACKWARDS:
        raise errors.BpjaxError("backward", f"expected one of {BACKWARDS}, got {backward!r}")
    where = model.name if where is None else where

    if backward == "manual":
        def manual(params, x, y, state=None, key=None, train=True):
            x, y = check_inputs(where, x, y, key)
            state = _state(model, state, model.name)
            pred, residuals, new_state = apply(model, params, x, state=state, key=key, train=train)
            value, dpred = loss.value_and_grad(pred, y)
            dparams, dx = vjp(model, params, residuals, dpred, x)  # the layer contract, checked while tracing
            return value, new_state, ((dparams, dx) if wrt_input else dparams)

        return manual

    def objective(params, x, y, state, key, train):
        pred, _, new_state = apply(model, params, x, state=state, key=key, train=train)
        return loss.value(pred, y), new_state

    grad_fn = jax.value_and_grad(objective, argnums=(0, 1) if wrt_input else 0, has_aux=True, allow_int=True)

    def autodiff(params, x, y, state=None, key=None, train=True):
        x, y = check_inputs(where, x, y, key)
        (value, new_state), grads = grad_fn(params, x, y, _state(model, state, model.name), key, train)
        return value, new_state, grads

    return autodiff


def _public(model: Layer, fn):
    """``jax.value_and_grad``'s convention: ``(value, grads)``, or ``((value, new_state), grads)`` when the
    model has state (``has_aux``)."""
    contextual = is_contextual(model)

    def public(params, x, y, *, state=None, key=None, train=True):
        value, new_state, grads = fn(params, x, y, state, key, train)
        return ((value, new_state), grads) if contextual else (value, grads)

    return public


def value_and_grad(model: Layer, loss, *, backward: str = "manual", wrt_input: bool = False):
    """The hand-written gradient of ``loss(model(params, x), y)`` (``backward="autodiff"``: the ``jax.grad`` reference).

    Runs ``model.forward``, the loss's own ``value_and_grad`` (``dpred``) and ``model.backward``:
    no ``jax.grad`` anywhere.

    Returns ``fn(params, x, y) -> (value, grads)`` for a simple model, where ``grads`` has the
    structure of ``params``. For a contextual model (with state or randomness) it is
    ``fn(params, x, y, *, state, key=None, train=True) -> ((value, new_state), grads)``, the
    ``has_aux`` convention of ``jax.value_and_grad``. With ``wrt_input=True``, ``grads`` is
    ``(dparams, dx)``.
    """
    return _public(model, gradients(model, loss, backward=backward, wrt_input=wrt_input, where="value_and_grad"))


def autodiff_value_and_grad(model: Layer, loss, *, wrt_input: bool = False):
    """The reference: ``jax.value_and_grad`` of the same forward and loss value (same signature as
    :func:`value_and_grad`). The forward is bpjax's, so only the backward differs."""
    return _public(model, gradients(model, loss, backward="autodiff", wrt_input=wrt_input,
                                    where="autodiff_value_and_grad"))


def as_custom_vjp(model: Layer, *, train: bool = True):
    """``model``'s forward as a ``jax.custom_vjp`` function whose backward is the hand-written one.

    ``jax.grad`` of any user function of its output then runs bpjax's backward. Simple models give
    ``f(params, x) -> y``; contextual ones ``f(params, x, state, key=None) -> (y, new_state)``
    (``state`` and ``key`` get no gradient; ``train`` is fixed here). Works under ``jit`` and
    ``vmap`` (reverse mode only: JAX does not run forward mode through a custom VJP). A concrete
    ``x`` is checked at once (:func:`check_inputs`).
    """
    check_model(model)

    @jax.custom_vjp
    def g(params, x, state, key=None):
        return apply(model, params, x, state=state, key=key, train=train)[::2]

    def g_fwd(params, x, state, key=None):
        y, residuals, new_state = apply(model, params, x, state=state, key=key, train=train)
        return (y, new_state), (params, residuals)

    def g_bwd(saved, cotangents):
        params, residuals = saved
        dy, _ = cotangents  # the state output is not differentiated
        dparams, dx = vjp(model, params, residuals, dy)
        return dparams, dx, None, None

    g.defvjp(g_fwd, g_bwd)

    def contextual(params, x, state, key=None):
        x, _ = check_inputs("as_custom_vjp", x, None, key)
        return g(params, x, state, key)

    if is_contextual(model):
        return contextual

    def f(params, x):
        return contextual(params, x, ())[0]

    return f


def predict(model: Layer, params, x, *, state=None, key: Optional[jax.Array] = None, train: bool = False):
    """The model's output (eval mode by default): ``y = model(params, x)``."""
    check_model(model)
    x, _ = check_inputs("predict", x, None, key)
    return apply(model, params, x, state=_state(model, state, model.name), key=key, train=train)[0]
