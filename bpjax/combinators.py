"""Combinators: build models out of layers. ``serial`` runs forward in order and backward in reverse.

:func:`serial_forward` and :func:`serial_backward` are ``serial``'s two loops (and its one key
split), written once: ``serial`` is built from them, and everything that walks a serial stack
layer by layer (``bp.diagnostics``, ``bp.rules.DFA``, the gradient checker's per-layer sweep)
calls them instead of a copy.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from bpjax import contract, errors
from bpjax.core import Layer, backward_of, forward_of, init_of, is_contextual, split_key


def check_params(where: str, params, n: int, what: str = "params") -> None:
    """``params`` (or a container's ``state``) must be the tuple ``init`` returned, one entry per child.

    A list of the right length is refused too, with the fix: its gradients would come back as a tuple,
    which optax and ``jax.tree.map`` would not pair with the list.
    """
    if type(params) is tuple and len(params) == n:
        return
    if isinstance(params, list) and len(params) == n:
        raise errors.BpjaxTypeError(where, f"{what} must be the tuple init returned, one entry per layer: expected "
                                           f"a tuple of {n} per-layer {what}, got a list (pass tuple({what}))")
    got = f"a {type(params).__name__} of length {len(params)}" if isinstance(params, (tuple, list)) \
        else f"a {type(params).__name__}"
    raise errors.BpjaxError(where, f"{what} do not match the model: expected a tuple of {n} "
                                   f"per-layer {what}, got {got}")


def check_layers(where: str, layers: Sequence) -> tuple:
    """At least one child, each a :class:`Layer` (a forgotten call, ``Relu`` for ``Relu()``, is named)."""
    layers = tuple(layers)
    if not layers:
        raise errors.BpjaxError(where, "expected at least one layer, got none")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = (" (did you forget to call it, e.g. Relu()? A JAX function apply(params, x) -> y becomes a "
                    "layer with bp.layers.Autodiff(apply, init))" if callable(layer) else "")
            raise errors.BpjaxTypeError(where, f"argument {i} is a {type(layer).__name__}, expected a "
                                               f"bpjax Layer{hint}")
    return layers


def container(name: str, init_fn: Callable, run: Callable, backward: Callable, children: tuple,
              init_state: Optional[Callable] = None, *, kind: str) -> Layer:
    """A container :class:`Layer` of ``kind`` from ``run(params, x, state, key, train) -> (y, residuals, new_state)``.

    The container is contextual exactly when ``init_state`` is given (some child is contextual);
    otherwise its ``forward(params, x)`` runs ``run`` with no state and no key.
    """
    if init_state is None:
        def forward(params, x):
            y, residuals, _ = run(params, x, (), None, True)
            return y, residuals

        return Layer(init_fn, forward, backward, name, None, children, kind)

    def forward_ctx(params, x, *, state, key, train):
        return run(params, x, state, key, train)

    return Layer(init_fn, forward_ctx, backward, name, init_state, children, kind)


def serial_forward(layers: Sequence[Layer], params, x, state, key, train: bool, *, keep_outputs: bool = False):
    """``a_l = layer_l(a_{l-1})`` for ``l = 0..n-1`` with ``a_{-1} = x``, the key split once per layer.

    Returns ``(y, residuals, new_state)`` where ``residuals = (per-layer residuals, per-layer input
    stand-ins)`` (:func:`bpjax.contract.like`: zero-size arrays that let the backward check each
    ``dx``); with ``keep_outputs`` also the tuple of every layer's output ``a_l``.
    """
    n = len(layers)
    state = ((),) * n if isinstance(state, tuple) and not state else state
    residuals, likes, new_state, outputs = [], [], [], []
    for i, (layer, p, s, k) in enumerate(zip(layers, params, state, split_key(key, n))):
        with errors.context(f"serial[{i}]"):
            likes.append(contract.like(x))
            x, r, s = forward_of(layer, p, x, state=s, key=k, train=train)
        residuals.append(r)
        new_state.append(s)
        outputs.append(x)
    out = (x, (tuple(residuals), tuple(likes)), tuple(new_state))
    return (*out, tuple(outputs)) if keep_outputs else out


def serial_backward(layers: Sequence[Layer], params, residuals, dy, *, after: Optional[Callable] = None):
    """Backward of :func:`serial_forward`, in the reverse order of the forward pass.

    ``dparams_l, da_{l-1} = layer_l.backward(params_l, residuals_l, da_l)`` from ``da_{n-1} = dy``.
    ``after(l, da_{l-1}) -> da_{l-1}``, when given, sees (and may replace) the gradient each layer
    hands down: the hook of direct feedback alignment and of per-layer diagnostics.

    Returns ``(dparams, dx)``.
    """
    rs, likes = residuals
    n = len(layers)
    dparams = [None] * n
    for i in reversed(range(n)):  # go in the reverse order of the forward pass
        with errors.context(f"serial[{i}]"):
            dparams[i], dy = backward_of(layers[i], params[i], rs[i], dy, contract.unlike(likes[i]))
        if after is not None:
            dy = after(i, dy)
    return tuple(dparams), dy


def serial(*layers: Layer, name: str | None = None) -> Layer:
    """Compose layers in sequence: ``a_l = layer_l(a_{l-1})``.

    Params (and state) are tuples with one entry per layer. Backward goes in the reverse order of
    the forward pass: ``dparams_l, da_{l-1} = layer_l.backward(params_l, residuals_l, da_l)``.
    ``model.children`` is the tuple of layers.

    Args:
      *layers: the layers, first to last.
      name: shown in errors and reports; defaults to ``serial(Dense(100), Relu, ...)``.
    """
    layers = check_layers("serial", layers)
    n = len(layers)
    name = name or "serial(" + ", ".join(layer.name for layer in layers) + ")"
    contextual = any(is_contextual(layer) for layer in layers)

    def init_with(key, input_shape, with_state):
        key, shape = errors.init_arguments(f"{name}.{'init_state' if with_state else 'init'}", key, input_shape)
        values = []
        for i, (layer, k) in enumerate(zip(layers, split_key(key, n))):
            with errors.context(f"serial[{i}]"):
                shape, v = init_of(layer, k, shape, state=with_state)
            values.append(v)
        return shape, tuple(values)

    def run(params, x, state, key, train):
        check_params(name, params, n)
        if contextual:
            check_params(name, state, n, "state")
        return serial_forward(layers, params, x, state, key, train)

    def backward(params, residuals, dy):  # params checked by the forward
        return serial_backward(layers, params, residuals, dy)

    return container(name, lambda key, shape: init_with(key, shape, False), run, backward, layers,
                     (lambda key, shape: init_with(key, shape, True)) if contextual else None, kind="serial")
