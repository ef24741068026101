"""The NaN guard (bpjax/train/guard.py): on by default, the first non-finite step found and its cause named
(the loss, a gradient leaf, the optimizer's update), the last finite carry returned on the error; with
the guard off, a non-finite state is never written over the last finite checkpoint."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bpjax as bp
from bpjax.core import Layer
from bpjax.layers import Dense


def _equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def Magnitude() -> Layer:
    """``y = sqrt(x^2)``, whose hand-written backward ``dx = dy * x / y`` is ``0/0`` (NaN) at ``x = 0``: a finite
    loss with a non-finite gradient."""

    def forward(params, x):
        y = jnp.sqrt(x * x)
        return y, (x, y)

    def backward(params, residuals, dy):
        x, y = residuals  # in the forward pass this was: y = sqrt(x^2), so dy/dx = x / y
        return (), dy * x / y

    return Layer(lambda key, shape: (tuple(shape), ()), forward, backward, "Magnitude")


def _data(n=64, d=5, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x, np.ones((n, 3), np.float32)


def _fit(model, x, y, opt, steps, **kw):
    _, p0 = model.init(jax.random.key(5), x.shape[1:])
    return p0, bp.train.fit(model, bp.losses.mse, opt, p0, (x, y), steps=steps, batch_size=16, verbose=False, **kw)


def test_a_loss_that_overflows_is_named_with_its_step_and_the_params_before_it():
    x, y = _data()
    x[40] = 1e30  # finite, but in batch 2 (rows 32..47): (pred - y)^2 overflows to inf
    model = bp.serial(Dense(3))
    with pytest.raises(bp.BpjaxError, match=r"^fit: non-finite loss at step 2 \(0-based\); the returned params are "
                                            r"those before that step") as info:
        _fit(model, x, y, optax.sgd(0.1), 6)  # the guard is on by default
    assert info.value.step == 2 and info.value.cause == "loss"
    _equal(info.value.params, _fit(model, x, y, optax.sgd(0.1), 2)[1].params)
    _equal(info.value.opt_state, _fit(model, x, y, optax.sgd(0.1), 2)[1].opt_state)
    unguarded = _fit(model, x, y, optax.sgd(0.1), 6, nan_guard=False)[1]
    assert not np.isfinite(np.asarray(unguarded.params[0]["W"])).all()


def test_a_non_finite_gradient_under_a_finite_loss_names_the_leaf():
    x, y = _data()
    x[20] = 0.0  # batch 1: Dense without bias gives z = 0 on that row, and Magnitude's backward 0/0
    model = bp.serial(Dense(3, bias=False), Magnitude(), Dense(3))
    with pytest.raises(bp.BpjaxError, match=r"non-finite gradient of params\[0\]\['W'\] \(the loss was finite\) at "
                                            r"step 1 ") as info:
        _fit(model, x, y, optax.sgd(0.1), 4)
    assert info.value.cause == "gradient"


def test_float16_adam_blames_the_update_and_hints_at_eps():
    x, y = _data()
    x[:, 0] = 0.0  # W's first row gets a zero gradient: Adam's m = v = 0, and 0 / (sqrt(0) + float16(1e-8)) = 0/0
    x16, y16 = x.astype(np.float16), y.astype(np.float16)
    model = bp.serial(Dense(3, dtype=jnp.float16))
    with pytest.raises(bp.BpjaxError, match=r"the optimizer's update made params\[0\]\['W'\] non-finite \(the loss "
                                            r"and every gradient were finite\); in float16, Adam's default "
                                            r"eps=1e-8 is 0 .* at step 0 ") as info:
        _fit(model, x16, y16, optax.adam(1e-3), 4)
    assert info.value.cause == "params"
    ok = _fit(model, x16, y16, optax.adam(1e-3, eps=1e-4), 4)[1]  # the hint's fix trains
    assert np.isfinite(np.asarray(ok.history["loss"])).all()


def test_fit_many_names_the_model_that_went_bad():
    x, y = _data()
    model = bp.serial(Dense(3))
    _, p = model.init(jax.random.key(5), (5,))
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), p)
    with pytest.raises(bp.BpjaxError, match=r"model 1: non-finite loss at step \d") as info:
        bp.train.fit_many(model, bp.losses.mse, lambda lr: optax.sgd(lr), stacked, (x, y),
                          hparams=jnp.array([0.01, 1e20]), steps=6, batch_size=16, verbose=False)
    assert np.isfinite(np.asarray(info.value.params[0]["W"])).all()  # each model frozen before its bad step


def test_without_the_guard_a_non_finite_state_never_replaces_the_last_finite_checkpoint(tmp_path):
    x, y = _data()
    x[40] = 1e30  # step 2's loss overflows; from step 3 on the params are NaN
    model = bp.serial(Dense(3))
    path = tmp_path / "run"
    with pytest.warns(bp.train.NonFiniteStateWarning, match=r"after step 4 are not finite, so no checkpoint is "
                                                            r"written from here on; the newest finite checkpoint "
                                                            r"\(step 2\) stays"):
        _fit(model, x, y, optax.sgd(0.1), 8, nan_guard=False, checkpoint_path=str(path), checkpoint_every=2)
    assert sorted(p.name for p in path.iterdir()) == ["step_00000002.npz"]  # and the lock released
    with pytest.warns(bp.checkpoint.PlainTreeWarning):  # optax states as dicts: params are all we read
        kept = bp.checkpoint.restore(path)["params"]
    assert np.isfinite(np.asarray(kept[0]["W"])).all()
    with warnings.catch_warnings():  # resuming takes the finite checkpoint and meets the same overflow
        warnings.simplefilter("ignore", bp.train.NonFiniteStateWarning)
        with pytest.raises(bp.BpjaxError, match="non-finite loss at step 2"):
            _fit(model, x, y, optax.sgd(0.1), 8, checkpoint_path=str(path), checkpoint_every=2)
