"""Clear errors: every check names where it failed (layer, loss, argument), the expected and the received."""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
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
    """Prefix ``prefix`` to the location of any :class:`BpjaxError` raised inside (e.g. ``serial[2]``)."""
    try:
        yield
    except BpjaxError as e:
        cls = type(e)
        new = cls(f"{prefix} {e.where}", e.message)
        raise new.with_traceback(e.__traceback__) from None


def shape_error(where: str, expected: str, x) -> BpjaxError:
    return BpjaxError(where, f"expected {expected}, got an array of shape {tuple(np.shape(x))}")


def check_floating(where: str, x, what: str = "input") -> None:
    """Raise a TypeError unless ``x`` is a real floating-point array."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise BpjaxTypeError(where, f"expected a real floating-point {what} (float32/float64), got dtype {dtype}")


def check_ndim(where: str, x, ndims, what: str = "input") -> None:
    """Raise unless ``x.ndim`` is one of ``ndims`` (an int or a tuple of ints)."""
    ndims = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if np.ndim(x) not in ndims:
        consecutive = len(ndims) > 2 and ndims == tuple(range(ndims[0], ndims[-1] + 1))
        want = f"{ndims[0]} or higher (up to {ndims[-1]})" if consecutive else " or ".join(str(n) for n in ndims)
        raise BpjaxError(where, f"expected a rank-{want} {what} (batch axis first), got shape {tuple(np.shape(x))}")


def check_tree_like(where: str, tree, like, what: str = "params") -> None:
    """Raise unless ``tree`` has the structure and leaf shapes of ``like``."""
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
    """
    want = f"in [1, {upper}]" if upper is not None else "a positive int"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BpjaxTypeError(where, f"{what} must be {want}, got {value!r} of type {type(value).__name__}")
    if value < 1 or (upper is not None and value > upper):
        raise BpjaxError(where, f"{what} must be {want}, got {value!r}")
    return int(value)


def is_concrete(x) -> bool:
    """True when ``x`` holds known values (not a tracer inside jit/grad/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def array_module(x):
    """``numpy`` for a concrete array this process holds, ``jax.numpy`` for a traced (or non-addressable) one.

    Value checks on concrete data run in numpy: the same check in ``jax.numpy`` would compile a
    small XLA program for every new shape and dtype it meets.
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
    """
    if is_concrete(ok) and bool(np.all(ok)):
        return x
    return x * jnp.where(ok, 1, jnp.nan).astype(jnp.result_type(x))


_CHECKIFY_DEPTH = [0]


def checked(fn):
    """``checkify.checkify(fn)`` with bpjax's value checks switched on while it is traced.

    Returns ``wrapped(*args) -> (error, out)``; :func:`throw` raises the first failure.
    """

    def traced(*args, **kwargs):
        _CHECKIFY_DEPTH[0] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _CHECKIFY_DEPTH[0] -= 1

    return checkify.checkify(traced, errors=checkify.user_checks)


def throw(error) -> None:
    """Raise the first failed check of a :func:`checked` function as a :class:`BpjaxError`."""
    message = error.get()
    if message:
        message = message.split(" (`check` failed)")[0]
        where, _, rest = message.partition(": ")
        raise BpjaxError(where, rest or message)
