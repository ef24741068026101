"""What the language models share: token windows, the next-token loss and the sampler.

- :func:`token_windows` cuts a token stream into inputs and their next-token targets.
- :data:`token_cross_entropy` is the loss, nats per token.
- :func:`generate` samples a continuation from any causal model ``ids: (B, T) -> logits: (B, T, V)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bpjax import errors, losses
from bpjax.core import Layer, check_model, forward_of, is_contextual


def token_windows(ids, T: int, starts=None):
    """Windows of ``T`` tokens of a stream and their next-token targets: ``x[i, t] = ids[s_i + t]``,
    ``y[i, t] = ids[s_i + t + 1]``.

    By default the windows are consecutive and do not overlap, ``s_i = i T`` for every window whose
    targets lie in the stream (the tail that does not fill one is dropped); ``starts`` gives any
    other offsets, e.g. random ones ``rng.integers(0, len(ids) - T, n)`` (nanoGPT's batches).
    Host-side data preparation: numpy in, numpy out.

    Args:
      ids: ``(N,)`` integer token ids.
      T: window length, ``1 <= T <= N - 1``.
      starts: integer offsets of any shape, each in ``[0, N - T - 1]``; default ``0, T, 2T, ...``.

    Returns:
      ``(x, y)``, integer arrays of shape ``(n, T)`` (``starts.shape + (T,)`` with ``starts``).

    Examples:
      >>> x, y = bp.zoo.token_windows(np.arange(10), 4)             # y is x shifted by one token
      >>> x.tolist(), y.tolist()
      ([[0, 1, 2, 3], [4, 5, 6, 7]], [[1, 2, 3, 4], [5, 6, 7, 8]])
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise errors.BpjaxError("token_windows", f"ids must be a 1-D array of integer token ids, got "
                                                 f"{ids.dtype} {ids.shape}")
    N = len(ids)
    T = errors.positive_int("token_windows", "T", T)
    if T > N - 1:
        raise errors.BpjaxError("token_windows", f"a window of T={T} tokens and its targets need T + 1 <= "
                                                 f"len(ids) = {N} tokens; expected T <= {N - 1}")
    starts = np.arange(0, N - T, T) if starts is None else np.asarray(starts)
    if not np.issubdtype(starts.dtype, np.integer) or starts.size and not (
            0 <= starts.min() and starts.max() <= N - T - 1):
        raise errors.BpjaxError("token_windows", f"starts must be integer offsets in [0, {N - T - 1}] (a window "
                                                 f"of {T} and its targets inside {N} tokens), got {starts.dtype} "
                                                 f"in [{starts.min() if starts.size else '-'}, "
                                                 f"{starts.max() if starts.size else '-'}]")
    idx = starts[..., None] + np.arange(T)                  # (..., T): x = ids[s + t], y = ids[s + t + 1]
    return ids[idx], ids[idx + 1]


def _token_rows(logits, targets):
    """``logits: (B, T, V)``, ``targets: (B, T)`` integers -> ``(B*T, V)``, ``(B*T,)``."""
    errors.check_ndim("token_cross_entropy", logits, 3, "logits (B, T, V)")
    _token_targets(targets, logits.shape)
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


def _token_targets(targets, pred_shape):
    if len(pred_shape) != 3 or jnp.ndim(targets) != 2 or tuple(jnp.shape(targets))[1:] != tuple(pred_shape[1:2]) \
            or not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise errors.BpjaxError("token_cross_entropy", f"expected integer targets (B, T) for logits (B, T, V) = "
                                                       f"{tuple(pred_shape)}, got {jnp.result_type(targets)} "
                                                       f"{tuple(jnp.shape(targets))}")


def _token_xent_value(logits, targets):
    return losses.softmax_cross_entropy.value(*_token_rows(logits, targets))


def _token_xent_value_and_grad(logits, targets):
    # L = mean over the B*T positions of softmax_cross_entropy: the rows of logits as a batch of B*T
    value, dz = losses.softmax_cross_entropy.value_and_grad(*_token_rows(logits, targets))
    return value, dz.reshape(logits.shape)


def _token_xent_check(targets, pred_shape):
    _token_targets(targets, pred_shape)
    losses.softmax_cross_entropy.check_targets(jnp.reshape(targets, -1), (-1, pred_shape[-1]))


token_cross_entropy = losses.Loss(_token_xent_value, _token_xent_value_and_grad, "token_cross_entropy",
                                  _token_xent_check)
"""Next-token cross-entropy of a language model in nats per token, of ``logits: (B, T, V)`` and ``targets: (B, T)``.

``L = -mean_{b,t} log softmax(logits[b, t])[targets[b, t]]``, the mean over all ``B*T`` positions; its
backward is :data:`bpjax.losses.softmax_cross_entropy`'s fused ``dz = (softmax(z) - onehot(y)) / (B*T)``.

Examples:
  >>> logits, targets = jnp.zeros((2, 3, 5)), jnp.array([[0, 1, 2], [3, 4, 0]])
  >>> round(float(bp.zoo.token_cross_entropy(logits, targets)), 4)   # log 5: uniform over 5 tokens
  1.6094
"""


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
        logits = forward_of(model, params, window, state=state, train=False)[0]  # (B, context, V)
        # causal: the logits at pos - 1 see tokens <= pos - 1 only, whatever follows in the window
        last = lax.dynamic_index_in_dim(logits, pos - 1 - start, axis=1, keepdims=False)
        key, sub = jax.random.split(key)
        token = _sample(last.astype(jnp.float32), sub, temperature, top_k).astype(buf.dtype)
        return lax.dynamic_update_slice_in_dim(buf, token[:, None], pos, axis=1), key

    buf, _ = lax.fori_loop(0, steps, body, (buf, key))
    return buf[:, :P + steps]


def generate(model: Layer, params, prompt, steps: int, *, key, context: int | None = None,
             temperature: float = 1.0, top_k: int | None = None, state=None):
    """Sample ``steps`` tokens after ``prompt`` from a causal language model, in one compiled loop.

    Each step runs ``model`` (eval mode) on the last ``context`` tokens and draws the next token from
    ``softmax(logits[-1] / temperature)`` over the ``top_k`` most likely tokens (all of them when
    ``top_k`` is None; the most likely one at ``temperature=0``). The window has a fixed length, so
    the loop compiles once: before ``context`` tokens exist it is padded on the right, which a
    causal model cannot see. No key-value cache: the ``gpt`` experiment measures what one could save
    at nanoGPT's CPU shape (context 64): a one-token forward (a cached step's floor) takes 15 to 20
    times less than a step of the whole-window forward (on a 2-core AMD EPYC, about 2 ms per token
    against 0.12 ms), i.e. under a second per few hundred sampled characters, against a second
    forward implementation to keep in step with the first.

    Args:
      model, params: a causal model ``ids: (B, T) -> logits: (B, T, V)`` for every ``T <= context``
        (a :func:`gpt` or a :func:`char_rnn`).
      prompt: ``(B, P)`` integer ids, ``P >= 1``.
      steps: tokens to add.
      key: PRNG key of the draws.
      context: the window length; default the model's own (a :func:`~bpjax.zoo.gpt`'s ``context``,
        :func:`~bpjax.zoo.gpt_config`), else the whole sequence ``P + steps`` (a model without a
        longest sequence, such as a :func:`~bpjax.zoo.char_rnn`).
      temperature: ``>= 0``; 1 samples the model's distribution, 0 is greedy.
      top_k: keep the ``top_k`` largest logits (an int in ``[1, V]``), or None for all.
      state: a contextual model's state (``bp.init_state``), used in eval mode.

    Returns:
      ``(B, P + steps)`` ids: the prompt and its continuation.

    Examples:
      >>> model = bp.zoo.gpt(vocab=11, context=8, features=16, num_layers=1, num_heads=2)
      >>> _, params = model.init(jax.random.key(0), (8,))
      >>> tokens = bp.zoo.generate(model, params, jnp.array([[1, 2, 3]]), 5, key=jax.random.key(1))
      >>> tokens.shape, bool(((0 <= tokens) & (tokens < 11)).all())      # the prompt, then 5 new tokens
      ((1, 8), True)
    """
    check_model(model, "generate")
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise errors.BpjaxError("generate", f"prompt must be integer ids of shape (B, P) with P >= 1, got "
                                            f"{prompt.dtype} {tuple(prompt.shape)}")
    steps = errors.positive_int("generate", "steps", steps)
    if context is None:
        from bpjax.zoo.transformer import gpt_config

        config = gpt_config(model)
        context = config["context"] if config else prompt.shape[1] + steps
    context = errors.positive_int("generate", "context", context)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise errors.BpjaxError("generate", f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None:
        top_k = errors.positive_int("generate", "top_k", top_k)
    if is_contextual(model) and state is None:
        raise errors.BpjaxError("generate", f"{model.name} keeps state: pass state=bp.init_state(model, key, "
                                            f"(context,))")
    return _generate(model, params, () if state is None else state, prompt.astype(jnp.int32), key, steps=steps,
                     context=context, temperature=float(temperature), top_k=top_k)
