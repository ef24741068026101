"""Whole models: manual vs jax.grad on generated MLPs, 200 optimiser steps, custom VJP, training step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import normal, random_params
from hypothesis import given, settings
from hypothesis import strategies as st

import bpjax as bp
from bpjax import layers as L

ACTS = [L.Sigmoid, L.Tanh, L.Relu, lambda: L.LeakyRelu(0.1), L.Elu, L.Gelu, L.Softplus, L.Identity]


def _targets(loss_name, seed, batch, width):
    rng = np.random.default_rng(seed)
    if loss_name == "softmax_cross_entropy":
        return jnp.asarray(rng.integers(0, width, batch))
    if loss_name == "binary_cross_entropy":
        return jnp.asarray(rng.integers(0, 2, (batch, width)), jnp.float64)
    return jnp.asarray(rng.standard_normal((batch, width)), jnp.float64)


def _check_generated_mlp(depth, widths, acts, batch, loss_name, seed):
    hidden = []
    for i in range(depth - 1):
        hidden += [L.Dense(widths[i + 1]), ACTS[acts[i]]()]
    out = max(widths[-1], 2) if loss_name == "softmax_cross_entropy" else widths[-1]
    model = bp.serial(*hidden, L.Dense(out))
    with jax.enable_x64(True):
        params = random_params(model, (widths[0],), seed, jnp.float64)
        x = normal(seed + 1, (batch, widths[0]), jnp.float64)
        y = _targets(loss_name, seed + 2, batch, out)
        report = bp.check_gradients(model, getattr(bp.losses, loss_name), params, x, y, rtol=1e-10)
    assert report.ok, str(report)


# each example is a new model (new shapes): two programs to compile, ~2-5 s of CPU
MLPS = given(depth=st.integers(1, 6), widths=st.lists(st.integers(1, 64), min_size=7, max_size=7),
             acts=st.lists(st.integers(0, len(ACTS) - 1), min_size=6, max_size=6), batch=st.integers(1, 17),
             loss_name=st.sampled_from(["mse", "softmax_cross_entropy", "binary_cross_entropy"]),
             seed=st.integers(0, 2**16))
test_generated_mlps_match_jax_grad_f64 = settings(max_examples=3)(MLPS(_check_generated_mlp))
test_generated_mlps_match_jax_grad_f64_many = pytest.mark.slow(settings(max_examples=25)(MLPS(_check_generated_mlp)))


def test_mlp_f64_finite_differences():
    model = bp.serial(L.Dense(16), L.Tanh(), L.Dense(16), L.Relu(), L.Dense(4))
    with jax.enable_x64(True):
        params = random_params(model, (8,), 0, jnp.float64)
        x = normal(1, (10, 8), jnp.float64)
        y = jnp.arange(10) % 4
        report = bp.check_gradients(model, bp.losses.softmax_cross_entropy, params, x, y,
                                    finite_differences=True)
    assert report.ok and report.max_fd_rel_error < 1e-6, str(report)
    assert "params[0]['W']" in str(report) and "input x" in str(report)


def test_report_flags_a_wrong_backward():
    # A deliberately wrong Relu backward (gradient passes through everywhere) must be caught.
    good = L.Relu()
    broken = bp.Layer(good.init, good.forward, lambda p, z, da: ((), da), "BrokenRelu")
    model = bp.serial(L.Dense(8), broken, L.Dense(3))
    params = random_params(model, (5,), 0, jnp.float32)
    x = normal(1, (16, 5))
    report = bp.check_gradients(model, bp.losses.softmax_cross_entropy, params, x, jnp.arange(16) % 3)
    assert not report.ok and report.max_rel_error > 0.01
    assert "MISMATCH" in str(report)


def _mnist_like(n=256, d=20, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((d, classes)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(np.argmax(x @ w + 0.5 * np.sin(3 * x[:, :classes]), -1), jnp.int32)


# The optimizer only consumes the gradients: plain SGD and AdamW with a schedule run by default (~2.5 s each
# with two workers on 2 cores), the other three in the slow set.
@pytest.mark.parametrize("optimizer", [
    pytest.param(optax.sgd(0.1), id="sgd"),
    pytest.param(optax.sgd(0.05, momentum=0.9, nesterov=True), id="nesterov", marks=pytest.mark.slow),
    pytest.param(optax.rmsprop(1e-3), id="rmsprop", marks=pytest.mark.slow),
    pytest.param(optax.adamw(optax.cosine_decay_schedule(3e-3, 200), weight_decay=1e-4), id="adamw-cosine"),
    pytest.param(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3)), id="clip-adam",
                 marks=pytest.mark.slow),
])
def test_200_steps_manual_and_autodiff_curves_agree(optimizer):
    model = bp.serial(L.Dense(64), L.Relu(), L.Dense(64), L.Tanh(), L.Dense(5))
    x, y = _mnist_like()
    p0 = random_params(model, (20,))
    curves = {}
    for backward in ("manual", "autodiff"):
        step = bp.train.make_step(model, bp.losses.softmax_cross_entropy, optimizer, backward=backward,
                                  jit=False)

        def run(p, s):
            def body(carry, i):
                p, s = carry
                sl = (i * 32) % 256
                b = (jax.lax.dynamic_slice_in_dim(x, sl, 32), jax.lax.dynamic_slice_in_dim(y, sl, 32))
                p, s, v = step(p, s, *b)
                return (p, s), v
            return jax.lax.scan(body, (p, s), jnp.arange(200))

        (_, _), curves[backward] = jax.jit(run)(p0, optimizer.init(p0))
    m, a = np.asarray(curves["manual"]), np.asarray(curves["autodiff"])
    assert m[-20:].mean() < 0.8 * m[:5].mean()  # it learns
    # float32: both runs start identical and differ only by roundoff in the gradients (~1e-7
    # relative), which the optimiser amplifies slowly; after 200 steps 1e-3 relative is ample.
    np.testing.assert_allclose(m, a, rtol=1e-3, atol=1e-4)


def test_make_step_signature_and_jit():
    model = bp.serial(L.Dense(16), L.Relu(), L.Dense(3))
    x, y = _mnist_like(64, 20, 3)
    opt = optax.adamw(1e-2, weight_decay=1e-4)
    params = random_params(model, (20,))
    state = opt.init(params)
    step = bp.train.make_step(model, bp.losses.softmax_cross_entropy, opt)
    values = []
    for _ in range(30):
        params, state, v = step(params, state, x, y)
        values.append(float(v))
    assert values[-1] < values[0]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        step(params, state, x, jnp.asarray(np.asarray(y) + 3))
    x_inf = np.array(x)
    x_inf[3, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        step(params, state, jnp.asarray(x_inf), y)
    with pytest.raises(ValueError, match="backward"):
        bp.train.make_step(model, bp.losses.mse, opt, backward="numeric")
    with pytest.raises(TypeError, match="optax"):
        bp.train.make_step(model, bp.losses.mse, lambda g: g)


def test_as_custom_vjp_runs_the_manual_backward():
    model = bp.serial(L.Dense(8), L.Gelu(), L.Dense(2))
    params = random_params(model, (3,), 0, jnp.float32)
    x = normal(1, (5, 3))
    f = bp.as_custom_vjp(model)

    def user_loss(p, x):  # any function of the output
        return jnp.sum(jnp.sin(f(p, x)) ** 2)

    g_custom = jax.grad(user_loss, argnums=(0, 1))(params, x)  # eager: the custom VJP run op by op
    g_ref = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(model.forward(p, x)[0]) ** 2), argnums=(0, 1)))(params, x)
    close = dict(rtol=1e-5, atol=1e-6)  # float32, two programs fused differently
    chex.assert_trees_all_close(g_custom, g_ref, **close)
    chex.assert_trees_all_close(jax.jit(jax.grad(user_loss))(params, x), g_ref[0], **close)
    # vmap over a stack of inputs: per-example gradients of the first output
    per_ex = jax.jit(jax.vmap(lambda xi: jax.grad(lambda p: f(p, xi[None])[0, 0])(params)))(x)
    assert per_ex[0]["W"].shape == (5, 3, 8)
    ref0 = jax.jit(jax.grad(lambda p: model.forward(p, x[:1])[0][0, 0]))(params)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], per_ex), ref0, **close)


def test_as_custom_vjp_is_really_used():
    # Swap in a backward that returns zeros: jax.grad through the custom VJP must see zeros.
    dense = L.Dense(2)
    silent = bp.Layer(dense.init, dense.forward, lambda p, r, dy: (jax.tree.map(jnp.zeros_like, p), dy @ p["W"].T * 0),
                      "Silent")
    params = random_params(silent, (3,), 0, jnp.float32)
    g = jax.jit(jax.grad(lambda p: bp.as_custom_vjp(silent)(p, jnp.ones((1, 3))).sum()))(params)
    assert float(np.abs(g["W"]).sum()) == 0.0


def test_value_and_grad_matches_autodiff_on_contextual_models():
    # A minimal contextual layer (counts calls in its state, scales by a random sign when training).
    def init(key, shape):
        return shape, ()

    def init_state(key, shape):
        return shape, jnp.zeros((), jnp.int32)

    def forward(params, x, *, state, key, train):
        s = jnp.where(jax.random.bernoulli(key, 0.5, x.shape[-1:]), 1.0, -1.0) if train else 1.0
        return x * s, s, state + 1

    def backward(params, s, dy):
        return (), dy * s

    flip = bp.Layer(init, forward, backward, "Flip", init_state)
    model = bp.serial(L.Dense(4), flip, L.Dense(2))
    assert bp.is_contextual(model)
    params = random_params(model, (3,), 0, jnp.float32)
    # jitted: the Dense params that init_state draws only for their shapes are dropped, no sampler is compiled
    state = jax.jit(bp.init_state, static_argnums=(0, 2))(model, jax.random.key(0), (3,))
    x, y = normal(1, (6, 3)), jnp.arange(6) % 2
    (v, new_state), g = jax.jit(bp.value_and_grad(model, bp.losses.softmax_cross_entropy))(
        params, x, y, state=state, key=jax.random.key(7))
    (v2, _), g2 = jax.jit(bp.autodiff_value_and_grad(model, bp.losses.softmax_cross_entropy))(
        params, x, y, state=state, key=jax.random.key(7))
    assert int(new_state[1]) == 1
    np.testing.assert_allclose(v, v2, rtol=1e-6)
    chex.assert_trees_all_close(g, g2, rtol=1e-5, atol=1e-7)
    report = bp.check_gradients(model, bp.losses.softmax_cross_entropy, params, x, y, state=state,
                                key=jax.random.key(7))
    assert report.ok
    opt = optax.sgd(0.1)
    step = bp.train.make_step(model, bp.losses.softmax_cross_entropy, opt)
    p, s, st, v = step(params, opt.init(params), x, y, state=state, key=jax.random.key(3))
    assert int(st[1]) == 1
    f = bp.as_custom_vjp(model)
    g3 = jax.jit(jax.grad(lambda p: f(p, x, state, jax.random.key(7))[0].sum()))(params)
    g4 = jax.jit(jax.grad(lambda p: model.forward(p, x, state=state, key=jax.random.key(7), train=True)[0].sum()))(
        params)
    chex.assert_trees_all_close(g3, g4, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="state="):
        bp.value_and_grad(model, bp.losses.mse)(params, x, y)
