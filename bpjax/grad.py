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

The public functions check their arguments once (:func:`check_backward`, :func:`check_inputs`,
:func:`bpjax.losses.as_loss`); :func:`gradients` beneath them trusts its caller.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from bpjax import errors
from bpjax.core import Layer, backward_of, check_model, check_state, forward_of, is_contextual
from bpjax.losses import Loss, as_loss

BACKWARDS = ("manual", "autodiff")
"""The ``backward=`` choices of :func:`bpjax.value_and_grad` and :func:`bpjax.train.make_step`, the
hand-written backward (``"manual"``) or ``jax.grad``'s (``"autodiff"``)."""


def check_backward(where: str, backward: str) -> str:
    """``backward`` when it is one of :data:`BACKWARDS`; a :class:`bpjax.BpjaxError` naming ``where`` otherwise."""
    if backward not in BACKWARDS:
        raise errors.BpjaxError(where, f"backward must be one of {BACKWARDS}, got {backward!r}")
    return backward


def check_inputs(where: str, model: Layer, x, y, state, key):
    """The argument checks of every public function that takes data, in one place: ``(x, y, state)``.

    ``x`` and ``y`` as arrays (:func:`bpjax.errors.as_array`; ``y=None`` for none), ``key`` a PRNG key
    or ``None`` (:func:`bpjax.errors.check_key`), a concrete ``x`` finite
    (:func:`bpjax.errors.check_finite`), ``state`` given for a contextual model
    (:func:`bpjax.core.check_state`; ``()`` for a simple one). Targets are the loss's to check (it
    raises at once on concrete ones).
    """
    errors.check_key(where, key)
    x = errors.as_array(where, "input x", x)
    y = y if y is None else errors.as_array(where, "target y", y)
    errors.check_finite(where, "input x", x)
    return x, y, check_state(where, model, state)


def gradients(model: Layer, loss: Loss, *, backward: str = "manual", wrt_input: bool = False):
    """The one gradient path: ``fn(params, x, y, state, key, train) -> (value, new_state, grads)``.

    ``grads`` has the structure of ``params`` (``(dparams, dx)`` with ``wrt_input=True``);
    ``new_state`` is ``()`` for a simple model. The caller has checked its arguments: ``model`` a
    layer, ``loss`` a :class:`~bpjax.losses.Loss`, ``backward`` one of :data:`BACKWARDS`, and the
    data, ``state`` (``()`` for a simple model) and ``key`` (:func:`check_inputs`). Traced data
    (inside ``jit``, ``vmap``, ``lax.scan``) are checked by the loss's traced value checks
    (``checkify`` or NaN), at no cost per step.

    Args:
      model, loss: what to differentiate: ``value = loss(model(params, x), y)``.
      backward: ``"manual"`` (the hand-written backward) or ``"autodiff"`` (``jax.grad``).
      wrt_input: also return the gradient with respect to ``x``.
    """
    if backward == "manual":
        def manual(params, x, y, state, key, train):
            pred, residuals, new_state = forward_of(model, params, x, state=state, key=key, train=train)
            value, dpred = loss.value_and_grad(pred, y)
            dparams, dx = backward_of(model, params, residuals, dpred, x)  # the layer contract, checked in tracing
            return value, new_state, ((dparams, dx) if wrt_input else dparams)

        return manual

    def objective(params, x, y, state, key, train):
        pred, _, new_state = forward_of(model, params, x, state=state, key=key, train=train)
        return loss.value(pred, y), new_state

    grad_fn = jax.value_and_grad(objective, argnums=(0, 1) if wrt_input else 0, has_aux=True, allow_int=True)

    def autodiff(params, x, y, state, key, train):
        (value, new_state), grads = grad_fn(params, x, y, state, key, train)
        return value, new_state, grads

    return autodiff


def _public(where: str, model: Layer, loss, backward: str, wrt_input: bool):
    """``jax.value_and_grad``'s convention: ``(value, grads)``, or ``((value, new_state), grads)`` when the
    model has state (``has_aux``); the arguments checked once, here and at each call."""
    check_model(model)
    fn = gradients(model, as_loss(loss), backward=check_backward(where, backward), wrt_input=wrt_input)
    contextual = is_contextual(model)

    def public(params, x, y, *, state=None, key=None, train=True):
        x, y, state = check_inputs(where, model, x, y, state, key)
        value, new_state, grads = fn(params, x, y, state, key, train)
        if not all(map(errors.is_concrete, jax.tree.leaves(x))):  # traced (a user's jit): a NaN input poisons
            ok = errors.check_value(where, jnp.all(errors.finite_leaves(x)), "input x contains NaN or Inf")
            value = errors.poison(value, ok)  # and every gradient, as a bad target does (bpjax.losses)
            grads = jax.tree.map(lambda g: errors.poison(g, ok) if jnp.issubdtype(g.dtype, jnp.inexact) else g, grads)
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
    ``(dparams, dx)``. Concrete data are checked at once (:func:`check_inputs`).

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Relu(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1])
      >>> value, grads = bp.value_and_grad(model, bp.losses.softmax_cross_entropy)(params, x, y)
      >>> value.shape, grads[0]["W"].shape, grads[2]["b"].shape
      ((), (3, 4), (2,))
    """
    return _public("value_and_grad", model, loss, backward, wrt_input)


def autodiff_value_and_grad(model: Layer, loss, *, wrt_input: bool = False):
    """The reference: ``jax.value_and_grad`` of the same forward and loss value (same signature as
    :func:`value_and_grad`). The forward is bpjax's, so only the backward differs.

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Tanh(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.linspace(-1, 1, 15).reshape(5, 3), jnp.array([0, 1, 0, 1, 1])
      >>> _, manual = bp.value_and_grad(model, bp.losses.softmax_cross_entropy)(params, x, y)
      >>> _, reference = bp.autodiff_value_and_grad(model, bp.losses.softmax_cross_entropy)(params, x, y)
      >>> bool(jnp.allclose(manual[0]["W"], reference[0]["W"], atol=1e-6))
      True
    """
    return _public("autodiff_value_and_grad", model, loss, "autodiff", wrt_input)


def as_custom_vjp(model: Layer, *, train: bool = True):
    """``model``'s forward as a ``jax.custom_vjp`` function whose backward is the hand-written one.

    ``jax.grad`` of any user function of its output then runs bpjax's backward. Simple models give
    ``f(params, x) -> y``; contextual ones ``f(params, x, state, key=None) -> (y, new_state)``
    (``state`` and ``key`` get no gradient; ``train`` is fixed here). Works under ``jit`` and
    ``vmap`` (reverse mode only: JAX does not run forward mode through a custom VJP). A concrete
    ``x`` is checked at once (:func:`check_inputs`).

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Relu(), L.Dense(1))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> f = bp.as_custom_vjp(model)                       # f(params, x) -> y
      >>> grads = jax.grad(lambda p: f(p, jnp.ones((2, 3))).sum())(params)   # runs the hand-written backward
      >>> grads[0]["W"].shape
      (3, 4)
    """
    check_model(model)

    @jax.custom_vjp
    def g(params, x, state, key=None):
        return forward_of(model, params, x, state=state, key=key, train=train)[::2]

    def g_fwd(params, x, state, key=None):
        y, residuals, new_state = forward_of(model, params, x, state=state, key=key, train=train)
        return (y, new_state), (params, residuals)

    def g_bwd(saved, cotangents):
        params, residuals = saved
        dy, _ = cotangents  # the state output is not differentiated
        dparams, dx = backward_of(model, params, residuals, dy)
        return dparams, dx, None, None

    g.defvjp(g_fwd, g_bwd)

    def contextual(params, x, state, key=None):
        x, _, state = check_inputs("as_custom_vjp", model, x, None, state, key)
        return g(params, x, state, key)

    if is_contextual(model):
        return contextual

    def f(params, x):
        return contextual(params, x, ())[0]

    return f


def predict(model: Layer, params, x, *, state=None, key: Optional[jax.Array] = None, train: bool = False):
    """The model's output (eval mode by default): ``y = model(params, x)``.

    Examples:
      >>> model = bp.serial(L.Dense(4), L.BatchNorm(), L.Relu(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> state = bp.init_state(model, jax.random.key(0), (3,))
      >>> bp.predict(model, params, jnp.ones((5, 3)), state=state).shape   # eval mode: running statistics
      (5, 2)
    """
    check_model(model)
    x, _, state = check_inputs("predict", model, x, None, state, key)
    return forward_of(model, params, x, state=state, key=key, train=train)[0]
