"""Mixed precision (bpjax/precision.py): float32 master params with bfloat16/float16 compute, its hand-written
backward against jax.vjp through the same casts, and dynamic loss scaling for float16 in fit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bpjax as bp
from bpjax.layers import BatchNorm, Dense, Relu

XENT = bp.losses.softmax_cross_entropy


def _data(n=64, d=6, seed=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ rng.normal(size=(d, 3))).argmax(-1).astype(np.int32)
    return x, y


MODEL = bp.serial(Dense(16), Relu(), Dense(3))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_the_backward_casts_back_and_equals_jax_vjp_through_the_casts(dtype):
    x, y = _data()
    mixed = bp.precision.MixedPrecision(MODEL, dtype)
    _, params = mixed.init(jax.random.key(0), (6,))
    assert params[0]["W"].dtype == jnp.float32  # the master copy

    @jax.jit
    def both(p):
        out, residuals = mixed.forward(p, x)
        dy = jnp.ones_like(out) / out.size
        manual = mixed.backward(p, residuals, dy)
        ref = jax.vjp(lambda q, xx: mixed.forward(q, xx)[0], p, x)[1](dy)
        return out, residuals, manual, ref

    out, residuals, (dparams, dx), (ref_p, ref_x) = both(params)
    assert out.dtype == jnp.float32 and dx.dtype == jnp.float32 and dparams[0]["W"].dtype == jnp.float32
    assert {a.dtype for a in jax.tree.leaves(residuals[0])} == {jnp.dtype(dtype)}  # residuals in compute dtype
    # the same casts, but not the same low-precision reductions: db = sum over 64 rows is accumulated in float32 and
    # rounded once by the hand-written backward (0.33398 for 1/3), in the compute dtype by jax.grad (0.33008). Both
    # are within a few units of the compute dtype's last place: 8 bits (bfloat16) or 11 (float16) kept; 4 units
    # of the largest entry's last place are allowed.
    ulp = 2.0 ** -7 if dtype == jnp.bfloat16 else 2.0 ** -10
    for a, b in zip(jax.tree.leaves((dparams, dx)), jax.tree.leaves((ref_p, ref_x))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=4 * ulp * float(np.abs(b).max()))


def test_bfloat16_trains_like_float32():
    x, y = _data(n=256)
    _, p0 = MODEL.init(jax.random.key(1), (6,))
    kw = dict(steps=300, batch_size=32, verbose=False)
    f32 = bp.train.fit(MODEL, XENT, optax.adam(1e-2), p0, (x, y), **kw)
    bf16 = bp.train.fit(bp.precision.MixedPrecision(MODEL), XENT, optax.adam(1e-2), p0, (x, y), **kw)
    acc = [float((bp.predict(MODEL, r.params, x).argmax(-1) == y).mean()) for r in (f32, bf16)]
    assert acc[0] > 0.9 and abs(acc[0] - acc[1]) < 0.03, acc
    assert bf16.params[0]["W"].dtype == jnp.float32


def test_dynamic_loss_scaling_skips_overflows_and_settles():
    x, y = _data(n=128)
    model16 = bp.precision.MixedPrecision(MODEL, jnp.float16)
    _, p0 = model16.init(jax.random.key(2), (6,))
    opt = bp.precision.loss_scaled(optax.adam(1e-2), initial=2.0 ** 40, period=5)  # 2^40 overflows float16
    res = bp.train.fit(model16, XENT, opt, p0, (x, y), steps=60, batch_size=32, verbose=False)
    state = res.opt_state
    assert isinstance(state, bp.precision.LossScaleState)
    assert float(state.scale) < 2.0 ** 20  # halved on every overflow, then doubled every 5 finite steps
    assert np.isfinite(res.history["loss"]).all() and res.history["loss"][-10:].mean() < res.history["loss"][:5].mean()
    # with a scale that never overflows, a power of two (exact to multiply and divide by), the steps are the
    # unscaled steps up to float32 roundoff: another compiled program, whose fusions may round differently
    plain = bp.train.fit(MODEL, XENT, optax.adam(1e-2), p0, (x, y), steps=8, batch_size=32, verbose=False)
    scaled = bp.train.fit(MODEL, XENT, bp.precision.loss_scaled(optax.adam(1e-2), initial=8.0), p0, (x, y), steps=8,
                          batch_size=32, verbose=False)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(scaled.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_a_contextual_model_keeps_its_state_in_its_own_dtype():
    x, y = _data()
    model = bp.precision.MixedPrecision(bp.serial(Dense(8), BatchNorm(), Relu(), Dense(3)))
    _, p0 = model.init(jax.random.key(3), (6,))
    s0 = bp.init_state(model, jax.random.key(3), (6,))
    res = bp.train.fit(model, XENT, optax.adam(1e-2), p0, (x, y), steps=4, batch_size=16, state=s0, verbose=False)
    assert {a.dtype for a in jax.tree.leaves(res.state)} == {jnp.dtype(jnp.float32)}


def test_a_non_floating_compute_dtype_is_refused():
    with pytest.raises(bp.BpjaxTypeError, match="compute_dtype must be a floating dtype"):
        bp.precision.MixedPrecision(MODEL, jnp.int8)
