"""Multi-head self-attention and a pre-norm transformer block, with the attention backward written out.

Notation (as in llm.c's ``attention_forward``/``attention_backward``): ``B`` batch, ``T`` sequence
length, ``D`` model width, ``H`` heads, ``hd`` head width, ``HD = H * hd``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bpjax import errors
from bpjax.combinators import Residual, container, serial
from bpjax.core import Layer, forward_of
from bpjax.initializers import Initializer, initializer, param_dtype
from bpjax.layers.activations import Gelu
from bpjax.layers.dense import Dense
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


def _visible(T, causal, key_mask):
    """Which keys each query sees, ``(B or 1, 1, T, T)`` bool, or None when every key is visible."""
    allowed = _causal_mask(T)[None, None] if causal else None
    if key_mask is not None:
        keys = key_mask[:, None, None, :]                        # (B, 1, 1, T): key j is a real token
        allowed = keys if allowed is None else allowed & keys
    return allowed


def _masked_softmax(s, allowed):
    """``p = softmax(where(allowed, s, -inf), -1)`` with a row that sees no key at all set to ``p = 0``.

    The row maximum is taken over the visible entries; a row with none has maximum ``-inf``, which
    is replaced by 0 so that ``exp(-inf - 0) = 0`` everywhere and the denominator ``0`` by 1: no
    ``-inf - (-inf)``, no ``0 / 0``, no NaN, in the forward and in ``jax.vjp`` of it. The maximum
    only shifts the exponent (softmax is shift-invariant), so it gets no gradient.
    """
    if allowed is not None:
        s = jnp.where(allowed, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    if allowed is not None:
        m = jnp.where(jnp.isfinite(m), m, 0)
    e = jnp.exp(s - lax.stop_gradient(m))                        # masked entries: exactly 0
    den = jnp.sum(e, axis=-1, keepdims=True)
    return e / (jnp.where(den > 0, den, 1) if allowed is not None else den)


def _split_input(name, x):
    """``x`` or ``(x, key_mask)`` -> ``(x, key_mask or None)``, the mask checked and made boolean."""
    if not isinstance(x, (tuple, list)):
        return x, None
    if len(x) != 2:
        raise errors.BpjaxError(name, f"expected x: (B, T, D) or a pair (x, mask) with mask: (B, T), got a "
                                      f"{type(x).__name__} of length {len(x)}")
    x, mask = x
    dtype = jnp.result_type(mask)
    if not (dtype == jnp.bool_ or jnp.issubdtype(dtype, jnp.integer)):
        raise errors.BpjaxTypeError(name, f"mask must be boolean (or integer 0/1), True where a key is a real "
                                          f"token, got dtype {dtype}")
    if jnp.ndim(x) != 3 or jnp.shape(mask) != jnp.shape(x)[:2]:
        raise errors.BpjaxError(name, f"mask must have shape (B, T) = {tuple(jnp.shape(x)[:2])} to match x of "
                                      f"shape {tuple(jnp.shape(x))}, got {tuple(jnp.shape(mask))}")
    return x, jnp.asarray(mask).astype(bool)


def MultiHeadSelfAttention(num_heads: int, *, head_dim: int | None = None, causal: bool = False,
                           bias: bool = True, dropout: float = 0.0, init: Initializer = "glorot_uniform",
                           stddev: float = 1.0, out_init: Initializer | None = None, dtype=None,
                           name: str | None = None) -> Layer:
    """Multi-head scaled dot-product self-attention, ``x: (B, T, D) -> y: (B, T, D)``.

    Params: ``{"Wq", "Wk", "Wv": (D, H*hd), "bq", "bk", "bv": (H*hd,), "Wo": (H*hd, D), "bo": (D,)}``
    (separate, unfused projections, so each has its own bias key; no biases when ``bias=False``).

    The input is ``x`` or a pair ``(x, mask)`` for variable-length (padded) batches: ``mask: (B, T)``
    bool, True where position ``j`` holds a real token; query ``t`` then sees only the keys ``j``
    with ``mask[b, j]`` (and ``j <= t`` when ``causal``). Forward::

        q = x @ Wq + bq,  k = x @ Wk + bk,  v = x @ Wv + bv     # (B, T, H*hd) -> heads (B, H, T, hd)
        s = q @ k^T / sqrt(hd)                                    # (B, H, T, T)
        s = where(visible(t, j), s, -inf)                         # causal: j <= t; padded: mask[b, j]
        p = softmax(s, -1)                                        # masked entries are exactly 0
        p~ = Dropout(dropout)(p)                                  # p~ = p in eval or with dropout 0
        o = p~ @ v                                                # (B, H, T, hd) -> a: (B, T, H*hd)
        y = a @ Wo + bo                                           # (B, T, D)

    A query row that sees no key at all (a sequence of padding only) gets ``p = 0``, so its ``o``
    is 0 and ``y = bo``: finite, never NaN (see :func:`_masked_softmax`). Padded query rows are
    computed like the others; a loss should ignore them. The forward saves ``x, q, k, v, p, a``
    (and the dropout mask).

    Backward (``dy: (B, T, D)``)::

        dWo = a^T dy,  dbo = sum dy,  do = heads(dy @ Wo^T)
        dp~ = do @ v^T,  dv = p~^T @ do,  dp = Dropout's backward of dp~ (the same mask)
        ds = p * (dp - sum(dp * p, -1))                           # softmax JVP; 0 where masked
        dq = ds @ k / sqrt(hd),  dk = ds^T @ q / sqrt(hd)
        dW* = x^T d*,  db* = sum d*,  dx = dq Wq^T + dk Wk^T + dv Wv^T

    With a mask input, ``dx`` is the pair ``(dx, dmask)``, ``dmask`` a ``float0`` zeros array (the
    mask is not differentiable). With ``dropout > 0`` the layer is contextual (it draws the mask of
    ``p`` from the PRNG key in training, as GPT-2's ``attn_pdrop``; :func:`bpjax.layers.Dropout`).

    Args:
      num_heads: number of heads ``H``.
      head_dim: width ``hd`` of each head; default ``D // H`` (then ``D`` must be divisible by ``H``).
      causal: mask future positions (query ``t`` sees keys ``j <= t``).
      bias: add the biases ``bq, bk, bv, bo``.
      dropout: drop probability of the attention probabilities ``p`` in training, in ``[0, 1)``.
      init: initialiser of the weight matrices (a name from :func:`bpjax.layers.initializer` or a
        callable); biases start at zero.
      stddev: standard deviation for ``init="normal"`` (GPT-2 uses 0.02).
      out_init: initialiser of the output projection ``Wo`` (default ``init``; GPT-2 draws it with
        a smaller standard deviation, see :func:`bpjax.zoo.gpt`).
      dtype: parameter dtype; default the canonical float.
      name: display name (default ``MultiHeadSelfAttention(H)``, plus ``causal`` when set).

    Examples:
      >>> layer = L.MultiHeadSelfAttention(2, causal=True)
      >>> out_shape, params = layer.init(jax.random.key(0), (5, 8))     # (T, D)
      >>> y, _ = layer.forward(params, jnp.ones((2, 5, 8)))
      >>> out_shape, params["Wq"].shape, y.shape
      ((5, 8), (8, 8), (2, 5, 8))
    """
    from bpjax.layers.dropout import Dropout

    H = errors.positive_int("MultiHeadSelfAttention", "num_heads", num_heads)
    if head_dim is not None:
        head_dim = errors.positive_int("MultiHeadSelfAttention", "head_dim", head_dim)
    name = name or f"MultiHeadSelfAttention({H}{', causal' if causal else ''})"
    param_dtype(name, dtype)
    keys = sorted([f"W{c}" for c in (*_PROJ, "o")] + ([f"b{c}" for c in (*_PROJ, "o")] if bias else []))
    w_init = initializer(init, stddev)
    o_init = w_init if out_init is None else initializer(out_init, stddev)
    with errors.context(f"{name} dropout"):
        drop = Dropout(dropout) if dropout else None

    def width(D):
        """``H * hd`` for model width ``D``, or an error when ``hd`` defaults and ``H`` does not divide ``D``."""
        if head_dim is None and D % H:
            raise errors.BpjaxError(name, f"model width D={D} is not divisible by num_heads={H}; "
                                          f"expected D a multiple of {H} (or pass head_dim)")
        return H * (head_dim or D // H)

    def init_fn(key, input_shape):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape, key_needed=True)
        if len(input_shape) == 2 and all(isinstance(s, (tuple, list)) for s in input_shape):
            input_shape = input_shape[0]                          # ((T, D), (T,)): x with its mask
        if len(input_shape) != 2:
            raise errors.BpjaxError(name, f"expected an input shape (T, D) (one sequence, no batch axis), "
                                          f"got {tuple(input_shape)}")
        D = int(input_shape[-1])
        HD, dt = width(D), param_dtype(name, dtype)
        kq, kk, kv, ko = jax.random.split(key, 4)
        params = {"Wq": w_init(kq, (D, HD), dt), "Wk": w_init(kk, (D, HD), dt),
                  "Wv": w_init(kv, (D, HD), dt), "Wo": o_init(ko, (HD, D), dt)}
        if bias:
            params.update(bq=jnp.zeros((HD,), dt), bk=jnp.zeros((HD,), dt), bv=jnp.zeros((HD,), dt),
                          bo=jnp.zeros((D,), dt))
        return tuple(input_shape), params

    def check(params, x):
        errors.check_floating(name, x)
        if x.ndim != 3:
            raise errors.shape_error(name, "a rank-3 input (B, T, D)", x)
        if not isinstance(params, dict) or sorted(params) != keys:
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise errors.BpjaxError(name, f"params do not match the layer: expected keys {keys}, got {got}")
        D, Wq = x.shape[-1], params["Wq"]
        errors.check_input_dtype(name, x, Wq)
        if Wq.ndim == 2 and Wq.shape[0] != D:
            raise errors.BpjaxError(name, f"expected input with {Wq.shape[0]} features on the last axis "
                                          f"(shape (B, T, {Wq.shape[0]})), got shape {tuple(x.shape)}")
        HD = width(D)
        want = {"Wq": (D, HD), "Wk": (D, HD), "Wv": (D, HD), "Wo": (HD, D)}
        if bias:
            want.update(bq=(HD,), bk=(HD,), bv=(HD,), bo=(D,))
        for k, shape in want.items():
            if tuple(params[k].shape) != shape:
                raise errors.BpjaxError(name, f"params do not match the layer: expected {k} {shape} for "
                                              f"input width D={D} and {H} heads, got {tuple(params[k].shape)}")

    def attend(params, x, key, train):
        x, key_mask = _split_input(name, x)
        check(params, x)
        T, hd = x.shape[1], params["Wq"].shape[1] // H
        q, k, v = (_heads(x @ params[f"W{c}"] + (params[f"b{c}"] if bias else 0), H) for c in _PROJ)
        s = jnp.einsum("bhtd,bhjd->bhtj", q, k) / math.sqrt(hd)  # s = q k^T / sqrt(hd): (B, H, T, T)
        p = _masked_softmax(s, _visible(T, causal, key_mask))    # p = softmax(s), 0 where masked
        dropped = ()
        if drop is not None:                                      # p~ = Dropout(p), its mask kept
            with errors.context(name):
                p_drop, saved, _ = drop.forward((), p, state=(), key=key, train=train)
            dropped = (saved,)
        else:
            p_drop = p
        a = _merge(jnp.einsum("bhtj,bhjd->bhtd", p_drop, v))    # o = p~ v, heads merged: (B, T, H*hd)
        y = a @ params["Wo"] + (params["bo"] if bias else 0)
        return y, (x, q, k, v, p, a, () if key_mask is None else (key_mask,), dropped)

    def backward(params, residuals, dy):
        x, q, k, v, p, a, masked, dropped = residuals
        hd = q.shape[-1]
        grads = {}
        # in the forward pass this was: y = a @ Wo + bo
        grads["Wo"] = jnp.einsum("btc,btd->cd", a, dy)           # dWo = a^T dy: (H*hd, D)
        if bias:
            grads["bo"] = dy.sum((0, 1))                          # dbo = sum over (B, T) of dy
        do = _heads(dy @ params["Wo"].T, H)                      # do: (B, H, T, hd)
        # in the forward pass this was: o = p~ @ v
        dp = jnp.einsum("bhtd,bhjd->bhtj", do, v)                # dp~ = do v^T: (B, H, T, T)
        p_drop = p
        if dropped:
            # in the forward pass this was: p~ = Dropout(p) = M p, M diagonal (the mask over 1 - rate): its
            # own transpose, so dp = M dp~, and p~ = M p comes back from p without keeping a second (T, T) array
            p_drop = drop.backward((), dropped[0], p)[1]
            dp = drop.backward((), dropped[0], dp)[1]
        dv = jnp.einsum("bhtj,bhtd->bhjd", p_drop, do)           # dv = p~^T do: (B, H, T, hd)
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
        grads = {key: grads[key] for key in keys}
        if masked:  # the input was (x, mask): the mask is boolean, its cotangent float0
            return grads, (dx, np.zeros(masked[0].shape, jax.dtypes.float0))
        return grads, dx

    def init_state(key, input_shape):
        return tuple(input_shape), ()

    return container(name, init_fn, lambda params, x, state, key, train: (*attend(params, x, key, train), state),
                     backward, (), init_state if drop is not None else None, kind="MultiHeadSelfAttention")


def optional_dropout(rate: float) -> Layer:
    """``Dropout(rate)``, or ``Identity()`` at rate 0: the slot keeps its place in the params (``()``) either way,
    and a model without dropout stays a simple (not contextual) layer."""
    from bpjax.layers.activations import Identity
    from bpjax.layers.dropout import Dropout

    return Dropout(rate) if rate else Identity()


def TransformerBlock(num_heads: int, *, mlp_features: int, causal: bool = True, bias: bool = True,
                     approximate_gelu: bool = False, attention_dropout: float = 0.0, residual_dropout: float = 0.0,
                     init: Initializer = "glorot_uniform", stddev: float = 1.0, out_init: Initializer | None = None,
                     dtype=None, name: str | None = None) -> Layer:
    """A pre-norm transformer block, ``x: (B, T, D) -> (B, T, D)``, composed of bpjax layers::

        x = x + Drop(MultiHeadSelfAttention(LayerNorm(x)))               # Residual(serial(LayerNorm, attention, Drop))
        x = x + Drop(Dense(D)(Gelu(Dense(mlp_features)(LayerNorm(x)))))  # Residual(serial(LayerNorm, MLP, Drop))

    ``Drop`` is ``Dropout(residual_dropout)`` (GPT-2's ``resid_pdrop``), or ``Identity()`` at rate 0;
    the attention drops its probabilities with ``attention_dropout`` (``attn_pdrop``). The block is
    contextual (it takes a PRNG key in training) exactly when a rate is above 0.

    Params are the composed model's: ``((ln1, attn, ()), (ln2, dense1, (), dense2, ()))`` with ``ln*``
    LayerNorm's ``{"scale", "b"}`` of shape ``(D,)``, ``attn`` as in :func:`MultiHeadSelfAttention`,
    ``dense1`` ``{"W": (D, mlp_features), "b"}``, ``dense2`` ``{"W": (mlp_features, D), "b"}``, and
    ``()`` for the GELU and the two dropout slots (the same structure whatever the rates). The
    backward is the composition's own: ``serial`` runs the two residual blocks in reverse, each
    ``Residual`` adds ``dy`` to its block's input gradient.

    Args:
      num_heads: attention heads (must divide ``D``).
      mlp_features: hidden width of the MLP (GPT-2: ``4 D``).
      causal: mask future positions in the attention (default True, as in a decoder).
      bias: biases in the attention and the MLP (the layer norms keep theirs).
      approximate_gelu: the MLP's :func:`Gelu` in its tanh form (GPT-2's ``gelu_new``); default exact.
      attention_dropout, residual_dropout: drop probabilities in training, in ``[0, 1)``.
      init, stddev: initialiser of every weight matrix (attention and MLP), as in :func:`Dense`.
      out_init: initialiser of the two projections back into the residual stream (the attention's
        ``Wo`` and ``dense2``'s ``W``); default ``init``.
      dtype: parameter dtype of every sub-layer (layer norms included); default the canonical float.
      name: display name (default ``TransformerBlock(H, mlp_features=..., causal)``).

    Examples:
      >>> block = L.TransformerBlock(2, mlp_features=16)
      >>> out_shape, params = block.init(jax.random.key(0), (5, 8))     # (T, D)
      >>> y, _ = block.forward(params, jnp.ones((2, 5, 8)))
      >>> out_shape, y.shape
      ((5, 8), (2, 5, 8))
    """
    num_heads = errors.positive_int("TransformerBlock", "num_heads", num_heads)
    mlp_features = errors.positive_int("TransformerBlock", "mlp_features", mlp_features)
    name = name or f"TransformerBlock({num_heads}, mlp_features={mlp_features}{', causal' if causal else ''})"
    param_dtype(name, dtype)
    w = dict(init=init, stddev=stddev, bias=bias, dtype=dtype)
    w_out = w if out_init is None else dict(w, init=out_init)
    with errors.context(f"{name} attention_dropout"):
        attention = MultiHeadSelfAttention(num_heads, causal=causal, dropout=attention_dropout, out_init=out_init,
                                           **w)
    with errors.context(f"{name} residual_dropout"):
        drops = [optional_dropout(residual_dropout) for _ in range(2)]
    gelu = Gelu(approximate_gelu)

    @functools.lru_cache(maxsize=None)
    def block(D: int) -> Layer:
        """The composed block for model width ``D`` (the last Dense needs ``D`` by name)."""
        attn = serial(LayerNorm(), attention, drops[0])
        mlp = serial(LayerNorm(), Dense(mlp_features, **w), gelu, Dense(D, **w_out), drops[1])
        return serial(Residual(attn), Residual(mlp), name=name)

    def init_with(key, input_shape, with_state):
        key, input_shape = errors.init_arguments(f"{name}.init", key, input_shape)
        if len(input_shape) != 2:
            raise errors.BpjaxError(name, f"expected an input shape (T, D) (one sequence, no batch axis), "
                                          f"got {tuple(input_shape)}")
        with errors.context(name):
            composed = block(int(input_shape[-1]))
            shape, values = (composed.init_state if with_state else composed.init)(key, tuple(input_shape))
        if with_state:
            return shape, values
        dt = param_dtype(name, dtype)  # the layer norms draw in the canonical float: cast them too
        return shape, jax.tree.map(lambda a: a.astype(dt), values)

    def forward_with(params, x, state, key, train):
        errors.check_floating(name, x)
        if x.ndim != 3:
            raise errors.shape_error(name, "a rank-3 input (B, T, D)", x)
        with errors.context(name):
            return forward_of(block(x.shape[-1]), params, x, state=state, key=key, train=train)

    def backward(params, residuals, dy):
        # in the forward pass this was: y = serial(Residual(attn), Residual(mlp))(x), width D = dy.shape[-1]
        with errors.context(name):
            return block(dy.shape[-1]).backward(params, residuals, dy)

    contextual = bool(attention_dropout or residual_dropout)
    return container(name, lambda key, shape: init_with(key, shape, False), forward_with, backward, (),
                     (lambda key, shape: init_with(key, shape, True)) if contextual else None, kind="TransformerBlock")
