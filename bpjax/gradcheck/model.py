"""``check_gradients``: a whole model and loss, every parameter leaf and the input, with a three-way verdict."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import errors
from bpjax.core import Layer, check_model
from bpjax.grad import check_inputs, gradients
from bpjax.gradcheck import judge as _judge
from bpjax.gradcheck import measure, paths, world64
from bpjax.gradcheck.report import INPUT, MANUAL_WRONG, UPSTREAM_WRONG, GradientReport
from bpjax.gradcheck.sweep import sweep as sweep_layers
from bpjax.losses import as_loss

REFERENCES = {"jit": "jax.grad under jit", "eager": "jax.grad, eager (not under jit)"}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _manual(model, loss, train, params, x, y, state, key):
    """The hand-written ``(value, new_state, (dparams, dx))``; value checks (labels in range) through ``checkify``."""
    fn = gradients(model, loss, wrt_input=True)
    return errors.checked(lambda p, x, y: fn(p, x, y, state, key, train))(params, x, y)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _manual64(model, loss, train, params, x, y, state, key):
    return gradients(model, loss, wrt_input=True)(params, x, y, state, key, train)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _reference_jit(model, loss, train, params, x, y, state, key):
    """``jax.grad`` of the same forward and loss, compiled alone (as ``fit(backward="autodiff")`` compiles it)."""
    return gradients(model, loss, backward="autodiff", wrt_input=True)(params, x, y, state, key, train)


def reference_gradients(reference: str, model, loss, train, params, x, y, state, key):
    if reference == "jit":
        return _reference_jit(model, loss, train, params, x, y, state, key)
    return gradients(model, loss, backward="autodiff", wrt_input=True)(params, x, y, state, key, train)




def check_settings(where: str, rtol, fd_eps, fd_rtol, fd_directions, finite_differences, reference, sweep_) -> None:
    """Tolerances and settings: positive numbers, a positive int, ``None``/bool switches, a known reference."""
    for what, value in (("rtol", rtol), ("fd_eps", fd_eps), ("fd_rtol", fd_rtol)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise errors.BpjaxError(where, f"{what} must be a positive number, got {value!r}")
    if isinstance(fd_directions, bool) or not isinstance(fd_directions, int) or fd_directions < 1:
        raise errors.BpjaxError(where, f"fd_directions must be a positive int, got {fd_directions!r}")
    for what, value in (("finite_differences", finite_differences), ("sweep", sweep_)):
        if value is not None and not isinstance(value, bool):
            raise errors.BpjaxTypeError(where, f"{what} must be None (when needed), True or False, got {value!r}")
    if reference not in REFERENCES:
        raise errors.BpjaxError(where, f"reference must be one of {tuple(REFERENCES)}, got {reference!r}")


def rows_of(params, x, labels):
    """Positions, tree-path names and labels of the rows: the inexact leaves of ``(params, x)``."""
    flat = jax.tree_util.tree_leaves_with_path((params, x))
    names = [("params" if path[0].idx == 0 else INPUT) + jax.tree_util.keystr(path[1:]) for path, _ in flat]
    labels = list(labels) + names[len(labels):]
    keep = [i for i, (_, a) in enumerate(flat) if measure.inexact(a)]
    return keep, [names[i] for i in keep], [labels[i] for i in keep]


def make_world(run, args_before, args_after, point_tree, keep, dtype, key):
    """The float64 copy: ``() -> (point, value(leaves), float64 manual rows)`` for :func:`bpjax.gradcheck.judge`.

    ``run(*args_before, p, x, *args_after, key) -> (value, _, (dparams, dx))`` is compiled in float64;
    ``point_tree = (params, x)``.
    """
    def world():
        with jax.enable_x64(True):
            before, after, tree = world64.to64((args_before, args_after, point_tree))
            k64 = world64.same_draws_key(key, dtype)
            flat, treedef = jax.tree.flatten(tree)

            def value(leaves):
                with jax.enable_x64(True):
                    full = list(flat)
                    for i, leaf in zip(keep, leaves):
                        full[i] = jnp.asarray(leaf, jnp.float64)
                    return float(run(*before, *jax.tree.unflatten(treedef, full), *after, k64)[0])

            _, _, grads = run(*before, *tree, *after, k64)
            g = jax.tree.leaves(grads)
            return [np.asarray(flat[i]) for i in keep], value, [np.asarray(g[i]) for i in keep]

    return world


def check_gradients(model: Layer, loss, params, x, y, *, state=None, key=None, train: bool = True,
                    rtol: Optional[float] = None, finite_differences: Optional[bool] = None,
                    fd_eps: float = 1e-5, fd_rtol: float = 1e-6, fd_directions: int = 3, seed: int = 0,
                    reference: str = "jit", sweep: Optional[bool] = None) -> GradientReport:
    """Check the hand-written gradients of ``loss(model(params, x), y)``: rows, a verdict in words, the culprit layer.

    Every parameter leaf and the input get a row named by layer path (``serial[2] Swish: beta``):
    the hand-written gradient against ``jax.grad`` in the model's dtype, and where they disagree,
    float64 finite differences (same params, same random draws) decide which one is wrong. When the
    hand-written gradient is wrong and the model is a ``serial``, a per-layer sweep pins the bug to
    its layer. See :mod:`bpjax.gradcheck` for the measures and tolerances; the report prints them.

    Args:
      model, loss: the model and loss (a :class:`bpjax.losses.Loss` or a plain function).
      params, x, y: the point to check at; ``x: (B, ...)``.
      state, key, train: the context of a contextual model (its state and PRNG key).
      rtol: tolerance of manual vs reference (default by dtype: f64 1e-10, f32 1e-4).
      finite_differences: ``None`` (default) on the rows where manual and reference disagree,
        ``True`` on every row, ``False`` never.
      fd_eps, fd_rtol, fd_directions, seed: step, tolerance, smooth random directions per row, seed.
      reference: ``"jit"`` (``jax.grad`` compiled, as training with ``backward="autodiff"`` runs it)
        or ``"eager"`` (op by op, not under ``jit``: immune to the XLA CPU behaviour in the gradient-checks guide).
      sweep: the per-layer sweep: ``None`` (default) when a row fails, ``True`` always, ``False`` never.

    Returns:
      A :class:`GradientReport`; ``print`` it, test ``report.ok``.

    Examples:
      >>> model = bp.serial(L.Dense(4), L.Tanh(), L.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> x, y = jnp.linspace(-1, 1, 15).reshape(5, 3), jnp.array([0, 1, 0, 1, 1])
      >>> report = bp.check_gradients(model, bp.losses.softmax_cross_entropy, params, x, y)
      >>> report.ok, len(report.rows)                                # a row per leaf, and the input
      (True, 5)
      >>> print(str(report).splitlines()[0])                         # print(report) shows every row
      check_gradients(serial(Dense(4), Tanh, Dense(2)), softmax_cross_entropy): OK
    """
    check_model(model)
    loss = as_loss(loss)
    x, y, state = check_inputs("check_gradients", model, x, y, state, key)
    for leaf in jax.tree.leaves(x):  # float inputs, or integer ids (embeddings: no input gradient)
        dtype = jnp.result_type(leaf)
        if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
            raise errors.BpjaxTypeError(model.name, f"expected a real floating-point input (or integer ids), "
                                                    f"got dtype {dtype}")
    check_settings("check_gradients", rtol, fd_eps, fd_rtol, fd_directions, finite_differences, reference, sweep)
    error, (_, _, manual) = _manual(model, loss, train, params, x, y, state, key)
    errors.throw(error)
    ref = reference_gradients(reference, model, loss, train, params, x, y, state, key)[2]
    dtype = measure.model_dtype(jax.tree.leaves((params, x)))
    run64 = functools.partial(_manual64, model, loss, train) if dtype != world64.F64 else \
        (lambda *args: _manual(model, loss, train, *args)[1])  # a float64 model: its own program
    return build_report(f"check_gradients({model.name}, {loss.name})", model, loss, params, x, y, state, key,
                        train, manual, ref, run64, (y, state), REFERENCES[reference], rtol=rtol,
                        finite_differences=finite_differences, fd_eps=fd_eps, fd_rtol=fd_rtol,
                        fd_directions=fd_directions, seed=seed, sweep=sweep)


def build_report(title, model, loss, params, x, target, state, key, train, manual, ref, run64, after,
                 reference_name, *, rtol, finite_differences, fd_eps, fd_rtol, fd_directions, seed,
                 sweep) -> GradientReport:
    """The report of ``manual`` against ``ref`` (each ``(dparams, dx)``): rows judged (:mod:`.judge`, the float64
    copy running ``run64(p, x, *after, key)``), the per-layer sweep, the verdict in words."""
    keep, names, labels = rows_of(params, x, paths.labels(model, params))
    whose = paths.backwards(model, params, x)  # hand-written, or jax.vjp in an Autodiff layer
    m, r = jax.tree.leaves(manual), jax.tree.leaves(ref)
    dtype = measure.model_dtype(jax.tree.leaves((params, x)))
    tol = measure.default_rtol(dtype, rtol)
    world = make_world(run64, (), after, (params, x), keep, dtype, key)
    rows, inconclusive, tols = _judge.judge(names, labels, [m[i] for i in keep], [r[i] for i in keep], dtype=dtype,
                                            rtol=tol, rtol_given=rtol is not None,
                                            finite_differences=finite_differences, world=world, fd_eps=fd_eps,
                                            fd_rtol=fd_rtol, fd_directions=fd_directions, seed=seed,
                                            backwards=[whose[i] for i in keep])
    rows, sweep_rows, pinned, more = run_sweep(sweep, rows, model, loss, params, x, target, state, key, train, tol)
    notes = _judge.sentences(rows, reference_name, finite_differences, inconclusive)
    return GradientReport(title, rows, tol, fd_rtol if any(row.fd_rel_error is not None for row in rows) else None,
                          tols, notes + more, sweep_rows, pinned, reference_name)


def run_sweep(sweep, rows, model, loss, params, x, target, state, key, train, tol):
    """The per-layer sweep when asked (``True``) or when a row fails (``None``): ``(rows, sweep rows, pinned,
    sentences)``, the verdict rows with the "manual wrong" ones the sweep finds upstream of a failing layer
    relabelled "wrong upstream" (their own backward is right)."""
    if not (sweep or (sweep is None and not all(row.ok for row in rows))):
        return rows, (), None, ()
    if not (model.kind == "serial" and paths.per_child(model, params)):
        return rows, (), None, ("per-layer sweep: the model is not a bp.serial; check its layers with "
                                "bp.check_layer",)
    sweep_rows, pinned, blame = sweep_layers(model.children, loss, params, x, target, state, key, train, tol)
    if pinned is None:
        return rows, sweep_rows, None, ("per-layer sweep: every layer's own backward agrees with jax.vjp of its "
                                        "forward",)
    culprit = [blame.get(INPUT if r.name.startswith(INPUT) else r.label) if r.verdict == MANUAL_WRONG else None
               for r in rows]
    rows = [r._replace(verdict=UPSTREAM_WRONG, upstream_of=c) if c else r for r, c in zip(rows, culprit)]
    bad = [r.label.split(": ", 1)[-1] for r in sweep_rows if r.label.startswith(pinned + ":") and not r.ok]
    return rows, sweep_rows, pinned, (_judge.pinned_sentence(pinned, ", ".join(bad) or "its gradients"),)


