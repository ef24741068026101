"""``bp.layers.Autodiff``: a JAX function as a layer whose backward is ``jax.vjp``, everywhere a layer goes.

The reference formulation is the same function written with hand-written layers: ``Autodiff(dense_tanh)``
computes ``tanh(x @ W + b)``, which is ``bp.serial(L.Dense(8), L.Tanh())`` on the same params, so every
gradient, training run and per-example gradient of a model holding it must equal the all-hand-written
model's. ``python tests/test_autodiff.py`` measures the cost of the one against the other (step time side
by side in one process, residual bytes).
"""

import functools
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import normal, random_params

import bpjax as bp
from bpjax import layers as L

F = 8
XENT = bp.losses.softmax_cross_entropy
# float32 against float32: the two programs compute the same maths in a different order (XLA fuses them
# differently), roundoff about 6e-8 per operation over a few dozen operations
TOL = dict(rtol=1e-5, atol=1e-6)


def dense_tanh(p, x):                      # x: (B, ..., D) -> (B, ..., 8): what Dense(8) then Tanh compute
    return jnp.tanh(x @ p["W"] + p["b"])


def init_dense_tanh(key, input_shape):     # Dense(8)'s own params
    return L.Dense(F).init(key, input_shape)


AD = L.Autodiff(dense_tanh, init_dense_tanh)
MODEL = bp.serial(L.Dense(6), L.Relu(), AD, L.Dense(3))                              # by hand, JAX's, by hand
SAME = bp.serial(L.Dense(6), L.Relu(), bp.serial(L.Dense(F), L.Tanh()), L.Dense(3))  # the same function, all by hand
PARAMS = random_params(MODEL, (5,))
X, Y = normal(0, (16, 5)), jnp.asarray(np.random.default_rng(1).integers(0, 3, 16))


def as_same(params):
    """``MODEL``'s params as ``SAME``'s (the Autodiff layer's dict becomes the inner serial's ``(dense, tanh)``)."""
    return params[0], params[1], (params[2], ()), params[3]


@functools.cache
def reference():
    """``SAME``'s value and hand-written gradients at ``PARAMS``: the reference of every test below."""
    return jax.jit(bp.value_and_grad(SAME, XENT))(as_same(PARAMS), X, Y)


def test_gradients_equal_the_same_model_written_by_hand():
    value, grads = jax.jit(bp.value_and_grad(MODEL, XENT))(PARAMS, X, Y)
    chex.assert_trees_all_close((value, as_same(grads)), reference(), **TOL)


def test_residuals_are_plain_arrays_without_the_params_and_compile_once():
    """The forward keeps what jax.vjp reads, less the params (the backward gets them): for tanh(x @ W + b),
    x and two (B, 8) arrays of tanh's derivative, never W. Their structure is the same from call to call, so a
    jitted backward fed by eager forwards compiles once."""
    p, x = PARAMS[2], normal(2, (4, 6))
    y, residuals = AD.forward(p, x)
    kept, _ = residuals
    assert [a.shape for a in kept] == [(4, 6), (4, F), (4, F)]           # x, and two for tanh (jax 0.10)
    assert bp.remat.residual_bytes(AD, p, x) == (4 * 6 + 2 * 4 * F) * 4   # Dense + Tanh by hand: (4*6 + 4*8) * 4
    assert not any(a is w for a in kept for w in jax.tree.leaves(p))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def backward(p, residuals, dy):
        return AD.backward(p, residuals, dy)

    for i in range(3):
        y, residuals = AD.forward(p, x * i)
        chex.assert_trees_all_close(backward(p, residuals, y), jax.vjp(dense_tanh, p, x * i)[1](y), **TOL)
    assert bp.remat.residual_bytes(bp.remat.remat(AD), p, x) == 4 * 6 * 4  # recomputed instead: x alone


def test_check_gradients_says_which_rows_are_jax_s():
    report = bp.check_gradients(MODEL, XENT, PARAMS, X, Y, finite_differences=False)
    assert report.ok, report
    assert [r.backward for r in report.rows] == ["hand-written"] * 2 + ["jax.vjp"] * 2 + ["hand-written"] * 2 + \
        ["both"]
    text = str(report)
    assert "serial[2] Autodiff(dense_tanh) is an Autodiff layer: its gradient is JAX's (jax.vjp)" in text
    head = next(line for line in text.splitlines() if line.startswith("row "))
    assert head.split()[3] == "backward" and "hand-written, and jax.vjp" in text

    report = bp.check_layer(AD, PARAMS[2], normal(3, (4, 6)), finite_differences=False)
    assert report.ok and {r.backward for r in report.rows} == {"jax.vjp"}
    assert "every row's gradient is JAX's" in str(report)


def test_a_hand_written_bug_in_an_otherwise_autodiff_model_is_pinned():
    """One hand-written layer between two Autodiff layers: its planted bug (dz off by 1%) fails the check, and
    the sweep pins it to that layer."""
    buggy = L.Relu()._replace(backward=lambda p, z, da: ((), 1.01 * da * (z > 0)), name="Relu(buggy)")
    linear = L.Autodiff(lambda W, x: x @ W, lambda key, shape: ((6,), PARAMS[0]["W"][:, :6]), name="Autodiff(lin)")
    model = bp.serial(linear, buggy, AD)
    params = (PARAMS[0]["W"][:, :6], (), PARAMS[2])
    report = bp.check_gradients(model, bp.losses.mse, params, X, normal(9, (16, F)), finite_differences=False)
    assert not report.ok and report.pinned == "serial[1] Relu(buggy)", report


def test_as_custom_vjp_and_per_example_grads():
    f = bp.as_custom_vjp(MODEL)
    value, grads = jax.jit(jax.value_and_grad(lambda p: XENT(f(p, X), Y)))(PARAMS)
    chex.assert_trees_all_close((value, as_same(grads)), reference(), **TOL)
    _, per_example = jax.jit(bp.per_example_grads(MODEL, XENT))(PARAMS, X, Y)   # the backward under vmap
    chex.assert_trees_all_close(as_same(jax.tree.map(lambda g: g.mean(0), per_example)), reference()[1], **TOL)


@pytest.mark.slow  # two compiled runs; the default suite trains an Autodiff layer in the interop guide's Equinox block
def test_fit_trains_as_the_same_model_written_by_hand():
    run = dict(steps=4, batch_size=8, verbose=False)
    res = bp.train.fit(MODEL, XENT, optax.adam(1e-2), PARAMS, (X, Y), **run)
    same = bp.train.fit(SAME, XENT, optax.adam(1e-2), as_same(PARAMS), (X, Y), **run)
    chex.assert_trees_all_close(res.history["loss"], same.history["loss"], **TOL)
    chex.assert_trees_all_close(as_same(res.params), same.params, **TOL)


def test_params_round_trip_through_a_checkpoint(tmp_path):
    params = (PARAMS[0], {"mlp": [PARAMS[2]["W"], None, PARAMS[2]["b"]]})   # any pytree: lists, None
    bp.checkpoint.save(tmp_path / "p.npz", params)
    chex.assert_trees_all_equal(bp.checkpoint.restore(tmp_path / "p.npz", like=params), params)


def test_integer_and_pytree_inputs():
    lookup = L.Autodiff(lambda p, ids: p["E"][ids], L.Embedding(10, 4).init, name="Lookup")  # ids: int, dx float0
    ids = jnp.asarray(np.random.default_rng(5).integers(0, 10, (16, 2)))
    params = random_params(bp.serial(L.Embedding(10, 4), L.Flatten(), L.Dense(3)), (2,))
    grads = [jax.jit(bp.value_and_grad(bp.serial(first, L.Flatten(), L.Dense(3)), XENT))(params, ids, Y)[1]
             for first in (lookup, L.Embedding(10, 4))]
    chex.assert_trees_all_close(*grads, **TOL)

    masked = L.Autodiff(lambda s, xm: jnp.where(xm[1], s * xm[0], 0.0), lambda key, shape: (shape[0], 2.0))
    xm = (normal(6, (4, 3)), normal(7, (4, 3)) > 0)                       # x a pytree: (values, mask)
    report = bp.check_layer(masked, jnp.float32(2.0), xm, finite_differences=False)
    assert report.ok, report


@pytest.mark.slow  # second order is an extra; the default suite checks the gradient itself (tests above)
def test_second_order_runs_forward_over_reverse_through_jax_vjp():
    hvp = jax.jit(bp.second_order.hvp(MODEL, XENT))(PARAMS, X, Y, PARAMS)
    hvp_same = jax.jit(bp.second_order.hvp(SAME, XENT))(as_same(PARAMS), X, Y, as_same(PARAMS))
    chex.assert_trees_all_close(as_same(hvp), hvp_same, **TOL)


def test_bad_arguments_and_an_impure_apply_are_named():
    with pytest.raises(bp.BpjaxTypeError, match=r"Autodiff: init must be a function, got tuple"):
        L.Autodiff(dense_tanh, ((8,), PARAMS[2]))
    traces = []

    def impure(p, x):                      # a different function at its second trace
        traces.append(1)
        return jnp.tanh(x @ p["W"]) if len(traces) == 1 else x @ p["W"]

    layer = L.Autodiff(impure, init_dense_tanh, name="Impure")
    y, residuals = layer.forward(PARAMS[2], normal(8, (4, 6)))
    with pytest.raises(bp.BpjaxError, match=r"Impure: apply traced differently in the backward than in the "
                                            r"forward.*apply must be a pure function"):
        layer.backward(PARAMS[2], residuals, y)
    with pytest.raises(bp.BpjaxError, match=r"Autodiff\(dense_tanh\): expected dy with the output's shapes and "
                                            r"dtypes \[\(\(4, 8\), 'float32'\)\], got \[\(\(4, 8\), 'float16'\)\]"):
        AD.backward(PARAMS[2], AD.forward(PARAMS[2], normal(8, (4, 6)))[1], jnp.ones((4, F), jnp.float16))


def _best_step_times(steps_of: dict, params_of: dict, repeats: int, steps: int) -> dict:
    """Seconds per compiled step of each ``steps_of[name](params)``, wall-clock and process CPU time (all threads):
    the best of ``repeats`` interleaved runs of ``steps`` steps."""
    def run(name):
        p, wall, cpu = params_of[name], time.perf_counter(), time.process_time()
        for _ in range(steps):
            p = steps_of[name](p)
        jax.block_until_ready(p)
        return time.perf_counter() - wall, time.process_time() - cpu

    for name in steps_of:  # compile
        run(name)
    times: dict = {name: [] for name in steps_of}
    for _ in range(repeats):
        for name in steps_of:
            times[name].append(run(name))
    return {name: tuple(min(t[i] for t in ts) / steps for i in (0, 1)) for name, ts in times.items()}


def _sgd_step(model, x, y, backward="manual"):
    vg = bp.value_and_grad(model, bp.losses.mse, backward=backward)
    return jax.jit(lambda p: jax.tree.map(lambda a, g: a - 1e-3 * g, p, vg(p, x, y)[1]))


def measure(repeats: int = 15, steps: int = 200, batch: int = 256, width: int = 256) -> dict:
    """The cost of Autodiff, side by side in one process: compiled SGD steps (best of ``repeats`` interleaved runs
    of ``steps`` steps) and residual bytes.

    1. ``Autodiff(dense_tanh)`` against the same function by hand, ``bp.serial(Dense, Tanh)``, and ``jax.grad``
       of that forward; ``x: (batch, width)``.
    2. The design: a tanh RNN (a ``lax.scan`` over 32 steps) as ``Autodiff`` against keeping only ``x`` and calling
       ``jax.vjp`` in the backward (XLA does not merge the scan computed twice) and ``jax.grad``.
    """
    hand = bp.serial(L.Dense(width), L.Tanh())
    auto = bp.serial(L.Autodiff(dense_tanh, L.Dense(width).init))
    params = random_params(hand, (width,))
    x, y = normal(0, (batch, width)), normal(1, (batch, width))
    models = {"hand-written": (hand, params), "Autodiff": (auto, (params[0],))}
    dense = {"step_ratio": _best_step_times(
        {"hand-written": _sgd_step(hand, x, y), "Autodiff": _sgd_step(auto, x, y),
         "jax.grad": _sgd_step(hand, x, y, "autodiff")},
        {"hand-written": params, "Autodiff": (params[0],), "jax.grad": params}, repeats, steps),
        "residual_bytes": {n: bp.remat.residual_bytes(m, p, x) for n, (m, p) in models.items()}}

    def rnn(p, xs):                                   # xs: (B, T, D) -> (B, H), h_t = tanh(x_t Wx + h_{t-1} Wh + b)
        cell = lambda h, xt: (jnp.tanh(xt @ p["Wx"] + h @ p["Wh"] + p["b"]), None)  # noqa: E731
        return jax.lax.scan(cell, jnp.zeros((xs.shape[0], 128)), jnp.swapaxes(xs, 0, 1))[0]

    def rnn_init(key, shape):
        return (128,), {"Wx": normal(2, (shape[-1], 128)) / 6, "Wh": normal(3, (128, 128)) / 12, "b": normal(4, (128,))}

    recompute = bp.Layer(rnn_init, lambda p, xs: (rnn(p, xs), xs), lambda p, xs, dy: jax.vjp(rnn, p, xs)[1](dy),
                         "recompute")
    xs, ys = normal(5, (64, 32, 32)), normal(6, (64, 128))
    p_rnn = (rnn_init(None, (32, 32))[1],)
    variants = {"Autodiff": L.Autodiff(rnn, rnn_init), "x kept, jax.vjp in the backward": recompute}
    steps_of = {"jax.grad": _sgd_step(bp.serial(recompute), xs, ys, "autodiff")}
    steps_of.update({name: _sgd_step(bp.serial(layer), xs, ys) for name, layer in variants.items()})
    scan = _best_step_times(steps_of, dict.fromkeys(steps_of, p_rnn), repeats, steps // 4)
    for times in (dense["step_ratio"], scan):  # (wall, CPU time) of each over those of the first
        base = next(iter(times.values()))
        times.update({name: (round(w / base[0], 3), round(c / base[1], 3)) for name, (w, c) in times.items()})
    return {"dense_tanh": dense, "rnn_scan": {"step_ratio": scan}, "device": jax.devices()[0].device_kind}


if __name__ == "__main__":
    import json

    print(json.dumps(measure(), indent=1), file=sys.stdout)
