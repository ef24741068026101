"""Per-example gradients from the hand-written backward: ``g_i = dL(f(x_i), y_i)/dparams`` for every example ``i``.

Two forms:

- :func:`per_example_grads` works for any model: it runs the manual ``value_and_grad`` on each
  example as a batch of one, vectorised with ``jax.vmap`` (one compiled program, no Python loop).
- :func:`dense_per_example_grads` is the explicit Dense form ``dW_i = outer(a_prev_i, dz_i)``,
  ``db_i = dz_i``, from the batch forward's residual ``a_prev`` and the per-example ``dz``.

Caveats: an example's gradient is that of the model run on that example alone. Batch-norm in
training mode normalises a batch of one with its own statistics (variance 0), so its per-example
gradient is ill-defined: use eval mode (``train=False``) or LayerNorm. Stochastic layers draw from
the same ``key`` for every example. The loss is each example's own loss (a mean over a batch of one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bpjax import errors
from bpjax.core import Layer, check_model, forward_of
from bpjax.grad import check_inputs, gradients
from bpjax.losses import as_loss


def per_example_grads(model: Layer, loss):
    """The gradient of each example's loss, from the hand-written backward.

    Returns ``fn(params, x, y, *, state=None, key=None, train=True) -> (losses, grads)`` with
    ``x: (B, ...)``, ``y: (B, ...)``, ``losses: (B,)`` and ``grads`` the structure of ``params`` with a
    leading axis ``B`` on every leaf (``grads[...][i]`` is example ``i``'s gradient). State updates
    (batch-norm running statistics) are discarded. Their mean over ``i`` is the batch gradient of a
    mean loss (for models without batch statistics).

    Concrete inputs are checked at once, as by every function that takes data (a NaN in ``x``, or a
    target the loss refuses, raises a :class:`bpjax.BpjaxError`): inside the ``vmap`` the examples are
    traced, so the loss's own checks could only turn a bad example's results into NaN. Traced
    inputs (inside your ``jit``) get exactly that: NaN loss and gradients for the bad examples.

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Relu(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> losses, grads = bp.per_example_grads(model, bp.losses.softmax_cross_entropy)(params, x, y)
      >>> losses.shape, grads[0]["W"].shape                        # one gradient per example
      ((8,), (8, 3, 4))
    """
    check_model(model)
    loss = as_loss(loss)
    where = "per_example_grads"
    vg = gradients(model, loss)

    def fn(params, x, y, *, state=None, key=None, train=True):
        x, y, state = check_inputs(where, model, x, y, state, key)
        if jnp.ndim(x) < 1 or jnp.ndim(y) < 1 or jnp.shape(x)[0] != jnp.shape(y)[0]:
            raise errors.BpjaxError(where, f"expected x (B, ...) and y (B, ...) with the same "
                                           f"batch size, got x {jnp.shape(x)} and y {jnp.shape(y)}")
        if errors.is_concrete(y):  # the loss's whole-batch target check, on the model's output shape
            pred = jax.eval_shape(lambda p, xb: forward_of(model, p, xb, state=state, key=key, train=train)[0], params,
                                  x)
            with errors.context(f"{where}:"):
                loss.check_targets(y, pred.shape)

        def one(xi, yi):  # a batch of one: (1, ...)
            value, _, g = vg(params, xi[None], yi[None], state, key, train)
            return value, g

        return jax.vmap(one)(x, y)

    return fn


def dense_per_example_grads(a_prev: jax.Array, dz: jax.Array, *, bias: bool = True) -> dict:
    """Dense per-example gradients in closed form.

    In the forward pass this was ``z = a_prev @ W + b``; for example ``i`` alone::

        dW_i = a_prev_i.T @ dz_i     # outer product when a_prev_i: (D_in,), summed over inner axes
        db_i = dz_i.sum(inner axes)

    Args:
      a_prev: ``(B, ..., D_in)``, the layer input (its residual).
      dz: ``(B, ..., D_out)``, the gradient of *example i's own loss* at ``z``; for a batch-mean loss
        that is ``B`` times the batch cotangent.
      bias: also return ``db``.

    Returns:
      ``{"W": (B, D_in, D_out), "b": (B, D_out)}`` (``"b"`` only with ``bias``).

    Examples:
      >>> a_prev, dz = jnp.ones((5, 3)), jnp.ones((5, 4))          # a Dense(4) layer's input and dL/dz
      >>> grads = bp.per_example.dense_per_example_grads(a_prev, dz)
      >>> grads["W"].shape, grads["b"].shape
      ((5, 3, 4), (5, 4))
    """
    if jnp.shape(a_prev)[:-1] != jnp.shape(dz)[:-1]:
        raise errors.BpjaxError("dense_per_example_grads", f"a_prev (B, ..., D_in) and dz (B, ..., D_out) must "
                                                           f"share leading axes, got {jnp.shape(a_prev)} and "
                                                           f"{jnp.shape(dz)}")
    B = a_prev.shape[0]
    a3 = a_prev.reshape(B, -1, a_prev.shape[-1])   # (B, T, D_in)
    dz3 = dz.reshape(B, -1, dz.shape[-1])          # (B, T, D_out)
    grads = {"W": jnp.einsum("bti,bto->bio", a3, dz3)}
    if bias:
        grads["b"] = dz3.sum(1)
    return grads
