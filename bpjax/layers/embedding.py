"""Embedding lookup ``y = E[ids]`` and its scatter-add backward ``dE[ids] += dy``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import errors
from bpjax.core import Layer
from bpjax.initializers import Initializer, initializer, param_dtype


def Embedding(vocab: int, features: int, *, init: Initializer = "normal", stddev: float = 1.0, dtype=None,
              name: str | None = None) -> Layer:
    """A table of ``vocab`` vectors of width ``features``, indexed by integer ids.

    Forward: ``ids: (B, ...)`` integers in ``[0, vocab)``, ``E: (vocab, features)``,
    ``y = E[ids]: (B, ..., features)``.

    Backward: ``dE = zeros(vocab, features).at[ids].add(dy)`` (a scatter-add: an id that occurs k times
    receives the sum of its k cotangent rows); the ids are integers, so ``dx`` is a ``float0``
    zeros array of ``ids``'s shape (JAX's cotangent type for integer inputs).

    Out-of-range ids raise a :class:`~bpjax.errors.BpjaxError` on concrete arrays; under ``jit`` they go through
    ``checkify`` in bpjax's training step, or else turn the output into NaN.

    Args:
      vocab: number of rows of ``E``.
      features: width of each embedding vector.
      init: initialiser name or callable (see :func:`bpjax.layers.initializer`); default
        ``"normal"``, ``N(0, stddev^2)`` with ``stddev=1`` as in PyTorch's ``nn.Embedding``.
      stddev: standard deviation for ``init="normal"``.
      dtype: dtype of ``E``; default the canonical float (float32, or float64 with x64 on).
      name: display name (default ``Embedding(vocab, features)``).

    Examples:
      >>> layer = L.Embedding(10, 4)                               # 10 ids, vectors of 4
      >>> out_shape, params = layer.init(jax.random.key(0), (5,))  # a sequence of 5 ids
      >>> y, _ = layer.forward(params, jnp.array([[1, 2, 3, 2, 9]]))
      >>> out_shape, params["E"].shape, y.shape
      ((5, 4), (10, 4), (1, 5, 4))
    """
    vocab = errors.positive_int("Embedding", "vocab", vocab)
    features = errors.positive_int("Embedding", "features", features)
    name = name or f"Embedding({vocab}, {features})"
    param_dtype(name, dtype)
    with errors.context(name):  # a bad init names the layer
        e_init = initializer(init, stddev)

    def init_fn(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape, key_needed=True)
        return (*input_shape, features), {"E": e_init(key, (vocab, features), param_dtype(name, dtype))}

    def forward(params, ids):
        if not isinstance(params, dict) or set(params) != {"E"} or jnp.shape(params["E"]) != (vocab, features):
            got = {k: tuple(jnp.shape(v)) for k, v in params.items()} if isinstance(params, dict) \
                else type(params).__name__
            raise errors.BpjaxError(name, f"params do not match the layer: expected {{'E': ({vocab}, {features})}}, "
                                          f"got {got}")
        dtype = jnp.result_type(ids)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise errors.BpjaxTypeError(name, f"expected integer ids (B, ...), got dtype {dtype}")
        errors.check_ndim(name, ids, tuple(range(1, 8)), "ids array")
        xp = errors.array_module(ids)
        i = xp.asarray(ids)
        ok = jnp.asarray(True) if ids.size == 0 else errors.check_value(
            name, xp.all((i >= 0) & (i < vocab)), "ids must lie in [0, {vocab}), got min {lo} and max {hi}",
            vocab=vocab, lo=xp.min(i), hi=xp.max(i))
        y = jnp.take(params["E"], ids, axis=0)  # y = E[ids]
        return errors.poison(y, ok), ids  # NaN (and NaN gradients) when a traced range check failed

    def backward(params, ids, dy):
        # in the forward pass this was: y = E[ids], so now we scatter-add: dE[ids] += dy
        dE = jnp.zeros_like(params["E"]).at[ids].add(dy.astype(params["E"].dtype))
        return {"E": dE}, np.zeros(ids.shape, jax.dtypes.float0)

    return Layer(init_fn, forward, backward, name)
