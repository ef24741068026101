"""Combinators: build models out of layers. ``serial`` runs forward in order and backward in reverse."""

from __future__ import annotations

import jax

from bpjax import _errors
from bpjax.core import Layer, apply, is_contextual


def _split(key, n):
    """``n`` keys from ``key`` (or ``n`` Nones when no key is given)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def _check_params(where: str, params, n: int) -> None:
    if not isinstance(params, (tuple, list)) or len(params) != n:
        got = f"a {type(params).__name__} of length {len(params)}" if isinstance(params, (tuple, list)) \
            else f"a {type(params).__name__}"
        raise _errors.BpjaxError(where, f"params do not match the model: expected a tuple of {n} "
                                        f"per-layer params, got {got}")


def serial(*layers: Layer, name: str | None = None) -> Layer:
    """Compose layers in sequence: ``a_l = layer_l(a_{l-1})``.

    Params (and state) are tuples with one entry per layer. Backward goes in the reverse order of
    the forward pass: ``dparams_l, da_{l-1} = layer_l.backward(params_l, residuals_l, da_l)``.

    Args:
      *layers: the layers, first to last.
      name: shown in errors and reports; defaults to ``serial(Dense(100), Relu, ...)``.
    """
    layers = tuple(layers)
    if not layers:
        raise _errors.BpjaxError("serial", "expected at least one layer, got none")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise _errors.BpjaxTypeError("serial", f"argument {i} is a {type(layer).__name__}, expected a "
                                                   f"bpjax Layer (did you forget to call it, e.g. Relu()?)")
    n = len(layers)
    name = name or "serial(" + ", ".join(layer.name for layer in layers) + ")"

    def init(key, input_shape):
        params, shape = [], tuple(input_shape)
        for i, (layer, k) in enumerate(zip(layers, _split(key, n))):
            with _errors.context(f"serial[{i}]"):
                shape, p = layer.init(k, shape)
            params.append(p)
        return shape, tuple(params)

    def backward(params, residuals, dy):
        _check_params(name, params, n)
        dparams = [None] * n
        for i in reversed(range(n)):  # go in the reverse order of the forward pass
            with _errors.context(f"serial[{i}]"):
                dparams[i], dy = layers[i].backward(params[i], residuals[i], dy)
        return tuple(dparams), dy

    if not any(is_contextual(layer) for layer in layers):
        def forward(params, x):
            _check_params(name, params, n)
            residuals = []
            for i, (layer, p) in enumerate(zip(layers, params)):
                with _errors.context(f"serial[{i}]"):
                    x, r = layer.forward(p, x)
                residuals.append(r)
            return x, tuple(residuals)

        return Layer(init, forward, backward, name)

    def init_state(key, input_shape):
        states, shape = [], tuple(input_shape)
        for i, (layer, k) in enumerate(zip(layers, _split(key, n))):
            with _errors.context(f"serial[{i}]"):
                if is_contextual(layer):
                    shape, s = layer.init_state(k, shape)
                else:
                    shape, _ = layer.init(k, shape)
                    s = ()
            states.append(s)
        return shape, tuple(states)

    def forward_ctx(params, x, *, state, key, train):
        _check_params(name, params, n)
        _check_params(name + " (state)", state, n)
        residuals, new_state = [], []
        for i, (layer, p, s, k) in enumerate(zip(layers, params, state, _split(key, n))):
            with _errors.context(f"serial[{i}]"):
                x, r, s = apply(layer, p, x, state=s, key=k, train=train)
            residuals.append(r)
            new_state.append(s)
        return x, tuple(residuals), tuple(new_state)

    return Layer(init, forward_ctx, backward, name, init_state)
