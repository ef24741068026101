"""Dropout with inverted scaling: ``y = x * mask / (1 - rate)`` in training, the identity in eval."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bpjax import errors
from bpjax.core import Layer, read_mode, tag_mode


def Dropout(rate: float, *, name: str | None = None) -> Layer:
    """Zero each element with probability ``rate`` and scale the kept ones by ``1 / (1 - rate)``.

    A contextual layer (it draws random numbers); it has no params and no state. ``x: (B, ...)``.

    Train (``train=True``, ``rate > 0``), with an explicit PRNG ``key``::

        mask = bernoulli(key, 1 - rate, x.shape)        # kept with probability 1 - rate
        y    = where(mask, x * (1 / (1 - rate)), 0)     # E[y] = x ("inverted" dropout)

    Backward, with the same mask (it travels in the residuals): ``dx = where(mask, dy / (1 - rate), 0)``.
    Eval (``train=False``) or ``rate == 0``: ``y = x``, ``dx = dy``, and no key is needed.

    Args:
      rate: drop probability, in [0, 1).
      name: display name (default ``Dropout(rate)``).

    Examples:
      >>> layer = L.Dropout(0.5)
      >>> x = jnp.ones((2, 4))
      >>> y, _, _ = bp.apply(layer, (), x, key=jax.random.key(0))   # train: zeros and 2s
      >>> sorted(set(y.ravel().tolist()))
      [0.0, 2.0]
      >>> y, _, _ = bp.apply(layer, (), x, train=False)             # eval: the identity
      >>> bool((y == x).all())
      True
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise errors.BpjaxError("Dropout", f"rate must be a number in [0, 1), got {rate!r}")
    name = name or f"Dropout({rate})"
    scale = 1.0 / (1.0 - rate)

    def init(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        return input_shape, ()

    def forward(params, x, *, state, key, train):
        errors.check_floating(name, x)
        errors.check_ndim(name, x, tuple(range(1, 8)))
        if not train or rate == 0:
            return x, tag_mode(False, ()), state  # identity (eval, or rate 0): nothing to remember
        if key is None:
            raise errors.BpjaxError(name, "train mode with rate > 0 needs a PRNG key: pass key=jax.random.key(...) "
                                          "(or train=False for evaluation)")
        mask = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(mask, x * scale, 0), tag_mode(True, mask), state  # the backward reuses this mask

    def backward(params, saved, dy):
        dropped, mask = read_mode(saved)
        if not dropped:  # identity in the forward
            return (), dy
        # in the forward pass this was: y = where(mask, x * scale, 0)
        return (), jnp.where(mask, dy * scale, 0)

    return Layer(init, forward, backward, name, lambda key, input_shape: (tuple(input_shape), ()))
