"""Branching combinators: ``Residual``, ``parallel``, ``fan_out``, ``fan_in_sum``, ``fan_in_concat``.

Values that branch are tuples of arrays, as in stax: ``fan_out(n)`` turns ``x`` into ``(x,) * n``,
``parallel`` runs one layer on each entry, ``fan_in_sum``/``fan_in_concat`` merge them back. For a
tuple-valued input, ``init``'s ``input_shape`` is the tuple of the entries' shapes (each without the
batch axis). A ResNet block::

    serial(fan_out(2), parallel(serial(Dense(d), Relu(), Dense(d)), Identity()), fan_in_sum())

is the same function as ``Residual(serial(Dense(d), Relu(), Dense(d)))``. Containers are contextual
when any child is; they then split the key once per child and thread each child's state, like
:func:`bpjax.serial`.
"""

from __future__ import annotations

import jax.numpy as jnp

from bpjax import contract, errors
from bpjax.combinators import check_layers, check_params, container
from bpjax.core import Layer, backward_of, forward_of, init_of, is_contextual, split_key


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

    def run(params, x, state, key, train):
        with errors.context("Residual"):
            fx, residuals, new_state = forward_of(block, params, x, state=state, key=key, train=train)
        check_shape(jnp.shape(x), jnp.shape(fx))
        return x + fx, residuals, new_state

    def backward(params, residuals, dy):
        # in the forward pass this was: y = x + block(x)
        with errors.context("Residual"):
            dparams, dx_block = backward_of(block, params, residuals, dy, dy)  # dx_block: the shape of x, so of dy
        return dparams, dy + dx_block

    return container(name, init_fn, run, backward, (block,), init_state if is_contextual(block) else None,
                     kind="Residual")


def parallel(*layers: Layer, name: str | None = None) -> Layer:
    """Apply ``layers[i]`` to ``x[i]``: ``(x_0, ..., x_{n-1}) -> (y_0, ..., y_{n-1})`` (stax's ``parallel``).

    Params, state and residuals are tuples with one entry per layer; ``input_shape`` is a tuple of
    ``n`` shapes. Backward: ``dparams_i, dx_i = layer_i.backward(params_i, residuals_i, dy_i)``.
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

    def run(params, xs, state, key, train):
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
    return container(name, lambda key, shape: init_with(key, shape, False), run, backward, layers,
                     (lambda key, shape: init_with(key, shape, True)) if contextual else None, kind="parallel")


def fan_out(n: int) -> Layer:
    """``x -> (x,) * n``; backward sums the branches' cotangents: ``dx = dy_0 + ... + dy_{n-1}``."""
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
    """``(x_0, ..., x_{n-1}) -> x_0 + ... + x_{n-1}`` (equal shapes); backward ``dx_i = dy`` for every i."""
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
