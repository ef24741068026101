"""Dense (fully connected) layer: ``z = a_prev @ W + b``, with its hand-written backward."""

from __future__ import annotations

import jax.numpy as jnp

from bpjax import errors
from bpjax.core import Layer
from bpjax.initializers import Initializer, initializer, param_dtype
from bpjax.rules import rule_tag, with_backward_rule


def Dense(features: int, *, init: Initializer = "glorot_uniform", stddev: float = 1.0,
          bias: bool = True, dtype=None, name: str | None = None, backward_rule: str = "exact",
          feedback_init: Initializer | None = None) -> Layer:
    """Fully connected layer on the last axis.

    Forward: ``z = a_prev @ W + b`` with ``a_prev: (B, ..., D_in)``, ``W: (D_in, features)``,
    ``b: (features,)``, ``z: (B, ..., features)``.

    Backward (``dz`` is the cotangent of ``z``, leading axes flattened to ``N`` rows)::

        dW      = a_prev.T @ dz     # (D_in, features)
        db      = dz.sum(0)         # (features,)
        da_prev = dz @ W.T          # (B, ..., D_in)

    Args:
      features: output width.
      init: weight initialiser name (see :func:`bpjax.layers.initializer`) or callable; biases start at zero.
      stddev: standard deviation for ``init="normal"``.
      bias: whether to add ``b`` (params are ``{"W"}`` only when False).
      dtype: parameter dtype; default the canonical float (float32, or float64 with x64 on).
      name: display name (default ``Dense(features)``).
      backward_rule: how ``da_prev`` is computed; ``dW`` and ``db`` are always the exact ones above.

        - ``"exact"`` (default): ``da_prev = dz @ W.T``, the true gradient.
        - ``"feedback_alignment"`` (Lillicrap et al. 2016): ``da_prev = dz @ B.T`` with a fixed random
          ``B: (D_in, features)`` drawn at ``init_state`` (with ``feedback_init``, default ``init``).
          ``B`` is non-trained *state*, so the layer is contextual: ``state = {"B": B}``; the forward
          passes ``B`` to the backward in the residuals and returns the state unchanged.
        - ``"sign_symmetry"``: ``da_prev = dz @ B.T`` with ``B = mean(|W|) sign(W)``
          (:func:`bpjax.rules.sign_feedback`); no state.
      feedback_init: initialiser of ``B`` for ``"feedback_alignment"`` (default: ``init``).

    Examples:
      >>> layer = L.Dense(4)
      >>> out_shape, params = layer.init(jax.random.key(0), (3,))
      >>> y, residuals = layer.forward(params, jnp.ones((2, 3)))
      >>> out_shape, params["W"].shape, params["b"].shape, y.shape
      ((4,), (3, 4), (4,), (2, 4))
    """
    features = errors.positive_int("Dense", "features", features)
    name = name or f"Dense({features}{rule_tag('Dense', backward_rule)})"
    param_dtype(name, dtype)
    with errors.context(name):  # a bad init names the layer
        w_init = initializer(init, stddev)

    def init_fn(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape, key_needed=True)
        if len(input_shape) < 1:
            raise errors.BpjaxError(name, f"expected an input shape with a feature axis, got {tuple(input_shape)}")
        d_in, dt = int(input_shape[-1]), param_dtype(name, dtype)
        params = {"W": w_init(key, (d_in, features), dt)}
        if bias:
            params["b"] = jnp.zeros((features,), dt)
        return (*input_shape[:-1], features), params

    def forward(params, a_prev):                   # a_prev: (B, ..., D_in)
        _check(name, features, bias, params, a_prev)
        z = a_prev @ params["W"]                   # z = a_prev @ W + b: (B, ..., features)
        if bias:
            z = z + params["b"]
        return z, a_prev                           # the backward needs only a_prev

    def backward_with(W, a_prev, dz):              # dz = dL/dz: (B, ..., features)
        # in the forward pass this was: z = a_prev @ W + b
        a2 = a_prev.reshape(-1, a_prev.shape[-1])  # (N, D_in): the leading axes as rows
        dz2 = dz.reshape(-1, dz.shape[-1])         # (N, features)
        grads = {"W": a2.T @ dz2}                  # dW = a_prev.T @ dz: (D_in, features)
        if bias:
            grads["b"] = dz2.sum(0)                # db = dz.sum(0): (features,)
        da_prev = dz @ W.T                         # da_prev = dz @ W.T: (B, ..., D_in)
        return grads, da_prev

    # backward_with gets params["W"] for the exact gradient; a backward rule hands it a feedback
    # matrix in W's place, which changes da_prev only (bpjax.rules.with_backward_rule)
    feedback = feedback_init if feedback_init is not None else init
    return with_backward_rule(name, backward_rule, init_fn, forward, backward_with, feedback, stddev)


def _check(name: str, features: int, bias: bool, params, x) -> None:
    """Validate ``params = {"W": (D_in, features), "b": (features,)}`` and ``x: (B, ..., D_in)``."""
    keys = ["W", "b"] if bias else ["W"]
    if not isinstance(params, dict) or set(params) != set(keys):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise errors.BpjaxError(name, f"params do not match the layer: expected keys {keys}, got {got}")
    errors.check_floating(name, x)
    errors.check_ndim(name, x, tuple(range(2, 8)))
    W = params["W"]
    errors.check_floating(name, W, "weight W")
    errors.check_input_dtype(name, x, W)
    if W.ndim != 2 or W.shape[1] != features or (bias and params["b"].shape != (features,)):
        raise errors.BpjaxError(name, f"params do not match the layer: expected W (D_in, {features}) "
                                      f"and b ({features},), got W {tuple(W.shape)}"
                                      + (f" and b {tuple(params['b'].shape)}" if bias else ""))
    if x.shape[-1] != W.shape[0]:
        raise errors.BpjaxError(name, f"expected input with {W.shape[0]} features on the last axis "
                                      f"(shape (B, ..., {W.shape[0]})), got shape {tuple(x.shape)}")


__all__ = ["Dense"]
