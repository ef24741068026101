"""Rematerialisation: recompute a block's forward during the backward instead of storing its residuals.

``remat(block)`` is the same function with the same gradients; its forward keeps only the block's
input (and, for a contextual block, its state and key), and its backward runs the block's forward
again to rebuild the residuals before the block's own backward. Memory for residuals drops from
every intermediate activation of the block to its input; the price is one more forward of the
block. :func:`residual_bytes` measures what a model keeps between forward and backward.

Inside one compiled program XLA would merge the recomputed forward with the original one (common
subexpression elimination), or hoist it up to the forward (where it only costs memory), so the backward puts the block's
inputs *together with the incoming cotangent* ``dy`` through ``lax.optimization_barrier``: the
recomputation cannot start before ``dy`` exists, that is, before it is needed.
"""

from __future__ import annotations

import jax
from jax import lax

from bpjax import errors
from bpjax.core import Layer, backward_of, forward_of, is_contextual, read_mode, tag_mode


def remat(block: Layer, *, name: str | None = None) -> Layer:
    """``block`` with its forward recomputed in the backward (the residuals are only its input).

    Forward: ``y = block(params, x)``, residuals ``x`` (contextual: ``(x, state, key)``, tagged with
    ``train``). Backward::

        _, residuals = block.forward(params, x)      # recompute, behind an optimisation barrier
        dparams, dx = block.backward(params, residuals, dy)

    A contextual block (dropout) recomputes with the same key, so it draws the same mask.

    Examples:
      >>> block = bp.serial(L.Dense(16), L.Tanh(), L.Dense(16), L.Tanh())
      >>> model = bp.serial(bp.remat.remat(block), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> x = jnp.ones((8, 3))
      >>> bp.remat.residual_bytes(model, params, x) < bp.remat.residual_bytes(bp.serial(block, L.Dense(2)), params, x)
      True
    """
    if not isinstance(block, Layer):
        raise errors.BpjaxTypeError("remat", f"expected a bpjax Layer, got {type(block).__name__}")
    name = name or f"remat({block.name})"

    if not is_contextual(block):
        def forward(params, x):
            y, _, _ = forward_of(block, params, x)
            return y, x  # keep only the input

        def backward(params, x, dy):
            params, x, dy = lax.optimization_barrier((params, x, dy))
            # in the forward pass this was: y, residuals = block(params, x)
            _, residuals, _ = forward_of(block, params, x)
            return backward_of(block, params, residuals, dy, x)

        return Layer(block.init, forward, backward, name, None, (block,), "remat")

    def forward_ctx(params, x, *, state, key, train):
        y, _, new_state = forward_of(block, params, x, state=state, key=key, train=train)
        return y, tag_mode(train, (x, state, key)), new_state

    def backward_ctx(params, saved, dy):
        train, (x, state, key) = read_mode(saved)
        params, x, state, key, dy = lax.optimization_barrier((params, x, state, key, dy))
        _, residuals, _ = forward_of(block, params, x, state=state, key=key, train=train)
        return backward_of(block, params, residuals, dy, x)

    return Layer(block.init, forward_ctx, backward_ctx, name, block.init_state, (block,), "remat")


def residual_bytes(model: Layer, params, x, *, state=(), key=None, train: bool = True) -> int:
    """Bytes of the residuals ``model``'s forward keeps for its backward on input ``x`` (no compute: ``eval_shape``).

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Relu(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> bp.remat.residual_bytes(model, params, jnp.ones((8, 3)))   # (8, 3) + (8, 4) + (8, 4) float32
      352
    """
    out = jax.eval_shape(lambda p, x, s, k: forward_of(model, p, x, state=s, key=k, train=train)[1], params, x, state,
                         key)
    return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(out)))
