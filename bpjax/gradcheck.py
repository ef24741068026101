"""Gradient checks: hand-written gradients against ``jax.grad`` and central finite differences.

Two entry points, one report:

- :func:`check_gradients` checks a whole model and loss: every parameter leaf and the input.
- :func:`check_layer` checks one layer's backward against ``jax.vjp`` of its forward on a random
  cotangent ``dy`` (the per-layer check every bpjax layer passes in the test suite).

Error measures, per leaf (``m`` manual, ``r`` reference)::

    max_abs  = max |m - r|
    max_rel  = max_abs / scale,  scale = max(max |r|, 1e-3 * (largest max |r| over all leaves))
    cosine   = <m, r> / (|m| |r|)

A leaf passes when ``max_rel <= rtol``. The floor on ``scale`` judges a leaf whose true gradient is
(all but) zero on the model's own scale instead of dividing by zero. Finite differences (float64,
on request) compare the directional derivative ``<m, v>`` along random unit directions ``v`` with
``(L(p + eps v) - L(p - eps v)) / (2 eps)``, relative to ``|m|_2``.

Default tolerances: float64 ``rtol=1e-10`` (both gradients are exact up to roundoff of ~1e-16 per
operation, and the sums run in different orders); float32 ``rtol=1e-4`` (roundoff ~6e-8 per
operation grows with reduction length and depth, and XLA may fuse the two programs differently);
finite differences ``fd_rtol=1e-6`` with ``eps=1e-5`` (truncation ~eps^2, roundoff ~1e-16/eps).
"""

from __future__ import annotations

import functools
from typing import List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import _errors
from bpjax.core import Layer, apply, check_model
from bpjax.grad import autodiff_value_and_grad, value_and_grad
from bpjax.losses import as_loss

RTOL = {jnp.dtype("float64"): 1e-10, jnp.dtype("float32"): 1e-4, jnp.dtype("bfloat16"): 2e-2,
        jnp.dtype("float16"): 5e-3}


class LeafCheck(NamedTuple):
    """One row of a :class:`GradientReport`."""
    name: str
    shape: tuple
    max_abs_error: float
    max_rel_error: float
    cosine: float
    fd_rel_error: Optional[float] = None


class GradientReport(NamedTuple):
    """Result of a gradient check: per-leaf rows, tolerances and the verdict ``ok``."""
    title: str
    rows: List[LeafCheck]
    rtol: float
    fd_rtol: Optional[float] = None

    @property
    def max_rel_error(self) -> float:
        return max((r.max_rel_error for r in self.rows), default=0.0)

    @property
    def max_fd_rel_error(self) -> Optional[float]:
        errs = [r.fd_rel_error for r in self.rows if r.fd_rel_error is not None]
        return max(errs) if errs else None

    @property
    def ok(self) -> bool:
        ok = all(r.max_rel_error <= self.rtol for r in self.rows)
        if self.fd_rtol is not None:
            ok = ok and all(r.fd_rel_error is None or r.fd_rel_error <= self.fd_rtol for r in self.rows)
        return ok

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        head = ["leaf", "shape", "max abs err", "max rel err", "cosine"]
        fd = self.fd_rtol is not None
        if fd:
            head.append("fin.diff rel err")
        body = []
        for r in self.rows:
            row = [r.name, "x".join(map(str, r.shape)) or "scalar", f"{r.max_abs_error:.2e}",
                   f"{r.max_rel_error:.2e}", f"{r.cosine:.8f}"]
            if fd:
                row.append("-" if r.fd_rel_error is None else f"{r.fd_rel_error:.2e}")
            body.append(row)
        widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
        fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        verdict = "OK" if self.ok else "MISMATCH"
        tol = f"rtol {self.rtol:g}" + (f", finite-difference rtol {self.fd_rtol:g}" if fd else "")
        lines = [f"{self.title}: {verdict} (max rel err {self.max_rel_error:.2e}; {tol})", fmt(head),
                 fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))


def _leaves(tree, prefix):
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            out.append((prefix + jax.tree_util.keystr(path), leaf))
    return out


def _compare(manual, reference, rtol, title, fd=None, fd_rtol=None) -> GradientReport:
    scales = [float(jnp.max(jnp.abs(r))) if r.size else 0.0 for _, r in reference]
    global_scale = max(scales, default=0.0)
    rows = []
    for i, ((name, m), (_, r)) in enumerate(zip(manual, reference)):
        m64, r64 = np.asarray(m, np.float64), np.asarray(r, np.float64)
        if m64.shape != r64.shape:
            raise _errors.BpjaxError(title, f"manual gradient {name} has shape {m64.shape}, "
                                            f"expected {r64.shape} (the shape of its parameter)")
        abs_err = float(np.max(np.abs(m64 - r64))) if m64.size else 0.0
        scale = max(scales[i], 1e-3 * global_scale)
        rel = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))
        nm, nr = np.linalg.norm(m64), np.linalg.norm(r64)
        cos = float(np.vdot(m64, r64) / (nm * nr)) if nm > 0 and nr > 0 else float(nm == nr)
        rows.append(LeafCheck(name, tuple(m64.shape), abs_err, rel, cos, None if fd is None else fd[i]))
    return GradientReport(title, rows, rtol, fd_rtol)


def _default_rtol(leaves, rtol):
    if rtol is not None:
        return rtol
    dtypes = {jnp.dtype(jnp.result_type(leaf)) for _, leaf in leaves}
    return max(RTOL.get(d, 1e-4) for d in dtypes) if dtypes else 1e-4


def _to64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                        if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


def _finite_differences(objective, args, grads, eps, directions, seed):
    """Directional central differences of ``objective(*args)`` for each inexact leaf of ``args``.

    Runs in float64. Returns one relative error per leaf: ``max_v |fd_v - <g, v>| / scale`` with
    ``scale = max(|g|_2, 1e-3 * largest |g|_2 over the leaves)``, so a leaf whose true gradient is
    zero (a bias just before a batch norm) is judged on the model's scale, not divided by ~0.
    """
    with jax.enable_x64(True):
        args, grads = _to64(args), _to64(grads)
        flat, treedef = jax.tree.flatten(args)
        gflat = [g for g in jax.tree.leaves(grads) if jnp.issubdtype(jnp.result_type(g), jnp.inexact)]
        norms = [float(jnp.linalg.norm(g)) for g in gflat]
        floor = 1e-3 * max(norms, default=0.0)
        f = jax.jit(lambda leaves: objective(*jax.tree.unflatten(treedef, leaves)))
        key = jax.random.key(seed)
        inexact = [i for i, a in enumerate(flat) if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
        errs = []
        for i, g, gnorm in zip(inexact, gflat, norms):
            worst = 0.0
            gnorm = max(gnorm, floor)
            for _ in range(directions):
                key, sub = jax.random.split(key)
                v = jax.random.normal(sub, flat[i].shape, jnp.float64)
                v = v / jnp.maximum(jnp.linalg.norm(v), 1e-300)
                plus, minus = list(flat), list(flat)
                plus[i], minus[i] = flat[i] + eps * v, flat[i] - eps * v
                fd = (float(f(plus)) - float(f(minus))) / (2 * eps)
                err = abs(fd - float(jnp.vdot(g, v)))
                worst = max(worst, err / gnorm if gnorm > 0 else err)
            errs.append(worst)
        return errs


def _check_data(where, x):
    for a in jax.tree.leaves(x):
        name = "x"
        if _errors.is_concrete(a) and jnp.issubdtype(jnp.result_type(a), jnp.inexact):
            if not bool(jnp.all(jnp.isfinite(a))):
                raise _errors.BpjaxError(where, f"{name} contains NaN or Inf "
                                                f"({int(jnp.sum(~jnp.isfinite(a)))} entries)")


def _check_settings(where, rtol, fd_eps, fd_rtol, fd_directions):
    """Tolerances and finite-difference settings: positive numbers and a positive int."""
    for what, value in (("rtol", rtol), ("fd_eps", fd_eps), ("fd_rtol", fd_rtol)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise _errors.BpjaxError(where, f"{what} must be a positive number, got {value!r}")
    if isinstance(fd_directions, bool) or not isinstance(fd_directions, int) or fd_directions < 1:
        raise _errors.BpjaxError(where, f"fd_directions must be a positive int, got {fd_directions!r}")


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _both_gradients(model, loss, train, params, x, y, state, key):
    """Manual and ``jax.grad`` gradients w.r.t. (params, x), compiled once per model, loss and shapes.

    Returns ``(error, (manual, reference))``: value checks (labels in range, finite targets) run
    through ``checkify``, so a bad label raises instead of checking gradients of a NaN loss.
    """
    kw = dict(state=state, key=key, train=train)

    def both(params, x, y):
        return (value_and_grad(model, loss, wrt_input=True)(params, x, y, **kw),
                autodiff_value_and_grad(model, loss, wrt_input=True)(params, x, y, **kw))

    return _errors.checked(both)(params, x, y)


def check_gradients(model: Layer, loss, params, x, y, *, state=None, key=None, train: bool = True,
                    rtol: Optional[float] = None, finite_differences: bool = False,
                    fd_eps: float = 1e-5, fd_rtol: float = 1e-6, fd_directions: int = 3,
                    seed: int = 0) -> GradientReport:
    """Compare the hand-written gradients of ``loss(model(params, x), y)`` with ``jax.grad``.

    Works on any model built from bpjax layers and any loss (a :class:`bpjax.losses.Loss` or a
    plain function). Every parameter leaf and the input ``x`` get a row: max abs error, max
    relative error, cosine similarity, and with ``finite_differences=True`` a central-difference
    check in float64 (see the module docstring for the measures and the default tolerances).

    Args:
      model, loss: the model and loss to check.
      params, x, y: a point to check at; ``x: (B, ...)``.
      state, key, train: the context of a contextual model (its state and PRNG key).
      rtol: pass/fail tolerance on ``max_rel_error`` (default by dtype: f64 1e-10, f32 1e-4).
      finite_differences: also compare with central differences in float64.
      fd_eps, fd_rtol, fd_directions, seed: step, tolerance, number of random directions per leaf
        and their seed.

    Returns:
      A :class:`GradientReport`; ``print`` it for the table, test ``report.ok``.
    """
    check_model(model)
    loss = as_loss(loss)
    for leaf in jax.tree.leaves(x):  # float inputs, or integer ids (embeddings: no input gradient)
        dtype = jnp.result_type(leaf)
        if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
            raise _errors.BpjaxTypeError(model.name, f"expected a real floating-point input (or integer ids), "
                                                     f"got dtype {dtype}")
    _check_data("check_gradients", x)
    _check_settings("check_gradients", rtol, fd_eps, fd_rtol, fd_directions)
    error, ((_, m), (_, r)) = _both_gradients(model, loss, train, params, x, y, state, key)
    _errors.throw(error)
    manual = _leaves(m[0], "params") + _leaves(m[1], "input x")
    reference = _leaves(r[0], "params") + _leaves(r[1], "input x")
    tol = _default_rtol(reference, rtol)
    fd = None
    if finite_differences:
        st = () if state is None else state

        def objective(p, x):
            pred = apply(model, p, x, state=st, key=key, train=train)[0]
            return loss.value(pred, y)

        fd = _finite_differences(objective, (params, x), (m[0], m[1]), fd_eps, fd_directions, seed)
    title = f"check_gradients({model.name}, {loss.name})"
    return _compare(manual, reference, tol, title, fd, fd_rtol if finite_differences else None)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _layer_gradients(layer, train, params, x, state, key, dy):
    """``layer.backward`` and ``jax.vjp`` of its forward at ``dy``, compiled once per layer and shapes."""
    def f(p, x):
        return apply(layer, p, x, state=state, key=key, train=train)[0]

    _, residuals, _ = apply(layer, params, x, state=state, key=key, train=train)
    _, vjp = jax.vjp(f, params, x)
    return layer.backward(params, residuals, dy), vjp(dy)


def check_layer(layer: Layer, params, x, *, state=None, key=None, train: bool = True, dy=None,
                rtol: Optional[float] = None, finite_differences: bool = True, fd_eps: float = 1e-5,
                fd_rtol: float = 1e-6, fd_directions: int = 3, seed: int = 0) -> GradientReport:
    """Check one layer's hand-written backward against ``jax.vjp`` of its forward.

    Draws a random cotangent ``dy`` (unless given), computes ``layer.backward(params, residuals, dy)``
    and ``jax.vjp`` of ``(params, x) -> y`` at ``dy``, and compares ``dparams`` and ``dx`` leaf by
    leaf; with ``finite_differences`` (default) also checks both against central differences of
    ``<dy, f(params, x)>`` in float64.
    """
    check_model(layer)
    _check_settings(f"check_layer({layer.name})", rtol, fd_eps, fd_rtol, fd_directions)
    st = () if state is None else state

    def f(p, x):
        return apply(layer, p, x, state=st, key=key, train=train)[0]

    y = jax.eval_shape(f, params, x)  # shape errors surface here, before anything compiles
    if dy is None:  # one random cotangent per output leaf (tuple outputs of fan_out/parallel too)
        leaves, treedef = jax.tree.flatten(y)
        keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
        dy = jax.tree.unflatten(treedef, [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])
    elif str(jax.tree.structure(dy)) != str(jax.tree.structure(y)) or any(
            jnp.shape(a) != jnp.shape(b) for a, b in zip(jax.tree.leaves(dy), jax.tree.leaves(y))):
        shapes = lambda t: jax.tree.map(lambda a: tuple(jnp.shape(a)), t)  # noqa: E731
        raise _errors.BpjaxError(f"check_layer({layer.name})", f"dy must have the output's shape {shapes(y)}, "
                                                               f"got {shapes(dy)}")
    (dparams, dx), (rp, rx) = _layer_gradients(layer, train, params, x, st, key, dy)
    manual = _leaves(dparams, "params") + _leaves(dx, "input x")
    reference = _leaves(rp, "params") + _leaves(rx, "input x")
    if len(manual) != len(reference):
        raise _errors.BpjaxError(layer.name, f"backward returned {len(manual)} gradient leaves, expected "
                                             f"{len(reference)} (dparams must mirror params)")
    tol = _default_rtol(reference, rtol)
    fd = None
    if finite_differences:
        def objective(p, x, dy):  # <dy, f(p, x)>, summed over output leaves
            return sum(jnp.vdot(d, o) for d, o in zip(jax.tree.leaves(dy), jax.tree.leaves(f(p, x))))
        fd = _finite_differences(lambda p, x: objective(p, x, _to64(dy)), (params, x), (dparams, dx),
                                 fd_eps, fd_directions, seed)
    return _compare(manual, reference, tol, f"check_layer({layer.name})", fd,
                    fd_rtol if finite_differences else None)
