"""Second order through the hand-written backward: Hessian-vector products, Hessians, top eigenvalue.

A ``jax.custom_vjp`` function cannot be differentiated in forward mode (JAX issue 16049), so
``jax.jvp(jax.grad(f))`` fails on :func:`bpjax.as_custom_vjp`. bpjax's backward is plain JAX code,
so the manual gradient function ``g(params) = dL/dparams`` can itself be differentiated forward::

    H v = d/dt g(params + t v) |_{t=0} = jax.jvp(g, (params,), (v,))[1]

This equals the Hessian of the loss exactly when the rules are the exact gradient (for other
backward rules it is the Jacobian of the rule's update, generally not symmetric).
"""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp

from bpjax import errors
from bpjax.core import Layer, check_model
from bpjax.grad import check_inputs, gradients
from bpjax.losses import as_loss


def _grad_of_params(model, loss, x, y, state, key, train):
    """``g(params) = dL/dparams`` at the data (checked by the caller: :func:`bpjax.grad.check_inputs`)."""
    vg = gradients(model, loss)

    def g(params):
        return vg(params, x, y, state, key, train)[2]

    return g


def hvp(model: Layer, loss):
    """Hessian-vector products by forward-mode differentiation of the hand-written gradient.

    Returns ``fn(params, x, y, v, *, state=None, key=None, train=True) -> Hv`` where ``v`` and ``Hv``
    have the structure of ``params``. Costs about one forward plus two backward passes; jit-able.

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Tanh(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> v = jax.tree.map(jnp.ones_like, params)
      >>> Hv = bp.second_order.hvp(model, bp.losses.softmax_cross_entropy)(params, x, y, v)
      >>> jax.tree.map(jnp.shape, Hv) == jax.tree.map(jnp.shape, params)
      True
    """
    check_model(model)
    loss = as_loss(loss)

    def fn(params, x, y, v, *, state=None, key=None, train=True):
        errors.check_tree_like("hvp", v, params, "vector v")
        x, y, state = check_inputs("hvp", model, x, y, state, key)
        g = _grad_of_params(model, loss, x, y, state, key, train)
        return jax.jvp(g, (params,), (v,))[1]

    return fn


def hessian(model: Layer, loss):
    """The full Hessian ``d2L/dparams2`` as a ``(P, P)`` matrix over the flattened params (small models).

    Returns ``fn(params, x, y, *, state=None, key=None, train=True) -> (P, P)``, flattened in the order
    of ``jax.flatten_util.ravel_pytree(params)``; computed as ``jax.jacfwd`` of the manual gradient.

    Examples:
      >>> model = bp.serial(L.Dense(2), L.Tanh(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> H = bp.second_order.hessian(model, bp.losses.softmax_cross_entropy)(params, x, y)
      >>> H.shape, bool(jnp.allclose(H, H.T, atol=1e-5))          # P = 3*2 + 2 + 2*2 + 2 params
      ((14, 14), True)
    """
    check_model(model)
    loss = as_loss(loss)

    def fn(params, x, y, *, state=None, key=None, train=True):
        x, y, state = check_inputs("hessian", model, x, y, state, key)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        g = _grad_of_params(model, loss, x, y, state, key, train)
        return jax.jacfwd(lambda f: jax.flatten_util.ravel_pytree(g(unravel(f)))[0])(flat)

    return fn


def top_eigenvalue(model: Layer, loss, *, iters: int = 20):
    """The Hessian eigenvalue of largest magnitude, by power iteration on :func:`hvp`.

    ``v <- Hv / |Hv|`` for ``iters`` steps from a random unit ``v``; returns the Rayleigh quotient
    ``lambda = <v, Hv>`` (signed) and ``v``. Converges at the rate ``|lambda_2 / lambda_1|``.

    Returns ``fn(params, x, y, key, *, state=None, train=True) -> (lambda, v)``; jit-able (``iters`` static).

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Tanh(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> top = bp.second_order.top_eigenvalue(model, bp.losses.softmax_cross_entropy)
      >>> lam, v = top(params, x, y, key=jax.random.key(1))        # from a random unit v
      >>> lam.shape, jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, params)
      ((), True)
    """
    iters = errors.positive_int("top_eigenvalue", "iters", iters)
    check_model(model)
    loss = as_loss(loss)

    def fn(params, x, y, key, *, state=None, train=True):
        errors.check_key("top_eigenvalue", key, allow_none=False)
        x, y, state = check_inputs("top_eigenvalue", model, x, y, state, None)  # before the iteration is traced
        g = _grad_of_params(model, loss, x, y, state, None, train)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        v = jax.random.normal(key, flat.shape, flat.dtype)
        v = v / jnp.linalg.norm(v)

        def Hv(v):
            return jax.flatten_util.ravel_pytree(jax.jvp(g, (params,), (unravel(v),))[1])[0]

        def body(_, v):
            w = Hv(v)
            return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(w.dtype).tiny)

        v = jax.lax.fori_loop(0, iters, body, v)
        return jnp.vdot(v, Hv(v)), unravel(v)

    return fn
