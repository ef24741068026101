"""Shape-only layers: ``Flatten`` (the backward restores the shape)."""

from __future__ import annotations

import math

import jax.numpy as jnp

from bpjax import errors
from bpjax.core import Layer


def Flatten(*, name: str | None = None) -> Layer:
    """``(B, d1, d2, ...) -> (B, d1 * d2 * ...)``; backward reshapes ``dy`` back to ``x``'s shape.

    Args:
      name: display name (default ``Flatten``).

    Examples:
      >>> layer = L.Flatten()
      >>> out_shape, _ = layer.init(jax.random.key(0), (4, 4, 3))
      >>> y, _ = layer.forward((), jnp.ones((2, 4, 4, 3)))
      >>> out_shape, y.shape
      ((48,), (2, 48))
    """
    name = name or "Flatten"

    def init(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        if any(isinstance(d, tuple) for d in input_shape):
            raise errors.BpjaxError(name, f"expected one input shape (a tuple of ints, no batch axis), got "
                                          f"{input_shape!r}")
        return (math.prod(input_shape),), ()

    def forward(params, x):
        errors.check_ndim(name, x, tuple(range(1, 8)))
        # residual: a zero-size array (0, d1, d2, ...) that carries the input shape and no data
        return x.reshape(x.shape[0], -1), jnp.zeros((0, *x.shape[1:]), x.dtype)

    def backward(params, like, dy):
        # in the forward pass this was: y = x.reshape(B, -1), so now dx = dy.reshape(x.shape)
        return (), dy.reshape(dy.shape[0], *like.shape[1:])

    return Layer(init, forward, backward, name)
