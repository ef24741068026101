"""Combinators: build models out of layers. ``serial`` runs forward in order and backward in reverse;
``Residual``, ``parallel``, ``fan_out``, ``fan_in_sum`` and ``fan_in_concat`` branch and merge.

:func:`serial_forward` and :func:`serial_backward` are ``serial``'s two loops (and its one key
split), written once: ``serial`` is built from them, and everything that walks a serial stack
layer by layer (``bp.diagnostics``, ``bp.rules.DFA``, the gradient checker's per-layer sweep)
calls them instead of a copy.

Values that branch are tuples of arrays, as in stax: ``fan_out(n)`` turns ``x`` into ``(x,) * n``,
``parallel`` runs one layer on each entry, ``fan_in_sum``/``fan_in_concat`` merge them back. For a
tuple-valued input, ``init``'s ``input_shape`` is the tuple of the entries' shapes (each without the
batch axis). A ResNet block::

    serial(fan_out(2), parallel(serial(Dense(d), Relu(), Dense(d)), Identity()), fan_in_sum())

is the same function as ``Residual(serial(Dense(d), Relu(), Dense(d)))``. Containers are contextual
when any child is; they then split the key once per child and thread each child's state.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax.numpy as jnp

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


def container(name: str, init_fn: Callable, forward_with: Callable, backward: Callable, children: tuple,
              init_state: Optional[Callable] = None, *, kind: str) -> Layer:
    """A container :class:`Layer` of ``kind`` from its forward with the context,
    ``forward_with(params, x, state, key, train) -> (y, residuals, new_state)``.

    The container is contextual exactly when ``init_state`` is given (some child is contextual);
    otherwise its ``forward(params, x)`` runs ``forward_with`` with no state and no key.
    """
    if init_state is None:
        def forward(params, x):
            y, residuals, _ = forward_with(params, x, (), None, True)
            return y, residuals

        return Layer(init_fn, forward, backward, name, None, children, kind)

    def forward_ctx(params, x, *, state, key, train):
        return forward_with(params, x, state, key, train)

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

    Examples:
      >>> model = bp.serial(L.Dense(8), L.Relu(), L.Dense(2))
      >>> out_shape, params = model.init(jax.random.key(0), (3,))
      >>> out_shape, len(params), bp.predict(model, params, jnp.ones((4, 3))).shape
      ((2,), 3, (4, 2))
      >>> model.name
      'serial(Dense(8), Relu, Dense(2))'
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

    def forward_with(params, x, state, key, train):
        check_params(name, params, n)
        if contextual:
            check_params(name, state, n, "state")
        return serial_forward(layers, params, x, state, key, train)

    def backward(params, residuals, dy):  # params checked by the forward
        return serial_backward(layers, params, residuals, dy)

    return container(name, lambda key, shape: init_with(key, shape, False), forward_with, backward, layers,
                     (lambda key, shape: init_with(key, shape, True)) if contextual else None, kind="serial")


# ----------------------------------------------------------------------------------------------
# branching: Residual, parallel, fan_out, fan_in_sum, fan_in_concat


def _is_shape(s) -> bool:
    return isinstance(s, (tuple, list)) and all(isinstance(d, int) for d in s)


def _check_shapes(where, input_shape, n=None) -> tuple:
    """``input_shape`` must be a tuple of ``n`` (any n >= 1 when None) per-example shapes."""
    if not isinstance(input_shape, (tuple, list)) or not input_shape or not all(map(_is_shape, input_shape)) \
            or (n is not None and len(input_shape) != n):
        want = f"{n} shapes" if n is not None else "shapes"
        raise errors.BpjaxError(where, f"expected a tuple of {want} as input_shape (one per branch, "
                                       f"e.g. from fan_out), got {input_shape!r}")
    return tuple(tuple(s) for s in input_shape)


def _check_tuple(where, xs, n=None, what="input") -> None:
    if not isinstance(xs, (tuple, list)) or not xs or (n is not None and len(xs) != n):
        got = f"a {type(xs).__name__} of length {len(xs)}" if isinstance(xs, (tuple, list)) \
            else f"a {type(xs).__name__} of shape {tuple(jnp.shape(xs))}"
        want = f"a tuple of {n} arrays" if n is not None else "a tuple of arrays"
        raise errors.BpjaxError(where, f"expected {want} as {what} (one per branch), got {got}")


def Residual(block: Layer, *, name: str | None = None) -> Layer:
    """``y = x + block(x)``, the skip connection of a ResNet.

    Params, state and residuals are the block's own. Backward: the skip path passes ``dy``
    straight through and the block path adds its own input gradient::

        dparams, dx_block = block.backward(params, residuals, dy)
        dx = dy + dx_block

    The block must keep the shape: ``input_shape -> input_shape``.

    Examples:
      >>> block = bp.Residual(bp.serial(L.Dense(3), L.Relu()))
      >>> out_shape, params = block.init(jax.random.key(0), (3,))
      >>> out_shape, bp.predict(block, params, jnp.ones((4, 3))).shape
      ((3,), (4, 3))
    """
    check_layers("Residual", (block,))
    name = name or f"Residual({block.name})"

    def check_shape(x_shape, y_shape):
        if tuple(y_shape) != tuple(x_shape):
            raise errors.BpjaxError(name, f"the block must keep the shape for y = x + block(x): input shape "
                                          f"{tuple(x_shape)}, block output shape {tuple(y_shape)}")

    def init_fn(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        with errors.context("Residual"):
            out, params = init_of(block, key, input_shape)
        check_shape(input_shape, out)
        return tuple(input_shape), params

    def init_state(key, input_shape):
        with errors.context("Residual"):
            out, state = init_of(block, key, input_shape, state=True)
        check_shape(input_shape, out)
        return tuple(input_shape), state

    def forward_with(params, x, state, key, train):
        with errors.context("Residual"):
            fx, residuals, new_state = forward_of(block, params, x, state=state, key=key, train=train)
        check_shape(jnp.shape(x), jnp.shape(fx))
        return x + fx, residuals, new_state

    def backward(params, residuals, dy):
        # in the forward pass this was: y = x + block(x)
        with errors.context("Residual"):
            dparams, dx_block = backward_of(block, params, residuals, dy, dy)  # dx_block: the shape of x, so of dy
        return dparams, dy + dx_block

    return container(name, init_fn, forward_with, backward, (block,), init_state if is_contextual(block) else None,
                     kind="Residual")


def parallel(*layers: Layer, name: str | None = None) -> Layer:
    """Apply ``layers[i]`` to ``x[i]``: ``(x_0, ..., x_{n-1}) -> (y_0, ..., y_{n-1})`` (stax's ``parallel``).

    Params, state and residuals are tuples with one entry per layer; ``input_shape`` is a tuple of
    ``n`` shapes. Backward: ``dparams_i, dx_i = layer_i.backward(params_i, residuals_i, dy_i)``.

    Examples:
      >>> model = bp.parallel(L.Dense(2), L.Dense(5))
      >>> out_shape, params = model.init(jax.random.key(0), ((3,), (4,)))
      >>> y0, y1 = bp.predict(model, params, (jnp.ones((6, 3)), jnp.ones((6, 4))))
      >>> out_shape, y0.shape, y1.shape
      (((2,), (5,)), (6, 2), (6, 5))
    """
    layers = check_layers("parallel", layers)
    n = len(layers)
    name = name or "parallel(" + ", ".join(layer.name for layer in layers) + ")"

    def init_with(key, input_shape, contextual):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        shapes = _check_shapes(name, input_shape, n)
        outs, values = [], []
        for i, (layer, k, s) in enumerate(zip(layers, split_key(key, n), shapes)):
            with errors.context(f"parallel[{i}]"):
                out, v = init_of(layer, k, s, state=contextual)
            outs.append(out)
            values.append(v)
        return tuple(outs), tuple(values)

    def forward_with(params, xs, state, key, train):
        _check_tuple(name, xs, n)
        check_params(name, params, n)
        state = ((),) * n if isinstance(state, tuple) and not state else state
        check_params(name, state, n, "state")
        ys, residuals, new_state = [], [], []
        for i, (layer, p, x, s, k) in enumerate(zip(layers, params, xs, state, split_key(key, n))):
            with errors.context(f"parallel[{i}]"):
                y, r, s = forward_of(layer, p, x, state=s, key=k, train=train)
            ys.append(y)
            residuals.append(r)
            new_state.append(s)
        return tuple(ys), (tuple(residuals), contract.like(tuple(xs))), tuple(new_state)

    def backward(params, saved, dys):
        _check_tuple(name, dys, n, "cotangent dy")
        residuals, likes = saved
        dparams, dxs = [], []
        for i, (layer, p, r, dy, lk) in enumerate(zip(layers, params, residuals, dys, likes)):
            with errors.context(f"parallel[{i}]"):
                dp, dx = backward_of(layer, p, r, dy, contract.unlike(lk))
            dparams.append(dp)
            dxs.append(dx)
        return tuple(dparams), tuple(dxs)

    contextual = any(is_contextual(layer) for layer in layers)
    return container(name, lambda key, shape: init_with(key, shape, False), forward_with, backward, layers,
                     (lambda key, shape: init_with(key, shape, True)) if contextual else None, kind="parallel")


def fan_out(n: int) -> Layer:
    """``x -> (x,) * n``; backward sums the branches' cotangents: ``dx = dy_0 + ... + dy_{n-1}``.

    Examples:
      >>> model = bp.serial(bp.fan_out(2), bp.parallel(L.Dense(4), L.Relu()))
      >>> out_shape, params = model.init(jax.random.key(0), (3,))
      >>> out_shape
      ((4,), (3,))
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise errors.BpjaxError("fan_out", f"n must be a positive int, got {n!r}")
    name = f"fan_out({n})"

    def init(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        if not _is_shape(input_shape):
            raise errors.BpjaxError(name, f"expected a single input shape, got {input_shape!r}")
        return (tuple(input_shape),) * n, ()

    def forward(params, x):
        if isinstance(x, (tuple, list)):
            raise errors.BpjaxError(name, f"expected one array as input, got a {type(x).__name__} of length {len(x)}")
        return (x,) * n, ()

    def backward(params, residuals, dys):
        _check_tuple(name, dys, n, "cotangent dy")
        dx = dys[0]
        for dy in dys[1:]:  # in the forward pass each branch got the same x: its gradients add up
            dx = dx + dy
        return (), dx

    return Layer(init, forward, backward, name)


def fan_in_sum() -> Layer:
    """``(x_0, ..., x_{n-1}) -> x_0 + ... + x_{n-1}`` (equal shapes); backward ``dx_i = dy`` for every i.

    Examples:
      >>> branches = bp.serial(bp.fan_out(2), bp.parallel(L.Dense(4), L.Dense(4)), bp.fan_in_sum())
      >>> out_shape, params = branches.init(jax.random.key(0), (3,))
      >>> out_shape, bp.predict(branches, params, jnp.ones((2, 3))).shape
      ((4,), (2, 4))
    """
    name = "fan_in_sum"

    def init(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        shapes = _check_shapes(name, input_shape)
        if len(set(shapes)) != 1:
            raise errors.BpjaxError(name, f"expected equal input shapes, got {shapes}")
        return shapes[0], ()

    def forward(params, xs):
        _check_tuple(name, xs)
        shapes = [tuple(jnp.shape(x)) for x in xs]
        if len(set(shapes)) != 1:
            raise errors.BpjaxError(name, f"expected inputs of equal shape, got shapes {shapes}")
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        # residual: one zero-size array per input, to know n (and the dtypes) in the backward
        return y, tuple(jnp.zeros((0,), jnp.result_type(x)) for x in xs)

    def backward(params, likes, dy):
        return (), tuple(dy.astype(like.dtype) for like in likes)

    return Layer(init, forward, backward, name)


def fan_in_concat(axis: int = -1) -> Layer:
    """Concatenate a tuple of arrays along ``axis`` (an axis of the batched arrays, not the batch axis 0).

    ``x_i: (B, ..., d_i, ...) -> y: (B, ..., d_0 + ... + d_{n-1}, ...)``; backward splits ``dy``
    back into pieces of sizes ``d_i`` along ``axis``.

    Examples:
      >>> branches = bp.serial(bp.fan_out(2), bp.parallel(L.Dense(4), L.Dense(5)), bp.fan_in_concat())
      >>> out_shape, params = branches.init(jax.random.key(0), (3,))
      >>> out_shape, bp.predict(branches, params, jnp.ones((2, 3))).shape
      ((9,), (2, 9))
    """
    if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
        raise errors.BpjaxError("fan_in_concat", f"axis must be a non-batch axis (an int other than 0), got {axis!r}")
    name = f"fan_in_concat({axis})"

    def init(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        shapes = _check_shapes(name, input_shape)
        rank = len(shapes[0]) + 1
        if not -rank <= axis < rank or len({len(s) for s in shapes}) != 1:
            raise errors.BpjaxError(name, f"axis {axis} does not fit input shapes {shapes} (plus the batch axis)")
        ax = axis % rank - 1  # the axis in per-example shapes
        rest = {s[:ax] + s[ax + 1:] for s in shapes}
        if len(rest) != 1:
            raise errors.BpjaxError(name, f"input shapes must agree off axis {axis}, got {shapes}")
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return tuple(out), ()

    def forward(params, xs):
        _check_tuple(name, xs)
        shapes = [tuple(jnp.shape(x)) for x in xs]
        ndim = len(shapes[0])
        if not -ndim <= axis < ndim or axis % ndim == 0 or len({len(s) for s in shapes}) != 1:
            raise errors.BpjaxError(name, f"axis {axis} does not fit input shapes {shapes} (axis 0 is the batch)")
        ax = axis % ndim
        if len({s[:ax] + s[ax + 1:] for s in shapes}) != 1:
            raise errors.BpjaxError(name, f"input shapes must agree off axis {axis}, got {shapes}")
        # residual: zero-size arrays (0, d_i) that carry each piece's size (and dtype) to the backward
        return jnp.concatenate(xs, axis=ax), tuple(jnp.zeros((0, s[ax]), jnp.result_type(x))
                                                   for s, x in zip(shapes, xs))

    def backward(params, likes, dy):
        # in the forward pass this was: y = concatenate(x_0, ..., x_{n-1}); now cut dy at the same places
        ends, total = [], 0
        for like in likes[:-1]:
            total += like.shape[1]
            ends.append(total)
        return (), tuple(d.astype(like.dtype) for d, like in zip(jnp.split(dy, ends, axis=axis), likes))

    return Layer(init, forward, backward, name)
