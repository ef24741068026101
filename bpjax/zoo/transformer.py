"""The GPT and what the language models share: position embeddings, the next-token loss and the sampler."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from bpjax import _errors, losses
from bpjax.combinators import serial
from bpjax.core import Layer, apply, check_model, is_contextual
from bpjax.initializers import Initializer, initializer, param_dtype


def PositionEmbedding(context: int, *, init: Initializer = "normal", stddev: float = 0.02, dtype=None,
                      name: str | None = None) -> Layer:
    """Learned positions added to the token vectors: ``y = x + P[:T]``, ``x: (B, T, D)``, ``P: (context, D)``.

    Backward: ``dx = dy`` and ``dP[:T] = sum_b dy`` (rows ``T..context-1`` were not used: zero).

    Args:
      context: the longest sequence, ``T <= context``.
      init, stddev: initialiser of ``P`` (GPT-2: ``N(0, 0.02^2)``).
      dtype: dtype of ``P``; default the canonical float.
      name: display name (default ``PositionEmbedding(context)``).
    """
    context = _errors.positive_int("PositionEmbedding", "context", context)
    name = name or f"PositionEmbedding({context})"
    param_dtype(name, dtype)
    p_init = initializer(init, stddev)

    def check_shape(T, D_got, D=None):
        if T > context or (D is not None and D_got != D):
            want = f"(B, T, {D}) with T <= {context}" if D is not None else f"(T, D) with T <= {context}"
            raise _errors.BpjaxError(name, f"expected an input of shape {want}, got T={T} and D={D_got}")

    def init_fn(key, input_shape):
        if len(input_shape) != 2:
            raise _errors.BpjaxError(name, f"expected an input shape (T, D) (one sequence, no batch axis), "
                                           f"got {tuple(input_shape)}")
        check_shape(*input_shape)
        return tuple(input_shape), {"P": p_init(key, (context, int(input_shape[1])), param_dtype(name, dtype))}

    def forward(params, x):                      # x: (B, T, D)
        _errors.check_floating(name, x)
        _errors.check_ndim(name, x, 3, "input (B, T, D)")
        check_shape(x.shape[1], x.shape[2], params["P"].shape[1])
        return x + params["P"][:x.shape[1]], ()  # y = x + P[:T]

    def backward(params, residuals, dy):
        # in the forward pass this was: y = x + P[:T], so dx = dy and dP[:T] = sum over the batch of dy
        T = dy.shape[1]
        dP = jnp.zeros_like(params["P"]).at[:T].set(dy.sum(0).astype(params["P"].dtype))
        return {"P": dP}, dy

    return Layer(init_fn, forward, backward, name)


def _token_rows(where, logits, targets):
    """``logits: (B, T, V)``, ``targets: (B, T)`` integers -> ``(B*T, V)``, ``(B*T,)``."""
    _errors.check_ndim(where, logits, 3, "logits (B, T, V)")
    _token_targets(where, targets, logits.shape)
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


def _token_targets(where, targets, pred_shape):
    if len(pred_shape) != 3 or jnp.ndim(targets) != 2 or tuple(jnp.shape(targets))[1:] != tuple(pred_shape[1:2]) \
            or not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise _errors.BpjaxError(where, f"expected integer targets (B, T) for logits (B, T, V) = {tuple(pred_shape)}, "
                                        f"got {jnp.result_type(targets)} {tuple(jnp.shape(targets))}")


def _token_xent_value(logits, targets):
    return losses.softmax_cross_entropy.value(*_token_rows("token_cross_entropy", logits, targets))


def _token_xent_value_and_grad(logits, targets):
    # L = mean over the B*T positions of softmax_cross_entropy: the rows of logits as a batch of B*T
    value, dz = losses.softmax_cross_entropy.value_and_grad(*_token_rows("token_cross_entropy", logits, targets))
    return value, dz.reshape(logits.shape)


def _token_xent_check(targets, pred_shape):
    _token_targets("token_cross_entropy", targets, pred_shape)
    losses.softmax_cross_entropy.check_targets(jnp.reshape(targets, -1), (-1, pred_shape[-1]))


token_cross_entropy = losses.Loss(_token_xent_value, _token_xent_value_and_grad, "token_cross_entropy",
                                  _token_xent_check)
"""Next-token cross-entropy of a language model, nats per token: ``logits: (B, T, V)``, ``targets: (B, T)``.

``L = -mean_{b,t} log softmax(logits[b, t])[targets[b, t]]``, the mean over all ``B*T`` positions; its
backward is :data:`bpjax.losses.softmax_cross_entropy`'s fused ``dz = (softmax(z) - onehot(y)) / (B*T)``."""


def gpt(vocab: int, *, context: int, features: int = 128, num_layers: int = 4, num_heads: int = 4,
        mlp_features: int | None = None, bias: bool = True, stddev: float = 0.02, dtype=None,
        name: str | None = None) -> Layer:
    """A GPT (GPT-2's layout), ``ids: (B, T) -> logits: (B, T, vocab)`` with ``T <= context``::

        h = E[ids] + P[:T]                                     # Embedding, PositionEmbedding
        h = TransformerBlock(h)  x num_layers                  # pre-norm, causal, GELU MLP
        logits = LayerNorm(h) @ E^T                            # the output projection tied to E

    The model is ``tie(serial(Embedding, PositionEmbedding, blocks..., LayerNorm, Dense(vocab,
    bias=False)), source=(0, "E"), target=(-1, "W"), transpose=True)``: params are the serial
    model's, with ``()`` in place of the output ``W``; ``E`` gets the sum of the gradients of its two
    uses. Weights are drawn from ``N(0, stddev^2)`` (GPT-2: 0.02), biases and ``LayerNorm`` start
    at 0 and 1.

    Args:
      vocab: number of tokens ``V``.
      context: the longest sequence ``T`` (rows of the position table).
      features: the model width ``D``.
      num_layers, num_heads: transformer blocks and attention heads (``num_heads`` divides ``D``).
      mlp_features: hidden width of each block's MLP (default ``4 D``).
      bias: biases in the attention and MLP projections.
      stddev: standard deviation of every weight at initialisation.
      dtype: parameter dtype; default the canonical float.
      name: display name (default ``gpt(L, H, D, T)``).
    """
    from bpjax.layers import Dense, Embedding, LayerNorm, TransformerBlock
    from bpjax.tied import tie

    num_layers = _errors.positive_int("gpt", "num_layers", num_layers)
    D = _errors.positive_int("gpt", "features", features)
    mlp_features = 4 * D if mlp_features is None else mlp_features
    w = dict(init="normal", stddev=stddev, dtype=dtype)
    body = serial(Embedding(vocab, D, **w), PositionEmbedding(context, **w),
                  *[TransformerBlock(num_heads, mlp_features=mlp_features, bias=bias, **w) for _ in range(num_layers)],
                  LayerNorm(dtype=dtype), Dense(vocab, bias=False, **w))
    name = name or f"gpt(L{num_layers}, H{num_heads}, D{D}, T{context})"
    return tie(body, source=(0, "E"), target=(-1, "W"), transpose=True, name=name)


def _sample(logits, key, temperature, top_k):
    """One token per row of ``logits: (B, V)``: argmax at temperature 0, else a draw from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits."""
    if temperature == 0:
        return jnp.argmax(logits, -1)
    logits = logits / temperature
    if top_k is not None:
        kth = lax.top_k(logits, top_k)[0][:, -1:]            # the k-th largest logit of each row
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "steps", "context", "temperature", "top_k"))
def _generate(model, params, state, prompt, key, *, steps, context, temperature, top_k):
    B, P = prompt.shape
    n = max(P + steps, context)
    buf = jnp.zeros((B, n), prompt.dtype).at[:, :P].set(prompt)

    def body(i, carry):
        buf, key = carry
        pos = P + i                                      # the position to fill
        start = jnp.clip(pos - context, 0, n - context)  # the window buf[start : start + context] ends at pos - 1
        window = lax.dynamic_slice_in_dim(buf, start, context, axis=1)
        logits = apply(model, params, window, state=state, train=False)[0]  # (B, context, V)
        # causal: the logits at pos - 1 see tokens <= pos - 1 only, whatever follows in the window
        last = lax.dynamic_index_in_dim(logits, pos - 1 - start, axis=1, keepdims=False)
        key, sub = jax.random.split(key)
        token = _sample(last.astype(jnp.float32), sub, temperature, top_k).astype(buf.dtype)
        return lax.dynamic_update_slice_in_dim(buf, token[:, None], pos, axis=1), key

    buf, _ = lax.fori_loop(0, steps, body, (buf, key))
    return buf[:, :P + steps]


def generate(model: Layer, params, prompt, steps: int, *, key, context: int, temperature: float = 1.0,
             top_k: int | None = None, state=None):
    """Sample ``steps`` tokens after ``prompt`` from a causal language model, in one compiled loop.

    Each step runs ``model`` (eval mode) on the last ``context`` tokens and draws the next token from
    ``softmax(logits[-1] / temperature)`` over the ``top_k`` most likely tokens (all of them when
    ``top_k`` is None; the most likely one at ``temperature=0``). The window has a fixed length, so
    the loop compiles once: before ``context`` tokens exist it is padded on the right, which a
    causal model cannot see. No key-value cache: the ``gpt`` experiment measures what one could save
    at nanoGPT's CPU shape (context 64): 5.5 ms per token with the whole-window forward, 0.37 ms for
    a one-token forward (a cached step's floor), i.e. a few seconds per few hundred sampled
    characters at most, against a second forward implementation to keep in step with the first.

    Args:
      model, params: a causal model ``ids: (B, T) -> logits: (B, T, V)`` for every ``T <= context``
        (a :func:`gpt` or a :func:`char_rnn`).
      prompt: ``(B, P)`` integer ids, ``P >= 1``.
      steps: tokens to add.
      key: PRNG key of the draws.
      context: the window length (the model's context).
      temperature: ``>= 0``; 1 samples the model's distribution, 0 is greedy.
      top_k: keep the ``top_k`` largest logits (an int in ``[1, V]``), or None for all.
      state: a contextual model's state (``bp.init_state``), used in eval mode.

    Returns:
      ``(B, P + steps)`` ids: the prompt and its continuation.
    """
    check_model(model, "generate")
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise _errors.BpjaxError("generate", f"prompt must be integer ids of shape (B, P) with P >= 1, got "
                                             f"{prompt.dtype} {tuple(prompt.shape)}")
    steps = _errors.positive_int("generate", "steps", steps)
    context = _errors.positive_int("generate", "context", context)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise _errors.BpjaxError("generate", f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None:
        top_k = _errors.positive_int("generate", "top_k", top_k)
    if is_contextual(model) and state is None:
        raise _errors.BpjaxError("generate", f"{model.name} keeps state: pass state=bp.init_state(model, key, "
                                             f"(context,))")
    return _generate(model, params, () if state is None else state, prompt.astype(jnp.int32), key, steps=steps,
                     context=context, temperature=float(temperature), top_k=top_k)
