"""The per-layer sweep: each layer of a ``serial`` checked on its own, inside the model.

:func:`bpjax.combinators.serial_forward` keeps every layer's input ``a_{l-1}``, and
:func:`bpjax.combinators.serial_backward`'s hook hands over the gradient ``da_l`` each layer receives
from the layer above. Each layer's backward at ``(a_{l-1}, da_l)`` is then compared with ``jax.vjp``
of its own forward at the same point and cotangent, so a bug shows in its own layer's row only:
the failure is pinned to the first layer, going backward, whose own check fails (and, when that
layer is itself a ``serial``, to the layer inside it). A layer whose own check passes but whose
gradients in the model are wrong got a wrong ``da_l`` from above: it is *upstream* of the nearest
layer above it whose own ``dx`` fails (or of the loss, when ``dpred`` fails), and :func:`sweep` says so
for each such row (its ``blame``).

A layer may hand down a different valid subgradient than ``jax.vjp`` at a tie or a kink (MaxPool
sends a tied window's gradient to its first maximum, ``jax.grad`` splits it). When a layer's ``dx``
differs, the difference ``delta`` is run through the hand-written backward of the layers below
(``serial_backward`` of the prefix); if nothing of it reaches any parameter or the input (a ReLU
below passes no gradient where the tied values are zero), the row is *absorbed*, not a failure.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from bpjax.combinators import serial_backward, serial_forward
from bpjax.core import forward_of, split_key
from bpjax.gradcheck import measure, paths, report
from bpjax.gradcheck.report import LeafCheck


def _per_layer(state, n):
    return ((),) * n if isinstance(state, tuple) and not state else state


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _program(layers, loss, train, params, x, target, state, key):
    """Forward keeping every input, the hand-written backward with its hook, and each layer's ``jax.vjp``.

    ``target`` is ``y`` (with ``loss``) or the cotangent ``dy`` of the output (``loss=None``).
    """
    n = len(layers)
    out, residuals, _, outs = serial_forward(layers, params, x, state, key, train, keep_outputs=True)
    if loss is None:
        d, d_ref = target, target
    else:
        d = loss.value_and_grad(out, target)[1]
        d_ref = jax.grad(lambda a: loss.value(a, target))(out)
    incoming: list = [None] * n
    incoming[n - 1] = d

    def after(i, g):
        if i > 0:
            incoming[i - 1] = g
        return g

    dparams, dx = serial_backward(layers, params, residuals, d, after=after)
    inputs, states, keys = (x, *outs[:-1]), _per_layer(state, n), split_key(key, n)
    vjps = []
    for i, layer in enumerate(layers):
        f = functools.partial(lambda layer, s, k, p, a: forward_of(layer, p, a, state=s, key=k, train=train)[0],
                              layer, states[i], keys[i])
        vjps.append(jax.vjp(f, params[i], inputs[i])[1](incoming[i]))
    manual = [(dparams[i], incoming[i - 1] if i else dx) for i in range(n)]
    return manual, vjps, (d, d_ref), residuals, inputs, incoming


@functools.partial(jax.jit, static_argnums=(0,))
def _below(layers, params, residuals, delta):
    """``delta`` at the output of ``layers`` run through their hand-written backward: ``(dparams, dx)``."""
    return serial_backward(layers, params, residuals, delta)


def _inexact_leaves(tree):
    return [a for a in jax.tree.leaves(tree) if measure.inexact(a)]


def sweep(layers: tuple, loss, params, x, target, state, key, train: bool, rtol: float,
          prefix: str = "") -> Tuple[Tuple[LeafCheck, ...], Optional[str], Dict[str, str]]:
    """Rows of every layer's own check, the label of the layer the failure is pinned to (``None``: none fails),
    and the blame: ``{row label: culprit}`` for the rows whose own check passes below a failing ``dx`` (the
    model's input as :data:`bpjax.gradcheck.report.INPUT`)."""
    n = len(layers)
    manual, vjps, (d, d_ref), residuals, inputs, incoming = _program(layers, loss, train, params, x, target,
                                                                      state, key)
    entries: List[Tuple[int, str, str, str, object, object]] = []  # (layer, kind, label, name, manual, reference)
    if loss is not None:
        entries.append((n, "loss", f"loss {loss.name}: dpred", "dpred", d, d_ref))
    for i, layer in enumerate(layers):
        where = f"{prefix}serial[{i}] "
        labels = paths.labels(layer, params[i], where)
        entries += [(i, "param", lab, f"params[{i}]{jax.tree_util.keystr(path)}", m, r)
                    for lab, (path, m), r in zip(labels, jax.tree_util.tree_leaves_with_path(manual[i][0]),
                                                 jax.tree.leaves(vjps[i][0])) if measure.inexact(r)]
        mx, rx = _inexact_leaves(manual[i][1]), _inexact_leaves(vjps[i][1])
        entries += [(i, "input", f"{where}{layer.name}: input" + (f"[{j}]" if len(rx) > 1 else ""),
                     f"a_{i - 1}" if i else "x", m, r) for j, (m, r) in enumerate(zip(mx, rx))]
    comps = measure.compare([e[4] for e in entries], [e[5] for e in entries], rtol)
    top = max((float(jnp.max(jnp.abs(e[5]))) for e in entries if jnp.size(e[5])), default=0.0)  # type: ignore[arg-type]
    rows, failing = [], set()
    for (i, what, label, name, m, r), c in zip(entries, comps):
        verdict = report.OK if c.agree else report.MANUAL_WRONG
        if not c.agree and what == "input" and i > 0 and _absorbed(
                layers[:i], params[:i], residuals, i, manual[i][1], vjps[i][1], rtol * measure.FLOOR * top):
            verdict = report.ABSORBED
        if verdict == report.MANUAL_WRONG:
            failing.add(i)
        rows.append(LeafCheck(name, tuple(jnp.shape(m)),  # type: ignore[arg-type]
                              c.max_abs_error, c.max_rel_error, c.cosine, label=label, verdict=verdict,
                              failed=() if c.agree else ("reference",),
                              backward=paths.whose_backward(layers[i]) if i < n else report.HAND_WRITTEN))
    if not failing:
        return tuple(rows), None, {}
    worst = max(failing)
    inner_blame: Dict[str, str] = {}
    if worst == n:
        pinned = f"loss {loss.name}"
    else:
        pinned = f"{prefix}serial[{worst}] {layers[worst].name}"
        if layers[worst].kind == "serial" and paths.per_child(layers[worst], params[worst]):
            inner, deeper, inner_blame = sweep(layers[worst].children, None, params[worst], inputs[worst],
                                               incoming[worst], _per_layer(state, n)[worst],
                                               split_key(key, n)[worst], train, rtol, f"{prefix}serial[{worst}] ")
            rows += list(inner)
            pinned = deeper or pinned
    own = [(i, what, row) for (i, what, *_), row in zip(entries, rows)]
    return tuple(rows), pinned, {**_blame(own, layers, worst, pinned, prefix), **inner_blame}


def _blame(own, layers, worst: int, pinned: str, prefix: str) -> Dict[str, str]:
    """``{label: culprit}`` of the passing rows below a layer whose own ``dx`` fails: the nearest such layer above.

    ``own``: ``(layer index, "loss" | "param" | "input", row)`` of this level's rows. Going backward, the
    cotangent a layer receives is wrong from the first failing ``dx`` (or ``dpred``) on; a row whose own
    check passes under it is wrong only through that cotangent.
    """
    culprit = pinned if worst == len(layers) else None  # a wrong dpred reaches every layer
    blame: Dict[str, str] = {}
    for i in reversed(range(len(layers))):
        mine = [(what, row) for j, what, row in own if j == i]
        if culprit:
            blame.update({row.label: culprit for what, row in mine if what == "param" and row.ok})
            if i == 0 and not prefix and all(row.ok for what, row in mine if what == "input"):
                blame[report.INPUT] = culprit
        if any(row.verdict == report.MANUAL_WRONG for what, row in mine if what == "input"):
            culprit = pinned if i == worst else f"{prefix}serial[{i}] {layers[i].name}"
    return blame


def _absorbed(below, params, residuals, i, manual_dx, vjp_dx, atol) -> bool:
    """True when ``manual_dx - vjp_dx`` reaches no parameter and no input through the layers ``below``."""
    delta = jax.tree.map(lambda m, r: m - r if measure.inexact(r) else m, manual_dx, vjp_dx)
    rs, likes = residuals
    out = _below(below, params, (rs[:i], likes[:i]), delta)
    return all(float(np.max(np.abs(np.asarray(a)))) <= atol for a in _inexact_leaves(out) if np.size(a))
