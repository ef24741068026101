"""Weight initialisers ``(key, shape, dtype) -> array``, by name or as a callable.

The names, their formulae and their table are in :func:`initializer`'s docstring (``bp.layers.initializer``).
"""

from __future__ import annotations

import math
from typing import Callable, Union

import jax
import jax.numpy as jnp

from bpjax import errors

InitFn = Callable[[jax.Array, tuple, jnp.dtype], jax.Array]
Initializer = Union[str, InitFn]

# name -> (distribution, fan mode, variance scale); Var[W] = scale / fan
INITS = {
    "glorot_uniform": ("uniform", "fan_avg", 1.0),
    "glorot_normal": ("normal", "fan_avg", 1.0),
    "he_uniform": ("uniform", "fan_in", 2.0),
    "he_normal": ("normal", "fan_in", 2.0),
    "lecun_uniform": ("uniform", "fan_in", 1.0),
    "lecun_normal": ("normal", "fan_in", 1.0),
}
"""The fan-scaled initialisers, ``name -> (distribution, fan mode, variance scale)`` with ``Var[W] = scale / fan``."""
FAN_FREE = ("normal", "orthogonal", "ones", "zeros")
"""The initialisers that ignore the fans."""


def initializer(init: Initializer, stddev: float = 1.0) -> InitFn:
    """The initialiser ``(key, shape, dtype) -> array`` named ``init`` (see the table), or ``init`` itself.

    Every layer with parameters takes ``init=`` (a name from the table, or a callable) and draws
    its weights with ``initializer(init, stddev)(key, shape, dtype)``. For a weight of shape
    ``(..., fan_in, fan_out)`` (a Dense matrix ``(D_in, F)``, a convolution kernel ``(*K, C_in, F)``)::

        fan_in  = prod(shape[:-1])                     # the window folds into fan_in
        fan_out = shape[-1] * prod(shape[:-2])
        fan     = fan_in, or (fan_in + fan_out) / 2 for "fan_avg"
        std     = sqrt(scale / fan)                    # Var[W] = scale / fan
        uniform: W ~ U(-sqrt(3) std, sqrt(3) std);  normal: W ~ N(0, std^2) (untruncated)

    ==================  ============  ========  =====  =========================================
    name                distribution  fan       scale  known as
    ==================  ============  ========  =====  =========================================
    ``glorot_uniform``  uniform       fan_avg   1      Xavier (Glorot & Bengio 2010); Dense
    ``glorot_normal``   normal        fan_avg   1
    ``he_uniform``      uniform       fan_in    2      Kaiming (He et al. 2015)
    ``he_normal``       normal        fan_in    2      Conv1D/Conv2D
    ``lecun_uniform``   uniform       fan_in    1
    ``lecun_normal``    normal        fan_in    1      LeCun et al. 1998
    ==================  ============  ========  =====  =========================================

    and four that ignore the fans: ``"normal"`` (``N(0, stddev^2)``, Embedding's default and the
    "naive" initialisation of the vanishing-gradient experiments), ``"orthogonal"`` (an orthogonal
    matrix over the last two axes, for recurrent weights), ``"ones"`` and ``"zeros"`` (constants: a
    norm's ``scale`` starts at ``"ones"``; ``"zeros"`` there makes a residual block start as the
    identity).

    Args:
      init: a name of the table (``INITS``) or of the four that ignore the fans (``FAN_FREE``), or a callable
        ``(key, shape, dtype) -> array`` (returned as it is).
      stddev: the standard deviation of ``"normal"``, ``N(0, stddev^2)``; the other names ignore it.

    Raises:
      BpjaxError: ``init`` is neither a known name nor a callable (the message lists the names).

    Examples:
      >>> init = L.initializer("he_normal")
      >>> W = init(jax.random.key(0), (3, 4), jnp.float32)
      >>> W.shape, W.dtype
      ((3, 4), dtype('float32'))
      >>> L.initializer("ones")(jax.random.key(0), (2,), jnp.float32).tolist()
      [1.0, 1.0]
    """
    if callable(init):
        return init
    if init == "normal":
        return lambda key, shape, dtype: stddev * jax.random.normal(key, shape, dtype)
    if init == "orthogonal":
        return jax.nn.initializers.orthogonal()
    if init in ("ones", "zeros"):
        fill = 1.0 if init == "ones" else 0.0
        return lambda key, shape, dtype: jnp.full(shape, fill, dtype)
    if init not in INITS:
        raise errors.BpjaxError("initializer", f"unknown init {init!r}; expected one of "
                                               f"{sorted([*INITS, *FAN_FREE])} or a callable")
    distribution, mode, scale = INITS[init]

    def fn(key, shape, dtype):
        fan_in = math.prod(shape[:-1])  # W: (..., fan_in, fan_out); conv kernels fold the window in
        fan_out = shape[-1] * math.prod(shape[:-2])
        fan = {"fan_in": fan_in, "fan_avg": (fan_in + fan_out) / 2}[mode]
        std = math.sqrt(scale / fan)
        if distribution == "uniform":
            limit = math.sqrt(3.0) * std
            return jax.random.uniform(key, shape, dtype, -limit, limit)
        return std * jax.random.normal(key, shape, dtype)

    return fn


def param_dtype(where: str, dtype) -> jnp.dtype:
    """``dtype`` checked as a parameter dtype; ``None`` is the canonical float (float32, or float64 with x64 on).

    Layers call it when built (to refuse a bad ``dtype`` at once) and again in ``init`` (so ``None``
    follows the x64 setting in force when the parameters are drawn).

    Raises:
      BpjaxTypeError: naming ``where``, when ``dtype`` is not a real floating-point dtype.
    """
    if dtype is None:
        return jnp.zeros(()).dtype
    try:
        dt = jnp.dtype(dtype)
    except (TypeError, ValueError):
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise errors.BpjaxTypeError(where, f"dtype must be a real floating-point dtype (jnp.float32, "
                                           f"jnp.float64, ...), got {dtype!r}")
    return dt


__all__ = ["FAN_FREE", "INITS", "InitFn", "Initializer", "initializer", "param_dtype"]
