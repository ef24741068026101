"""Per-layer checks for Dense, the activations and Flatten: manual backward vs jax.vjp and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_params
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bpjax as bp
from bpjax import layers as L

ACTIVATIONS = {
    "Identity": L.Identity, "Sigmoid": L.Sigmoid, "Tanh": L.Tanh, "Relu": L.Relu,
    "LeakyRelu": lambda: L.LeakyRelu(0.1), "Elu": L.Elu, "Gelu": L.Gelu,
    "Gelu(tanh)": lambda: L.Gelu(approximate=True), "Softplus": L.Softplus, "Softmax": L.Softmax,
    "LogSoftmax": L.LogSoftmax,
}
LAYERS = {**ACTIVATIONS, "Dense": lambda: L.Dense(7), "Dense(no bias)": lambda: L.Dense(5, bias=False),
          "Flatten": L.Flatten}


def _setup(make, shape, dtype, seed=0):
    """The layer, params of its init's shapes and an input ``2 N(0, 1)``, drawn with numpy (an eager init or
    jax.random draw compiles a sampler for every new shape: 0.3-0.6 s each)."""
    layer = make()
    params = random_params(layer, shape[1:], seed, dtype)
    x = jnp.asarray(2.0 * np.random.default_rng(seed + 1).standard_normal(shape), dtype)
    return layer, params, x


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_f32_matches_vjp(name):
    # float32: the two backward programs round differently; 1e-4 relative (default) covers
    # ~1e3 accumulated roundoffs of 6e-8 each.
    layer, params, x = _setup(LAYERS[name], (6, 4, 3) if name == "Flatten" else (6, 9), jnp.float32)
    report = bp.check_layer(layer, params, x, finite_differences=False)
    assert report.ok, str(report)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_f64_matches_vjp_and_finite_differences(name):
    with jax.enable_x64(True):
        layer, params, x = _setup(LAYERS[name], (5, 4, 3) if name == "Flatten" else (5, 8), jnp.float64)
        report = bp.check_layer(layer, params, x, rtol=1e-10, finite_differences=True)
    assert report.ok, str(report)
    assert report.max_rel_error <= 1e-10 and report.max_fd_rel_error <= 1e-6


def _dense_any_shape_f64(batch, d_in, d_out, rank, bias, init):
    with jax.enable_x64(True):
        layer = L.Dense(d_out, bias=bias, init=init, dtype=jnp.float64)
        shape = (batch,) + (2,) * (rank - 2) + (d_in,)
        out_shape, params = layer.init(jax.random.key(batch), shape[1:])
        x = jnp.asarray(np.random.default_rng(d_in).standard_normal(shape), jnp.float64)
        y, _ = jax.jit(layer.forward)(params, x)
        assert y.shape == (batch, *out_shape)
        report = bp.check_layer(layer, params, x, rtol=1e-10)
    assert report.ok, str(report)


# each example is a new shape: the init's sampler and check_layer's programs compile anew (~1.5 s of CPU)
DENSE_SHAPES = given(batch=st.integers(1, 9), d_in=st.integers(1, 20), d_out=st.integers(1, 20),
                     rank=st.integers(2, 4), bias=st.booleans(),
                     init=st.sampled_from(["glorot_uniform", "he_normal", "lecun_normal", "normal"]))
test_dense_any_shape_f64 = settings(max_examples=2)(  # the first two drawn have no bias: one with bias, rank 4
    example(batch=3, d_in=5, d_out=4, rank=4, bias=True, init="he_normal")(DENSE_SHAPES(_dense_any_shape_f64)))
test_dense_any_shape_f64_many = pytest.mark.slow(settings(max_examples=25)(DENSE_SHAPES(_dense_any_shape_f64)))


def test_dense_backward_is_the_textbook_formula():
    # dW = a_prev.T @ dz, db = sum(dz), da_prev = dz @ W.T, computed independently in numpy.
    layer = L.Dense(3)
    p = random_params(layer, (4,))
    a = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    dz = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    _, res = layer.forward(p, jnp.asarray(a))
    g, da = layer.backward(p, res, jnp.asarray(dz))
    np.testing.assert_allclose(g["W"], a.T @ dz, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g["b"], dz.sum(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(da, dz @ np.asarray(p["W"]).T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("init,fan,scale", [("he_normal", "in", 2.0), ("glorot_normal", "avg", 1.0),
                                            ("lecun_normal", "in", 1.0), ("he_uniform", "in", 2.0),
                                            ("glorot_uniform", "avg", 1.0)])
def test_dense_init_variance(init, fan, scale):
    # Var[W] = scale / fan; with 400*300 samples the sample std is within 1% (std error ~0.2%).
    _, p = L.Dense(300, init=init).init(jax.random.key(0), (400,))
    fan_value = 400 if fan == "in" else 350
    assert abs(float(np.std(np.asarray(p["W"]))) / np.sqrt(scale / fan_value) - 1) < 0.01
    assert float(np.abs(p["b"]).max()) == 0.0


def test_normal_init_uses_stddev():
    _, p = L.Dense(200, init="normal", stddev=0.5).init(jax.random.key(0), (300,))
    assert abs(float(np.std(np.asarray(p["W"]))) - 0.5) < 0.005


def test_activation_values():
    z = jnp.array([[-2.0, -0.5, 0.0, 0.5, 2.0]])
    np.testing.assert_allclose(L.Relu().forward((), z)[0], [[0, 0, 0, 0.5, 2.0]])
    np.testing.assert_allclose(L.LeakyRelu(0.1).forward((), z)[0], [[-0.2, -0.05, 0, 0.5, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(L.Gelu().forward((), z)[0], jax.nn.gelu(z, approximate=False), rtol=1e-6)
    np.testing.assert_allclose(L.Elu().forward((), z)[0], jax.nn.elu(z), rtol=1e-6)
    np.testing.assert_allclose(L.Softmax().forward((), z)[0].sum(), 1.0, rtol=1e-6)


def test_relu_gradient_at_zero_is_zero_like_jax():
    layer = L.Relu()
    y, res = layer.forward((), jnp.zeros((1, 3)))
    _, dz = layer.backward((), res, jnp.ones((1, 3)))
    np.testing.assert_array_equal(dz, jax.grad(lambda z: jax.nn.relu(z).sum())(jnp.zeros((1, 3))))


def test_flatten_shapes():
    layer = L.Flatten()
    out_shape, _ = layer.init(None, (4, 3, 2))
    y, res = layer.forward((), jnp.ones((5, 4, 3, 2)))
    assert out_shape == (24,) and y.shape == (5, 24)
    assert layer.backward((), res, y)[1].shape == (5, 4, 3, 2)
