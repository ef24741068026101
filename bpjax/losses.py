"""Losses, each with its hand-written gradient with respect to the prediction; all mean over the batch.

A :class:`Loss` is a pair of pure functions::

    value(pred, target)          -> scalar
    value_and_grad(pred, target) -> (scalar, dpred)      # dpred = dL/dpred, written by hand

``loss(pred, target)`` calls ``value``. Any plain function ``(pred, target) -> scalar`` can be
turned into a Loss with :func:`as_loss`; its gradient then comes from ``jax.grad``.

- ``mse``: ``L = mean((pred - target)^2)`` over all N elements; ``dpred = 2 (pred - target) / N``.
- ``softmax_cross_entropy``: logits ``(B, C)`` against integer labels ``(B,)`` or probabilities
  ``(B, C)``; ``L = -mean_i sum_c y_ic log softmax(z_i)_c``; fused backward
  ``dz = (softmax(z) - y) / B`` (times ``sum_c y_ic`` for unnormalised soft targets).
- ``binary_cross_entropy``: from logits, mean over all elements; ``L = mean(softplus(z) - t z)``;
  ``dz = (sigmoid(z) - t) / N``.

Value checks (labels in range, targets in [0, 1]) raise at once on concrete arrays, through
``checkify`` inside bpjax's training step, and turn the loss into NaN inside any other ``jit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from bpjax import _errors


@dataclass(frozen=True)
class Loss:
    """A loss: ``value(pred, target) -> scalar`` and ``value_and_grad(pred, target) -> (scalar, dpred)``."""

    value: Callable
    value_and_grad: Callable
    name: str = "loss"

    def __call__(self, pred, target):
        return self.value(pred, target)

    def __repr__(self) -> str:
        return self.name


def as_loss(loss) -> Loss:
    """Return ``loss`` if it is a :class:`Loss`; wrap a plain ``(pred, target) -> scalar`` function otherwise."""
    if isinstance(loss, Loss):
        return loss
    if not callable(loss):
        raise _errors.BpjaxTypeError("loss", f"expected a bpjax Loss or a function (pred, target) -> scalar, "
                                             f"got {type(loss).__name__}")
    name = getattr(loss, "__name__", "loss")
    return Loss(loss, jax.value_and_grad(loss), name)


def _poison(value, ok):
    """NaN when a traced value check failed outside a checked step (never a plausible wrong number)."""
    return jnp.where(ok, value, jnp.nan)


def _check_pred(where, pred, ndims):
    _errors.check_floating(where, pred, "prediction")
    _errors.check_ndim(where, pred, ndims, "prediction")
    if pred.shape[0] == 0:
        raise _errors.BpjaxError(where, f"empty batch: prediction has shape {tuple(pred.shape)}")


def _mse_parts(pred, target):
    where = "mse"
    _check_pred(where, pred, tuple(range(1, 8)))
    _errors.check_floating(where, target, "target")
    if pred.shape != target.shape:
        raise _errors.BpjaxError(where, f"prediction and target shapes differ: prediction "
                                        f"{tuple(pred.shape)}, target {tuple(target.shape)}")
    ok = _errors.check_value(where, jnp.all(jnp.isfinite(target)),
                             "expected finite targets, got {n} NaN or Inf entries", n=jnp.sum(~jnp.isfinite(target)))
    return pred - target, ok


def _mse_value(pred, target):
    r, ok = _mse_parts(pred, target)
    return _poison(jnp.mean(r * r), ok)


def _mse_value_and_grad(pred, target):
    # L = mean((pred - target)^2) over all N elements  =>  dL/dpred = 2 (pred - target) / N
    r, ok = _mse_parts(pred, target)
    return _poison(jnp.mean(r * r), ok), (2.0 / r.size) * r


mse = Loss(_mse_value, _mse_value_and_grad, "mse")


def _targets(where, logits, target):
    """Validate targets; return (dense target distribution ``(B, C)``, ok flag)."""
    _check_pred(where, logits, 2)
    B, C = logits.shape
    dtype = jnp.result_type(target)
    if dtype == jnp.bool_ or jnp.issubdtype(dtype, jnp.complexfloating):
        raise _errors.BpjaxTypeError(where, f"targets must be integer class ids (B,) or float "
                                            f"probabilities (B, {C}), got dtype {dtype}")
    if jnp.issubdtype(dtype, jnp.integer):
        if jnp.shape(target) != (B,):
            raise _errors.BpjaxError(where, f"integer labels must have shape ({B},) to match logits "
                                            f"{(B, C)}, got {tuple(jnp.shape(target))}")
        ok = _errors.check_value(where, jnp.all((target >= 0) & (target < C)),
                                 "labels must lie in [0, {C}), got min {lo} and max {hi}",
                                 C=C, lo=jnp.min(target), hi=jnp.max(target))
        return jax.nn.one_hot(target, C, dtype=logits.dtype), ok
    if jnp.shape(target) != (B, C):
        hint = " (float labels? integer class ids must have an integer dtype)" if jnp.shape(target) == (B,) else ""
        raise _errors.BpjaxError(where, f"float targets must be probabilities of shape {(B, C)} like the "
                                        f"logits, got {tuple(jnp.shape(target))}{hint}")
    ok = _errors.check_value(where, jnp.all((target >= 0) & jnp.isfinite(target)),  # False for NaN too
                             "probability targets must be finite and >= 0, got min {lo} and max {hi}",
                             lo=jnp.min(target), hi=jnp.max(target))
    return target.astype(logits.dtype), ok


def _xent_value(logits, target):
    y, ok = _targets("softmax_cross_entropy", logits, target)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return _poison(-jnp.sum(y * logp) / logits.shape[0], ok)


def _xent_value_and_grad(logits, target):
    # L = -mean_i sum_c y_ic log softmax(z_i)_c  =>  dL/dz = (softmax(z) - y) * sum_c(y) / B  (fused)
    y, ok = _targets("softmax_cross_entropy", logits, target)
    B = logits.shape[0]
    logp = jax.nn.log_softmax(logits, axis=-1)
    value = -jnp.sum(y * logp) / B
    dz = (jnp.exp(logp) * jnp.sum(y, axis=-1, keepdims=True) - y) / B
    return _poison(value, ok), dz


softmax_cross_entropy = Loss(_xent_value, _xent_value_and_grad, "softmax_cross_entropy")


def _bce_check(logits, target):
    where = "binary_cross_entropy"
    _check_pred(where, logits, tuple(range(1, 8)))
    dtype = jnp.result_type(target)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_):
        raise _errors.BpjaxTypeError(where, f"targets must be real 0/1 or probabilities, got dtype {dtype}")
    if jnp.shape(target) != logits.shape:
        raise _errors.BpjaxError(where, f"prediction and target shapes differ: logits {tuple(logits.shape)}, "
                                        f"target {tuple(jnp.shape(target))}")
    t = jnp.asarray(target).astype(logits.dtype)
    ok = _errors.check_value(where, jnp.all((t >= 0) & (t <= 1)),
                             "targets must lie in [0, 1], got min {lo} and max {hi}", lo=jnp.min(t), hi=jnp.max(t))
    return t, ok


def _bce_value(logits, target):
    t, ok = _bce_check(logits, target)
    # -[t log s(z) + (1 - t) log(1 - s(z))] = softplus(z) - t z, stable for large |z|
    return _poison(jnp.mean(jax.nn.softplus(logits) - t * logits), ok)


def _bce_value_and_grad(logits, target):
    # dL/dz = (sigmoid(z) - t) / N, N = number of elements
    t, ok = _bce_check(logits, target)
    value = jnp.mean(jax.nn.softplus(logits) - t * logits)
    return _poison(value, ok), (jax.nn.sigmoid(logits) - t) / t.size


binary_cross_entropy = Loss(_bce_value, _bce_value_and_grad, "binary_cross_entropy")


def accuracy(logits, labels) -> jax.Array:
    """Fraction of rows whose argmax matches the integer label (or the argmax of soft targets)."""
    if jnp.ndim(labels) == 2:
        labels = jnp.argmax(labels, -1)
    return jnp.mean(jnp.argmax(logits, -1) == labels)
