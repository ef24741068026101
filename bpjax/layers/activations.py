"""Elementwise activations ``a = f(z)`` and their backward ``dz = da * f'(z)``, plus softmax and log-softmax."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from bpjax import _errors
from bpjax.core import Layer


def elementwise(name: str, f, df, keep: str = "z") -> Layer:
    """A parameter-free layer ``a = f(z)`` with backward ``dz = da * df(kept)``.

    Args:
      name: display name.
      f: ``z -> a``, applied elementwise.
      df: the derivative, written by hand, as a function of what is kept: ``df(z)`` when
        ``keep="z"`` or ``df(a)`` when ``keep="a"`` (cheaper for sigmoid/tanh, as in llm.c).
      keep: which of ``z`` (the input) or ``a`` (the output) the forward saves for the backward.
    """

    def backward(params, kept, da):
        return (), da * df(kept)  # dz = da * f'(z)

    return _parameter_free(name, f, backward, keep, min_rank=1)


def _parameter_free(name, f, backward, keep, min_rank) -> Layer:
    """A layer without params: ``a = f(z)``, saving ``z`` or ``a`` (``keep``) for ``backward``."""

    def init(key, input_shape):
        return tuple(input_shape), ()

    def forward(params, z):
        _errors.check_floating(name, z)
        _errors.check_ndim(name, z, tuple(range(min_rank, 8)))
        a = f(z)
        return a, (z if keep == "z" else a)

    return Layer(init, forward, backward, name)


def Identity() -> Layer:
    """``a = z``; backward ``dz = da``."""
    return elementwise("Identity", lambda z: z, lambda z: jnp.ones_like(z))


def Sigmoid() -> Layer:
    """``a = 1 / (1 + exp(-z))``; backward ``dz = da * a * (1 - a)``."""
    return elementwise("Sigmoid", jax.nn.sigmoid, lambda a: a * (1 - a), keep="a")


def Tanh() -> Layer:
    """``a = tanh(z)``; backward ``dz = da * (1 - a^2)``."""
    return elementwise("Tanh", jnp.tanh, lambda a: 1 - a * a, keep="a")


def Relu() -> Layer:
    """``a = max(z, 0)``; backward ``dz = da * [z > 0]`` (the subgradient at 0 is taken as 0, as JAX does)."""
    return elementwise("Relu", lambda z: jnp.maximum(z, 0), lambda z: (z > 0).astype(z.dtype))


def _check_number(where: str, what: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _errors.BpjaxError(where, f"{what} must be a finite real number, got {value!r}")


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """``a = z if z >= 0 else slope * z``; backward ``dz = da * (1 if z >= 0 else slope)``."""
    _check_number("LeakyRelu", "negative_slope", negative_slope)
    s = negative_slope
    return elementwise(f"LeakyRelu({s})", lambda z: jnp.where(z >= 0, z, s * z),
                       lambda z: jnp.where(z >= 0, 1.0, s).astype(z.dtype))


def Elu(alpha: float = 1.0) -> Layer:
    """``a = z if z > 0 else alpha * (exp(z) - 1)``; backward ``dz = da * (1 if z > 0 else alpha * exp(z))``."""
    _check_number("Elu", "alpha", alpha)
    return elementwise(f"Elu({alpha})", lambda z: jnp.where(z > 0, z, alpha * jnp.expm1(jnp.minimum(z, 0))),
                       lambda z: jnp.where(z > 0, 1.0, alpha * jnp.exp(jnp.minimum(z, 0))).astype(z.dtype))


def _phi(z):  # standard normal density
    return jnp.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _gelu_tanh_grad(z):
    c = math.sqrt(2 / math.pi)
    u = c * (z + 0.044715 * z ** 3)
    t = jnp.tanh(u)
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + 3 * 0.044715 * z * z)


def Gelu(approximate: bool = False) -> Layer:
    """``a = z * Phi(z)``; backward ``dz = da * (Phi(z) + z * phi(z))``.

    With ``approximate=True`` uses the tanh form ``0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))``
    and its exact derivative.
    """
    if approximate:
        return elementwise("Gelu(tanh)", lambda z: jax.nn.gelu(z, approximate=True), _gelu_tanh_grad)
    Phi = lambda z: 0.5 * (1 + erf(z / math.sqrt(2)))  # noqa: E731
    return elementwise("Gelu", lambda z: z * Phi(z), lambda z: Phi(z) + z * _phi(z))


def Softplus() -> Layer:
    """``a = log(1 + exp(z))``; backward ``dz = da * sigmoid(z)``."""
    return elementwise("Softplus", jax.nn.softplus, jax.nn.sigmoid)


def _axis_layer(name, f, backward):
    return _parameter_free(name, f, backward, "a", min_rank=2)


def Softmax() -> Layer:
    """``a = exp(z) / sum(exp(z))`` over the last axis.

    Backward, the Jacobian-vector product of ``diag(a) - a a^T``:
    ``dz = a * (da - sum(da * a, -1))``.
    """
    return _axis_layer("Softmax", lambda z: jax.nn.softmax(z, axis=-1),
                       lambda p, a, da: ((), a * (da - jnp.sum(da * a, axis=-1, keepdims=True))))


def LogSoftmax() -> Layer:
    """``a = z - logsumexp(z)`` over the last axis; backward ``dz = da - exp(a) * sum(da, -1)``."""
    return _axis_layer("LogSoftmax", lambda z: jax.nn.log_softmax(z, axis=-1),
                       lambda p, a, da: ((), da - jnp.exp(a) * jnp.sum(da, axis=-1, keepdims=True)))
