"""Hessian-vector products through the hand-written backward, against jax.hessian; power iteration."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal, random_params

import bpjax as bp
from bpjax import layers as L
from bpjax.second_order import hessian, hvp, top_eigenvalue

XENT = bp.losses.softmax_cross_entropy


def _setup(acts=(L.Tanh, L.Sigmoid), dtype=jnp.float64):
    return _built(acts, dtype)


@functools.lru_cache(maxsize=None)
def _built(acts, dtype):
    """Model, params, x, y, built once per (acts, dtype): the tests of one model share its compiled programs."""
    model = bp.serial(L.Dense(5), acts[0](), L.Dense(4), acts[1](), L.Dense(3))
    params = random_params(model, (3,), 0, dtype)
    x = normal(1, (6, 3), dtype)
    y = jnp.arange(6) % 3
    return model, params, x, y


@functools.partial(jax.jit, static_argnums=0)
def _jax_hessian_program(model, params, x, y):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return jax.hessian(lambda f: XENT.value(model.forward(unravel(f), x)[0], y))(flat)


def _jax_hessian(model, params, x, y):
    """jax.hessian of the loss in the flattened params (compiled once per model and shapes), as numpy."""
    return np.asarray(_jax_hessian_program(model, params, x, y))


# ~4.5 s each with two workers on 2 cores: Tanh and Sigmoid by default, Gelu and Softplus in the slow set.
@pytest.mark.parametrize("acts", [(L.Tanh, L.Sigmoid), pytest.param((L.Gelu, L.Softplus), marks=pytest.mark.slow)])
def test_hessian_and_hvp_match_jax_hessian_f64(acts):
    # f64: both are exact second derivatives; the sums run in different orders, 1e-9 relative to max |H|
    with jax.enable_x64(True):
        model, params, x, y = _setup(acts)
        H_ref = _jax_hessian(model, params, x, y)
        H = np.asarray(jax.jit(hessian(model, XENT))(params, x, y))
        scale = float(np.max(np.abs(H_ref)))
        assert float(np.max(np.abs(H - H_ref))) <= 1e-9 * scale
        np.testing.assert_allclose(H, H.T, atol=1e-9 * scale)  # symmetric, as a Hessian must be
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        v = np.random.default_rng(5).standard_normal(flat.shape)
        Hv = jax.flatten_util.ravel_pytree(jax.jit(hvp(model, XENT))(params, x, y, unravel(jnp.asarray(v))))[0]
        np.testing.assert_allclose(Hv, H_ref @ v, rtol=1e-9, atol=1e-9 * float(np.max(np.abs(H_ref @ v))))


def test_hvp_float32_and_relu():
    # f32 against jax.hessian-vector (jvp of jax.grad): 1e-4 relative to max |Hv| (roundoff of two passes)
    model, params, x, y = _setup((L.Relu, L.Tanh), jnp.float32)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    v = normal(5, flat.shape)
    Hv = np.asarray(jax.flatten_util.ravel_pytree(jax.jit(hvp(model, XENT))(params, x, y, unravel(v)))[0])
    ref = np.asarray(jax.jit(lambda v: jax.jvp(jax.grad(lambda f: XENT.value(model.forward(unravel(f), x)[0], y)),
                                               (flat,), (v,))[1])(v))
    assert float(np.max(np.abs(Hv - ref))) <= 1e-4 * float(np.max(np.abs(ref)))


def test_custom_vjp_blocks_forward_mode_but_hvp_works():
    # JAX issue 16049: forward mode through a custom_vjp function fails; the manual-rule HVP does not.
    model, params, x, y = _setup(dtype=jnp.float32)
    f = bp.as_custom_vjp(model)
    with pytest.raises(TypeError, match="forward-mode autodiff.*custom_vjp"):
        jax.jvp(lambda p: f(p, x), (params,), (params,))
    Hv = jax.jit(hvp(model, XENT))(params, x, y, params)
    # forward-over-reverse of the custom VJP differentiates the same hand-written backward: same Hv
    # (f32, same operations in the same order up to fusion: 1e-5 of the largest entry)
    ref = jax.jit(lambda p: jax.jvp(jax.grad(lambda p: XENT.value(f(p, x), y)), (p,), (p,))[1])(params)
    for a, b in zip(jax.tree.leaves(Hv), jax.tree.leaves(ref)):
        a, b = np.asarray(a), np.asarray(b)
        assert float(np.max(np.abs(a - b))) <= 1e-5 * float(np.max(np.abs(b)))


def test_top_eigenvalue_by_power_iteration():
    with jax.enable_x64(True):
        model, params, x, y = _setup()
        eig = np.linalg.eigvalsh(_jax_hessian(model, params, x, y))
        top = eig[np.argmax(np.abs(eig))]
        lam, v = jax.jit(top_eigenvalue(model, XENT, iters=200))(params, x, y, jax.random.key(0))
        # power iteration converges as |l2/l1|^k; 200 steps reach 1e-6 here (gap checked below)
        assert abs(np.sort(np.abs(eig))[-2] / abs(top)) < 0.9
        np.testing.assert_allclose(float(lam), top, rtol=1e-6)
    with pytest.raises(bp.BpjaxError, match="iters must be a positive int, got 0"):
        top_eigenvalue(model, XENT, iters=0)


def test_hvp_errors():
    model, params, x, y = _setup(dtype=jnp.float32)
    with pytest.raises(bp.BpjaxError, match="hvp: vector v do not match the model"):
        hvp(model, XENT)(params, x, y, params[0])
