"""The character-level RNN language model, its state carried from batch to batch by truncated BPTT."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from bpjax import errors
from bpjax.combinators import serial
from bpjax.core import Layer, check_model, forward_of, init_of


def TruncatedBPTT(rnn: Layer, *, batch_size: int, name: str | None = None) -> Layer:
    """Carry a recurrent layer's state from one batch to the next: truncated backpropagation through time.

    A long stream cut into chunks ``x_1, x_2, ...`` of ``T`` steps is read chunk after chunk; chunk
    ``k`` starts from the state chunk ``k-1`` ended in, and its gradient stops there (the state is a
    constant of chunk ``k``: "truncated" BPTT, as in char-rnn). The carried state is this layer's
    non-trained *state* (a contextual layer), so ``bp.train.fit`` threads it from step to step like
    batch-norm statistics. Row ``b`` of every batch must continue row ``b`` of the batch before:
    arrange the data as ``batch_size`` parallel streams (``experiments.text.streams``) and train with
    ``shuffle=False``.

    Train mode (``x: (batch_size, T, D)``)::

        (y, carry_T) = rnn(params, (x, carry))      # carry: the state, (h,) or (h, c), each (batch_size, H)
        new state    = carry_T                      # no gradient flows into it
        backward: rnn.backward(params, residuals, (dy, 0)), the gradient of the initial carry dropped

    Eval mode (``train=False``, any batch size): ``y = rnn(params, x)`` from a zero state; the state
    is returned unchanged.

    Args:
      rnn: a recurrent layer that takes ``(x, carry)`` (:func:`bpjax.layers.LSTM`, ``GRU``, ``SimpleRNN``).
      batch_size: the number of parallel streams, the batch size of training.
      name: display name (default ``TruncatedBPTT(<rnn>)``).

    Examples:
      >>> layer = bp.zoo.TruncatedBPTT(L.GRU(5), batch_size=2)      # 2 parallel streams
      >>> _, params = layer.init(jax.random.key(0), (7, 3))
      >>> state = bp.init_state(layer, jax.random.key(0), (7, 3))   # the carried h, one per stream
      >>> y, _, state = bp.apply(layer, params, jnp.ones((2, 7, 3)), state=state)   # chunk 1; chunk 2 starts here
      >>> y.shape, jax.tree.map(jnp.shape, state)
      ((2, 7, 5), ((2, 5),))
    """
    check_model(rnn, "TruncatedBPTT")
    batch_size = errors.positive_int("TruncatedBPTT", "batch_size", batch_size)
    name = name or f"TruncatedBPTT({rnn.name})"

    def init_fn(key, input_shape):
        with errors.context(name):
            return init_of(rnn, key, input_shape)

    def init_state(key, input_shape):
        shape, params = init_fn(key, input_shape)
        x = jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.result_type(*jax.tree.leaves(params)))
        (_, carry), _ = jax.eval_shape(lambda p, x: forward_of(rnn, p, (x, None))[0:2], params, x)
        return shape, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), carry)

    def forward(params, x, *, state, key, train):
        with errors.context(name):
            if not train:
                y, residuals, _ = forward_of(rnn, params, x)
                return y, (residuals, ()), state
            if x.shape[0] != batch_size:
                raise errors.BpjaxError(name, f"train mode carries the state of {batch_size} streams: expected a "
                                              f"batch of {batch_size}, got shape {tuple(x.shape)}")
            (y, carry), residuals, _ = forward_of(rnn, params, (x, state))
        return y, (residuals, (jax.tree.map(jnp.zeros_like, carry),)), lax.stop_gradient(carry)

    def backward(params, residuals, dy):
        residuals, carried = residuals
        with errors.context(name):
            if not carried:
                return rnn.backward(params, residuals, dy)
            # in the forward pass this was: (y, carry_T) = rnn(params, (x, carry)); carry_T feeds no loss of
            # this chunk, and the initial carry is a constant (truncation): both gradients are dropped
            dparams, (dx, _) = rnn.backward(params, residuals, (dy, carried[0]))
        return dparams, dx

    return Layer(init_fn, forward, backward, name, init_state, (rnn,), "TruncatedBPTT")


def char_rnn(vocab: int, *, cell: str = "lstm", features: int = 256, embed_features: int = 64,
             batch_size: int | None = None, name: str | None = None) -> Layer:
    """A character-level RNN language model, ``ids: (B, T) -> logits: (B, T, vocab)``::

        h_t = cell(E[ids_t], h_{t-1})        # Embedding(vocab, embed_features), LSTM/GRU(features)
        logits_t = h_t @ W + b               # Dense(vocab)

    With ``batch_size`` the recurrent layer is wrapped in :func:`TruncatedBPTT`: the state is carried
    from batch to batch in training (the model is then contextual); without, every sequence starts
    from ``h_0 = 0``.

    Args:
      vocab: number of tokens ``V``.
      cell: ``"lstm"`` or ``"gru"``.
      features: the state size ``H``.
      embed_features: the embedding width.
      batch_size: number of parallel streams for truncated BPTT, or None.
      name: display name (default ``char_rnn(lstm, H)``).

    Examples:
      >>> model = bp.zoo.char_rnn(vocab=11, features=8, embed_features=4)
      >>> out_shape, params = model.init(jax.random.key(0), (6,))
      >>> out_shape, bp.predict(model, params, jnp.zeros((2, 6), jnp.int32)).shape
      ((6, 11), (2, 6, 11))
    """
    from bpjax.layers import GRU, LSTM, Dense, Embedding

    cells = {"lstm": LSTM, "gru": GRU}
    if cell not in cells:
        raise errors.BpjaxError("char_rnn", f"cell must be one of {sorted(cells)}, got {cell!r}")
    rnn = cells[cell](features)
    if batch_size is not None:
        rnn = TruncatedBPTT(rnn, batch_size=batch_size)
    return serial(Embedding(vocab, embed_features), rnn, Dense(vocab),
                  name=name or f"char_rnn({cell}, {features})")
