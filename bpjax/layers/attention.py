"""Multi-head self-attention and a pre-norm transformer block, with the attention backward written out.

Notation (as in llm.c's ``attention_forward``/``attention_backward``): ``B`` batch, ``T`` sequence
length, ``D`` model width, ``H`` heads, ``hd`` head width, ``HD = H * hd``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from bpjax import _errors
from bpjax.branching import Residual
from bpjax.combinators import serial
from bpjax.core import Layer
from bpjax.layers.activations import Gelu
from bpjax.layers.dense import Dense, initializer
from bpjax.layers.norm import LayerNorm

_PROJ = ("q", "k", "v")


def _heads(a, H):
    """``(B, T, H*hd) -> (B, H, T, hd)``: split the last axis into heads."""
    B, T, HD = a.shape
    return a.reshape(B, T, H, HD // H).transpose(0, 2, 1, 3)


def _merge(a):
    """``(B, H, T, hd) -> (B, T, H*hd)``: the inverse of :func:`_heads`."""
    B, H, T, hd = a.shape
    return a.transpose(0, 2, 1, 3).reshape(B, T, H * hd)


def _causal_mask(T):
    """``(T, T)`` bool, True where key position ``j`` may be seen from query position ``t`` (``j <= t``)."""
    return jnp.tril(jnp.ones((T, T), bool))


def MultiHeadSelfAttention(num_heads: int, *, head_dim: int | None = None, causal: bool = False,
                           bias: bool = True, name: str | None = None) -> Layer:
    """Multi-head scaled dot-product self-attention, ``x: (B, T, D) -> y: (B, T, D)``.

    Params: ``{"Wq", "Wk", "Wv": (D, H*hd), "bq", "bk", "bv": (H*hd,), "Wo": (H*hd, D), "bo": (D,)}``
    (separate, unfused projections; no biases when ``bias=False``). Forward::

        q = x @ Wq + bq,  k = x @ Wk + bk,  v = x @ Wv + bv     # (B, T, H*hd) -> heads (B, H, T, hd)
        s = q @ k^T / sqrt(hd)                                    # (B, H, T, T)
        s = where(j <= t, s, -inf)                                # causal only
        p = softmax(s, -1)                                        # masked entries are exactly 0
        o = p @ v                                                 # (B, H, T, hd) -> a: (B, T, H*hd)
        y = a @ Wo + bo                                           # (B, T, D)

    Every query attends at least to itself, so a causal row always keeps a finite maximum and the
    softmax never sees an all ``-inf`` row (no NaN). The forward saves ``x, q, k, v, p, a``.

    Backward (``dy: (B, T, D)``)::

        dWo = a^T dy,  dbo = sum dy,  do = heads(dy @ Wo^T)
        dp = do @ v^T,  dv = p^T @ do
        ds = p * (dp - sum(dp * p, -1))                           # softmax JVP; 0 where masked
        dq = ds @ k / sqrt(hd),  dk = ds^T @ q / sqrt(hd)
        dW* = x^T d*,  db* = sum d*,  dx = dq Wq^T + dk Wk^T + dv Wv^T

    Args:
      num_heads: number of heads ``H``.
      head_dim: width ``hd`` of each head; default ``D // H`` (then ``D`` must be divisible by ``H``).
      causal: mask future positions (query ``t`` sees keys ``j <= t``).
      bias: add the biases ``bq, bk, bv, bo``.
      name: display name (default ``MultiHeadSelfAttention(H)``, plus ``causal`` when set).
    """
    for arg, val in (("num_heads", num_heads), ("head_dim", 1 if head_dim is None else head_dim)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise _errors.BpjaxError("MultiHeadSelfAttention", f"{arg} must be a positive int, got {val!r}")
    H = num_heads
    name = name or f"MultiHeadSelfAttention({H}{', causal' if causal else ''})"
    keys = sorted([f"W{c}" for c in (*_PROJ, "o")] + ([f"b{c}" for c in (*_PROJ, "o")] if bias else []))
    w_init = initializer("glorot_uniform")

    def width(D):
        """``H * hd`` for model width ``D``, or an error when ``hd`` defaults and ``H`` does not divide ``D``."""
        if head_dim is None and D % H:
            raise _errors.BpjaxError(name, f"model width D={D} is not divisible by num_heads={H}; "
                                           f"expected D a multiple of {H} (or pass head_dim)")
        return H * (head_dim or D // H)

    def init(key, input_shape):
        if len(input_shape) != 2:
            raise _errors.BpjaxError(name, f"expected an input shape (T, D) (one sequence, no batch axis), "
                                           f"got {tuple(input_shape)}")
        D = int(input_shape[-1])
        HD, dt = width(D), jnp.zeros(()).dtype
        kq, kk, kv, ko = jax.random.split(key, 4)
        params = {"Wq": w_init(kq, (D, HD), dt), "Wk": w_init(kk, (D, HD), dt),
                  "Wv": w_init(kv, (D, HD), dt), "Wo": w_init(ko, (HD, D), dt)}
        if bias:
            params.update(bq=jnp.zeros((HD,), dt), bk=jnp.zeros((HD,), dt), bv=jnp.zeros((HD,), dt),
                          bo=jnp.zeros((D,), dt))
        return tuple(input_shape), params

    def check(params, x):
        _errors.check_floating(name, x)
        if x.ndim != 3:
            raise _errors.shape_error(name, "a rank-3 input (B, T, D)", x)
        if not isinstance(params, dict) or sorted(params) != keys:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise _errors.BpjaxError(name, f"params do not match the layer: expected keys {keys}, got {got}")
        D, Wq = x.shape[-1], params["Wq"]
        if Wq.ndim == 2 and Wq.shape[0] != D:
            raise _errors.BpjaxError(name, f"expected input with {Wq.shape[0]} features on the last axis "
                                           f"(shape (B, T, {Wq.shape[0]})), got shape {tuple(x.shape)}")
        HD = width(D)
        want = {"Wq": (D, HD), "Wk": (D, HD), "Wv": (D, HD), "Wo": (HD, D)}
        if bias:
            want.update(bq=(HD,), bk=(HD,), bv=(HD,), bo=(D,))
        for k, shape in want.items():
            if tuple(params[k].shape) != shape:
                raise _errors.BpjaxError(name, f"params do not match the layer: expected {k} {shape} for "
                                               f"input width D={D} and {H} heads, got {tuple(params[k].shape)}")

    def forward(params, x):
        check(params, x)
        T, hd = x.shape[1], params["Wq"].shape[1] // H
        q, k, v = (_heads(x @ params[f"W{c}"] + (params[f"b{c}"] if bias else 0), H) for c in _PROJ)
        s = jnp.einsum("bhtd,bhjd->bhtj", q, k) / math.sqrt(hd)  # s = q k^T / sqrt(hd): (B, H, T, T)
        if causal:
            s = jnp.where(_causal_mask(T), s, -jnp.inf)
        e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))     # the diagonal keeps every row's max finite
        p = e / jnp.sum(e, axis=-1, keepdims=True)              # p = softmax(s)
        a = _merge(jnp.einsum("bhtj,bhjd->bhtd", p, v))         # o = p v, heads merged: (B, T, H*hd)
        y = a @ params["Wo"] + (params["bo"] if bias else 0)
        return y, (x, q, k, v, p, a)

    def backward(params, residuals, dy):
        x, q, k, v, p, a = residuals
        hd = q.shape[-1]
        grads = {}
        # in the forward pass this was: y = a @ Wo + bo
        grads["Wo"] = jnp.einsum("btc,btd->cd", a, dy)           # dWo = a^T dy: (H*hd, D)
        if bias:
            grads["bo"] = dy.sum((0, 1))                          # dbo = sum over (B, T) of dy
        do = _heads(dy @ params["Wo"].T, H)                      # do: (B, H, T, hd)
        # in the forward pass this was: o = p @ v
        dp = jnp.einsum("bhtd,bhjd->bhtj", do, v)                # dp = do v^T: (B, H, T, T)
        dv = jnp.einsum("bhtj,bhtd->bhjd", p, do)                # dv = p^T do: (B, H, T, hd)
        # in the forward pass this was: p = softmax(s); masked entries have p = 0, so ds = 0 there
        ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))
        # in the forward pass this was: s = q @ k^T / sqrt(hd)
        dq = jnp.einsum("bhtj,bhjd->bhtd", ds, k) / math.sqrt(hd)  # dq = ds k / sqrt(hd)
        dk = jnp.einsum("bhtj,bhtd->bhjd", ds, q) / math.sqrt(hd)  # dk = ds^T q / sqrt(hd)
        # in the forward pass this was: q = x @ Wq + bq (and likewise k, v); x feeds all three
        dx = jnp.zeros_like(x)
        for c, d in zip(_PROJ, (dq, dk, dv)):
            d = _merge(d)                                         # (B, T, H*hd)
            grads[f"W{c}"] = jnp.einsum("btc,btd->cd", x, d)      # dWq = x^T dq
            if bias and c != "k":
                grads[f"b{c}"] = d.sum((0, 1))                    # dbq = sum over (B, T) of dq
            dx = dx + d @ params[f"W{c}"].T                       # dx = dq Wq^T + dk Wk^T + dv Wv^T
        if bias:
            # dbk = sum_{t,j} ds[t, j] q_t / sqrt(hd) = 0 exactly, since every row of ds sums to zero
            # (softmax is shift-invariant: bk adds q_t . bk to a whole row of s). Write the exact zero
            # instead of summing roundoff.
            grads["bk"] = jnp.zeros_like(params["bk"])
        return {key: grads[key] for key in keys}, dx

    return Layer(init, forward, backward, name)


def TransformerBlock(num_heads: int, *, mlp_dim: int, causal: bool = True, name: str | None = None) -> Layer:
    """A pre-norm transformer block, ``x: (B, T, D) -> (B, T, D)``, composed of bpjax layers::

        x = x + MultiHeadSelfAttention(LayerNorm(x))           # Residual(serial(LayerNorm, attention))
        x = x + Dense(D)(Gelu(Dense(mlp_dim)(LayerNorm(x))))   # Residual(serial(LayerNorm, MLP))

    Params are the composed model's: ``((ln1, attn), (ln2, dense1, (), dense2))`` with ``ln*``
    ``{"scale", "bias": (D,)}``, ``attn`` as in :func:`MultiHeadSelfAttention`, ``dense1``
    ``{"W": (D, mlp_dim), "b"}``, ``dense2`` ``{"W": (mlp_dim, D), "b"}``. The backward is the
    composition's own: ``serial`` runs the two residual blocks in reverse, each ``Residual`` adds
    ``dy`` to its block's input gradient.

    Args:
      num_heads: attention heads (must divide ``D``).
      mlp_dim: hidden width of the MLP.
      causal: mask future positions in the attention (default True, as in a decoder).
      name: display name (default ``TransformerBlock(H, mlp_dim=..., causal)``).
    """
    for arg, val in (("num_heads", num_heads), ("mlp_dim", mlp_dim)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise _errors.BpjaxError("TransformerBlock", f"{arg} must be a positive int, got {val!r}")
    name = name or f"TransformerBlock({num_heads}, mlp_dim={mlp_dim}{', causal' if causal else ''})"

    @functools.lru_cache(maxsize=None)
    def block(D: int) -> Layer:
        """The composed block for model width ``D`` (the last Dense needs ``D`` by name)."""
        attn = serial(LayerNorm(), MultiHeadSelfAttention(num_heads, causal=causal))
        mlp = serial(LayerNorm(), Dense(mlp_dim), Gelu(), Dense(D))
        return serial(Residual(attn), Residual(mlp), name=name)

    def init(key, input_shape):
        if len(input_shape) != 2:
            raise _errors.BpjaxError(name, f"expected an input shape (T, D) (one sequence, no batch axis), "
                                           f"got {tuple(input_shape)}")
        with _errors.context(name):
            return block(int(input_shape[-1])).init(key, tuple(input_shape))

    def forward(params, x):
        _errors.check_floating(name, x)
        if x.ndim != 3:
            raise _errors.shape_error(name, "a rank-3 input (B, T, D)", x)
        with _errors.context(name):
            return block(x.shape[-1]).forward(params, x)

    def backward(params, residuals, dy):
        # in the forward pass this was: y = serial(Residual(attn), Residual(mlp))(x), width D = dy.shape[-1]
        with _errors.context(name):
            return block(dy.shape[-1]).backward(params, residuals, dy)

    return Layer(init, forward, backward, name)
