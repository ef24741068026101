"""Row names by layer path: ``serial[2] Swish: beta``, found by walking a model's ``children``.

``serial`` and ``parallel`` keep one params entry per child, so their leaves belong to the child at
that index; every other layer (a leaf layer, or a container such as ``Residual`` that passes its
block's params through) names its leaves itself: ``Residual(...): [0].W``.
"""

from __future__ import annotations

from typing import List

import jax
from jax.tree_util import DictKey, GetAttrKey, SequenceKey

from bpjax.core import Layer

PER_CHILD = ("serial", "parallel")


def kind(layer: Layer) -> str:
    """The constructor a layer came from, read off its backward (``serial``, ``parallel``, ``Residual``, ...)."""
    return getattr(layer.backward, "__qualname__", "").split(".")[0]


def per_child(layer: Layer, params) -> bool:
    """True when ``params`` holds one entry per child of ``layer`` (a ``serial`` or a ``parallel``)."""
    return kind(layer) in PER_CHILD and isinstance(params, (tuple, list)) and len(params) == len(layer.children) > 0


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


def labels(layer: Layer, params, where: str = "") -> List[str]:
    """One label per leaf of ``params`` (in ``jax.tree.leaves`` order): ``"<layer path> <name>: <leaf>"``."""
    if per_child(layer, params):
        out: List[str] = []
        for i, (child, p) in enumerate(zip(layer.children, params)):
            out += labels(child, p, f"{where}{kind(layer)}[{i}] ")
        return out
    return [f"{where}{layer.name}: {leaf_name(path)}" for path, _ in jax.tree_util.tree_leaves_with_path(params)]
