"""bpjax.core: the Layer abstraction (plain fields, equality), the contract-checked calls, state and keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal

import bpjax as bp
from bpjax import core
from bpjax import layers as L


def _identity_layer(**fields):
    return bp.Layer(lambda key, shape: (shape, ()), lambda p, x: (x, ()), lambda p, r, dy: ((), dy), "id", **fields)


def test_a_layer_is_a_namedtuple_of_functions_and_values():
    layer = _identity_layer()
    assert layer.kind == "layer" and layer.settings == () and layer.children == () and layer.init_state is None
    assert bp.Layer(*layer) == layer and layer._replace() == layer and hash(bp.Layer(*layer)) == hash(layer)
    assert layer._replace(kind="x") != layer  # every field counts, the functions by identity
    assert repr(layer) == "id"


def test_kind_and_settings_say_what_built_a_layer():
    assert bp.serial(L.Relu()).kind == "serial" and bp.parallel(L.Relu()).kind == "parallel"
    assert bp.Residual(L.Relu()).kind == "Residual" and L.Autodiff(lambda p, x: x, lambda k, s: (s, ())).kind == \
        "Autodiff"
    gpt = bp.zoo.gpt(11, context=4, features=8, num_layers=1, num_heads=2)
    assert gpt.kind == "gpt" and dict(gpt.settings)["context"] == 4 and hash(gpt.settings)


def test_check_model_names_the_place_and_suggests_autodiff_for_a_function():
    layer = _identity_layer()
    assert core.check_model(layer) is layer
    with pytest.raises(bp.BpjaxTypeError, match=r"fit: expected a bpjax Layer .*got function .*"
                                                r"bp\.layers\.Autodiff\(apply, init\)"):
        core.check_model(lambda params, x: x, "fit")
    with pytest.raises(bp.BpjaxTypeError, match=r"model: expected a bpjax Layer \(e\.g\. bp\.serial\(\.\.\.\)\), "
                                                r"got int$"):
        core.check_model(3)


def test_check_state_requires_state_for_a_contextual_model_only():
    drop = bp.serial(L.Dense(2), L.Dropout(0.5))
    assert core.check_state("here", L.Relu(), None) == ()
    assert core.check_state("here", drop, ("s",)) == ("s",)
    with pytest.raises(bp.BpjaxError, match=r"here: serial\(Dense\(2\), Dropout\(0\.5\)\) keeps state or draws "
                                            r"random numbers: pass keys=$"):
        core.check_state("here", drop, None, "keys=")


def test_split_key_gives_one_key_per_child_or_nones():
    assert core.split_key(None, 3) == [None] * 3
    keys = core.split_key(jax.random.key(0), 2)
    assert len(keys) == 2 and not np.array_equal(jax.random.key_data(keys[0]), jax.random.key_data(keys[1]))


def test_init_of_checks_the_contract_and_init_state_of_a_simple_layer_is_empty():
    bad = _identity_layer()._replace(init=lambda key, shape: {"w": 1})
    with pytest.raises(bp.BpjaxError, match=r"id: init must return \(output_shape, params\), got a dict"):
        core.init_of(bad, None, (3,))
    assert core.init_of(L.Relu(), None, (3,), state=True) == ((3,), ())
    assert bp.init_state(L.Relu(), None, (3,)) == ()


def test_backward_of_checks_a_leaf_layer_and_trusts_a_container():
    """A leaf layer's dparams are checked against its params; a container's are its children's, checked there."""
    wrong = _identity_layer()._replace(backward=lambda p, r, dy: ((), dy.T))  # dx of the wrong shape
    x = normal(0, (2, 3))
    with pytest.raises(bp.BpjaxError, match=r"id: backward returned dx of shape \(3, 2\), expected \(2, 3\)"):
        core.backward_of(wrong, (), (), x, x)
    model = bp.serial(wrong)
    y, residuals, _ = core.forward_of(model, ((),), x)
    with pytest.raises(bp.BpjaxError, match=r"serial\[0\] id: backward returned dx of shape \(3, 2\)"):
        core.backward_of(model, ((),), residuals, y, x)


def test_apply_checks_the_key_of_a_contextual_layer_and_forward_of_trusts_it():
    drop = L.Dropout(0.5)
    x = jnp.ones((2, 3))
    with pytest.raises(bp.BpjaxTypeError, match=r"Dropout\(0\.5\): key must be a PRNG key, got the int 3"):
        bp.apply(drop, (), x, key=3)
    y, _, state = bp.apply(drop, (), x, key=jax.random.key(0), train=False)
    assert state == () and bool(jnp.all(y == x))  # eval mode: the identity
    y, residuals, state = core.forward_of(L.Relu(), (), -x, state="kept")  # a simple layer returns the state given
    assert state == "kept" and bool(jnp.all(y == 0))


def test_tag_mode_and_read_mode_round_trip():
    assert core.read_mode(core.tag_mode(True, 1)) == (True, 1)
    assert core.read_mode(core.tag_mode(False, (2,))) == (False, (2,))

