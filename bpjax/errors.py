"""Errors and the shared checks: every check names where it failed (layer, loss, argument), the expected,
the received and the fix.

The error types (:class:`BpjaxError`, :class:`BpjaxTypeError`, re-exported as ``bp.BpjaxError`` and
``bp.BpjaxTypeError``) and the checks that more than one place needs: array coercion
(:func:`as_array`), finiteness (:func:`check_finite` on concrete data, :func:`finite_leaves` traced),
PRNG keys (:func:`check_key`), input shapes (:func:`as_shape`), optimizers (:func:`as_transformation`), ranks,
dtypes and positive ints, and
the value checks that raise on concrete values and poison traced ones (:func:`check_value`,
:func:`poison`, :func:`checked`, :func:`throw`). Each check is called once, where the fact it checks
is known: a layer checks its own params and input, a public function its own arguments.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import checkify


class BpjaxError(ValueError):
    """A bad input, with the place it was found (``where``) prepended to the message."""

    def __init__(self, where: str, message: str):
        self.where, self.message = where, message
        super().__init__(f"{where}: {message}")


class BpjaxTypeError(BpjaxError, TypeError):
    """A value of the wrong type or dtype."""


@contextlib.contextmanager
def context(prefix: str) -> Iterator[None]:
    """Prefix ``prefix`` to the location of any :class:`BpjaxError` raised inside (e.g. ``serial[2]``).

    Examples:
      >>> with bp.errors.context("serial[2]"):
      ...     bp.errors.positive_int("Dense", "features", 0)
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxError: serial[2] Dense: features must be a positive int, got 0
    """
    try:
        yield
    except BpjaxError as e:
        cls = type(e)
        new = cls(f"{prefix} {e.where}", e.message)
        raise new.with_traceback(e.__traceback__) from None


def shape_error(where: str, expected: str, x) -> BpjaxError:
    """The :class:`BpjaxError` for an array of the wrong shape, naming ``where``, the ``expected`` shape and
    ``x``'s; the caller raises it.

    Examples:
      >>> error = bp.errors.shape_error("Dense(4)", "(B, 3)", jnp.ones((2, 5)))
      >>> isinstance(error, bp.BpjaxError), str(error)
      (True, 'Dense(4): expected (B, 3), got an array of shape (2, 5)')
    """
    return BpjaxError(where, f"expected {expected}, got an array of shape {tuple(np.shape(x))}")


def check_floating(where: str, x, what: str = "input") -> None:
    """Raise a :class:`BpjaxTypeError` unless ``x`` is a real floating-point array.

    Examples:
      >>> bp.errors.check_floating("Dense(4)", jnp.ones((2, 3)))       # passes
      >>> bp.errors.check_floating("Dense(4)", jnp.ones((2, 3), jnp.int32))
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxTypeError: Dense(4): expected a real floating-point input (float32/float64), got ...
    """
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise BpjaxTypeError(where, f"expected a real floating-point {what} (float32/float64), got dtype {dtype}")


def check_input_dtype(where: str, x, param, what: str = "params") -> None:
    """Raise a :class:`BpjaxTypeError` when the floating input ``x`` has another dtype than the layer's ``param``,
    naming both dtypes and the fix (the layer's backward would otherwise return gradients of the input's dtype).

    Examples:
      >>> bp.errors.check_input_dtype("Dense(4)", jnp.ones((2, 3)), jnp.ones((3, 4)))   # passes
      >>> bp.errors.check_input_dtype("Dense(4)", jnp.ones((2, 3), jnp.bfloat16), jnp.ones((3, 4)))
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxTypeError: Dense(4): input of dtype bfloat16 into params of dtype float32: ...
    """
    xd, pd = jnp.result_type(x), jnp.result_type(param)
    if xd == pd or not (jnp.issubdtype(xd, jnp.floating) and jnp.issubdtype(pd, jnp.floating)):
        return
    mixed = ""
    if xd.itemsize != pd.itemsize:  # params in the wider dtype, the maths in the narrower one
        low, high = sorted((xd, pd), key=lambda d: d.itemsize)
        mixed = (f", or keep the params in {high} and compute in {low} with bp.precision.MixedPrecision(model, "
                 f"jnp.{low.name})")
    raise BpjaxTypeError(where, f"input of dtype {xd} into {what} of dtype {pd}: expected an input of the {what}' "
                                f"dtype; cast it (x.astype(jnp.{pd.name})){mixed}")


def check_ndim(where: str, x, ndims, what: str = "input") -> None:
    """Raise unless ``x.ndim`` is one of ``ndims`` (an int or a tuple of ints).

    Examples:
      >>> bp.errors.check_ndim("Conv2D(4, 3)", jnp.ones((2, 8, 8, 1)), 4)   # passes
      >>> bp.errors.check_ndim("Conv2D(4, 3)", jnp.ones((8, 8)), 4)
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxError: Conv2D(4, 3): expected a rank-4 input (batch axis first), got shape (8, 8)
    """
    ndims = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if np.ndim(x) not in ndims:
        consecutive = len(ndims) > 2 and ndims == tuple(range(ndims[0], ndims[-1] + 1))
        want = f"{ndims[0]} or higher (up to {ndims[-1]})" if consecutive else " or ".join(str(n) for n in ndims)
        raise BpjaxError(where, f"expected a rank-{want} {what} (batch axis first), got shape {tuple(np.shape(x))}")


def check_tree_like(where: str, tree, like, what: str = "params") -> None:
    """Raise unless ``tree`` has the structure and leaf shapes of ``like``.

    Examples:
      >>> like = {"W": jnp.ones((3, 4)), "b": jnp.ones(4)}
      >>> bp.errors.check_tree_like("Dense(4)", {"W": jnp.ones((3, 4)), "b": jnp.ones(4)}, like)   # passes
      >>> bp.errors.check_tree_like("Dense(4)", {"W": jnp.ones((4, 3)), "b": jnp.ones(4)}, like)
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxError: Dense(4): params leaf ['W']: expected shape (3, 4), got (4, 3)
    """
    s_tree, s_like = jax.tree.structure(tree), jax.tree.structure(like)
    if str(s_tree) != str(s_like):
        raise BpjaxError(where, f"{what} do not match the model: expected structure {s_like}, got {s_tree}")
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(like), jax.tree.leaves(like), jax.tree.leaves(tree)):
        if np.shape(a) != np.shape(b):
            raise BpjaxError(where, f"{what} leaf {jax.tree_util.keystr(path[0])}: expected shape "
                                    f"{np.shape(a)}, got {np.shape(b)}")


def positive_int(where: str, what: str, value, upper=None) -> int:
    """``value`` as an int when it is a positive int (at most ``upper``); else a :class:`BpjaxError`.

    ``bool`` is refused (``True`` is an int to Python, never a width or a step count to bpjax); a
    non-int is a :class:`BpjaxTypeError`.

    Examples:
      >>> bp.errors.positive_int("Dense", "features", 4)
      4
      >>> bp.errors.positive_int("Dense", "features", 0)
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxError: Dense: features must be a positive int, got 0
    """
    want = f"in [1, {upper}]" if upper is not None else "a positive int"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BpjaxTypeError(where, f"{what} must be {want}, got {value!r} of type {type(value).__name__}")
    if value < 1 or (upper is not None and value > upper):
        raise BpjaxError(where, f"{what} must be {want}, got {value!r}")
    return int(value)


def check_key(where: str, key, *, what: str = "key", allow_none: bool = True):
    """``key`` when it is one PRNG key (a typed ``jax.random.key`` or a legacy ``uint32[2]``), or ``None``.

    Works on tracers (only the dtype and shape are read). Anything else is a :class:`BpjaxTypeError`
    naming ``where`` and ``what``: an int seed (``0``, ``np.int64(42)``) gets the fix in the message
    (silently turning ``0`` into ``jax.random.key(0)`` would give every layer seeded alike the same
    weights), an array of several keys is told to pick one.

    Examples:
      >>> bp.errors.check_key("Dropout", jax.random.key(0)) is not None
      True
      >>> bp.errors.check_key("Dropout", 0)
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxTypeError: Dropout: key must be a PRNG key, got the int 0: pass jax.random.key(0) ...
    """
    if key is None and allow_none:
        return None
    if isinstance(key, (bool, int, np.integer)):
        raise BpjaxTypeError(where, f"{what} must be a PRNG key, got the int {key}: pass jax.random.key({int(key)}) "
                                    f"(an int seed is not taken as a key)")
    dtype, shape = getattr(key, "dtype", None), tuple(getattr(key, "shape", ()))
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return key
        got = f"an array of keys of shape {shape}"
    elif dtype is not None and jnp.dtype(dtype) == jnp.uint32 and shape == (2,):
        return key  # a legacy raw key, jax.random.PRNGKey(seed)
    elif key is None:
        got = "None"
    elif dtype is not None:
        got = f"an array of dtype {dtype} and shape {shape}" + (" (an int seed?)" if shape == () else "")
    else:
        got = f"{type(key).__name__} {key!r:.60}"
    raise BpjaxTypeError(where, f"{what} must be one PRNG key (jax.random.key(seed); of split keys, keys[i]), "
                                f"got {got}")


def as_shape(where: str, input_shape) -> tuple:
    """``input_shape`` as a tuple: an int ``n`` is ``(n,)``; a tuple/list of positive ints, or of such
    shapes (multi-input layers), passes; anything else is a :class:`BpjaxTypeError` naming ``where``.

    Examples:
      >>> bp.errors.as_shape("Dense.init", 3), bp.errors.as_shape("parallel.init", [(3,), (4, 2)])
      ((3,), ((3,), (4, 2)))
      >>> bp.errors.as_shape("Dense.init", (3, -1))
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxTypeError: Dense.init: input_shape must be a tuple of ints >= 1 (one example, no ...
    """
    if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)

    def ok(s) -> bool:
        if isinstance(s, (tuple, list)):
            return all(ok(d) for d in s) if any(isinstance(d, (tuple, list)) for d in s) else all(
                isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in s)
        return False

    if not ok(input_shape):
        raise BpjaxTypeError(where, f"input_shape must be a tuple of ints >= 1 (one example, no batch axis), "
                                    f"e.g. (40,) or (28, 28, 1), got {input_shape!r:.80}")
    return tuple(tuple(d) if isinstance(d, list) else d for d in input_shape)


def init_arguments(where: str, key, input_shape, *, key_needed: bool = False) -> tuple:
    """``(key, input_shape)`` of an ``init`` or ``init_state`` call, checked (:func:`check_key`, :func:`as_shape`).

    ``key_needed``: the layer draws its parameters, so ``None`` is refused too, naming the layer.

    Examples:
      >>> key, shape = bp.errors.init_arguments("Dense(4).init", jax.random.key(0), 3, key_needed=True)
      >>> shape
      (3,)
      >>> bp.errors.init_arguments("Dense(4).init", None, 3, key_needed=True)
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxTypeError: Dense(4).init: key must be a PRNG key (jax.random.key(seed)) for a ...
    """
    if key is None and key_needed:
        raise BpjaxTypeError(where, "key must be a PRNG key (jax.random.key(seed)) for a layer with parameters, "
                                    "got None")
    return check_key(where, key), as_shape(where, input_shape)


def as_transformation(where: str, optimizer) -> optax.GradientTransformation:
    """``optimizer`` as an optax ``GradientTransformation``: itself, or an ``optax.MultiSteps``'s
    ``gradient_transformation()``; anything else is a :class:`BpjaxTypeError` (``optax.adam(1e-3)``, not
    ``optax.adam``).

    Examples:
      >>> accumulate = optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2)
      >>> isinstance(bp.errors.as_transformation("fit", accumulate), optax.GradientTransformation)
      True
      >>> bp.errors.as_transformation("fit", optax.adam)
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxTypeError: fit: optimizer: ... (did you forget to call it, e.g. optax.adam(1e-3)?), got function
    """
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if isinstance(optimizer, optax.MultiSteps) or callable(getattr(optimizer, "gradient_transformation", None)):
        return optimizer.gradient_transformation()
    hint = " (did you forget to call it, e.g. optax.adam(1e-3)?)" if callable(optimizer) else ""
    raise BpjaxTypeError(where, f"optimizer: expected an optax GradientTransformation (e.g. "
                                f"optax.adam(1e-3)){hint}, got {type(optimizer).__name__}")


def as_array(where: str, what: str, a):
    """``a`` as a JAX array: a ``jax.Array`` (or a traced value) passes; numpy arrays, numbers and nested lists
    of numbers are converted; a tuple or list of arrays (the input of a multi-input model) is converted entry by
    entry. Anything else (a str, ragged lists, non-numeric values) is a :class:`BpjaxTypeError` naming ``where``
    and ``what``.

    Examples:
      >>> x = bp.errors.as_array("fit", "x", [[1.0, 2.0], [3.0, 4.0]])
      >>> type(x).__name__, x.shape, x.dtype
      ('ArrayImpl', (2, 2), dtype('float32'))
      >>> bp.errors.as_array("fit", "x", "data.csv")
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxTypeError: fit: x must be an array (jax or numpy, or nested lists of numbers), ...
    """
    if isinstance(a, jax.Array):
        return a
    if isinstance(a, (tuple, list)) and any(np.ndim(v) >= 1 for v in a if hasattr(v, "shape")):
        return type(a)(as_array(where, f"{what}[{i}]", v) for i, v in enumerate(a))
    if isinstance(a, (str, bytes)) or not isinstance(a, (np.ndarray, np.generic, list, tuple, int, float)):
        got = f"{type(a).__name__} {a!r:.40}" if isinstance(a, (str, bytes)) else type(a).__name__
        raise BpjaxTypeError(where, f"{what} must be an array (jax or numpy, or nested lists of numbers), got {got}")
    if isinstance(a, (tuple, list)) and any(isinstance(v, jax.Array) for v in jax.tree.leaves(a)):
        return jnp.asarray(a)  # scalars traced by a user's jit, which passes a list as a pytree of scalars
    try:
        arr = np.asarray(a)
    except ValueError:
        raise BpjaxTypeError(where, f"{what} must be an array; got a ragged nested {type(a).__name__} of "
                                    f"numbers") from None
    if arr.dtype.kind not in "biuf":
        raise BpjaxTypeError(where, f"{what} must be an array of numbers, got {type(a).__name__} of dtype "
                                    f"{arr.dtype}")
    return jnp.asarray(arr)


def check_finite(where: str, what: str, x) -> None:
    """Raise a :class:`BpjaxError` at once when a concrete floating leaf of ``x`` holds NaN or Inf, naming the
    count and the first example (row) that holds one.

    Traced leaves pass: inside ``jit`` a NaN input gives a NaN loss and NaN gradients by itself (and
    bpjax's checked training step reports it through :func:`finite_leaves` and ``checkify``).

    Examples:
      >>> bp.errors.check_finite("fit", "x", jnp.ones((2, 3)))      # passes
      >>> bp.errors.check_finite("fit", "x", jnp.array([[1.0], [jnp.nan]]))
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxError: fit: x contains NaN or Inf (1 entries, first at example 1); expected ...
    """
    for path, a in jax.tree_util.tree_leaves_with_path(x):
        if not is_concrete(a) or not jnp.issubdtype(jnp.result_type(a), jnp.inexact):
            continue
        if isinstance(a, jax.Array) and not a.is_fully_addressable:  # spans other processes: count on the devices
            finite = jnp.isfinite(a)
            n_bad = int(jnp.sum(~finite))
            first = int(jnp.argmax(~finite.reshape(a.shape[0], -1).all(1))) if n_bad and a.ndim else 0
        else:
            bad = ~np.isfinite(np.asarray(a))
            n_bad = int(bad.sum())
            first = int(np.argwhere(bad)[0][0]) if n_bad and bad.ndim else 0
        if n_bad:
            raise BpjaxError(where, f"{what}{jax.tree_util.keystr(path)} contains NaN or Inf ({n_bad} entries, "
                                    f"first at example {first}); expected finite values")


def finite_leaves(tree) -> jax.Array:
    """``(leaves,)`` bools, traced: whether each leaf of ``tree`` is finite (integer, bool and key leaves are).

    ``jnp.all(finite_leaves(tree))`` is the flag of a whole tree (True for an empty one).

    Examples:
      >>> bp.errors.finite_leaves({"W": jnp.ones(3), "b": jnp.array([jnp.inf])}).tolist()
      [True, False]
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.ones((0,), bool)
    return jnp.stack([jnp.all(jnp.isfinite(a)) if jnp.issubdtype(a.dtype, jnp.inexact) else jnp.asarray(True)
                      for a in leaves])


def is_concrete(x) -> bool:
    """True when ``x`` holds known values (not a tracer inside jit/grad/vmap).

    Examples:
      >>> bp.errors.is_concrete(jnp.ones(2))
      True
      >>> jax.jit(lambda x: print(bp.errors.is_concrete(x)))(jnp.ones(2))   # traced
      False
    """
    return not isinstance(x, jax.core.Tracer)


def array_module(x):
    """``numpy`` for a concrete array this process holds, ``jax.numpy`` for a traced (or non-addressable) one.

    Value checks on concrete data run in numpy: the same check in ``jax.numpy`` would compile a
    small XLA program for every new shape and dtype it meets.

    Examples:
      >>> bp.errors.array_module(jnp.ones(2)).__name__
      'numpy'
      >>> jax.jit(lambda x: print(bp.errors.array_module(x).__name__))(jnp.ones(2))
      jax.numpy
    """
    if not is_concrete(x) or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jnp
    return np


def check_value(where: str, ok, message: str, **fmt) -> "jax.Array | np.ndarray":
    """Check a condition on values; returns a bool array to poison the result with when traced.

    - Concrete values: raise a :class:`BpjaxError` at once.
    - Traced under :func:`checked` (bpjax's own training step does this): a ``checkify.check``,
      thrown by the caller after the step.
    - Traced anywhere else (a user's own ``jax.jit``): the caller turns its result into NaN
      through the returned flag, so a bad input never yields a plausible but wrong number.

    Examples:
      >>> labels = np.array([0, 3, 1])
      >>> bp.errors.check_value("loss", (labels < 3).all(), "expected labels below 3, got {n}", n=labels.max())
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxError: loss: expected labels below 3, got 3
    """
    if is_concrete(ok):
        if not bool(ok):
            # a float scalar keeps its dtype, whose shortest repr is printed (0.2, not 0.20000000298023224)
            values = {k: str(a[()]) if a.ndim == 0 and a.dtype.kind == "f" else a.tolist()
                      for k, a in ((k, np.asarray(v)) for k, v in fmt.items())}
            raise BpjaxError(where, message.format(**values))
        return np.asarray(True)
    if _CHECKIFY_DEPTH[0] > 0:
        args = {k: jnp.asarray(v) for k, v in fmt.items()}
        checkify.check(ok, f"{where}: {message}", **args)  # type: ignore[arg-type]
    return jnp.asarray(ok)


def poison(x, ok):
    """``x`` where the :func:`check_value` flag ``ok`` holds, NaN where it failed.

    Written ``x * where(ok, 1, nan)`` rather than ``where(ok, x, nan)``: the gradient of a product is
    ``g * where(ok, 1, nan)``, NaN too, so every gradient computed through a poisoned value (by
    ``jax.grad`` or by hand from a poisoned ``dpred``) is NaN, never a finite step from invalid data.
    A concrete passed check returns ``x`` untouched.

    Examples:
      >>> bp.errors.poison(jnp.float32(2.0), jnp.array(False)).item()
      nan
      >>> bp.errors.poison(jnp.float32(2.0), jnp.array(True)).item()
      2.0
    """
    if is_concrete(ok) and bool(np.all(ok)):
        return x
    return x * jnp.where(ok, 1, jnp.nan).astype(jnp.result_type(x))


_CHECKIFY_DEPTH = [0]


def checked(fn):
    """``checkify.checkify(fn)`` with bpjax's value checks switched on while it is traced.

    Returns ``wrapped(*args) -> (error, out)``; :func:`throw` raises the first failure.

    Examples:
      >>> def f(x):
      ...     ok = bp.errors.check_value("f", (x > 0).all(), "expected positive x")
      ...     return bp.errors.poison(jnp.log(x), ok)
      >>> error, y = jax.jit(bp.errors.checked(f))(jnp.array([1.0, -1.0]))
      >>> bp.errors.throw(error)
      Traceback (most recent call last):
      ...
      bpjax.errors.BpjaxError: f: expected positive x
    """

    def traced(*args, **kwargs):
        _CHECKIFY_DEPTH[0] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _CHECKIFY_DEPTH[0] -= 1

    return checkify.checkify(traced, errors=checkify.user_checks)


def throw(error) -> None:
    """Raise the first failed check of a :func:`checked` function as a :class:`BpjaxError`.

    Examples:
      >>> error, y = bp.errors.checked(lambda x: x + 1)(jnp.ones(2))
      >>> bp.errors.throw(error) is None                             # no check failed
      True
    """
    message = error.get()
    if message:
        message = message.split(" (`check` failed)")[0]
        where, _, rest = message.partition(": ")
        raise BpjaxError(where, rest or message)
