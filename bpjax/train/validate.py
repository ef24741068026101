"""Eager validation of a training run's inputs, on concrete values, before anything is compiled.

Every error names the function (``fit``/``fit_many``/``make_step``), the argument or the dataset at
fault (``train_data`` or ``eval_data``), with the expected and the received. The data are checked
once, whole, before the run: inside the compiled loop they are then known to be valid, so the loop
itself carries no value checks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bpjax import errors
from bpjax.core import forward_of
from bpjax.losses import accuracy


def check_data(where: str, data, what: str):
    """``data = (x, y)``: arrays sharing a non-empty leading axis; ``x`` real floating point or integer
    (token ids, for a model that starts with an ``Embedding``); floating ``x`` and ``y`` finite.

    Returns ``(x, y)`` as JAX arrays.
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise errors.BpjaxTypeError(where, f"{what} must be a pair (x, y) of arrays, got {type(data).__name__}")
    x, y = (errors.as_array(where, f"{what} {name}", a) for name, a in zip("xy", data))
    if not isinstance(x, jax.Array):
        raise errors.BpjaxTypeError(where, f"{what} x must be an array, got a {type(x).__name__} of arrays")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise errors.BpjaxTypeError(where, f"{what} x must be real floating point (or integer ids for a model "
                                           f"that starts with an Embedding), got dtype {x.dtype}")
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise errors.BpjaxError(where, f"{what}: x and y must share a non-empty leading (example) axis, got "
                                       f"x {tuple(x.shape)} and y {tuple(y.shape)}")
    errors.check_finite(where, f"{what} x", x)
    errors.check_finite(where, f"{what} y", y)
    return x, y


def trace_forward(model, params, state, x, *, key=None, train=True):
    """The model's output shape on ``x`` (``jax.eval_shape``: traced, not run): shape and dtype errors surface before
    anything compiles."""
    return jax.eval_shape(lambda p, s, xb: forward_of(model, p, xb, state=s, key=key, train=train)[0], params, state, x)


def _class_labels(y, pred_shape) -> bool:
    """True for integer class ids ``(N,)`` against class logits ``(B, C)``, ``C >= 2``: what accuracy measures."""
    return jnp.issubdtype(y.dtype, jnp.integer) and y.ndim == 1 and len(pred_shape) == 2 and pred_shape[-1] >= 2


def resolve_metrics(where: str, metrics, y, pred_shape=None) -> dict:
    """``name -> fn(pred, y)`` (``None`` for the loss); default loss and, for class labels, accuracy.

    ``accuracy`` (argmax of the logits against the label) means something only for class logits
    ``(B, C)``, ``C >= 2``, against integer labels ``(N,)`` or soft targets ``(N, C)``: it is the default
    for integer labels there, and asked for on one logit (binary cross-entropy, where the argmax is
    always 0) it is refused rather than reported as 100%.
    """
    shape = None if pred_shape is None else tuple(pred_shape)
    if metrics is None:
        labels = _class_labels(y, shape) if shape is not None else jnp.issubdtype(y.dtype, jnp.integer)
        metrics = ("loss", "accuracy") if labels else ("loss",)
    if isinstance(metrics, dict):
        return dict(metrics)
    if isinstance(metrics, str):
        metrics = (metrics,)
    known = {"accuracy": accuracy}
    out: dict = {}
    for m in metrics:
        if m == "loss":
            out["loss"] = None  # filled in with the training loss
        elif m in known:
            if shape is not None and not (len(shape) == 2 and shape[-1] >= 2 and y.ndim in (1, 2)):
                raise errors.BpjaxError(where, f"metric 'accuracy' needs class logits (B, C) with C >= 2 and "
                                               f"labels (N,) or (N, C), got a model output {shape} and targets "
                                               f"{tuple(y.shape)}; pass metrics={{name: fn(pred, y)}}")
            out[m] = known[m]
        else:
            raise errors.BpjaxError(where, f"unknown metric {m!r}: expected 'loss', 'accuracy' or a dict "
                                           f"name -> fn(pred, y)")
    return out


def check_opt_state(where: str, optimizer, params, opt_state) -> None:
    """``opt_state`` must have the structure and leaf shapes of ``optimizer.init(params)`` (traced, not run).

    The common mistake gets its own sentence: a state restored from a checkpoint without ``like=``
    comes back as plain dicts and lists, not optax's NamedTuples (optax would fail with
    ``'dict' object has no attribute 'mu'``).
    """
    expected = jax.eval_shape(optimizer.init, params)
    got_s, want_s = jax.tree.structure(opt_state), jax.tree.structure(expected)
    if got_s != want_s:  # type: ignore[operator]
        shapes = lambda t: [tuple(np.shape(a)) for a in jax.tree.leaves(t)]  # noqa: E731
        plain = (shapes(opt_state) == shapes(expected) and
                 any(isinstance(a, (dict, list)) for a in jax.tree.leaves(opt_state, is_leaf=lambda t: isinstance(
                     t, (dict, list)))))
        hint = (" (the same arrays in plain dicts/lists: an optimizer state restored without like=; restore it "
                "with checkpoint.restore(path, like=...) holding optimizer.init(params))" if plain else
                " (from another optimizer or other params? build it with optimizer.init(params))")
        raise errors.BpjaxError(where, f"opt_state does not match optimizer.init(params): expected structure "
                                       f"{want_s}, got {got_s}{hint}")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(opt_state)):
        if tuple(np.shape(a)) != tuple(np.shape(b)):
            raise errors.BpjaxError(where, f"opt_state leaf {jax.tree_util.keystr(path)}: expected shape "
                                           f"{tuple(np.shape(a))} (from optimizer.init(params)), got "
                                           f"{tuple(np.shape(b))}")


def check_factory(where: str, optimizer, hparams) -> None:
    """``fit_many``'s optimizer contract: ``(factory hp -> GradientTransformation, its hparams)``.

    - a ``GradientTransformation`` with ``hparams=None``: shared by every model;
    - a factory with ``hparams``: called with each model's slice;
    - a factory without ``hparams`` is refused (``optax.sgd(None)`` would apply no learning rate and
      climb the loss), and so are ``hparams`` beside a fixed optimizer (they would be ignored).
    """
    fixed = isinstance(optimizer, optax.GradientTransformation)
    if not fixed and not callable(optimizer):
        raise errors.BpjaxTypeError(where, f"optimizer must be an optax GradientTransformation or a function "
                                           f"hp -> GradientTransformation, got {type(optimizer).__name__}")
    if fixed and hparams is not None:
        raise errors.BpjaxError(where, "hparams are given but optimizer is one fixed GradientTransformation, "
                                       "which would ignore them: pass a factory, e.g. "
                                       "optimizer=lambda lr: optax.adam(lr), or hparams=None")
    if not fixed and hparams is None:
        raise errors.BpjaxError(where, f"optimizer is a function hp -> GradientTransformation "
                                       f"({getattr(optimizer, '__name__', type(optimizer).__name__)}) but hparams "
                                       f"is None: it would be called with None (optax.sgd(None) applies no "
                                       f"learning rate); pass hparams=(leading axis N) or a GradientTransformation")
    if not fixed:  # the factory on model 0's hparams (concrete, nothing compiled) must give an optimizer
        leaves = jax.tree.leaves(hparams)
        if leaves and all(np.ndim(a) >= 1 and np.shape(a)[0] >= 1 for a in leaves):
            built = optimizer(jax.tree.map(lambda a: a[0], hparams))
            if not isinstance(built, (optax.GradientTransformation, optax.MultiSteps)):
                raise errors.BpjaxTypeError(where, f"optimizer(hparams[0]) must return an optax "
                                                   f"GradientTransformation, got {type(built).__name__}")


def check_keys(where: str, keys):
    """``fit_many``'s ``keys``: ``(N,)`` PRNG keys (``jax.random.split(key, N)``, or legacy ``(N, 2)`` uint32),
    or ``None``; one key, an int seed or a list of ints is refused with the fix."""
    if keys is None:
        return None
    if isinstance(keys, (list, tuple)):
        for i, k in enumerate(keys):
            errors.check_key(where, k, what=f"keys[{i}]")
        return jnp.stack([jnp.asarray(k) for k in keys]) if keys else keys
    dtype, shape = getattr(keys, "dtype", None), tuple(getattr(keys, "shape", ()))
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    if (typed and len(shape) == 1) or (dtype == jnp.uint32 and len(shape) == 2 and shape[1] == 2):
        return keys
    if typed and shape == () or (dtype == jnp.uint32 and shape == (2,)):
        got = "one key"
    elif isinstance(keys, (bool, int, np.integer)):
        got = f"the int {keys!r}"
    else:
        got = f"{type(keys).__name__}" + (f" of dtype {dtype} and shape {shape}" if dtype is not None else "")
    raise errors.BpjaxTypeError(where, f"keys must be N PRNG keys, one per model: jax.random.split(key, N), "
                                       f"got {got}")
