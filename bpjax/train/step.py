"""One training step, written once: ``grads = dL/dparams``, then ``params -= optimizer(grads)``.

:func:`step_function` builds the step itself (pure, not compiled); :func:`make_step` compiles it for a user,
and the compiled loop of ``fit`` runs the same function inside its ``lax.scan``.

Any optax optimizer: an ``optax.GradientTransformationExtraArgs`` (``optax.chain`` and most of optax)
gets optax's extra arguments, ``value`` (the loss), ``grad`` (the gradients) and ``value_fn`` (the
loss as a function of the params on this batch, differentiable by ``jax.grad`` through the chosen
backward), so ``optax.contrib.reduce_on_plateau`` and ``optax.lbfgs`` (its line search) work as
optax documents them; an ``optax.MultiSteps`` is taken through its ``gradient_transformation()``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bpjax import errors
from bpjax.core import Layer, check_model, check_state, is_contextual
from bpjax.grad import BACKWARDS, check_backward, gradients
from bpjax.losses import as_loss, scaled
from bpjax.precision import LossScaleState
from bpjax.train.validate import check_opt_state

__all__ = ["BACKWARDS", "make_step", "step_function"]


def value_function(model: Layer, loss, backward: str):
    """``fn(params, x, y, state, key) -> value``: the loss on one batch, whose ``jax.grad`` is ``backward``'s
    gradient (a ``jax.custom_vjp`` around the hand-written one for ``"manual"``): optax's ``value_fn``."""
    vg = gradients(model, loss, backward=backward)
    if backward == "autodiff":
        return lambda params, x, y, state, key: vg(params, x, y, state, key, True)[0]

    @jax.custom_vjp
    def value(params, x, y, state, key):
        return vg(params, x, y, state, key, True)[0]

    def fwd(params, x, y, state, key):
        v, _, grads = vg(params, x, y, state, key, True)
        return v, grads

    def bwd(grads, g):
        return jax.tree.map(lambda d: g * d, grads), None, None, None, None

    value.defvjp(fwd, bwd)
    return value


def step_function(model: Layer, loss, backward: str = "manual"):
    """The step: ``fn(params, opt_state, optimizer, x, y, state, key) -> (params, opt_state, state, value, grads)``.

    ``value, new_state, grads`` from the one gradient path (:func:`bpjax.grad.gradients`), then
    ``updates, opt_state = optimizer.update(grads, opt_state, params)`` (with optax's extra arguments
    for an ``optax.GradientTransformationExtraArgs``) and ``params = optax.apply_updates(params, updates)``.
    ``state`` is ``()`` for a simple model.
    """
    vg = gradients(model, loss, backward=backward)
    value_of = value_function(model, loss, backward)

    def step(params, opt_state, optimizer, x, y, state, key):
        if isinstance(opt_state, LossScaleState):  # bp.precision.loss_scaled: the gradients of S * L
            S = opt_state.scale
            value, new_state, grads = gradients(model, scaled(loss, S), backward=backward)(params, x, y, state, key,
                                                                                           True)
            value = value / S
        else:
            value, new_state, grads = vg(params, x, y, state, key, True)
        extra = {}
        if isinstance(optimizer, optax.GradientTransformationExtraArgs):
            extra = dict(value=value, grad=grads, value_fn=lambda p: value_of(p, x, y, state, key))
        updates, opt_state = optimizer.update(grads, opt_state, params, **extra)
        return optax.apply_updates(params, updates), opt_state, new_state, value, grads

    return step


def make_step(model: Layer, loss, optimizer: optax.GradientTransformation, *, backward: str = "manual",
              checks: bool = True, jit: bool = True, donate: bool = False):
    """A training step for any optax optimiser (SGD, momentum, Nesterov, RMSProp, Adam, AdamW, schedules, clipping).

    ``step(params, opt_state, x, y) -> (params, opt_state, loss)`` for a simple model;
    ``step(params, opt_state, x, y, *, state, key=None) -> (params, opt_state, state, loss)`` for a
    contextual one (batch-norm statistics, dropout keys): the state comes third, as in
    :class:`bpjax.train.FitResult`. One step computes the gradients with the chosen ``backward``
    and applies ``updates, opt_state = optimizer.update(grads, opt_state, params)``,
    ``params = optax.apply_updates(params, updates)`` (:func:`step_function`).

    Args:
      model, loss: what to train.
      optimizer: an optax ``GradientTransformation`` (or ``optax.MultiSteps``); ``opt_state =
        optimizer.init(params)``. Optax's extra arguments (``value``, ``grad``, ``value_fn``) are passed
        to an ``optax.GradientTransformationExtraArgs``, as ``optax.lbfgs`` and
        ``optax.contrib.reduce_on_plateau`` need.
      backward: ``"manual"`` (hand-written) or ``"autodiff"`` (``jax.grad``, the reference).
      checks: verify values inside the compiled step (labels in range, finite inputs) with
        ``checkify``, raising a clear error after the step; costs one small device-to-host read per
        step. With ``checks=False`` a bad label turns the loss and the gradients into NaN instead.
      jit: compile the step (default). ``jit=False`` returns the raw function with the same
        signature, e.g. to put inside a ``lax.scan`` of your own.
      donate: let the compiled step write the new ``params`` and ``opt_state`` into the buffers of the
        ones passed in (``jax.jit(..., donate_argnums=(0, 1))``): no fresh allocation per step (about 5%
        faster on the 784-1024-1024-1024-10 MLP), but the arrays passed in are deleted by the call, so
        always continue from the returned ones (passing a deleted one again raises a ``BpjaxError``
        naming ``make_step(donate=True)``).

    Checks: ``opt_state`` must match ``optimizer.init(params)`` (structure and shapes; checked while
    the step is traced, so once per structure), ``key`` must be a PRNG key, and Python lists of
    numbers are taken as arrays. The step may itself be put inside your own ``jax.jit`` (or
    ``lax.scan``): there no error can be raised from values, so the ``checkify`` report is dropped
    and a failed value check turns the loss and the gradients into NaN, as with ``checks=False``.

    Examples:
      >>> model, opt = bp.serial(L.Dense(4), L.Relu(), L.Dense(2)), optax.sgd(0.1)
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> step = bp.train.make_step(model, bp.losses.softmax_cross_entropy, opt)   # jit-compiled
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> params, opt_state, loss = step(params, opt.init(params), x, y)
      >>> loss.shape, loss.dtype
      ((), dtype('float32'))
    """
    check_model(model)
    loss = as_loss(loss)
    optimizer = errors.as_transformation("make_step", optimizer)
    train_step = step_function(model, loss, check_backward("make_step", backward))
    contextual = is_contextual(model)

    def checked_step(params, opt_state, x, y, state, key):
        check_opt_state("make_step", optimizer, params, opt_state)  # static: runs once per traced structure
        if checks:
            errors.check_finite(model.name, "input x", x)  # concrete x (jit=False): at once, with count and example
            errors.check_value(model.name, jnp.all(errors.finite_leaves(x)), "input x contains NaN or Inf")
        params, opt_state, new_state, value, _ = train_step(params, opt_state, optimizer, x, y, state, key)
        return params, opt_state, new_state, value

    if jit:
        jitted = jax.jit(errors.checked(checked_step) if checks else checked_step,
                         donate_argnums=(0, 1) if donate else ())

        def compiled(*args):
            try:
                out = jitted(*args)
            except (ValueError, RuntimeError) as e:
                if "deleted" not in str(e):  # "Buffer has been deleted or donated", "Array has been deleted"
                    raise
                raise _deleted_error(args, donate) from None
            if not checks:
                return out
            err, out = out
            if not isinstance(out[3], jax.core.Tracer):  # inside a user's jit: no values to raise on
                errors.throw(err)
            return out
    else:
        compiled = checked_step

    def contextual_step(params, opt_state, x, y, *, state=None, key=None):
        where = "make_step step"
        errors.check_key(where, key)
        return compiled(params, opt_state, errors.as_array(where, "x", x), errors.as_array(where, "y", y),
                        check_state(where, model, state), key)

    def simple_step(params, opt_state, x, y):
        params, opt_state, _, value = contextual_step(params, opt_state, x, y, state=(), key=None)
        return params, opt_state, value

    return contextual_step if contextual else simple_step


def _deleted_error(args, donate: bool) -> errors.BpjaxError:
    """The error for arrays deleted before the step ran: which argument, and (when donating) why."""
    names = ("params", "opt_state", "x", "y", "state")
    gone = [f"{n}{jax.tree_util.keystr(p)}" for n, tree in zip(names, args)
            for p, a in jax.tree_util.tree_leaves_with_path(tree) if isinstance(a, jax.Array) and a.is_deleted()]
    where = "make_step(donate=True) step" if donate else "make_step step"
    why = (" were donated to an earlier call of this step, which wrote its results into their buffers: "
           "continue from the arrays it returned (params, opt_state, ... = step(params, opt_state, ...))"
           if donate else " were deleted (donated to another jitted function, or .delete()d)")
    return errors.BpjaxError(where, f"{', '.join(gone[:4]) or 'an argument'}{' ...' if len(gone) > 4 else ''}"
                                    f"{why}; expected live arrays")
