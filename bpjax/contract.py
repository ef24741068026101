"""The layer contract, checked where it is used: ``init``, ``forward`` and ``backward`` return what they promise.

Every container and every gradient function runs a layer through :func:`init`, :func:`bpjax.apply`
and :func:`vjp` below, never by calling its functions bare, so a custom layer that breaks the
contract is named at once, with the expected and the received::

    init(key, input_shape)          -> (output_shape, params)
    forward(params, x)              -> (y, residuals)            (contextual: (y, residuals, new_state))
    backward(params, residuals, dy) -> (dparams, dx)

``dparams`` must have the tree structure, shapes and dtypes of ``params`` and ``dx`` the shape and
dtype of ``x`` (an integer input, e.g. token ids, gets no gradient: its ``dx`` is not checked).
Shapes and dtypes are static, so every check runs once while JAX traces and costs nothing per
step of a compiled program.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import errors


def _shape(a) -> tuple:
    return tuple(a.shape) if hasattr(a, "shape") else tuple(np.shape(a))


def _dtype(a):
    return a.dtype if hasattr(a, "dtype") else jnp.result_type(a)


def describe(value) -> str:
    """A short description of a returned value for an error message: ``an array of shape (8, 3) and dtype float32``."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {_shape(value)} and dtype {_dtype(value)}"
    if isinstance(value, tuple):
        return f"a tuple of length {len(value)}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    return "None" if value is None else f"a {type(value).__name__}"


_HINTS = {
    ("init", 2): {dict: " (params alone? init returns the output shape too)"},
    ("forward", 2): {"array": " (the residuals the backward needs are missing)",
                     3: " (a simple layer returns no new_state; give it init_state to make it contextual)"},
    ("forward", 3): {"array": " (the residuals the backward needs, and the new state, are missing)",
                     2: " (a contextual layer also returns its new state, e.g. the state it was given)"},
    ("backward", 2): {"array": " (dparams first, then dx)"},
}


def _pair(where: str, out, what: str, names: str, n: int = 2):
    if not isinstance(out, tuple) or len(out) != n:
        hints = _HINTS.get((what, n), {})
        kind = len(out) if isinstance(out, tuple) else "array" if hasattr(out, "shape") else type(out)
        raise errors.BpjaxError(where, f"{what} must return {names}, got {describe(out)}{hints.get(kind, '')}")  # type: ignore[attr-defined]
    return out


def init_output(where: str, out) -> tuple:
    """``out`` of ``layer.init`` must be ``(output_shape, params)``."""
    shape, params = _pair(where, out, "init", "(output_shape, params)")
    if not isinstance(shape, (tuple, list)):
        raise errors.BpjaxError(where, f"init must return (output_shape, params) with output_shape a tuple of ints "
                                       f"(one example, no batch axis), got output_shape {shape!r:.80}")
    return tuple(shape), params


def forward_output(where: str, out, contextual: bool) -> tuple:
    """``out`` of ``layer.forward`` must be ``(y, residuals)`` (contextual layers: ``(y, residuals, new_state)``)."""
    if contextual:
        return _pair(where, out, "forward", "(y, residuals, new_state)", 3)
    return _pair(where, out, "forward", "(y, residuals)")


def _paths(tree) -> set:
    return {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def _check_like(where: str, what: str, got, like) -> None:
    """``got`` has the structure of ``like``, and each leaf its shape and (inexact) dtype."""
    of = "params" if what == "dparams" else "the input"
    s_got, s_like = jax.tree.structure(got), jax.tree.structure(like)
    if s_got != s_like:  # type: ignore[operator]
        missing, extra = sorted(_paths(like) - _paths(got)), sorted(_paths(got) - _paths(like))
        detail = "".join([f"; missing {what}{', '.join(missing)}" if missing else "",
                          f"; not in {of}: {what}{', '.join(extra)}" if extra else ""])
        raise errors.BpjaxError(where, f"backward returned {what} with structure {s_got}, expected the structure "
                                       f"of {of} {s_like}{detail}")
    for (path, g), l in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(like)):
        lt = _dtype(l)
        if not jnp.issubdtype(lt, jnp.inexact):
            continue  # integer inputs (ids) and integer params get no gradient
        leaf = what + jax.tree_util.keystr(path)
        mine = f"params{jax.tree_util.keystr(path)}" if what == "dparams" else \
            f"its input{' ' + jax.tree_util.keystr(path) if path else ''}"
        if _shape(g) != _shape(l):
            hint = " (transposed?)" if _shape(g) == _shape(l)[::-1] and len(_shape(l)) > 1 else ""
            raise errors.BpjaxError(where, f"backward returned {leaf} of shape {_shape(g)}, expected "
                                           f"{_shape(l)} (the shape of {mine}){hint}")
        if _dtype(g) != lt:
            raise errors.BpjaxTypeError(where, f"backward returned {leaf} of dtype {_dtype(g)}, expected "
                                               f"{lt} (the dtype of {mine})")


def backward_output(where: str, out, params, like_x: Any = None) -> tuple:
    """``out`` of ``layer.backward`` must be ``(dparams, dx)`` mirroring ``params`` and (when given) ``like_x``."""
    dparams, dx = _pair(where, out, "backward", "(dparams, dx)")
    _check_like(where, "dparams", dparams, params)
    if like_x is not None:
        _check_like(where, "dx", dx, like_x)
    return dparams, dx


def like(x):
    """Zero-size stand-ins for the arrays of ``x``: ``(0, *shape)`` of the same dtype, no bytes, jit- and vmap-safe.

    A container keeps them beside its residuals so that its backward can check each child's ``dx``. They are
    numpy constants, so tracing them adds no operation to the program.
    """
    return jax.tree.map(lambda a: np.zeros((0, *_shape(a)), _dtype(a)), x)


def unlike(likes):
    """Shape/dtype structs of the arrays that :func:`like` stood in for."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), likes)
