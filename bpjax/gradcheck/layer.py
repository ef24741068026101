"""``check_layer``: one layer's backward against ``jax.vjp`` of its forward, with the same three-way verdict."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import errors
from bpjax.core import Layer, backward_of, check_model, forward_of
from bpjax.gradcheck.model import build_report, check_settings
from bpjax.gradcheck.report import GradientReport


def _run(layer, train, params, x, state, key):
    return forward_of(layer, params, x, state=state, key=key, train=train)


def _manual(layer, train, params, x, state, dy, key):
    """``(<dy, y>, (), (dparams, dx))``: the objective whose gradient ``layer.backward`` computes, and that gradient."""
    y, residuals, _ = _run(layer, train, params, x, state, key)
    value = sum(jnp.vdot(d, o) for d, o in zip(jax.tree.leaves(dy), jax.tree.leaves(y)))
    return value, (), backward_of(layer, params, residuals, dy, x)  # the contract checked


@functools.partial(jax.jit, static_argnums=(0, 1))
def _both(layer, train, params, x, state, dy, key):
    """The hand-written ``(dparams, dx)`` and ``jax.vjp`` of the forward at ``dy``, in one program."""
    y, residuals, _ = _run(layer, train, params, x, state, key)
    reference = jax.vjp(lambda p, x: _run(layer, train, p, x, state, key)[0], params, x)[1](dy)
    return backward_of(layer, params, residuals, dy, x), reference


_manual64 = jax.jit(_manual, static_argnums=(0, 1))


def _cotangent(where, y, dy, seed):
    """A random ``dy`` of the output's shapes (one per output leaf), or the given one, checked."""
    if dy is None:
        # drawn by numpy: a jax.random draw compiles a sampler for every new shape (about 0.3 s each on a CPU)
        rng = np.random.default_rng(seed + 1)
        return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), y)
    if str(jax.tree.structure(dy)) != str(jax.tree.structure(y)) or any(
            jnp.shape(a) != jnp.shape(b) for a, b in zip(jax.tree.leaves(dy), jax.tree.leaves(y))):
        shapes = lambda t: jax.tree.map(lambda a: tuple(jnp.shape(a)), t)  # noqa: E731
        raise errors.BpjaxError(where, f"dy must have the output's shape {shapes(y)}, got {shapes(dy)}")
    return dy


def check_layer(layer: Layer, params, x, *, state=None, key=None, train: bool = True, dy=None,
                rtol: Optional[float] = None, finite_differences: Optional[bool] = True, fd_eps: float = 1e-5,
                fd_rtol: float = 1e-6, fd_directions: int = 3, seed: int = 0,
                sweep: Optional[bool] = None) -> GradientReport:
    """Check one layer's hand-written backward against ``jax.vjp`` of its forward, at a cotangent ``dy``.

    Draws a random ``dy`` (unless given) and compares ``layer.backward(params, residuals, dy)`` with
    ``jax.vjp`` of ``(params, x) -> y`` at ``dy``, row by row (``dparams`` leaves named by layer
    path, then ``dx``). Finite differences of ``<dy, f(params, x)>`` in float64 (same random draws)
    check the maths on every row by default (``finite_differences=True``; ``None``: only to decide
    where manual and ``jax.vjp`` disagree; ``False``: never). A ``serial`` layer gets the per-layer
    sweep when a row fails (``sweep=None``), always (``True``) or never (``False``).

    Examples:
      >>> layer = L.Dense(4)
      >>> _, params = layer.init(jax.random.key(0), (3,))
      >>> report = bp.check_layer(layer, params, jnp.linspace(-1, 1, 15).reshape(5, 3))
      >>> report.ok, [row.name for row in report.rows]
      (True, ["params['W']", "params['b']", 'input x'])
    """
    check_model(layer)
    where = f"check_layer({layer.name})"
    check_settings(where, rtol, fd_eps, fd_rtol, fd_directions, finite_differences, "jit", sweep)
    errors.check_key(where, key)
    st = () if state is None else state
    y = jax.eval_shape(lambda p, x: _run(layer, train, p, x, st, key)[0], params, x)  # shape errors first
    dy = _cotangent(where, y, dy, seed)
    manual, ref = _both(layer, train, params, x, st, dy, key)
    return build_report(where, layer, None, params, x, dy, st, key, train, manual, ref,
                        functools.partial(_manual64, layer, train), (st, dy), "jax.vjp", rtol=rtol,
                        finite_differences=finite_differences, fd_eps=fd_eps, fd_rtol=fd_rtol,
                        fd_directions=fd_directions, seed=seed, sweep=sweep)
