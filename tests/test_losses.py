"""Losses: hand-written dL/dpred vs jax.grad (f32 and f64) and finite differences; values vs formulas."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal, random_params
from hypothesis import given, settings
from hypothesis import strategies as st

import bpjax as bp
from bpjax import losses

B, C = 7, 5


def _targets(name, dtype, seed=1):
    rng = np.random.default_rng(seed)
    if name == "int":
        return jnp.asarray(rng.integers(0, C, B), jnp.int32)
    if name == "onehot":
        return jnp.asarray(np.eye(C)[rng.integers(0, C, B)], dtype)
    if name == "soft":
        z = rng.standard_normal((B, C))
        return jnp.asarray(np.exp(z) / np.exp(z).sum(1, keepdims=True), dtype)
    if name == "unnormalised":  # rows summing to 0.5..1.5
        return jnp.asarray(rng.uniform(size=(B, C)) / C * 2, dtype)
    if name == "binary":
        return jnp.asarray(rng.integers(0, 2, (B, C)), dtype)
    if name == "probabilities":
        return jnp.asarray(rng.uniform(size=(B, C)), dtype)
    return jnp.asarray(rng.standard_normal((B, C)), dtype)


CASES = [("mse", "real"), ("softmax_cross_entropy", "int"), ("softmax_cross_entropy", "onehot"),
         ("softmax_cross_entropy", "soft"), ("softmax_cross_entropy", "unnormalised"),
         ("binary_cross_entropy", "binary"), ("binary_cross_entropy", "probabilities")]


@functools.lru_cache(maxsize=None)
def _jitted_pair(loss):
    """The hand-written ``loss.value_and_grad`` and ``jax.value_and_grad(loss.value)``, each one jitted function
    (not run op by op), shared by the cases of the loss: compiled once per target dtype and shape."""
    return jax.jit(loss.value_and_grad), jax.jit(jax.value_and_grad(loss.value))


def _compare(loss, pred, target):
    """``(value, reference value, max relative error of dpred, dpred)``: the hand-written value and dpred
    against ``jax.value_and_grad`` of the value."""
    manual, reference = _jitted_pair(loss)
    value, dpred = manual(pred, target)
    ref_value, ref = reference(pred, target)
    dpred, ref = np.asarray(dpred), np.asarray(ref)
    rel = float(np.max(np.abs(dpred - ref)) / np.max(np.abs(ref)))
    return float(value), float(ref_value), rel, dpred


@pytest.mark.parametrize("name,target", CASES)
def test_loss_gradient_f32(name, target):
    loss = getattr(losses, name)
    pred = 3 * normal(0, (B, C))
    v, rv, rel, _ = _compare(loss, pred, _targets(target, jnp.float32))
    assert v == pytest.approx(rv, rel=1e-6)
    assert rel < 1e-5  # float32: a handful of roundoffs of 6e-8 in exp/log/sum


@pytest.mark.parametrize("name,target", CASES)
def test_loss_gradient_f64_and_finite_differences(name, target):
    loss = getattr(losses, name)
    with jax.enable_x64(True):
        pred = 3 * np.random.default_rng(0).standard_normal((B, C))
        t = _targets(target, jnp.float64)
        v, rv, rel, g = _compare(loss, jnp.asarray(pred), t)
        assert rel < 1e-12 and v == pytest.approx(rv, rel=1e-14)
        # central differences along 3 random directions, eps 1e-5: truncation ~1e-10, roundoff ~1e-11
        value = _jitted_pair(loss)[1]  # (loss(pred, t), its jax.grad): the reference's program, compiled above
        for i in range(3):
            v_dir = np.random.default_rng(10 + i).standard_normal(pred.shape)
            eps = 1e-5
            up, down = value(jnp.asarray(pred + eps * v_dir), t)[0], value(jnp.asarray(pred - eps * v_dir), t)[0]
            fd = (float(up) - float(down)) / (2 * eps)
            assert abs(fd - np.vdot(g, v_dir)) <= 1e-7 * float(np.linalg.norm(g) * np.linalg.norm(v_dir))


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
    z = normal(0, (B, C))
    y = jnp.arange(B) % C
    a = losses.softmax_cross_entropy.value_and_grad(z, y)
    b = losses.softmax_cross_entropy.value_and_grad(z, jax.nn.one_hot(y, C))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_array_equal(a[1], b[1])  # op by op too, the same floats (see the test below)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_integer_labels_give_the_one_hot_gradient_bit_for_bit(dtype):
    # Integer labels take dz = p off the label and -(1 - p) at it, with no one-hot matrix; one-hot float targets
    # take (p (S - y) - y (1 - p)) / B, which is those same floats for S = 1 (p * 1, 0 * q, p * 0 are exact). The
    # value sums the B label terms in another order than the B*C products: equal to a few roundoffs.
    with jax.enable_x64(dtype == jnp.float64):
        rng = np.random.default_rng(3)
        # scale 3 to 30 per row: confident rows too, where p rounds to 1 at the top and 1 - p = rest / (1 + rest)
        z = jnp.asarray(np.linspace(3, 30, 32)[:, None] * rng.standard_normal((32, 64)), dtype)
        y = jnp.asarray(np.where(np.arange(32) % 2, rng.integers(0, 64, 32), np.argmax(z, 1)), jnp.int32)
        (v, dz), (v1, dz1) = _xent_both_targets(z, y)  # half the labels at the row's maximum
        np.testing.assert_array_equal(dz, dz1)
        assert dz.dtype == dz1.dtype == dtype
        np.testing.assert_allclose(v, v1, rtol=8 * float(jnp.finfo(dtype).eps))


@jax.jit
def _xent_both_targets(z, y):
    return (losses.softmax_cross_entropy.value_and_grad(z, y),
            losses.softmax_cross_entropy.value_and_grad(z, jax.nn.one_hot(y, z.shape[1], dtype=z.dtype)))


def test_fused_cross_entropy_backward_is_softmax_minus_y():
    z = normal(0, (B, C))
    y = np.arange(B) % C
    _, dz = losses.softmax_cross_entropy.value_and_grad(z, jnp.asarray(y))
    e = np.exp(np.asarray(z, np.float64))
    np.testing.assert_allclose(dz, (e / e.sum(1, keepdims=True) - np.eye(C)[y]) / B, rtol=1e-6, atol=1e-8)


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


def _cross_entropy_any_shape(batch, classes):
    z = normal(batch, (batch, classes))
    y = jnp.asarray(np.random.default_rng(classes).integers(0, classes, batch), jnp.int32)
    (value, dz), (ref_value, ref) = _xent_both(z, y)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(dz, ref, rtol=1e-5, atol=1e-7)


# one compile per shape (~0.5 s of CPU each): 3 shapes by default, 25 in the slow twin
XENT_SHAPES = given(batch=st.integers(1, 17), classes=st.integers(2, 12))
test_cross_entropy_any_shape = settings(max_examples=3)(XENT_SHAPES(_cross_entropy_any_shape))
test_cross_entropy_any_shape_many = pytest.mark.slow(settings(max_examples=25)(XENT_SHAPES(_cross_entropy_any_shape)))


def test_plain_function_becomes_a_loss():
    def l1(pred, target):
        return jnp.mean(jnp.abs(pred - target))

    loss = losses.as_loss(l1)
    model = bp.serial(bp.layers.Dense(3))
    p = random_params(model, (4,))
    x, t = normal(1, (6, 4)), normal(2, (6, 3))
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


# ----------------------------------------------------------------------------------------------
# a failed value check inside a user's own jit: the value AND every gradient are NaN

_MODEL = bp.serial(bp.layers.Dense(4), bp.layers.Tanh(), bp.layers.Dense(C))
_X = normal(3, (B, 6))
_OK_LABELS = jnp.arange(B) % C


def _set(a, index, value):
    """A copy of ``a`` with ``a[index] = value``, made in numpy (an eager ``.at[].set`` compiles a scatter)."""
    a = np.array(a)
    a[index] = value
    return jnp.asarray(a)


def _bad(kind):
    """(loss, invalid target, a valid target of the same kind) for each failed value check."""
    probs = jnp.full((B, C), 1.0 / C)
    half = jnp.full((B, C), 0.5)
    return {
        "label = C": (losses.softmax_cross_entropy, _set(_OK_LABELS, 2, C), _OK_LABELS),
        "label -1": (losses.softmax_cross_entropy, _set(_OK_LABELS, 0, -1), _OK_LABELS),
        "negative soft target": (losses.softmax_cross_entropy, _set(probs, (1, 1), -0.2), probs),
        "NaN soft target": (losses.softmax_cross_entropy, _set(probs, (1, 1), np.nan), probs),
        "bce target -1": (losses.binary_cross_entropy, _set(half, (0, 0), -1.0), half),
        "bce target NaN": (losses.binary_cross_entropy, _set(half, (3, 2), np.nan), half),
        "bce int target 2": (losses.binary_cross_entropy, _set(jnp.ones((B, C), jnp.int32), (0, 0), 2),
                             jnp.ones((B, C), jnp.int32)),
        "mse NaN target": (losses.mse, _set(half, (4, 0), np.nan), half),
        "mse Inf target": (losses.mse, _set(half, (4, 0), np.inf), half),
    }[kind]


BAD_KINDS = ["label = C", "label -1", "negative soft target", "NaN soft target", "bce target -1",
             "bce target NaN", "bce int target 2", "mse NaN target", "mse Inf target"]


@functools.lru_cache(maxsize=None)
def _jitted(loss, backward):
    """One jitted gradient function per loss and backward, shared by the cases (it retraces per target dtype)."""
    return jax.jit((bp.value_and_grad if backward == "manual" else bp.autodiff_value_and_grad)(_MODEL, loss))


@pytest.mark.parametrize("backward", ["manual", "autodiff"])
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_failed_check_inside_user_jit_gives_nan_value_and_nan_gradients(kind, backward):
    loss, bad, good = _bad(kind)
    params = random_params(_MODEL, (6,))
    fn = _jitted(loss, backward)
    value, grads = fn(params, _X, bad)
    assert bool(np.isnan(value))
    assert all(bool(np.all(np.isnan(g))) for g in jax.tree.leaves(grads))  # every entry of every leaf
    value, grads = fn(params, _X, good)  # the same compiled function on valid targets: finite, not poisoned
    assert bool(np.isfinite(value)) and all(bool(np.all(np.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("backward", ["manual", "autodiff"])
def test_out_of_range_embedding_id_inside_user_jit_gives_nan_gradients(backward):
    model = bp.serial(bp.layers.Embedding(10, 4), bp.layers.Flatten(), bp.layers.Dense(C))
    params = random_params(model, (2,))
    ids = jnp.array([[1, 2], [3, 10], [4, 5], [6, 7], [8, 9], [0, 1], [2, 3]])  # 10 is out of [0, 10)
    make = bp.value_and_grad if backward == "manual" else bp.autodiff_value_and_grad
    value, grads = jax.jit(make(model, losses.softmax_cross_entropy))(params, ids, _OK_LABELS)
    assert bool(np.isnan(value))
    assert bool(np.all(np.isnan(grads[2]["W"]))) and bool(np.all(np.isnan(grads[2]["b"])))
    # the rows of E that the batch looks up get NaN (the other rows receive no gradient at all, as always)
    assert bool(np.all(np.isnan(np.asarray(grads[0]["E"])[np.arange(10)])))


def test_a_poisoned_optimizer_step_inside_user_jit_leaves_no_plausible_params():
    import optax

    opt = optax.adam(1e-2)
    params = random_params(_MODEL, (6,))
    vg = bp.value_and_grad(_MODEL, losses.binary_cross_entropy)

    @jax.jit
    def step(params, opt_state, x, y):
        value, grads = vg(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    new, _, value = step(params, opt.init(params), _X, -jnp.ones((B, C)))
    assert bool(np.isnan(value)) and all(bool(np.all(np.isnan(p))) for p in jax.tree.leaves(new))


# ----------------------------------------------------------------------------------------------
# Loss.check_targets: the targets of a whole dataset, no forward pass


def _raises(fn, cls, where, *parts):
    """``fn()`` raises ``cls`` at ``where`` with every string of ``parts`` in the message."""
    with pytest.raises(cls) as e:
        fn()
    assert e.value.where == where, str(e.value)
    for part in parts:
        assert part in e.value.message, (part, str(e.value))


N = 40  # a dataset larger than the batch whose prediction shape is passed


@pytest.mark.parametrize("target", [np.arange(N) % C, (np.arange(N) % C).tolist(), jnp.arange(N) % C,
                                    np.full((N, C), 1.0 / C), np.full((N, C), 0.3), np.zeros((N, C))],
                         ids=["numpy int64", "list", "jax int32", "soft", "rows summing to 1.5", "zero rows"])
def test_cross_entropy_check_targets_accepts(target):
    # rows of soft targets need not sum to 1: a row is a distribution times its weight (documented)
    assert losses.softmax_cross_entropy.check_targets(target, (B, C)) is None


@pytest.mark.parametrize("target,cls,parts", [
    (np.arange(N) % (C + 1), bp.BpjaxError, ["labels must lie in [0, 5)", "got min 0 and max 5"]),
    (np.arange(N) % C - 1, bp.BpjaxError, ["labels must lie in [0, 5)", "got min -1 and max 3"]),
    ((np.arange(N) % C)[:, None], bp.BpjaxError, [f"integer labels must have shape ({N},)", f"got ({N}, 1)",
                                                  "squeeze"]),
    (np.full((N, C), 0.2) - np.eye(N, C), bp.BpjaxError, ["finite and >= 0", "got min -0.8, max 0.2", "0 NaN entries"]),
    (np.where(np.eye(N, C) > 0, np.nan, 0.2), bp.BpjaxError,
     ["finite and >= 0", "got min 0.2, max 0.2", f"{C} NaN entries"]),
    (np.zeros(N), bp.BpjaxError, [f"probabilities of shape ({N}, {C})", "float labels?"]),
    (np.zeros((N, C + 1)), bp.BpjaxError, [f"probabilities of shape ({N}, {C})", f"got ({N}, {C + 1})"]),
    (np.zeros(N, bool), bp.BpjaxTypeError, ["integer class ids", "got dtype bool"]),
], ids=["label = C", "label -1", "labels (N, 1)", "negative soft", "NaN soft", "float labels", "soft width",
        "bool"])
def test_cross_entropy_check_targets_refuses(target, cls, parts):
    _raises(lambda: losses.softmax_cross_entropy.check_targets(target, (B, C)), cls, "softmax_cross_entropy", *parts)


def test_cross_entropy_check_targets_needs_rank_2_logits():
    _raises(lambda: losses.softmax_cross_entropy.check_targets(np.zeros(N, int), (B,)), bp.BpjaxError,
            "softmax_cross_entropy", "rank-2 logits (B, C)", f"got shape ({N},)")


@pytest.mark.parametrize("target", [np.ones((N, 1), np.int64), np.zeros((N, 1), np.int32), np.ones((N, 1), bool),
                                    np.full((N, 1), 0.3), [[0], [1]] * (N // 2)],
                         ids=["int ones", "int zeros", "bool", "probabilities", "list"])
def test_bce_check_targets_accepts_float_and_integer_0_1(target):
    assert losses.binary_cross_entropy.check_targets(target, (B, 1)) is None


def test_bce_integer_targets_are_treated_as_floats():
    z = normal(0, (B, 1))
    t = (jnp.arange(B) % 2)[:, None]
    a = losses.binary_cross_entropy.value_and_grad(z, t)
    b = losses.binary_cross_entropy.value_and_grad(z, t.astype(jnp.float32))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("target,cls,parts", [
    (-np.ones((N, 1)), bp.BpjaxError, ["targets must lie in [0, 1]", "got min -1.0, max -1.0"]),
    (np.full((N, 1), 2), bp.BpjaxError, ["targets must lie in [0, 1]", "got min 2.0, max 2.0"]),
    (np.where(np.arange(N)[:, None] == 3, np.nan, 1.0), bp.BpjaxError, ["targets must lie in [0, 1]",
                                                                         "min 1.0, max 1.0 and 1 NaN"]),
    (np.ones(N), bp.BpjaxError, [f"logits ({N}, 1)", f"target ({N},)",
                                 f"reshape the target to ({N}, 1)"]),
    (np.array([["a"]] * N), bp.BpjaxTypeError, ["target must be an array of numbers", "dtype <U1"]),
], ids=["target -1", "int target 2", "NaN target", "target (N,)", "strings"])
def test_bce_check_targets_refuses(target, cls, parts):
    _raises(lambda: losses.binary_cross_entropy.check_targets(target, (B, 1)), cls, "binary_cross_entropy", *parts)


@pytest.mark.parametrize("target", [np.zeros((N, 2)), np.arange(2 * N).reshape(N, 2), [[1.5, 2.5]] * N],
                         ids=["float", "int", "list"])
def test_mse_check_targets_accepts(target):
    assert losses.mse.check_targets(target, (B, 2)) is None


@pytest.mark.parametrize("target,parts", [
    (np.zeros(N), [f"prediction ({N}, 1)", f"target ({N},)", f"reshape the target to ({N}, 1)", "broadcast"]),
    (np.zeros((N, 1, 1)), [f"prediction ({N}, 1)", f"target ({N}, 1, 1)"]),
    (np.where(np.arange(N)[:, None] == 0, np.nan, 0.0), ["expected finite targets", "got 1 NaN or Inf"]),
    (np.where(np.arange(N)[:, None] < 2, -np.inf, 0.0), ["expected finite targets", "got 2 NaN or Inf"]),
], ids=["(N,) against (B, 1)", "extra axis", "NaN", "-Inf"])
def test_mse_check_targets_refuses(target, parts):
    _raises(lambda: losses.mse.check_targets(target, (B, 1)), bp.BpjaxError, "mse", *parts)


def test_mse_refuses_a_broadcasting_target_when_called():
    # (N,) against (N, 1) would broadcast pred - target to (N, N): refused, never silently averaged
    _raises(lambda: losses.mse(jnp.zeros((N, 1)), jnp.zeros(N)), bp.BpjaxError, "mse",
            f"prediction ({N}, 1), target ({N},)", f"reshape the target to ({N}, 1)")


def test_check_targets_needs_a_batch_axis():
    _raises(lambda: losses.mse.check_targets(np.float32(1.0), (B, 1)), bp.BpjaxError, "mse",
            "batch axis first", "target shape ()")


def test_plain_function_loss_checks_no_targets():
    loss = losses.as_loss(lambda pred, target: jnp.mean(jnp.abs(pred - target)))
    assert loss.check_targets(np.full((N, 3), np.nan), (B, 1)) is None  # the function defines no rule


# ----------------------------------------------------------------------------------------------
# plain-function losses: a non-scalar result names the loss


def my_loss(pred, target):
    return jnp.abs(pred - target).sum(1)  # forgot the mean: shape (B,)


@pytest.mark.parametrize("call", ["value", "value_and_grad", "bp.value_and_grad", "bp.autodiff_value_and_grad"])
def test_loss_that_forgot_the_mean_names_the_loss(call):
    params = random_params(_MODEL, (6,))
    t = jnp.zeros((B, C))
    fns = {"value": lambda: losses.as_loss(my_loss).value(jnp.zeros((B, C)), t),
           "value_and_grad": lambda: losses.as_loss(my_loss).value_and_grad(jnp.zeros((B, C)), t),
           "bp.value_and_grad": lambda: bp.value_and_grad(_MODEL, my_loss)(params, _X, t),
           "bp.autodiff_value_and_grad": lambda: bp.autodiff_value_and_grad(_MODEL, my_loss)(params, _X, t)}
    _raises(fns[call], bp.BpjaxError, "loss my_loss", f"returned shape ({B},), expected a scalar",
            "did you forget the mean?")


@pytest.mark.parametrize("returns,part", [(lambda p, t: jnp.sum(p > t), "returned dtype int32"),
                                          (lambda p, t: None, "returned a NoneType"),
                                          (lambda p, t: (jnp.mean(p), 0.0), "returned a tuple")],
                         ids=["int", "None", "tuple"])
def test_loss_returning_a_non_float_names_the_loss(returns, part):
    _raises(lambda: losses.as_loss(returns).value(jnp.zeros((B, C)), jnp.zeros((B, C))), bp.BpjaxTypeError,
            "loss <lambda>", part)


# ----------------------------------------------------------------------------------------------
# Python lists and numpy arrays as pred / target


def test_lists_and_numpy_arrays_are_converted():
    z = np.random.default_rng(0).normal(size=(B, C)).astype(np.float32)
    y = np.arange(B) % C
    ref = losses.softmax_cross_entropy.value_and_grad(jnp.asarray(z), jnp.asarray(y))
    for pred, target in ((z.tolist(), y.tolist()), (z, y), (z, y.astype(np.int64))):
        value, dz = losses.softmax_cross_entropy.value_and_grad(pred, target)
        np.testing.assert_array_equal(value, ref[0])
        np.testing.assert_array_equal(dz, ref[1])
    assert float(losses.mse([[1.0], [2.0]], [[1.0], [4.0]])) == 2.0


def test_float64_numpy_target_is_cast_to_the_prediction_dtype():
    with jax.enable_x64(True):
        value, dz = losses.mse.value_and_grad(jnp.zeros((B, 2), jnp.float32), np.ones((B, 2)))
    assert value.dtype == jnp.float32 and dz.dtype == jnp.float32


@pytest.mark.parametrize("pred,target,cls,where,part", [
    ([[1.0, 2.0], [3.0]], [0, 1], bp.BpjaxTypeError, "softmax_cross_entropy", "ragged nested list"),
    (jnp.zeros((2, 3)), [[0.5, "a", 0.5]] * 2, bp.BpjaxTypeError, "softmax_cross_entropy", "dtype <U32"),
    (jnp.zeros((2, 3)), {"y": 1}, bp.BpjaxTypeError, "softmax_cross_entropy", "target must be an array"),
    (None, jnp.zeros((2, 3)), bp.BpjaxTypeError, "mse", "got NoneType"),
    ([[1, 2]], [[1, 2]], bp.BpjaxTypeError, "mse", "floating-point prediction"),
], ids=["ragged list", "strings", "dict", "None", "integer prediction"])
def test_unconvertible_inputs_get_a_clear_error(pred, target, cls, where, part):
    loss = losses.mse if where == "mse" else losses.softmax_cross_entropy
    _raises(lambda: loss(pred, target), cls, where, part)
