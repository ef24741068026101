"""Row names by layer path: ``serial[2] Swish: beta``, found by walking a model's ``children``.

``serial`` and ``parallel`` keep one params entry per child, so their leaves belong to the child at
that index; every other layer (a leaf layer, or a container such as ``Residual`` that passes its
block's params through) names its leaves itself: ``Residual(...): [0].W``. The same walk says whose
backward computed each row (:func:`backwards`): a hand-written one, or JAX's in an ``Autodiff`` layer.
"""

from __future__ import annotations

from typing import List

import jax
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from bpjax.core import Layer
from bpjax.gradcheck.report import BOTH, HAND_WRITTEN, JAX_VJP

PER_CHILD = ("serial", "parallel")


def per_child(layer: Layer, params) -> bool:
    """True when ``params`` holds one entry per child of ``layer`` (a ``serial`` or a ``parallel``)."""
    return layer.kind in PER_CHILD and isinstance(params, (tuple, list)) and len(params) == len(layer.children) > 0


def _key(k) -> str:
    if isinstance(k, DictKey):
        return f".{k.key}"
    if isinstance(k, SequenceKey):
        return f"[{k.idx}]"
    if isinstance(k, GetAttrKey):
        return f".{k.name}"
    return str(k)


def leaf_name(path) -> str:
    """``W`` for ``['W']``, ``[0].W`` for ``[0]['W']``; ``params`` for a bare array."""
    return "".join(map(_key, path)).lstrip(".") or "params"


def labels(layer: Layer, params, prefix: str = "") -> List[str]:
    """One label per leaf of ``params`` (in ``jax.tree.leaves`` order): ``"<layer path> <name>: <leaf>"``."""
    if per_child(layer, params):
        out: List[str] = []
        for i, (child, p) in enumerate(zip(layer.children, params)):
            out += labels(child, p, f"{prefix}{layer.kind}[{i}] ")
        return out
    return [f"{prefix}{layer.name}: {leaf_name(path)}" for path, _ in jax.tree_util.tree_leaves_with_path(params)]


def whose_backward(layer: Layer) -> str:
    """Whose backward ``layer`` runs: ``"jax.vjp"`` when every layer at the bottom of it is an ``Autodiff``,
    ``"hand-written"`` when none is, ``"both"`` otherwise."""
    if not layer.children:
        return JAX_VJP if layer.kind == "Autodiff" else HAND_WRITTEN
    kinds = {whose_backward(child) for child in layer.children}
    return kinds.pop() if len(kinds) == 1 else BOTH


def backwards(layer: Layer, params, x) -> List[str]:
    """One :func:`whose_backward` per leaf of ``(params, x)``: a parameter's is its layer's, the input's the model's."""
    def of_params(layer, params) -> List[str]:
        if per_child(layer, params):
            return [b for child, p in zip(layer.children, params) for b in of_params(child, p)]
        return [whose_backward(layer)] * len(jax.tree.leaves(params))

    return of_params(layer, params) + [whose_backward(layer)] * len(jax.tree.leaves(x))
