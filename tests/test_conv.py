"""Conv1D / Conv2D: hand-written backward vs jax.vjp (f32, f64) and finite differences, shapes and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import check_layer_f32_f64, init_shapes, random_params
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

import bpjax as bp
from bpjax import layers as L
from bpjax.layers import conv as conv_module

CONV = {1: L.Conv1D, 2: L.Conv2D}


@pytest.fixture(params=["im2col", "convolutions"])
def formulation(request, monkeypatch):
    """Run a test under both backward formulations (the size threshold picks one of them)."""
    monkeypatch.setattr(conv_module, "IM2COL_MAX_ELEMENTS", 1 << 40 if request.param == "im2col" else -1)
    return request.param


def _setup(n, features, kernel, shape, dtype, seed=0, **kw):
    """The layer, its output shape, random params and ``x: shape``, all drawn with numpy (eager jax.random
    draws compile a sampler per shape). The bias is non-zero (0.1 N(0, 1)), so db's check is not trivial."""
    layer = CONV[n](features, kernel, dtype=dtype, **kw)
    out_shape, _ = init_shapes(layer, shape[1:])
    params = random_params(layer, shape[1:], seed, dtype)
    x = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(shape), dtype)
    return layer, out_shape, params, x


@st.composite
def settings(draw):
    """A conv of rank 1 or 2 with random stride, padding (named, int or explicit), dilation and groups."""
    n = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2, 3]))
    c_in, features = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    padding = draw(st.one_of(st.sampled_from(["SAME", "VALID"]), st.integers(0, 3),
                             st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=n, max_size=n)))
    k_eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    sizes = tuple(draw(st.integers(k, k + 6 if n == 2 else k + 12)) for k in k_eff)  # odd lengths included
    batch = draw(st.integers(1, 3))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=draw(st.booleans()))
    return n, features, kernel, (batch, *sizes, c_in), kw


def _check_both_dtypes(setting, form):
    n, features, kernel, shape, kw = setting
    conv_module.IM2COL_MAX_ELEMENTS = 1 << 40 if form == "im2col" else -1
    try:
        # float32: default rtol 1e-4 (see bpjax.gradcheck: sums of <= 100 terms rounded at 6e-8 each,
        # in different orders in the two programs).
        layer, out_shape, params, x = _setup(n, features, kernel, shape, jnp.float32, **kw)
        y = jax.eval_shape(layer.forward, params, x)[0]  # traced, not compiled
        assert y.shape == (shape[0], *out_shape)  # shape inference at init == the forward's shape
        # float64: rtol 1e-10 (exact up to roundoff ~1e-16 per operation) and finite differences at
        # fd_rtol 1e-6 (truncation ~eps^2 = 1e-10, roundoff ~1e-16 / eps = 1e-11).
        return check_layer_f32_f64(layer, params, x)
    finally:
        conv_module.IM2COL_MAX_ELEMENTS = DEFAULT_MAX


DEFAULT_MAX = conv_module.IM2COL_MAX_ELEMENTS


@hyp_settings(max_examples=3)
@given(settings(), st.sampled_from(["im2col", "convolutions"]))
def test_conv_matches_vjp_f32_f64_and_finite_differences(setting, form):
    _check_both_dtypes(setting, form)


@pytest.mark.slow
@hyp_settings(max_examples=40)
@given(settings())
def test_conv_matches_vjp_many_settings_both_formulations(setting):
    for form in ("im2col", "convolutions"):
        _check_both_dtypes(setting, form)


@pytest.mark.parametrize("n", [1, 2])
def test_conv_leftover_rows_get_zero_gradient(n, formulation):
    # L + lo + hi - k = 10 + 0 + 0 - 3 = 7, not divisible by s = 3: the last row is never read
    layer, _, params, x = _setup(n, 4, 3, (2, *(10,) * n, 2), jnp.float32, stride=3, padding="VALID")
    _, dx = jax.jit(lambda p, x: layer.backward(p, x, jnp.ones_like(layer.forward(p, x)[0])))(params, x)
    assert float(jnp.max(jnp.abs(dx[:, -1]))) == 0.0
    assert float(jnp.max(jnp.abs(dx[:, -2]))) > 0.0


def test_conv_matches_lax_forward_and_depthwise_layout():
    # depthwise (groups = C_in): channel c of the output sees channel c of the input only
    layer, out_shape, params, x = _setup(1, 3, 3, (2, 9, 3), jnp.float32, groups=3, padding="VALID")
    assert params["W"].shape == (3, 1, 3) and out_shape == (7, 3)
    y, _ = jax.jit(layer.forward)(params, x)

    @jax.jit  # one program, not one per eager op
    def reference(x, W, b):
        return [jnp.convolve(x[0, :, c], W[::-1, 0, c], mode="valid") + b[c] for c in range(3)]

    for c, ref in enumerate(reference(x, params["W"], params["b"])):
        assert np.allclose(y[0, :, c], ref, atol=1e-5)  # f32 sums of 3 terms of size ~1


def test_conv_mnist1d_shapes_and_model_gradients():
    model = bp.serial(L.Conv1D(25, 5, stride=2, padding=1), L.Relu(), L.Conv1D(25, 3, stride=2, padding=1),
                      L.Relu(), L.Conv1D(25, 3, stride=2, padding=1), L.Relu(), L.Flatten(), L.Dense(10))
    out_shape, shapes = init_shapes(model, (40, 1))
    assert out_shape == (10,)
    assert [p["W"] for p in shapes if p and "W" in p][:3] == [(5, 1, 25), (3, 25, 25), (3, 25, 25)]
    params = random_params(model, (40, 1))  # numpy draws: no sampler compiled per shape
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((8, 40, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 8), jnp.int32)
    report = bp.check_gradients(model, bp.losses.softmax_cross_entropy, params, x, y)
    assert report.ok, str(report)


def test_conv_init_variance_uses_window_fan_in():
    # he_normal: Var[W] = 2 / fan_in with fan_in = KH * KW * C_in / groups = 3 * 3 * 64 / 2 = 288
    _, params = L.Conv2D(256, 3, groups=2).init(jax.random.key(0), (8, 8, 64))
    assert params["W"].shape == (3, 3, 32, 256)
    assert abs(np.var(np.asarray(params["W"], np.float64)) * 288 / 2 - 1) < 0.03  # 73728 samples: std err of var ~0.5%


@pytest.mark.parametrize("make, init_shape, x_shape, match", [
    (lambda: L.Conv1D(4, 3), (20, 3), (2, 10), "rank-3"),
    (lambda: L.Conv2D(4, 3), (20, 20, 3), (2, 10, 3), "rank-4"),
    (lambda: L.Conv1D(4, 11, padding="VALID"), (20, 3), (2, 10, 3), "bigger than the padded input"),
    (lambda: L.Conv1D(4, 3, dilation=5, padding=1), (20, 3), (2, 8, 3), "bigger than the padded input"),
])
def test_conv_forward_errors(make, init_shape, x_shape, match):
    layer = make()
    params = random_params(layer, init_shape)
    with pytest.raises(bp.BpjaxError, match=match) as e:
        layer.forward(params, jnp.zeros(x_shape))
    assert layer.name in str(e.value)


def test_conv_channel_mismatch_and_groups_errors():
    layer = L.Conv1D(4, 3, name="c1")
    params = random_params(layer, (10, 3))
    with pytest.raises(bp.BpjaxError, match=r"c1: expected 3 input channels .* shape \(2, 10, 5\)"):
        layer.forward(params, jnp.zeros((2, 10, 5)))
    groups_msg = r"Conv2D\(4, \(3, 3\)\).*groups=2 must divide the input channels, got C_in=3"
    with pytest.raises(bp.BpjaxError, match=groups_msg):
        L.Conv2D(4, 3, groups=2).init(jax.random.key(0), (8, 8, 3))
    with pytest.raises(bp.BpjaxError, match="groups must divide features=4, got groups=3"):
        L.Conv1D(4, 3, groups=3)
    with pytest.raises(bp.BpjaxError, match="kernel_size must be a positive int or a tuple of 2"):
        L.Conv2D(4, (3, 3, 3))
    with pytest.raises(bp.BpjaxError, match=r"Conv2D: kernel_size\[1\] must be a positive int, got 0"):
        L.Conv2D(4, (3, 0))
    with pytest.raises(bp.BpjaxTypeError, match="Conv1D: features must be a positive int, got True"):
        L.Conv1D(True, 3)  # a bool is not a width
    with pytest.raises(bp.BpjaxTypeError, match="Conv1D: stride must be a positive int, got False"):
        L.Conv1D(4, 3, stride=False)
    with pytest.raises(bp.BpjaxError, match="padding must be"):
        L.Conv1D(4, 3, padding=True)
    with pytest.raises(bp.BpjaxError, match="padding must be"):
        L.Conv1D(4, 3, padding="FULL")
    with pytest.raises(bp.BpjaxError, match="bigger than the padded input"):
        L.Conv1D(4, 7, padding="VALID").init(jax.random.key(0), (5, 3))
    with pytest.raises(bp.BpjaxTypeError, match="floating-point"):
        layer.forward(params, jnp.zeros((2, 10, 3), jnp.int32))
    with pytest.raises(bp.BpjaxError, match=r"params do not match .* got W \(3, 3, 5\)"):
        layer.forward({"W": jnp.zeros((3, 3, 5)), "b": jnp.zeros(4)}, jnp.zeros((2, 10, 3)))


def test_conv_f64_under_jit_tracing_raises_at_trace_time():
    layer = L.Conv1D(2, 3)
    params = random_params(layer, (6, 2))
    with pytest.raises(bp.BpjaxError, match="expected 2 input channels"):
        jax.jit(layer.forward)(params, jnp.zeros((1, 6, 4)))
