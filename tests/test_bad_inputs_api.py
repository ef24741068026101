"""Bad inputs, second round: every public entry point that takes data, keys, shapes or an optimizer.

Each case is one ordinary mistake, with the message fragments it must produce: the place (function,
argument, dataset or layer), the expected and the received. Cases are grouped by entry point: PRNG
keys and input shapes, fit_many's optimizer contract, make_step, fit's eval_data and train_data,
per_example_grads, second order, the gradient functions, predict, as_custom_vjp, rules, diagnostics
and checkpoints. Inputs accepted on purpose (an int shape, a legacy key, nested lists, a jitted
step) are in ``ACCEPTED``, each with the sensible result it must give.

Nothing here trains for long: errors are raised before anything compiles, and the few compiled
programs (one checked step per model) are shared by the cases that need them.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_clear_error
from conftest import battery as F

import bpjax as bp
from bpjax import checkpoint

L = bp.layers
XENT, MSE, BCE = bp.losses.softmax_cross_entropy, bp.losses.mse, bp.losses.binary_cross_entropy
E, T = bp.BpjaxError, bp.BpjaxTypeError

SGD, ADAM = optax.sgd(0.1), optax.adam(1e-2)  # built once: fit and make_step reuse their compiled programs
KEY = jax.random.key(0)
KEYS3 = jax.random.split(KEY, 3)
MLP = "serial(Dense(4), Relu, Dense(3))"
DROP = "serial(Dense(4), Dropout(0.5), Dense(3))"


@functools.lru_cache(maxsize=None)
def G():
    """The models of this file beside the shared MLP: a dropout model, a one-logit model, targets."""
    drop = bp.serial(L.Dense(4), L.Dropout(0.5), L.Dense(3))
    one = bp.serial(L.Dense(4), L.Relu(), L.Dense(1))
    return dict(drop=drop, dp=drop.init(KEY, (5,))[1], ds=bp.init_state(drop, KEY, (5,)), one=one,
                op=one.init(KEY, (5,))[1], t01=(F("y")[:, None] % 2), soft=jax.nn.softmax(F("x")[:, :3]),
                reg=jnp.tanh(F("x")[:, :3]))


def g(name):
    return G()[name]


@functools.lru_cache(maxsize=None)
def _step(donate=False):
    return bp.train.make_step(F("mlp"), XENT, ADAM, donate=donate)


@functools.lru_cache(maxsize=None)
def _drop_step():
    return bp.train.make_step(g("drop"), XENT, SGD)


def _opt():
    return ADAM.init(F("params"))


def vag(loss=XENT, model=None, **kw):
    return bp.value_and_grad(F("mlp") if model is None else model, loss, **kw)


def fit(model=None, loss=XENT, optimizer=SGD, params=None, data=None, **kw):
    model = F("mlp") if model is None else model
    params = F("params") if params is None and model is F("mlp") else params
    return bp.train.fit(model, loss, optimizer, params, (F("x"), F("y")) if data is None else data,
                        **{"steps": 2, "batch_size": 8, "verbose": False, **kw})


def fit_many(optimizer=SGD, data=None, **kw):
    return bp.train.fit_many(F("mlp"), XENT, optimizer, kw.pop("params", None),
                             (F("x"), F("y")) if data is None else data,
                             **{"steps": 2, "batch_size": 8, "verbose": False, **kw})


def _restored_opt_state(t):
    """An Adam state saved and restored without ``like=``: plain dicts where optax has NamedTuples."""
    path = checkpoint.save(t / "opt.npz", {"opt": _opt()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return checkpoint.restore(path)["opt"]


def _donated_twice(t):
    params, opt = jax.tree.map(jnp.copy, F("params")), _opt()
    _step(True)(params, opt, F("x"), F("y"))
    _step(True)(params, opt, F("x"), F("y"))  # the first call deleted params and opt


def _deleted(t):
    params = jax.tree.map(jnp.copy, F("params"))
    params[0]["W"].delete()
    _step()(params, _opt(), F("x"), F("y"))


NAN_X, BAD_Y = F("x").at[2, 1].set(jnp.nan), F("y").at[4].set(5)
hvp, hessian = bp.second_order.hvp, bp.second_order.hessian

CASES = [
    # ---- PRNG keys and input shapes of init / init_state (each layer checks its own: errors.init_arguments)
    ("init int seed", lambda t: F("mlp").init(0, (5,)), T, [f"{MLP}.init", "PRNG key", "the int 0",
                                                            "jax.random.key(0)"]),
    ("init numpy int seed", lambda t: L.Dense(4).init(np.int64(3), (5,)), T, ["Dense(4).init", "the int 3"]),
    ("init bool seed", lambda t: L.Dense(4).init(True, (5,)), T, ["Dense(4).init", "PRNG key", "the int True"]),
    ("init None key", lambda t: L.Dense(4).init(None, (5,)), T, ["Dense(4).init", "layer with parameters",
                                                                 "got None"]),
    ("init split keys", lambda t: L.Dense(4).init(KEYS3, (5,)), T, ["Dense(4).init", "one PRNG key",
                                                                    "array of keys of shape (3,)"]),
    ("init float key", lambda t: L.Dense(4).init(0.5, (5,)), T, ["Dense(4).init", "one PRNG key", "float 0.5"]),
    ("init str key", lambda t: L.Dense(4).init("seed", (5,)), T, ["Dense(4).init", "one PRNG key", "str 'seed'"]),
    ("init float array key", lambda t: L.Dense(4).init(jnp.ones(2), (5,)), T,
     ["Dense(4).init", "dtype float32 and shape (2,)"]),
    ("init conv int seed", lambda t: L.Conv1D(3, 3).init(7, (8, 2)), T, ["Conv1D(3, 3).init", "the int 7"]),
    ("init gru int seed", lambda t: L.GRU(3).init(1, (4, 2)), T, ["GRU(3).init", "the int 1"]),
    ("init embedding int seed", lambda t: L.Embedding(10, 4).init(2, (3,)), T, ["Embedding(10, 4).init", "int 2"]),
    ("init_state int seed", lambda t: bp.init_state(g("drop"), 0, (5,)), T, [f"{DROP}.init_state", "the int 0"]),
    ("init_state str shape", lambda t: bp.init_state(g("drop"), KEY, "5"), T,
     [f"{DROP}.init_state", "tuple of ints", "'5'"]),
    ("init str shape", lambda t: L.Dense(4).init(KEY, "abc"), T, ["Dense(4).init", "tuple of ints", "'abc'"]),
    ("init float dims", lambda t: L.Dense(4).init(KEY, (5.0,)), T, ["Dense(4).init", "tuple of ints", "(5.0,)"]),
    ("init zero dim", lambda t: L.Dense(4).init(KEY, (0,)), T, ["Dense(4).init", "ints >= 1", "(0,)"]),
    ("init negative dim", lambda t: L.Dense(4).init(KEY, (8, -3)), T, ["Dense(4).init", "ints >= 1", "(8, -3)"]),
    ("init bool dim", lambda t: L.Dense(4).init(KEY, (True,)), T, ["Dense(4).init", "tuple of ints", "(True,)"]),
    ("init None shape", lambda t: L.Dense(4).init(KEY, None), T, ["Dense(4).init", "tuple of ints", "got None"]),
    ("init array shape", lambda t: L.Dense(4).init(KEY, jnp.ones(5)), T, ["Dense(4).init", "tuple of ints"]),
    ("init batch in shape", lambda t: L.Conv1D(3, 3).init(KEY, (2, 8, 2)), E, ["Conv1D(3, 3)", "(2, 8, 2)"]),
    # ---- a layer checks its own params and input: a list for the params tuple, an input of another dtype
    ("serial params list", lambda t: F("mlp").forward(list(F("params")), F("x")), T,
     [MLP, "params must be the tuple init returned", "got a list", "tuple(params)"]),
    ("bfloat16 model, float32 input", lambda t: bp.value_and_grad(bp.serial(L.Dense(4, dtype=jnp.bfloat16)), MSE)(
        (jax.tree.map(lambda a: a.astype(jnp.bfloat16), F("dp")),), F("x"), jnp.ones((32, 4))), T,
     ["serial[0] Dense(4)", "input of dtype float32 into params of dtype bfloat16", "x.astype(jnp.bfloat16)",
      "bp.precision.MixedPrecision(model, jnp.bfloat16)"]),
    ("float16 input, float32 dense", lambda t: F("dense").forward(F("dp"), F("x").astype(jnp.float16)), T,
     ["Dense(4)", "input of dtype float16 into params of dtype float32", "x.astype(jnp.float32)"]),
    ("serial of a jax function", lambda t: bp.serial(L.Dense(3), jnp.tanh), T,
     ["serial", "argument 1 is a", "bp.layers.Autodiff(apply, init)"]),
    ("check_gradients of a jax function", lambda t: bp.check_gradients(jnp.tanh, MSE, (), F("x"), F("x")), T,
     ["model", "expected a bpjax Layer", "bp.layers.Autodiff(apply, init)"]),
    ("serial init int seed", lambda t: bp.serial(L.Dense(2), L.Relu()).init(5, 3), T,
     ["serial(Dense(2), Relu).init", "the int 5"]),
    # ---- PRNG keys of the calls that take one
    ("value_and_grad int key", lambda t: vag(model=g("drop"))(g("dp"), F("x"), F("y"), state=g("ds"), key=42), T,
     ["value_and_grad", "PRNG key", "the int 42", "jax.random.key(42)"]),
    ("value_and_grad float key", lambda t: vag(model=g("drop"))(g("dp"), F("x"), F("y"), state=g("ds"), key=1.5),
     T, ["value_and_grad", "one PRNG key", "float 1.5"]),
    ("value_and_grad split keys", lambda t: vag(model=g("drop"))(g("dp"), F("x"), F("y"), state=g("ds"),
                                                                  key=KEYS3[:2]), T,
     ["value_and_grad", "one PRNG key", "keys of shape (2,)"]),
    ("autodiff int key", lambda t: bp.autodiff_value_and_grad(g("drop"), XENT)(g("dp"), F("x"), F("y"),
                                                                               state=g("ds"), key=7), T,
     ["autodiff_value_and_grad", "the int 7"]),
    ("predict int key", lambda t: bp.predict(g("drop"), g("dp"), F("x"), state=g("ds"), key=1, train=True), T,
     ["predict", "the int 1"]),
    ("apply int key", lambda t: bp.apply(g("drop"), g("dp"), F("x"), state=g("ds"), key=3), T,
     [DROP, "PRNG key", "the int 3"]),
    ("step int key", lambda t: _drop_step()(g("dp"), SGD.init(g("dp")), F("x"), F("y"), state=g("ds"), key=5), T,
     ["make_step step", "the int 5"]),
    ("fit int key", lambda t: fit(key=0, shuffle=True), T, ["fit", "PRNG key", "the int 0", "jax.random.key(0)"]),
    ("fit str key", lambda t: fit(key="a"), T, ["fit", "one PRNG key", "str 'a'"]),
    ("fit split keys", lambda t: fit(key=KEYS3), T, ["fit", "one PRNG key", "keys of shape (3,)"]),
    ("fit_many one key", lambda t: fit_many(keys=KEY), T, ["fit_many", "N PRNG keys", "jax.random.split(key, N)",
                                                          "got one key"]),
    ("fit_many legacy one key", lambda t: fit_many(keys=jax.random.PRNGKey(0)), T, ["fit_many", "got one key"]),
    ("fit_many int keys", lambda t: fit_many(keys=0), T, ["fit_many", "N PRNG keys", "the int 0"]),
    ("fit_many list of ints", lambda t: fit_many(keys=[0, 1]), T, ["fit_many", "keys[0]", "the int 0"]),
    ("fit_many float keys", lambda t: fit_many(keys=jnp.ones(3)), T, ["fit_many", "N PRNG keys", "float32"]),
    ("per_example int key", lambda t: bp.per_example_grads(g("drop"), XENT)(g("dp"), F("x"), F("y"), state=g("ds"),
                                                                            key=9), T,
     ["per_example_grads", "the int 9"]),
    ("top_eigenvalue int key", lambda t: bp.second_order.top_eigenvalue(F("mlp"), XENT, iters=2)(
        F("params"), F("x"), F("y"), 0), T, ["top_eigenvalue", "the int 0"]),
    ("top_eigenvalue no key", lambda t: bp.second_order.top_eigenvalue(F("mlp"), XENT, iters=2)(
        F("params"), F("x"), F("y"), None), T, ["top_eigenvalue", "one PRNG key", "got None"]),
    ("as_custom_vjp int key", lambda t: bp.as_custom_vjp(g("drop"))(g("dp"), F("x"), g("ds"), 4), T,
     ["as_custom_vjp", "the int 4"]),
    ("check_gradients int key", lambda t: bp.check_gradients(g("drop"), XENT, g("dp"), F("x"), F("y"),
                                                             state=g("ds"), key=3), T,
     ["check_gradients", "PRNG key", "the int 3", "jax.random.key(3)"]),
    # ---- fit_many: the optimizer contract, keys, hparams and params sharing one model axis
    ("fit_many factory without hparams", lambda t: fit_many(optimizer=lambda lr: optax.sgd(lr), keys=KEYS3), E,
     ["fit_many", "hparams is None", "called with None", "optax.sgd(None)"]),
    ("fit_many uncalled optax without hparams", lambda t: fit_many(optimizer=optax.adam, keys=KEYS3), E,
     ["fit_many", "function hp -> GradientTransformation (adam)", "hparams is None"]),
    ("fit_many fixed optimizer with hparams", lambda t: fit_many(keys=KEYS3, hparams=jnp.array([.1, .2, .3])), E,
     ["fit_many", "hparams are given", "would ignore them", "lambda lr: optax.adam(lr)"]),
    ("fit_many optimizer int", lambda t: fit_many(optimizer=3, keys=KEYS3), T,
     ["fit_many", "GradientTransformation or a function", "got int"]),
    ("fit_many factory returns a number", lambda t: fit_many(optimizer=lambda lr: lr, keys=KEYS3[:2],
                                                             hparams=jnp.array([.1, .2])), T,
     ["fit_many", "optimizer(hparams[0])", "GradientTransformation", "got ArrayImpl"]),
    ("fit_many hparams and keys differ", lambda t: fit_many(optimizer=optax.sgd, keys=KEYS3,
                                                            hparams=jnp.array([.1, .2])), E,
     ["fit_many", "one leading model axis N", "'keys': 3", "'hparams': 2"]),
    ("fit_many scalar hparams", lambda t: fit_many(optimizer=optax.sgd, keys=KEYS3, hparams=0.1), E,
     ["fit_many", "hparams: expected one value per model (a leading model axis N", "got a scalar"]),
    ("fit_many unstacked params", lambda t: fit_many(params=F("params"), keys=KEYS3), E,
     ["fit_many", "one leading model axis N", "'keys': 3", "params[0]['W']\": 5"]),
    ("fit_many nothing to count", lambda t: fit_many(), E, ["fit_many", "give keys=(N keys)", "stacked params"]),
    ("fit_many hparams without keys", lambda t: fit_many(optimizer=optax.sgd, hparams=jnp.array([.1, .2])), E,
     ["fit_many", "params=None needs keys"]),
    ("fit_many nan data", lambda t: fit_many(keys=KEYS3, data=(NAN_X, F("y"))), E,
     ["fit_many", "train_data x contains NaN or Inf", "first at example 2"]),
    ("fit_many eval labels", lambda t: fit_many(keys=KEYS3, eval_data=(F("x"), BAD_Y)), E,
     ["fit_many eval_data", "softmax_cross_entropy", "[0, 3)", "max 5"]),
    ("fit_many model", lambda t: bp.train.fit_many("mlp", XENT, SGD, None, (F("x"), F("y")), steps=2,
                                                   batch_size=8, keys=KEYS3, verbose=False), T,
     ["fit_many", "bpjax Layer", "got str"]),
    # ---- make_step: opt_state against optimizer.init(params), donated and deleted buffers, values, shapes
    ("step opt_state restored without like", lambda t: _step()(F("params"), _restored_opt_state(t), F("x"),
                                                               F("y")), E,
     ["make_step", "opt_state does not match optimizer.init(params)", "restored without like=",
      "namedtuple[ScaleByAdamState]", "{'count': *"]),
    ("step opt_state of another optimizer", lambda t: _step()(F("params"), SGD.init(F("params")), F("x"),
                                                              F("y")), E,
     ["make_step", "opt_state does not match", "namedtuple[ScaleByAdamState]", "another optimizer"]),
    ("step opt_state of other params", lambda t: _step()(F("params"), ADAM.init(F("other")), F("x"), F("y")), E,
     ["make_step", "opt_state leaf [0].mu[2]['W']", "expected shape (4, 3)", "got (4, 7)"]),
    ("step opt_state None", lambda t: _step()(F("params"), None, F("x"), F("y")), E,
     ["make_step", "opt_state does not match", "got PyTreeDef(None)"]),
    ("step donated params reused", _donated_twice, E,
     ["make_step(donate=True) step", "params[0]['W']", "donated to an earlier call", "continue from the arrays"]),
    ("step deleted params", _deleted, E, ["make_step step", "params[0]['W']", "were deleted", "live arrays"]),
    ("step nan input", lambda t: _step()(F("params"), _opt(), NAN_X, F("y")), E,
     [MLP, "input x contains NaN or Inf"]),
    ("step label out of range", lambda t: _step()(F("params"), _opt(), F("x"), BAD_Y), E,
     ["softmax_cross_entropy", "[0, 3)", "max 5"]),
    ("step negative label", lambda t: _step()(F("params"), _opt(), F("x"), F("y").at[0].set(-1)), E,
     ["softmax_cross_entropy", "[0, 3)", "min -1"]),
    ("step float labels", lambda t: _step()(F("params"), _opt(), F("x"), F("y").astype(jnp.float32)), E,
     ["softmax_cross_entropy", "float targets must be probabilities of shape (32, 3)", "got (32,)"]),
    ("step negative soft targets", lambda t: _step()(F("params"), _opt(), F("x"), -g("soft")), E,
     ["softmax_cross_entropy", "finite and >= 0", "min -"]),
    ("step bce target -1", lambda t: bp.train.make_step(g("one"), BCE, SGD)(
        g("op"), SGD.init(g("op")), F("x"), g("t01") * 2.0 - 1), E, ["binary_cross_entropy", "[0, 1]", "min -1.0"]),
    ("step mse nan target", lambda t: bp.train.make_step(F("mlp"), MSE, SGD)(
        F("params"), SGD.init(F("params")), F("x"), g("reg").at[0, 0].set(jnp.nan)), E,
     ["mse", "finite targets", "1 NaN or Inf"]),
    ("step int x", lambda t: _step()(F("params"), _opt(), F("x").astype(jnp.int32), F("y")), T,
     ["serial[0] Dense(4)", "floating-point input", "int32"]),
    ("step x features", lambda t: _step()(F("params"), _opt(), F("x")[:, :4], F("y")), E,
     ["serial[0] Dense(4)", "5 features", "(32, 4)"]),
    ("step other params", lambda t: _step()(F("other"), ADAM.init(F("other")), F("x"), F("y")), E,
     ["serial[2] Dense(3)", "expected W (D_in, 3)", "got W (4, 7)"]),
    ("step without state", lambda t: _drop_step()(g("dp"), SGD.init(g("dp")), F("x"), F("y")), E,
     [DROP, "keeps state or draws random numbers", "pass state="]),
    ("step unchecked jit=False nan", lambda t: bp.train.make_step(F("mlp"), XENT, SGD, jit=False)(
        F("params"), SGD.init(F("params")), NAN_X, F("y")), E, ["input x contains NaN or Inf", "example 2"]),
    ("step str x", lambda t: _step()(F("params"), _opt(), "x", F("y")), T, ["make_step step", "x must be an array",
                                                                          "got str"]),
    ("make_step model", lambda t: bp.train.make_step(None, XENT, SGD), T, ["model", "bpjax Layer", "NoneType"]),
    ("make_step loss", lambda t: bp.train.make_step(F("mlp"), "xent", SGD), T,
     ["loss", "a bpjax Loss or a function", "got str"]),
    # ---- fit: every error raised while checking eval_data says eval_data
    ("fit eval labels", lambda t: fit(eval_data=(F("x"), F("y").at[0].set(7))), E,
     ["fit eval_data", "softmax_cross_entropy", "[0, 3)", "max 7"]),
    ("fit eval negative labels", lambda t: fit(eval_data=(F("x"), F("y").at[0].set(-2))), E,
     ["fit eval_data", "[0, 3)", "min -2"]),
    ("fit eval features", lambda t: fit(eval_data=(F("x")[:, :4], F("y"))), E,
     ["fit eval_data", "serial[0] Dense(4)", "5 features", "got shape (32, 4)"]),
    ("fit eval nan x", lambda t: fit(eval_data=(NAN_X, F("y"))), E,
     ["fit", "eval_data x contains NaN or Inf", "first at example 2"]),
    ("fit eval nan y", lambda t: fit(loss=MSE, data=(F("x"), g("reg")), eval_data=(F("x"), g("reg").at[3, 0].set(
        jnp.inf))), E, ["fit", "eval_data y contains NaN or Inf", "first at example 3"]),
    ("fit eval label shape", lambda t: fit(eval_data=(F("x"), F("y")[:, None])), E,
     ["fit eval_data", "integer labels must have shape (32,)", "got (32, 1)"]),
    ("fit eval float labels", lambda t: fit(eval_data=(F("x"), F("y").astype(jnp.float32))), E,
     ["fit eval_data", "float targets must be probabilities", "got (32,)"]),
    ("fit eval int x", lambda t: fit(eval_data=(F("x").astype(jnp.int32), F("y"))), T,
     ["fit eval_data", "serial[0] Dense(4)", "int32"]),
    ("fit eval rank-1 x", lambda t: fit(eval_data=(F("x")[:, 0], F("y"))), E,
     ["fit eval_data", "Dense(4)", "rank-2"]),
    ("fit eval not a pair", lambda t: fit(eval_data=F("x")), T, ["fit", "eval_data must be a pair (x, y)",
                                                                 "got ArrayImpl"]),
    ("fit eval triple", lambda t: fit(eval_data=(F("x"), F("y"), F("y"))), T, ["fit", "eval_data must be a pair"]),
    ("fit eval lengths", lambda t: fit(eval_data=(F("x"), F("y")[:30])), E,
     ["fit", "eval_data: x and y must share", "x (32, 5) and y (30,)"]),
    ("fit eval empty", lambda t: fit(eval_data=(F("x")[:0], F("y")[:0])), E,
     ["fit", "eval_data", "non-empty leading (example) axis", "x (0, 5)"]),
    ("fit eval bce targets", lambda t: fit(model=g("one"), loss=BCE, params=g("op"), data=(F("x"), g("t01")),
                                           eval_data=(F("x"), g("t01") * 2 - 1)), E,
     ["fit eval_data", "binary_cross_entropy", "[0, 1]", "min -1"]),
    ("fit eval negative soft", lambda t: fit(data=(F("x"), g("soft")), eval_data=(F("x"), -g("soft"))), E,
     ["fit eval_data", "finite and >= 0"]),
    ("fit eval str labels", lambda t: fit(eval_data=(F("x"), ["a"] * 32)), T, ["fit", "eval_data y must be an array"]),
    ("fit eval_every alone", lambda t: fit(eval_every=2), E, ["fit", "eval_every is set but eval_data is None"]),
    ("fit eval_every zero", lambda t: fit(eval_data=(F("x"), F("y")), eval_every=0), E,
     ["fit", "eval_every must be a positive int", "got 0"]),
    # ---- fit: train_data, targets the loss refuses, options
    ("fit bce targets +-1", lambda t: fit(model=g("one"), loss=BCE, params=g("op"), data=(F("x"), g("t01") * 2. - 1)),
     E, ["fit train_data", "binary_cross_entropy", "[0, 1]", "min -1.0", "max 1.0"]),
    ("fit bce targets 2", lambda t: fit(model=g("one"), loss=BCE, params=g("op"), data=(F("x"), g("t01") * 2)), E,
     ["fit train_data", "binary_cross_entropy", "max 2"]),
    ("fit bce target shape", lambda t: fit(model=g("one"), loss=BCE, params=g("op"), data=(F("x"), g("t01")[:, 0])),
     E, ["fit train_data", "binary_cross_entropy", "logits (8, 1)", "target (8,)", "reshape the target to (8, 1)"]),
    ("fit negative soft targets", lambda t: fit(data=(F("x"), -g("soft"))), E,
     ["fit train_data", "softmax_cross_entropy", "finite and >= 0"]),
    ("fit nan soft targets", lambda t: fit(data=(F("x"), g("soft").at[1, 1].set(jnp.nan))), E,
     ["fit", "train_data y contains NaN or Inf", "first at example 1"]),
    ("fit mse inf target", lambda t: fit(loss=MSE, data=(F("x"), g("reg").at[5, 2].set(-jnp.inf))), E,
     ["fit", "train_data y contains NaN or Inf", "first at example 5"]),
    ("fit mse target shape", lambda t: fit(loss=MSE, data=(F("x"), g("reg")[:, 0])), E,
     ["fit train_data", "mse", "prediction (8, 3)", "target (8,)"]),
    ("fit bool x", lambda t: fit(data=(F("x") > 0, F("y"))), T,
     ["fit", "train_data x must be real floating point", "got dtype bool"]),
    ("fit complex x", lambda t: fit(data=(F("x").astype(jnp.complex64), F("y"))), T,
     ["fit", "train_data x must be real floating point", "complex64"]),
    ("fit str data", lambda t: fit(data="data.npz"), T, ["fit", "train_data must be a pair (x, y)", "got str"]),
    ("fit str x", lambda t: fit(data=(["a", "b"], F("y")[:2])), T, ["fit", "train_data x must be an array"]),
    ("fit ragged x", lambda t: fit(data=([[1.0, 2.0], [3.0]], F("y")[:2])), T,
     ["fit", "train_data x must be an array"]),
    ("fit params None", lambda t: fit(params=None, model=bp.serial(L.Dense(4), L.Relu(), L.Dense(3))), E,
     ["fit train_data", "params do not match the model", "got a NoneType"]),
    ("fit opt_state restored without like", lambda t: fit(optimizer=ADAM, opt_state=_restored_opt_state(t)), E,
     ["fit", "opt_state does not match optimizer.init(params)", "restored without like="]),
    ("fit opt_state of another optimizer", lambda t: fit(opt_state=_opt()), E,
     ["fit", "opt_state does not match", "another optimizer"]),
    ("fit accuracy on one logit", lambda t: fit(model=g("one"), loss=BCE, params=g("op"), data=(F("x"), g("t01")),
                                               metrics=("loss", "accuracy"), eval_data=(F("x"), g("t01"))), E,
     ["fit", "metric 'accuracy' needs class logits (B, C) with C >= 2", "model output (8, 1)"]),
    ("fit unknown metric", lambda t: fit(metrics=("loss", "f1"), eval_data=(F("x"), F("y"))), E,
     ["fit", "unknown metric 'f1'", "'loss', 'accuracy'"]),
    ("fit shuffle without key", lambda t: fit(shuffle=True), E, ["fit", "shuffle=True needs key="]),
    ("fit contextual without state", lambda t: fit(model=g("drop"), params=g("dp"), key=KEY), E,
     ["fit", DROP, "pass state="]),
    ("fit backward", lambda t: fit(backward="jax"), E, ["fit", "backward must be one of", "'jax'"]),
    ("fit float steps", lambda t: fit(steps=2.5), T, ["fit", "steps must be a positive int", "2.5"]),
    ("fit batch larger than data", lambda t: fit(batch_size=64), E, ["fit", "batch_size", "[1, 32]", "got 64"]),
    ("fit unroll", lambda t: fit(unroll=0), E, ["fit", "unroll must be a positive int", "got 0"]),
    ("fit chunk_size", lambda t: fit(chunk_size=-1), E, ["fit", "chunk_size must be a positive int", "got -1"]),
    ("fit checkpoint_every alone", lambda t: fit(checkpoint_every=2), E,
     ["fit", "checkpoint_every is set but checkpoint_path is None"]),
    ("fit uncalled optimizer", lambda t: fit(optimizer=optax.adam), T,
     ["fit", "optax GradientTransformation", "did you forget to call it"]),
    ("fit model", lambda t: bp.train.fit([L.Dense(3)], XENT, SGD, None, (F("x"), F("y")), steps=1, batch_size=8), T,
     ["fit", "bpjax Layer", "got list"]),
    ("fit loss", lambda t: fit(loss=None), T, ["loss", "a bpjax Loss or a function", "NoneType"]),
    # ---- per_example_grads: concrete data checked at once (inside its vmap they would only poison)
    ("per_example nan x", lambda t: bp.per_example_grads(F("mlp"), XENT)(F("params"), NAN_X, F("y")), E,
     ["per_example_grads", "input x contains NaN or Inf", "first at example 2"]),
    ("per_example labels", lambda t: bp.per_example_grads(F("mlp"), XENT)(F("params"), F("x"), BAD_Y), E,
     ["per_example_grads", "softmax_cross_entropy", "[0, 3)", "max 5"]),
    ("per_example float labels", lambda t: bp.per_example_grads(F("mlp"), XENT)(F("params"), F("x"),
                                                                                F("y").astype(float)), E,
     ["per_example_grads", "float targets must be probabilities of shape (32, 3)"]),
    ("per_example bce targets", lambda t: bp.per_example_grads(g("one"), BCE)(g("op"), F("x"), g("t01") + 1), E,
     ["per_example_grads", "binary_cross_entropy", "[0, 1]", "max 2"]),
    ("per_example mse nan target", lambda t: bp.per_example_grads(F("mlp"), MSE)(F("params"), F("x"),
                                                                                 g("reg").at[0, 1].set(jnp.nan)), E,
     ["per_example_grads", "mse", "finite targets"]),
    ("per_example batch sizes", lambda t: bp.per_example_grads(F("mlp"), XENT)(F("params"), F("x"), F("y")[:5]), E,
     ["per_example_grads", "same batch size", "x (32, 5) and y (5,)"]),
    ("per_example without state", lambda t: bp.per_example_grads(g("drop"), XENT)(g("dp"), F("x"), F("y")), E,
     [DROP, "pass state="]),
    ("per_example int x", lambda t: bp.per_example_grads(F("mlp"), XENT)(F("params"), F("x").astype(jnp.int32),
                                                                         F("y")), T, ["Dense(4)", "int32"]),
    ("per_example model", lambda t: bp.per_example_grads(3, XENT), T, ["model", "bpjax Layer", "got int"]),
    # ---- second order
    ("hvp nan x", lambda t: hvp(F("mlp"), XENT)(F("params"), NAN_X, F("y"), F("params")), E,
     ["hvp", "input x contains NaN or Inf", "first at example 2"]),
    ("hvp labels", lambda t: hvp(F("mlp"), XENT)(F("params"), F("x"), BAD_Y, F("params")), E,
     ["softmax_cross_entropy", "[0, 3)", "max 5"]),
    ("hvp vector structure", lambda t: hvp(F("mlp"), XENT)(F("params"), F("x"), F("y"), F("params")[0]), E,
     ["hvp", "vector v do not match the model"]),
    ("hvp vector shapes", lambda t: hvp(F("mlp"), XENT)(F("params"), F("x"), F("y"), F("other")), E,
     ["hvp", "vector v leaf [2]['W']", "expected shape (4, 3)", "got (4, 7)"]),
    ("hessian nan x", lambda t: hessian(F("mlp"), XENT)(F("params"), NAN_X, F("y")), E,
     ["hessian", "input x contains NaN or Inf"]),
    ("hessian labels", lambda t: hessian(F("mlp"), XENT)(F("params"), F("x"), BAD_Y), E,
     ["softmax_cross_entropy", "max 5"]),
    ("top_eigenvalue nan x", lambda t: bp.second_order.top_eigenvalue(F("mlp"), XENT, iters=2)(
        F("params"), NAN_X, F("y"), KEY), E, ["top_eigenvalue", "input x contains NaN or Inf"]),
    ("top_eigenvalue iters zero", lambda t: bp.second_order.top_eigenvalue(F("mlp"), XENT, iters=0), E,
     ["top_eigenvalue", "iters must be a positive int", "got 0"]),
    ("top_eigenvalue float iters", lambda t: bp.second_order.top_eigenvalue(F("mlp"), XENT, iters=2.0), T,
     ["top_eigenvalue", "iters must be a positive int", "2.0"]),
    ("hvp model", lambda t: hvp("mlp", XENT), T, ["model", "bpjax Layer", "got str"]),
    # ---- value_and_grad / autodiff_value_and_grad: the one gradient path checks concrete data at once
    ("value_and_grad nan x", lambda t: vag()(F("params"), NAN_X, F("y")), E,
     ["value_and_grad", "input x contains NaN or Inf", "1 entries", "first at example 2"]),
    ("value_and_grad inf x", lambda t: vag()(F("params"), F("x").at[7].set(-jnp.inf), F("y")), E,
     ["value_and_grad", "5 entries", "first at example 7"]),
    ("value_and_grad wrt_input nan x", lambda t: vag(wrt_input=True)(F("params"), NAN_X, F("y")), E,
     ["value_and_grad", "input x contains NaN or Inf"]),
    ("autodiff nan x", lambda t: bp.autodiff_value_and_grad(F("mlp"), XENT)(F("params"), NAN_X, F("y")), E,
     ["autodiff_value_and_grad", "input x contains NaN or Inf"]),
    ("value_and_grad labels", lambda t: vag()(F("params"), F("x"), BAD_Y), E,
     ["softmax_cross_entropy", "[0, 3)", "max 5"]),
    ("autodiff labels", lambda t: bp.autodiff_value_and_grad(F("mlp"), XENT)(F("params"), F("x"), BAD_Y), E,
     ["softmax_cross_entropy", "[0, 3)", "max 5"]),
    ("value_and_grad bce targets", lambda t: vag(BCE, g("one"))(g("op"), F("x"), g("t01") - 1), E,
     ["binary_cross_entropy", "[0, 1]", "min -1"]),
    ("value_and_grad mse nan target", lambda t: vag(MSE)(F("params"), F("x"), g("reg").at[2, 2].set(jnp.nan)), E,
     ["mse", "finite targets", "1 NaN or Inf"]),
    ("value_and_grad label count", lambda t: vag()(F("params"), F("x"), F("y")[:31]), E,
     ["softmax_cross_entropy", "shape (32,)", "got (31,)"]),
    ("value_and_grad loss without mean", lambda t: vag(lambda p, t_: (p - jax.nn.one_hot(t_, 3)) ** 2)(
        F("params"), F("x"), F("y")), E, ["loss <lambda>", "returned shape (32, 3)", "did you forget the mean"]),
    ("value_and_grad int loss", lambda t: vag(lambda p, t_: jnp.sum(t_))(F("params"), F("x"), F("y")), T,
     ["loss <lambda>", "returned dtype int32", "real floating-point scalar"]),
    ("value_and_grad str x", lambda t: vag()(F("params"), "abc", F("y")), T,
     ["value_and_grad", "input x must be an array", "got str"]),
    ("value_and_grad ragged x", lambda t: vag()(F("params"), [[1.0, 2.0], [3.0]], F("y")[:2]), T,
     ["value_and_grad", "input x must be an array", "ragged"]),
    ("value_and_grad backward", lambda t: vag(backward="jax"), E, ["backward", "('manual', 'autodiff')", "'jax'"]),
    ("value_and_grad complex x", lambda t: vag()(F("params"), F("x").astype(jnp.complex64), F("y")), T,
     ["Dense(4)", "real floating-point", "complex64"]),
    # ---- predict and as_custom_vjp
    ("predict inf x", lambda t: bp.predict(F("mlp"), F("params"), F("x").at[3, 0].set(jnp.inf)), E,
     ["predict", "input x contains NaN or Inf", "first at example 3"]),
    ("predict without state", lambda t: bp.predict(g("drop"), g("dp"), F("x")), E, [DROP, "pass state="]),
    ("predict model", lambda t: bp.predict(F("params"), F("params"), F("x")), T, ["model", "bpjax Layer", "tuple"]),
    ("predict str x", lambda t: bp.predict(F("mlp"), F("params"), "x"), T, ["predict", "must be an array", "str"]),
    ("as_custom_vjp nan x", lambda t: bp.as_custom_vjp(F("mlp"))(F("params"), NAN_X), E,
     ["as_custom_vjp", "input x contains NaN or Inf"]),
    ("as_custom_vjp labels in the user's loss", lambda t: jax.grad(
        lambda p: XENT(bp.as_custom_vjp(F("mlp"))(p, F("x")), BAD_Y))(F("params")), E,
     ["softmax_cross_entropy", "[0, 3)", "max 5"]),
    ("as_custom_vjp model", lambda t: bp.as_custom_vjp(L.Dense), T, ["model", "bpjax Layer", "function"]),
    # ---- rules and diagnostics: the same gradient path, the same checks
    ("gradient_angles nan x", lambda t: bp.rules.gradient_angles(F("mlp"), XENT)(F("params"), NAN_X, F("y")), E,
     [MLP, "input x contains NaN or Inf"]),
    ("gradient_angles labels", lambda t: bp.rules.gradient_angles(F("mlp"), XENT)(F("params"), F("x"), BAD_Y), E,
     ["softmax_cross_entropy", "max 5"]),
    ("diagnostics nan x", lambda t: bp.diagnostics.diagnostics(F("mlp"), XENT)(F("params"), NAN_X, F("y")), E,
     [MLP, "input x contains NaN or Inf"]),
    ("dense backward rule", lambda t: L.Dense(3, backward_rule="fa"), E,
     ["Dense", "unknown backward_rule 'fa'", "'feedback_alignment'"]),
    ("DFA empty", lambda t: bp.rules.DFA(), E, ["serial", "at least one layer", "got none"]),
    ("DFA int seed", lambda t: bp.rules.DFA(L.Dense(4), L.Relu(), L.Dense(3)).init_state(0, (5,)), T,
     ["DFA(Dense(4), Relu, Dense(3)).init_state", "the int 0"]),
    # ---- checkpoints: every path argument and every mismatch with like=
    ("restore None", lambda t: checkpoint.restore(None), T, ["checkpoint.restore", "path", "file path", "got None"]),
    ("save None", lambda t: checkpoint.save(None, {"a": jnp.ones(2)}), T, ["checkpoint.save", "file path",
                                                                          "got None"]),
    ("save missing directory", lambda t: checkpoint.save(t / "no" / "ck.npz", {"a": jnp.ones(2)}), E,
     ["checkpoint.save", "existing directory", "does not exist"]),
    ("read_metadata missing", lambda t: checkpoint.read_metadata(t / "none.npz"), E,
     ["checkpoint.read_metadata", "no such file", "expected a checkpoint"]),
    ("restore a directory", lambda t: checkpoint.restore(t), E, ["checkpoint.restore", "expected a checkpoint file",
                                                                 "got a directory"]),
    ("save a function", lambda t: checkpoint.save(t / "ck.npz", {"f": L.Dense}), T,
     ["checkpoint.save", "leaf ['f']", "expected an array", "got function"]),
    ("save bad metadata", lambda t: checkpoint.save(t / "ck.npz", {"a": jnp.ones(2)}, metadata={"x": object()}), T,
     ["checkpoint.save", "metadata['x']", "expected a JSON value", "got object"]),
    ("save bad model", lambda t: checkpoint.save(t / "ck.npz", {"a": jnp.ones(2)}, model=3), T,
     ["checkpoint.save", "model", "bp.Layer or a description str", "got int"]),
    ("restore like shape", lambda t: checkpoint.restore(checkpoint.save(t / "ck.npz", {"a": jnp.ones(2)}),
                                                        like={"a": jnp.ones(3)}), E,
     ["checkpoint.restore", "leaf ['a']", "expected float32[3]", "found float32[2]"]),
    ("restore like dtype", lambda t: checkpoint.restore(checkpoint.save(t / "ck.npz", {"a": jnp.ones(2)}),
                                                        like={"a": jnp.ones(2, jnp.int32)}), E,
     ["checkpoint.restore", "expected int32[2]", "found float32[2]"]),
    ("restore like keys", lambda t: checkpoint.restore(checkpoint.save(t / "ck.npz", {"a": jnp.ones(2)}),
                                                       like={"b": jnp.ones(2)}), E,
     ["checkpoint.restore", "does not match `like`", "in `like` only: ['b']", "in the file only: ['a']"]),
    ("fit explicit mesh", lambda t: fit(mesh=jax.make_mesh((1,), ("data",))), E,
     ["fit", "mesh: expected Auto axes", "bp.train.make_mesh(shape, names)"]),
    ("fit resume from another run", lambda t: (fit(checkpoint_path=str(t / "run")),
                                               fit(checkpoint_path=str(t / "run"), optimizer=optax.adam(1e-3),
                                                   batch_size=4)), E,
     ["fit", "was written by another run", "optimizer: its state has another structure",
      "batch_size: 8 in the checkpoint, 4 now", "accept_changes=('optimizer', 'batch_size')"]),
]


@pytest.mark.parametrize("fn, exc, fragments", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_gives_clear_error(tmp_path, fn, exc, fragments):
    assert_clear_error(fn, tmp_path, exc, fragments)


@functools.lru_cache(maxsize=None)
def _sweep():
    """``fit_many`` with an uncalled optax constructor as the factory: learning rates 0 and 0.1."""
    return fit_many(optimizer=optax.sgd, keys=KEYS3[:2], hparams=jnp.array([0.0, 0.1]))


def _same(a, b):
    return jax.tree.all(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), a, b))


def _accepted_jit_step():
    params, opt, value = jax.jit(_step())(F("params"), _opt(), F("x"), F("y"))
    return _same((params, value), _step()(F("params"), _opt(), F("x"), F("y"))[::2])


def _poisoned_jit_step():
    """Inside a user's jit a bad label cannot raise: the loss and every parameter become NaN, never a
    plausible step computed from invalid data."""
    params, _, value = jax.jit(_step())(F("params"), _opt(), F("x"), BAD_Y)
    return bool(jnp.isnan(value)) and all(bool(jnp.isnan(p).any()) for p in jax.tree.leaves(params))


def _poisoned_jit_per_example():
    losses, grads = jax.jit(bp.per_example_grads(F("mlp"), XENT))(F("params"), F("x"), BAD_Y)
    good, good_grads = jax.jit(bp.per_example_grads(F("mlp"), XENT))(F("params"), F("x"), F("y"))
    others = np.arange(32) != 4
    return (bool(jnp.isnan(losses[4])) and all(bool(jnp.isnan(gr[4]).any()) for gr in jax.tree.leaves(grads))
            and np.allclose(losses[others], good[others], rtol=1e-6)
            and all(np.allclose(a[others], b[others], rtol=1e-5, atol=1e-7)
                    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(good_grads))))


ACCEPTED = [
    # an int input shape is a one-axis shape; a list shape and numpy ints are shapes too
    ("init int shape", lambda: _same(F("mlp").init(KEY, 5), F("mlp").init(KEY, (5,)))),
    ("init list shape", lambda: _same(F("mlp").init(KEY, [5]), F("mlp").init(KEY, (5,)))),
    ("init numpy int shape", lambda: _same(F("mlp").init(KEY, np.int64(5)), F("mlp").init(KEY, (5,)))),
    ("init legacy key", lambda: F("mlp").init(jax.random.PRNGKey(0), (5,))[0] == (3,)),
    ("init_state int shape", lambda: _same(bp.init_state(g("drop"), KEY, 5), bp.init_state(g("drop"), KEY, (5,)))),
    ("layer without params takes no key", lambda: L.Relu().init(None, (5,))[0] == (5,)),
    ("renamed layer keeps its checks", lambda: F("mlp")._replace(name="m").init(KEY, 5)[0] == (3,)),
    ("rebuilt layer equals itself", lambda: (lambda r: bp.Layer(*r) == r and r._replace() == r)(L.Relu())),
    # nested lists and numpy arrays are data
    ("value_and_grad nested lists", lambda: _same(vag()(F("params"), np.asarray(F("x")).tolist(),
                                                       np.asarray(F("y")).tolist()),
                                                  vag()(F("params"), F("x"), F("y")))),
    ("value_and_grad numpy", lambda: _same(vag()(F("params"), np.asarray(F("x")), np.asarray(F("y"))),
                                           vag()(F("params"), F("x"), F("y")))),
    ("step nested lists", lambda: _same(_step()(F("params"), _opt(), np.asarray(F("x")).tolist(),
                                                np.asarray(F("y")).tolist()),
                                        _step()(F("params"), _opt(), F("x"), F("y")))),
    ("value_and_grad legacy dropout key", lambda: bool(jnp.isfinite(vag(model=g("drop"))(
        g("dp"), F("x"), F("y"), state=g("ds"), key=jax.random.PRNGKey(1))[0][0]))),
    # make_step inside the user's own jit: same result when valid, NaN everywhere when not
    ("jit around make_step", _accepted_jit_step),
    ("jit around make_step poisons", _poisoned_jit_step),
    ("jit around per_example poisons the bad example only", _poisoned_jit_per_example),
    ("donated step continued from its outputs", lambda: bool(jnp.isfinite(
        _step(True)(*_step(True)(jax.tree.map(jnp.copy, F("params")), _opt(), F("x"), F("y"))[:2], F("x"),
                    F("y"))[2]))),
    # fit_many: uncalled optax constructors are factories; a list of keys is N keys
    ("fit_many optax.sgd as factory", lambda: _sweep().history["loss"].shape == (2, 2)),
    ("fit_many list of keys", lambda: _same(fit_many(optimizer=optax.sgd, keys=list(KEYS3[:2]),
                                                     hparams=jnp.array([0.0, 0.1])).params, _sweep().params)),
]


@pytest.mark.parametrize("fn", [pytest.param(c[1], id=c[0]) for c in ACCEPTED])
def test_accepted_input_gives_the_sensible_result(fn):
    assert fn()


def test_fit_many_sgd_zero_learning_rate_is_a_real_sweep():
    """The sweep really uses each model's hparams: lr 0 leaves the params, lr 0.1 moves them."""
    res = _sweep()
    start = bp.train.init_many(F("mlp"), jax.vmap(lambda k: jax.random.split(k)[0])(KEYS3[:2]), (5,))
    moved = [float(jnp.max(jnp.abs(a - b).reshape(2, -1), axis=1)[i]) for a, b in
             zip(jax.tree.leaves(res.params), jax.tree.leaves(start)) for i in range(2)]
    assert max(moved[0::2]) == 0.0 and min(moved[1::2]) > 0.0


def test_battery_size():
    """At least 150 cases and accepted inputs here (with test_bad_inputs.py's and test_bad_inputs_property.py's
    legitimate inputs, over 200), one test each, with unique names."""
    names = [c[0] for c in CASES + ACCEPTED]
    assert len(names) == len(set(names))
    assert len(CASES) + len(ACCEPTED) >= 150
