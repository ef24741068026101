"""Elementwise activations ``a = f(z)`` and their backward ``dz = da * f'(z)``, plus softmax and log-softmax."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erfc

from bpjax import errors
from bpjax.core import Layer


def elementwise(name: str, f, df, keep: str = "z") -> Layer:
    """A parameter-free layer ``a = f(z)`` with backward ``dz = da * df(kept)``.

    Args:
      name: display name.
      f: ``z -> a``, applied elementwise.
      df: the derivative, written by hand, as a function of what is kept: ``df(z)`` when
        ``keep="z"`` or ``df(a)`` when ``keep="a"`` (cheaper for sigmoid/tanh, as in llm.c).
      keep: which of ``z`` (the input) or ``a`` (the output) the forward saves for the backward.

    Examples:
      >>> square = L.elementwise("Square", lambda z: z * z, lambda z: 2 * z)   # df(z) = 2 z
      >>> y, z = square.forward((), jnp.array([[3.0, -1.0]]))
      >>> _, dz = square.backward((), z, jnp.ones((1, 2)))
      >>> y.tolist(), dz.tolist()
      ([[9.0, 1.0]], [[6.0, -2.0]])
    """

    def backward(params, kept, da):
        return (), da * df(kept)  # dz = da * f'(z)

    return _parameter_free(name, f, backward, keep, min_rank=1)


def _parameter_free(name, f, backward, keep, min_rank) -> Layer:
    """A layer without params: ``a = f(z)``, saving ``z`` or ``a`` (``keep``), or nothing (``keep=None``), for
    ``backward``."""

    def init(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        return input_shape, ()

    def forward(params, z):
        errors.check_floating(name, z)
        errors.check_ndim(name, z, tuple(range(min_rank, 8)))
        a = f(z)
        return a, (z if keep == "z" else a if keep == "a" else ())

    return Layer(init, forward, backward, name)


def Identity() -> Layer:
    """``a = z``; backward ``dz = da``, with nothing kept for it (a placeholder costs no residual bytes).

    Examples:
      >>> y, residuals = L.Identity().forward((), jnp.ones((2, 3)))
      >>> y.shape, residuals
      ((2, 3), ())
    """
    return _parameter_free("Identity", lambda z: z, lambda params, kept, da: ((), da), None, min_rank=1)


def Sigmoid() -> Layer:
    """``a = 1 / (1 + exp(-z))``; backward ``dz = da * a * (1 - a)``, from the saved output ``a`` (as llm.c).

    Keeping ``a`` rather than ``z`` lets the next layer's residual (its input ``a``) be the same array:
    a Dense-Sigmoid stack keeps one activation per layer instead of two (the gradient program of a
    6-block Dense-Tanh-Dense-Gelu MLP at batch 512: 18.5 MiB of temporaries instead of 21.5 MiB).
    The price: once ``a`` rounds to 1 (``z > 17`` in float32) ``1 - a`` is 0 where the true
    derivative is ``exp(-z)`` < eps, an absolute error below eps (``jax.grad`` of ``jax.nn.sigmoid``
    rounds the same way).

    Examples:
      >>> y, a = L.Sigmoid().forward((), jnp.array([[0.0, 2.0]]))
      >>> [round(v, 4) for v in y[0].tolist()]
      [0.5, 0.8808]
      >>> _, dz = L.Sigmoid().backward((), a, jnp.ones((1, 2)))   # dz = a (1 - a)
      >>> [round(v, 4) for v in dz[0].tolist()]
      [0.25, 0.105]
    """
    return elementwise("Sigmoid", jax.nn.sigmoid, lambda a: a * (1 - a), keep="a")


def Tanh() -> Layer:
    """``a = tanh(z)``; backward ``dz = da * (1 - a^2)``, from the saved output ``a`` (as llm.c).

    As for :func:`Sigmoid`, the output is kept so that the next layer shares it; once ``|a|`` rounds
    to 1 (``|z| > 9`` in float32) ``1 - a^2`` is 0 where the true value ``4 exp(-2|z|)`` is below
    eps: an absolute error below eps.

    Examples:
      >>> y, a = L.Tanh().forward((), jnp.array([[0.0, 1.0]]))
      >>> [round(v, 4) for v in y[0].tolist()]
      [0.0, 0.7616]
      >>> _, dz = L.Tanh().backward((), a, jnp.ones((1, 2)))      # dz = 1 - a^2
      >>> [round(v, 4) for v in dz[0].tolist()]
      [1.0, 0.42]
    """
    return elementwise("Tanh", jnp.tanh, lambda a: 1 - a * a, keep="a")


def Relu() -> Layer:
    """``a = max(z, 0)``; backward ``dz = da * [z > 0]`` (the subgradient at 0 is taken as 0, as JAX does).

    Examples:
      >>> y, z = L.Relu().forward((), jnp.array([[-1.0, 0.0, 2.0]]))
      >>> y.tolist()
      [[0.0, 0.0, 2.0]]
      >>> _, dz = L.Relu().backward((), z, jnp.ones((1, 3)))      # dz = [z > 0]
      >>> dz.tolist()
      [[0.0, 0.0, 1.0]]
    """
    return elementwise("Relu", lambda z: jnp.maximum(z, 0), lambda z: (z > 0).astype(z.dtype))


def _check_number(where: str, what: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise errors.BpjaxError(where, f"{what} must be a finite real number, got {value!r}")


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """``a = z if z >= 0 else slope * z``; backward ``dz = da * (1 if z >= 0 else slope)``.

    Examples:
      >>> y, _ = L.LeakyRelu(0.1).forward((), jnp.array([[-2.0, 3.0]]))
      >>> [round(v, 4) for v in y[0].tolist()]
      [-0.2, 3.0]
    """
    _check_number("LeakyRelu", "negative_slope", negative_slope)
    s = negative_slope
    return elementwise(f"LeakyRelu({s})", lambda z: jnp.where(z >= 0, z, s * z),
                       lambda z: jnp.where(z >= 0, 1.0, s).astype(z.dtype))


def Elu(alpha: float = 1.0) -> Layer:
    """``a = z if z > 0 else alpha * (exp(z) - 1)``; backward ``dz = da * (1 if z > 0 else alpha * exp(z))``.

    Examples:
      >>> y, _ = L.Elu().forward((), jnp.array([[-1.0, 2.0]]))
      >>> [round(v, 4) for v in y[0].tolist()]
      [-0.6321, 2.0]
    """
    _check_number("Elu", "alpha", alpha)
    return elementwise(f"Elu({alpha})", lambda z: jnp.where(z > 0, z, alpha * jnp.expm1(jnp.minimum(z, 0))),
                       lambda z: jnp.where(z > 0, 1.0, alpha * jnp.exp(jnp.minimum(z, 0))).astype(z.dtype))


def _phi(z):  # standard normal density
    return jnp.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _Phi(z):  # standard normal CDF, 0.5 erfc(-z / sqrt 2): 0.5 (1 + erf(z / sqrt 2)) cancels to 0 for z < -6
    return 0.5 * erfc(-z / math.sqrt(2))


_GELU_C, _GELU_A = math.sqrt(2 / math.pi), 0.044715


def _gelu_tanh_v(z):  # v = 2u = 2 sqrt(2/pi) (z + 0.044715 z^3); 0.5 (1 + tanh(u)) = sigmoid(v)
    return 2 * _GELU_C * (z + _GELU_A * z ** 3)


def _gelu_tanh(z):
    # a = 0.5 z (1 + tanh(u)) = z sigmoid(2u): the left form cancels to 0 for z < -5 in float32
    return z * jax.nn.sigmoid(_gelu_tanh_v(z))


def _gelu_tanh_grad(z):
    # a = z s, s = sigmoid(v)  =>  da/dz = s + z s (1 - s) dv/dz, 1 - s = sigmoid(-v), dv/dz = 2c (1 + 3 0.044715 z^2)
    v = _gelu_tanh_v(z)
    s = jax.nn.sigmoid(v)
    return s + z * s * jax.nn.sigmoid(-v) * (2 * _GELU_C) * (1 + 3 * _GELU_A * z * z)


def Gelu(approximate: bool = False) -> Layer:
    """``a = z * Phi(z)``; backward ``dz = da * (Phi(z) + z * phi(z))``, ``Phi(z) = erfc(-z / sqrt 2) / 2``.

    With ``approximate=True`` uses the tanh form ``0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))``,
    computed as ``z * sigmoid(2 sqrt(2/pi) (z + 0.044715 z^3))`` (the same function, without the
    cancellation of ``1 + tanh`` for negative ``z``), and its exact derivative.

    Examples:
      >>> y, _ = L.Gelu().forward((), jnp.array([[-1.0, 0.0, 1.0]]))
      >>> [round(v, 4) for v in y[0].tolist()]
      [-0.1587, 0.0, 0.8413]
      >>> y, _ = L.Gelu(approximate=True).forward((), jnp.array([[1.0]]))
      >>> round(float(y[0, 0]), 4)
      0.8412
    """
    if approximate:
        return elementwise("Gelu(tanh)", _gelu_tanh, _gelu_tanh_grad)
    return elementwise("Gelu", lambda z: z * _Phi(z), lambda z: _Phi(z) + z * _phi(z))


def Softplus() -> Layer:
    """``a = log(1 + exp(z))``; backward ``dz = da * sigmoid(z)``.

    Examples:
      >>> y, _ = L.Softplus().forward((), jnp.array([[0.0, 1.0]]))
      >>> [round(v, 4) for v in y[0].tolist()]
      [0.6931, 1.3133]
    """
    return elementwise("Softplus", jax.nn.softplus, jax.nn.sigmoid)


def log_softmax_parts(z):
    """``logp = z - logsumexp(z)`` over the last axis, accurate in every entry, the largest included.

    With ``M = max(z)`` and ``rest = sum_z exp(z - M) - 1`` (the mass beyond one maximal entry, summed
    without forming the 1), ``logp = (z - M) - log1p(rest)``: the usual ``log(sum(exp(z - M)))``
    rounds ``log(1 + rest)`` to 0 once ``rest < eps`` (``M - z_j > 17`` in float32), where the true
    largest ``logp`` is ``-rest``. ``jax.grad`` of this form is right, ties included (``max`` shares
    its cotangent among the tied entries).

    Args:
      z: ``(..., C)`` logits.

    Returns:
      ``(logp, top, rest)``: ``logp: (..., C)``; ``top``: bool ``(..., C)``, True where ``z = M``;
      ``rest: (..., 1)``, so that ``1 - softmax(z) = rest / (1 + rest)`` where ``top``, without cancellation.
    """
    shifted = z - jnp.max(z, axis=-1, keepdims=True)  # <= 0, exactly 0 at the maxima
    top = shifted == 0
    rest = jnp.sum(jnp.where(top, 0, jnp.exp(shifted)), axis=-1, keepdims=True) + \
        (jnp.sum(top, axis=-1, keepdims=True) - 1).astype(z.dtype)  # + the other tied maxima, exp(0) = 1 each
    return shifted - jnp.log1p(rest), top, rest


def _axis_layer(name, f, backward):
    return _parameter_free(name, f, backward, "a", min_rank=2)


def _softmax_backward(params, a, da):
    # in the forward pass this was: a = softmax(z), so dz = a * (da - sum(da * a, -1)). The bracket is
    # unchanged by da -> da - da_m (sum(a) = 1); taking da_m at the largest a (their mean for ties)
    # removes the cancellation da_m - sum(da * a) where a_m rounds to 1
    top = a == jnp.max(a, axis=-1, keepdims=True)
    d = da - jnp.sum(jnp.where(top, da, 0), axis=-1, keepdims=True) / jnp.sum(top, axis=-1, keepdims=True)
    return (), a * (d - jnp.sum(d * a, axis=-1, keepdims=True))


def Softmax() -> Layer:
    """``a = exp(z) / sum(exp(z))`` over the last axis.

    Backward, the Jacobian-vector product of ``diag(a) - a a^T``:
    ``dz = a * (da - sum(da * a, -1))``, with ``da`` shifted by its entry at the largest ``a`` first
    (the same value in exact arithmetic, accurate where that ``a`` rounds to 1).

    Examples:
      >>> y, _ = L.Softmax().forward((), jnp.array([[1.0, 2.0, 3.0]]))
      >>> [round(v, 4) for v in y[0].tolist()], round(float(y.sum()), 4)
      ([0.09, 0.2447, 0.6652], 1.0)
    """
    return _axis_layer("Softmax", lambda z: jax.nn.softmax(z, axis=-1), _softmax_backward)


def LogSoftmax() -> Layer:
    """``a = z - logsumexp(z)`` over the last axis (:func:`log_softmax_parts`, accurate in the largest
    entry too); backward ``dz = da - exp(a) * sum(da, -1)``.

    Examples:
      >>> y, _ = L.LogSoftmax().forward((), jnp.array([[1.0, 2.0, 3.0]]))
      >>> [round(v, 4) for v in y[0].tolist()]
      [-2.4076, -1.4076, -0.4076]
    """
    return _axis_layer("LogSoftmax", lambda z: log_softmax_parts(z)[0],
                       lambda p, a, da: ((), da - jnp.exp(a) * jnp.sum(da, axis=-1, keepdims=True)))
