"""Losses: hand-written dL/dpred vs jax.grad (f32 and f64) and finite differences; values vs formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bpjax as bp
from bpjax import losses

B, C = 7, 5


def _targets(name, dtype, key=1):
    k = jax.random.key(key)
    if name == "int":
        return jax.random.randint(k, (B,), 0, C)
    if name == "onehot":
        return jax.nn.one_hot(jax.random.randint(k, (B,), 0, C), C, dtype=dtype)
    if name == "soft":
        return jax.nn.softmax(jax.random.normal(k, (B, C), dtype))
    if name == "unnormalised":  # rows summing to 0.5..1.5
        return jax.random.uniform(k, (B, C), dtype) / C * 2
    if name == "binary":
        return jax.random.bernoulli(k, 0.5, (B, C)).astype(dtype)
    if name == "probabilities":
        return jax.random.uniform(k, (B, C), dtype)
    return jax.random.normal(k, (B, C), dtype)


CASES = [("mse", "real"), ("softmax_cross_entropy", "int"), ("softmax_cross_entropy", "onehot"),
         ("softmax_cross_entropy", "soft"), ("softmax_cross_entropy", "unnormalised"),
         ("binary_cross_entropy", "binary"), ("binary_cross_entropy", "probabilities")]


def _compare(loss, pred, target):
    value, dpred = loss.value_and_grad(pred, target)
    ref_value, ref = jax.value_and_grad(loss.value)(pred, target)
    rel = float(jnp.max(jnp.abs(dpred - ref)) / jnp.max(jnp.abs(ref)))
    return float(value), float(ref_value), rel


@pytest.mark.parametrize("name,target", CASES)
def test_loss_gradient_f32(name, target):
    loss = getattr(losses, name)
    pred = 3 * jax.random.normal(jax.random.key(0), (B, C))
    v, rv, rel = _compare(loss, pred, _targets(target, jnp.float32))
    assert v == pytest.approx(rv, rel=1e-6)
    assert rel < 1e-5  # float32: a handful of roundoffs of 6e-8 in exp/log/sum


@pytest.mark.parametrize("name,target", CASES)
def test_loss_gradient_f64_and_finite_differences(name, target):
    loss = getattr(losses, name)
    with jax.enable_x64(True):
        pred = 3 * jax.random.normal(jax.random.key(0), (B, C), jnp.float64)
        t = _targets(target, jnp.float64)
        v, rv, rel = _compare(loss, pred, t)
        assert rel < 1e-12 and v == pytest.approx(rv, rel=1e-14)
        # central differences along 3 random directions, eps 1e-5: truncation ~1e-10, roundoff ~1e-11
        _, g = loss.value_and_grad(pred, t)
        for i in range(3):
            v_dir = jax.random.normal(jax.random.key(10 + i), pred.shape, jnp.float64)
            eps = 1e-5
            fd = (loss(pred + eps * v_dir, t) - loss(pred - eps * v_dir, t)) / (2 * eps)
            assert abs(float(fd - jnp.vdot(g, v_dir))) <= 1e-7 * float(jnp.linalg.norm(g) * jnp.linalg.norm(v_dir))


def test_values_match_formulas():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(B, C))
    y = rng.integers(0, C, size=B)
    t = rng.normal(size=(B, C))
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    with jax.enable_x64(True):
        assert float(losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(y))) == pytest.approx(
            -logp[np.arange(B), y].mean(), rel=1e-12)
        assert float(losses.mse(jnp.asarray(z), jnp.asarray(t))) == pytest.approx(((z - t) ** 2).mean(), rel=1e-12)
        s = 1 / (1 + np.exp(-z))
        b = (t > 0).astype(float)
        bce = -(b * np.log(s) + (1 - b) * np.log(1 - s)).mean()
        assert float(losses.binary_cross_entropy(jnp.asarray(z), jnp.asarray(b))) == pytest.approx(bce, rel=1e-12)


def test_integer_and_onehot_targets_agree():
    z = jax.random.normal(jax.random.key(0), (B, C))
    y = jnp.arange(B) % C
    a = losses.softmax_cross_entropy.value_and_grad(z, y)
    b = losses.softmax_cross_entropy.value_and_grad(z, jax.nn.one_hot(y, C))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6, atol=1e-8)


def test_fused_cross_entropy_backward_is_softmax_minus_y():
    z = jax.random.normal(jax.random.key(0), (B, C))
    y = jnp.arange(B) % C
    _, dz = losses.softmax_cross_entropy.value_and_grad(z, y)
    np.testing.assert_allclose(dz, (jax.nn.softmax(z) - jax.nn.one_hot(y, C)) / B, rtol=1e-6, atol=1e-8)


def test_cross_entropy_is_stable_for_huge_logits():
    z = jnp.array([[1000.0, -1000.0, 0.0]])
    v, g = losses.softmax_cross_entropy.value_and_grad(z, jnp.array([1]))
    assert float(v) == pytest.approx(2000.0) and bool(jnp.all(jnp.isfinite(g)))
    v, g = losses.binary_cross_entropy.value_and_grad(z, jnp.array([[0.0, 1.0, 1.0]]))
    assert bool(jnp.isfinite(v)) and bool(jnp.all(jnp.isfinite(g)))


@jax.jit
def _xent_both(z, y):
    return (losses.softmax_cross_entropy.value_and_grad(z, y),
            jax.value_and_grad(losses.softmax_cross_entropy.value)(z, y))


@settings(max_examples=10)
@given(batch=st.integers(1, 17), classes=st.integers(2, 12))
def test_cross_entropy_any_shape(batch, classes):
    z = jax.random.normal(jax.random.key(batch), (batch, classes))
    y = jax.random.randint(jax.random.key(classes), (batch,), 0, classes)
    (value, dz), (ref_value, ref) = _xent_both(z, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(dz, ref, rtol=1e-5, atol=1e-7)


def test_plain_function_becomes_a_loss():
    def l1(pred, target):
        return jnp.mean(jnp.abs(pred - target))

    loss = losses.as_loss(l1)
    model = bp.serial(bp.layers.Dense(3))
    _, p = model.init(jax.random.key(0), (4,))
    x, t = jax.random.normal(jax.random.key(1), (6, 4)), jax.random.normal(jax.random.key(2), (6, 3))
    assert loss.name == "l1"
    assert bp.check_gradients(model, l1, p, x, t).ok


@pytest.mark.parametrize("target,message", [
    (jnp.array([0, 1, 2, 3, 4, 5, 9]), "labels must lie in [0, 5), got min 0 and max 9"),
    (jnp.array([0, 1, 2, -1, 4, 0, 1]), "got min -1"),
    (jnp.zeros((B,), bool), "dtype bool"),
    (jnp.zeros((B,), jnp.float32), "float labels?"),
    (jnp.zeros((B + 1,), jnp.int32), f"integer labels must have shape ({B},)"),
    (jnp.zeros((B, C + 1)), f"probabilities of shape ({B}, {C})"),
])
def test_cross_entropy_bad_targets(target, message):
    with pytest.raises((ValueError, TypeError), match="softmax_cross_entropy") as e:
        losses.softmax_cross_entropy(jnp.zeros((B, C)), target)
    assert message in str(e.value)


def test_labels_out_of_range_inside_user_jit_give_nan_not_a_wrong_loss():
    z = jnp.zeros((B, C))
    bad = jnp.full((B,), C)
    assert bool(jnp.isnan(jax.jit(losses.softmax_cross_entropy)(z, bad)))
    assert bool(jnp.isfinite(jax.jit(losses.softmax_cross_entropy)(z, bad - 1)))


def test_mse_shape_mismatch():
    expected = r"mse: prediction and target shapes differ: prediction \(3, 2\), target \(3,\)"
    with pytest.raises(ValueError, match=expected):
        losses.mse(jnp.zeros((3, 2)), jnp.zeros((3,)))
