"""Combinators: serial (its params tuple, its two loops and their hook), Residual, parallel, fan_out, fan_in_sum,
fan_in_concat: whole-model gradient checks, shapes, state, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cast, init_shapes, initial_state, normal, random_params
from hypothesis import given, settings
from hypothesis import strategies as st

import bpjax as bp
from bpjax import layers as L
from bpjax.combinators import Residual, fan_in_concat, fan_in_sum, fan_out, parallel


def _check_model_f64(model, in_shape, out_dim, batch=4, seed=0, state=None, key=None):
    """check_gradients in float64: rtol 1e-10 against jax.grad and finite differences at fd rtol 1e-6
    (both gradients are exact up to roundoff; see bpjax.gradcheck for the tolerances), at random params
    (conftest.random_params) and data drawn with numpy."""
    with jax.enable_x64(True):
        params = random_params(model, in_shape, seed, jnp.float64)
        if bp.is_contextual(model):
            state = initial_state(model, in_shape, jax.random.key(seed))
        x = normal(seed + 1, (batch, *in_shape), jnp.float64)
        y = normal(seed + 2, (batch, out_dim), jnp.float64)
        rep = bp.check_gradients(model, bp.losses.mse, params, x, y, state=cast(state, jnp.float64),
                                 key=key, rtol=1e-10, finite_differences=True)
    assert rep.ok, str(rep)
    return params, rep


def test_resnet_block_fan_out_parallel_fan_in_equals_residual():
    d = 6
    inner = bp.serial(L.Dense(d), L.Relu(), L.Dense(d))
    block = bp.serial(fan_out(2), parallel(inner, L.Identity()), fan_in_sum())
    res = Residual(inner)
    assert init_shapes(block, (d,))[0] == (d,)
    assert init_shapes(res, (d,))[0] == (d,)
    params = random_params(block, (d,))
    x = normal(1, (5, d))
    y_block, _ = jax.jit(block.forward)(params, x)  # compiled: one program each, not one per eager op
    y_res, _ = jax.jit(res.forward)(params[1][0], x)  # the same inner params: the two are one function
    np.testing.assert_allclose(y_block, y_res, rtol=1e-6)
    _check_model_f64(bp.serial(block, L.Dense(3)), (d,), 3)
    _check_model_f64(bp.serial(res, L.Dense(3)), (d,), 3)


def _mnist1d_mlp():
    """40-100-100-10 ReLU with h = h + relu(W2 h), the MNIST-1D MLP."""
    return bp.serial(L.Dense(100), L.Relu(), Residual(bp.serial(L.Dense(100), L.Relu())), L.Dense(10))


def test_mnist1d_mlp_with_residual():
    model = _mnist1d_mlp()
    assert init_shapes(model, (40,))[0] == (10,)
    params = random_params(model, (40,))
    x = normal(1, (16, 40))
    labels = jnp.asarray(np.arange(16) % 10, jnp.int32)
    rep = bp.check_gradients(model, bp.losses.softmax_cross_entropy, params, x, labels)
    assert rep.ok, str(rep)  # float32, default rtol 1e-4


@pytest.mark.slow
def test_mnist1d_mlp_with_residual_f64():
    _check_model_f64(_mnist1d_mlp(), (40,), 10, batch=8)


def test_residual_backward_adds_the_skip_path():
    layer = Residual(L.Dense(4, bias=False))
    params = random_params(layer, (4,))
    x = normal(1, (3, 4))
    y, res = jax.jit(layer.forward)(params, x)
    W, xn = np.asarray(params["W"]), np.asarray(x)  # references in numpy (float32)
    np.testing.assert_allclose(y, xn + xn @ W, rtol=1e-6)
    dy = normal(2, (3, 4))
    _, dx = jax.jit(layer.backward)(params, res, dy)
    np.testing.assert_allclose(dx, np.asarray(dy) + np.asarray(dy) @ W.T, rtol=1e-6)  # dx = dy + dblock_dx
    rep = bp.check_layer(layer, params, x)  # single array in and out: check_layer applies (f32 rtol 1e-4)
    assert rep.ok, str(rep)


def _concat_case(widths, axis):
    """fan_out to len(widths) Dense branches (on the last axis), concatenate along ``axis``, then Dense."""
    n = len(widths)
    in_shape = (3, 4)
    branches = parallel(*[L.Dense(w) if axis == -1 else L.Dense(4) for w in widths])
    model = bp.serial(fan_out(n), branches, fan_in_concat(axis), L.Flatten(), L.Dense(2))
    assert init_shapes(model, in_shape)[0] == (2,)
    _check_model_f64(model, in_shape, 2, batch=3)


test_fan_in_concat = settings(max_examples=3)(
    given(widths=st.lists(st.integers(1, 4), min_size=1, max_size=3), axis=st.sampled_from([-1, -2, 1]))(_concat_case))
test_fan_in_concat_many = pytest.mark.slow(settings(max_examples=20)(
    given(widths=st.lists(st.integers(1, 4), min_size=1, max_size=3), axis=st.sampled_from([-1, -2, 1]))(_concat_case)))


def test_fan_out_three_ways_sum():
    model = bp.serial(fan_out(3), parallel(L.Dense(5), L.Tanh(), L.Identity()), fan_in_sum(), L.Dense(2))
    with pytest.raises(bp.BpjaxError, match="equal input shapes"):  # Dense(5) on 5 features keeps the shape
        bp.serial(fan_out(2), parallel(L.Dense(3), L.Identity()), fan_in_sum()).init(jax.random.key(0), (5,))
    _check_model_f64(model, (5,), 2)


def test_contextual_children_thread_state_and_keys():
    inner = bp.serial(L.Dense(6, bias=False), L.BatchNorm(), L.Relu(), L.Dropout(0.3))
    model = bp.serial(L.Dense(6), Residual(inner), fan_out(2), parallel(L.Dropout(0.5), L.Dense(6)), fan_in_sum(),
                      L.Dense(2))
    assert bp.is_contextual(Residual(inner)) and not bp.is_contextual(Residual(L.Dense(3)))
    assert bp.is_contextual(parallel(L.Dense(3), L.Dropout(0.1)))
    _check_model_f64(model, (6,), 2, batch=5, key=jax.random.key(9))
    params = random_params(model, (6,))
    state = initial_state(model, (6,))
    x = normal(1, (5, 6))
    # compiled: one program per mode, not one per eager op
    train = jax.jit(lambda p, x, s, k: model.forward(p, x, state=s, key=k, train=True))
    evaluate = jax.jit(lambda p, x, s: model.forward(p, x, state=s, key=None, train=False))
    _, _, new = train(params, x, state, jax.random.key(2))
    assert not np.allclose(new[1][1]["mean"], state[1][1]["mean"])  # BatchNorm inside Residual updated
    y1 = train(params, x, state, jax.random.key(2))[0]
    y2 = train(params, x, state, jax.random.key(3))[0]
    assert not np.allclose(y1, y2)  # the key reaches the Dropouts
    e1 = evaluate(params, x, state)[0]
    e2 = evaluate(params, x, state)[0]
    np.testing.assert_array_equal(e1, e2)


def test_branching_errors():
    with pytest.raises(bp.BpjaxError, match=r"block must keep the shape.*\(4,\).*\(3,\)"):
        Residual(L.Dense(3)).init(jax.random.key(0), (4,))
    with pytest.raises(bp.BpjaxError, match=r"block must keep the shape.*\(2, 4\).*\(2, 3\)"):
        Residual(L.Dense(3)).forward({"W": jnp.ones((4, 3)), "b": jnp.zeros(3)}, jnp.ones((2, 4)))
    with pytest.raises(bp.BpjaxTypeError, match="did you forget to call it"):
        Residual(L.Relu)
    with pytest.raises(bp.BpjaxError, match=r"expected a tuple of 2 shapes"):
        parallel(L.Relu(), L.Relu()).init(jax.random.key(0), (4,))
    with pytest.raises(bp.BpjaxError, match=r"expected a tuple of 2 arrays as input.*got a tuple of length 3"):
        parallel(L.Relu(), L.Relu()).forward(((), ()), (jnp.ones((2, 3)),) * 3)
    with pytest.raises(bp.BpjaxError, match="n must be a positive int, got 0"):
        fan_out(0)
    with pytest.raises(bp.BpjaxError, match="expected inputs of equal shape"):
        fan_in_sum().forward((), (jnp.ones((2, 3)), jnp.ones((2, 4))))
    with pytest.raises(bp.BpjaxError, match="expected a tuple of arrays as input"):
        fan_in_sum().forward((), jnp.ones((2, 3)))
    with pytest.raises(bp.BpjaxError, match="axis must be a non-batch axis"):
        fan_in_concat(0)
    with pytest.raises(bp.BpjaxError, match="input shapes must agree off axis -1"):
        fan_in_concat(-1).forward((), (jnp.ones((2, 3, 1)), jnp.ones((2, 4, 1))))
    with pytest.raises(bp.BpjaxError, match="input shapes must agree off axis -1"):
        fan_in_concat(-1).init(None, ((3, 1), (4, 1)))


# ---------------------------------------------------------------- serial


def test_serial_is_a_container_of_its_layers():
    layers = (L.Dense(3), L.Relu(), L.Dense(2))
    model = bp.serial(*layers)
    assert model.kind == "serial" and model.children == layers
    assert model.name == "serial(Dense(3), Relu, Dense(2))" and bp.serial(*layers, name="mlp").name == "mlp"
    assert init_shapes(model, (4,))[0] == (2,)


def test_serial_loops_keep_outputs_and_hand_each_gradient_to_the_hook():
    """serial_forward keeps every layer's output a_l; serial_backward's hook sees (and may change) each da_{l-1}."""
    from bpjax.combinators import serial_backward, serial_forward

    layers = (L.Dense(3), L.Tanh(), L.Dense(2))
    params = random_params(bp.serial(*layers), (4,))
    x = normal(1, (5, 4))
    y, residuals, state, outs = serial_forward(layers, params, x, (), None, True, keep_outputs=True)
    assert [o.shape for o in outs] == [(5, 3), (5, 3), (5, 2)] and outs[-1] is y and state == ((),) * 3
    seen = []
    dparams, dx = serial_backward(layers, params, residuals, jnp.ones_like(y),
                                  after=lambda i, d: seen.append((i, d.shape)) or 0 * d)
    assert seen == [(2, (5, 3)), (1, (5, 3)), (0, (5, 4))]  # in the reverse order of the forward pass
    assert float(jnp.abs(dx).max()) == 0.0 and float(jnp.abs(dparams[0]["W"]).max()) == 0.0  # the hook zeroed them
    assert float(jnp.abs(dparams[2]["W"]).max()) > 0  # the last layer's own gradient is untouched


def test_serial_params_must_be_the_tuple_init_returned():
    model = bp.serial(L.Dense(3), L.Relu())
    params = random_params(model, (4,))
    x = normal(0, (2, 4))
    with pytest.raises(bp.BpjaxTypeError, match=r"params must be the tuple init returned.*got a list \(pass "
                                                r"tuple\(params\)\)"):
        model.forward(list(params), x)
    with pytest.raises(bp.BpjaxError, match=r"expected a tuple of 2 per-layer params, got a tuple of length 1"):
        model.forward(params[:1], x)
    assert model.forward(tuple(params), x)[0].shape == (2, 3)


def test_serial_init_checks_its_key_and_shape_then_splits_the_key_once_per_layer():
    model = bp.serial(L.Dense(3), L.Dense(2))
    with pytest.raises(bp.BpjaxTypeError, match=r"serial\(Dense\(3\), Dense\(2\)\)\.init: key must be a PRNG key, "
                                                r"got the int 0"):
        model.init(0, (4,))
    with pytest.raises(bp.BpjaxTypeError, match=r"serial\[0\] Dense\(3\)\.init: key must be a PRNG key .* for a "
                                                r"layer with parameters, got None"):
        model.init(None, (4,))
    out = []  # an int shape is a one-axis shape (traced: nothing drawn)
    params = jax.eval_shape(lambda k: out.append(model.init(k, 4)) or out[0][1], jax.random.key(0))
    assert out[0][0] == (2,) and params[1]["W"].shape == (3, 2)
