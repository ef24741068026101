"""Random corruptions of one argument at a time, at every public entry point; legitimate inputs that must train.

The property: for a small model and a corruption of one argument (its shape, its dtype or its
values), every entry point either raises a ``BpjaxError``/``BpjaxTypeError``, or returns finite
results equal to the uncorrupted call (a numpy array or a nested list is the same data), or, only
inside the user's own ``jax.jit``, where no error can be raised from values, returns a NaN loss AND
NaN gradients. Never a plausible number without an error.

The models come from a small pool, built and compiled once each, so that hypothesis spends its
examples on corruptions rather than on compiling.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import bpjax as bp

L = bp.layers
XENT, MSE, BCE = bp.losses.softmax_cross_entropy, bp.losses.mse, bp.losses.binary_cross_entropy
SGD = optax.sgd(0.1)
B = 32


@functools.lru_cache(maxsize=None)
def spec(name):
    """``(model, loss, params, state, key, x, y)`` for one model of the pool (deterministic data).

    The data and the layer shapes are those of the other battery files (``x: (32, 5)``, a first
    ``Dense(4)``): eager calls run op by op, and JAX compiles each operation once per shape, so
    shared shapes are compiled once for the whole battery.
    """
    k1, k2, k3 = jax.random.split(jax.random.key(len(name)), 3)
    x = jax.random.normal(k1, (B, 5))
    labels = jnp.arange(B) % 3
    if name == "mlp-xent":
        model, loss, y = bp.serial(L.Dense(4), L.Relu(), L.Dense(3)), XENT, labels
    elif name == "tanh-mse":
        model, loss, y = bp.serial(L.Dense(4), L.Tanh(), L.Dense(3)), MSE, jax.random.normal(k2, (B, 3))
    elif name == "logit-bce":
        model, loss, y = bp.serial(L.Dense(4), L.Relu(), L.Dense(1)), BCE, (labels[:, None] % 2).astype(jnp.float32)
    elif name == "embedding-xent":
        model, loss, y = bp.serial(L.Embedding(6, 3), L.Flatten(), L.Dense(3)), XENT, labels
        x = jax.random.randint(k1, (B, 4), 0, 6)
    else:  # "dropout-xent": contextual (state and a key)
        model, loss, y = bp.serial(L.Dense(4), L.Dropout(0.25), L.Dense(3)), XENT, labels
    params = model.init(k3, x.shape[1:])[1]
    contextual = bp.is_contextual(model)
    state = bp.init_state(model, k3, x.shape[1:]) if contextual else None
    return model, loss, params, state, (k2 if contextual else None), x, y


MODELS = ("mlp-xent", "tanh-mse", "logit-bce", "embedding-xent", "dropout-xent")


def _bad_target(name, y):
    """Target values the loss refuses: a label out of range, a probability outside [0, 1], a NaN."""
    if name == "tanh-mse":
        return y.at[1, 0].set(jnp.nan)
    if name == "logit-bce":
        return y.at[1, 0].set(2.0)
    return y.at[1].set(3)


def corrupt(name, arg, kind):
    """The arguments of ``spec(name)`` with one of them corrupted."""
    model, loss, params, state, key, x, y = spec(name)
    args = dict(params=params, x=x, y=y, key=key)
    xf = x.astype(jnp.float32)  # a NaN in token ids makes them float: the float ids are the corruption
    if arg == "x":
        args["x"] = {"nan": lambda: xf.at[2, 1].set(jnp.nan), "inf": lambda: xf.at[0, 3].set(-jnp.inf),
                     "features": lambda: x[:, :-1], "extra axis": lambda: x[:, None], "rank 1": lambda: x[:, 0],
                     "int32": lambda: x.astype(jnp.int32), "float": lambda: xf, "bool": lambda: x > 0,
                     "complex": lambda: x.astype(jnp.complex64),
                     "numpy": lambda: np.asarray(x), "list": lambda: np.asarray(x).tolist(),
                     "ids out of range": lambda: x.at[0, 0].set(6)}[kind]()
    elif arg == "y":
        args["y"] = {"bad values": lambda: _bad_target(name, y), "shorter": lambda: y[:-1],
                     "extra axis": lambda: y[:, None], "float": lambda: y.astype(jnp.float32) + 0.25,
                     "bool": lambda: y > 0, "numpy": lambda: np.asarray(y), "list": lambda: np.asarray(y).tolist()
                     }[kind]()
    elif arg == "params":
        first = jax.tree.leaves(params)[0]
        leaves, treedef = jax.tree.flatten(params)
        args["params"] = {"transposed": lambda: jax.tree.unflatten(treedef, [first.T] + leaves[1:]),
                          "one layer short": lambda: params[:-1],
                          "int dtype": lambda: jax.tree.unflatten(treedef, [first.astype(jnp.int32)] + leaves[1:])
                          }[kind]()
    else:  # the PRNG key of the contextual model
        args["key"] = {"int seed": lambda: 42, "split keys": lambda: jax.random.split(jax.random.key(0), 2),
                       "float": lambda: 0.5}[kind]()
    return args


CORRUPTIONS = ([("x", k) for k in ("nan", "inf", "features", "extra axis", "rank 1", "int32", "float", "bool",
                                   "complex", "numpy", "list", "ids out of range")] +
               [("y", k) for k in ("bad values", "shorter", "extra axis", "float", "bool", "numpy", "list")] +
               [("params", k) for k in ("transposed", "one layer short", "int dtype")] +
               [("key", k) for k in ("int seed", "split keys", "float")])


def applicable(name, corruption) -> bool:
    """Whether ``corruption`` is a mistake for this model (not a legitimate change of the data itself)."""
    arg, kind = corruption
    ids = name == "embedding-xent"
    if kind == "ids out of range" or (arg, kind) == ("x", "int32"):
        return ids == (kind == "ids out of range")  # int32 x is the data itself for an Embedding
    if (arg, kind) == ("x", "float"):
        return ids
    if arg == "key":
        return name == "dropout-xent"
    return not (name == "tanh-mse" and (arg, kind) == ("y", "float"))  # float targets are mse's own


@functools.lru_cache(maxsize=None)
def entry_points(name):
    """Every public entry point that takes data, as ``fn(params, x, y, key) -> (loss, grads-or-output)``."""
    model, loss, params, state, _, x, y = spec(name)
    kw = (lambda key: dict(state=state, key=key)) if state is not None else (lambda key: {})
    contextual = state is not None

    def pair(out):  # ((value, new_state), grads) for a contextual model -> (value, grads)
        return (out[0][0], out[1]) if contextual else out

    vag, ad = bp.value_and_grad(model, loss), bp.autodiff_value_and_grad(model, loss)
    jitted = jax.jit(lambda p, x, y, key: pair(vag(p, x, y, **kw(key))))
    pe = bp.per_example_grads(model, loss)
    step = bp.train.make_step(model, loss, SGD)

    def make_step(p, x, y, key):
        out = step(p, SGD.init(p), x, y, **kw(key))
        return out[-1], out[0]

    def fit(p, x, y, key):
        r = bp.train.fit(model, loss, SGD, p, (x, y), steps=2, batch_size=8, verbose=False, key=key,
                         state=state)
        return r.history["loss"], r.params

    return {"value_and_grad": lambda p, x, y, key: pair(vag(p, x, y, **kw(key))),
            "autodiff_value_and_grad": lambda p, x, y, key: pair(ad(p, x, y, **kw(key))),
            "per_example_grads": lambda p, x, y, key: pe(p, x, y, **kw(key)),
            "predict": lambda p, x, y, key: (jnp.zeros(()), bp.predict(model, p, x, **kw(key), train=True)),
            "make_step": make_step, "fit": fit, "jit(value_and_grad)": jitted}


def _finite(tree):
    return all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.inexact))


def _equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.shape(u) == np.shape(v) and np.allclose(u, v, rtol=1e-6, atol=0)
                                      for u, v in zip(la, lb))


@functools.lru_cache(maxsize=None)
def clean(name, entry):
    _, _, params, _, key, x, y = spec(name)
    return entry_points(name)[entry](params, x, y, key)


@given(name=st.sampled_from(MODELS), corruption=st.sampled_from(CORRUPTIONS),
       entry=st.sampled_from(("value_and_grad", "autodiff_value_and_grad", "per_example_grads", "predict",
                              "make_step", "fit", "jit(value_and_grad)")))
def test_a_corrupted_argument_raises_or_changes_nothing_or_poisons_inside_jit(name, corruption, entry):
    assume(applicable(name, corruption))
    # layers take (B, ..., D) inputs: with no target to disagree, an extra axis is a valid input for predict
    assume(not (entry == "predict" and corruption == ("x", "extra axis")))
    args = corrupt(name, *corruption)
    try:
        out = entry_points(name)[entry](args["params"], args["x"], args["y"], args["key"])
    except bp.BpjaxError:
        return  # a clear error (BpjaxTypeError is a BpjaxError)
    if _finite(out) and _equal(out, clean(name, entry)):
        return  # the same data in another form (numpy, lists), or an argument the model does not read
    value, grads = out
    assert entry == "jit(value_and_grad)", f"{entry} on {name} with {corruption}: a number without an error"
    assert bool(jnp.isnan(value)), f"inside jit, {corruption} on {name} gave a finite loss {value}"
    assert all(bool(jnp.isnan(gr).any()) for gr in jax.tree.leaves(grads)), \
        f"inside jit, {corruption} on {name} gave a NaN loss but finite gradients"


def test_every_corruption_of_the_mlp_at_value_and_grad():
    """The deterministic sweep of the property on one model and the eager entry point: no example left to chance."""
    name = "mlp-xent"
    for corruption in filter(lambda c: applicable(name, c), CORRUPTIONS):
        args = corrupt(name, *corruption)
        try:
            out = entry_points(name)["value_and_grad"](args["params"], args["x"], args["y"], args["key"])
        except bp.BpjaxError:
            continue
        assert _finite(out) and _equal(out, clean(name, "value_and_grad")), corruption


# ---- legitimate inputs: each must train through fit (finite losses, the parameters move)


def _fit_moves(model, loss, x, y, *, params=None, **kw):
    params = model.init(jax.random.key(1), np.shape(x)[1:])[1] if params is None else params
    r = bp.train.fit(model, loss, SGD, params, (x, y), steps=3, batch_size=8, verbose=False, **kw)
    moved = any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(r.params), jax.tree.leaves(params)))
    return r, bool(np.isfinite(r.history["loss"]).all()) and moved


def _ids(dtype=jnp.int32):
    return jax.random.randint(jax.random.key(2), (B, 4), 0, 6).astype(dtype)


def _x():
    return jax.random.normal(jax.random.key(3), (B, 5))


def _labels():
    return jnp.arange(B) % 3


@functools.lru_cache(maxsize=None)
def _logit():
    return bp.serial(L.Dense(3), L.Relu(), L.Dense(1))


@functools.lru_cache(maxsize=None)
def _mlp(dtype=None):  # one model object per dtype: fit reuses its compiled program for data of the same dtypes
    return bp.serial(L.Dense(4, dtype=dtype), L.Relu(), L.Dense(3, dtype=dtype))


@functools.lru_cache(maxsize=None)
def _embedding():
    return bp.serial(L.Embedding(6, 3), L.Flatten(), L.Dense(3))


def _bce_int_targets():
    """Integer 0/1 targets ``(N, 1)`` for one logit train, and evaluate with the loss only (accuracy on one
    logit would always be 100%)."""
    r, ok = _fit_moves(_logit(), BCE, _x(), (_labels()[:, None] % 2), eval_data=(_x(), _labels()[:, None] % 2))
    return ok and "eval_loss" in r.history and "eval_accuracy" not in r.history


LEGITIMATE = [
    ("token ids int32", lambda: _fit_moves(_embedding(), XENT, _ids(),
                                           _labels())[1]),
    ("token ids numpy int64", lambda: _fit_moves(_embedding(), XENT,
                                                 np.asarray(_ids()).astype(np.int64), np.asarray(_labels()))[1]),
    ("bce bool targets", lambda: _fit_moves(_logit(), BCE, _x(), _labels()[:, None] % 2 == 1)[1]),
    ("bce float 0/1 targets", lambda: _fit_moves(_logit(), BCE, _x(), (_labels()[:, None] % 2).astype(float))[1]),
    ("bce soft targets", lambda: _fit_moves(_logit(), BCE, _x(), jax.nn.sigmoid(_x()[:, :1]))[1]),
    ("bce int 0/1 targets (N, 1), evaluated", _bce_int_targets),
    ("xent soft targets", lambda: _fit_moves(_mlp(), XENT, _x(), jax.nn.softmax(_x()[:, :3]))[1]),
    ("xent label smoothing", lambda: _fit_moves(_mlp(), XENT, _x(), 0.9 * jax.nn.one_hot(_labels(), 3) + 0.1 / 3)[1]),
    ("mse int targets", lambda: _fit_moves(_mlp(), MSE, _x(), jax.nn.one_hot(_labels(), 3).astype(jnp.int32))[1]),
    ("bfloat16 model and data", lambda: _fit_moves(_mlp(jnp.bfloat16), XENT, _x().astype(jnp.bfloat16),
                                                   _labels())[1]),
    ("numpy arrays", lambda: _fit_moves(_mlp(), XENT, np.asarray(_x()), np.asarray(_labels()))[1]),
    ("numpy float64", lambda: _fit_moves(_mlp(), XENT, np.asarray(_x(), np.float64), np.asarray(_labels()))[1]),
    ("nested lists", lambda: _fit_moves(_mlp(), XENT, np.asarray(_x()).tolist(), np.asarray(_labels()).tolist())[1]),
]


@pytest.mark.parametrize("fn", [pytest.param(c[1], id=c[0]) for c in LEGITIMATE])
def test_legitimate_input_trains(fn):
    assert fn()
