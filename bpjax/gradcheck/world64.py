"""The float64 copy of a check: the same model, params and input cast to float64, drawing the same random numbers.

Finite differences only mean something in float64, so the arbiter runs the model there. A
stochastic layer must then see the *same* random numbers as in the model's own dtype, or the
float64 model is another model (JAX draws a float64 normal or uniform from 64 fresh bits, and
``bernoulli(key, 0.9, shape)`` under x64 compares float64 uniforms: about 18% of a dropout mask
changes). :func:`same_draws_key` wraps the key in a PRNG implementation that is the key's own for
``split`` and ``fold_in`` (so every derived key is unchanged) and that answers a 64-bit request with
the bits of a draw in the model's dtype, its mantissa placed at the top: a float64 uniform is then
exactly the model-dtype uniform, a dropout mask is bit for bit the same, and a normal agrees to
float32 rounding of the uniform-to-normal map (1e-7 relative; up to 3e-4 beyond 3.5 standard
deviations, where float32's own map is that coarse).
Integer draws of 64 bits (``randint`` with the x64 default ``int64``) are not mapped.
"""

from __future__ import annotations

import functools

import jax
import jax.extend.random as jrandom
import jax.numpy as jnp
import numpy as np
from jax import lax

from bpjax import errors

F64 = jnp.dtype("float64")
_IMPLS = {"threefry2x32": jrandom.threefry_prng_impl, "rbg": jrandom.rbg_prng_impl,
          "unsafe_rbg": jrandom.unsafe_rbg_prng_impl}


def to64(tree):
    """Every floating leaf of ``tree`` cast to float64 (under ``jax.enable_x64(True)``); keys and ints unchanged.

    A concrete leaf is cast by numpy (an XLA cast compiles once per shape); a traced one by JAX.
    """
    def cast(a):
        if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
            return a
        local = errors.is_concrete(a) and not (isinstance(a, jax.Array) and not a.is_fully_addressable)
        return jnp.asarray(np.asarray(a, np.float64)) if local else jnp.asarray(a, F64)

    return jax.tree.map(cast, tree)


@functools.lru_cache(maxsize=None)
def _impl(base_name: str, dtype_name: str):
    base, finfo = _IMPLS[base_name], jnp.finfo(jnp.dtype(dtype_name))
    nbits, nmant = finfo.bits, finfo.nmant

    def random_bits(key, bit_width, shape):
        if bit_width != 64:
            return base.random_bits(key, bit_width, shape)
        # the model dtype draws nbits bits and keeps the top nmant as its mantissa (bits >> (nbits - nmant));
        # float64 keeps the top 52 of 64: put those nmant bits at the top, zeros below
        bits = base.random_bits(key, nbits, shape)
        mantissa = lax.shift_right_logical(bits, jnp.asarray(nbits - nmant, bits.dtype)).astype(jnp.uint64)
        return lax.shift_left(mantissa, jnp.uint64(64 - nmant))

    return jrandom.define_prng_impl(key_shape=base.key_shape, seed=base.seed, split=base.split,
                                    random_bits=random_bits, fold_in=base.fold_in,
                                    name=f"{base_name}_{dtype_name}_draws_in_float64")


def same_draws_key(key, dtype):
    """``key`` for the float64 copy of a model run in ``dtype``: the same draws (see the module docstring).

    ``None``, a float64 model, or a key of an implementation this module does not know: ``key`` unchanged.
    """
    dtype = jnp.dtype(dtype)
    if key is None or dtype == F64 or not jnp.issubdtype(dtype, jnp.floating):
        return key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        name, data = str(jax.random.key_impl(key)), jax.random.key_data(key)
    else:  # a raw uint32 key from jax.random.PRNGKey: the default implementation's data
        name, data = str(jax.config.jax_default_prng_impl), key
    if name not in _IMPLS:
        return key
    return jax.random.wrap_key_data(data, impl=_impl(name, dtype.name))
