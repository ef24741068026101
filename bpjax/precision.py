"""Mixed precision: params and optimizer state in float32, the forward and backward in bfloat16 or float16.

Two pieces, each usable alone, both working in ``fit``, ``fit_many`` and ``make_step``:

- :func:`MixedPrecision` wraps a model: its params stay in their dtype (float32, the master copy the
  optimizer updates), while its forward and backward run in ``compute_dtype``::

      y = f(cast(params), cast(x))          the layers' maths and residuals in compute_dtype
      dparams, dx = f'(..., cast(dy))       then cast back: dparams to the params' dtype, dx to x's

  The output comes back in the params' dtype, so the loss is computed in float32.
- :func:`loss_scaled` wraps an optimizer in dynamic loss scaling, which float16 needs (its smallest
  normal number is 6e-5, so small gradients underflow to 0): the training step differentiates
  ``S * L`` instead of ``L``, the optimizer divides the gradients by ``S``, and when they are not
  finite it skips the step and halves ``S``; after ``period`` finite steps in a row it doubles ``S``
  (the policy of NVIDIA's AMP and of ``jmp.DynamicLossScale``). bfloat16 has float32's range and
  needs no scaling.

::

    model16 = bp.precision.MixedPrecision(model, jnp.float16)
    res = bp.train.fit(model16, loss, bp.precision.loss_scaled(optax.adam(1e-3)), params, data, ...)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bpjax import errors
from bpjax.core import Layer, check_model, is_contextual

__all__ = ["LossScaleState", "MixedPrecision", "loss_scaled"]


def _floating(a) -> bool:
    return jnp.issubdtype(jnp.result_type(a), jnp.floating)


def _cast(tree, dtype):
    """Every floating leaf of ``tree`` in ``dtype`` (integer ids, keys and the rest unchanged)."""
    return jax.tree.map(lambda a: a.astype(dtype) if _floating(a) else a, tree)


def _like(tree, like):
    """Every floating leaf of ``tree`` in the dtype of its leaf of ``like``."""
    return jax.tree.map(lambda a, b: a.astype(jnp.result_type(b)) if _floating(a) and _floating(b) else a, tree, like)


def _master(params):
    """The params' floating dtype (the output's), float32 when there is none."""
    leaves = [a for a in jax.tree.leaves(params) if _floating(a)]
    return jnp.result_type(*leaves) if leaves else jnp.dtype(jnp.float32)


def MixedPrecision(model: Layer, compute_dtype=jnp.bfloat16) -> Layer:
    """``model`` computed in ``compute_dtype``, its params kept in their own dtype (see the module's docstring).

    Args:
      model: any layer or model (contextual ones too: their state is cast like the params).
      compute_dtype: ``jnp.bfloat16`` (default) or ``jnp.float16`` (with :func:`loss_scaled`), or any floating dtype.

    Returns:
      A layer with ``model``'s params, ``y`` in the params' dtype, residuals in ``compute_dtype``.

    Examples:
      >>> model = bp.precision.MixedPrecision(bp.serial(L.Dense(4), L.Relu(), L.Dense(2)), jnp.bfloat16)
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> y = bp.predict(model, params, jnp.ones((5, 3)))
      >>> params[0]["W"].dtype, y.dtype            # the params stay float32; the layers compute in bfloat16
      (dtype('float32'), dtype('float32'))
    """
    check_model(model, "MixedPrecision")
    try:
        cd = jnp.dtype(compute_dtype)
    except TypeError:
        cd = None
    if cd is None or not jnp.issubdtype(cd, jnp.floating):
        raise errors.BpjaxTypeError("MixedPrecision", f"compute_dtype must be a floating dtype (jnp.bfloat16, "
                                                      f"jnp.float16), got {compute_dtype!r}")
    name = f"MixedPrecision({model.name}, {cd.name})"

    def run(params, x, context):
        """``(y, residuals, new_state)`` of ``model`` on ``params`` and ``x`` cast to ``cd``."""
        pc, xc = _cast(params, cd), _cast(x, cd)
        if context is None:
            y, residuals = model.forward(pc, xc)
            new_state = None
        else:
            state, key, train = context
            y, residuals, new_state = model.forward(pc, xc, state=_cast(state, cd), key=key, train=train)
            new_state = _like(new_state, state)
        like_x = jax.tree.map(lambda a: jnp.zeros((0,), jnp.result_type(a)), x)  # x's dtypes, for dx
        return _cast(y, _master(params)), (residuals, like_x), new_state

    def backward(params, saved, dy):
        # in the forward pass this was: y = cast(f(cast(params), cast(x))), so each cast's gradient casts back
        residuals, like_x = saved
        dparams, dx = model.backward(_cast(params, cd), residuals, _cast(dy, cd))
        return _like(dparams, params), jax.tree.map(lambda d, a: d.astype(a.dtype) if _floating(a) else d, dx, like_x)

    if is_contextual(model):
        def forward(params, x, *, state, key, train):
            return run(params, x, (state, key, train))

        return Layer(model.init, forward, backward, name, model.init_state, kind="MixedPrecision")

    def forward_simple(params, x):
        y, saved, _ = run(params, x, None)
        return y, saved

    return Layer(model.init, forward_simple, backward, name, kind="MixedPrecision")


class LossScaleState(NamedTuple):
    """The state of :func:`loss_scaled`: the optimizer's own, the scale ``S`` and the finite steps in a row."""

    inner: Any
    scale: jax.Array
    good_steps: jax.Array


def loss_scaled(optimizer: optax.GradientTransformation, *, initial: float = 2.0 ** 15, period: int = 2000,
                factor: float = 2.0) -> optax.GradientTransformationExtraArgs:
    """``optimizer`` with dynamic loss scaling (see the module's docstring).

    Its state is a :class:`LossScaleState`; from it the training step reads ``S`` and differentiates
    ``S * L``. ``update`` receives those scaled gradients, divides them by ``S`` and runs
    ``optimizer`` on them when all are finite; otherwise the updates are zero, ``optimizer``'s state
    is kept and ``S`` is divided by ``factor``. After ``period`` finite steps in a row ``S`` is
    multiplied by ``factor``.

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Relu(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> opt = bp.precision.loss_scaled(optax.adam(1e-3), initial=2.0 ** 15)
      >>> step = bp.train.make_step(model, bp.losses.softmax_cross_entropy, opt)
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> params, opt_state, loss = step(params, opt.init(params), x, y)
      >>> float(opt_state.scale), int(opt_state.good_steps)
      (32768.0, 1)
    """
    optimizer = errors.as_transformation("loss_scaled", optimizer)
    period = errors.positive_int("loss_scaled", "period", period)

    def init(params):
        return LossScaleState(optimizer.init(params), jnp.asarray(initial, jnp.float32), jnp.zeros((), jnp.int32))

    def update(grads, state, params=None, **extra):
        grads = jax.tree.map(lambda g: g / state.scale.astype(g.dtype), grads)
        finite = jnp.all(errors.finite_leaves(grads))
        if "grad" in extra:
            extra["grad"] = grads
        if not isinstance(optimizer, optax.GradientTransformationExtraArgs):
            extra = {}
        safe = jax.tree.map(lambda g: jnp.where(finite, g, 0), grads)  # no NaN into the optimizer's state
        updates, inner = optimizer.update(safe, state.inner, params, **extra)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        updates = jax.tree.map(lambda u: jnp.where(finite, u, 0), updates)
        good = jnp.where(finite, state.good_steps + 1, 0)
        grow = good >= period
        scale = jnp.where(finite, jnp.where(grow, state.scale * factor, state.scale), state.scale / factor)
        return updates, LossScaleState(keep(inner, state.inner), scale, jnp.where(grow, 0, good))

    return optax.GradientTransformationExtraArgs(init, update)
