"""Embedding: scatter-add backward vs jax.vjp and finite differences, repeated ids, float0 dx, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_params
from hypothesis import given, settings
from hypothesis import strategies as st

import bpjax as bp
from bpjax import errors
from bpjax import layers as L


def _table_as_input(layer, ids):
    """The layer seen as a function of its table, ``E -> E[ids]`` with the ids fixed.

    check_layer differentiates with respect to floating inputs; the ids are integers (their cotangent
    is float0), so this view puts ``E`` in the input slot and checks ``dE`` against jax.vjp and finite
    differences."""

    def init(key, input_shape):
        return layer.init(key, ids.shape[1:])

    def forward(params, E):
        y, ids_res = layer.forward({"E": E}, ids)
        return y, (ids_res, E)

    def backward(params, residuals, dy):
        ids_res, E = residuals
        return (), layer.backward({"E": E}, ids_res, dy)[0]["E"]  # dE, in the input slot

    return bp.Layer(init, forward, backward, f"{layer.name} wrt E")


def _check_case(vocab, features, ids_shape):
    # the table and the ids drawn with numpy: eager jax.random draws compile a sampler per shape
    layer = L.Embedding(vocab, features)
    params = random_params(layer, ids_shape[1:])
    ids = jnp.asarray(np.random.default_rng(1).integers(0, vocab, ids_shape), jnp.int32)
    E = params["E"]
    view = _table_as_input(layer, ids)
    r32 = bp.check_layer(view, (), E, finite_differences=False)  # default f32 rtol 1e-4
    assert r32.ok, str(r32)
    with jax.enable_x64(True):  # rtol 1e-10, fd rtol 1e-6: dE is a sum of dy rows, exact up to roundoff
        E64 = jnp.asarray(np.asarray(E, np.float64))
        r64 = bp.check_layer(view, (), E64, rtol=1e-10)
    assert r64.ok, str(r64)

    # dx: float0 zeros of the ids' shape, JAX's cotangent type for integer inputs (one compiled program)
    @jax.jit
    def forward_backward(params, ids):
        y, res = layer.forward(params, ids)
        return y, layer.backward(params, res, jnp.ones_like(y))[1]

    y, dx = forward_backward(params, ids)
    assert dx.dtype == jax.dtypes.float0 and dx.shape == ids.shape
    assert y.shape == (*ids_shape, features)


IDS_SHAPES = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
test_embedding_backward = settings(max_examples=4)(
    given(vocab=st.integers(1, 12), features=st.integers(1, 5), ids_shape=IDS_SHAPES)(_check_case))
test_embedding_backward_many = pytest.mark.slow(settings(max_examples=25)(
    given(vocab=st.integers(1, 12), features=st.integers(1, 5), ids_shape=IDS_SHAPES)(_check_case)))


def test_embedding_repeated_ids_accumulate():
    layer = L.Embedding(5, 2)
    params = random_params(layer, (4,))
    ids = jnp.array([[1, 1, 3, 1], [0, 3, 1, 4]])
    y, res = layer.forward(params, ids)
    np.testing.assert_array_equal(y, np.asarray(params["E"])[np.asarray(ids)])
    dy = jnp.arange(16.0).reshape(2, 4, 2)
    dparams, _ = layer.backward(params, res, dy)
    expected = np.zeros((5, 2))
    for b in range(2):
        for t in range(4):
            expected[int(ids[b, t])] += np.asarray(dy[b, t])  # id 1 occurs 4 times, id 3 twice, id 2 never
    np.testing.assert_array_equal(dparams["E"], expected)  # integer-valued sums: exact in float32
    assert np.all(np.asarray(dparams["E"])[2] == 0)


def test_embedding_in_a_model_under_grad():
    """Embedding -> Flatten -> Dense: the hand-written whole-model gradient equals jax.grad's (f64, 1e-10)."""
    model = bp.serial(L.Embedding(7, 3), L.Flatten(), L.Dense(2))
    with jax.enable_x64(True):
        params = random_params(model, (4,), dtype=jnp.float64)  # numpy draws: no sampler compiled
        ids = jnp.array([[1, 1, 2, 6], [0, 6, 6, 3], [5, 4, 1, 1]])
        y = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2)))
        # compiled: one program each, not one per eager op
        _, manual = jax.jit(bp.value_and_grad(model, bp.losses.mse))(params, ids, y)
        _, ref = jax.jit(bp.autodiff_value_and_grad(model, bp.losses.mse))(params, ids, y)
        for m, r in zip(jax.tree.leaves(manual), jax.tree.leaves(ref)):
            np.testing.assert_allclose(m, r, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(bp.as_custom_vjp(model)(params, ids), model.forward(params, ids)[0])


def test_embedding_errors():
    layer = L.Embedding(5, 2)
    params = random_params(layer, (3,))
    with pytest.raises(bp.BpjaxTypeError, match=r"Embedding\(5, 2\): expected integer ids.*float32"):
        layer.forward(params, jnp.ones((2, 3)))
    with pytest.raises(bp.BpjaxError, match=r"ids must lie in \[0, 5\), got min 0 and max 5"):
        layer.forward(params, jnp.array([[0, 5, 1]]))
    with pytest.raises(bp.BpjaxError, match=r"ids must lie in \[0, 5\), got min -1 and max 2"):
        layer.forward(params, jnp.array([[-1, 2, 1]]))
    # traced: NaN in a user's own jit, a clear error inside bpjax's checked functions
    y = jax.jit(lambda p, i: layer.forward(p, i)[0])(params, jnp.array([[0, 9, 1]]))
    assert np.all(np.isnan(np.asarray(y)))
    err, _ = jax.jit(errors.checked(lambda p, i: layer.forward(p, i)[0]))(params, jnp.array([[0, 9, 1]]))
    with pytest.raises(bp.BpjaxError, match=r"ids must lie in \[0, 5\), got min 0 and max 9"):
        errors.throw(err)
    with pytest.raises(bp.BpjaxError, match=r"expected \{'E': \(5, 2\)\}"):
        layer.forward({"E": jnp.ones((4, 2))}, jnp.array([[0, 1]]))
    with pytest.raises(bp.BpjaxError, match="rank-1 or"):
        layer.forward(params, jnp.array(3))
    for bad, what in (((0, 2), "vocab"), ((5, -1), "features"), ((2.5, 2), "vocab"), ((5, True), "features")):
        with pytest.raises(bp.BpjaxError, match=f"Embedding: {what} must be a positive int"):
            L.Embedding(*bad)
