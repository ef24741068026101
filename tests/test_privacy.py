"""DP-SGD as a backward rule (bpjax/privacy.py): equal to optax's differentially_private_aggregate of per-example
gradients from jax.vmap(jax.grad(...)), with and without noise, in fit and make_step alike."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import differentially_private_aggregate

import bpjax as bp
from bpjax.layers import Dense, Dropout, Relu

XENT = bp.losses.softmax_cross_entropy
MODEL = bp.serial(Dense(8), Relu(), Dense(3))
# float32: the per-example gradients of two programs (hand-written vs jax.grad) differ by ~1e-7 relative; clipping
# and the mean keep that order: 1e-5 relative, 1e-7 absolute.
RTOL, ATOL = 1e-5, 1e-7


def _data():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 5)).astype(np.float32) * np.array([1, 1, 1, 1, 20], np.float32)  # some clipped
    y = rng.integers(0, 3, 16).astype(np.int32)
    return x, y


@jax.jit  # eagerly, each vmapped operation compiles on its own
def _reference(params, x, y, clip, noise, key):
    """optax's aggregate of per-example gradients from jax.vmap(jax.grad(...)) (no bpjax backward involved)."""
    g = jax.vmap(lambda xi, yi: jax.grad(lambda p: XENT(bp.predict(MODEL, p, xi[None], train=True), yi[None]))(
        params))(x, y)
    aggregate = differentially_private_aggregate(clip, noise, key)
    return aggregate.update(g, aggregate.init(params))[0]


# noise 1.0 checks the clipped sum and optax's noise at the same key (the default suite's case); 0.0, clipping
# alone, is a second compiled program: the slow set's
@pytest.mark.parametrize("noise", [pytest.param(0.0, marks=pytest.mark.slow), 1.0])
def test_the_private_gradient_is_optaxs_aggregate_of_per_example_gradients(noise):
    x, y = _data()
    _, params = MODEL.init(jax.random.key(0), (5,))
    key = jax.random.key(7)
    private = bp.privacy.DPSGD(MODEL, l2_norm_clip=1.0, noise_multiplier=noise)
    (value, _), grads = jax.jit(lambda p, k: bp.value_and_grad(private, XENT)(p, x, y, state=(), key=k))(params, key)
    want = _reference(params, x, y, 1.0, noise, key)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(value, XENT(bp.predict(MODEL, params, x), y), rtol=1e-6)
    plain = jax.jit(bp.value_and_grad(MODEL, XENT))(params, x, y)[1]
    assert not np.allclose(grads[2]["W"], plain[2]["W"])  # clipping (and noise) changed the step


def test_fit_and_make_step_take_the_same_private_steps():
    x, y = _data()
    _, p0 = MODEL.init(jax.random.key(0), (5,))
    private = bp.privacy.DPSGD(MODEL, l2_norm_clip=1.0, noise_multiplier=0.5)
    opt, key = optax.sgd(0.1), jax.random.key(3)
    res = bp.train.fit(private, XENT, opt, p0, (x, y), steps=4, batch_size=8, key=key, state=(), verbose=False)
    step = bp.train.make_step(private, XENT, opt)
    _, step_key = jax.random.split(key)  # fit's key of step s: fold_in(split(key)[1], s)
    p, s = p0, opt.init(p0)
    for i in range(4):
        b = i % 2
        p, s, _, _ = step(p, s, x[b * 8:(b + 1) * 8], y[b * 8:(b + 1) * 8], state=(),
                          key=jax.random.fold_in(step_key, i))
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(p)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=1e-6)


def test_bad_settings_are_refused():
    with pytest.raises(bp.BpjaxError, match=r"DPSGD.*: expected a simple model, got serial\(Dense\(8\), Dropout"):
        bp.privacy.DPSGD(bp.serial(Dense(8), Dropout(0.1)), l2_norm_clip=1.0, noise_multiplier=1.0)
    with pytest.raises(bp.BpjaxError, match="l2_norm_clip must be a positive number, got 0"):
        bp.privacy.DPSGD(MODEL, l2_norm_clip=0, noise_multiplier=1.0)
    x, y = _data()
    _, params = MODEL.init(jax.random.key(0), (5,))
    with pytest.raises(bp.BpjaxError, match=r"draws noise at every training step: pass key="):
        bp.value_and_grad(bp.privacy.DPSGD(MODEL, l2_norm_clip=1.0, noise_multiplier=1.0), XENT)(
            params, jnp.asarray(x), y, state=())
