"""Pooling: hand-written backward vs jax.vjp (f32, f64) and finite differences, the tie rule, shapes and errors."""

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

POOLS = {(1, "Max"): L.MaxPool1D, (2, "Max"): L.MaxPool2D, (1, "Avg"): L.AvgPool1D, (2, "Avg"): L.AvgPool2D}


@st.composite
def settings(draw):
    """A pool of rank 1 or 2 with random window, stride (overlapping or not) and padding, odd sizes."""
    n = draw(st.sampled_from([1, 2]))
    kind = draw(st.sampled_from(["Max", "Avg"]))
    window = tuple(draw(st.integers(1, 3)) for _ in range(n))
    stride = draw(st.one_of(st.none(), st.tuples(*[st.integers(1, 3)] * n)))
    padding = draw(st.one_of(st.sampled_from(["SAME", "VALID"]),
                             st.tuples(*[st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)) for k in window])))
    sizes = tuple(draw(st.integers(k, k + (5 if n == 2 else 9))) for k in window)
    layer = POOLS[n, kind](window, stride=stride, padding=padding)
    return layer, (draw(st.integers(1, 3)), *sizes, draw(st.integers(1, 3)))


def _check(layer, shape, seed=0):
    # random normal inputs: ties inside a window have probability zero, so jax.vjp's even split of
    # a tie and our first-maximum rule agree. Drawn with numpy: a jax.random draw compiles per shape.
    x64 = np.random.default_rng(seed).standard_normal(shape)
    x = jnp.asarray(x64, jnp.float32)
    out_shape, _ = layer.init(None, shape[1:])
    y = jax.eval_shape(layer.forward, (), x)[0]  # traced, not compiled
    assert y.shape == (shape[0], *out_shape)  # shape inference at init == the forward's shape
    # float32 at rtol 1e-4 (a pool adds at most 9 terms; max pool's gradient is a copy); float64 at 1e-10 with
    # finite differences at 1e-6 (eps 1e-5: max is smooth away from ties, and the gaps between normal samples
    # are far larger than eps)
    return check_layer_f32_f64(layer, (), x)


@hyp_settings(max_examples=4)
@given(settings())
def test_pool_matches_vjp_f32_f64_and_finite_differences(setting):
    _check(*setting)


@pytest.mark.slow
@hyp_settings(max_examples=60)
@given(settings())
def test_pool_matches_vjp_many_settings(setting):
    _check(*setting)


def test_global_avg_pool_matches_vjp_and_shapes():
    for shape in [(3, 7, 4), (2, 5, 3, 4)]:
        r32, r64 = _check(L.GlobalAvgPool(), shape)
        assert r64.max_rel_error <= 1e-10


def _forward_backward(layer, x, dy=None):
    """``y`` and ``dx`` (at ``dy``, default ones) of a parameterless layer, as numpy arrays: one compiled
    program instead of one per eager op."""

    def run(x, dy):
        y, res = layer.forward((), x)
        return y, layer.backward((), res, jnp.ones_like(y) if dy is None else dy)[1]

    as32 = lambda a: None if a is None else jnp.asarray(np.asarray(a, np.float32))  # noqa: E731
    return tuple(np.asarray(a) for a in jax.jit(run)(as32(x), as32(dy)))


def test_max_pool_tie_goes_to_first_maximum():
    x = np.array([[1.0, 3.0, 3.0, 0.0, 2.0, 2.0]])[..., None]  # (1, 6, 1): windows [1 3 3] [0 2 2]
    y, dx = _forward_backward(L.MaxPool1D(3), x, np.array([[10.0, 20.0]])[..., None])
    assert y[0, :, 0].tolist() == [3.0, 2.0]
    assert dx[0, :, 0].tolist() == [0.0, 10.0, 0.0, 0.0, 20.0, 0.0]
    # 2-D, all equal: row-major first element of each 2x2 window
    _, dx = _forward_backward(L.MaxPool2D(2), np.ones((1, 4, 4, 1)))
    expect = np.zeros((4, 4))
    expect[::2, ::2] = 1.0
    np.testing.assert_array_equal(dx[0, :, :, 0], expect)


def test_max_pool_overlapping_windows_add_up():
    x = np.array([[0.0, 5.0, 1.0, 2.0]])[..., None]  # windows of 2 at stride 1: [0 5] [5 1] [1 2]
    _, dx = _forward_backward(L.MaxPool1D(2, stride=1), x)
    assert dx[0, :, 0].tolist() == [0.0, 2.0, 0.0, 1.0]


def test_avg_pool_same_padding_does_not_count_padded_zeros():
    x = np.arange(1.0, 6.0)[None, :, None]  # (1, 5, 1); window 2, SAME: pads (0, 1)
    y, dx = _forward_backward(L.AvgPool1D(2, padding="SAME"), x)
    assert y[0, :, 0].tolist() == [1.5, 3.5, 5.0]  # the last window holds 5 only: 5 / 1, not 5 / 2
    assert dx[0, :, 0].tolist() == [0.5, 0.5, 0.5, 0.5, 1.0]


def test_pool_in_a_model_gradients():
    model = bp.serial(L.Conv2D(4, 3), L.Relu(), L.MaxPool2D(2), L.AvgPool2D(2, stride=1, padding="SAME"),
                      L.GlobalAvgPool(), L.Dense(3))
    out_shape, _ = init_shapes(model, (8, 8, 2))
    assert out_shape == (3,)
    params = random_params(model, (8, 8, 2))  # numpy draws: no sampler compiled per shape
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 8, 2)), jnp.float32)
    y = jnp.array([0, 1, 2, 0])
    report = bp.check_gradients(model, bp.losses.softmax_cross_entropy, params, x, y)
    assert report.ok, str(report)


def test_pool_errors():
    with pytest.raises(bp.BpjaxError, match=r"MaxPool1D\(3\): expected a rank-3 input"):
        L.MaxPool1D(3).forward((), jnp.zeros((2, 9)))
    with pytest.raises(bp.BpjaxError, match=r"AvgPool2D\(\(2, 2\)\): expected a rank-4 input"):
        L.AvgPool2D(2).forward((), jnp.zeros((2, 9, 3)))
    with pytest.raises(bp.BpjaxError, match=r"MaxPool2D\(\(5, 5\)\): window 5 .* bigger than the padded input"):
        L.MaxPool2D(5).forward((), jnp.zeros((1, 4, 8, 1)))
    with pytest.raises(bp.BpjaxError, match=r"padding \(2, 2\) .* must be smaller than the window 2"):
        L.AvgPool1D(2, padding=2).init(None, (8, 1))
    with pytest.raises(bp.BpjaxError, match="window must be a positive int, got 0"):
        L.MaxPool1D(0)
    with pytest.raises(TypeError, match="positional"):
        L.MaxPool2D(2, 2)  # stride and padding are keyword-only: MaxPool2D(2, stride=2)
    with pytest.raises(bp.BpjaxError, match=r"GlobalAvgPool: expected a rank-3 or"):
        L.GlobalAvgPool().forward((), jnp.zeros((2, 3)))
    with pytest.raises(bp.BpjaxTypeError, match="MaxPool1D.*floating-point"):
        L.MaxPool1D(2).forward((), jnp.zeros((1, 4, 1), jnp.int32))
