"""Per-example gradients from the hand-written backward against jax.vmap(jax.grad(...))."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cast, normal, random_params

import bpjax as bp
from bpjax import layers as L
from bpjax.per_example import dense_per_example_grads, per_example_grads

XENT = bp.losses.softmax_cross_entropy


def _init_state(model, input_shape):
    """``bp.init_state`` jitted: the Dense params it draws only for their shapes are dropped, no sampler is
    compiled (eagerly, each new shape compiles one: 0.3-0.6 s)."""
    return jax.jit(bp.init_state, static_argnums=(0, 2))(model, jax.random.key(0), input_shape)


def _loss_one(model, loss, p, xi, yi, kw):
    pred = bp.apply(model, p, xi[None], **kw)[0]
    return loss.value(pred, yi[None])


MODELS = {
    "mlp": (lambda: bp.serial(L.Dense(6), L.Tanh(), L.Dense(5), L.Relu(), L.Dense(3)), (4,)),
    "conv-free sequence": (lambda: bp.serial(L.Dense(5), L.Gelu(), L.Flatten(), L.Dense(3)), (2, 4)),
    "layernorm": (lambda: bp.serial(L.Dense(6), L.LayerNorm(), L.Sigmoid(), L.Dense(3)), (4,)),
}


# ~4-5 s each with two workers on 2 cores: the default suite runs the sequence and LayerNorm models (Dense on
# rank 3, Flatten, a norm), the slow set the MLP too.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "mlp" else n for n in sorted(MODELS)])
def test_per_example_grads_match_vmap_grad(name):
    make, shape = MODELS[name]
    model = make()
    for dtype, rtol in ((jnp.float32, 1e-4), (jnp.float64, 1e-10)):  # bpjax's gradient-check tolerances
        with jax.enable_x64(dtype == jnp.float64):
            params = random_params(model, shape, 0, dtype)
            x = normal(1, (7, *shape), dtype)
            y = jnp.arange(7) % 3
            losses, g = jax.jit(per_example_grads(model, XENT))(params, x, y)
            ref = jax.jit(jax.vmap(lambda xi, yi: jax.value_and_grad(
                lambda p: _loss_one(model, XENT, p, xi, yi, {}))(params)))(x, y)
            np.testing.assert_allclose(losses, ref[0], rtol=rtol)
            for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref[1])):
                a, b = np.asarray(a), np.asarray(b)
                assert a.shape[0] == 7
                scale = float(np.max(np.abs(b)))
                assert float(np.max(np.abs(a - b))) <= rtol * scale, name
            # the mean of the per-example gradients is the batch gradient of the mean loss
            _, batch = jax.jit(bp.value_and_grad(model, XENT))(params, x, y)
            for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(batch)):
                a, b = np.asarray(a), np.asarray(b)
                np.testing.assert_allclose(a.mean(0), b, rtol=10 * rtol, atol=10 * rtol * float(np.max(np.abs(b))))


def test_dense_outer_form_matches():
    # dW_i = outer(a_prev_i, dz_i): for one Dense layer under mse, dz_i = 2 (z_i - t_i) / D_out (its own loss)
    with jax.enable_x64(True):
        layer = L.Dense(3, dtype=jnp.float64)
        params = random_params(layer, (5,), 0, jnp.float64)
        x = normal(1, (6, 5), jnp.float64)
        t = normal(2, (6, 3), jnp.float64)
        z, a_prev = jax.jit(layer.forward)(params, x)
        explicit = jax.jit(dense_per_example_grads)(a_prev, 2 * (np.asarray(z) - np.asarray(t)) / 3)
        _, g = per_example_grads(layer, bp.losses.mse)(params, x, t)
        for k in ("W", "b"):
            np.testing.assert_allclose(explicit[k], g[k], rtol=1e-12, atol=1e-15)
        seq = jax.jit(dense_per_example_grads)(jnp.ones((2, 4, 5)), jnp.ones((2, 4, 3)))  # inner axes are summed
        np.testing.assert_allclose(seq["W"], 4.0)


def test_per_example_contextual_eval_batchnorm():
    # BatchNorm in eval mode (running statistics) has a well-defined per-example gradient.
    model = bp.serial(L.Dense(6), L.BatchNorm(), L.Relu(), L.Dense(3))
    with jax.enable_x64(True):
        params = random_params(model, (4,), 0, jnp.float64)
        state = cast(_init_state(model, (4,)), jnp.float64)
        x = normal(1, (5, 4), jnp.float64)
        y = jnp.arange(5) % 3
        _, g = jax.jit(per_example_grads(model, XENT), static_argnames="train")(params, x, y, state=state, train=False)
        kw = dict(state=state, train=False)
        ref = jax.jit(jax.vmap(lambda xi, yi: jax.grad(lambda p: _loss_one(model, XENT, p, xi, yi, kw))(params)))(x, y)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_per_example_errors():
    model = bp.serial(L.Dense(3))
    params = random_params(model, (4,))
    with pytest.raises(bp.BpjaxError, match=r"per_example_grads.*same batch size, got x \(5, 4\) and y \(4,\)"):
        per_example_grads(model, XENT)(params, jnp.ones((5, 4)), jnp.zeros(4, int))
    with pytest.raises(bp.BpjaxError, match="dense_per_example_grads.*share leading axes"):
        dense_per_example_grads(jnp.ones((2, 4)), jnp.ones((3, 2)))


def test_per_example_batchnorm_train_mode_is_refused():
    # a batch of one has no batch statistics: BatchNorm says so instead of returning a meaningless gradient
    model = bp.serial(L.Dense(6), L.BatchNorm(), L.Dense(3))
    params = random_params(model, (4,))
    state = _init_state(model, (4,))
    with pytest.raises(bp.BpjaxError, match="more than one value per channel"):
        per_example_grads(model, XENT)(params, jnp.ones((5, 4)), jnp.zeros(5, int), state=state, train=True)
