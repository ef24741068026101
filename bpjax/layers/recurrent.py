"""Recurrent layers (SimpleRNN, GRU, LSTM, Bidirectional) with backpropagation through time written by hand.

Every cell shares one layout (``G`` gates, hidden size ``H = features``, input size ``D``)::

    Wx: (D, G*H)   Wh: (H, G*H)   b: (G*H,)          (GRU adds bhn: (H,))

The bias of the input projection is ``b``, as in every layer; GRU's second bias ``bhn`` (inside
``r * (h Whn + bhn)``, where it cannot fold into ``b``) keeps its own name.

Initialisation: by default PyTorch's, every weight and bias ``~ U(-1/sqrt(H), 1/sqrt(H))``. With
``init=`` (a name from :func:`bpjax.layers.initializer` or a callable) ``Wx`` and ``Wh`` are drawn by it
and the biases start at zero; ``recurrent_init=`` then draws each ``(H, H)`` gate block of ``Wh``
(``"orthogonal"``: an orthogonal map per gate).

Forward: the input projection of all steps is one matmul outside the loop,
``xp = x @ Wx + b: (T, B, G*H)``, then one ``lax.scan`` over time runs the cell and saves exactly
what the backward needs (the gate activations of every step; the states are the outputs).

Backward (backpropagation through time): one reverse ``lax.scan`` carries ``dh`` (and ``dc``) from
the last step to the first and emits the pre-activation gradients of every step. Everything that
does not depend on the carry is hoisted out of the loop, as llm.c hoists work out of its loops::

    dWx = x^T @ dgx          # one (B*T, D)^T @ (B*T, G*H) matmul
    dWh = h_prev^T @ dgh     # one (B*T, H)^T @ (B*T, G*H) matmul
    db  = sum_{b,t} dgx
    dx  = dgx @ Wx^T         # (B, T, D)

so the loop body is the cell's elementwise backward and one ``(B, G*H) @ (G*H, H)`` matmul. The cells'
per-step forward and backward are in :mod:`bpjax.layers.cells`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from bpjax import errors
from bpjax.core import Layer
from bpjax.initializers import Initializer, initializer, param_dtype
from bpjax.layers.cells import CELLS, Cell


def _shapes(cell, D, H):
    G = cell.gates
    return {"Wx": (D, G * H), "Wh": (H, G * H), "b": (G * H,), **{k: (H,) for k in cell.extra}}


def _recurrent(cell: Cell, features: int, return_sequences: bool, init, recurrent_init, forget_bias,
               unroll: int, dtype, name) -> Layer:
    H = errors.positive_int(cell.kind, "features", features)
    unroll = errors.positive_int(cell.kind, "unroll", unroll)
    G = cell.gates
    name = name or f"{cell.kind}({H})"
    param_dtype(name, dtype)
    with errors.context(name):  # a bad init names the layer
        w_init = None if init is None else initializer(init)
        r_init = None if recurrent_init is None else initializer(recurrent_init)

    def init_fn(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape, key_needed=True)
        if len(input_shape) != 2 or input_shape[0] < 1:
            raise errors.BpjaxError(name, f"expected an input shape (T, D) with T >= 1 (one example, no "
                                          f"batch axis), got {tuple(input_shape)}")
        dt = param_dtype(name, dtype)
        shapes = _shapes(cell, int(input_shape[1]), H)
        keys = jax.random.split(key, len(shapes))
        if w_init is None:
            k = 1.0 / math.sqrt(H)  # PyTorch: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))
            params = {n: jax.random.uniform(kk, s, dt, -k, k) for kk, (n, s) in zip(keys, shapes.items())}
        else:  # Wx, Wh by init; the biases start at zero
            params = {n: w_init(kk, s, dt) if n in ("Wx", "Wh") else jnp.zeros(s, dt)
                      for kk, (n, s) in zip(keys, shapes.items())}
        if r_init is not None:  # Wh: one (H, H) block per gate
            blocks = [r_init(kk, (H, H), dt) for kk in jax.random.split(keys[1], G)]
            params["Wh"] = jnp.concatenate(blocks, axis=1)
        if forget_bias is not None:
            params["b"] = params["b"].at[H:2 * H].set(forget_bias)
        out = (int(input_shape[0]), H) if return_sequences else (H,)
        return out, params

    def check(params, x):
        errors.check_floating(name, x)
        if not isinstance(params, dict) or set(params) != {"Wx", "Wh", "b", *cell.extra}:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise errors.BpjaxError(name, f"params do not match the layer: expected keys "
                                          f"{sorted(['Wx', 'Wh', 'b', *cell.extra])}, got {got}")
        errors.check_input_dtype(name, x, params["Wx"])
        if x.ndim != 3:
            raise errors.shape_error(name, "a rank-3 input (B, T, D) (batch, time, features)", x)
        B, T, D = x.shape
        if T == 0:
            raise errors.BpjaxError(name, f"expected at least one time step, got an input of shape {(B, T, D)}")
        D_w = params["Wx"].shape[0] if params["Wx"].ndim == 2 else D
        want, got = _shapes(cell, D_w, H), {n: tuple(p.shape) for n, p in params.items()}
        if got != want:
            raise errors.BpjaxError(name, f"params do not match the layer: expected shapes {want}, got {got}")
        if D != D_w:
            raise errors.BpjaxError(name, f"expected input with {D_w} features on the last axis "
                                          f"(shape (B, T, {D_w})), got shape {(B, T, D)}")

    def forward(params, x):
        """``x: (B, T, D) -> y: (B, T, H)`` (``return_sequences``) or ``(B, H)`` (the last state).

        With ``x = (x, carry0)``, ``carry0`` the initial state ``(h_0,)`` (LSTM: ``(h_0, c_0)``), each
        ``(B, H)``, or ``None`` for zeros: ``-> (y, carry_T)``, the state after the last step too
        (truncated BPTT carries it to the next chunk); the backward then takes ``(dy, dcarry_T)`` and
        returns ``(dx, dcarry0)``.
        """
        x, carry0 = (x if isinstance(x, (tuple, list)) and len(x) == 2 else (x, False))
        check(params, x)
        B = x.shape[0]
        xp = jnp.einsum("btd,dg->tbg", x, params["Wx"]) + params["b"]  # (T, B, G*H), hoisted out of the loop
        given, zero = carry0 is not False, carry0 is None
        if not given or zero:
            carry0 = tuple(jnp.zeros((B, H), xp.dtype) for _ in range(cell.n_carry))  # h_0 = 0 (c_0 = 0)
        if not isinstance(carry0, (tuple, list)) or len(carry0) != cell.n_carry or any(
                jnp.shape(c) != (B, H) for c in carry0):
            raise errors.BpjaxError(name, f"the initial state must be a tuple of {cell.n_carry} arrays of shape "
                                          f"{(B, H)} ((h,) or (h, c)), got "
                                          f"{jax.tree.map(jnp.shape, carry0)!r:.120}")
        carry0 = tuple(jnp.asarray(c, xp.dtype) for c in carry0)
        carry_T, out = lax.scan(lambda c, xp_t: cell.step(params, c, xp_t), carry0, xp, unroll=unroll)
        hs = out[..., :H]                                         # (T, B, H): h_1 .. h_T
        y = jnp.swapaxes(hs, 0, 1) if return_sequences else hs[-1]
        if not given:
            return y, (x, out)
        return (y, carry_T), (x, out, carry0, *([()] if zero else []))  # a trailing () marks carry0 = None

    def backward(params, residuals, dy):
        x, out, *given = residuals
        B = x.shape[0]
        hs = out[..., :H]
        saved = out if cell.gates == 1 else out[..., H:]          # SimpleRNN's backward reads h_t itself
        h0 = given[0][0][None] if given else jnp.zeros_like(hs[:1])
        h_prev = jnp.concatenate([h0, hs[:-1]], axis=0)           # the forward read h_0, h_1, ..
        dcarry_T = tuple(jnp.zeros((B, H), hs.dtype) for _ in range(cell.n_carry))
        if given:  # y was (y, carry_T): carry_T's cotangent enters the last step's carry
            dy, dcarry_T = dy[0], tuple(d.astype(hs.dtype) for d in dy[1])
        if return_sequences:
            # y = all states: step t gets dy_t from above plus dh from step t+1
            def body(dcarry, inp):
                dy_t, saved_t, h_prev_t = inp
                return cell.back(params, dcarry, dcarry[0] + dy_t, saved_t, h_prev_t)

            dcarry0, xs = dcarry_T, (jnp.swapaxes(dy, 0, 1), saved, h_prev)
        else:
            # y = h_T only: dy enters as the carry of the last step, no per-step input
            def body(dcarry, inp):
                return cell.back(params, dcarry, dcarry[0], *inp)

            dcarry0, xs = (dcarry_T[0] + dy.astype(hs.dtype), *dcarry_T[1:]), (saved, h_prev)
        # go in the reverse order of the forward pass: t = T-1, ..., 0
        dcarry_init, dout = lax.scan(body, dcarry0, xs, reverse=True, unroll=unroll)
        dgx, dgh = cell.split(dout)                               # (T, B, G*H) each
        # hoisted out of the loop: xp_t = x_t @ Wx + b and a_t = ... + h_{t-1} @ Wh
        grads = {"Wx": jnp.einsum("btd,tbg->dg", x, dgx),        # dWx = sum_t x_t^T @ dgx_t
                 "Wh": jnp.einsum("tbh,tbg->hg", h_prev, dgh),   # dWh = sum_t h_{t-1}^T @ dgh_t
                 "b": dgx.sum((0, 1))}                           # db  = sum_{t,b} dgx_t
        if "bhn" in cell.extra:
            grads["bhn"] = dgh[..., 2 * H:].sum((0, 1))          # hn = h Whn + bhn
        dx = jnp.einsum("tbg,dg->btd", dgx, params["Wx"])        # dx_t = dgx_t @ Wx^T
        if not given:
            return grads, dx
        return grads, (dx, None if len(given) > 1 else dcarry_init)

    return Layer(init_fn, forward, backward, name)


def SimpleRNN(features: int, *, return_sequences: bool = True, init: Initializer | None = None,
              recurrent_init: Initializer | None = None, unroll: int = 1, dtype=None,
              name: str | None = None) -> Layer:
    """Elman RNN: ``h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + b)``, ``h_0 = 0``.

    Params: ``Wx: (D, H)``, ``Wh: (H, H)``, ``b: (H,)``, all ``~ U(-1/sqrt(H), 1/sqrt(H))`` (PyTorch)
    by default.

    Args:
      features: ``H``, the state size.
      return_sequences: ``x: (B, T, D) -> (B, T, H)`` (every ``h_t``) if True, else ``(B, H)`` (``h_T``).
      init: initialiser of ``Wx`` and ``Wh`` (then the biases start at zero); default ``None``,
        PyTorch's uniform draw of every weight and bias.
      recurrent_init: initialiser of each ``(H, H)`` gate block of ``Wh`` (e.g. ``"orthogonal"``);
        default ``None``, as ``init``.
      unroll: time steps per loop iteration of both scans (a speed knob; the result is the same).
      dtype: parameter dtype; default the canonical float.
      name: display name (default ``SimpleRNN(H)``).

    Examples:
      >>> layer = L.SimpleRNN(5)
      >>> out_shape, params = layer.init(jax.random.key(0), (7, 3))     # (T, D)
      >>> y, _ = layer.forward(params, jnp.ones((2, 7, 3)))
      >>> out_shape, y.shape
      ((7, 5), (2, 7, 5))
      >>> L.SimpleRNN(5, return_sequences=False).init(jax.random.key(0), (7, 3))[0]
      (5,)
    """
    return _recurrent(CELLS["SimpleRNN"], features, return_sequences, init, recurrent_init, None, unroll, dtype,
                      name)


def GRU(features: int, *, return_sequences: bool = True, init: Initializer | None = None,
        recurrent_init: Initializer | None = None, unroll: int = 1, dtype=None, name: str | None = None) -> Layer:
    """Gated recurrent unit, PyTorch's convention (gates ``[r | z | n]``, ``h_0 = 0``)::

        r  = sigmoid(x Wxr + h Whr + br)
        z  = sigmoid(x Wxz + h Whz + bz)
        n  = tanh(x Wxn + bxn + r * (h Whn + bhn))
        h' = (1 - z) * n + z * h

    Params: ``Wx: (D, 3H)``, ``Wh: (H, 3H)``, ``b: (3H,) = [br | bz | bxn]`` and ``bhn: (H,)``
    (PyTorch's ``b_ih + b_hh`` for r and z folded into one bias), all ``~ U(-1/sqrt(H), 1/sqrt(H))``
    by default. Arguments as for :func:`SimpleRNN`.

    Examples:
      >>> layer = L.GRU(5)
      >>> out_shape, params = layer.init(jax.random.key(0), (7, 3))     # (T, D)
      >>> y, _ = layer.forward(params, jnp.ones((2, 7, 3)))
      >>> out_shape, params["Wx"].shape, y.shape
      ((7, 5), (3, 15), (2, 7, 5))
    """
    return _recurrent(CELLS["GRU"], features, return_sequences, init, recurrent_init, None, unroll, dtype, name)


def LSTM(features: int, *, return_sequences: bool = True, init: Initializer | None = None,
         recurrent_init: Initializer | None = None, forget_bias: float | None = 1.0, unroll: int = 1, dtype=None,
         name: str | None = None) -> Layer:
    """Long short-term memory, PyTorch's convention (gates ``[i | f | g | o]``, ``h_0 = c_0 = 0``)::

        i, f, o = sigmoid(x Wx + h Wh + b) on their slices,  g = tanh(...) on its slice
        c' = f * c + i * g
        h' = o * tanh(c')

    Params: ``Wx: (D, 4H)``, ``Wh: (H, 4H)``, ``b: (4H,)``, all ``~ U(-1/sqrt(H), 1/sqrt(H))`` by default.
    The arguments other than ``forget_bias`` are as for :func:`SimpleRNN`.

    Args:
      forget_bias: initial value of the forget-gate bias ``b[H:2H]`` (1.0 as Jozefowicz et al. 2015
        and Keras' ``unit_forget_bias``); ``None`` keeps the initial draw (PyTorch's uniform one, or
        zero with ``init=``).

    Examples:
      >>> layer = L.LSTM(5)
      >>> out_shape, params = layer.init(jax.random.key(0), (7, 3))     # (T, D)
      >>> y, _ = layer.forward(params, jnp.ones((2, 7, 3)))
      >>> out_shape, params["Wx"].shape, y.shape
      ((7, 5), (3, 20), (2, 7, 5))
    """
    return _recurrent(CELLS["LSTM"], features, return_sequences, init, recurrent_init, forget_bias, unroll, dtype,
                      name)


def _stack(params):
    return jax.tree.map(lambda f, b: jnp.stack([f, b]), params["fwd"], params["bwd"])


def Bidirectional(rnn: Layer, *, name: str | None = None) -> Layer:
    """Run ``rnn`` forwards and a separate copy over the reversed sequence; concatenate the features.

    Params ``{"fwd": ..., "bwd": ...}``. With ``x: (B, T, D)``, ``rev(x)_t = x_{T-1-t}``::

        y = concat([rnn(fwd, x), rev(rnn(bwd, rev(x)))], -1)    # (B, T, 2H), y_t sees x_<=t and x_>=t
        y = concat([rnn(fwd, x), rnn(bwd, rev(x))], -1)         # (B, 2H) with return_sequences=False

    (the backward copy's last state is the one after reading ``x_0``). Backward: split ``dy``,
    un-reverse and run each copy's backward, and add the two ``dx`` (re-reversing the second).

    Examples:
      >>> layer = L.Bidirectional(L.GRU(5))
      >>> out_shape, params = layer.init(jax.random.key(0), (7, 3))
      >>> y, _ = layer.forward(params, jnp.ones((2, 7, 3)))
      >>> out_shape, sorted(params), y.shape
      ((7, 10), ['bwd', 'fwd'], (2, 7, 10))
    """
    if not isinstance(rnn, Layer):
        raise errors.BpjaxTypeError("Bidirectional", f"expected a bpjax Layer such as GRU(6), got "
                                                     f"{type(rnn).__name__}")
    name = name or f"Bidirectional({rnn.name})"

    def init(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape, key_needed=True)
        k1, k2 = jax.random.split(key)
        with errors.context(name):
            shape, p_fwd = rnn.init(k1, input_shape)
            _, p_bwd = rnn.init(k2, input_shape)
        return (*shape[:-1], 2 * shape[-1]), {"fwd": p_fwd, "bwd": p_bwd}

    def forward(params, x):
        if not isinstance(params, dict) or set(params) != {"fwd", "bwd"}:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise errors.BpjaxError(name, f"params do not match the layer: expected keys ['bwd', 'fwd'], got {got}")
        errors.check_tree_like(name, params["bwd"], params["fwd"], "params['bwd'] (like params['fwd'])")
        errors.check_ndim(name, x, 3, "input (B, T, D)")
        # both copies in ONE loop: vmap over a leading direction axis [fwd, bwd] of params and input
        with errors.context(name):
            ys, residuals = jax.vmap(rnn.forward)(_stack(params), jnp.stack([x, jnp.flip(x, 1)]))
        y_f, y_b = ys[0], ys[1]
        if y_b.ndim == 3:  # all states: align the backward copy's states with the time axis of x
            y_b = jnp.flip(y_b, 1)
        return jnp.concatenate([y_f, y_b], axis=-1), residuals

    def backward(params, residuals, dy):
        H = dy.shape[-1] // 2
        dy_f, dy_b = dy[..., :H], dy[..., H:]
        if dy.ndim == 3:  # in the forward pass this was: y_b = rev(rnn(bwd, rev(x)))
            dy_b = jnp.flip(dy_b, 1)
        dps, dxs = jax.vmap(rnn.backward)(_stack(params), residuals, jnp.stack([dy_f, dy_b]))
        dparams = {"fwd": jax.tree.map(lambda a: a[0], dps), "bwd": jax.tree.map(lambda a: a[1], dps)}
        return dparams, dxs[0] + jnp.flip(dxs[1], 1)  # x reaches y both ways

    return Layer(init, forward, backward, name)
