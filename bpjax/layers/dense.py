"""Dense (fully connected) layer: ``z = a_prev @ W + b``, with its hand-written backward."""

from __future__ import annotations

import math
from typing import Callable, Union

import jax
import jax.numpy as jnp

from bpjax import _errors
from bpjax.core import Layer

# name -> (distribution, fan mode, variance scale); Var[W] = scale / fan
_INITS = {
    "glorot_uniform": ("uniform", "fan_avg", 1.0),
    "glorot_normal": ("normal", "fan_avg", 1.0),
    "he_uniform": ("uniform", "fan_in", 2.0),
    "he_normal": ("normal", "fan_in", 2.0),
    "lecun_uniform": ("uniform", "fan_in", 1.0),
    "lecun_normal": ("normal", "fan_in", 1.0),
}
Initializer = Union[str, Callable[[jax.Array, tuple, jnp.dtype], jax.Array]]


def initializer(init: Initializer, stddev: float = 1.0):
    """A weight initialiser ``(key, shape, dtype) -> array`` from a name or a callable.

    Names: ``glorot_uniform`` (default of ``Dense``), ``glorot_normal``, ``he_uniform``,
    ``he_normal``, ``lecun_uniform``, ``lecun_normal``, and ``normal`` (``N(0, stddev^2)``, the
    "naive" initialisation of the vanishing-gradient experiments). Normal variants are untruncated.
    """
    if callable(init):
        return init
    if init == "normal":
        return lambda key, shape, dtype: stddev * jax.random.normal(key, shape, dtype)
    if init not in _INITS:
        raise _errors.BpjaxError("initializer", f"unknown init {init!r}; expected one of "
                                                f"{sorted([*_INITS, 'normal'])} or a callable")
    distribution, mode, scale = _INITS[init]

    def fn(key, shape, dtype):
        fan_in = math.prod(shape[:-1])  # W: (..., fan_in, fan_out); conv kernels fold the window in
        fan_out = shape[-1] * math.prod(shape[:-2])
        fan = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[mode]
        std = math.sqrt(scale / fan)
        if distribution == "uniform":
            limit = math.sqrt(3.0) * std
            return jax.random.uniform(key, shape, dtype, -limit, limit)
        return std * jax.random.normal(key, shape, dtype)

    return fn


BACKWARD_RULES = ("exact", "feedback_alignment", "sign_symmetry")


def sign_feedback(W: jax.Array) -> jax.Array:
    """The sign-symmetry feedback matrix ``B = mean(|W|) * sign(W)``, shape of ``W``.

    ``sign(W)`` scaled by one number: the closest matrix to ``W`` (in Frobenius norm) with ``W``'s
    sign pattern and a single magnitude, so the backward signal keeps the size of the exact one.
    The scale does not change any angle (Liao, Leibo and Poggio 2016, "uniform sign-concordant").
    """
    return jnp.mean(jnp.abs(W)) * jnp.sign(W)


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
      init: weight initialiser name (see :func:`initializer`) or callable; biases start at zero.
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
          (:func:`sign_feedback`); no state.
      feedback_init: initialiser of ``B`` for ``"feedback_alignment"`` (default: ``init``).
    """
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise _errors.BpjaxError("Dense", f"features must be a positive int, got {features!r}")
    tag = rule_tag("Dense", backward_rule)
    name = name or f"Dense({features}{tag})"
    w_init = initializer(init, stddev)

    def init_fn(key, input_shape):
        if len(input_shape) < 1:
            raise _errors.BpjaxError(name, f"expected an input shape with a feature axis, got {tuple(input_shape)}")
        d_in = int(input_shape[-1])
        dt = dtype or jnp.zeros(()).dtype
        params = {"W": w_init(key, (d_in, features), dt)}
        if bias:
            params["b"] = jnp.zeros((features,), dt)
        return (*input_shape[:-1], features), params

    def check(params, x):
        if not isinstance(params, dict) or set(params) != ({"W", "b"} if bias else {"W"}):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise _errors.BpjaxError(name, f"params do not match the layer: expected keys "
                                           f"{['W', 'b'] if bias else ['W']}, got {got}")
        _errors.check_floating(name, x)
        _errors.check_ndim(name, x, tuple(range(2, 8)))
        W = params["W"]
        _errors.check_floating(name, W, "weight W")
        if W.ndim != 2 or W.shape[1] != features or (bias and params["b"].shape != (features,)):
            raise _errors.BpjaxError(name, f"params do not match the layer: expected W (D_in, {features}) "
                                           f"and b ({features},), got W {tuple(W.shape)}"
                                           + (f" and b {tuple(params['b'].shape)}" if bias else ""))
        if x.shape[-1] != W.shape[0]:
            raise _errors.BpjaxError(name, f"expected input with {W.shape[0]} features on the last axis "
                                           f"(shape (B, ..., {W.shape[0]})), got shape {tuple(x.shape)}")

    def forward(params, x):
        check(params, x)
        z = x @ params["W"]
        if bias:
            z = z + params["b"]
        return z, x  # the backward needs only a_prev

    def backward_with(B, a_prev, dz):
        # in the forward pass this was: z = a_prev @ W + b
        a2 = a_prev.reshape(-1, a_prev.shape[-1])  # (N, D_in)
        dz2 = dz.reshape(-1, dz.shape[-1])         # (N, features)
        grads = {"W": a2.T @ dz2}                  # dW = a_prev.T @ dz
        if bias:
            grads["b"] = dz2.sum(0)                # db = sum over rows of dz
        da_prev = dz @ B.T                         # da_prev = dz @ W.T (B = W for the exact rule)
        return grads, da_prev

    feedback = feedback_init if feedback_init is not None else init
    return with_backward_rule(name, backward_rule, init_fn, forward, backward_with, feedback, stddev)


def rule_tag(where: str, backward_rule: str) -> str:
    """Check ``backward_rule`` (raising a :class:`BpjaxError` naming ``where``); its tag for layer names."""
    if backward_rule not in BACKWARD_RULES:
        raise _errors.BpjaxError(where, f"unknown backward_rule {backward_rule!r}; expected one of {BACKWARD_RULES}")
    return {"exact": "", "feedback_alignment": ", FA", "sign_symmetry": ", sign"}[backward_rule]


def with_backward_rule(name: str, backward_rule: str, init_fn, forward, backward_with,
                       feedback_init: Initializer, stddev: float = 1.0) -> Layer:
    """The layer ``(init_fn, forward)`` with the backward of ``backward_rule``, for any layer with weights ``W``.

    ``backward_with(B, residuals, dz) -> (grads, dx)`` is the exact backward with ``B`` standing for
    ``W`` wherever the input gradient needs it (``dW``, ``db`` never use it). It gets ``B = W``
    (``"exact"``), ``B = sign_feedback(W)`` (``"sign_symmetry"``), or a fixed random ``B`` with the
    shape of ``W`` drawn by ``feedback_init`` (``"feedback_alignment"``: the layer becomes contextual,
    ``state = {"B": B}``, and ``B`` travels to the backward in the residuals ``(residuals, B)``).
    """
    if backward_rule == "exact":
        def backward(params, residuals, dz):
            return backward_with(params["W"], residuals, dz)
        return Layer(init_fn, forward, backward, name)

    if backward_rule == "sign_symmetry":
        def backward_sign(params, residuals, dz):
            return backward_with(sign_feedback(params["W"]), residuals, dz)
        return Layer(init_fn, forward, backward_sign, name)

    with _errors.context(name):  # a bad feedback_init names the layer
        b_init = initializer(feedback_init, stddev)

    def init_state(key, input_shape):
        out_shape, params = init_fn(key, input_shape)  # same shapes; B gets its own key below
        W = params["W"]
        return out_shape, {"B": b_init(jax.random.fold_in(key, 1), W.shape, W.dtype)}

    def forward_fa(params, x, *, state, key=None, train=True):
        if not isinstance(state, dict) or set(state) != {"B"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise _errors.BpjaxError(name, f"state does not match the layer: expected keys ['B'], got {got} "
                                           f"(use bp.init_state(model, key, input_shape))")
        z, residuals = forward(params, x)
        B = state["B"]
        if B.shape != params["W"].shape:
            raise _errors.BpjaxError(name, f"feedback weights B must have the shape of W {tuple(params['W'].shape)}, "
                                           f"got {tuple(B.shape)}")
        return z, (residuals, B), state  # the backward needs the layer's residuals and the fixed B

    def backward_fa(params, residuals, dz):
        inner, B = residuals
        return backward_with(B, inner, dz)

    return Layer(init_fn, forward_fa, backward_fa, name, init_state)
