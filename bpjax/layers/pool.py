"""Pooling, channels last: max and average over windows, and the global average, with hand-written backward.

Layout: ``x: (B, L, C)`` (1-D) or ``(B, H, W, C)`` (2-D) -> ``y: (B, L_out, C)`` / ``(B, H_out, W_out, C)``;
the window geometry and padding rules are those of :mod:`bpjax.layers.conv` (dilation 1,
``stride`` defaults to the window). A pad must be smaller than the window, so every window holds at
least one real element.

Both pools gather the windows (im2col, :func:`bpjax.layers.conv.patches`) as ``P: (B, *out, K, C)``
with ``P[b, t, j, c] = x_pad[b, t s + j, c]`` and scatter the window gradient ``dP`` back with
:func:`bpjax.layers.conv.col2im` (overlapping windows add up; padding and the leftover rows get none).

- Max pool: ``y[b, t, c] = max_j P[b, t, j, c]``; padding is ``-inf`` (never chosen). Ties: the
  whole gradient goes to the *first* maximal element of the window (row-major order), as in
  PyTorch; ``jax.grad`` of ``max`` would split it evenly among the tied elements instead.
- Average pool: ``y[b, t, c] = sum_j P[b, t, j, c] / n[t]``, where ``n[t]`` counts the *real*
  elements of window ``t``: padded zeros do not count (``count_include_pad=False``, as TensorFlow's
  SAME average pool).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import errors
from bpjax.core import Layer
from bpjax.layers.conv import (
    IntOrTuple,
    Padding,
    col2im,
    init_geometry,
    padding_arg,
    patches,
    tuple_arg,
    window_geometry,
)


def _carrier(x):
    """A zero-size ``(0, *x.shape[1:])`` array: carries the input shape to the backward, no data."""
    return jnp.zeros((0, *x.shape[1:]), x.dtype)


def _window_counts(sizes, window, stride, pads, out):
    """``n: (*out,)``, the number of real (unpadded) elements in each window (static, numpy)."""
    per_axis = []
    for size, k, s, (lo, _), o in zip(sizes, window, stride, pads, out):
        start = np.arange(o) * s - lo
        per_axis.append(np.minimum(start + k, size) - np.maximum(start, 0))
    n = per_axis[0]
    for c in per_axis[1:]:
        n = np.multiply.outer(n, c)
    return n


def _pool(n: int, kind: str, window, stride, padding, name):
    cls = f"{kind}Pool{n}D"
    window = tuple_arg(cls, "window", window, n)
    stride = window if stride is None else tuple_arg(cls, "stride", stride, n)
    padding = padding_arg(cls, padding, n)
    name = name or f"{cls}({window if n > 1 else window[0]})"
    ones = (1,) * n

    def geometry(in_shape):
        pads, out = window_geometry(name, in_shape[:-1], window, stride, padding)
        for axis, ((lo, hi), k) in enumerate(zip(pads, window)):
            if lo >= k or hi >= k:
                raise errors.BpjaxError(name, f"padding ({lo}, {hi}) on spatial axis {axis} must be smaller than "
                                              f"the window {k} (else a window holds only padding)")
        return pads, out

    def init(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        input_shape, out = init_geometry(name, n, input_shape, geometry)
        return (*out, input_shape[-1]), ()

    def windows(x, pad_value):
        errors.check_floating(name, x)
        errors.check_ndim(name, x, n + 2)
        pads, out = geometry(x.shape[1:])
        return patches(x, window, stride, ones, pads, out, pad_value), pads, out

    def scatter(dP, like):
        pads, _ = geometry(like.shape[1:])
        return col2im(dP, like.shape[1:-1], window, stride, ones, pads)

    if kind == "Max":
        def forward(params, x):
            P, _, _ = windows(x, -jnp.inf)                   # (B, *out, K, C), padding -inf
            idx = jnp.argmax(P, axis=n + 1)                  # the first maximal element of each window
            return jnp.max(P, axis=n + 1), (idx, _carrier(x))

        def backward(params, residuals, dy):
            # in the forward pass this was: y[b, t, c] = max_j P[b, t, j, c] = P[b, t, idx[b, t, c], c]
            # so now: dP[b, t, j, c] = dy[b, t, c] * [j == idx[b, t, c]], and dx = col2im(dP)
            idx, like = residuals
            dP = jax.nn.one_hot(idx, math.prod(window), axis=n + 1, dtype=dy.dtype) * jnp.expand_dims(dy, n + 1)
            return (), scatter(dP, like)

        return Layer(init, forward, backward, name)

    def forward_avg(params, x):
        P, pads, out = windows(x, 0.0)
        count = _window_counts(x.shape[1:-1], window, stride, pads, out)[..., None]  # (*out, 1)
        return jnp.sum(P, axis=n + 1) / count.astype(x.dtype), _carrier(x)

    def backward_avg(params, like, dy):
        # in the forward pass this was: y[b, t, c] = sum_j P[b, t, j, c] / n[t]
        # so now: dP[b, t, j, c] = dy[b, t, c] / n[t] for every j, and dx = col2im(dP) (padding dropped)
        pads, out = geometry(like.shape[1:])
        count = _window_counts(like.shape[1:-1], window, stride, pads, out)[..., None]
        g = jnp.expand_dims(dy / count.astype(dy.dtype), n + 1)
        return (), scatter(jnp.broadcast_to(g, (*dy.shape[:-1], math.prod(window), dy.shape[-1])), like)

    return Layer(init, forward_avg, backward_avg, name)


def MaxPool1D(window: IntOrTuple, *, stride: IntOrTuple | None = None, padding: Padding = "VALID",
              name: str | None = None) -> Layer:
    """Max over windows of ``x: (B, L, C)`` -> ``(B, L_out, C)``; gradient to the first maximum of each window.

    Args:
      window: window length (an int or a 1-tuple).
      stride: step between windows (default: ``window``, non-overlapping).
      padding: ``"VALID"`` (default), ``"SAME"``, an int or ``[(lo, hi)]``; pads are ``-inf`` and
        must be smaller than the window.
      name: display name (default ``MaxPool1D(window)``).

    Examples:
      >>> layer = L.MaxPool1D(2)
      >>> out_shape, params = layer.init(jax.random.key(0), (8, 3))
      >>> y, _ = layer.forward(params, jnp.ones((2, 8, 3)))
      >>> out_shape, y.shape
      ((4, 3), (2, 4, 3))
    """
    return _pool(1, "Max", window, stride, padding, name)


def MaxPool2D(window: IntOrTuple, *, stride: IntOrTuple | None = None, padding: Padding = "VALID",
              name: str | None = None) -> Layer:
    """Max over windows of ``x: (B, H, W, C)`` -> ``(B, H_out, W_out, C)``; as :func:`MaxPool1D` on two axes.

    Examples:
      >>> layer = L.MaxPool2D(2)
      >>> out_shape, params = layer.init(jax.random.key(0), (8, 8, 3))
      >>> y, _ = layer.forward(params, jnp.ones((2, 8, 8, 3)))
      >>> out_shape, y.shape
      ((4, 4, 3), (2, 4, 4, 3))
    """
    return _pool(2, "Max", window, stride, padding, name)


def AvgPool1D(window: IntOrTuple, *, stride: IntOrTuple | None = None, padding: Padding = "VALID",
              name: str | None = None) -> Layer:
    """Mean over windows of ``x: (B, L, C)`` -> ``(B, L_out, C)``; padded zeros are not counted.

    Backward: each element of window ``t`` gets ``dy[t] / n[t]`` (``n[t]`` real elements in the
    window), summed over the windows that hold it. Arguments as :func:`MaxPool1D` (pads are zeros).

    Examples:
      >>> layer = L.AvgPool1D(2)
      >>> out_shape, params = layer.init(jax.random.key(0), (8, 3))
      >>> y, _ = layer.forward(params, jnp.arange(48.0).reshape(2, 8, 3))
      >>> out_shape, y.shape, float(y[0, 0, 0])                  # the mean of 0 and 3
      ((4, 3), (2, 4, 3), 1.5)
    """
    return _pool(1, "Avg", window, stride, padding, name)


def AvgPool2D(window: IntOrTuple, *, stride: IntOrTuple | None = None, padding: Padding = "VALID",
              name: str | None = None) -> Layer:
    """Mean over windows of ``x: (B, H, W, C)`` -> ``(B, H_out, W_out, C)``; as :func:`AvgPool1D` on two axes.

    Examples:
      >>> layer = L.AvgPool2D(2)
      >>> out_shape, params = layer.init(jax.random.key(0), (8, 8, 3))
      >>> y, _ = layer.forward(params, jnp.ones((2, 8, 8, 3)))
      >>> out_shape, y.shape
      ((4, 4, 3), (2, 4, 4, 3))
    """
    return _pool(2, "Avg", window, stride, padding, name)


def GlobalAvgPool(*, name: str | None = None) -> Layer:
    """``y[b, c] = mean over all spatial positions of x[b, ..., c]``: ``(B, ..., C) -> (B, C)``.

    Backward: ``dx[b, ..., c] = dy[b, c] / N`` with ``N`` the number of spatial positions.

    Examples:
      >>> layer = L.GlobalAvgPool()
      >>> out_shape, params = layer.init(jax.random.key(0), (8, 8, 3))
      >>> y, _ = layer.forward(params, jnp.ones((2, 8, 8, 3)))
      >>> out_shape, y.shape
      ((3,), (2, 3))
    """
    name = name or "GlobalAvgPool"

    def init(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        if len(input_shape) < 2:
            raise errors.BpjaxError(name, f"expected an input shape (spatial..., C) per example, got "
                                          f"{tuple(input_shape)}")
        return (input_shape[-1],), ()

    def forward(params, x):
        errors.check_floating(name, x)
        errors.check_ndim(name, x, tuple(range(3, 8)))
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1))), _carrier(x)

    def backward(params, like, dy):
        # in the forward pass this was: y[b, c] = sum_i x[b, i, c] / N, so now: dx[b, i, c] = dy[b, c] / N
        N = math.prod(like.shape[1:-1])
        dx = jnp.broadcast_to((dy / N).reshape(dy.shape[0], *(1,) * (like.ndim - 2), dy.shape[-1]),
                              (dy.shape[0], *like.shape[1:]))
        return (), dx

    return Layer(init, forward, backward, name)


__all__ = ["AvgPool1D", "AvgPool2D", "GlobalAvgPool", "MaxPool1D", "MaxPool2D"]
