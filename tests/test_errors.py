"""bpjax.errors: the error types and the shared checks (arrays, finiteness, keys, shapes, dtypes, values)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpjax as bp
from bpjax import errors


def test_errors_carry_their_place_and_context_prefixes_it():
    e = errors.BpjaxTypeError("Dense(3)", "bad")
    assert isinstance(e, TypeError) and isinstance(e, ValueError) and isinstance(e, bp.BpjaxError)
    assert str(e) == "Dense(3): bad" and (e.where, e.message) == ("Dense(3)", "bad")
    with pytest.raises(bp.BpjaxTypeError, match=r"^serial\[1\] Dense\(3\): bad$"):
        with errors.context("serial[1]"):
            raise e


def test_as_array_converts_data_and_names_what_it_refuses():
    a = jnp.ones(3)
    assert errors.as_array("f", "x", a) is a
    assert errors.as_array("f", "x", np.ones((2, 2), np.float32)).shape == (2, 2)
    assert errors.as_array("f", "x", [[1, 2], [3, 4]]).dtype == jnp.int32
    pair = errors.as_array("f", "x", (np.ones((2, 3)), [np.ones(2)]))  # a multi-input x: entry by entry
    assert isinstance(pair, tuple) and isinstance(pair[0], jax.Array) and isinstance(pair[1][0], jax.Array)
    for bad, fragment in (("abc", "got str 'abc'"), ([[1.0, 2.0], [3.0]], "ragged nested list"),
                          ([["a"]], "array of numbers, got list of dtype <U1"), (None, "got NoneType"),
                          ({"x": 1}, "got dict")):
        with pytest.raises(bp.BpjaxTypeError, match="f: x must be an array") as e:
            errors.as_array("f", "x", bad)
        assert fragment in str(e.value), (fragment, str(e.value))


def test_check_finite_counts_and_finds_the_first_bad_example_and_finite_leaves_flags_each_leaf():
    x = np.zeros((4, 2), np.float32)
    x[2, 1] = x[3, 0] = np.inf
    with pytest.raises(bp.BpjaxError, match=r"f: x\['a'\] contains NaN or Inf \(2 entries, first at example 2\)"):
        errors.check_finite("f", "x", {"a": x, "b": np.arange(3)})
    errors.check_finite("f", "x", np.arange(3))  # integers are finite
    flags = errors.finite_leaves({"a": jnp.asarray(x), "b": jnp.arange(3), "c": jnp.ones(2)})
    assert flags.tolist() == [False, True, True] and errors.finite_leaves(()).shape == (0,)


@pytest.mark.parametrize("key, fragment", [
    (0, "got the int 0: pass jax.random.key(0)"), (np.int64(5), "got the int 5"), (True, "got the int True"),
    (1.5, "one PRNG key (jax.random.key(seed); of split keys, keys[i]), got float 1.5"),
    (jax.random.split(jax.random.key(0), 2), "got an array of keys of shape (2,)"),
    (jnp.ones(2), "got an array of dtype float32 and shape (2,)"),
])
def test_check_key_refuses_anything_but_one_key(key, fragment):
    with pytest.raises(bp.BpjaxTypeError) as e:
        errors.check_key("f", key)
    assert fragment in str(e.value) and str(e.value).startswith("f: key must be")


def test_check_key_takes_typed_and_legacy_keys_and_none_when_allowed():
    k = jax.random.key(0)
    assert errors.check_key("f", k) is k and errors.check_key("f", None) is None
    assert errors.check_key("f", jax.random.PRNGKey(0)).shape == (2,)
    with pytest.raises(bp.BpjaxTypeError, match="got None"):
        errors.check_key("f", None, allow_none=False)


def test_as_shape_and_init_arguments():
    assert errors.as_shape("f", 5) == (5,) and errors.as_shape("f", [2, 3]) == (2, 3)
    assert errors.as_shape("f", ((2,), [3, 4])) == ((2,), (3, 4))
    for bad in ("abc", (0,), (2.0,), (True,), None):
        with pytest.raises(bp.BpjaxTypeError, match=r"f: input_shape must be a tuple of ints >= 1"):
            errors.as_shape("f", bad)
    assert errors.init_arguments("L.init", None, 3) == (None, (3,))
    with pytest.raises(bp.BpjaxTypeError, match=r"L\.init: key must be a PRNG key \(jax\.random\.key\(seed\)\) for "
                                                r"a layer with parameters, got None"):
        errors.init_arguments("L.init", None, 3, key_needed=True)


def test_check_input_dtype_names_both_dtypes_and_the_fix():
    errors.check_input_dtype("D", jnp.ones(2), jnp.ones(2))  # the same dtype
    errors.check_input_dtype("D", jnp.ones(2, jnp.int32), jnp.ones(2))  # ids are not an input of the params' dtype
    with pytest.raises(bp.BpjaxTypeError, match=r"D: input of dtype float32 into params of dtype bfloat16: .*"
                                                r"x\.astype\(jnp\.bfloat16\)\), or keep the params in float32 and "
                                                r"compute in bfloat16 with bp\.precision\.MixedPrecision"):
        errors.check_input_dtype("D", jnp.ones(2), jnp.ones(2, jnp.bfloat16))


def test_positive_int_and_the_rank_and_dtype_checks():
    assert errors.positive_int("f", "n", np.int64(3)) == 3
    with pytest.raises(bp.BpjaxTypeError, match=r"f: n must be a positive int, got True of type bool"):
        errors.positive_int("f", "n", True)
    with pytest.raises(bp.BpjaxError, match=r"f: n must be in \[1, 4\], got 5"):
        errors.positive_int("f", "n", 5, upper=4)
    with pytest.raises(bp.BpjaxError, match=r"expected a rank-2 or 3 input \(batch axis first\), got shape \(2,\)"):
        errors.check_ndim("f", np.ones(2), (2, 3))
    with pytest.raises(bp.BpjaxTypeError, match=r"real floating-point input \(float32/float64\), got dtype int32"):
        errors.check_floating("f", jnp.ones(2, jnp.int32))


def test_check_value_raises_on_concrete_values_and_poisons_traced_ones():
    with pytest.raises(bp.BpjaxError, match=r"^f: bad 2$"):
        errors.check_value("f", np.asarray(False), "bad {n}", n=2)

    def poisoned(v):
        return errors.poison(v, errors.check_value("f", v > 0, "must be positive"))

    assert float(jax.jit(poisoned)(1.0)) == 1.0 and bool(jnp.isnan(jax.jit(poisoned)(-1.0)))
    err, _ = jax.jit(errors.checked(poisoned))(-1.0)
    with pytest.raises(bp.BpjaxError, match=r"^f: must be positive$"):
        errors.throw(err)
