"""The subject's worked examples as tests: the chain rule by hand and gradient descent on sin(x)."""

import math

import jax
import jax.numpy as jnp
import pytest

import bpjax as bp


def test_chain_rule_worked_example():
    # L = (w x - 10)^2 at w = 2, x = 3: dL/dw = 2 (w x - 10) x = 2 (6 - 10) 3 = -24.
    w, x = 2.0, 3.0
    z = w * x             # forward: z = w x = 6
    r = z - 10            # r = -4
    dL_dr = 2 * r         # L = r^2
    dL_dw = dL_dr * 1 * x  # dr/dz = 1, dz/dw = x
    assert dL_dw == -24.0
    assert float(jax.grad(lambda w: (w * x - 10) ** 2)(w)) == -24.0
    # and the same through a bpjax Dense layer without bias (W = [[2]]) and the mse loss
    layer = bp.serial(bp.layers.Dense(1, bias=False))
    params = ({"W": jnp.array([[w]])},)
    value, grads = bp.value_and_grad(layer, bp.losses.mse)(params, jnp.array([[x]]), jnp.array([[10.0]]))
    assert float(value) == 16.0 and float(grads[0]["W"][0, 0]) == -24.0


def _descend(rate, steps, x0=2.0):
    """x <- x - rate * cos(x): gradient descent on sin(x), using the derivative cos."""
    def step(x, _):
        x = x - rate * jnp.cos(x)
        return x, x
    _, path = jax.lax.scan(step, jnp.asarray(x0, jnp.float32), None, length=steps)
    return path


def test_gradient_descent_on_sin_reaches_three_half_pi_with_a_moderate_rate():
    path = _descend(0.5, 100)
    assert abs(float(path[-1]) - 3 * math.pi / 2) < 1e-4
    assert float(jnp.sin(path[-1])) == pytest.approx(-1.0, abs=1e-6)


def test_gradient_descent_on_sin_crawls_with_a_tiny_rate():
    path = _descend(1e-3, 100)
    assert 2.0 < float(path[-1]) < 2.1  # moved, but barely: cos(2) ~ -0.42, 100 steps of ~4e-4
    assert abs(float(path[-1]) - 3 * math.pi / 2) > 2.5


def test_gradient_descent_on_sin_overshoots_with_a_large_rate():
    # f''(3pi/2) = 1: rates above 2 make the fixed point unstable; the iterates keep jumping.
    path = _descend(2.5, 200)
    tail = path[-50:]
    distances = jnp.abs(jnp.mod(tail - 3 * math.pi / 2 + math.pi, 2 * math.pi) - math.pi)
    assert float(distances.max()) > 0.3  # never settles at a minimum
    assert float(jnp.abs(jnp.diff(tail)).min()) > 1e-3  # still moving after 150 steps
