"""The recurrent cells' per-step maths (SimpleRNN, GRU, LSTM): each step's backward written beside its forward."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Cell(NamedTuple):
    """The per-step pieces of one recurrent cell; carries are tuples, ``(h,)`` or ``(h, c)``.

    Each step writes ONE packed array per direction of the pass (one store per loop iteration):
    the forward ``out_t = [h_t | saved_t]``, the backward ``dout_t``, which ``split`` turns into the
    pre-activation gradients of the input and hidden projections outside the loop.
    """
    kind: str
    gates: int         # G
    step: Callable     # (params, carry, xp_t) -> (carry, out_t = [h_t | saved_t])
    back: Callable     # (params, dcarry, dh_t, saved_t, h_prev_t) -> (dcarry, dout_t)
    split: Callable    # dout: (T, B, *) -> (dgx, dgh): (T, B, G*H) each
    n_carry: int = 1   # 1 for (h,), 2 for (h, c)
    extra: tuple = ()  # parameters beyond Wx, Wh, b (GRU: ("bhn",)), each of shape (H,)


def _dsigmoid(a):
    return a * (1 - a)  # sigmoid'(u) written with a = sigmoid(u), as llm.c keeps outputs


def _dtanh(a):
    return 1 - a * a    # tanh'(u) written with a = tanh(u)


def _same(dout):
    return dout, dout   # the input and hidden projections share one pre-activation: dgx = dgh


def _cols(a, H, k, n=1):
    return a[..., k * H:(k + n) * H]  # columns k .. k+n-1 of H each


# -- SimpleRNN: h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + b) ------------------------------------------

def _rnn_step(params, carry, xp):
    (h,) = carry
    h = jnp.tanh(xp + h @ params["Wh"])  # h_t = tanh(xp_t + h_{t-1} @ Wh), xp_t = x_t @ Wx + b
    return (h,), h                       # the backward needs h_t only


def _rnn_back(params, dcarry, dh, saved, h_prev):
    h = saved                            # h_t (this cell saves nothing else); dh: from above plus step t+1
    # in the forward pass this was: h_t = tanh(a_t), a_t = xp_t + h_{t-1} @ Wh
    da = dh * _dtanh(h)                  # da_t = dh_t * (1 - h_t^2)
    return (da @ params["Wh"].T,), da    # dh_{t-1} = da_t @ Wh^T


# -- GRU (PyTorch's convention), gates [r | z | n] ---------------------------------------------
#   r = sigmoid(x Wxr + bxr + h Whr)          (b holds the combined input and hidden biases of r, z)
#   z = sigmoid(x Wxz + bxz + h Whz)
#   n = tanh(x Wxn + bxn + r * (h Whn + bhn))
#   h' = (1 - z) * n + z * h

def _gru_step(params, carry, xp):
    (h,) = carry
    H = h.shape[-1]
    hW = h @ params["Wh"]                                     # (B, 3H): [h Whr | h Whz | h Whn]
    rz = jax.nn.sigmoid(_cols(xp, H, 0, 2) + _cols(hW, H, 0, 2))  # [r | z]: (B, 2H)
    hn = _cols(hW, H, 2) + params["bhn"]                      # hn = h Whn + bhn
    n = jnp.tanh(_cols(xp, H, 2) + _cols(rz, H, 0) * hn)      # n = tanh(xn + r * hn)
    h_new = n + _cols(rz, H, 1) * (h - n)                     # h' = (1 - z) * n + z * h
    return (h_new,), jnp.concatenate([h_new, rz, n, hn], -1)  # [h' | r | z | n | hn]: (B, 5H)


def _gru_back(params, dcarry, dh, saved, h_prev):
    H = dh.shape[-1]
    rz, n, hn = _cols(saved, H, 0, 2), _cols(saved, H, 2), _cols(saved, H, 3)
    r, z = _cols(rz, H, 0), _cols(rz, H, 1)
    # in the forward pass this was: h' = (1 - z) * n + z * h
    dn = dh * (1 - z)
    dz = dh * (h_prev - n)
    # n = tanh(xn + r * hn): the pre-activation gradient is also d(xn) = d(x Wxn + bxn)
    dan = dn * _dtanh(n)
    dr, dhn = dan * hn, dan * r                               # d(r * hn)
    # [r | z] = sigmoid(x Wx[:, :2H] + b[:2H] + h Wh[:, :2H])
    drz = jnp.concatenate([dr, dz], -1) * _dsigmoid(rz)
    dgh = jnp.concatenate([drz, dhn], -1)                     # d(h Wh) (and dbhn for the n part)
    dh_prev = dh * z + dgh @ params["Wh"].T                   # h enters as z * h and through h @ Wh
    return (dh_prev,), jnp.concatenate([dgh, dan], -1)        # [dr | dz | dhn | dan]: (B, 4H)


def _gru_split(dout):
    H = dout.shape[-1] // 4
    dgh = _cols(dout, H, 0, 3)
    return jnp.concatenate([_cols(dout, H, 0, 2), _cols(dout, H, 3)], -1), dgh  # dgx = [dr | dz | dan]


# -- LSTM (PyTorch's convention), gates [i | f | g | o] ----------------------------------------
#   i, f, o = sigmoid(.), g = tanh(.) of x Wx + b + h Wh;  c' = f*c + i*g;  h' = o * tanh(c')

def _lstm_step(params, carry, xp):
    h, c = carry
    H = h.shape[-1]
    a = xp + h @ params["Wh"]                                 # (B, 4H) pre-activations
    s = jax.nn.sigmoid(a)                                     # i, f, o (g's columns unused)
    i, f, g, o = _cols(s, H, 0), _cols(s, H, 1), jnp.tanh(_cols(a, H, 2)), _cols(s, H, 3)
    c_new = f * c + i * g                                     # c' = f*c + i*g
    tc = jnp.tanh(c_new)
    h_new = o * tc                                            # h' = o * tanh(c')
    return (h_new, c_new), jnp.concatenate([h_new, i, f, g, o, c, tc], -1)  # (B, 7H)


def _lstm_back(params, dcarry, dh, saved, h_prev):
    _, dc = dcarry
    H = dh.shape[-1]
    i, f, g, o, c_prev, tc = (_cols(saved, H, k) for k in range(6))
    # in the forward pass this was: h' = o * tanh(c')
    do = dh * tc
    dc = dc + dh * o * _dtanh(tc)
    # c' = f*c + i*g
    di, df, dg, dc_prev = dc * g, dc * c_prev, dc * i, dc * f
    # [i | f | g | o] = [sigmoid | sigmoid | tanh | sigmoid](x Wx + b + h Wh)
    da = jnp.concatenate([di * _dsigmoid(i), df * _dsigmoid(f), dg * _dtanh(g), do * _dsigmoid(o)], -1)
    return (da @ params["Wh"].T, dc_prev), da


CELLS = {
    "SimpleRNN": Cell("SimpleRNN", 1, _rnn_step, _rnn_back, _same),
    "GRU": Cell("GRU", 3, _gru_step, _gru_back, _gru_split, extra=("bhn",)),
    "LSTM": Cell("LSTM", 4, _lstm_step, _lstm_back, _same, n_carry=2),
}
