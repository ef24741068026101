"""Autodiff: any JAX function ``y = apply(params, x)`` as a layer whose backward is ``jax.vjp``'s, not hand-written.

The escape hatch for a piece of a model without a hand-written backward (an Equinox or Flax NNX
module, a function from a paper): it trains, checks and saves like any other layer, and the
gradient-check reports say that its gradient is JAX's.

What the forward keeps is what ``jax.vjp`` keeps (JAX's linearisation of ``apply``: the
activations its backward reads), less the arrays of ``params`` themselves, which the backward
receives anyway. The residuals are a plain tuple of arrays, the same structure from call to call,
so ``jit``, ``scan``, ``vmap`` and ``custom_vjp`` take them as they take any layer's, and
:func:`bpjax.remat.residual_bytes` counts them truly. The backward rebuilds ``jax.vjp``'s pullback
around them from an abstract trace of ``apply`` (shapes only: no operation is added to the
program) and calls it, so nothing of the forward is computed again: under ``jit`` the program is
``jax.grad``'s. To recompute the forward in the backward instead of keeping its activations, wrap
the layer in :func:`bpjax.remat.remat`.

Two simpler designs lose something. Returning ``jax.vjp``'s pullback itself as the residuals
computes the same, but its pytree structure holds a jaxpr made anew at every eager call (a jitted
backward then compiles again each time) and its leaves count the params a second time. Keeping only
``x`` and calling ``jax.vjp`` in the backward relies on XLA to merge the forward computed twice:
it does for straight-line code, not for a ``lax.scan``, where a tanh RNN's step took 1.29-1.35x
``jax.grad``'s (``python tests/test_autodiff.py``, side by side on a 2-core CPU).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax

from bpjax import contract, errors
from bpjax.core import Layer


def Autodiff(apply: Callable, init: Callable, *, name: Optional[str] = None) -> Layer:
    """``y = apply(params, x)`` as a layer; its backward is ``jax.vjp`` of ``apply`` (JAX's gradient).

    Forward: ``y, pullback = jax.vjp(apply, params, x)``; the residuals are the arrays ``pullback``
    keeps, except those of ``params``. Backward: ``dparams, dx = pullback(dy)``.

    Args:
      apply: ``(params, x) -> y``, a pure JAX function of a batch, ``x: (B, ...)`` (or a pytree of
        such arrays) to ``y: (B, *output_shape)``; ``params`` any pytree of arrays (an Equinox
        module's arrays from ``eqx.partition``, a Flax NNX ``State``, a dict).
      init: ``(key, input_shape) -> (output_shape, params)``, with shapes of one example (no batch
        axis), as every layer's ``init``.
      name: shown in errors and gradient-check reports (default ``Autodiff(<apply's name>)``).

    Returns:
      A simple :class:`bpjax.Layer` (no state, no key).

    Examples:
      >>> def apply(params, x):                                    # any JAX function of a batch
      ...     return jnp.sin(x @ params["W"])
      >>> layer = L.Autodiff(apply, lambda key, shape: ((2,), {"W": jnp.ones(shape + (2,))}))
      >>> out_shape, params = layer.init(jax.random.key(0), (3,))
      >>> y, residuals = layer.forward(params, jnp.ones((4, 3)))
      >>> dparams, dx = layer.backward(params, residuals, jnp.ones_like(y))   # jax.vjp's
      >>> y.shape, dparams["W"].shape, dx.shape
      ((4, 2), (3, 2), (4, 3))
    """
    if not callable(apply) or not callable(init):
        bad, what = (apply, "apply") if not callable(apply) else (init, "init")
        raise errors.BpjaxTypeError("Autodiff", f"{what} must be a function, got {type(bad).__name__}: pass "
                                                f"apply(params, x) -> y and init(key, input_shape) -> "
                                                f"(output_shape, params)")
    fn_name = getattr(apply, "__name__", "<lambda>")
    name = name or ("Autodiff" if fn_name == "<lambda>" else f"Autodiff({fn_name})")

    def linearize(params, x):
        """``jax.vjp(apply, params, x)``: ``y``, the pullback's leaves and structure, and for each leaf the
        index of the ``params`` leaf it is (``None``: an array of its own, to keep)."""
        y, pullback = jax.vjp(apply, params, x)
        leaves, treedef = jax.tree.flatten(pullback)
        own = jax.tree.leaves(params)
        where = tuple(next((i for i, p in enumerate(own) if a is p), None) for a in leaves)
        return y, leaves, treedef, where

    def forward(params, x):                          # x: (B, ...)
        y, leaves, _, where = linearize(params, x)
        kept = tuple(a for a, i in zip(leaves, where) if i is None)
        return y, (kept, contract.like(x))           # the activations jax.vjp reads; x's shape, no bytes

    def backward(params, residuals, dy):             # dy: (B, *output_shape)
        # in the forward pass this was: y, pullback = jax.vjp(apply, params, x)
        kept, like_x = residuals
        traced: list = []                            # the pullback's structure, from a trace of shapes only

        def trace(p, x):
            y, leaves, treedef, where = linearize(p, x)
            traced.append((y, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves], treedef, where))
            return y

        y = jax.eval_shape(trace, params, contract.unlike(like_x))  # adds no operation to the program
        _, shapes, treedef, where = traced[0]
        describe = lambda t: [(tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(t)]  # noqa: E731
        if str(jax.tree.structure(dy)) != str(jax.tree.structure(y)) or describe(dy) != describe(y):
            raise errors.BpjaxError(name, f"expected dy with the output's shapes and dtypes {describe(y)}, got "
                                          f"{describe(dy)}")
        fresh = [s for s, i in zip(shapes, where) if i is None]
        if describe(kept) != describe(fresh):
            raise errors.BpjaxError(name, f"apply traced differently in the backward than in the forward: kept "
                                          f"{describe(kept)}, traced {describe(fresh)}; apply must be a pure "
                                          f"function of (params, x)")
        own, it = jax.tree.leaves(params), iter(kept)
        leaves = [own[i] if i is not None else next(it) for i in where]
        return jax.tree.unflatten(treedef, leaves)(dy)  # (dparams, dx) = pullback(dy)

    def init_fn(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        return init(key, input_shape)

    return Layer(init_fn, forward, backward, name, kind="Autodiff")
