"""bpjax.train.validate: the eager checks of a run's data, metrics, optimizer state, factory and keys."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bpjax as bp
from bpjax.train import validate


def test_check_data_gives_arrays_and_names_the_dataset():
    x, y = validate.check_data("fit", ([[1.0], [2.0]], np.array([0, 1])), "train_data")
    assert isinstance(x, jax.Array) and isinstance(y, jax.Array) and x.shape == (2, 1)
    for data, cls, fragment in [
        (np.ones(3), bp.BpjaxTypeError, "fit: train_data must be a pair (x, y) of arrays, got ndarray"),
        ((np.ones((2, 1)) > 0, np.ones(2)), bp.BpjaxTypeError, "train_data x must be real floating point"),
        ((np.ones((3, 1)), np.ones(2)), bp.BpjaxError, "x and y must share a non-empty leading (example) axis"),
        ((np.array([[np.nan]]), np.ones(1)), bp.BpjaxError, "train_data x contains NaN or Inf"),
    ]:
        with pytest.raises(cls) as e:
            validate.check_data("fit", data, "train_data")
        assert fragment in str(e.value), str(e.value)


def test_resolve_metrics_defaults_to_accuracy_for_class_labels_only():
    labels = jnp.zeros(4, jnp.int32)
    assert list(validate.resolve_metrics("fit", None, labels, (8, 3))) == ["loss", "accuracy"]
    assert list(validate.resolve_metrics("fit", None, jnp.zeros((4, 1)), (8, 1))) == ["loss"]
    with pytest.raises(bp.BpjaxError, match=r"metric 'accuracy' needs class logits"):
        validate.resolve_metrics("fit", ("accuracy",), labels, (8, 1))
    with pytest.raises(bp.BpjaxError, match=r"unknown metric 'f1'"):
        validate.resolve_metrics("fit", ("f1",), labels, (8, 3))


def test_check_opt_state_names_a_state_restored_without_like():
    params = {"W": jnp.ones((2, 3))}
    adam = optax.adam(1e-2)
    validate.check_opt_state("make_step", adam, params, adam.init(params))
    state = adam.init(params)
    plain = [state[0]._asdict(), state[1]]  # the arrays in a dict and a list where optax has its NamedTuples
    with pytest.raises(bp.BpjaxError, match=r"opt_state does not match optimizer\.init\(params\).*restored without "
                                            r"like="):
        validate.check_opt_state("make_step", adam, params, plain)
    with pytest.raises(bp.BpjaxError, match=r"opt_state leaf \[0\]\.mu\['W'\]: expected shape \(2, 3\)"):
        validate.check_opt_state("make_step", adam, params, adam.init({"W": jnp.ones((3, 2))}))


def test_check_factory_and_check_keys():
    validate.check_factory("fit_many", optax.sgd(0.1), None)
    validate.check_factory("fit_many", optax.sgd, jnp.array([0.1, 0.2]))
    with pytest.raises(bp.BpjaxError, match=r"hparams are given but optimizer is one fixed GradientTransformation"):
        validate.check_factory("fit_many", optax.sgd(0.1), jnp.array([0.1]))
    with pytest.raises(bp.BpjaxError, match=r"but hparams is None"):
        validate.check_factory("fit_many", optax.sgd, None)
    keys = jax.random.split(jax.random.key(0), 3)
    assert validate.check_keys("fit_many", keys) is keys and validate.check_keys("fit_many", None) is None
    assert validate.check_keys("fit_many", list(keys)).shape == (3,)
    with pytest.raises(bp.BpjaxTypeError, match=r"fit_many: keys must be N PRNG keys.*got one key"):
        validate.check_keys("fit_many", jax.random.key(0))
