"""bpjax.grad: the one gradient path, the public functions' argument checks, and the custom VJP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal, random_params

import bpjax as bp
from bpjax import grad
from bpjax import layers as L

MODEL = bp.serial(L.Dense(3), L.Tanh(), L.Dense(2))
MSE = bp.losses.mse


def _data():
    return random_params(MODEL, (4,)), normal(1, (5, 4)), normal(2, (5, 2))


def test_check_backward_names_the_place_and_the_choices():
    assert grad.check_backward("here", "autodiff") == "autodiff"
    with pytest.raises(bp.BpjaxError, match=r"here: backward must be one of \('manual', 'autodiff'\), got 'jax'"):
        grad.check_backward("here", "jax")


def test_check_inputs_takes_lists_and_refuses_nan_a_bad_key_and_a_missing_state():
    x, y, state = grad.check_inputs("here", MODEL, [[1.0, 2.0]], [0], None, None)
    assert isinstance(x, jax.Array) and x.shape == (1, 2) and y.shape == (1,) and state == ()
    with pytest.raises(bp.BpjaxError, match=r"here: input x contains NaN or Inf \(1 entries, first at example 1\)"):
        grad.check_inputs("here", MODEL, np.array([[0.0], [np.nan]]), None, None, None)
    with pytest.raises(bp.BpjaxTypeError, match=r"here: key must be a PRNG key, got the int 1"):
        grad.check_inputs("here", MODEL, [[1.0]], None, None, 1)
    drop = bp.serial(L.Dropout(0.5))
    with pytest.raises(bp.BpjaxError, match=r"here: serial\(Dropout\(0\.5\)\) keeps state or draws random numbers"):
        grad.check_inputs("here", drop, [[1.0]], None, None, None)


def test_gradients_gives_the_same_triple_for_both_backwards():
    """value, new_state and grads: the hand-written backward equals jax.grad to float32 roundoff (rtol 1e-5: a
    few sums of at most 5 terms, each rounded at 6e-8)."""
    params, x, y = _data()
    value, state, grads = grad.gradients(MODEL, MSE)(params, x, y, (), None, True)
    ref_value, ref_state, ref_grads = grad.gradients(MODEL, MSE, backward="autodiff")(params, x, y, (), None, True)
    assert state == ref_state == ()  # a simple model's state is the one given
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    (_, dx) = grad.gradients(MODEL, MSE, wrt_input=True)(params, x, y, (), None, True)[2]
    assert dx.shape == x.shape


def test_value_and_grad_follows_jax_conventions_for_simple_and_contextual_models():
    params, x, y = _data()
    value, grads = bp.value_and_grad(MODEL, MSE)(params, x, y)
    assert value.shape == () and jax.tree.structure(grads) == jax.tree.structure(params)
    drop = bp.serial(L.Dense(2), L.Dropout(0.5))
    p = random_params(drop, (4,))
    (value, state), grads = bp.value_and_grad(drop, MSE)(p, x, y, state=((), ()), key=jax.random.key(0))
    assert state == ((), ()) and jax.tree.structure(grads) == jax.tree.structure(p)


def test_as_custom_vjp_runs_the_same_gradient_and_predict_the_forward():
    params, x, y = _data()
    f = bp.as_custom_vjp(MODEL)
    g = jax.grad(lambda p: MSE(f(p, x), y))(params)
    _, ref = bp.value_and_grad(MODEL, MSE)(params, x, y)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)  # the same backward: equal up to the jit's roundoff
    np.testing.assert_allclose(bp.predict(MODEL, params, x), f(params, x), rtol=1e-6)


def test_a_plain_function_loss_is_wrapped_once():
    def l1(pred, target):
        return jnp.mean(jnp.abs(pred - target))

    assert bp.losses.as_loss(l1) == bp.losses.as_loss(l1) and hash(bp.losses.as_loss(l1))
    params, x, y = _data()
    value, _ = bp.value_and_grad(MODEL, l1)(params, x, y)
    np.testing.assert_allclose(value, l1(bp.predict(MODEL, params, x), y), rtol=1e-6)


def test_inside_a_users_jit_a_nan_input_poisons_the_loss_and_every_gradient():
    """A NaN row that a ReLU zeroes would leave a bias gradient finite: the traced input check makes it NaN too."""
    model = bp.serial(L.Dense(4), L.Relu(), L.Dense(3))
    params = random_params(model, (5,))
    x = normal(1, (6, 5)).at[2, 1].set(jnp.nan)
    value, grads = jax.jit(bp.value_and_grad(model, bp.losses.softmax_cross_entropy))(params, x, jnp.arange(6) % 3)
    assert bool(jnp.isnan(value)) and all(bool(jnp.isnan(g).all()) for g in jax.tree.leaves(grads))
