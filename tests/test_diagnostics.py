"""Gradient diagnostics: per-layer norms against jax.grad, activation statistics, dead units, fit logging."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import normal, random_params

import bpjax as bp
from bpjax import diagnostics as D
from bpjax import layers as L

XENT = bp.losses.softmax_cross_entropy


def _layers():
    return [L.Dense(6), L.Relu(), L.Dense(5), L.Sigmoid(), L.Dense(3)]


def test_norms_match_jax_grad_and_activations_by_hand():
    layers = _layers()
    model = bp.serial(*layers)
    params = random_params(model, (4,))
    x = normal(1, (8, 4))
    y = jnp.arange(8) % 3
    out = jax.jit(D.diagnostics(layers, XENT))(params, x, y)
    g = jax.jit(jax.grad(lambda p: XENT.value(model.forward(p, x)[0], y)))(params)
    for a, b in zip(jax.tree.leaves(out["grad_norm"]), jax.tree.leaves(g)):  # f32 roundoff: 1e-5 relative
        np.testing.assert_allclose(a, np.linalg.norm(np.asarray(b).ravel()), rtol=1e-5)
    # activations computed independently (in numpy)
    h = np.maximum(np.asarray(x) @ np.asarray(params[0]["W"]) + np.asarray(params[0]["b"]), 0)
    st = out["activations"][1]
    np.testing.assert_allclose(st["mean"], h.mean(), rtol=1e-5)
    np.testing.assert_allclose(st["std"], h.std(), rtol=1e-5)
    np.testing.assert_allclose(st["zero_fraction"], (h == 0).mean())
    np.testing.assert_allclose(st["dead_fraction"], (h == 0).all(0).mean())
    # backprop_norm: |dL/da_l| at each layer output, vs jax.grad with respect to the hidden activation
    dh = jax.jit(jax.grad(lambda h: XENT.value(bp.serial(*layers[2:]).forward(params[2:], h)[0], y)))(h)
    np.testing.assert_allclose(out["backprop_norm"][1], np.linalg.norm(np.asarray(dh)), rtol=1e-5)
    # the built model gives the same gradient statistics, without per-layer activations
    out2 = jax.jit(D.diagnostics(model, XENT))(params, x, y)
    assert "activations" not in out2
    for a, b in zip(jax.tree.leaves(out2["grad_norm"]), jax.tree.leaves(out["grad_norm"])):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_dead_relu_and_update_ratio():
    layers = [L.Dense(4), L.Relu(), L.Dense(2)]
    model = bp.serial(*layers)
    params = random_params(model, (3,))
    params = (dict(params[0], b=jnp.array([-100.0, -100.0, 0.0, 0.0])), (), params[2])  # two dead units
    x = normal(1, (16, 3))
    y = jnp.arange(16) % 2
    updates = jax.tree.map(lambda p: jnp.asarray(0.01 * np.asarray(p)), params)
    out = jax.jit(D.diagnostics(layers, XENT))(params, x, y, updates=updates)
    assert float(out["activations"][1]["dead_fraction"]) == 0.5
    np.testing.assert_allclose(out["update_ratio"][0]["W"], 0.01, rtol=1e-6)
    flat = D.flatten(out)
    assert flat["activations/1/dead_fraction"] == 0.5 and "grad_norm/0/W" in flat


def test_fit_callback_logs_diagnostics():
    from bpjax.train import fit
    layers = _layers()
    model = bp.serial(*layers)
    params = random_params(model, (4,))
    x = normal(1, (64, 4))
    y = jnp.asarray(np.argmax(np.asarray(x)[:, :3], -1))
    log = []
    fit(model, XENT, optax.adam(1e-2), params, (x, y), steps=40, batch_size=16, chunk_size=20, verbose=False,
        callback=D.fit_callback(layers, XENT, x, y, log))
    assert [r["step"] for r in log] == [20, 40] and log[1]["loss"] < log[0]["loss"] + 1e-6
    assert all(np.isfinite(v) for r in log for v in r.values())


def test_diagnostics_errors():
    layers = _layers()
    params = random_params(bp.serial(*layers), (4,))
    with pytest.raises(bp.BpjaxError, match="updates do not match the model"):
        D.diagnostics(layers, XENT)(params, jnp.ones((2, 4)), jnp.zeros(2, int), updates=params[0])
    with pytest.raises(bp.BpjaxError, match="keeps state.*pass state"):
        D.diagnostics([L.Dense(3), L.Dropout(0.5)], XENT)(params[:1] + ((),), jnp.ones((2, 4)), jnp.zeros(2, int))
