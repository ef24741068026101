"""Dropout: backward with the forward's mask, determinism by key, kept fraction, eval identity, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import initial_state, random_params
from hypothesis import given, settings
from hypothesis import strategies as st

import bpjax as bp
from bpjax import layers as L


def _run(layer, x, key, train=True):
    return layer.forward((), x, state=(), key=key, train=train)


@settings(max_examples=6)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), rate=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
       train=st.booleans())
def test_dropout_backward(shape, rate, train):
    layer = L.Dropout(rate)
    key = jax.random.key(7)
    x = np.random.default_rng(1).standard_normal(shape)  # numpy: a jax.random draw compiles per shape
    # check_layer runs forward and jax.vjp with the same key, hence the same mask
    r32 = bp.check_layer(layer, (), jnp.asarray(x, jnp.float32), key=key, train=train,
                         finite_differences=False)  # default f32 rtol 1e-4
    assert r32.ok, str(r32)
    with jax.enable_x64(True):  # f64: rtol 1e-10, finite differences at fd rtol 1e-6 (y is linear in x)
        x64 = jnp.asarray(np.asarray(x, np.float32), jnp.float64)  # the float32 values
        r64 = bp.check_layer(layer, (), x64, key=key, train=train, rtol=1e-10)
    assert r64.ok, str(r64)


def test_dropout_backward_uses_the_forward_mask():
    layer = L.Dropout(0.5)
    x = jnp.ones((64, 32))
    y, mask, _ = _run(layer, x, jax.random.key(0))
    _, dx = layer.backward((), mask, jnp.ones_like(x))
    np.testing.assert_array_equal(dx, y)  # x = dy = 1: both are 2 * mask
    assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 2.0}


def test_dropout_determinism_by_key():
    layer = L.Dropout(0.3)
    x = jnp.ones((16, 50))
    y1, _, _ = _run(layer, x, jax.random.key(3))
    y2, _, _ = _run(layer, x, jax.random.key(3))
    y3, _, _ = _run(layer, x, jax.random.key(4))
    np.testing.assert_array_equal(y1, y2)
    # two independent masks of 800 entries agree everywhere with probability (0.7^2 + 0.3^2)^800 ~ 1e-190
    assert not np.array_equal(np.asarray(y1), np.asarray(y3))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_kept_fraction_and_scale(rate):
    n = 1_000_000
    y, saved, _ = _run(L.Dropout(rate), jnp.ones((1000, 1000)), jax.random.key(11))
    mask = saved["train"]  # residuals tagged with the mode (bp.core.tag_mode)
    kept = float(np.mean(np.asarray(mask)))
    # kept count ~ Binomial(n, p = 1 - rate): standard deviation sqrt(p (1 - p) / n) <= 5e-4 in the
    # fraction; 6 standard deviations fail a correct layer with probability ~2e-9
    sd = math.sqrt(rate * (1 - rate) / n)
    assert abs(kept - (1 - rate)) < 6 * sd, (kept, 1 - rate, sd)
    np.testing.assert_allclose(np.asarray(y)[np.asarray(mask)], 1 / (1 - rate), rtol=1e-6)  # inverted scaling
    assert np.all(np.asarray(y)[~np.asarray(mask)] == 0)


def test_dropout_identity_in_eval_and_for_rate_zero():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 5)), jnp.float32)
    for layer, train in ((L.Dropout(0.5), False), (L.Dropout(0.0), True)):
        y, res, state = _run(layer, x, key=None, train=train)  # no key needed
        assert y is x and state == ()
        dy = jnp.arange(40.0).reshape(8, 5)
        assert layer.backward((), res, dy)[1] is dy


def test_dropout_in_a_model_f64():
    model = bp.serial(L.Dense(6), L.Relu(), L.Dropout(0.4), L.Dense(3))
    with jax.enable_x64(True):
        params = random_params(model, (5,), dtype=jnp.float64)  # numpy draws: no sampler compiled
        state = initial_state(model, (5,))
        rng = np.random.default_rng(1)
        x, y = jnp.asarray(rng.standard_normal((8, 5))), jnp.asarray(rng.standard_normal((8, 3)))
        rep = bp.check_gradients(model, bp.losses.mse, params, x, y, state=state, key=jax.random.key(3), rtol=1e-10,
                                 finite_differences=True)
    assert rep.ok, str(rep)


def test_dropout_errors():
    for bad in (-0.1, 1.0, 1.5, "0.5", None):
        with pytest.raises(bp.BpjaxError, match=r"Dropout: rate must be a number in \[0, 1\)"):
            L.Dropout(bad)
    layer = L.Dropout(0.5)
    with pytest.raises(bp.BpjaxError, match="Dropout\\(0.5\\): train mode with rate > 0 needs a PRNG key"):
        _run(layer, jnp.ones((2, 3)), key=None)
    with pytest.raises(bp.BpjaxTypeError, match="floating-point"):
        _run(layer, jnp.ones((2, 3), jnp.int32), key=jax.random.key(0))
