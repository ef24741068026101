"""The training step (bpjax/train/step.py) with optax's whole API: extra arguments (value, grad, value_fn) for
reduce_on_plateau and L-BFGS's line search, and optax.MultiSteps, each equal to optax's own documented loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest

import bpjax as bp
from bpjax.layers import Dense

XENT = bp.losses.softmax_cross_entropy
MODEL = bp.serial(Dense(3))  # logistic regression: a smooth problem for L-BFGS
# Two f32 programs of the same maths (the hand-written gradient vs jax.grad, a scan vs a Python loop) differ by
# ~1e-7 relative per operation; L-BFGS's line search amplifies that a little over 8 steps: 1e-4 relative.
RTOL, ATOL = 1e-4, 1e-6


def _data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 3))).argmax(-1).astype(np.int32)
    return x, y


def _optax_loop(opt, params, x, y, steps, B=8):
    """optax's documented loop with jax.value_and_grad, batches in order (fit's order)."""
    @jax.jit  # one compiled step (run eagerly, L-BFGS's line search compiles every operation on its own)
    def step(params, state, xb, yb):
        value_fn = lambda p: XENT(bp.predict(MODEL, p, xb, train=True), yb)  # noqa: E731
        value, grad = jax.value_and_grad(value_fn)(params)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    n = len(x) // B
    for s in range(steps):
        params, state = step(params, state, x[(s % n) * B:(s % n + 1) * B], y[(s % n) * B:(s % n + 1) * B])
    return params, state


@pytest.mark.parametrize("name", ["lbfgs", "reduce_on_plateau", "multi_steps"])
def test_fit_passes_optax_extra_arguments_as_optax_does(name):
    x, y = _data()
    _, p0 = MODEL.init(jax.random.key(0), (4,))
    opt = {"lbfgs": optax.lbfgs(),
           "reduce_on_plateau": optax.chain(optax.sgd(0.5), optax.contrib.reduce_on_plateau(
               patience=1, factor=0.5, cooldown=0, accumulation_size=1)),
           "multi_steps": optax.MultiSteps(optax.adam(1e-1), every_k_schedule=2)}[name]
    res = bp.train.fit(MODEL, XENT, opt, p0, (x, y), steps=8, batch_size=8, verbose=False)
    transformation = opt.gradient_transformation() if name == "multi_steps" else opt
    want, want_state = _optax_loop(transformation, p0, x, y, 8)
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL)
    assert res.history["loss"][-1] < res.history["loss"][0]
    if name == "reduce_on_plateau":  # the plateau was seen: the scale came down from 1
        assert float(res.opt_state[1].scale) == float(want_state[1].scale) < 1.0


# make_step and fit build their step with one function (train.step.step_function): fit[lbfgs] above covers the
# extra arguments by default; make_step's L-BFGS (its line search another compiled program) is the slow set's
@pytest.mark.parametrize("name", ["multi_steps", pytest.param("lbfgs", marks=pytest.mark.slow)])
def test_make_step_takes_multi_steps_and_lbfgs(name):
    x, y = _data()
    _, p0 = MODEL.init(jax.random.key(0), (4,))
    opt = {"multi_steps": optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2), "lbfgs": optax.lbfgs()}[name]
    step = bp.train.make_step(MODEL, XENT, opt)
    transformation = opt.gradient_transformation() if isinstance(opt, optax.MultiSteps) else opt
    p, s = p0, transformation.init(p0)
    for i in range(3):
        p, s, value = step(p, s, x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8])
    want, _ = _optax_loop(transformation, p0, x, y, 3)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL)


def test_value_fn_differentiates_through_the_hand_written_backward():
    """optax's line search calls jax.grad on value_fn: with backward="manual" that gradient is the hand-written
    one (a custom VJP), which a planted bug in a layer's backward shows."""
    from bpjax.train.step import value_function

    x, y = _data()
    _, p0 = MODEL.init(jax.random.key(0), (4,))
    dense = Dense(3)
    doubled = bp.serial(bp.Layer(dense.init, dense.forward, lambda p, r, dy: jax.tree.map(
        lambda g: 2 * g, dense.backward(p, r, dy)), "DoubledDense"))
    for model, factor in ((MODEL, 1.0), (doubled, 2.0)):
        g = jax.grad(lambda p: value_function(model, XENT, "manual")(p, x, y, (), None))(p0)
        ref = jax.grad(lambda p: XENT(bp.predict(MODEL, p, x, train=True), y))(p0)
        np.testing.assert_allclose(np.asarray(g[0]["W"]), factor * np.asarray(ref[0]["W"]), rtol=1e-5, atol=1e-7)


def test_a_non_optimizer_names_the_fix():
    _, p0 = MODEL.init(jax.random.key(0), (4,))
    with pytest.raises(bp.BpjaxTypeError, match=r"fit: optimizer: expected an optax GradientTransformation .* "
                                                r"\(did you forget to call it, e\.g\. optax\.adam\(1e-3\)\?\), got "
                                                r"function"):
        bp.train.fit(MODEL, XENT, optax.adam, p0, _data(), steps=1, batch_size=8, verbose=False)


def test_fit_many_takes_hparams_as_a_list_and_gives_every_history_row_a_model_axis():
    x, y = _data()
    many = bp.train.fit_many(MODEL, XENT, lambda lr: optax.sgd(lr), None, (x, y), keys=jax.random.split(
        jax.random.key(0), 2), hparams=[0.1, 0.2], steps=4, batch_size=8, eval_data=(x, y), eval_every=2,
        verbose=False)
    assert many.history["step"].shape == many.history["loss"].shape == (2, 4)
    assert many.history["eval_step"].shape == many.history["eval_loss"].shape == (2, 2)
    np.testing.assert_array_equal(many.history["eval_step"][1], [2, 4])
    with pytest.raises(bp.BpjaxError, match=r"fit_many: hparams\['lr'\]: expected one value per model \(a leading "
                                            r"model axis N"):
        bp.train.fit_many(MODEL, XENT, lambda h: optax.sgd(h["lr"]), None, (x, y), keys=jax.random.split(
            jax.random.key(0), 2), hparams={"lr": 0.1}, steps=4, batch_size=8, verbose=False)


def test_eval_data_of_another_feature_size_is_reported_with_its_own_shape():
    x, y = _data()
    _, p0 = MODEL.init(jax.random.key(0), (4,))
    with pytest.raises(bp.BpjaxError, match=r"fit eval_data: serial\[0\] Dense\(3\): expected input with 4 features "
                                            r"on the last axis .* got shape \(5, 5\)"):
        bp.train.fit(MODEL, XENT, optax.sgd(0.1), p0, (x, y), steps=1, batch_size=3, verbose=False,
                     eval_data=(jnp.ones((5, 5)), y[:5]))
