"""BatchNorm and LayerNorm: manual backward vs jax.vjp and finite differences, running statistics, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import check_layer_f32_f64, initial_state, random_params
from hypothesis import given, settings
from hypothesis import strategies as st

import bpjax as bp
from bpjax import layers as L

# (B, *spatial, C) with 0-2 spatial axes (conv activations). At least 3 normalised elements (B >= 3
# for BatchNorm, C >= 3 for LayerNorm): with 2, xhat = +-d / sqrt(d^2 + eps) is constant up to eps, the
# true dx is O(eps / var) and float32 cancellation noise exceeds rtol 1e-4 of it (float64 is fine).
BN_SHAPES = st.tuples(st.integers(3, 5), st.lists(st.integers(1, 3), max_size=2), st.integers(1, 5)).map(
    lambda t: (t[0], *t[1], t[2]))
LN_SHAPES = st.tuples(st.integers(1, 4), st.lists(st.integers(1, 3), max_size=2), st.integers(3, 6)).map(
    lambda t: (t[0], *t[1], t[2]))
FAST, MANY = settings(max_examples=3), settings(max_examples=25)  # each example costs ~3 s of CPU (compiles)


def _f32(a):
    return jnp.asarray(a, jnp.float32)


def _setup(layer, shape, seed=0):
    """Random (not 1/0) scale and bias, random running statistics, x ~ 3 + 2 N(0, 1), float32.

    Drawn with numpy: an eager jax.random draw compiles a sampler for every new shape."""
    rng = np.random.default_rng(seed)
    C = shape[-1]
    params = {"scale": _f32(1 + 0.5 * rng.standard_normal(C)), "b": _f32(rng.standard_normal(C))}
    state = bp.init_state(layer, jax.random.key(seed), shape[1:])
    if state != ():
        state = {"mean": _f32(rng.standard_normal(C)), "var": _f32(0.5 + rng.uniform(size=C))}
    x = _f32(3.0 + 2.0 * np.random.default_rng(seed + 1).standard_normal(shape))
    return params, state, x


def _check_both(layer, shape, train=True, seed=0):
    """float32 at the default rtol 1e-4 (see bpjax.gradcheck), then float64 at rtol 1e-10 with finite
    differences (fd rtol 1e-6): both gradients are exact up to roundoff, the sums run in different orders."""
    params, state, x = _setup(layer, shape, seed)
    return check_layer_f32_f64(layer, params, x, state=state, train=train)


def _batchnorm_case(shape, train):
    _check_both(L.BatchNorm(), shape, train)


def _layernorm_case(shape):
    _check_both(L.LayerNorm(), shape)


test_batchnorm_backward = FAST(given(shape=BN_SHAPES, train=st.booleans())(_batchnorm_case))
test_batchnorm_backward_many = pytest.mark.slow(MANY(given(shape=BN_SHAPES, train=st.booleans())(_batchnorm_case)))
test_layernorm_backward = FAST(given(shape=LN_SHAPES)(_layernorm_case))
test_layernorm_backward_many = pytest.mark.slow(MANY(given(shape=LN_SHAPES)(_layernorm_case)))


def test_batchnorm_running_statistics_by_hand():
    layer = L.BatchNorm(momentum=0.8, eps=1e-3)
    params, state, x = _setup(layer, (6, 3, 4), seed=3)
    xs, m0, v0 = np.asarray(x, np.float64), np.asarray(state["mean"], np.float64), np.asarray(state["var"], np.float64)
    scale, bias = np.asarray(params["scale"], np.float64), np.asarray(params["b"], np.float64)

    y, _, new = layer.forward(params, x, state=state, key=None, train=True)
    flat = xs.reshape(-1, 4)  # N = 18 rows per channel
    mean, var_b, var_u = flat.mean(0), flat.var(0), flat.var(0, ddof=1)
    # f32 forward against f64 numpy on values of size ~3-10: 1e-5 relative covers float32 roundoff
    np.testing.assert_allclose(new["mean"], 0.8 * m0 + 0.2 * mean, rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.8 * v0 + 0.2 * var_u, rtol=1e-5)  # unbiased in the running update
    np.testing.assert_allclose(y, scale * (xs - mean) / np.sqrt(var_b + 1e-3) + bias, rtol=1e-5, atol=1e-5)

    # eval uses the running statistics (here the updated ones) and leaves them unchanged
    y_eval, _, same = layer.forward(params, x, state=new, key=None, train=False)
    m1, v1 = np.asarray(new["mean"], np.float64), np.asarray(new["var"], np.float64)
    np.testing.assert_allclose(y_eval, scale * (xs - m1) / np.sqrt(v1 + 1e-3) + bias, rtol=1e-5, atol=1e-5)
    assert same is new


def test_batchnorm_state_converges_under_training_step():
    """Repeated train-mode forwards on one batch drive the running stats to its (unbiased) statistics."""
    layer = L.BatchNorm(momentum=0.5)
    params, state, x = _setup(layer, (8, 3), seed=5)
    fwd = jax.jit(lambda s: layer.forward(params, x, state=s, key=None, train=True)[2])
    for _ in range(60):  # 0.5^60 ~ 1e-18: the initial state is forgotten
        state = fwd(state)
    np.testing.assert_allclose(state["mean"], np.asarray(x).mean(0), rtol=1e-5)
    np.testing.assert_allclose(state["var"], np.asarray(x).var(0, ddof=1), rtol=1e-5)


def test_batchnorm_in_a_model_f64():
    # no bias before BatchNorm: its true gradient is exactly zero in train mode (the batch mean removes
    # it), and the finite-difference check divides by the gradient's norm
    model = bp.serial(L.Dense(6, bias=False), L.BatchNorm(), L.Relu(), L.Dense(3))
    with jax.enable_x64(True):
        params = random_params(model, (5,), dtype=jnp.float64)  # numpy draws: no sampler compiled
        state = initial_state(model, (5,))
        rng = np.random.default_rng(1)
        x, y = jnp.asarray(rng.standard_normal((8, 5))), jnp.asarray(rng.standard_normal((8, 3)))
        for train in (True, False):
            rep = bp.check_gradients(model, bp.losses.mse, params, x, y, state=state, train=train, rtol=1e-10,
                                     finite_differences=True)
            assert rep.ok, str(rep)


def test_layernorm_forward_statistics():
    layer = L.LayerNorm()
    _, params = layer.init(jax.random.key(0), (5, 7))
    x = _f32(3.0 + 2.0 * np.random.default_rng(1).standard_normal((4, 5, 7)))
    y, (_, mean, rstd) = jax.jit(layer.forward)(params, x)
    y = np.asarray(y)
    # scale 1, bias 0: each row has mean 0 and (biased) variance var / (var + eps) ~ 1 - 2.5e-6
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1.0, atol=1e-4)
    assert mean.shape == rstd.shape == (4, 5, 1)


@pytest.mark.parametrize("make", [L.BatchNorm, L.LayerNorm])
def test_norm_errors(make):
    layer = make()
    params, state, x = _setup(layer, (4, 3), seed=0)
    ctx = dict(state=state, key=None, train=True) if state != () else {}
    with pytest.raises(bp.BpjaxError, match=r"expected input with 3 features.*got shape \(4, 5\)"):
        layer.forward(params, jnp.ones((4, 5)), **ctx)
    with pytest.raises(bp.BpjaxTypeError, match="floating-point"):
        layer.forward(params, jnp.ones((4, 3), jnp.int32), **ctx)
    with pytest.raises(bp.BpjaxError, match=r"rank-2 or .*got shape \(3,\)"):
        layer.forward(params, jnp.ones((3,)), **ctx)
    with pytest.raises(bp.BpjaxError, match="expected keys"):
        layer.forward({"scale": params["scale"]}, x, **ctx)
    with pytest.raises(bp.BpjaxError, match="eps must be a positive number"):
        make(eps=0.0)


def test_batchnorm_errors():
    layer = L.BatchNorm()
    params, state, _ = _setup(layer, (4, 3))
    with pytest.raises(bp.BpjaxError, match=r"more than one value per channel.*\(1, 3\)"):
        layer.forward(params, jnp.ones((1, 3)), state=state, key=None, train=True)
    layer.forward(params, jnp.ones((1, 3)), state=state, key=None, train=False)  # eval works on one example
    with pytest.raises(bp.BpjaxError, match="state does not match"):
        layer.forward(params, jnp.ones((4, 3)), state={"mean": state["mean"]}, key=None, train=True)
    with pytest.raises(bp.BpjaxError, match=r"momentum must be a number in \[0, 1\], got 1.5"):
        L.BatchNorm(momentum=1.5)
