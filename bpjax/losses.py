"""Losses, each with its hand-written gradient with respect to the prediction; all mean over the batch.

A :class:`Loss` is three pure functions::

    value(pred, target)              -> scalar
    value_and_grad(pred, target)     -> (scalar, dpred)      # dpred = dL/dpred, written by hand
    check_targets(target, pred_shape) -> None                # eager: raises on invalid targets

``loss(pred, target)`` calls ``value``. Any plain function ``(pred, target) -> scalar`` can be
turned into a Loss with :func:`as_loss`; its gradient then comes from ``jax.grad``. ``pred`` and
``target`` may be jax or numpy arrays or nested lists of numbers; targets are cast to ``pred``'s dtype.

- ``mse``: ``L = mean((pred - target)^2)`` over all N elements; ``dpred = 2 (pred - target) / N``.
  Targets: real or integer, finite, of ``pred``'s shape (a ``(B,)`` target against ``(B, 1)``
  predictions is refused: ``pred - target`` would broadcast to ``(B, B)``).
- ``softmax_cross_entropy``: logits ``(B, C)`` against integer labels ``(B,)`` in ``[0, C)`` or
  non-negative finite weights ``(B, C)``; ``L = -mean_i sum_c y_ic log softmax(z_i)_c``; fused backward
  ``dz = (softmax(z) sum_c y_ic - y) / B`` (labels stand for one-hot rows, never formed). Rows of
  ``y`` need not sum to 1: a row is a distribution times its weight ``sum_c y_ic`` (label smoothing,
  per-example weights, an all-zero row for a masked example), so no normalisation is imposed and
  none is checked.
- ``binary_cross_entropy``: from logits, mean over all elements;
  ``L = mean(max(z, 0) - t z + log1p(exp(-|z|)))`` (``= softplus(z) - t z``, without its cancellation);
  ``dz = (sigmoid(z) - t) / N``. Targets in ``[0, 1]`` of the logits' shape, float or integer/bool 0/1
  (integer targets are targets, not class ids: ``(N, 1)`` int targets for one logit are fine).

Numerics: every value and ``dpred`` keeps its relative accuracy in the tails, where the loss or a
gradient entry is tiny beside the terms it is computed from (a confident right prediction): the
forms used are sums of same-signed terms there (see each function's comments).

Value checks (labels in range, targets in [0, 1], finite targets) raise at once on concrete arrays,
through ``checkify`` inside bpjax's training step, and inside any other ``jit`` turn the value AND
``dpred`` into NaN (:func:`bpjax.errors.poison`), so every gradient of a step on invalid data is NaN
with either backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import errors
from bpjax.layers.activations import log_softmax_parts


def _no_target_check(target, pred_shape) -> None:
    """A plain-function loss defines no target rule."""


@dataclass(frozen=True)
class Loss:
    """A loss: ``value``, ``value_and_grad`` (hand-written ``dpred``) and an eager target check.

    Attributes:
      value: ``(pred, target) -> scalar``.
      value_and_grad: ``(pred, target) -> (scalar, dpred)``, ``dpred`` of ``pred``'s shape.
      name: shown in error messages, e.g. ``"softmax_cross_entropy"``.
      check_targets: ``(target, pred_shape) -> None``: validates the targets of a whole dataset
        without a forward pass, raising the same :class:`bpjax.BpjaxError` / ``BpjaxTypeError``
        (named after the loss) as ``value`` would on the first bad batch. ``pred_shape`` is the shape
        of the model's prediction ``(B, ...)`` for a batch of this data; only its trailing axes are
        compared with ``target``'s (the leading batch size is not), so one batch's prediction shape
        checks a whole dataset's targets. Meant for concrete arrays: on traced ones it only checks
        shapes and dtypes (and, inside :func:`bpjax.errors.checked`, adds the value checks).
        Plain-function losses (:func:`as_loss`) check nothing here.
    """

    value: Callable
    value_and_grad: Callable
    name: str = "loss"
    check_targets: Callable[..., None] = _no_target_check

    def __call__(self, pred, target):
        return self.value(pred, target)

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class _ScalarOf:
    """``fn(pred, target)``, its output checked to be a real floating-point scalar: a plain function's loss value.

    Frozen (equal and hashed by the function), so that :func:`as_loss` of one function is one loss
    each time: ``fit`` keeps its compiled program for it.
    """

    fn: Callable
    name: str

    def __call__(self, pred, target):
        out = self.fn(pred, target)
        where = f"loss {self.name}"
        if not hasattr(out, "shape") and not isinstance(out, (int, float, np.generic)):
            raise errors.BpjaxTypeError(where, f"returned a {type(out).__name__}, expected a scalar array")
        if jnp.shape(out) != ():
            raise errors.BpjaxError(where, f"returned shape {tuple(jnp.shape(out))}, expected a scalar: "
                                           f"did you forget the mean?")
        if not jnp.issubdtype(jnp.result_type(out), jnp.floating):
            raise errors.BpjaxTypeError(where, f"returned dtype {jnp.result_type(out)}, expected a real "
                                               f"floating-point scalar")
        return out


@dataclass(frozen=True)
class _ValueAndGradOf:
    """``jax.value_and_grad`` of a :class:`_ScalarOf` with respect to ``pred``; equal when it is."""

    value: _ScalarOf

    def __call__(self, pred, target):
        return jax.value_and_grad(self.value)(pred, target)


def as_loss(loss) -> Loss:
    """Return ``loss`` if it is a :class:`Loss`; wrap a plain ``(pred, target) -> scalar`` function otherwise.

    The wrapped function's output is checked: a non-scalar (``(B,)``: a forgotten mean) or
    non-floating result raises a :class:`bpjax.BpjaxError` naming the loss, where ``jax.grad`` would
    only say "Gradient only defined for scalar-output functions". Wrapping one function twice gives
    equal losses.

    Examples:
      >>> huber = bp.losses.as_loss(lambda pred, target: optax.huber_loss(pred, target).mean())
      >>> value, dpred = huber.value_and_grad(jnp.array([[0.0, 3.0]]), jnp.array([[0.5, 0.0]]))
      >>> round(float(value), 4), dpred.shape                        # dpred from jax.grad
      (1.3125, (1, 2))
    """
    if isinstance(loss, Loss):
        return loss
    if not callable(loss):
        raise errors.BpjaxTypeError("loss", f"expected a bpjax Loss or a function (pred, target) -> scalar, "
                                            f"got {type(loss).__name__}")
    value = _ScalarOf(loss, getattr(loss, "__name__", type(loss).__name__))
    return Loss(value, _ValueAndGradOf(value), value.name)


def scaled(loss: Loss, scale) -> Loss:
    """``scale * loss``: value and hand-written ``dpred`` both multiplied by ``scale`` (loss scaling), the same
    target check. ``scale`` may be traced (a dynamic loss scale inside a compiled step).

    Examples:
      >>> loss = bp.losses.scaled(bp.losses.mse, 1024.0)
      >>> round(float(loss(jnp.array([[1.0]]), jnp.array([[0.0]]))), 4)
      1024.0
    """
    def value(pred, target):
        return scale * loss.value(pred, target)

    def value_and_grad(pred, target):
        v, dpred = loss.value_and_grad(pred, target)
        return scale * v, (scale * dpred).astype(dpred.dtype)

    return Loss(value, value_and_grad, loss.name, loss.check_targets)


# ----------------------------------------------------------------------------------------------
# shared validation


def _check_pred(where: str, pred, ndims):
    """The prediction as a floating array of rank in ``ndims`` with a non-empty batch."""
    pred = errors.as_array(where, "prediction", pred)
    errors.check_floating(where, pred, "prediction")
    errors.check_ndim(where, pred, ndims, "prediction")
    if pred.shape[0] == 0:
        raise errors.BpjaxError(where, f"empty batch: prediction has shape {tuple(pred.shape)}")
    return pred


def _same_shape(where: str, pred_shape, target, what: str = "prediction") -> None:
    if tuple(jnp.shape(target)) != tuple(pred_shape):
        t = tuple(jnp.shape(target))
        hint = f" (reshape the target to {t + (1,)})" if tuple(pred_shape) == t + (1,) else ""
        raise errors.BpjaxError(where, f"{what} and target shapes differ: {what} {tuple(pred_shape)}, "
                                       f"target {t}{hint}; pred - target would broadcast")


def _range(xp, t):
    """Values for the message of a failed range check: min and max over the non-NaN entries (nan when
    all are NaN) and the number of NaN entries (``xp``: numpy or jax.numpy, :func:`bpjax.errors.array_module`)."""
    if xp is np and np.isnan(t).all():  # numpy warns on an all-NaN (or empty) slice; the message shows nan
        return dict(lo=t.dtype.type(np.nan), hi=t.dtype.type(np.nan), n=int(t.size))
    return dict(lo=xp.nanmin(t), hi=xp.nanmax(t), n=xp.sum(xp.isnan(t)))


def _loss(name: str, validate, maths, min_rank=1, max_rank=7) -> Loss:
    """A :class:`Loss` from ``validate(target, pred_shape, dtype) -> (t, ok)`` and the maths
    ``maths(pred, t) -> (value, dpred)`` (``maths(pred, t, grad=False) -> value``); a failed traced
    check poisons both, and ``check_targets`` runs ``validate`` on a whole dataset's targets."""
    ranks = tuple(range(min_rank, max_rank + 1))

    def value_and_grad(pred, target):
        pred = _check_pred(name, pred, ranks)
        t, ok = validate(errors.as_array(name, "target", target), pred.shape, pred.dtype)
        value, dpred = maths(pred, t)
        return errors.poison(value, ok), errors.poison(dpred, ok)

    def value(pred, target):
        pred = _check_pred(name, pred, ranks)
        t, ok = validate(errors.as_array(name, "target", target), pred.shape, pred.dtype)
        return errors.poison(maths(pred, t, grad=False), ok)

    def check_targets(target, pred_shape) -> None:
        target = errors.as_array(name, "target", target)
        pred_shape = tuple(pred_shape)
        if jnp.ndim(target) == 0 or len(pred_shape) == 0:
            raise errors.BpjaxError(name, f"expected a batch axis first in the targets and the prediction "
                                          f"shape, got target shape {tuple(jnp.shape(target))} and prediction "
                                          f"shape {pred_shape}")
        t_dtype = jnp.result_type(target)  # float targets are checked in their own precision
        dtype = t_dtype if jnp.issubdtype(t_dtype, jnp.floating) else jnp.zeros(()).dtype
        validate(target, (jnp.shape(target)[0],) + pred_shape[1:], dtype)

    return Loss(value, value_and_grad, name, check_targets)


# ----------------------------------------------------------------------------------------------
# mean squared error


def _mse_validate(target, pred_shape, dtype):
    where = "mse"
    t_dtype = jnp.result_type(target)
    if not (jnp.issubdtype(t_dtype, jnp.floating) or jnp.issubdtype(t_dtype, jnp.integer)):
        raise errors.BpjaxTypeError(where, f"expected a real (float or integer) target, got dtype {t_dtype}")
    _same_shape(where, pred_shape, target)
    xp = errors.array_module(target)
    t = xp.asarray(target).astype(dtype)
    ok = errors.check_value(where, xp.all(xp.isfinite(t)), "expected finite targets, got {n} NaN or Inf entries",
                            n=xp.sum(~xp.isfinite(t)))
    return t, ok


def _mse(pred, t, grad=True):
    # L = mean((pred - target)^2) over all N elements  =>  dL/dpred = 2 (pred - target) / N.
    # pred - target is exact when they are close (Sterbenz): no cancellation beyond the inputs' own.
    r = pred - t
    value = jnp.mean(r * r)
    return (value, (2.0 / r.size) * r) if grad else value


mse = _loss("mse", _mse_validate, _mse)
"""Mean squared error ``L = mean((pred - target)^2)`` over all ``N`` elements; ``dpred = 2 (pred - target) / N``.

Targets: real or integer, finite, of ``pred``'s shape (a ``(B,)`` target against ``(B, 1)`` predictions is
refused).

Examples:
  >>> pred, target = jnp.array([[1.0], [2.0]]), jnp.array([[0.0], [4.0]])
  >>> round(float(bp.losses.mse(pred, target)), 4)              # ((1 - 0)^2 + (2 - 4)^2) / 2
  2.5
  >>> value, dpred = bp.losses.mse.value_and_grad(pred, target)  # dpred = 2 (pred - target) / N
  >>> dpred.tolist()
  [[1.0], [-2.0]]
"""


# ----------------------------------------------------------------------------------------------
# softmax cross-entropy


def _xent_validate(target, pred_shape, dtype):
    """Integer labels ``(B,)`` pass as class ids (no one-hot matrix); float targets ``(B, C)`` in ``dtype``."""
    where = "softmax_cross_entropy"
    if len(pred_shape) != 2:
        raise errors.BpjaxError(where, f"expected rank-2 logits (B, C), got shape {tuple(pred_shape)}")
    B, C = pred_shape
    t_dtype = jnp.result_type(target)
    if t_dtype == jnp.bool_ or not (jnp.issubdtype(t_dtype, jnp.integer) or jnp.issubdtype(t_dtype, jnp.floating)):
        raise errors.BpjaxTypeError(where, f"targets must be integer class ids (B,) or float "
                                           f"probabilities (B, {C}), got dtype {t_dtype}")
    shape = tuple(jnp.shape(target))
    if jnp.issubdtype(t_dtype, jnp.integer):
        if shape != (B,):
            hint = f" (squeeze the last axis: labels of shape ({B},))" if shape == (B, 1) else ""
            raise errors.BpjaxError(where, f"integer labels must have shape ({B},) to match logits "
                                           f"{(B, C)}, got {shape}{hint}")
        xp = errors.array_module(target)
        target = xp.asarray(target)
        ok = errors.check_value(where, xp.all((target >= 0) & (target < C)),
                                "labels must lie in [0, {C}), got min {lo} and max {hi}",
                                C=C, **({"lo": xp.min(target), "hi": xp.max(target)} if target.size else
                                        {"lo": "none", "hi": "none"}))
        return target, ok
    if shape != (B, C):
        hint = " (float labels? integer class ids must have an integer dtype)" if shape == (B,) else ""
        raise errors.BpjaxError(where, f"float targets must be probabilities of shape {(B, C)} like the "
                                       f"logits, got {shape}{hint}")
    xp = errors.array_module(target)
    t = xp.asarray(target).astype(dtype)
    ok = errors.check_value(where, xp.all((t >= 0) & xp.isfinite(t)),  # False for NaN too
                            "probability targets must be finite and >= 0, got min {lo}, max {hi} "
                            "and {n} NaN entries", **_range(xp, t))
    return t, ok


def _xent(z, y, grad=True):
    # L = -mean_i sum_c y_ic logp_ic, a sum of terms >= 0; logp accurate in every entry (log_softmax_parts).
    # y: weights (B, C), or integer labels (B,) standing for y = onehot(labels) without forming it:
    # L = -mean_i logp[i, labels_i]
    B, C = z.shape
    labels = jnp.issubdtype(jnp.result_type(y), jnp.integer)
    logp, top, rest = log_softmax_parts(z)
    value = -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=-1) if labels else y * logp) / B
    if not grad:
        return value
    # dL/dz = (p S - y) / B, S = sum_c y_c (fused), written p (S - y) - y (1 - p): two terms of fixed sign,
    # with 1 - p = rest / (1 + rest) at the maximum, so neither cancels where p rounds to 1 (a confident
    # right answer: p - 1 = 0 there, the true value is -rest); elsewhere p <= 1/2 and 1 - p is exact enough
    p = jnp.exp(logp)
    q = jnp.where(top, rest / (1 + rest), 1 - p)
    if labels:  # y = onehot(labels), S = 1: dz = p off the label, -(1 - p) at it (the same floats as above)
        return value, jnp.where(jnp.arange(C) == y[:, None], -q, p) / B
    return value, (p * (jnp.sum(y, axis=-1, keepdims=True) - y) - y * q) / B


softmax_cross_entropy = _loss("softmax_cross_entropy", _xent_validate, _xent, min_rank=2, max_rank=2)
"""Cross-entropy of logits ``z: (B, C)`` against integer labels ``(B,)`` or soft targets ``y: (B, C)``.

``L = -mean_i sum_c y_ic log softmax(z_i)_c``, with the fused backward ``dz = (softmax(z) sum_c y_ic - y) / B``.
Labels lie in ``[0, C)``; soft targets are non-negative and finite, and a row need not sum to 1 (label
smoothing, per-example weights).

Examples:
  >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  >>> round(float(bp.losses.softmax_cross_entropy(logits, jnp.array([0, 2]))), 4)   # integer labels
  0.6691
  >>> soft = jnp.array([[0.9, 0.05, 0.05], [0.0, 0.0, 1.0]])                          # or soft targets
  >>> round(float(bp.losses.softmax_cross_entropy(logits, soft)), 4)
  0.7691
"""


# ----------------------------------------------------------------------------------------------
# binary cross-entropy from logits


def _bce_validate(target, pred_shape, dtype):
    where = "binary_cross_entropy"
    t_dtype = jnp.result_type(target)
    if not (jnp.issubdtype(t_dtype, jnp.floating) or jnp.issubdtype(t_dtype, jnp.integer) or t_dtype == jnp.bool_):
        raise errors.BpjaxTypeError(where, f"targets must be real 0/1 or probabilities, got dtype {t_dtype}")
    _same_shape(where, pred_shape, target, "logits")
    xp = errors.array_module(target)
    t = xp.asarray(target).astype(dtype)
    ok = errors.check_value(where, xp.all((t >= 0) & (t <= 1)),  # False for NaN too
                            "targets must lie in [0, 1], got min {lo}, max {hi} and {n} NaN entries",
                            **_range(xp, t))
    return t, ok


def _bce(z, t, grad=True):
    # -[t log s(z) + (1 - t) log(1 - s(z))] = softplus(z) - t z = max(z, 0) - t z + log1p(exp(-|z|)), written
    # (1 - t) z for z >= 0 and -t z for z < 0: three terms >= 0, where softplus(z) - t z cancels for t = 1,
    # z > 0 (relative error 1e-2 at z = 30 in float64, exactly 0 from z = 37)
    value = jnp.mean(jnp.where(z >= 0, (1 - t) * z, -t * z) + jnp.log1p(jnp.exp(-jnp.abs(z))))
    if not grad:
        return value
    # dL/dz = (sigmoid(z) - t) / N, written (1 - t) sigmoid(z) - t sigmoid(-z): exact terms for t in {0, 1}
    return value, ((1 - t) * jax.nn.sigmoid(z) - t * jax.nn.sigmoid(-z)) / z.size


binary_cross_entropy = _loss("binary_cross_entropy", _bce_validate, _bce)
"""Binary cross-entropy from logits, ``L = mean(softplus(z) - t z)`` over all ``N`` elements.

Backward ``dz = (sigmoid(z) - t) / N``. Targets in ``[0, 1]`` of the logits' shape, float or integer/bool 0/1.

Examples:
  >>> logits, targets = jnp.array([[0.0], [3.0]]), jnp.array([[1.0], [1.0]])
  >>> round(float(bp.losses.binary_cross_entropy(logits, targets)), 4)   # from logits
  0.3709
"""


def accuracy(logits, labels) -> jax.Array:
    """Fraction of rows whose argmax matches the integer label (or the argmax of soft targets).

    Examples:
      >>> logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
      >>> round(float(bp.losses.accuracy(logits, jnp.array([0, 1, 1]))), 4)
      0.6667
    """
    logits, labels = errors.as_array("accuracy", "logits", logits), errors.as_array("accuracy", "labels", labels)
    if jnp.ndim(labels) == 2:
        labels = jnp.argmax(labels, -1)
    return jnp.mean(jnp.argmax(logits, -1) == labels)
