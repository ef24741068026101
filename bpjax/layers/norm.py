"""Normalisation layers: ``BatchNorm`` (batch statistics, running state) and ``LayerNorm`` (last axis).

Both compute ``xhat = (x - mean) * rstd``, ``rstd = 1 / sqrt(var + eps)``, ``y = scale * xhat + b``
over some axes, and share one backward through the statistics (:func:`_normalise_backward`).
Params ``{"scale": (C,), "b": (C,)}``: ``scale`` drawn by ``init`` (default ``"ones"``), ``b`` zeros.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from bpjax import errors
from bpjax.core import Layer, read_mode, tag_mode
from bpjax.initializers import Initializer, initializer, param_dtype


def _check_hyper(where: str, eps, momentum=None) -> None:
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise errors.BpjaxError(where, f"eps must be a positive number, got {eps!r}")
    if momentum is not None and (not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1):
        raise errors.BpjaxError(where, f"momentum must be a number in [0, 1], got {momentum!r}")


def _affine_init(name: str, init: Initializer, dtype):
    """``init(key, input_shape: (..., C)) -> (input_shape, {"scale": init (C,), "b": zeros (C,)})``."""
    param_dtype(name, dtype)
    with errors.context(name):
        scale_init = initializer(init)

    def init_fn(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape, key_needed=True)
        if len(input_shape) < 1:
            raise errors.BpjaxError(name, f"expected an input shape with a feature axis, got {tuple(input_shape)}")
        C, dt = int(input_shape[-1]), param_dtype(name, dtype)
        return tuple(input_shape), {"scale": scale_init(key, (C,), dt), "b": jnp.zeros((C,), dt)}

    return init_fn


def _check_input(name: str, params, x, min_ndim: int) -> int:
    """Validate ``params = {"scale": (C,), "b": (C,)}`` and ``x: (..., C)``; return ``C``."""
    if not isinstance(params, dict) or set(params) != {"scale", "b"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise errors.BpjaxError(name, f"params do not match the layer: expected keys ['b', 'scale'], got {got}")
    errors.check_floating(name, x)
    errors.check_ndim(name, x, tuple(range(min_ndim, 8)))
    errors.check_input_dtype(name, x, params["scale"])
    C = params["scale"].shape[-1] if params["scale"].ndim == 1 else -1
    if params["scale"].shape != (C,) or params["b"].shape != (C,):
        raise errors.BpjaxError(name, f"params do not match the layer: expected scale and b of shape (C,), "
                                      f"got {tuple(params['scale'].shape)} and {tuple(params['b'].shape)}")
    if x.shape[-1] != C:
        raise errors.BpjaxError(name, f"expected input with {C} features on the last axis (shape (B, ..., {C})), "
                                      f"got shape {tuple(x.shape)}")
    return C


def _normalise_backward(params, xhat, rstd, dy, axes):
    """Backward of ``y = scale * xhat + b``, ``xhat = (x - mean(x)) * rstd`` through the statistics.

    ``xhat, dy: (..., C)``; ``rstd`` broadcasts against them; ``axes`` are the normalised axes
    (``N`` elements each). With ``dxhat = dy * scale``::

        dx = rstd / N * (N * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))
           = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))

    (the mean term is the path through ``mean``, the ``xhat`` term the path through ``var``).
    With ``axes=None`` the statistics are constants (BatchNorm in eval): ``dx = dxhat * rstd``.
    ``dscale``/``db`` sum over every axis but the last.
    """
    rows = tuple(range(dy.ndim - 1))
    dparams = {"scale": jnp.sum(dy * xhat, axis=rows),  # y = scale * xhat + b
               "b": jnp.sum(dy, axis=rows)}
    dxhat = dy * params["scale"]
    if axes is None:
        return dparams, dxhat * rstd
    dx = rstd * (dxhat - jnp.mean(dxhat, axis=axes, keepdims=True)
                 - xhat * jnp.mean(dxhat * xhat, axis=axes, keepdims=True))
    return dparams, dx


def BatchNorm(*, momentum: float = 0.9, eps: float = 1e-5, init: Initializer = "ones", dtype=None,
              name: str | None = None) -> Layer:
    """Batch normalisation over every axis but the last (features last), with running statistics.

    Works for ``x: (B, C)`` and conv activations ``x: (B, ..., C)``. Params ``{"scale": (C,),
    "b": (C,)}``; state ``{"mean": (C,), "var": (C,)}`` (starts at 0 and 1, in the params' dtype).

    Train (``train=True``), over the ``N = B * ...`` rows of each channel::

        mean = sum(x) / N;  var = sum((x - mean)^2) / N          # biased, used to normalise
        xhat = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps);  y = scale * xhat + b
        new mean = momentum * mean_run + (1 - momentum) * mean
        new var  = momentum * var_run  + (1 - momentum) * var * N / (N - 1)   # unbiased, as PyTorch

    so ``N >= 2`` is required in train mode. Eval (``train=False``) uses the running statistics
    and leaves the state unchanged; the backward is then the affine one, ``dx = dy * scale * rstd``.
    Train backward: see :func:`_normalise_backward`.

    Args:
      momentum: weight of the old running statistics, in [0, 1] (Keras convention; PyTorch's
        ``momentum=0.1`` is ``momentum=0.9`` here).
      eps: added to the variance, > 0.
      init: initialiser of ``scale`` (default ``"ones"``; ``"zeros"`` starts a residual branch at
        zero); ``b`` starts at zero.
      dtype: parameter (and running statistics) dtype; default the canonical float.
      name: display name (default ``BatchNorm``).

    Examples:
      >>> layer = L.BatchNorm()
      >>> out_shape, params = layer.init(jax.random.key(0), (3,))
      >>> state = bp.init_state(layer, jax.random.key(0), (3,))     # running mean and var
      >>> x = jnp.arange(12.0).reshape(4, 3)
      >>> y, _, state = bp.apply(layer, params, x, state=state)     # train: batch statistics
      >>> y.shape, [round(v, 4) for v in state["mean"].tolist()]    # 0.9 * 0 + 0.1 * batch mean
      ((4, 3), [0.45, 0.55, 0.65])
    """
    _check_hyper("BatchNorm", eps, momentum)
    name = name or "BatchNorm"

    init_fn = _affine_init(name, init, dtype)

    def init_state(key, input_shape):
        shape, p = init_fn(key, input_shape)
        return shape, {"mean": jnp.zeros_like(p["scale"]), "var": jnp.ones_like(p["scale"])}

    def forward(params, x, *, state, key, train):
        C = _check_input(name, params, x, 2)
        if not isinstance(state, dict) or set(state) != {"mean", "var"} or any(
                jnp.shape(v) != (C,) for v in state.values()):
            raise errors.BpjaxError(name, f"state does not match the layer: expected {{'mean': ({C},), "
                                          f"'var': ({C},)}}, got {state!r:.200}")
        axes = tuple(range(x.ndim - 1))
        if not train:
            rstd = 1.0 / jnp.sqrt(state["var"].astype(x.dtype) + eps)
            xhat = (x - state["mean"].astype(x.dtype)) * rstd
            return params["scale"] * xhat + params["b"], tag_mode(False, (xhat, rstd)), state
        N = math.prod(x.shape[:-1])
        if N < 2:
            raise errors.BpjaxError(name, f"train mode needs more than one value per channel, got input shape "
                                          f"{tuple(x.shape)} ({N} per channel)")
        mean = jnp.mean(x, axis=axes)
        xc = x - mean
        var = jnp.mean(xc * xc, axis=axes)  # biased
        rstd = 1.0 / jnp.sqrt(var + eps)
        xhat = xc * rstd
        y = params["scale"] * xhat + params["b"]
        new_state = {"mean": (momentum * state["mean"] + (1 - momentum) * mean).astype(state["mean"].dtype),
                     "var": (momentum * state["var"] + (1 - momentum) * var * (N / (N - 1))).astype(state["var"].dtype)}
        return y, tag_mode(True, (xhat, rstd)), new_state  # cache xhat and rstd for the backward

    def backward(params, res, dy):
        train, (xhat, rstd) = read_mode(res)
        if not train:  # eval: y = scale * (x - mean_run) * rstd_run + b, an affine map
            return _normalise_backward(params, xhat, rstd, dy, None)
        # train: y = scale * (x - mean(x)) * rstd(x) + b, the statistics depend on x
        return _normalise_backward(params, xhat, rstd, dy, tuple(range(dy.ndim - 1)))

    return Layer(init_fn, forward, backward, name, init_state)


def LayerNorm(*, eps: float = 1e-5, init: Initializer = "ones", dtype=None, name: str | None = None) -> Layer:
    """Layer normalisation over the last axis: ``x: (B, ..., C) -> y: (B, ..., C)``.

    Forward, per row (llm.c's ``layernorm_forward``)::

        mean = sum(x) / C;  var = sum((x - mean)^2) / C;  rstd = 1 / sqrt(var + eps)
        y = scale * (x - mean) * rstd + b            # cache mean and rstd for the backward

    Backward (llm.c's ``layernorm_backward``), ``xhat = (x - mean) * rstd``, ``dxhat = dy * scale``::

        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))   # means over the last axis

    Params ``{"scale": (C,), "b": (C,)}`` start at 1 and 0.

    Args:
      eps: added to the variance, > 0.
      init: initialiser of ``scale`` (default ``"ones"``); ``b`` starts at zero.
      dtype: parameter dtype; default the canonical float.
      name: display name (default ``LayerNorm``).

    Examples:
      >>> layer = L.LayerNorm()
      >>> out_shape, params = layer.init(jax.random.key(0), (3,))
      >>> y, _ = layer.forward(params, jnp.array([[1.0, 2.0, 3.0]]))
      >>> [round(v, 4) for v in y[0].tolist()]
      [-1.2247, 0.0, 1.2247]
    """
    _check_hyper("LayerNorm", eps)
    name = name or "LayerNorm"

    init_fn = _affine_init(name, init, dtype)

    def forward(params, x):
        _check_input(name, params, x, 2)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        xc = x - mean
        rstd = 1.0 / jnp.sqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)
        y = params["scale"] * (xc * rstd) + params["b"]
        return y, (x, mean, rstd)  # cache the mean and rstd for the backward pass

    def backward(params, res, dy):
        # in the forward pass this was: y = scale * (x - mean) * rstd + b, so now we recompute xhat
        x, mean, rstd = res
        return _normalise_backward(params, (x - mean) * rstd, rstd, dy, -1)

    return Layer(init_fn, forward, backward, name)
