"""Weight tying: one parameter array used in two places of a model, its gradient the sum of both uses.

``tie(model, source=..., target=...)`` wraps ``model`` so that the leaf of its params at ``target``
is not a parameter of its own but a copy of the leaf at ``source`` (transposed with
``transpose=True``). A GPT's output projection reuses the token embedding this way (llm.c, GPT-2)::

    gpt = tie(serial(Embedding(V, D), ..., LayerNorm(), Dense(V, bias=False)),
              source=(0, "E"), target=(-1, "W"), transpose=True)       # W = E^T: logits = h @ E^T

Forward: ``full = params`` with ``full[target] = E^T`` (``E = params[source]``), then
``model(full, x)``. Backward: the model's own backward gives a gradient for each use, and the
chain rule adds them (the multivariate chain rule: ``E`` reaches the loss along two paths)::

    dE = dfull[source] + dfull[target]^T

The tied params are the model's with the target leaf replaced by ``()`` (a pytree with no
leaves), so an optimiser sees one array and updates it once.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import jax.numpy as jnp

from bpjax import errors
from bpjax.combinators import container
from bpjax.core import Layer, backward_of, check_model, forward_of, init_of, is_contextual

Path = Tuple[Union[int, str], ...]


def _get(tree, path: Path):
    for k in path:
        tree = tree[k]
    return tree


def _set(tree, path: Path, value):
    """A copy of ``tree`` with the node at ``path`` replaced by ``value`` (tuples, lists and dicts rebuilt)."""
    if not path:
        return value
    k, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {**tree, k: _set(tree[k], rest, value)}
    items = list(tree)
    items[k] = _set(items[k], rest, value)  # type: ignore[index]
    return type(tree)(items) if isinstance(tree, list) else tuple(items)


def _resolve(where: str, tree, path, what: str, empty: bool = False) -> Path:
    """``path`` checked against ``tree``: every key exists and it ends at an array (at ``()`` when ``empty``, the
    target of tied params); negative indices made positive."""
    if isinstance(path, (str, int)) or not isinstance(path, Sequence) or not path:
        raise errors.BpjaxTypeError(where, f"{what} must be a non-empty tuple of keys and indices into the params, "
                                           f"e.g. (0, 'E'), got {path!r}")
    out, node = [], tree
    for k in path:
        if isinstance(node, dict) and k in node:
            out.append(k)
        elif isinstance(node, (tuple, list)) and isinstance(k, int) and -len(node) <= k < len(node):
            k = k % len(node)
            out.append(k)
        else:
            keys = sorted(node) if isinstance(node, dict) else \
                f"indices 0..{len(node) - 1}" if isinstance(node, (tuple, list)) else f"a leaf {type(node).__name__}"
            raise errors.BpjaxError(where, f"{what} {tuple(path)!r} does not exist in the params: at {tuple(out)!r} "
                                           f"expected one of {keys}, got {k!r}")
        node = node[k]
    if empty and not (isinstance(node, tuple) and node == ()):
        raise errors.BpjaxError(where, f"params do not match the tied model: expected () at the {what} "
                                       f"{tuple(out)!r} (the tied array lives at the source), got a "
                                       f"{type(node).__name__}")
    if not empty and not hasattr(node, "shape"):
        raise errors.BpjaxError(where, f"{what} {tuple(path)!r} must end at an array of the params, got a "
                                       f"{type(node).__name__}")
    return tuple(out)


def tie(model: Layer, *, source: Path, target: Path, transpose: bool = False, name: str | None = None) -> Layer:
    """``model`` with ``params[target]`` tied to ``params[source]`` (transposed with ``transpose=True``).

    Params: the model's, with the target leaf replaced by ``()``. State, residuals and the input
    and output shapes are the model's own.

    Forward / backward (``f = transpose`` or the identity, its own adjoint)::

        full = set(params, target, f(params[source]));  y = model(full, x)
        dfull, dx = model.backward(full, residuals, dy)
        dparams[source] = dfull[source] + f(dfull[target])    # both uses of one array

    Args:
      model: the model whose params hold both uses (e.g. ``serial(Embedding, ..., Dense)``).
      source: path to the shared array in ``model``'s params, keys and indices, e.g. ``(0, "E")``;
        negative tuple indices count from the end.
      target: path to the array that becomes a copy of the source, e.g. ``(-1, "W")``; its shape
        must be the source's (its transpose with ``transpose=True``) and its dtype the same.
      transpose: ``params[target] = params[source].T`` (a 2-D source).
      name: display name (default ``tie(<model>, source -> target)``).

    Examples:
      >>> lm = bp.serial(L.Embedding(5, 3), L.Dense(5, bias=False))     # ids -> vectors -> logits
      >>> tied = bp.tie(lm, source=(0, "E"), target=(-1, "W"), transpose=True)
      >>> out_shape, params = tied.init(jax.random.key(0), (2,))
      >>> params[0]["E"].shape, params[1]["W"]                          # W is E.T, stored once
      ((5, 3), ())
      >>> bp.predict(tied, params, jnp.array([[0, 4]])).shape
      (1, 2, 5)
    """
    check_model(model, "tie")
    arrow = f"{tuple(source)!r} -> {tuple(target)!r}{'^T' if transpose else ''}" \
        if isinstance(source, Sequence) and isinstance(target, Sequence) else ""
    name = name or f"tie({model.name}, {arrow})"
    f = (lambda a: a.T) if transpose else (lambda a: a)

    def check_pair(params, src, tgt):
        if src == tgt:
            raise errors.BpjaxError(name, f"source and target are the same leaf {src!r}: nothing to tie")
        a, b = _get(params, src), _get(params, tgt)
        if transpose and jnp.ndim(a) != 2:
            raise errors.BpjaxError(name, f"transpose=True needs a 2-D source, got shape {tuple(jnp.shape(a))}")
        want = tuple(jnp.shape(a))[::-1] if transpose else tuple(jnp.shape(a))
        if tuple(jnp.shape(b)) != want or jnp.result_type(a) != jnp.result_type(b):
            raise errors.BpjaxError(name, f"the target {tgt!r} must have shape {want} and dtype "
                                          f"{jnp.result_type(a)} to be tied to the source {src!r}"
                                          f"{' (transposed)' if transpose else ''}, got shape "
                                          f"{tuple(jnp.shape(b))} and dtype {jnp.result_type(b)}")

    def paths(params):
        """``(source, target)`` resolved against tied params (``()`` at the target)."""
        return _resolve(name, params, source, "source"), _resolve(name, params, target, "target", empty=True)

    def full(params, src, tgt):
        """The model's params with the target filled in from the source: ``full[target] = f(params[source])``."""
        return _set(params, tgt, f(_get(params, src)))

    def init_fn(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        with errors.context(name):
            shape, params = init_of(model, key, input_shape)
        src, tgt = _resolve(name, params, source, "source"), _resolve(name, params, target, "target")
        check_pair(params, src, tgt)
        return shape, _set(params, tgt, ())

    def init_state(key, input_shape):
        with errors.context(name):
            return init_of(model, key, input_shape, state=True)

    def forward_with(params, x, state, key, train):
        src, tgt = paths(params)
        with errors.context(name):
            return forward_of(model, full(params, src, tgt), x, state=state, key=key, train=train)

    def backward(params, residuals, dy):
        src, tgt = paths(params)
        with errors.context(name):
            dfull, dx = backward_of(model, full(params, src, tgt), residuals, dy)
        # in the forward pass this was: full[target] = f(params[source]), so both uses add up
        dsource = _get(dfull, src) + f(_get(dfull, tgt))
        return _set(_set(dfull, tgt, ()), src, dsource), dx

    return container(name, init_fn, forward_with, backward, (model,), init_state if is_contextual(model) else None,
                     kind="tie")
