"""The compiled programs of ``fit``, kept between calls (least recently used dropped)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

import jax

from bpjax.train.loop import Plan, make_chunk

_CACHE: "OrderedDict[Any, Callable]" = OrderedDict()
CACHE_SIZE = 32


def compiled_chunk(plan: Plan, length: int, batched: int):
    """The jitted chunk of ``length`` steps (vmapped when ``batched``), kept between calls.

    The cache key is ``("chunk", plan, length, batched != 0)``: the same model, loss, optimizer, backward,
    batching, metrics and options reuse the jitted function, and ``jax.jit`` then reuses its
    compiled program for the same argument shapes, dtypes and shardings. At most ``CACHE_SIZE``
    entries are kept (least recently used dropped). A plan with an unhashable part is never cached.
    """
    def build():
        fn = make_chunk(plan, length)
        return jax.jit(jax.vmap(fn, in_axes=(0, 0, 0, None, None, None)) if batched else fn)

    return cached(("chunk", plan, length, bool(batched)), build)


def cached(key, build):
    """``_CACHE[key]``, made by ``build()`` on a miss; an unhashable key builds anew every time."""
    try:
        fn = _CACHE.get(key)
    except TypeError:  # an unhashable part (e.g. a metric object): compile for this call only
        return build()
    if fn is not None:
        _CACHE.move_to_end(key)
        return fn
    fn = _CACHE[key] = build()
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return fn


def clear_cache() -> None:
    """Forget every compiled program kept by ``fit`` and ``fit_many`` (the next call compiles anew).

    Examples:
      >>> bp.train.clear_cache()                   # the next fit compiles its program anew
    """
    _CACHE.clear()
