"""Gradient diagnostics inside ``jit``: per-layer gradient norms, update/parameter ratios, dead units, activations.

:func:`diagnostics` returns one jit-able function that runs the model forward and its hand-written
backward once and reports, as pytrees:

- ``grad_norm``: ``|dL/dp|_2`` per parameter leaf (structure of ``params``);
- ``param_norm``: ``|p|_2`` per leaf, and with ``updates`` given, ``update_ratio = |u|_2 / |p|_2``
  per leaf (the optimiser's step relative to the weights; about 1e-3 is the folk target);
- given the layer list (not just the built model), per layer output ``a_l``: ``mean``, ``std``,
  ``zero_fraction`` (share of exact zeros), ``dead_fraction`` (share of units that are zero for every
  example in the batch: dead ReLUs), and ``backprop_norm``, ``|dL/da_l|_2``, the backward signal
  arriving at that layer's output (Nielsen's "speed of learning" for the layer above is its ``|db|``).

:func:`flatten` turns any of these into ``{"grad_norm/0/W": 0.12, ...}`` for logging;
:func:`fit_callback` logs them from :func:`bpjax.train.fit`'s ``callback``.
"""

from __future__ import annotations

from typing import Sequence, Union, cast

import jax
import jax.numpy as jnp

from bpjax import errors
from bpjax.combinators import serial, serial_backward, serial_forward
from bpjax.core import Layer, check_model
from bpjax.grad import check_inputs, gradients
from bpjax.losses import as_loss


def _norms(tree):
    return jax.tree.map(lambda a: jnp.linalg.norm(jnp.ravel(a)), tree)


def activation_stats(a: jax.Array) -> dict:
    """Statistics of one layer output ``a: (B, ...)``: mean, std, zero fraction, dead-unit fraction.

    Examples:
      >>> stats = bp.diagnostics.activation_stats(jnp.array([[0.0, 1.0], [0.0, 3.0]]))
      >>> {name: round(float(v), 4) for name, v in stats.items()}
      {'mean': 1.0, 'std': 1.2247, 'zero_fraction': 0.5, 'dead_fraction': 0.5}
    """
    zero = a == 0
    return {"mean": jnp.mean(a), "std": jnp.std(a), "zero_fraction": jnp.mean(zero),
            "dead_fraction": jnp.mean(jnp.all(zero, axis=0))}


def diagnostics(model: Union[Layer, Sequence[Layer]], loss):
    """Per-layer gradient and activation statistics of one batch, as pytrees, jit-able.

    Args:
      model: a built model (gradient and parameter statistics only) or the sequence of layers of a
        serial model (``diagnostics(layers, loss)`` for ``bp.serial(*layers)``: adds per-layer
        activation statistics and backward-signal norms).
      loss: the loss.

    Returns:
      ``fn(params, x, y, *, updates=None, state=None, key=None, train=True) -> dict`` with keys
      ``loss``, ``grad_norm``, ``param_norm``, ``update_ratio`` (only with ``updates``), and for a
      layer sequence ``activations`` and ``backprop_norm`` (tuples, one entry per layer).

    Examples:
      >>> layers = [L.Dense(4), L.Relu(), L.Dense(2)]
      >>> _, params = bp.serial(*layers).init(jax.random.key(0), (3,))
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> stats = bp.diagnostics.diagnostics(layers, bp.losses.softmax_cross_entropy)(params, x, y)
      >>> sorted(stats), len(stats["activations"])
      (['activations', 'backprop_norm', 'grad_norm', 'loss', 'param_norm'], 3)
    """
    layers = None
    if isinstance(model, (list, tuple)) and not isinstance(model, Layer):  # a Layer is a NamedTuple too
        layers = tuple(model)
        model = serial(*layers)
    model = cast(Layer, check_model(model))
    loss = as_loss(loss)
    vg = gradients(model, loss)
    where = f"diagnostics({model.name})"

    def fn(params, x, y, *, updates=None, state=None, key=None, train=True):
        x, y, state = check_inputs(where, model, x, y, state, key)
        out = {"param_norm": _norms(params)}
        if updates is not None:
            errors.check_tree_like("diagnostics", updates, params, "updates")
            out["update_ratio"] = jax.tree.map(lambda u, p: u / jnp.maximum(p, jnp.finfo(p.dtype).tiny),
                                               _norms(updates), out["param_norm"])
        if layers is None:
            value, _, grads = vg(params, x, y, state, key, train)
            return {"loss": value, "grad_norm": _norms(grads), **out}
        # serial's own forward and backward, keeping each layer's output a_l and the signal dL/da_l
        a, residuals, _, acts = serial_forward(layers, params, x, state, key, train, keep_outputs=True)
        value, d = loss.value_and_grad(a, y)
        back = [None] * len(layers)
        back[-1] = jnp.linalg.norm(jnp.ravel(d))  # |dL/da| at the model output

        def record(i, d):  # d = dL/da_{i-1}, what layer i hands down to the output of layer i-1
            if i > 0:
                back[i - 1] = jnp.linalg.norm(jnp.ravel(d))
            return d

        grads, _ = serial_backward(layers, params, residuals, d, after=record)
        return {"loss": value, "grad_norm": _norms(grads), **out,
                "activations": tuple(activation_stats(a) for a in acts), "backprop_norm": tuple(back)}

    return fn


def flatten(tree, prefix: str = "") -> dict:
    """``{"grad_norm/0/W": float, ...}``: every leaf of a diagnostics pytree under a ``/``-joined path.

    Examples:
      >>> bp.diagnostics.flatten({"grad_norm": ({"W": jnp.float32(0.5)}, ())})
      {'grad_norm/0/W': 0.5}
    """
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        out["/".join([prefix, *keys] if prefix else keys)] = float(leaf)
    return out


def fit_callback(model, loss, x, y, log: list, *, state=None):
    """A ``callback`` for :func:`bpjax.train.fit` that appends ``{"step": s, **flatten(diagnostics)}`` to ``log``.

    Diagnostics are taken on the fixed batch ``(x, y)`` at the params after each chunk of steps.

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Relu(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.linspace(-1, 1, 24).reshape(8, 3), jnp.arange(8) % 2
      >>> log = []
      >>> callback = bp.diagnostics.fit_callback(model, bp.losses.softmax_cross_entropy, x, y, log)
      >>> _ = bp.train.fit(model, bp.losses.softmax_cross_entropy, optax.sgd(0.1), params, (x, y), steps=3,
      ...                  batch_size=4, chunk_size=3, verbose=False, callback=callback)
      >>> len(log), log[0]["step"], "grad_norm/0/W" in log[0]
      (1, 3, True)
    """
    fn = jax.jit(diagnostics(model, loss))

    def callback(steps_done, result):
        s = result.state if state is None else state  # () for a simple model
        log.append({"step": int(steps_done), **flatten(fn(result.params, x, y, state=s))})

    return callback
